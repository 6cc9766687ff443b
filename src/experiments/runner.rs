//! One run of a grid: a training run through the library (`train::run`) in its own run directory, then
//! its metrics as `result.json` there. A directory with a `result.json` is a finished run and is read
//! back instead of trained again; one without (an interrupted run) is started afresh.
use super::grid::RunSpec;
use super::{ExperimentError, Settings};
use crate::audit::{flops_per_token, measure_step, synthetic_ids};
use crate::train::plan::model_vocab;
use crate::train::{self, DeviceChoice, EvalRecord, Precision, RunOutcome, TrainConfig, METRICS_FILE};
use cola_nn::{Init, Llama};
use cola_optim::{AdamW, AdamWConfig};
use cola_tensor::DType;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The per-run metrics file in each run directory.
pub const RESULT_FILE: &str = "result.json";

/// What one run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The grid row that asked for the run (a run shared by two grids carries the row, and the variant
    /// flags, of the one reading it).
    pub label: String,
    /// The settings besides model, seed and budget that the run was trained with ([`Settings::setup`]); a
    /// finished run is reused only under the same ones.
    #[serde(default)]
    pub setup: String,
    pub preset: String,
    /// The variant's flags (`--lowrank-act identity`), empty for the preset's model.
    pub variant: String,
    pub policy: String,
    /// `f32`, `bf16-mixed` or `pure-bf16` (runs from before the field existed trained in f32).
    #[serde(default = "f32_name")]
    pub precision: String,
    pub seed: u64,
    pub steps: u64,
    /// Tokens per optimizer step (sequences x sequence length).
    pub tokens_per_step: u64,
    pub params_total: usize,
    pub params_low_rank: usize,
    /// Training (forward + backward) FLOPs per token (docs/METHOD.md section 8).
    pub training_flops_per_token: f64,
    /// Mean training throughput of the run (evaluations excluded).
    pub tokens_per_s: f64,
    /// Peak bytes of one training micro-batch (weights, gradients, AdamW state, the larger activation
    /// peak), measured on the tape under the run's policy and precision.
    pub peak_bytes: usize,
    /// `(step, validation loss)` of every evaluation, the last after the final step.
    pub val_curve: Vec<(u64, f64)>,
    pub final_val_loss: f64,
    pub final_val_ppl: f64,
}

fn f32_name() -> String {
    Precision::F32.name().to_string()
}

impl RunResult {
    pub fn seconds_per_step(&self) -> f64 {
        self.tokens_per_step as f64 / self.tokens_per_s
    }
}

/// The run directory of `spec` with `seed` in the store `settings.runs`: named by what is trained (the
/// model's [`RunSpec::key`], the peak learning rate where `settings` overrides the preset's, the token
/// budget, the seed), not by the grid's row label: `cola-60m-silu-r128-gated-lr1e-3-614400tok-seed0`.
pub fn run_dir(settings: &Settings, spec: &RunSpec, seed: u64) -> PathBuf {
    let lr = super::lr_tag(settings.lr);
    settings.runs.join(format!("{}{lr}-{}tok-seed{seed}", spec.key(), settings.tokens))
}

/// Trains `spec` with `seed` (or reads its finished result) and returns its metrics.
pub fn run_one(spec: &RunSpec, seed: u64, settings: &Settings) -> Result<(RunResult, bool), ExperimentError> {
    let dir = run_dir(settings, spec, seed);
    let result_path = dir.join(RESULT_FILE);
    if result_path.is_file() {
        let text = std::fs::read_to_string(&result_path).map_err(ExperimentError::io(&result_path))?;
        let mut result: RunResult = serde_json::from_str(&text)
            .map_err(|e| ExperimentError::Result { path: result_path.clone(), reason: e.to_string() })?;
        if result.setup != settings.setup() {
            return Err(ExperimentError::Result {
                path: result_path,
                reason: format!(
                    "this finished run was trained with `{}`, this experiment asks for `{}`; give another \
                     --runs folder or delete the run",
                    result.setup,
                    settings.setup()
                ),
            });
        }
        result.label = spec.label.clone();
        result.variant = spec.variant.flags();
        return Ok((result, true));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(ExperimentError::io(&dir))?;
    }
    let config = train_config(spec, seed, settings, &dir);
    let summary = match train::run(&config)? {
        RunOutcome::Trained(summary) => summary,
        RunOutcome::Evaluated(_) => unreachable!("a fresh config without eval_only trains"),
    };
    let val_curve = read_val_curve(&dir.join(METRICS_FILE))?;
    let &(_, final_val_loss) = val_curve.last().ok_or_else(|| ExperimentError::Result {
        path: dir.join(METRICS_FILE),
        reason: "the run recorded no evaluation".into(),
    })?;
    let vocab = model_vocab(spec.preset, config.vocab_size, None, config.data.as_deref())?.size();
    let model_config = cola_nn::LlamaConfig { vocab_size: vocab, ..config.model_config() };
    let counts = model_config.param_counts();
    let model = Llama::build(model_config.clone(), spec.precision.param_dtype(), &mut Init::Zeros)?;
    let ids = synthetic_ids(model_config.vocab_size, config.micro_batch * config.seq_len, 1);
    let mut memory = measure_step(&model, spec.policy, &ids, config.micro_batch, config.seq_len)?;
    memory.optimizer_bytes = optimizer_bytes(&model, spec.precision);
    let result = RunResult {
        label: spec.label.clone(),
        setup: settings.setup(),
        preset: spec.preset.to_string(),
        variant: spec.variant.flags(),
        policy: spec.policy.name().to_string(),
        precision: spec.precision.name().to_string(),
        seed,
        steps: summary.steps,
        tokens_per_step: (config.batch_size * config.seq_len) as u64,
        params_total: counts.total,
        params_low_rank: counts.low_rank,
        training_flops_per_token: flops_per_token(&model_config, config.seq_len).training,
        tokens_per_s: summary.tokens_per_s,
        peak_bytes: memory.peak_step_bytes(),
        val_curve,
        final_val_loss,
        final_val_ppl: final_val_loss.exp(),
    };
    let json = serde_json::to_vec_pretty(&result)
        .map_err(|e| ExperimentError::Result { path: result_path.clone(), reason: e.to_string() })?;
    std::fs::write(&result_path, json).map_err(ExperimentError::io(&result_path))?;
    Ok((result, false))
}

/// The training config of one run: the preset's peak learning rate (or `settings.lr`), `settings`' token
/// budget in whole steps,
/// a tenth of them warmup, ten evaluations on the same validation tokens, one checkpoint at the end.
fn train_config(spec: &RunSpec, seed: u64, settings: &Settings, dir: &Path) -> TrainConfig {
    let mut config = TrainConfig::new(spec.preset, dir);
    config.variant = spec.variant;
    config.recompute = spec.policy;
    config.precision = spec.precision;
    config.seed = seed;
    // Every seed is scored on the same held-out sequences: the seeds then differ by initial weights and
    // data order only, and two models are compared on identical tokens.
    config.split_seed = Some(0);
    config.device = settings.device;
    config.data = settings.data.clone();
    config.cache_dir = settings.cache_dir.clone();
    config.vocab_size = settings.vocab_size;
    config.seq_len = settings.seq_len(spec.preset);
    config.batch_size = settings.batch_size;
    config.micro_batch = spec.preset.cpu_micro_batch().min(settings.batch_size);
    if config.device != DeviceChoice::Cpu && crate::train::gpu_count() > 0 {
        config.micro_batch = spec.preset.gpu_micro_batch().min(settings.batch_size);
    }
    let tokens_per_step = (config.batch_size * config.seq_len) as u64;
    config.steps = settings.tokens.div_ceil(tokens_per_step).max(1);
    config.warmup = config.steps / 10;
    if let Some(lr) = settings.lr {
        config.lr = lr;
    }
    config.eval_every = (config.steps / 10).max(1);
    config.eval_tokens = settings.eval_tokens;
    config.save_every = 0;
    config.verbose = settings.verbose;
    config
}

/// Bytes of AdamW's state for `model` trained in `precision`: two moments per parameter and, where the
/// optimizer keeps one, an f32 master copy, in the dtypes AdamW itself picks ([`AdamW::state_dtype`]).
fn optimizer_bytes(model: &Llama, precision: Precision) -> usize {
    let adamw =
        AdamW::new(AdamWConfig { master_weights: precision.master_weights(), ..AdamWConfig::default() });
    model
        .parameters()
        .iter()
        .map(|p| {
            let value = p.value();
            let (master, moments) = adamw.state_dtype(value.dtype());
            let n = value.numel();
            n * (2 * moments.size_in_bytes() + if master { DType::F32.size_in_bytes() } else { 0 })
        })
        .sum()
}

/// The evaluation records of a run's `metrics.jsonl`, in order.
fn read_val_curve(path: &Path) -> Result<Vec<(u64, f64)>, ExperimentError> {
    let text = std::fs::read_to_string(path).map_err(ExperimentError::io(path))?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<EvalRecord>(line).ok())
        .map(|r| (r.step, r.val_loss))
        .collect())
}

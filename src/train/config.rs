//! [`TrainConfig`]: every setting of a run, its defaults at full scale, and the checks no lower layer makes.
use super::options::{self, DeviceChoice, Precision};
use super::plan;
use super::retention::Keep;
use super::stop::StopRequest;
use super::{Result, TrainError};
use crate::dist::{Collective, Single};
use cola_autograd::Policy;
use cola_nn::{LlamaConfig, Preset, Variant};
use cola_tensor::Device;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Everything a run needs. The serialised part is stored in every checkpoint's `state.json`, so a resumed
/// run knows how it was started; the `#[serde(skip)]` fields belong to one invocation only.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The model preset, stored by name (`cola-350m`, `full-60m`, `cola-tiny`, ...).
    #[serde(with = "options::by_name")]
    pub model: Preset,
    /// What the run changes of the preset's model (`--lowrank-act`, `--rank`, `--only-lr-act`); files
    /// written before variants existed mean the preset's model.
    #[serde(default, with = "super::variant")]
    pub variant: Variant,
    /// Overrides the preset's vocabulary (32000); also the size of a BPE trained on the corpus.
    pub vocab_size: Option<usize>,
    /// Where to train, as asked (`auto`, `cpu`, `{"cuda": n}` in `state.json`). The choice is what is
    /// saved, not the device it meant, so that a run resumed on another machine asks again there.
    pub device: DeviceChoice,
    /// What `device` resolved to on this machine, with the choice it was resolved from. Resolving is a
    /// CUDA driver probe, so it is done once per invocation ([`TrainConfig::resolve_device`], called by
    /// [`plan::resolve`]) and reused by validation and the run; remembering the choice means that a
    /// `device` changed afterwards is probed again instead of answered from a stale cache.
    #[serde(skip)]
    pub(super) resolved_device: Option<(DeviceChoice, Device)>,
    /// `f32`, `bf16-mixed` or `pure-bf16` in `state.json` (see [`Precision`]); the CPU trains in `f32`
    /// only.
    #[serde(alias = "dtype", with = "options::by_name")]
    pub precision: Precision,
    /// Training corpus; `None` is the default Shakespeare corpus.
    pub data: Option<PathBuf>,
    /// Validation corpus; `None` holds out 1% of the training corpus.
    pub val_data: Option<PathBuf>,
    /// A `tokenizer.json`; `None` trains (once, cached) a byte-level BPE of the model's vocabulary size.
    pub tokenizer: Option<PathBuf>,
    /// Total optimizer updates `N` of the schedule.
    pub steps: u64,
    /// Warmup updates `W` of the schedule.
    pub warmup: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Sequences per optimizer update (the global batch).
    pub batch_size: usize,
    /// Sequences per forward/backward pass; gradients of the micro-batches of a step are accumulated.
    pub micro_batch: usize,
    pub seq_len: usize,
    /// Seeds the initial weights, the validation split and the data order.
    pub seed: u64,
    /// Seeds the validation split instead of `seed` (`None`: `seed`). The training program leaves it
    /// unset; the experiment runner fixes it so that all seeds of a grid score the same held-out sequences.
    /// Kept in `state.json`, so a resumed run holds out the same sequences.
    #[serde(default)]
    pub split_seed: Option<u64>,
    pub shuffle: bool,
    /// Evaluate every this many updates (and after the last); 0 never evaluates.
    pub eval_every: u64,
    /// Validation tokens per periodic evaluation (whole sequences, at least one).
    pub eval_tokens: usize,
    /// Checkpoint every this many updates (and after the last, and on Ctrl-C); 0 only at those times.
    pub save_every: u64,
    /// How many of the newest checkpoints the run directory keeps (`"1"` or `"all"` in `state.json`);
    /// files written before the field existed mean the latest one, as those runs kept.
    #[serde(default, with = "options::by_name")]
    pub keep_checkpoints: Keep,
    /// Also keep every checkpoint whose step is a multiple of this; 0 (the default, and the meaning of
    /// files older than the field) keeps no milestones.
    #[serde(default)]
    pub keep_every: u64,
    pub weight_decay: f64,
    /// `--no-decay-norms-embeddings`: RMSNorm weights and the embedding get no weight decay.
    pub no_decay_norms_embeddings: bool,
    /// Global gradient-norm clipping threshold (0.5 in the recipe).
    pub clip_norm: f64,
    /// Retention policy of the tape: `none`, `cola-m` (CoLA presets) or `block` (docs/METHOD.md section 7).
    /// It changes memory and time, never the numbers, so a resumed run may change it.
    /// Stored by name; files written before the field existed mean `none`.
    #[serde(default, with = "options::policy_name")]
    pub recompute: Policy,
    /// A malformed JSON line is an error (with file and line) instead of being skipped and counted.
    pub strict: bool,
    /// The run directory: metrics, plot, tokenizer and `checkpoint-<step>/` folders.
    pub out: PathBuf,
    /// A checkpoint folder, or a run directory whose latest checkpoint is used.
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// Only evaluate the `resume` checkpoint on the whole validation set, then return.
    #[serde(skip)]
    pub eval_only: bool,
    /// Save and stop once this many updates are done (the schedule still spans `steps`).
    #[serde(skip)]
    pub stop_after: Option<u64>,
    /// Cache root of the data pipeline; `None` is `$COLA_CACHE` or `local/cache`.
    #[serde(skip)]
    pub cache_dir: Option<PathBuf>,
    /// Print progress, notes and a progress bar on stderr.
    #[serde(skip)]
    pub verbose: bool,
    /// Filled by the signal handlers (SIGINT, SIGTERM, SIGUSR1: [`super::stop::install_handlers`]) to
    /// save a checkpoint after the current update and stop.
    #[serde(skip)]
    pub interrupt: Option<Arc<StopRequest>>,
    /// The ranks this run is one of ([`crate::dist`]); `None` is one process. The global batch, not the
    /// world, is the run's identity, so a checkpoint resumes under any world size that divides it.
    #[serde(skip)]
    pub collective: Option<Arc<dyn Collective>>,
    /// Sum gradients over NCCL even with one rank (`--nccl`, [`crate::dist::for_device`]).
    #[serde(skip)]
    pub nccl: bool,
    /// Shard the optimizer state over the ranks (`--zero 1`, ZeRO-1: [`crate::dist::Zero`]). Like the
    /// world, not part of the run's identity: checkpoints are whole either way.
    #[serde(skip)]
    pub zero: bool,
    /// Start gradient bucket sums during the last backward (`--overlap`, [`crate::dist::overlap`]); the
    /// same sums as after backward, so not part of the run's identity.
    #[serde(skip)]
    pub overlap: bool,
    /// Bytes of each gradient bucket summed over the ranks (`--bucket-kib`).
    #[serde(skip)]
    pub bucket_bytes: usize,

    // Cluster jobs.
    /// Also checkpoint once this many minutes have passed since the last checkpoint (rank 0's clock);
    /// `None` (and files older than the field) only by steps.
    #[serde(default)]
    pub save_every_minutes: Option<f64>,
}

impl TrainConfig {
    /// A config for `model` with its recipe (docs/METHOD.md section 6) at full scale and the given run
    /// directory; [`plan::resolve`] is the command line's richer path.
    pub fn new(model: Preset, out: impl Into<PathBuf>) -> TrainConfig {
        let recipe = model.recipe();
        TrainConfig {
            model,
            variant: Variant::NONE,
            vocab_size: None,
            device: DeviceChoice::Auto,
            resolved_device: None,
            precision: Precision::F32,
            data: None,
            val_data: None,
            tokenizer: None,
            steps: recipe.total_steps,
            warmup: recipe.warmup_steps,
            lr: recipe.peak_lr,
            batch_size: 512,
            micro_batch: model.cpu_micro_batch(),
            seq_len: 256,
            seed: 0,
            split_seed: None,
            shuffle: true,
            eval_every: 1000,
            eval_tokens: plan::DEFAULT_EVAL_TOKENS,
            save_every: 1000,
            keep_checkpoints: Keep::default(),
            keep_every: 0,
            weight_decay: 0.01,
            no_decay_norms_embeddings: false,
            clip_norm: 0.5,
            recompute: Policy::KeepAll,
            strict: false,
            out: out.into(),
            resume: None,
            eval_only: false,
            stop_after: None,
            cache_dir: None,
            verbose: false,
            interrupt: None,
            collective: None,
            nccl: false,
            zero: false,
            overlap: true,
            bucket_bytes: crate::dist::DEFAULT_BUCKET_BYTES,
            save_every_minutes: None,
        }
    }

    /// The model this run trains: the preset with the run's variant and vocabulary, its context at least `seq_len`
    /// (RoPE has no position table: a longer `--seq-len` needs no other change). The pad id is the
    /// tokenizer's, set once the data is prepared.
    pub fn model_config(&self) -> LlamaConfig {
        let mut config = self.variant.overlay(&self.model.config());
        if let Some(vocab) = self.vocab_size {
            config.vocab_size = vocab;
        }
        config.max_seq_len = config.max_seq_len.max(self.seq_len);
        config
    }

    /// The world of this run: [`TrainConfig::collective`], or one process.
    pub fn world(&self) -> Arc<dyn Collective> {
        self.collective.clone().unwrap_or_else(|| Arc::new(Single))
    }

    /// Resolves `device` on this machine and remembers the answer for [`TrainConfig::target_device`].
    pub fn resolve_device(&mut self) -> Result<Device> {
        let device = self.target_device()?;
        self.resolved_device = Some((self.device, device));
        Ok(device)
    }

    /// The device the run uses: the remembered answer when `device` has not changed since
    /// [`TrainConfig::resolve_device`], else a fresh resolution.
    pub fn target_device(&self) -> Result<Device> {
        match self.resolved_device {
            Some((choice, device)) if choice == self.device => Ok(device),
            _ => self.device.resolve(),
        }
    }

    /// Checks the settings that no lower layer checks, before any work is done.
    pub fn validate(&self) -> Result<()> {
        self.validate_on(self.target_device()?)
    }

    /// [`TrainConfig::validate`] for a run on `device` (already resolved).
    pub(crate) fn validate_on(&self, device: Device) -> Result<()> {
        let bad = |reason: String| Err(TrainError::Config(reason));
        if !self.model.config().policies().contains(&self.recompute) {
            return bad(match self.recompute {
                Policy::ColaM => format!(
                    "--recompute cola-m keeps the rank-r bottlenecks of CoLA layers, which {} does not have; use \
                     --recompute block (per-layer checkpointing) or none",
                    self.model
                ),
                other => format!("--recompute must be none, cola-m or block, got '{}'", other.name()),
            });
        }
        self.variant.apply(&self.model.config())?;
        super::variant::check_device(&self.variant, device)?;
        if self.steps == 0 {
            return bad("--steps must be at least 1".into());
        }
        if self.batch_size == 0 || self.micro_batch == 0 {
            return bad(format!(
                "--batch-size ({}) and --micro-batch ({}) must be at least 1",
                self.batch_size, self.micro_batch
            ));
        }
        let ranks = self.collective.as_ref().map_or(1, |c| c.world_size());
        if !self.batch_size.is_multiple_of(ranks) {
            return bad(format!(
                "--batch-size {} does not divide among {ranks} ranks: each rank trains batch-size / ranks \
                 sequences of every update; pass a multiple of {ranks}",
                self.batch_size
            ));
        }
        if self.seq_len < 2 {
            return bad(format!(
                "--seq-len must be at least 2 (the loss predicts the next token), got {}",
                self.seq_len
            ));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(format!("--lr must be a finite number >= 0, got {}", self.lr));
        }
        if self.warmup > self.steps {
            return bad(format!("--warmup {} is longer than the run (--steps {})", self.warmup, self.steps));
        }
        if !(self.clip_norm > 0.0 && self.weight_decay >= 0.0) {
            return bad(format!(
                "clip norm {} must be positive and weight decay {} non-negative",
                self.clip_norm, self.weight_decay
            ));
        }
        if let Some(minutes) = self.save_every_minutes.filter(|m| !(m.is_finite() && *m > 0.0)) {
            return bad(format!("--save-every-minutes must be a positive number of minutes, got {minutes}"));
        }
        if self.eval_only && self.resume.is_none() {
            return bad("--eval-only needs --resume DIR (the checkpoint to evaluate)".into());
        }
        Ok(())
    }
}

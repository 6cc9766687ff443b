//! From command-line options to a [`TrainConfig`]: the preset's recipe (docs/METHOD.md section 6) fills every
//! unset value, scaled to what a CPU can show progress on, and every choice the user did not make comes
//! with a note saying what was chosen and why. On `--resume` the checkpoint's own config is the base, so
//! a resumed run continues the schedule and data order it started with.
use super::checkpoint;
use super::{DeviceChoice, Options, Precision, Result, TrainConfig, TrainError};
use crate::data::tokenizer::MIN_BPE_VOCAB;
use crate::data::CorpusFormat;
use cola_nn::Preset;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Validation tokens per periodic evaluation unless `--eval-tokens` says otherwise: 32 sequences of 256
/// (of the 54 held out of the default corpus), about one training step's compute for cola-350m on a CPU.
pub const DEFAULT_EVAL_TOKENS: usize = 8192;

/// Sequences per optimizer step on a CPU unless `--batch-size` says otherwise (the paper uses 512): small
/// enough that a step of the 350m model takes seconds, large enough for a stable loss curve.
pub const CPU_BATCH_SIZE: usize = 8;

/// The model trained when `--model` is not given: the program's namesake.
pub const DEFAULT_MODEL: Preset = Preset::new(cola_nn::Family::Cola, cola_nn::Size::M350);

/// The vocabulary given to a preset whose own is too small for the byte-level BPE a run trains on its
/// corpus (the tiny presets' 64): the smallest power of two that holds one, 512, which leaves a few hundred
/// merges so that the BPE is more than a byte table.
pub const SMALL_PRESET_BPE_VOCAB: usize = MIN_BPE_VOCAB.next_power_of_two();

/// The vocabulary of a run's model (and of the BPE trained for it) and where that size came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelVocab {
    /// The preset's own size.
    Preset(usize),
    /// `--vocab-size`, or on resume the size the checkpoint's run used.
    Given(usize),
    /// The preset's `preset` entries cannot hold the byte-level BPE the run trains, so the tokenizer and
    /// the model get `size` ([`SMALL_PRESET_BPE_VOCAB`]).
    Raised { preset: usize, size: usize },
}

impl ModelVocab {
    /// The vocabulary of the model (its embedding and head rows) and of a BPE trained for it.
    pub const fn size(self) -> usize {
        match self {
            ModelVocab::Preset(size) | ModelVocab::Given(size) | ModelVocab::Raised { size, .. } => size,
        }
    }

    /// The one-line note a raised vocabulary is announced with; `None` for a size the user or the preset
    /// chose.
    pub fn note(self, model: Preset) -> Option<String> {
        match self {
            ModelVocab::Raised { preset, size } => Some(format!(
                "vocabulary: {model}'s {preset} entries cannot hold a byte-level BPE (at least {MIN_BPE_VOCAB}: \
                 256 bytes + 3 special tokens), so the tokenizer trained on the corpus and the model get \
                 {size} (pass --vocab-size or --tokenizer to choose)"
            )),
            ModelVocab::Preset(_) | ModelVocab::Given(_) => None,
        }
    }
}

/// The vocabulary a run of `model` uses: `vocab_size` when given, else the preset's, raised to
/// [`SMALL_PRESET_BPE_VOCAB`] when a BPE is to be trained (no `tokenizer`, and `data` is not a `.bin` of
/// token ids) and the preset's is below [`MIN_BPE_VOCAB`]. A given size too small for that BPE is an
/// error here, before any data is read.
pub fn model_vocab(
    model: Preset,
    vocab_size: Option<usize>,
    tokenizer: Option<&Path>,
    data: Option<&Path>,
) -> Result<ModelVocab> {
    let trains_bpe =
        tokenizer.is_none() && data.and_then(CorpusFormat::of_path) != Some(CorpusFormat::TokenIds);
    let preset = model.config().vocab_size;
    let default = if trains_bpe && preset < MIN_BPE_VOCAB {
        ModelVocab::Raised { preset, size: SMALL_PRESET_BPE_VOCAB }
    } else {
        ModelVocab::Preset(preset)
    };
    match vocab_size {
        None => Ok(default),
        Some(size) if trains_bpe && size < MIN_BPE_VOCAB => Err(TrainError::Config(format!(
            "--vocab-size {size} cannot hold the byte-level BPE trained on the corpus, which needs at least \
             {MIN_BPE_VOCAB} entries (256 bytes + 3 special tokens); pass --vocab-size {MIN_BPE_VOCAB} or \
             more, or leave it out ({model} then gets {}), or give a --tokenizer or a .bin corpus of token ids",
            default.size()
        ))),
        Some(size) => Ok(ModelVocab::Given(size)),
    }
}

/// What `--audit` examines: the preset with the vocabulary a run given the same options would use, and
/// the micro-batch it measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditPlan {
    pub model: Preset,
    /// `--lowrank-act`, `--rank`, `--only-lr-act`.
    pub variant: cola_nn::Variant,
    pub vocab: ModelVocab,
    pub micro_batch: usize,
    pub seq_len: usize,
}

/// The [`AuditPlan`] of `options`: the micro-batch defaults to the preset's CPU one and the sequence
/// length to the preset's context, so that every preset audits without further flags.
pub fn audit_plan(options: &Options) -> Result<AuditPlan> {
    let model = options.model.unwrap_or(DEFAULT_MODEL);
    Ok(AuditPlan {
        model,
        variant: super::variant::of_options(options),
        vocab: model_vocab(model, options.vocab_size, options.tokenizer.as_deref(), options.data.as_deref())?,
        micro_batch: options.micro_batch.unwrap_or(model.cpu_micro_batch()),
        seq_len: options.seq_len.unwrap_or(model.config().max_seq_len),
    })
}

/// The config `options` ask for and notes on each default chosen for the user (to print before the run).
pub fn resolve(options: &Options) -> Result<(TrainConfig, Vec<String>)> {
    match &options.resume {
        Some(path) => resolve_resume(options, path),
        None => resolve_fresh(options),
    }
}

fn resolve_fresh(options: &Options) -> Result<(TrainConfig, Vec<String>)> {
    let mut notes = Vec::new();
    if options.eval_only {
        return Err(TrainError::Config("--eval-only needs --resume DIR (the checkpoint to evaluate)".into()));
    }
    let model = options.model.unwrap_or(DEFAULT_MODEL);
    let recipe = model.recipe();
    let out = options.out.clone().unwrap_or_else(|| default_out(model));
    let mut config = TrainConfig::new(model, out);
    config.variant = super::variant::of_options(options);
    // A raised vocabulary is stored as the run's own, so that a resumed run takes it from the checkpoint.
    let vocab =
        model_vocab(model, options.vocab_size, options.tokenizer.as_deref(), options.data.as_deref())?;
    notes.extend(vocab.note(model));
    config.vocab_size = match vocab {
        ModelVocab::Preset(_) => None,
        ModelVocab::Given(size) | ModelVocab::Raised { size, .. } => Some(size),
    };
    config.device = options.device.unwrap_or(DeviceChoice::Auto);
    let on_gpu = config.resolve_device()? != cola_tensor::Device::Cpu;
    config.precision =
        options.precision.unwrap_or(if on_gpu { Precision::Bf16Mixed } else { Precision::F32 });
    config.data = options.data.clone();
    config.val_data = options.val_data.clone();
    config.tokenizer = options.tokenizer.clone();
    config.seq_len = options.seq_len.unwrap_or(256);
    config.seed = options.seed.unwrap_or(0);
    config.shuffle = !options.no_shuffle;
    config.no_decay_norms_embeddings = options.no_decay_norms_embeddings;
    config.strict = options.strict;
    config.stop_after = options.stop_after;
    config.cache_dir = options.cache_dir.clone();
    config.nccl = options.nccl;
    config.zero = options.zero == 1;
    config.overlap = options.overlap;
    config.bucket_bytes = usize::try_from(options.bucket_kib << 10).unwrap_or(usize::MAX);
    config.lr = options.lr.unwrap_or(recipe.peak_lr);

    config.steps = options.steps.unwrap_or(recipe.total_steps);
    config.warmup = match options.warmup {
        Some(warmup) => warmup,
        None if config.steps < recipe.total_steps => {
            let scaled =
                (recipe.warmup_steps as f64 * config.steps as f64 / recipe.total_steps as f64).round() as u64;
            notes.push(format!(
                "schedule: --steps {} is shorter than the recipe's {} for {model}, so the warmup is scaled \
                 with it: {} -> {scaled} steps (pass --warmup to choose)",
                config.steps, recipe.total_steps, recipe.warmup_steps
            ));
            scaled
        }
        None => recipe.warmup_steps,
    };

    // A GPU runs the paper's batch; a CPU run is scaled down so that steps take seconds.
    let default_micro = if on_gpu { model.gpu_micro_batch() } else { model.cpu_micro_batch() };
    config.batch_size = match options.batch_size {
        Some(batch) => batch,
        None if on_gpu => 512,
        None => {
            let micro = options.micro_batch.unwrap_or(default_micro.min(CPU_BATCH_SIZE));
            notes.push(format!(
                "batch: {CPU_BATCH_SIZE} sequences x {} tokens per optimizer step in micro-batches of {micro}. \
                 The paper's 512-sequence batch would make each CPU step {}x slower (minutes, not seconds); \
                 pass --batch-size 512 for the paper's setting",
                config.seq_len,
                512 / CPU_BATCH_SIZE
            ));
            CPU_BATCH_SIZE
        }
    };
    config.micro_batch = options.micro_batch.unwrap_or(default_micro).min(config.batch_size).max(1);
    if let Some(policy) = options.recompute {
        config.recompute = policy;
    }

    config.eval_every = options.eval_every.unwrap_or_else(|| (config.steps / 20).clamp(10, 500));
    config.save_every = options.save_every.unwrap_or_else(|| (config.steps / 10).clamp(20, 1000));
    config.eval_tokens = options.eval_tokens.unwrap_or(DEFAULT_EVAL_TOKENS);
    config.keep_checkpoints = options.keep_checkpoints.unwrap_or_default();
    config.keep_every = options.keep_every.unwrap_or(0);
    config.save_every_minutes = options.save_every_minutes;
    if options.eval_every.is_none() || options.save_every.is_none() {
        // About 20 evaluations and 10 checkpoints per run; a checkpoint of cola-350m with its AdamW
        // state is 2.2 GB, so not more often than every 20 steps.
        let steps = config.steps;
        let eval = match config.eval_every {
            0 => "no evaluation".to_string(),
            every if every >= steps => {
                format!("evaluating {} validation tokens at the end", config.eval_tokens)
            }
            every => format!(
                "evaluating {} validation tokens every {every} steps and at the end",
                config.eval_tokens
            ),
        };
        let save = match config.save_every {
            every if every == 0 || every >= steps => String::new(),
            every => format!("every {every} steps, "),
        };
        notes.push(format!(
            "{eval}; checkpointing {save}at the end and on a stop signal (--eval-every, --eval-tokens, --save-every)"
        ));
    }
    Ok((config, notes))
}

/// `runs/<model>-<UTC date>-<time>`: a fresh directory per run, like a timestamped PyTorch log dir.
fn default_out(model: Preset) -> PathBuf {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3600, rest / 60 % 60, rest % 60);
    PathBuf::from("runs").join(format!("{model}-{year:04}{month:02}{day:02}-{h:02}{m:02}{s:02}"))
}

/// The checkpoint's config with the options the user gave on top. Settings that define the trajectory's
/// identity (model, data, batch, sequence length, seed, order) must match; the others may change, with a
/// note where that makes the run differ from an uninterrupted one.
fn resolve_resume(options: &Options, path: &std::path::Path) -> Result<(TrainConfig, Vec<String>)> {
    let dir = checkpoint::locate(path)?;
    let state = checkpoint::read_state(&dir)?;
    let mut config = state.config.clone();
    let verb = if options.eval_only { "loading" } else { "resuming" };
    let mut notes = vec![format!("{verb} {} at step {} from {}", config.model, state.step, dir.display())];
    let conflict = |flag: &str, given: String, saved: String| {
        TrainError::Config(format!(
            "{flag} {given} differs from the checkpoint's {saved} ({}); a resumed run keeps it. Drop {flag}, \
             or start a new run without --resume",
            dir.display()
        ))
    };
    macro_rules! same {
        ($flag:literal, $field:ident) => {
            if let Some(given) = &options.$field {
                if *given != config.$field {
                    return Err(conflict($flag, given.to_string(), config.$field.to_string()));
                }
            }
        };
    }
    same!("--model", model);
    same!("--batch-size", batch_size);
    same!("--seq-len", seq_len);
    same!("--seed", seed);
    if let Some(message) =
        super::variant::resume_conflict(&super::variant::of_options(options), &config.variant)
    {
        return Err(TrainError::Config(format!("{message} ({})", dir.display())));
    }
    // Compared by size: a checkpoint without one used its preset's, and a raised one is stored as its own.
    let saved_vocab = config.vocab_size.unwrap_or(config.model.config().vocab_size);
    if let Some(given) = options.vocab_size.filter(|&given| given != saved_vocab) {
        return Err(conflict("--vocab-size", given.to_string(), saved_vocab.to_string()));
    }
    if options.data.is_some() && options.data != config.data {
        return Err(conflict("--data", format!("{:?}", options.data), format!("{:?}", config.data)));
    }
    if options.no_shuffle && config.shuffle {
        return Err(conflict("--no-shuffle", "(no shuffle)".into(), "shuffled order".into()));
    }
    if let Some(device) = options.device {
        config.device = device;
    }
    config.resolve_device()?;
    if let Some(precision) = options.precision {
        config.precision = precision;
    }
    if options.val_data.is_some() {
        if !options.eval_only && options.val_data != config.val_data {
            notes.push(
                "--val-data differs from the original run: validation losses are not comparable".into(),
            );
        }
        config.val_data = options.val_data.clone();
    }
    if options.tokenizer.is_some() {
        notes.push("--tokenizer is ignored on resume: the checkpoint's tokenizer.json is used".into());
    }
    let mut changed = Vec::new();
    if let Some(steps) = options.steps.filter(|&s| s != config.steps) {
        changed.push(format!("--steps {} -> {steps}", config.steps));
        config.steps = steps;
    }
    if let Some(warmup) = options.warmup.filter(|&w| w != config.warmup) {
        changed.push(format!("--warmup {} -> {warmup}", config.warmup));
        config.warmup = warmup;
    }
    if let Some(lr) = options.lr.filter(|&lr| lr != config.lr) {
        changed.push(format!("--lr {} -> {lr}", config.lr));
        config.lr = lr;
    }
    if let Some(policy) = options.recompute.filter(|&p| p != config.recompute) {
        changed.push(format!(
            "--recompute {} -> {} (changes memory and time, not the numbers)",
            config.recompute.name(),
            policy.name()
        ));
        config.recompute = policy;
    }
    if let Some(micro) = options.micro_batch.filter(|&m| m != config.micro_batch) {
        changed.push(format!("--micro-batch {} -> {micro} (changes only f32 rounding)", config.micro_batch));
        config.micro_batch = micro.min(config.batch_size).max(1);
    }
    if options.no_decay_norms_embeddings && !config.no_decay_norms_embeddings {
        changed.push("--no-decay-norms-embeddings switched on".into());
        config.no_decay_norms_embeddings = true;
    }
    if !changed.is_empty() && !options.eval_only {
        notes.push(format!(
            "changed on resume: {}; the run no longer matches an uninterrupted one bit for bit",
            changed.join(", ")
        ));
    }
    config.eval_every = options.eval_every.unwrap_or(config.eval_every);
    config.eval_tokens = options.eval_tokens.unwrap_or(config.eval_tokens);
    config.save_every = options.save_every.unwrap_or(config.save_every);
    config.keep_checkpoints = options.keep_checkpoints.unwrap_or(config.keep_checkpoints);
    config.keep_every = options.keep_every.unwrap_or(config.keep_every);
    config.save_every_minutes = options.save_every_minutes.or(config.save_every_minutes);
    config.strict |= options.strict;
    // Without --out the run goes on in the directory that holds the checkpoint.
    config.out = match &options.out {
        Some(out) => out.clone(),
        None => dir.parent().map_or_else(|| PathBuf::from("."), PathBuf::from),
    };
    config.resume = Some(dir);
    config.eval_only = options.eval_only;
    config.stop_after = options.stop_after;
    config.cache_dir = options.cache_dir.clone();
    config.nccl = options.nccl;
    config.zero = options.zero == 1;
    config.overlap = options.overlap;
    config.bucket_bytes = usize::try_from(options.bucket_kib << 10).unwrap_or(usize::MAX);
    Ok((config, notes))
}

//! The training program's command line, typed: clap parses straight into [`Options`], whose fields are
//! the types the run uses ([`Preset`], [`Precision`], [`Policy`], [`DeviceChoice`], [`Keep`]), so a value
//! is parsed once, where it is typed, and a bad one is clap's error listing the valid ones. Also the serde forms of
//! these types in `state.json` (the names the command line uses).
use super::{Keep, Result, TrainError};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use cola_autograd::Policy;
use cola_nn::Preset;
use cola_tensor::Device;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where training runs: `Auto` is the first GPU when one is usable, else the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    /// A CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = TrainError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "auto" => Ok(DeviceChoice::Auto),
            other => match other.parse::<Device>() {
                Ok(Device::Cpu) => Ok(DeviceChoice::Cpu),
                Ok(Device::Cuda(n)) => Ok(DeviceChoice::Cuda(n)),
                Err(_) => Err(TrainError::Config(format!(
                    "unknown device {other:?}; expected auto, cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

impl DeviceChoice {
    /// The device this choice means on this machine (a CUDA driver probe unless the choice is `cpu`); a
    /// GPU that is asked for but absent is an error.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(if gpu_count() > 0 { Device::Cuda(0) } else { Device::Cpu }),
            DeviceChoice::Cuda(n) => {
                let unavailable = |reason: String| TrainError::DeviceUnavailable {
                    device: Device::Cuda(n).to_string(),
                    reason,
                };
                #[cfg(feature = "cuda")]
                return cola_kernels::cuda::device(n)
                    .map(|_| Device::Cuda(n))
                    .map_err(|e| unavailable(e.to_string()));
                #[cfg(not(feature = "cuda"))]
                Err(unavailable("this build has no CUDA backend (the `cuda` feature)".into()))
            }
        }
    }
}

/// Usable CUDA devices (0 without a driver or without the `cuda` feature).
pub fn gpu_count() -> usize {
    #[cfg(feature = "cuda")]
    return cola_tensor::cuda::cuda_device_count();
    #[cfg(not(feature = "cuda"))]
    0
}

/// Numeric precision of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights, activations and optimizer state (the CPU's default: exact numbers for teaching and parity).
    F32,
    /// bf16 weights and activations with f32 accumulation, f32 master weights and AdamW moments (a GPU's default).
    Bf16Mixed,
    /// bf16 weights, activations and AdamW moments: the paper's setting.
    PureBf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16Mixed, Precision::PureBf16];

    /// The command-line and `state.json` name.
    pub const fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16Mixed => "bf16-mixed",
            Precision::PureBf16 => "pure-bf16",
        }
    }

    /// Whether AdamW keeps an f32 master copy (and f32 moments) of the bf16 parameters: everywhere but in
    /// pure bf16, whose moments are bf16 too.
    pub fn master_weights(self) -> bool {
        self != Precision::PureBf16
    }

    /// The dtype parameters and activations are stored in.
    pub fn param_dtype(self) -> cola_tensor::DType {
        match self {
            Precision::F32 => cola_tensor::DType::F32,
            Precision::Bf16Mixed | Precision::PureBf16 => cola_tensor::DType::BF16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = TrainError;

    fn from_str(text: &str) -> Result<Precision> {
        Precision::ALL.into_iter().find(|p| p.name() == text).ok_or_else(|| {
            TrainError::Config(format!("--precision {text}: expected f32, bf16-mixed or pure-bf16"))
        })
    }
}

/// The retention policies a run may be given (`all` exists for tests of the replay mechanism only).
const TRAINING_POLICIES: [Policy; 3] = [Policy::KeepAll, Policy::ColaM, Policy::Block];

/// A clap parser accepting exactly `names` (listed in clap's error for any other value), then typed by
/// `parse`, which every listed name satisfies.
fn one_of<T, E>(
    names: impl IntoIterator<Item = &'static str>,
    parse: fn(&str) -> std::result::Result<T, E>,
) -> impl TypedValueParser<Value = T>
where
    T: Clone + Send + Sync + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    PossibleValuesParser::new(names).try_map(move |name| parse(&name))
}

fn preset_parser() -> impl TypedValueParser<Value = Preset> {
    one_of(Preset::ALL_NAMES, str::parse::<Preset>)
}

fn precision_parser() -> impl TypedValueParser<Value = Precision> {
    one_of(Precision::ALL.map(Precision::name), str::parse::<Precision>)
}

fn policy_parser() -> impl TypedValueParser<Value = Policy> {
    one_of(TRAINING_POLICIES.map(Policy::name), |name| {
        Policy::parse(name).ok_or_else(|| format!("unknown policy {name}"))
    })
}

/// A value typed by its `FromStr` (`--device`, `--keep-checkpoints`): clap's error carries the message
/// alone (clap already names the flag and the value).
fn parsed<T: FromStr<Err = TrainError>>(text: &str) -> std::result::Result<T, String> {
    text.parse().map_err(|e: TrainError| match e {
        TrainError::Config(message) => message,
        other => other.to_string(),
    })
}

/// Pre-train LLaMA with CoLA low-rank activations (or the full-rank baseline) on a text corpus.
///
/// Unset values come from the preset's recipe (docs/METHOD.md section 6), scaled to the CPU, or on --resume
/// from the checkpoint. --resume DIR continues bit for bit.
///
/// SIGTERM, SIGUSR1 and Ctrl-C (SIGINT) end the run after the current update with a checkpoint; the exit
/// status is then 75 ("stopped by a signal, checkpoint saved: continue with --resume"). A second signal
/// exits at once (128 + its number) and keeps the last complete checkpoint. Other exit statuses: 0 done,
/// 1 error.
#[derive(clap::Parser, Clone, Debug, Default)]
#[command(name = "llama_cola_350m", version)]
#[command(group(clap::ArgGroup::new("report").args(["audit", "profile", "eval_only"])))]
pub struct Options {
    /// Model preset: cola-{60m,130m,350m,1b,7b}, full-{60m,...} (dense baseline), cola-tiny, full-tiny;
    /// for experiments cola-small, full-small, full-small-2l (docs/EXPERIMENTS.md) [default: cola-350m]
    #[arg(long, value_parser = preset_parser(), hide_possible_values = true)]
    pub model: Option<Preset>,
    /// Where to train: auto (the first GPU when one is usable, else the CPU), cpu, cuda or cuda:N
    /// [default: auto]
    #[arg(long, value_parser = parsed::<DeviceChoice>)]
    pub device: Option<DeviceChoice>,
    /// Numeric precision: bf16-mixed (bf16 weights and activations, f32 accumulation, f32 master weights
    /// and AdamW state), pure-bf16 (the paper's setting) or f32 [default: bf16-mixed on a GPU, f32 on
    /// the CPU]
    #[arg(long, alias = "dtype", value_parser = precision_parser())]
    pub precision: Option<Precision>,
    /// Training corpus: a .txt, .jsonl or .json.gz file (a "text" field per line), a folder or a quoted glob
    /// pattern of those (C4's 'c4-train.*-of-01024.json.gz'), or a .bin of u16 token ids; tokenized once into
    /// token shards in the cache [default: Shakespeare's works, fetched once]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation corpus [default: 1% of the training sequences, held out by seed]
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// A tokenizer.json [default: a byte-level BPE of the model's vocabulary trained once on the corpus]
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Model vocabulary size, overriding the preset's (32000; the tiny presets' 64 becomes 512 when a BPE is
    /// trained on the corpus)
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Optimizer updates of the schedule [default: the recipe's total, e.g. 60000 for 350m]
    #[arg(long)]
    pub steps: Option<u64>,
    /// Warmup updates [default: the recipe's, scaled down with --steps]
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Peak learning rate [default: the recipe's, e.g. 3e-3 for 350m]
    #[arg(long)]
    pub lr: Option<f64>,
    /// Sequences per optimizer update [default: 8 on the CPU; the paper uses 512]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Sequences per forward/backward pass; gradients are accumulated up to --batch-size
    /// [default: 4 for 350m, 8 for 60m/130m]
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Tokens per sequence [default: 256]
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Seed of the initial weights, the validation split and the data order [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Serve training sequences in corpus order instead of a seeded shuffle per epoch
    #[arg(long)]
    pub no_shuffle: bool,
    /// Evaluate every N updates and after the last [default: steps/20, at most 1000]; 0 never
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Validation tokens per periodic evaluation [default: 16384]
    #[arg(long)]
    pub eval_tokens: Option<usize>,
    /// Checkpoint every N updates, and always at the end and on a stop signal [default: steps/10, at most
    /// 1000]
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Checkpoints the run directory keeps: the newest N, or all; the one a run resumed from stays until
    /// that run ends [default: 1, on --resume the run's]
    #[arg(long, value_name = "N|all", value_parser = parsed::<Keep>)]
    pub keep_checkpoints: Option<Keep>,
    /// Also keep every checkpoint whose step is a multiple of K; 0 none [default: 0, on --resume the run's]
    #[arg(long, value_name = "K")]
    pub keep_every: Option<u64>,
    /// Exempt RMSNorm weights and the embedding from weight decay
    #[arg(long)]
    pub no_decay_norms_embeddings: bool,
    /// Run directory [default: runs/<model>-<date>-<time>; on --resume the checkpoint's run directory]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from a checkpoint folder or from the latest checkpoint of a run directory
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// With --resume: print validation loss and perplexity over the whole validation set, then exit
    #[arg(long, requires = "resume")]
    pub eval_only: bool,
    /// Save a checkpoint and stop after this many updates (the schedule still spans --steps)
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Threads of the compute pool [default: one per core]
    #[arg(long)]
    pub threads: Option<usize>,
    /// A malformed JSON line in the corpus is an error instead of being skipped and counted
    #[arg(long)]
    pub strict: bool,
    /// Cache folder for the corpus, tokenizer and token ids [default: $COLA_CACHE or local/cache]
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// What the tape keeps for backward: none (everything backward reads), cola-m (the residual stream and
    /// the rank-r bottleneck values x@A; CoLA presets) or block (each layer's input). Same numbers, less memory
    /// [default: none]
    #[arg(long, value_parser = policy_parser())]
    pub recompute: Option<Policy>,
    /// Sum the gradients over NCCL even in a run of one process (a build with --features nccl, on a GPU):
    /// the one-GPU check of the data-parallel GPU path, whose losses must equal those of a plain run
    #[arg(long)]
    pub nccl: bool,
    /// ZeRO stage: 1 shards AdamW's moments (and bf16-mixed's f32 masters) over the ranks (each rank keeps
    /// 1/N of them, updates its slice of the parameters and all-gathers them; the same update as 0, which
    /// keeps them whole on every rank). On the CPU over MPI (--features mpi); on GPUs over NCCL
    /// (--features nccl, with --nccl or several ranks)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero: u8,
    /// Under several ranks (or --nccl), start each gradient bucket's sum (an all-reduce, or under --zero 1
    /// a reduce to the rank that owns it) as soon as the last micro-batch's backward has made its
    /// gradients final, so that communication overlaps the rest of backward (MPI; NCCL on a stream of its
    /// own); false sums every bucket after backward. The sums are the same bit for bit
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub overlap: bool,
    /// Size of the gradient buckets summed over the ranks, in KiB (one collective call per bucket; with
    /// --overlap, a bucket's sum starts once backward has made all of its gradients final)
    #[arg(long, default_value_t = 25 << 10, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    pub bucket_kib: u64,
    /// Print parameter counts, FLOPs per token and the measured activation memory of one micro-batch under
    /// each applicable --recompute policy, then exit without training
    #[arg(long)]
    pub audit: bool,
    /// Train one warm-up step and --steps measured steps [default: 3], print calls, time, share and FLOPs
    /// per op family and direction (forward, backward, recompute, optimizer), then exit without saving
    #[arg(long, conflicts_with_all = ["audit", "resume"])]
    pub profile: bool,
    /// With --audit, --profile or --eval-only: print the same as one JSON object
    #[arg(long, requires = "report")]
    pub json: bool,

    // Cluster jobs.
    /// Also checkpoint when M minutes (fractions allowed) have passed since the last checkpoint, by rank
    /// 0's clock [default: none; on --resume the run's]
    #[arg(long, value_name = "M")]
    pub save_every_minutes: Option<f64>,

    // The model variant (docs/EXPERIMENTS.md), CoLA presets only.
    /// Activation between the low-rank factors: silu (the paper's), gelu (tanh form), relu, or identity
    /// (no activation: the plain low-rank baseline y = (x A) B); gelu and relu train on the CPU only
    /// [default: silu]
    #[arg(long, value_parser = super::variant::activation_parser())]
    pub lowrank_act: Option<cola_nn::LowRankActivation>,
    /// Rank of every low-rank bottleneck, overriding the preset's (1 <= R < min(d_model, ffn_dim))
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,
    /// Drop the MLP's own gate SiLU, down(gate(x) * up(x)) (the reference's only_lr_act); --only-lr-act
    /// false keeps it [default: the preset's: kept up to 130m, dropped from 350m up]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub only_lr_act: Option<bool>,
}

/// serde by the `Display` / `FromStr` names (`"cola-350m"`, `"bf16-mixed"`): the `state.json` form.
pub(crate) mod by_name {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(de::Error::custom)
    }
}

/// serde of a retention policy by its command-line name (`"none"`, `"cola-m"`, `"block"`), kept here
/// so that the engine crate needs no serde.
pub(crate) mod policy_name {
    use cola_autograd::Policy;
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(policy: &Policy, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(policy.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Policy, D::Error> {
        let name = String::deserialize(deserializer)?;
        Policy::parse(&name).ok_or_else(|| de::Error::custom(format!("unknown retention policy {name:?}")))
    }
}

//! Pre-training: the step loop, evaluation, checkpoints and metrics of the CoLA recipe (docs/METHOD.md
//! section 6).
//!
//! [`run`] does a whole run from a [`TrainConfig`]: it prepares the data ([`crate::data`]), builds or
//! resumes the model and AdamW, trains with gradient accumulation, clipping and the warmup + cosine
//! schedule, evaluates, logs `metrics.jsonl` and `loss.png`, and writes atomic checkpoints from which
//! `--resume` continues bit for bit. [`plan::resolve`] turns command-line [`Options`] into a config,
//! filling in the preset's recipe and scaling it to a CPU; `examples/llama_cola_350m.rs` is a thin shell
//! around the two.
//!
//! Files: `config.rs` (the settings of a run, checked before any work), `error.rs` (the errors of a run),
//! `options.rs` (the typed command line), `plan.rs` (defaults and their reasons), `run.rs`
//! (orchestration), `trainer.rs` (one optimizer step), `eval.rs` (validation loss), `checkpoint.rs` (run
//! state on disk), `hf_config.rs` (its `config.json` for other tools), `retention.rs` (which checkpoints
//! are kept), `lock.rs` (one process per run directory), `metrics.rs` (jsonl + plot), `progress.rs`
//! (terminal output), `profile.rs` (`--profile`: time and FLOPs per op family and direction over a few
//! steps), `stop.rs` (signals that stop a run with a checkpoint), `boundary.rs` (what the ranks agree on
//! between updates: stop, time-based checkpoints), `variant.rs` (the model variant on the command line
//! and in `state.json`).
mod boundary;
pub mod checkpoint;
mod config;
mod error;
pub mod eval;
pub mod hf_config;
pub mod lock;
pub mod metrics;
pub mod options;
pub mod plan;
mod prepare;
pub mod profile;
mod progress;
pub mod retention;
mod run;
pub mod sample;
pub mod stop;
pub mod trainer;
pub mod variant;

pub use checkpoint::{RunState, CHECKPOINT_PREFIX, OPTIMIZER_FILE, STATE_FILE, TOKENIZER_FILE};
pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use eval::{evaluate, EvalResult};
pub use hf_config::{HfConfig, HF_CONFIG_FILE};
pub use lock::{RunLock, LOCK_FILE};
pub use metrics::{EvalRecord, MetricsLog, StepRecord, METRICS_FILE, PLOT_FILE};
pub use options::{gpu_count, DeviceChoice, Options, Precision};
pub use plan::resolve;
pub use profile::{profile, HostMemory, ProfileRow, StepProfile};
pub use progress::{long_run_hint, LONG_RUN, QUICK_START_FLAGS};
pub use retention::{Keep, Retention};
pub use run::{run, set_threads, EvalSummary, RunOutcome, TrainSummary};
pub use stop::{StopRequest, StopSignal, EXIT_STOPPED};
pub use trainer::{StepStats, Trainer};

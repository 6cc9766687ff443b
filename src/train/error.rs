//! [`TrainError`]: the errors of a run, one variant per layer below and per thing a user can get wrong.
use crate::data::DataError;
use crate::dist::DistError;
use cola_autograd::AutogradError;
use cola_nn::NnError;
use cola_optim::OptimError;
use std::path::PathBuf;

/// The errors of a run. Each message is one paragraph that names the file, setting or step at fault
/// and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Nn(#[from] NnError),
    #[error("optimizer: {0}")]
    Optim(#[from] OptimError),
    #[error("autograd: {0}")]
    Autograd(#[from] AutogradError),
    #[error("tensor: {0}")]
    Tensor(#[from] cola_tensor::TensorError),
    #[error("data parallelism: {0}")]
    Dist(#[from] DistError),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("--device {device}: no usable GPU ({reason}); use --device cpu or --device auto")]
    DeviceUnavailable { device: String, reason: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {}: {reason}", .path.display())]
    Checkpoint { path: PathBuf, reason: String },
    /// The run directory belongs to another process (see [`super::lock`]).
    #[error("run directory locked: {}: {reason}", .path.display())]
    Locked { path: PathBuf, reason: String },
    #[error(
        "training diverged at step {step}: the {what} is {value}, so the update was not applied and nothing \
         was saved for it. {}. Lower --lr (now {lr:e}) or lengthen --warmup, then resume from the last \
         checkpoint or start again.",
        match .last_checkpoint {
            Some(path) => format!("The last good checkpoint is {}", path.display()),
            None => "No checkpoint had been saved yet".to_string(),
        }
    )]
    Diverged { step: u64, what: &'static str, value: f64, lr: f64, last_checkpoint: Option<PathBuf> },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> TrainError {
        TrainError::Checkpoint { path: path.into(), reason: reason.into() }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;

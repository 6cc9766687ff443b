//! Errors of the optimizers.
use cola_tensor::TensorError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptimError {
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("optimizer state for parameter '{name}' is missing '{what}'")]
    MissingState { name: String, what: &'static str },
    #[error("optimizer state '{name}' has shape {got:?}, its parameter has shape {expected:?}")]
    StateShape { name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("two parameters are named '{name}'; the optimizer keeps its state by name")]
    DuplicateName { name: String },
    #[error("invalid schedule: {reason}")]
    Schedule { reason: String },
}

pub type Result<T> = std::result::Result<T, OptimError>;

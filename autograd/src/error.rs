//! Errors of the tape.
use cola_tensor::TensorError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AutogradError {
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("var {var} does not belong to this tape (it has {slots} slots)")]
    UnknownVar { var: usize, slots: usize },
    #[error("backward needs a scalar loss, got shape {shape:?}")]
    NotScalar { shape: Vec<usize> },
    #[error("var {var} does not depend on any tensor that requires a gradient")]
    NoGradPath { var: usize },
    #[error("the value of var {var} was released by backward; read values before calling backward")]
    ValueReleased { var: usize },
    #[error("backward was already run on this tape; record a new forward pass")]
    BackwardTwice,
}

pub type Result<T> = std::result::Result<T, AutogradError>;

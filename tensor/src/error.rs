//! Errors of tensor operations: every message names the op and the offending shapes, dtypes or devices.
use crate::{DType, Device};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("{op}: shapes {lhs:?} and {rhs:?} are incompatible ({reason})")]
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize>, reason: &'static str },
    #[error("{op}: dtypes {lhs} and {rhs} differ")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },
    #[error("{op}: dtype {dtype} is not supported ({reason})")]
    UnsupportedDType { op: &'static str, dtype: DType, reason: &'static str },
    #[error("{op}: tensors on {lhs} and {rhs}")]
    DeviceMismatch { op: &'static str, lhs: Device, rhs: Device },
    #[error("{op}: device {device} is not available ({reason})")]
    UnsupportedDevice { op: &'static str, device: Device, reason: String },
    #[error("{op}: axis {axis} is out of range for a tensor of rank {rank}")]
    AxisOutOfRange { op: &'static str, axis: isize, rank: usize },
    #[error("{op}: index {index} is out of range for a dimension of size {size}")]
    IndexOutOfRange { op: &'static str, index: usize, size: usize },
    #[error("{op}: expected {expected} elements for shape {shape:?}, got {got}")]
    ElementCount { op: &'static str, shape: Vec<usize>, expected: usize, got: usize },
    #[error("{op}: CUDA: {message}")]
    Cuda { op: &'static str, message: String },
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument { op: &'static str, reason: String },
}

pub type Result<T> = std::result::Result<T, TensorError>;

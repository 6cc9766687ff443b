//! Errors of the layers, the presets and checkpoint I/O: every message names the offending config field,
//! tensor name, shape or path.
use cola_autograd::AutogradError;
use cola_tensor::TensorError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Autograd(#[from] AutogradError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("unknown preset {name:?}; valid presets: {valid}")]
    UnknownPreset { name: String, valid: String },
    #[error("invalid config: {reason}")]
    InvalidConfig { reason: String },
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },
    #[error("checkpoint {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {}: not a valid safetensors file: {reason}", .path.display())]
    Format { path: PathBuf, reason: String },
    #[error(
        "checkpoint {}: tensor {name:?} has dtype {dtype}, supported are F32, F64, BF16 and F16",
        .path.display()
    )]
    UnsupportedDType { path: PathBuf, name: String, dtype: String },
    #[error(
        "checkpoint {} does not match the model: a model of {n_layers} layers has more tensors than the \
         file's {tensors}",
        .path.display()
    )]
    TooFewTensors { path: PathBuf, n_layers: usize, tensors: usize },
    #[error(
        "checkpoint {} does not match the model: {}",
        .path.display(),
        describe_mismatch(.missing, .unexpected, .misshaped)
    )]
    Mismatch {
        path: PathBuf,
        /// Names the model expects that the file lacks.
        missing: Vec<String>,
        /// Names in the file that the model does not have.
        unexpected: Vec<String>,
        /// `(name, expected on-disk shape, shape in the file)`.
        misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    },
}

fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    misshaped: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {missing:?}"));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected {unexpected:?}"));
    }
    if !misshaped.is_empty() {
        let shapes: Vec<String> = misshaped
            .iter()
            .map(|(name, expected, got)| format!("{name} expected {expected:?} got {got:?}"))
            .collect();
        parts.push(format!("mis-shaped [{}]", shapes.join(", ")));
    }
    parts.join("; ")
}

pub type Result<T> = std::result::Result<T, NnError>;

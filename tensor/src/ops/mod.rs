//! Forward ops on tensors. Each op validates its inputs (shapes, dtypes, devices), runs the CPU kernel of
//! `cola_kernels` in the compute dtype (bf16 is upcast to f32 and the result cast back) and returns a new
//! contiguous tensor. Backward kernels that the autograd rules need are exposed here too.
use crate::error::{Result, TensorError};
use crate::{DType, Tensor};

pub mod attention;
pub mod concat;
pub mod elementwise;
pub mod embedding;
pub mod gated;
pub mod head_loss;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod rope;
pub mod view;
pub mod write;

/// Evaluates `$body` with `$T` bound to the Rust type of a compute dtype (f32 or f64).
macro_rules! match_float {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            dtype => Err($crate::TensorError::UnsupportedDType {
                op: $op,
                dtype,
                reason: "bf16 is computed in f32; upcast first",
            }),
        }
    };
}
pub(crate) use match_float;

/// Fails unless every tensor has the dtype and device of the first.
pub(crate) fn check_same(op: &'static str, tensors: &[&Tensor]) -> Result<()> {
    let Some(first) = tensors.first() else { return Ok(()) };
    for t in &tensors[1..] {
        if t.dtype() != first.dtype() {
            return Err(TensorError::DTypeMismatch { op, lhs: first.dtype(), rhs: t.dtype() });
        }
        if t.device() != first.device() {
            return Err(TensorError::DeviceMismatch { op, lhs: first.device(), rhs: t.device() });
        }
    }
    crate::tensor::check_device(op, first.device())
}

/// Runs `f` on the inputs in their compute dtype: bf16 inputs are upcast to f32 and every output is cast
/// back to bf16. Checks that the inputs agree in dtype and device first.
pub(crate) fn in_compute_dtype<const N: usize>(
    op: &'static str,
    inputs: [&Tensor; N],
    f: impl FnOnce([Tensor; N]) -> Result<Vec<Tensor>>,
) -> Result<Vec<Tensor>> {
    check_same(op, &inputs)?;
    let stored = inputs.first().map_or(DType::F32, |t| t.dtype());
    let compute = stored.compute_dtype();
    let converted: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(compute)).collect::<Result<_>>()?;
    let converted: [Tensor; N] = converted.try_into().map_err(|_| TensorError::InvalidArgument {
        op,
        reason: "input count changed during conversion".into(),
    })?;
    let outputs = f(converted)?;
    outputs.into_iter().map(|t| t.to_dtype(stored)).collect()
}

/// [`in_compute_dtype`] for ops with one output.
pub(crate) fn in_compute_dtype1<const N: usize>(
    op: &'static str,
    inputs: [&Tensor; N],
    f: impl FnOnce([Tensor; N]) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut out = in_compute_dtype(op, inputs, |t| f(t).map(|o| vec![o]))?;
    out.pop().ok_or(TensorError::InvalidArgument { op, reason: "op produced no output".into() })
}

/// Fails unless `t` has exactly `rank` dims.
pub(crate) fn check_rank(op: &'static str, t: &Tensor, rank: usize, what: &'static str) -> Result<()> {
    if t.rank() != rank {
        return Err(TensorError::InvalidArgument {
            op,
            reason: format!("{what} must have rank {rank}, got shape {:?}", t.shape()),
        });
    }
    Ok(())
}

/// Fails unless both tensors have the same shape.
pub(crate) fn check_same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: a.shape().to_vec(),
            rhs: b.shape().to_vec(),
            reason: "shapes must be equal",
        });
    }
    Ok(())
}

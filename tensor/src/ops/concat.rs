//! Concatenation along an axis (the inverse of [`Tensor::split`]).
use super::check_same;
use crate::error::{Result, TensorError};
use crate::layout::resolve_axis;
use crate::storage::{CpuStorage, Element};
use crate::{DType, Tensor};
use half::bf16;

fn concat_t<T: Element>(parts: &[Tensor], axis: usize, shape: &[usize]) -> Result<CpuStorage> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let row = shape[axis] * inner;
    let mut out: Vec<T> = Vec::with_capacity(outer * row);
    let data = parts.iter().map(|p| p.contiguous_data::<T>()).collect::<Result<Vec<_>>>()?;
    for o in 0..outer {
        for (p, d) in parts.iter().zip(&data) {
            let chunk = p.shape()[axis] * inner;
            out.extend_from_slice(&d[o * chunk..(o + 1) * chunk]);
        }
    }
    debug_assert_eq!(out.len(), outer * row);
    Ok(T::into_storage(out))
}

impl Tensor {
    /// Joins tensors along `axis`; all other dims, the dtype and the device must agree.
    pub fn concat(parts: &[Tensor], axis: isize) -> Result<Tensor> {
        let first = parts.first().ok_or(TensorError::InvalidArgument {
            op: "concat",
            reason: "needs at least one tensor".into(),
        })?;
        let ax = resolve_axis("concat", axis, first.rank())?;
        check_same("concat", &parts.iter().collect::<Vec<_>>())?;
        let mut shape = first.shape_vec();
        shape[ax] = 0;
        for p in parts {
            let compatible = p.rank() == first.rank()
                && (0..first.rank()).all(|d| d == ax || p.shape()[d] == first.shape()[d]);
            if !compatible {
                return Err(TensorError::ShapeMismatch {
                    op: "concat",
                    lhs: first.shape().to_vec(),
                    rhs: p.shape().to_vec(),
                    reason: "all dims but the concat axis must match",
                });
            }
            shape[ax] += p.shape()[ax];
        }
        #[cfg(feature = "cuda")]
        if first.is_cuda() {
            return crate::cuda::elementwise::concat(parts, ax, &shape);
        }
        let storage = match first.dtype() {
            DType::F32 => concat_t::<f32>(parts, ax, &shape)?,
            DType::F64 => concat_t::<f64>(parts, ax, &shape)?,
            DType::BF16 => concat_t::<bf16>(parts, ax, &shape)?,
        };
        Ok(Tensor::from_storage(storage, crate::layout::Layout::contiguous(&shape)))
    }
}

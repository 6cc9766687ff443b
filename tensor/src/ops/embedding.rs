//! Embedding lookup: rows of a `[vocab, dim]` table gathered by token ids.
use super::{check_rank, in_compute_dtype1, match_float};
use crate::error::{Result, TensorError};
use crate::layout::Shape;
use crate::{DType, Device, Tensor};
use cola_kernels::cpu::embedding::{embedding_backward, embedding_backward_bf16, embedding_forward};
use half::bf16;

fn check_ids(op: &'static str, ids: &[u32], ids_shape: &[usize], vocab: usize) -> Result<()> {
    let expected: usize = ids_shape.iter().product();
    if ids.len() != expected {
        return Err(TensorError::ElementCount { op, shape: ids_shape.to_vec(), expected, got: ids.len() });
    }
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(TensorError::IndexOutOfRange { op, index: bad as usize, size: vocab });
    }
    Ok(())
}

impl Tensor {
    /// `out[i..] = weight[ids[i..]]`: weight `[vocab, dim]`, ids of `ids_shape`, out `ids_shape + [dim]`.
    pub fn embedding(weight: &Tensor, ids: &[u32], ids_shape: &[usize]) -> Result<Tensor> {
        check_rank("embedding", weight, 2, "weight ([vocab, dim])")?;
        let (vocab, dim) = (weight.shape()[0], weight.shape()[1]);
        check_ids("embedding", ids, ids_shape, vocab)?;
        #[cfg(feature = "cuda")]
        if weight.is_cuda() {
            super::check_same("embedding", &[weight])?;
            return crate::cuda::embedding::embedding(weight, ids, ids_shape);
        }
        let mut shape: Shape = ids_shape.into();
        shape.push(dim);
        if weight.dtype() == DType::BF16 && weight.device() == Device::Cpu && super::fused_bf16() {
            // The rows are copied as they are: the upcast path's widening and rounding give them back
            // unchanged (every value but a signalling NaN, which rounding makes quiet).
            let wd = weight.contiguous_data::<bf16>()?;
            let mut out = crate::pool::take_for_overwrite::<bf16>(ids.len() * dim); // every row copied
            if !out.is_empty() {
                embedding_forward(&wd, dim, ids, &mut out);
            }
            return Tensor::from_vec(out, &shape);
        }
        in_compute_dtype1("embedding", [weight], |[w]| {
            match_float!("embedding", w.dtype(), T => {
                let wd = w.contiguous_data::<T>()?;
                // Every row is copied from the table (ids are checked above).
                let mut out = crate::pool::take_for_overwrite::<T>(ids.len() * dim);
                if !out.is_empty() {
                    embedding_forward(&wd, dim, ids, &mut out);
                }
                Ok(Tensor::from_compute(out, &shape))
            })
        })
    }

    /// Gradient of the table: `grad[id] += grad_out[i]` for every position whose id is not `pad_id`.
    /// `grad_out` is `[..ids.., dim]`; the result is `[vocab, dim]`.
    pub fn embedding_backward(
        grad_out: &Tensor,
        ids: &[u32],
        vocab: usize,
        pad_id: Option<u32>,
    ) -> Result<Tensor> {
        let dim = grad_out.shape().last().copied().unwrap_or(0);
        check_ids("embedding_backward", ids, &grad_out.shape()[..grad_out.rank().saturating_sub(1)], vocab)?;
        #[cfg(feature = "cuda")]
        if grad_out.is_cuda() {
            super::check_same("embedding_backward", &[grad_out])?;
            return crate::cuda::embedding::embedding_backward(grad_out, ids, vocab, pad_id);
        }
        if grad_out.dtype() == DType::BF16 && grad_out.device() == Device::Cpu && super::fused_bf16() {
            // Each row summed in f32 and rounded once; no f32 table.
            let gd = grad_out.contiguous_data::<bf16>()?;
            let mut gw = crate::pool::take_for_overwrite::<bf16>(vocab * dim); // every row written
            embedding_backward_bf16(&gd, dim, ids, pad_id, &mut gw);
            return Tensor::from_vec(gw, &[vocab, dim]);
        }
        in_compute_dtype1("embedding_backward", [grad_out], |[g]| {
            match_float!("embedding_backward", g.dtype(), T => {
                let gd = g.contiguous_data::<T>()?;
                // Accumulated into: rows no id selects stay zero.
                let mut gw = crate::pool::take_zeroed::<T>(vocab * dim);
                if !gw.is_empty() {
                    embedding_backward(&gd, dim, ids, pad_id, &mut gw);
                }
                Ok(Tensor::from_compute(gw, &[vocab, dim]))
            })
        })
    }
}

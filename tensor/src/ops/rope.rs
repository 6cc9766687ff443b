//! Rotary position embedding (rotate-half) on `[batch, seq, heads, head_dim]`.
use super::{check_rank, in_compute_dtype1, match_float};
use crate::error::{Result, TensorError};
use crate::{DType, Device, Tensor};
use cola_kernels::cpu::rope::{rope_backward, rope_bf16, rope_forward, RopeDims};
use half::bf16;

fn dims(op: &'static str, x: &Tensor, positions: &[u32]) -> Result<RopeDims> {
    check_rank(op, x, 4, "x ([batch, seq, heads, head_dim])")?;
    let s = x.shape();
    let dims = RopeDims { batch: s[0], seq: s[1], heads: s[2], head_dim: s[3] };
    if !dims.head_dim.is_multiple_of(2) {
        return Err(TensorError::InvalidArgument {
            op,
            reason: format!("head_dim {} must be even", dims.head_dim),
        });
    }
    if positions.len() != dims.seq {
        return Err(TensorError::InvalidArgument {
            op,
            reason: format!("{} positions for a sequence of {} in shape {s:?}", positions.len(), dims.seq),
        });
    }
    Ok(dims)
}

/// Forward (`inverse == false`) or its transpose, which is the backward (`inverse == true`).
fn rope_any(op: &'static str, x: &Tensor, positions: &[u32], theta: f64, inverse: bool) -> Result<Tensor> {
    let dims = dims(op, x, positions)?;
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        super::check_same(op, &[x])?;
        return crate::cuda::rope::rope(op, x, positions, theta, inverse);
    }
    if x.dtype() == DType::BF16 && x.device() == Device::Cpu && super::fused_bf16() {
        let xd = x.contiguous_data::<bf16>()?;
        let mut y = crate::pool::take_for_overwrite::<bf16>(xd.len()); // written whole (head_dim is even)
        rope_bf16(&xd, dims, positions, theta, inverse, &mut y);
        return Tensor::from_vec(y, x.shape());
    }
    in_compute_dtype1(op, [x], |[x]| {
        match_float!(op, x.dtype(), T => {
            let xd = x.contiguous_data::<T>()?;
            // Written whole by the kernel (head_dim is even, checked above).
            let mut y = crate::pool::take_for_overwrite::<T>(xd.len());
            if !y.is_empty() {
                if inverse {
                    rope_backward(&xd, dims, positions, theta, &mut y);
                } else {
                    rope_forward(&xd, dims, positions, theta, &mut y);
                }
            }
            Ok(Tensor::from_compute(y, x.shape()))
        })
    })
}

impl Tensor {
    /// Rotates pairs `(i, i + head_dim/2)` by `positions[s] * theta^(-2i/head_dim)`.
    pub fn rope(&self, positions: &[u32], theta: f64) -> Result<Tensor> {
        rope_any("rope", self, positions, theta, false)
    }

    /// Gradient of [`Tensor::rope`]: the inverse rotation of the output gradient.
    pub fn rope_backward(grad_y: &Tensor, positions: &[u32], theta: f64) -> Result<Tensor> {
        rope_any("rope_backward", grad_y, positions, theta, true)
    }
}

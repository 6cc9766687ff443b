//! Fused causal attention on `[batch, seq, heads, head_dim]` (no transposes to a head-major layout).
use super::{check_rank, in_compute_dtype, in_compute_dtype1, match_float};
use crate::error::{Result, TensorError};
#[cfg(feature = "cuda")]
use crate::DType;
use crate::Tensor;
use cola_kernels::cpu::attention::{attention_backward, attention_forward, AttentionDims, AttentionGrads};
use cola_kernels::Float;

fn dims(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<AttentionDims> {
    for (t, what) in [(q, "q"), (k, "k"), (v, "v")] {
        check_rank(op, t, 4, what)?;
    }
    let (qs, ks) = (q.shape(), k.shape());
    let mismatch = |lhs: &[usize], rhs: &[usize], reason| TensorError::ShapeMismatch {
        op,
        lhs: lhs.to_vec(),
        rhs: rhs.to_vec(),
        reason,
    };
    if k.shape() != v.shape() {
        return Err(mismatch(ks, v.shape(), "k and v must have the same shape"));
    }
    if qs[0] != ks[0] || qs[2] != ks[2] || qs[3] != ks[3] {
        return Err(mismatch(qs, ks, "q and k must agree in batch, heads and head_dim"));
    }
    if qs[1] > ks[1] {
        return Err(mismatch(qs, ks, "q may not be longer than k (causal attention against a prefix)"));
    }
    Ok(AttentionDims { batch: qs[0], heads: qs[2], q_len: qs[1], kv_len: ks[1], head_dim: qs[3] })
}

/// What attention's forward saved for its backward ([`Tensor::attention_saving_lse`]): the output and the
/// per-row log-sum-exp of the scores, f32 `[batch, heads, q_len]`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionSaved<'a> {
    pub output: &'a Tensor,
    pub lse: &'a Tensor,
}

/// `saved` belongs to an attention of q (`dims`): the output shaped like q, on its device and dtype, and the
/// log-sum-exp contiguous f32 `[batch, heads, q_len]` on the same device.
#[cfg(feature = "cuda")]
fn check_saved(saved: AttentionSaved<'_>, q: &Tensor, dims: AttentionDims) -> Result<()> {
    const OP: &str = "attention_backward";
    super::check_same_shape(OP, q, saved.output)?;
    super::check_same(OP, &[q, saved.output])?;
    let want = [dims.batch, dims.heads, dims.q_len];
    let lse = saved.lse;
    if lse.shape() != want || lse.dtype() != DType::F32 || !lse.is_contiguous() || lse.device() != q.device()
    {
        return Err(TensorError::InvalidArgument {
            op: OP,
            reason: format!(
                "the saved log-sum-exp must be contiguous f32 {want:?} on {:?}, got {:?} {:?} on {:?}",
                q.device(),
                lse.dtype(),
                lse.shape(),
                lse.device()
            ),
        });
    }
    Ok(())
}

impl Tensor {
    /// Causal attention: `softmax(scale * q k^T + mask) v` per batch and head; q `[b, sq, h, hd]`,
    /// k and v `[b, skv, h, hd]` with `sq <= skv` (query i sits at position `i + skv - sq`).
    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        Ok(Tensor::attention_saving_lse(q, k, v, scale)?.0)
    }

    /// [`Tensor::attention`] and, where the device path produces it, the per-row log-sum-exp its backward
    /// reuses (the GPU flash kernels, head_dim 64 or 128: the probabilities are then recomputed from it
    /// without a second softmax pass). The CPU kernel recomputes its probabilities from q and k and saves
    /// nothing (`None`).
    pub fn attention_saving_lse(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let dims = dims("attention", q, k, v)?;
        #[cfg(feature = "cuda")]
        if q.is_cuda() {
            super::check_same("attention", &[q, k, v])?;
            if crate::cuda::flash_attention::supports(dims.head_dim) {
                let (out, lse) = crate::cuda::flash_attention::attention(q, k, v, scale)?;
                return Ok((out, Some(lse)));
            }
            return Ok((crate::cuda::attention::attention(q, k, v, scale)?, None));
        }
        in_compute_dtype1("attention", [q, k, v], |[q, k, v]| {
            match_float!("attention", q.dtype(), T => {
                let (qd, kd, vd) = (q.contiguous_data::<T>()?, k.contiguous_data::<T>()?, v.contiguous_data::<T>()?);
                // Every (batch, head) block is scattered into `out`, covering it.
                let mut out = crate::pool::take_for_overwrite::<T>(qd.len());
                if !out.is_empty() {
                    attention_forward(&qd, &kd, &vd, dims, T::from_f64(scale), &mut out);
                }
                Ok(Tensor::from_compute(out, q.shape()))
            })
        })
        .map(|out| (out, None))
    }

    /// Gradients `[grad_q, grad_k, grad_v]` of [`Tensor::attention`]; probabilities are recomputed (on
    /// the GPU flash path, by running the forward again for its log-sum-exp).
    pub fn attention_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        grad_out: &Tensor,
        scale: f64,
    ) -> Result<Vec<Tensor>> {
        Tensor::attention_backward_saved(q, k, v, grad_out, None, scale)
    }

    /// [`Tensor::attention_backward`] reusing what [`Tensor::attention_saving_lse`] returned: with `saved`
    /// the GPU flash path skips recomputing the forward. The CPU ignores `saved` (its result does not
    /// depend on it), and so does the GPU path for head dims without flash kernels.
    pub fn attention_backward_saved(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        grad_out: &Tensor,
        saved: Option<AttentionSaved<'_>>,
        scale: f64,
    ) -> Result<Vec<Tensor>> {
        let dims = dims("attention_backward", q, k, v)?;
        super::check_same_shape("attention_backward", q, grad_out)?;
        #[cfg(feature = "cuda")]
        if q.is_cuda() {
            super::check_same("attention_backward", &[q, k, v, grad_out])?;
            if !crate::cuda::flash_attention::supports(dims.head_dim) {
                return crate::cuda::attention::attention_backward(q, k, v, grad_out, scale);
            }
            let recomputed;
            let (out, lse) = match saved {
                Some(saved) => {
                    check_saved(saved, q, dims)?;
                    (saved.output, saved.lse)
                }
                None => {
                    recomputed = crate::cuda::flash_attention::attention(q, k, v, scale)?;
                    (&recomputed.0, &recomputed.1)
                }
            };
            return crate::cuda::flash_attention::attention_backward([q, k, v], out, lse, grad_out, scale);
        }
        let _ = saved;
        in_compute_dtype("attention_backward", [q, k, v, grad_out], |[q, k, v, g]| {
            match_float!("attention_backward", q.dtype(), T => {
                let (qd, kd, vd, gd) = (
                    q.contiguous_data::<T>()?,
                    k.contiguous_data::<T>()?,
                    v.contiguous_data::<T>()?,
                    g.contiguous_data::<T>()?,
                );
                // The kernel overwrites all three (each task merges all its heads' rows into them).
                let mut gq = crate::pool::take_for_overwrite::<T>(qd.len());
                let mut gk = crate::pool::take_for_overwrite::<T>(kd.len());
                let mut gv = crate::pool::take_for_overwrite::<T>(vd.len());
                if !gq.is_empty() {
                    let grads = AttentionGrads { q: &mut gq, k: &mut gk, v: &mut gv };
                    attention_backward(&qd, &kd, &vd, &gd, dims, T::from_f64(scale), grads);
                }
                Ok(vec![
                    Tensor::from_compute(gq, q.shape()),
                    Tensor::from_compute(gk, k.shape()),
                    Tensor::from_compute(gv, v.shape()),
                ])
            })
        })
    }
}

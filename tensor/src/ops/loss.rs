//! Fused cross-entropy over the last dim of logits, mean over targets that are not ignored.
use super::{in_compute_dtype1, match_float};
use crate::error::{Result, TensorError};
use crate::Tensor;
use cola_kernels::cpu::loss::{cross_entropy_backward, cross_entropy_forward, cross_entropy_sum};
use cola_kernels::Float;

/// Checks logits `[..., vocab]` against one target per row; returns `vocab`.
fn check(op: &'static str, logits: &Tensor, targets: &[u32], ignore_id: Option<u32>) -> Result<usize> {
    let vocab = logits.shape().last().copied().unwrap_or(0);
    if logits.rank() == 0 || vocab == 0 {
        return Err(TensorError::InvalidArgument {
            op,
            reason: format!("logits of shape {:?} have no classes", logits.shape()),
        });
    }
    let rows = logits.numel() / vocab;
    if targets.len() != rows {
        return Err(TensorError::InvalidArgument {
            op,
            reason: format!(
                "{} targets for logits of shape {:?} ({rows} rows)",
                targets.len(),
                logits.shape()
            ),
        });
    }
    if let Some(&bad) = targets.iter().find(|&&t| Some(t) != ignore_id && t as usize >= vocab) {
        return Err(TensorError::IndexOutOfRange { op, index: bad as usize, size: vocab });
    }
    Ok(vocab)
}

impl Tensor {
    /// Mean over rows whose target is not `ignore_id` of `-log softmax(logits[row])[target]`; a scalar in
    /// the compute dtype (f32 for bf16 logits: a bf16 loss would keep only 8 significant bits). When every
    /// target is ignored the loss is 0 (and so is its gradient), not NaN.
    pub fn cross_entropy(&self, targets: &[u32], ignore_id: Option<u32>) -> Result<Tensor> {
        let vocab = check("cross_entropy", self, targets, ignore_id)?;
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            super::check_same("cross_entropy", &[self])?;
            return crate::cuda::loss::cross_entropy(self, targets, ignore_id);
        }
        super::check_same("cross_entropy", &[self])?;
        let logits = self.to_dtype(self.dtype().compute_dtype())?;
        match_float!("cross_entropy", logits.dtype(), T => {
            let ld = logits.contiguous_data::<T>()?;
            let loss = cross_entropy_forward(&ld, vocab, targets, ignore_id);
            Ok(Tensor::from_compute(vec![loss], &[]))
        })
    }

    /// Sum (not mean) over rows whose target is not `ignore_id` of `-log softmax(logits[row])[target]`,
    /// in f64: the form a caller that sees the rows in blocks adds up in order before dividing once by the
    /// total count. On the CPU it is the kernel's own f64 sum; the GPU kernel returns the f32 mean of the
    /// block, which is multiplied back by the block's count (one extra f32 rounding of the block's mean).
    pub(crate) fn cross_entropy_sum(&self, targets: &[u32], ignore_id: Option<u32>) -> Result<f64> {
        let vocab = check("cross_entropy", self, targets, ignore_id)?;
        super::check_same("cross_entropy", &[self])?;
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            let mean = crate::cuda::loss::cross_entropy(self, targets, ignore_id)?.to_scalar()?;
            let count = cola_kernels::cpu::loss::counted_targets(targets, ignore_id);
            return Ok(mean * count as f64);
        }
        let logits = self.to_dtype(self.dtype().compute_dtype())?;
        match_float!("cross_entropy", logits.dtype(), T => {
            let ld = logits.contiguous_data::<T>()?;
            Ok(cross_entropy_sum(&ld, vocab, targets, ignore_id))
        })
    }

    /// Gradient of [`Tensor::cross_entropy`] w.r.t. the logits, scaled by the loss gradient `grad_loss`.
    pub fn cross_entropy_backward(
        logits: &Tensor,
        targets: &[u32],
        ignore_id: Option<u32>,
        grad_loss: f64,
    ) -> Result<Tensor> {
        let vocab = check("cross_entropy_backward", logits, targets, ignore_id)?;
        #[cfg(feature = "cuda")]
        if logits.is_cuda() {
            super::check_same("cross_entropy_backward", &[logits])?;
            return crate::cuda::loss::cross_entropy_backward(logits, targets, ignore_id, grad_loss);
        }
        in_compute_dtype1("cross_entropy_backward", [logits], |[logits]| {
            match_float!("cross_entropy_backward", logits.dtype(), T => {
                let ld = logits.contiguous_data::<T>()?;
                let mut g = crate::pool::take_for_overwrite::<T>(ld.len()); // overwritten, ignored rows with zeros
                cross_entropy_backward(&ld, vocab, targets, ignore_id, T::from_f64(grad_loss), &mut g);
                Ok(Tensor::from_compute(g, logits.shape()))
            })
        })
    }
}

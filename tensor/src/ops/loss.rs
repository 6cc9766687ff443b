//! Fused cross-entropy over the last dim of logits, mean over targets that are not ignored.
use super::{in_compute_dtype1, match_float};
use crate::error::{Result, TensorError};
use crate::Tensor;
use cola_kernels::cpu::loss::{
    cross_entropy_backward, cross_entropy_bf16, cross_entropy_forward, cross_entropy_sum,
};
use cola_kernels::Float;
use half::bf16;

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

    /// A block of the fused head's loss pass: the cross-entropy sum over the block's rows (0 unless
    /// `want_loss`) and, given `grad_loss`, the gradient of the logits in `grad_dtype` (the logits' dtype,
    /// or bf16 for f32 logits of bf16 operands), as [`Tensor::cross_entropy_sum`] and
    /// [`Tensor::cross_entropy_backward`] give them (a bf16 gradient of f32 logits rounded once from
    /// theirs). bf16 gradients on the CPU take one fused pass (`cola_kernels::cpu::loss::cross_entropy_bf16`:
    /// a row at a time read as f32, both kernels, the gradient rounded once on store), with the same bits
    /// and no f32 copy of the logits or of the gradient.
    pub(crate) fn cross_entropy_block(
        &self,
        targets: &[u32],
        ignore_id: Option<u32>,
        want_loss: bool,
        grad_loss: Option<f64>,
        grad_dtype: crate::DType,
    ) -> Result<(f64, Option<Tensor>)> {
        use crate::DType::{BF16, F32};
        let fused = grad_dtype == BF16
            && matches!(self.dtype(), BF16 | F32)
            && self.device() == crate::Device::Cpu
            && super::fused_bf16();
        if !fused {
            let loss = if want_loss { self.cross_entropy_sum(targets, ignore_id)? } else { 0.0 };
            let grad = grad_loss
                .map(|g| Tensor::cross_entropy_backward(self, targets, ignore_id, g)?.to_dtype(grad_dtype))
                .transpose()?;
            return Ok((loss, grad));
        }
        let vocab = check("cross_entropy", self, targets, ignore_id)?;
        let mut grad = grad_loss.map(|_| crate::pool::take_for_overwrite::<bf16>(self.numel())); // written whole
        let out = grad_loss.zip(grad.as_deref_mut()).map(|(g, out)| (f32::from_f64(g), out));
        let loss = match self.dtype() {
            BF16 => cross_entropy_bf16(&self.contiguous_data::<bf16>()?, vocab, targets, ignore_id, out),
            _ => cross_entropy_bf16(&self.contiguous_data::<f32>()?, vocab, targets, ignore_id, out),
        };
        let grad = grad.map(|g| Tensor::from_vec(g, self.shape())).transpose()?;
        Ok((if want_loss { loss } else { 0.0 }, grad))
    }
}

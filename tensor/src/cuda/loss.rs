//! GPU implementation of the loss ops (see `ops/loss.rs` for the CPU path and the shape rules).
//!
//! Per-row losses are computed in f32 (one block per row), then averaged over the counted rows in f64 in a
//! fixed order; the loss is an f32 scalar whatever the logits' dtype, as on the CPU.
use super::cuda_error;
use crate::error::Result;
use crate::{DType, Tensor};
use cola_kernels::cpu::loss::counted_targets;
use cola_kernels::cuda::ops::loss::{self as kernels, LossRows};

/// Mean cross-entropy of validated logits `[..., vocab]` against `targets` (one per row).
pub(crate) fn cross_entropy(logits: &Tensor, targets: &[u32], ignore_id: Option<u32>) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    let (device, dtype) = (logits.gpu_device(OP)?, logits.gpu_dtype(OP)?);
    let count = counted_targets(targets, ignore_id);
    if count == 0 {
        return Tensor::gpu_zeros(&device, &[], DType::F32);
    }
    let logits = logits.gpu_contiguous()?;
    let vocab = logits.shape().last().copied().unwrap_or(0);
    let shape = LossRows { rows: targets.len(), vocab, ignore_id };
    let target_buf = device.upload(targets).map_err(cuda_error(OP))?;
    let row_loss = Tensor::gpu_empty(&device, &[targets.len()], DType::F32)?;
    let out = Tensor::gpu_empty(&device, &[], DType::F32)?;
    // SAFETY: logits are contiguous `rows * vocab` of `dtype`, targets were uploaded (`rows` u32, counted
    // ones `< vocab` as the caller checked), row_loss holds `rows` f32 and out one f32. The
    // target buffer outlives the launch in stream order.
    unsafe {
        kernels::cross_entropy_forward(
            &device,
            dtype,
            logits.gpu_ptr(OP)?,
            target_buf.ptr(),
            row_loss.gpu_ptr(OP)?,
            out.gpu_ptr(OP)?,
            shape,
            count,
        )
    }
    .map_err(cuda_error(OP))?;
    Ok(out)
}

/// Gradient of the mean cross-entropy w.r.t. validated logits, scaled by `grad_loss`.
pub(crate) fn cross_entropy_backward(
    logits: &Tensor,
    targets: &[u32],
    ignore_id: Option<u32>,
    grad_loss: f64,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy_backward";
    let (device, dtype) = (logits.gpu_device(OP)?, logits.gpu_dtype(OP)?);
    let count = counted_targets(targets, ignore_id);
    if count == 0 {
        return Tensor::gpu_zeros(&device, logits.shape(), logits.dtype());
    }
    let logits = logits.gpu_contiguous()?;
    let vocab = logits.shape().last().copied().unwrap_or(0);
    let shape = LossRows { rows: targets.len(), vocab, ignore_id };
    // As the CPU kernel rounds it: the f32 loss gradient over the f32 count.
    let factor = grad_loss as f32 / count as f32;
    let target_buf = device.upload(targets).map_err(cuda_error(OP))?;
    let grad = Tensor::gpu_empty(&device, logits.shape(), logits.dtype())?;
    // SAFETY: logits and grad are contiguous `rows * vocab` of `dtype`; targets as in `cross_entropy`.
    unsafe {
        kernels::cross_entropy_backward(
            &device,
            dtype,
            logits.gpu_ptr(OP)?,
            target_buf.ptr(),
            grad.gpu_ptr(OP)?,
            shape,
            factor,
        )
    }
    .map_err(cuda_error(OP))?;
    Ok(grad)
}

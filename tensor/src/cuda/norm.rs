//! GPU implementation of the norm ops (see `ops/norm.rs` for the CPU path and the shape rules).
//! Inputs of any layout are made contiguous; outputs keep the input dtype (bf16 computed in f32).
use super::cuda_error;
use crate::error::Result;
use crate::{DType, Tensor};
use cola_kernels::cuda::ops::norm as kernels;
use cola_kernels::cuda::{CudaDevice, DeviceBuffer};
use std::sync::{Arc, Mutex, OnceLock};

/// The address of device `device`'s u32 that the backward's blocks count themselves done on (zeroed
/// once, then reset by each launch's last block), allocated at the first backward on that device.
fn finished_counter(device: &Arc<CudaDevice>) -> Result<u64> {
    static COUNTERS: OnceLock<Mutex<Vec<(usize, DeviceBuffer)>>> = OnceLock::new();
    let mut counters = COUNTERS.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, buffer)) = counters.iter().find(|(ordinal, _)| *ordinal == device.ordinal()) {
        return Ok(buffer.ptr());
    }
    let buffer = device.alloc_zeroed(4).map_err(cuda_error("rms_norm_backward"))?;
    let ptr = buffer.ptr();
    counters.push((device.ordinal(), buffer));
    Ok(ptr)
}

/// RMSNorm of `x: [..., d]` with `weight: [d]` (same dtype and device, checked by the caller).
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    let (device, dtype) = (x.gpu_device(OP)?, x.gpu_dtype(OP)?);
    let (x, weight) = (x.gpu_contiguous()?, weight.gpu_contiguous()?);
    let dim = weight.numel();
    let rows = x.numel().checked_div(dim).unwrap_or(0);
    let y = Tensor::gpu_empty(&device, x.shape(), x.dtype())?;
    // SAFETY: x and y are contiguous `rows * dim` tensors of `dtype`, weight a contiguous `[dim]`.
    unsafe {
        kernels::rms_norm_forward(
            &device,
            dtype,
            x.gpu_ptr(OP)?,
            weight.gpu_ptr(OP)?,
            y.gpu_ptr(OP)?,
            rows,
            dim,
            eps as f32,
        )
    }
    .map_err(cuda_error(OP))?;
    Ok(y)
}

/// `[grad_x, grad_weight]` of RMSNorm in one launch; the weight gradient is summed over rows in a fixed
/// order.
pub(crate) fn rms_norm_backward(
    x: &Tensor,
    weight: &Tensor,
    grad_y: &Tensor,
    eps: f64,
) -> Result<Vec<Tensor>> {
    const OP: &str = "rms_norm_backward";
    let (device, dtype) = (x.gpu_device(OP)?, x.gpu_dtype(OP)?);
    let (x, weight, grad_y) = (x.gpu_contiguous()?, weight.gpu_contiguous()?, grad_y.gpu_contiguous()?);
    let dim = weight.numel();
    let rows = x.numel().checked_div(dim).unwrap_or(0);
    let grad_x = Tensor::gpu_empty(&device, x.shape(), x.dtype())?;
    if rows == 0 || dim == 0 {
        return Ok(vec![grad_x, Tensor::gpu_zeros(&device, &[dim], x.dtype())?]);
    }
    let grad_weight = Tensor::gpu_empty(&device, &[dim], x.dtype())?;
    let blocks = kernels::weight_grad_split(rows).1;
    let partial = Tensor::gpu_empty(&device, &[blocks, dim], DType::F32)?;
    let finished = finished_counter(&device)?;
    // SAFETY: x, grad_y, grad_x are contiguous `rows * dim` tensors of `dtype`, weight and grad_weight
    // `[dim]`, partial `[blocks, dim]` f32 as the launcher requires; `finished` is the device's counter,
    // 0 between launches, and the device's one stream runs one backward at a time.
    unsafe {
        kernels::rms_norm_backward(
            &device,
            dtype,
            x.gpu_ptr(OP)?,
            weight.gpu_ptr(OP)?,
            grad_y.gpu_ptr(OP)?,
            grad_x.gpu_ptr(OP)?,
            grad_weight.gpu_ptr(OP)?,
            partial.gpu_ptr(OP)?,
            finished,
            rows,
            dim,
            eps as f32,
        )
    }
    .map_err(cuda_error(OP))?;
    Ok(vec![grad_x, grad_weight])
}

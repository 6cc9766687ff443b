//! GPU implementation of the optim ops (see `ops/optim.rs` for the CPU path and the shape rules).
//!
//! The AdamW step updates param, m and v in place, f32 or (the pure-bf16 mode) bf16, computing in f32.
//! The squared norm sums per-chunk f32 partials on the host in f64, in order: deterministic.
use super::cuda_error;
use crate::error::Result;
use crate::{DType, Tensor};
use cola_kernels::cpu::adamw::AdamWStep;
use cola_kernels::cuda::ops::adamw::{self as kernels, AdamWBuffers};

impl Tensor {
    /// Makes a GPU tensor the sole owner of a contiguous storage that it covers exactly, copying it when
    /// it is a view or shares its storage (the GPU counterpart of `data_mut`), so an in-place kernel
    /// changes no other tensor.
    pub(crate) fn make_unique_gpu(&mut self) -> Result<()> {
        let whole = self.layout().offset() == 0 && self.numel() == self.storage().len();
        if !self.is_contiguous() || !whole || !self.storage_is_unique() {
            *self = self.gpu_copy(self.dtype())?;
        }
        Ok(())
    }
}

/// One AdamW step in place; the four tensors share shape, dtype and device (checked by the caller).
pub(crate) fn adamw_step(
    param: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    hyper: AdamWStep,
) -> Result<()> {
    const OP: &str = "adamw_step";
    let (device, dtype) = (param.gpu_device(OP)?, param.gpu_dtype(OP)?);
    for t in [&mut *param, &mut *m, &mut *v] {
        t.make_unique_gpu()?;
    }
    let grad = grad.gpu_contiguous()?;
    let buffers = AdamWBuffers {
        param: param.gpu_ptr(OP)?,
        grad: grad.gpu_ptr(OP)?,
        m: m.gpu_ptr(OP)?,
        v: v.gpu_ptr(OP)?,
    };
    // SAFETY: all four are contiguous with `param.numel()` elements of `dtype`; param, m and v each own
    // their storage, so they do not overlap each other or `grad`.
    unsafe { kernels::adamw_step(&device, &buffers, dtype, param.numel(), &hyper) }.map_err(cuda_error(OP))
}

/// `sum(x^2)`: f32 partial sums per chunk on the device, added in f64 on the host in chunk order.
pub(crate) fn squared_norm(t: &Tensor) -> Result<f64> {
    const OP: &str = "squared_norm";
    let (device, dtype) = (t.gpu_device(OP)?, t.gpu_dtype(OP)?);
    let x = t.gpu_contiguous()?;
    let n = x.numel();
    if n == 0 {
        return Ok(0.0);
    }
    let partials = Tensor::gpu_empty(&device, &[kernels::norm_partial_count(n)], DType::F32)?;
    // SAFETY: `x` holds `n` contiguous elements and `partials` one f32 per chunk.
    unsafe { kernels::squared_norm_partials(&device, x.gpu_ptr(OP)?, dtype, partials.gpu_ptr(OP)?, n) }
        .map_err(cuda_error(OP))?;
    Ok(partials.to_vec::<f32>()?.iter().map(|&p| p as f64).sum())
}

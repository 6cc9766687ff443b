//! Launchers of `kernels/cuda/adamw.cu`.
use super::{grid_1d, launch, BLOCK};
use crate::cpu::adamw::AdamWStep;
use crate::cuda::{CudaDevice, GpuDType, Kernel, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Device addresses of the four same-length buffers of an AdamW step.
#[derive(Clone, Copy, Debug)]
pub struct AdamWBuffers {
    pub param: u64,
    pub grad: u64,
    pub m: u64,
    pub v: u64,
}

/// Per-step constants, computed in f64 and rounded to f32 exactly as the CPU kernel
/// (`cpu::adamw`) rounds them to its element type, so f32 steps agree with the CPU.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Constants {
    decay: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,
    sqrt_c2: f32,
    eps: f32,
}

impl Constants {
    fn new(h: &AdamWStep) -> Self {
        let t = h.step.max(1).min(i32::MAX as u64) as i32;
        let c1 = 1.0 - h.beta1.powi(t);
        let c2 = 1.0 - h.beta2.powi(t);
        Constants {
            decay: (1.0 - h.lr * h.weight_decay) as f32,
            one_minus_beta1: (1.0 - h.beta1) as f32,
            beta2: h.beta2 as f32,
            one_minus_beta2: (1.0 - h.beta2) as f32,
            step_size: (h.lr / c1) as f32,
            sqrt_c2: c2.sqrt() as f32,
            eps: h.eps as f32,
        }
    }
}

/// One AdamW step in place on `n` contiguous elements of `param`, `m`, `v` from `grad` (all `dtype`).
///
/// # Safety
/// Each buffer must hold `n` elements of `dtype` on this device; `param`, `m` and `v` must not overlap.
pub unsafe fn adamw_step(
    device: &CudaDevice,
    buffers: &AdamWBuffers,
    dtype: GpuDType,
    n: usize,
    hyper: &AdamWStep,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let c = Constants::new(hyper);
    let AdamWBuffers { param, grad, m, v } = *buffers;
    let n = n as i64;
    let kernel = match dtype {
        GpuDType::F32 => Kernel::AdamwStepF32,
        GpuDType::BF16 => Kernel::AdamwStepBf16,
    };
    // SAFETY: argument list matches `adamw_step_T(T*, const T*, T*, T*, i64, float x 7)`.
    unsafe {
        launch!(device, kernel, grid_1d(n as usize);
            &param, &grad, &m, &v, &n,
            &c.decay, &c.one_minus_beta1, &c.beta2, &c.one_minus_beta2, &c.step_size, &c.sqrt_c2, &c.eps)
    }
}

/// Elements per partial sum of [`squared_norm_partials`].
pub const NORM_CHUNK: usize = 8192;

/// Number of partial sums [`squared_norm_partials`] writes for `n` elements.
pub fn norm_partial_count(n: usize) -> usize {
    n.div_ceil(NORM_CHUNK)
}

/// `partials[b] = sum of x[i]^2` over chunk `b` of [`NORM_CHUNK`] elements, in f32 (fixed order).
///
/// # Safety
/// `x` must hold `n` elements of `dtype` and `partials` [`norm_partial_count`]`(n)` f32 values.
pub unsafe fn squared_norm_partials(
    device: &CudaDevice,
    x: u64,
    dtype: GpuDType,
    partials: u64,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let blocks = norm_partial_count(n).min(1 << 20) as u32;
    let config = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    let (n, chunk) = (n as i64, NORM_CHUNK as i64);
    let kernel = match dtype {
        GpuDType::F32 => Kernel::SquaredNormPartialsF32,
        GpuDType::BF16 => Kernel::SquaredNormPartialsBf16,
    };
    // SAFETY: argument list matches `squared_norm_partials_T(const T*, float*, i64, i64)`.
    unsafe { launch!(device, kernel, config; &x, &partials, &n, &chunk) }
}

//! Launchers of `kernels/cuda/rope.cu`.
use super::{grid_1d, launch};
use crate::cuda::{CudaDevice, GpuDType, Kernel, Result};
use cudarc::driver::PushKernelArg;

/// Shape of a contiguous `[batch, seq, heads, head_dim]` rope operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Rotates every pair `(p, p + head_dim/2)` of `x` into `y` by the table angle of its sequence index:
/// `y_p = x_p cos - x_{p+h} sin`, `y_{p+h} = x_{p+h} cos + x_p sin`. `cos` and `sin` are f32
/// `[seq, head_dim / 2]` tables (negated sines give the inverse rotation).
///
/// # Safety
/// `x` and `y` must be contiguous buffers of this device holding the whole shape in `dtype`; `cos` and
/// `sin` must hold `seq * head_dim / 2` f32 values.
pub unsafe fn rope_rotate(
    device: &CudaDevice,
    dtype: GpuDType,
    x: u64,
    y: u64,
    cos: u64,
    sin: u64,
    shape: RopeShape,
) -> Result<()> {
    let half = shape.head_dim / 2;
    let pairs = shape.batch * shape.seq * shape.heads * half;
    if pairs == 0 {
        return Ok(());
    }
    let (pairs_i, seq, heads, half) = (pairs as i64, shape.seq as i64, shape.heads as i64, half as i64);
    let kernel = match dtype {
        GpuDType::F32 => Kernel::RopeRotateF32,
        GpuDType::BF16 => Kernel::RopeRotateBf16,
    };
    // SAFETY: matches `rope_rotate_T(const T*, T*, const float*, const float*, i64, i64, i64, i64)`.
    unsafe {
        launch!(device, kernel, grid_1d(pairs);
            &x, &y, &cos, &sin, &pairs_i, &seq, &heads, &half)
    }
}

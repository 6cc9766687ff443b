//! Launchers of `kernels/cuda/norm.cu`.
use super::launch;
use crate::cuda::{CudaDevice, GpuDType, Kernel, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Most blocks a row-wise kernel is launched with; its blocks step over the remaining rows.
const MAX_ROW_BLOCKS: usize = 1 << 16;

/// Row blocks of the weight gradient: rows are cut into at most this many runs of consecutive rows, each
/// summed by one block into its own partial row (a count fixed by the shape alone, so results repeat).
pub const WEIGHT_GRAD_BLOCKS: usize = 256;

/// Threads of a block that works on one row of `len` elements: a multiple of 32, at least 32, at most
/// `max` (itself a multiple of 32, at most 1024).
pub fn row_threads(len: usize, max: u32) -> u32 {
    (len.div_ceil(32) * 32).clamp(32, max as usize) as u32
}

/// A launch of one block per row (at most [`MAX_ROW_BLOCKS`] blocks, which step over the rest).
pub fn row_config(rows: usize, len: usize, max_threads: u32) -> LaunchConfig {
    let blocks = rows.clamp(1, MAX_ROW_BLOCKS) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (row_threads(len, max_threads), 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `y = x * r * weight` per row of `dim`, `r = 1 / sqrt(mean(x^2) + eps)`; x and y hold `rows * dim`.
///
/// # Safety
/// `x`, `y` (`rows * dim` elements) and `weight` (`dim`) must be contiguous buffers of this device of `dtype`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn rms_norm_forward(
    device: &CudaDevice,
    dtype: GpuDType,
    x: u64,
    weight: u64,
    y: u64,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    let (rows_i, dim_i) = (rows as i64, dim as i64);
    let kernel = match dtype {
        GpuDType::F32 => Kernel::RmsNormForwardF32,
        GpuDType::BF16 => Kernel::RmsNormForwardBf16,
    };
    // SAFETY: matches `rms_norm_forward_T(const T*, const T*, T*, i64, i64, float)`; sizes per the contract.
    unsafe {
        launch!(device, kernel, row_config(rows, dim, 256);
            &x, &weight, &y, &rows_i, &dim_i, &eps)
    }
}

/// How the weight gradient splits `rows`: `(rows_per_block, blocks)`.
pub fn weight_grad_split(rows: usize) -> (usize, usize) {
    let per_block = rows.div_ceil(WEIGHT_GRAD_BLOCKS).max(1);
    (per_block, rows.div_ceil(per_block).max(1))
}

/// Writes `grad_x` (`rows * dim`) and `grad_weight` (`dim`) of RMSNorm given `grad_y`, in one launch;
/// `partial` is f32 scratch of `weight_grad_split(rows).1 * dim` elements and `finished` a u32 that is 0
/// (the kernel leaves it 0 again, so one counter serves every launch of the device's stream).
///
/// # Safety
/// All buffers must be contiguous buffers of this device: x, grad_y, grad_x of `rows * dim` elements of
/// `dtype`, weight and grad_weight of `dim`, partial and finished as above; no other kernel may use
/// `finished` while this one runs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn rms_norm_backward(
    device: &CudaDevice,
    dtype: GpuDType,
    x: u64,
    weight: u64,
    grad_y: u64,
    grad_x: u64,
    grad_weight: u64,
    partial: u64,
    finished: u64,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    let (per_block, blocks) = weight_grad_split(rows);
    let (rows_i, dim_i, per_block_i) = (rows as i64, dim as i64, per_block as i64);
    let config = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (row_threads(dim, 256), 1, 1),
        shared_mem_bytes: 0,
    };
    let kernel = match dtype {
        GpuDType::F32 => Kernel::RmsNormBackwardF32,
        GpuDType::BF16 => Kernel::RmsNormBackwardBf16,
    };
    // SAFETY: matches `rms_norm_backward_T(const T*, const T*, const T*, T*, T*, float*, unsigned int*, i64,
    // i64, float, i64)`; the grid has exactly `blocks` blocks, each writing its own partial row.
    unsafe {
        launch!(device, kernel, config;
            &x, &weight, &grad_y, &grad_x, &grad_weight, &partial, &finished, &rows_i, &dim_i, &eps,
            &per_block_i)
    }
}

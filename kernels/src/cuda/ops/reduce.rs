//! Launchers of `kernels/cuda/reduce.cu`.
use super::launch;
use crate::cuda::{CudaDevice, GpuDType, Kernel, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Most blocks of a row-sum launch; blocks loop over the remaining rows.
const MAX_BLOCKS: usize = 1 << 20;

/// `y[r] = sum_c x[r * cols + c]` for a contiguous `[rows, cols]` matrix `x`, accumulated in f32 in a fixed
/// order. The block size depends only on `cols` (32 to 256 threads), so results are deterministic.
///
/// # Safety
/// `x` must hold `rows * cols` and `y` `rows` elements of `dtype` on this device.
pub unsafe fn row_sum(
    device: &CudaDevice,
    x: u64,
    y: u64,
    dtype: GpuDType,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let threads = cols.next_multiple_of(32).clamp(32, 256) as u32;
    let config = LaunchConfig {
        grid_dim: (rows.min(MAX_BLOCKS) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let (rows, cols) = (rows as i64, cols as i64);
    let kernel = match dtype {
        GpuDType::F32 => Kernel::RowSumF32,
        GpuDType::BF16 => Kernel::RowSumBf16,
    };
    // SAFETY: argument list matches `row_sum_T(const T*, T*, i64, i64)`.
    unsafe { launch!(device, kernel, config; &x, &y, &rows, &cols) }
}

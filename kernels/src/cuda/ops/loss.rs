//! Launchers of `kernels/cuda/loss.cu`.
use super::launch;
use super::norm::row_config;
use crate::cuda::{CudaDevice, GpuDType, Kernel, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Rows of logits and the target rule: `rows` rows of `vocab` logits, one u32 target per row, rows whose
/// target equals `ignore_id` not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossRows {
    pub rows: usize,
    pub vocab: usize,
    pub ignore_id: Option<u32>,
}

impl LossRows {
    fn args(&self) -> (i64, i64, u32, i32) {
        (self.rows as i64, self.vocab as i64, self.ignore_id.unwrap_or(0), self.ignore_id.is_some() as i32)
    }
}

/// `out[0] = sum of per-row losses / count` (a `dtype` scalar), `count` being the number of counted rows
/// (> 0). `row_loss` is f32 scratch of `rows` values.
///
/// # Safety
/// `logits` must hold `rows * vocab` contiguous `dtype` values, `targets` `rows` u32 values (those of
/// counted rows `< vocab`), `row_loss` `rows` f32 values and `out` one f32 value, on this device.
#[allow(clippy::too_many_arguments)]
pub unsafe fn cross_entropy_forward(
    device: &CudaDevice,
    dtype: GpuDType,
    logits: u64,
    targets: u64,
    row_loss: u64,
    out: u64,
    shape: LossRows,
    count: usize,
) -> Result<()> {
    if shape.rows == 0 || shape.vocab == 0 || count == 0 {
        return Ok(());
    }
    let (rows, vocab, ignore_id, has_ignore) = shape.args();
    let kernel = match dtype {
        GpuDType::F32 => Kernel::CrossEntropyRowsF32,
        GpuDType::BF16 => Kernel::CrossEntropyRowsBf16,
    };
    // SAFETY: matches `cross_entropy_rows_T(const T*, const unsigned*, float*, i64, i64, unsigned, int)`.
    unsafe {
        launch!(device, kernel, row_config(shape.rows, shape.vocab, 512);
            &logits, &targets, &row_loss, &rows, &vocab, &ignore_id, &has_ignore)?;
    }
    let count = count as i64;
    let one_block = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // The mean is an f32 scalar whatever the logits' dtype.
    // SAFETY: matches `cross_entropy_mean_f32(const float*, f32*, i64, i64)`, launched with the 256 threads
    // its shared array is sized for.
    unsafe {
        launch!(device, Kernel::CrossEntropyMeanF32, one_block;
            &row_loss, &out, &rows, &count)
    }
}

/// `grad[r] = factor * (softmax(logits[r]) - onehot(target[r]))` for counted rows, 0 for ignored rows.
///
/// # Safety
/// `logits` and `grad` must hold `rows * vocab` contiguous `dtype` values and `targets` `rows` u32 values
/// (those of counted rows `< vocab`), on this device.
pub unsafe fn cross_entropy_backward(
    device: &CudaDevice,
    dtype: GpuDType,
    logits: u64,
    targets: u64,
    grad: u64,
    shape: LossRows,
    factor: f32,
) -> Result<()> {
    if shape.rows == 0 || shape.vocab == 0 {
        return Ok(());
    }
    let (rows, vocab, ignore_id, has_ignore) = shape.args();
    let kernel = match dtype {
        GpuDType::F32 => Kernel::CrossEntropyBackwardF32,
        GpuDType::BF16 => Kernel::CrossEntropyBackwardBf16,
    };
    // SAFETY: matches
    // `cross_entropy_backward_T(const T*, const unsigned*, T*, i64, i64, unsigned, int, float)`.
    unsafe {
        launch!(device, kernel, row_config(shape.rows, shape.vocab, 512);
            &logits, &targets, &grad, &rows, &vocab, &ignore_id, &has_ignore, &factor)
    }
}

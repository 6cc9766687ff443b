//! Launchers of `kernels/cuda/attention.cu`: the row-wise softmax steps of causal attention (the products
//! run through [`crate::cuda::blas::gemm`]).
use super::launch;
use crate::cuda::{CudaDevice, GpuDType, Kernel, Result};
use cudarc::driver::PushKernelArg;

/// Rows of causal attention scores: `rows` f32 rows of `kv_len`, row r holding query `r % q_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScoreRows {
    pub rows: usize,
    pub q_len: usize,
    pub kv_len: usize,
}

fn checked(shape: ScoreRows) -> Result<Option<(i64, i64, i64)>> {
    if shape.q_len > shape.kv_len {
        return Err(crate::cuda::CudaError::Invalid(format!(
            "causal softmax: q_len {} exceeds kv_len {}",
            shape.q_len, shape.kv_len
        )));
    }
    if shape.rows == 0 || shape.q_len == 0 {
        return Ok(None);
    }
    Ok(Some((shape.rows as i64, shape.q_len as i64, shape.kv_len as i64)))
}

/// One warp per row, eight rows per 256-thread block (the grid is capped; kernels loop over the rest).
fn warp_rows(rows: usize) -> cudarc::driver::LaunchConfig {
    let blocks = rows.div_ceil(8).clamp(1, 1 << 20) as u32;
    cudarc::driver::LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// `p = softmax` of each score row over its visible keys (0 for masked keys), written in `dtype`. When
/// `dtype` is f32, `p` may equal `scores` (in place).
///
/// # Safety
/// `scores` must hold `rows * kv_len` f32 values and `p` as many `dtype` values, on this device.
pub unsafe fn causal_softmax(
    device: &CudaDevice,
    dtype: GpuDType,
    scores: u64,
    p: u64,
    shape: ScoreRows,
) -> Result<()> {
    let Some((rows, q_len, kv_len)) = checked(shape)? else { return Ok(()) };
    let kernel = match dtype {
        GpuDType::F32 => Kernel::CausalSoftmaxF32,
        GpuDType::BF16 => Kernel::CausalSoftmaxBf16,
    };
    // SAFETY: matches `causal_softmax_T(const float*, T*, i64, i64, i64)`; sizes per the contract.
    unsafe {
        launch!(device, kernel, warp_rows(shape.rows);
            &scores, &p, &rows, &q_len, &kv_len)
    }
}

/// `ds = P * (dP - rowsum(P * dP))` per score row, with `P` recomputed in f32 from `scores`; 0 for masked
/// keys; written in `dtype`. When `dtype` is f32, `ds` may equal `dp` (in place).
///
/// # Safety
/// `scores` and `dp` must hold `rows * kv_len` f32 values and `ds` as many `dtype` values, on this device.
pub unsafe fn causal_softmax_backward(
    device: &CudaDevice,
    dtype: GpuDType,
    scores: u64,
    dp: u64,
    ds: u64,
    shape: ScoreRows,
) -> Result<()> {
    let Some((rows, q_len, kv_len)) = checked(shape)? else { return Ok(()) };
    let kernel = match dtype {
        GpuDType::F32 => Kernel::CausalSoftmaxBackwardF32,
        GpuDType::BF16 => Kernel::CausalSoftmaxBackwardBf16,
    };
    // SAFETY: matches `causal_softmax_backward_T(const float*, const float*, T*, i64, i64, i64)`.
    unsafe {
        launch!(device, kernel, warp_rows(shape.rows);
            &scores, &dp, &ds, &rows, &q_len, &kv_len)
    }
}

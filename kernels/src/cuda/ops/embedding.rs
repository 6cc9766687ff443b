//! Launchers of `kernels/cuda/embedding.cu`.
use super::norm::row_config;
use super::{grid_1d, launch};
use crate::cuda::{CudaDevice, GpuDType, Kernel, Result};
use cudarc::driver::PushKernelArg;

/// `out[i] = weight[ids[i]]`, rows of `dim`.
///
/// # Safety
/// `weight` must be a contiguous `[vocab, dim]` buffer of `dtype` with every id `< vocab`, `ids` must hold
/// `n_ids` u32 values and `out` `n_ids * dim` `dtype` values, on this device.
pub unsafe fn embedding_forward(
    device: &CudaDevice,
    dtype: GpuDType,
    weight: u64,
    ids: u64,
    out: u64,
    n_ids: usize,
    dim: usize,
) -> Result<()> {
    let n = n_ids * dim;
    if n == 0 {
        return Ok(());
    }
    let (n_ids, dim) = (n_ids as i64, dim as i64);
    let kernel = match dtype {
        GpuDType::F32 => Kernel::EmbeddingForwardF32,
        GpuDType::BF16 => Kernel::EmbeddingForwardBf16,
    };
    // SAFETY: matches `embedding_forward_T(const T*, const unsigned*, T*, i64, i64)`.
    unsafe {
        launch!(device, kernel, grid_1d(n);
            &weight, &ids, &out, &n_ids, &dim)
    }
}

/// Positions grouped by id, on the device: `positions[starts[k]..starts[k + 1]]` are the ascending
/// positions whose id is `rows[k]`; `n_rows` distinct ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdGroups {
    pub rows: u64,
    pub starts: u64,
    pub positions: u64,
    pub n_rows: usize,
}

/// `grad_weight[rows[k]] = sum of grad_out[p]` over the positions p of group k, in ascending order (rows no
/// group names are left untouched; the caller zeroes them).
///
/// # Safety
/// `grad_out` must hold a row of `dim` `dtype` values per position named in `groups`, `grad_weight` a row
/// per id named, the group arrays `n_rows`, `n_rows + 1` and `starts[n_rows]` u32 values, on this device.
pub unsafe fn embedding_backward(
    device: &CudaDevice,
    dtype: GpuDType,
    grad_out: u64,
    groups: IdGroups,
    grad_weight: u64,
    dim: usize,
) -> Result<()> {
    if groups.n_rows == 0 || dim == 0 {
        return Ok(());
    }
    let (n_rows, dim_i) = (groups.n_rows as i64, dim as i64);
    let IdGroups { rows, starts, positions, .. } = groups;
    let kernel = match dtype {
        GpuDType::F32 => Kernel::EmbeddingBackwardF32,
        GpuDType::BF16 => Kernel::EmbeddingBackwardBf16,
    };
    // SAFETY: matches `embedding_backward_T(const T*, const unsigned*, const unsigned*, const unsigned*, T*,
    // i64, i64)`.
    unsafe {
        launch!(device, kernel, row_config(groups.n_rows, dim, 256);
            &grad_out, &rows, &starts, &positions, &grad_weight, &n_rows, &dim_i)
    }
}

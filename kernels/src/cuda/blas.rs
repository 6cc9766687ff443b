//! Row-major batched GEMM through column-major cuBLAS (`cublasGemmStridedBatchedEx`).
//!
//! cuBLAS sees a row-major `[rows, cols]` matrix as its column-major transpose, so `C = A B` is computed
//! as `C^T = B^T A^T` with the operands swapped: no data moves. A row-major operand (`col_stride == 1`)
//! is passed untransposed with `ld = row_stride`; a transposed view (`row_stride == 1`) is passed with
//! `op = T` and `ld = col_stride`. A weight shared across a batch has batch stride 0.
use super::runtime::CudaDevice;
use super::{CudaError, GpuDType, Result};
use cudarc::cublas::{result, sys};
use std::ffi::c_void;

/// One operand: device address of its first matrix, its element strides and the batch stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    pub ptr: u64,
    pub row_stride: usize,
    pub col_stride: usize,
    pub batch_stride: usize,
}

/// `batch` products `[m, k] @ [k, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
}

/// How cuBLAS can read a row-major `[rows, cols]` operand with these strides: `Some((transposed, ld))`, or
/// `None` when neither dim is unit-stride (the caller makes it contiguous first).
pub fn operand_layout(
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> Option<(bool, usize)> {
    let fits = |ld: usize| ld <= i32::MAX as usize;
    if (col_stride == 1 || cols <= 1) && (rows <= 1 || row_stride >= cols.max(1)) {
        let ld = if rows <= 1 { cols.max(1) } else { row_stride };
        return fits(ld).then_some((false, ld));
    }
    if (row_stride == 1 || rows <= 1) && (cols <= 1 || col_stride >= rows.max(1)) {
        let ld = if cols <= 1 { rows.max(1) } else { col_stride };
        return fits(ld).then_some((true, ld));
    }
    None
}

fn data_type(dtype: GpuDType) -> sys::cudaDataType {
    match dtype {
        GpuDType::F32 => sys::cudaDataType::CUDA_R_32F,
        GpuDType::BF16 => sys::cudaDataType::CUDA_R_16BF,
    }
}

/// Where a product goes: `[batch, m, n]` of `dtype` with rows `row_stride >= n` elements apart (more than
/// `n` to keep rows 16-byte aligned, see [`aligned_stride`]) and batch entries `m * row_stride` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    pub ptr: u64,
    pub dtype: GpuDType,
    pub row_stride: usize,
}

/// `n` rounded up so that rows of `dtype` start on 16-byte boundaries. cuBLAS runs its fast tensor-core
/// kernels only when every leading dimension is such a multiple: a bf16 product with n = 5461 (the 1b
/// model's ffn_dim) runs at about a fifth of the speed of one with n = 5464.
pub fn aligned_stride(n: usize, dtype: GpuDType) -> usize {
    let per_16_bytes = 16 / dtype.size_in_bytes();
    n.div_ceil(per_16_bytes) * per_16_bytes
}

/// `C[b] = alpha * A[b] @ B[b] + beta * C[b]` for every batch entry; C is contiguous `[batch, m, n]` of
/// `c_dtype`, A and B are `ab_dtype`; accumulation is always f32 (TF32 inputs when the device opted in and
/// the inputs are f32).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    device: &CudaDevice,
    dims: GemmDims,
    ab_dtype: GpuDType,
    a: Operand,
    b: Operand,
    c_dtype: GpuDType,
    c_ptr: u64,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    let c = Output { ptr: c_ptr, dtype: c_dtype, row_stride: dims.n };
    gemm_into(device, dims, ab_dtype, a, b, c, alpha, beta)
}

/// [`gemm`] into an output whose rows may be padded.
#[allow(clippy::too_many_arguments)]
pub fn gemm_into(
    device: &CudaDevice,
    dims: GemmDims,
    ab_dtype: GpuDType,
    a: Operand,
    b: Operand,
    c: Output,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    let (c_dtype, c_ptr) = (c.dtype, c.ptr);
    let GemmDims { m, n, k, batch } = dims;
    if c.row_stride < n {
        return Err(CudaError::Invalid(format!("gemm: output row stride {} < n = {n}", c.row_stride)));
    }
    if m == 0 || n == 0 || batch == 0 {
        return Ok(());
    }
    let bad = |what: &str| CudaError::Invalid(format!("gemm: {what} operand needs a unit stride"));
    let (a_t, lda) = operand_layout(m, k, a.row_stride, a.col_stride).ok_or_else(|| bad("left"))?;
    let (b_t, ldb) = operand_layout(k, n, b.row_stride, b.col_stride).ok_or_else(|| bad("right"))?;
    let op =
        |t: bool| if t { sys::cublasOperation_t::CUBLAS_OP_T } else { sys::cublasOperation_t::CUBLAS_OP_N };
    let compute = if device.tf32() && ab_dtype == GpuDType::F32 {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    let int = |x: usize| -> Result<i32> {
        i32::try_from(x).map_err(|_| CudaError::Invalid(format!("gemm dimension {x} exceeds i32")))
    };
    let (alpha, beta) = (alpha, if k == 0 { 0.0 } else { beta });
    device.bind()?;
    let profiling = super::profile::enabled();
    if profiling {
        device.synchronize()?;
    }
    let start = std::time::Instant::now();
    let blas = device.blas();
    // SAFETY: the pointers address live buffers of this device sized by the caller for these dims and
    // strides; cuBLAS runs on the device's stream, ordered with every other kernel.
    unsafe {
        result::gemm_strided_batched_ex(
            *blas.handle(),
            op(b_t),
            op(a_t),
            int(n)?,
            int(m)?,
            int(k)?,
            &alpha as *const f32 as *const c_void,
            b.ptr as *const c_void,
            data_type(ab_dtype),
            int(ldb)?,
            b.batch_stride as i64,
            a.ptr as *const c_void,
            data_type(ab_dtype),
            int(lda)?,
            a.batch_stride as i64,
            &beta as *const f32 as *const c_void,
            c_ptr as *mut c_void,
            data_type(c_dtype),
            int(c.row_stride)?,
            (m * c.row_stride) as i64,
            int(batch)?,
            compute,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| CudaError::Blas { what: "cublasGemmStridedBatchedEx", message: format!("{e:?}") })?;
    if profiling {
        device.synchronize()?;
        let shape = if batch > 1 { "batched" } else { "single" };
        super::profile::record(
            &format!(
                "gemm {ab_dtype:?}->{c_dtype:?} {shape} {}{}",
                if a_t { "T" } else { "N" },
                if b_t { "T" } else { "N" }
            ),
            start,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::operand_layout;

    #[test]
    fn operand_layouts() {
        // Contiguous [3, 4], its transpose view [4, 3] with strides [1, 4], and a narrowed row-major view.
        assert_eq!(operand_layout(3, 4, 4, 1), Some((false, 4)));
        assert_eq!(operand_layout(4, 3, 1, 4), Some((true, 4)));
        assert_eq!(operand_layout(3, 2, 4, 1), Some((false, 4)));
        // Rows broadcast (stride 0) or both strides non-unit: not expressible.
        assert_eq!(operand_layout(3, 4, 0, 1), None);
        assert_eq!(operand_layout(3, 4, 8, 2), None);
        // Degenerate single row / column.
        assert_eq!(operand_layout(1, 5, 0, 1), Some((false, 5)));
        assert_eq!(operand_layout(5, 1, 1, 1), Some((false, 1)));
    }
}

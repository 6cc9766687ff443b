//! GPU implementation of the reduce ops (see `ops/reduce.rs` for the CPU path and the shape rules).
//!
//! A sum over any set of axes is one row sum: the kept axes are permuted first and the reduced axes last,
//! the view is made contiguous (a copy only when needed), and each row of the resulting `[kept, reduced]`
//! matrix is summed in f32 by one block, in a fixed order.
use super::cuda_error;
use crate::error::Result;
use crate::Tensor;
use cola_kernels::cuda::ops::reduce::row_sum;

/// Sum of `a` over the axes marked in `reduce`; reduced dims stay as size 1 when `keepdim`.
pub(crate) fn sum(a: &Tensor, reduce: &[bool], keepdim: bool) -> Result<Tensor> {
    const OP: &str = "sum";
    let (device, dtype) = (a.gpu_device(OP)?, a.gpu_dtype(OP)?);
    let rank = a.rank();
    let perm: Vec<usize> =
        (0..rank).filter(|&d| !reduce[d]).chain((0..rank).filter(|&d| reduce[d])).collect();
    let x = a.permute(&perm)?.gpu_contiguous()?;
    let kept_dims = || (0..rank).filter(|&d| !reduce[d]).map(|d| a.shape()[d]);
    let rows: usize = kept_dims().product();
    let cols: usize = (0..rank).filter(|&d| reduce[d]).map(|d| a.shape()[d]).product();
    let kept: Vec<usize> = (0..rank).map(|d| if reduce[d] { 1 } else { a.shape()[d] }).collect();
    let out = Tensor::gpu_empty(&device, &kept, a.dtype())?;
    // SAFETY: `x` is a contiguous view of `rows * cols` elements and `out` a fresh buffer of `rows`.
    unsafe { row_sum(&device, x.gpu_ptr(OP)?, out.gpu_ptr(OP)?, dtype, rows, cols) }
        .map_err(cuda_error(OP))?;
    if keepdim {
        return Ok(out);
    }
    out.reshape(&kept_dims().collect::<Vec<_>>())
}

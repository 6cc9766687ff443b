//! GPU matmul through cuBLAS. Each operand is passed as a strided view when cuBLAS can read it (one unit
//! stride among its last two dims and one uniform batch stride, 0 for a broadcast weight); otherwise it is
//! first copied into a contiguous buffer broadcast to the full batch.
use super::cuda_error;
use crate::error::Result;
use crate::layout::Shape;
use crate::Tensor;
use cola_kernels::cuda::blas::{gemm, operand_layout, GemmDims, Operand};

const OP: &str = "matmul";

/// Storage offsets (elements) of every matrix of an operand broadcast to `batch_shape`, row-major order.
fn batch_offsets(t: &Tensor, batch_shape: &[usize]) -> Result<Vec<usize>> {
    let rank = t.rank();
    let mut full: Shape = batch_shape.into();
    full.extend_from_slice(&t.shape()[rank - 2..]);
    let layout = t.layout().broadcast_to(&full)?;
    let strides = &layout.strides()[..batch_shape.len()];
    let count: usize = batch_shape.iter().product();
    Ok((0..count)
        .map(|mut b| {
            let mut off = layout.offset();
            for d in (0..batch_shape.len()).rev() {
                off += (b % batch_shape[d]) * strides[d];
                b /= batch_shape[d];
            }
            off
        })
        .collect())
}

/// The operand as cuBLAS reads it, making a contiguous batch-broadcast copy when the view does not fit.
fn operand(t: &Tensor, batch_shape: &[usize], keep: &mut Vec<Tensor>) -> Result<Operand> {
    let rank = t.rank();
    let (rows, cols) = (t.shape()[rank - 2], t.shape()[rank - 1]);
    let (rs, cs) = (t.layout().strides()[rank - 2], t.layout().strides()[rank - 1]);
    let offsets = batch_offsets(t, batch_shape)?;
    let uniform = match offsets.as_slice() {
        [] | [_] => Some(0),
        [a, b, ..] if b >= a => {
            let step = b - a;
            offsets.windows(2).all(|w| w[1] == w[0] + step).then_some(step)
        }
        _ => None,
    };
    let elem = t.dtype().size_in_bytes() as u64;
    if let (Some(step), Some(_)) = (uniform, operand_layout(rows, cols, rs, cs)) {
        let start = offsets.first().copied().unwrap_or(t.layout().offset());
        return Ok(Operand {
            ptr: t.gpu_base(OP)? + start as u64 * elem,
            row_stride: rs,
            col_stride: cs,
            batch_stride: step,
        });
    }
    let mut full: Shape = batch_shape.into();
    full.extend_from_slice(&[rows, cols]);
    let copy = t.broadcast_to(&full)?.gpu_copy(t.dtype())?;
    let op = Operand { ptr: copy.gpu_ptr(OP)?, row_stride: cols, col_stride: 1, batch_stride: rows * cols };
    keep.push(copy);
    Ok(op)
}

/// `[..., m, k] @ [..., k, n]` on the GPU; shapes were checked by the caller.
pub(crate) fn matmul(
    a: &Tensor,
    b: &Tensor,
    batch_shape: &[usize],
    m: usize,
    k: usize,
    n: usize,
) -> Result<Tensor> {
    let device = a.gpu_device(OP)?;
    let dtype = a.gpu_dtype(OP)?;
    let batch: usize = batch_shape.iter().product();
    let mut shape: Shape = batch_shape.into();
    shape.extend_from_slice(&[m, n]);
    let out = Tensor::gpu_empty(&device, &shape, a.dtype())?;
    if out.numel() == 0 {
        return Ok(out);
    }
    // Copies made for cuBLAS must live until the GEMM is queued (the stream orders their later reuse).
    let mut keep = Vec::new();
    let lhs = operand(a, batch_shape, &mut keep)?;
    let rhs = operand(b, batch_shape, &mut keep)?;
    let dims = GemmDims { m, n, k, batch };
    gemm(&device, dims, dtype, lhs, rhs, dtype, out.gpu_ptr(OP)?, 1.0, 0.0).map_err(cuda_error(OP))?;
    Ok(out)
}

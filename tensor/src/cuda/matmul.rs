//! GPU matmul through cuBLAS. Each operand is passed as a strided view when cuBLAS can read it (one unit
//! stride among its last two dims and one uniform batch stride, 0 for a broadcast weight); otherwise it is
//! first copied into a contiguous buffer broadcast to the full batch.
use super::cuda_error;
use crate::batch::batch_offsets;
use crate::error::Result;
use crate::layout::Shape;
use crate::Tensor;
use cola_kernels::cuda::blas::{aligned_stride, gemm_into, operand_layout, GemmDims, Operand, Output};
use cola_kernels::cuda::GpuDType;

const OP: &str = "matmul";

/// The common step of a list of offsets (0 for fewer than two), if there is one.
fn uniform_step(offsets: &[usize]) -> Option<usize> {
    match offsets {
        [] | [_] => Some(0),
        [a, b, ..] if b >= a => {
            let step = b - a;
            offsets.windows(2).all(|w| w[1] == w[0] + step).then_some(step)
        }
        _ => None,
    }
}

/// `[batch, m, k] @ [k, n]` with a weight shared by the batch is one `[batch * m, k] @ [k, n]` product when
/// the rows of `a` continue evenly from one batch entry to the next: one large GEMM instead of `batch`
/// small ones. Returns the folded operands, or `None` when the layouts do not allow it.
fn folded(a: &Tensor, b: &Tensor, batch_shape: &[usize], m: usize) -> Result<Option<(Operand, Operand)>> {
    let (ra, rb) = (a.rank(), b.rank());
    let (rs, cs) = (a.layout().strides()[ra - 2], a.layout().strides()[ra - 1]);
    let (a_offsets, b_offsets) = (batch_offsets(a, batch_shape)?, batch_offsets(b, batch_shape)?);
    let weight_shared = uniform_step(&b_offsets) == Some(0);
    let rows_continue = uniform_step(&a_offsets) == Some(m * rs);
    if !(weight_shared && rows_continue && cs == 1 && a_offsets.len() > 1) {
        return Ok(None);
    }
    let elem = a.dtype().size_in_bytes() as u64;
    let lhs = Operand {
        ptr: a.gpu_base(OP)? + a_offsets[0] as u64 * elem,
        row_stride: rs,
        col_stride: 1,
        batch_stride: 0,
    };
    let (brs, bcs) = (b.layout().strides()[rb - 2], b.layout().strides()[rb - 1]);
    let rhs = Operand {
        ptr: b.gpu_base(OP)? + b_offsets[0] as u64 * elem,
        row_stride: brs,
        col_stride: bcs,
        batch_stride: 0,
    };
    Ok(Some((lhs, rhs)))
}

/// The operand as cuBLAS reads it, making a contiguous batch-broadcast copy when the view does not fit.
fn operand(t: &Tensor, batch_shape: &[usize], keep: &mut Vec<Tensor>) -> Result<Operand> {
    let rank = t.rank();
    let (rows, cols) = (t.shape()[rank - 2], t.shape()[rank - 1]);
    let (rs, cs) = (t.layout().strides()[rank - 2], t.layout().strides()[rank - 1]);
    let offsets = batch_offsets(t, batch_shape)?;
    let uniform = uniform_step(&offsets);
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

/// Operands and outputs at least this large get 16-byte-aligned rows (a copy costs far less than the
/// slow GEMM it avoids); smaller ones are used as they are.
const ALIGN_MIN_ELEMS: usize = 1 << 16;

/// A copy of `t` whose unit-stride matrix rows are 16-byte aligned, when `t` is a large matrix view whose
/// rows are not (contiguous `[.., rows, 5461]` bf16, say); `None` when `t` is fine as it is. The copy
/// keeps the matrices' orientation (a transposed view stays transposed) and views a padded buffer.
fn aligned_copy(t: &Tensor, dtype: GpuDType) -> Result<Option<Tensor>> {
    let rank = t.rank();
    let (rows, cols) = (t.shape()[rank - 2], t.shape()[rank - 1]);
    let (rs, cs) = (t.layout().strides()[rank - 2], t.layout().strides()[rank - 1]);
    let Some((transposed, ld)) = operand_layout(rows, cols, rs, cs) else { return Ok(None) };
    if ld == aligned_stride(ld, dtype) || t.numel() < ALIGN_MIN_ELEMS || rows <= 1 || cols <= 1 {
        return Ok(None);
    }
    // Pad the stored (unit-stride) dim: the last one of `t`, or of its transpose for a transposed view.
    let stored = if transposed { t.transpose(-1, -2)? } else { t.clone() };
    let mut padded_shape: Shape = stored.shape().into();
    let last = padded_shape.len() - 1;
    let inner = padded_shape[last];
    padded_shape[last] = aligned_stride(inner, dtype);
    let buffer = Tensor::gpu_empty(&t.gpu_device(OP)?, &padded_shape, t.dtype())?;
    let view = buffer.narrow(-1, 0, inner)?;
    view.gpu_copy_into(&stored)?;
    Ok(Some(if transposed { view.transpose(-1, -2)? } else { view }))
}

/// A row-major copy of the right operand `[.., k, n]` with rows padded to `aligned_stride(n)`, when `n`
/// is not aligned and the product is large: the GEMM then runs over the padded width too (the extra
/// output columns lie in the output's padding and are never read), because cuBLAS is slow for an
/// unaligned `n` even when every leading dimension is aligned. `None` when no padding is needed.
fn padded_rhs(b: &Tensor, dtype: GpuDType, out_elems: usize) -> Result<Option<Tensor>> {
    let rank = b.rank();
    let n = b.shape()[rank - 1];
    let padded = aligned_stride(n, dtype);
    if padded == n || out_elems < ALIGN_MIN_ELEMS || has_room(b, &b.shape()[..rank - 2], padded)? {
        return Ok(None);
    }
    let mut shape: Shape = b.shape().into();
    shape[rank - 1] = padded;
    let buffer = Tensor::gpu_empty(&b.gpu_device(OP)?, &shape, b.dtype())?;
    let view = buffer.narrow(-1, 0, n)?;
    view.gpu_copy_into(b)?;
    Ok(Some(view))
}

/// Copies of both operands with the inner dimension `k` zero-padded to an aligned length, when it is not
/// aligned and the product is large: cuBLAS is several times slower for such a `k` (a bf16 product with
/// k = 5461 runs at about 110 TFLOP/s on an H200, with k = 5464 at about 550), and the padded columns of
/// `a` and rows of `b` are zeros, so the product is exactly the same. `b` gets aligned rows as well.
fn zero_padded_inner(
    a: &Tensor,
    b: &Tensor,
    dtype: GpuDType,
    out_elems: usize,
) -> Result<Option<(Tensor, Tensor, usize)>> {
    let (ra, rb) = (a.rank(), b.rank());
    let k = a.shape()[ra - 1];
    let k_pad = aligned_stride(k, dtype);
    // A transposed `a` (the weight-gradient layout `x^T @ g`) is fast with any `k` (721 TFLOP/s measured
    // for k = 5461, against 277 with the padding copies), so it is left alone.
    let a_transposed = a.layout().strides()[ra - 1] != 1 && a.layout().strides()[ra - 2] == 1;
    if k_pad == k || out_elems < ALIGN_MIN_ELEMS || k < 64 || a_transposed {
        return Ok(None);
    }
    let device = a.gpu_device(OP)?;
    let mut a_shape: Shape = a.shape().into();
    a_shape[ra - 1] = k_pad;
    let a_full = Tensor::gpu_zeros(&device, &a_shape, a.dtype())?;
    a_full.narrow(-1, 0, k)?.gpu_copy_into(a)?;
    let n = b.shape()[rb - 1];
    let mut b_shape: Shape = b.shape().into();
    b_shape[rb - 2] = k_pad;
    b_shape[rb - 1] = aligned_stride(n, dtype);
    let b_full = Tensor::gpu_zeros(&device, &b_shape, b.dtype())?;
    b_full.narrow(-2, 0, k)?.narrow(-1, 0, n)?.gpu_copy_into(b)?;
    Ok(Some((a_full, b_full.narrow(-1, 0, n)?, k_pad)))
}

/// Whether every `[k, n]` matrix of `b` (row-major) can be read `width >= n` columns wide inside its
/// storage: true for the padded buffers made here and by earlier products.
fn has_room(b: &Tensor, batch_shape: &[usize], width: usize) -> Result<bool> {
    let rank = b.rank();
    let k = b.shape()[rank - 2];
    let (rs, cs) = (b.layout().strides()[rank - 2], b.layout().strides()[rank - 1]);
    if cs != 1 || (k > 1 && rs < width) || k == 0 {
        return Ok(false);
    }
    let last = batch_offsets(b, batch_shape)?.into_iter().max().unwrap_or(b.layout().offset());
    Ok(last + (k - 1) * rs + width <= b.storage_bytes() / b.dtype().size_in_bytes())
}

/// `[..., m, k] @ [..., k, n]` on the GPU; shapes were checked by the caller. Large outputs whose rows
/// would not be 16-byte aligned are written into a padded buffer and returned as a (strided) view of it.
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
    if let Some((a, b, k_pad)) = zero_padded_inner(a, b, dtype, batch * m * n)? {
        return matmul(&a, &b, batch_shape, m, k_pad, n);
    }
    let b_padded = padded_rhs(b, dtype, batch * m * n)?;
    let b = b_padded.as_ref().unwrap_or(b);
    let (a_copy, b_copy) = (aligned_copy(a, dtype)?, aligned_copy(b, dtype)?);
    let (a, b) = (a_copy.as_ref().unwrap_or(a), b_copy.as_ref().unwrap_or(b));
    let mut shape: Shape = batch_shape.into();
    shape.extend_from_slice(&[m, n]);
    let row_stride = if batch * m * n >= ALIGN_MIN_ELEMS { aligned_stride(n, dtype) } else { n };
    let mut buffer_shape = shape.clone();
    buffer_shape[batch_shape.len() + 1] = row_stride;
    let buffer = Tensor::gpu_empty(&device, &buffer_shape, a.dtype())?;
    let out = if row_stride == n { buffer } else { buffer.narrow(-1, 0, n)? };
    if out.numel() == 0 {
        return Ok(out);
    }
    let c = Output { ptr: out.gpu_ptr(OP)?, dtype, row_stride };
    // The width the GEMM computes: the output's padded width when `b`'s rows have room for it too.
    let n_gemm = if row_stride > n && has_room(b, batch_shape, row_stride)? { row_stride } else { n };
    if let Some((lhs, rhs)) = folded(a, b, batch_shape, m)? {
        let (lhs_ok, rhs_ok) = (
            operand_layout(batch * m, k, lhs.row_stride, 1),
            operand_layout(k, n_gemm, rhs.row_stride, rhs.col_stride),
        );
        if lhs_ok.is_some() && rhs_ok.is_some() {
            let dims = GemmDims { m: batch * m, n: n_gemm, k, batch: 1 };
            gemm_into(&device, dims, dtype, lhs, rhs, c, 1.0, 0.0).map_err(cuda_error(OP))?;
            return Ok(out);
        }
    }
    // Copies made for cuBLAS must live until the GEMM is queued (the stream orders their later reuse).
    let mut keep = Vec::new();
    let lhs = operand(a, batch_shape, &mut keep)?;
    let copies = keep.len();
    let rhs = operand(b, batch_shape, &mut keep)?;
    let n_gemm = if keep.len() == copies { n_gemm } else { n };
    let dims = GemmDims { m, n: n_gemm, k, batch };
    gemm_into(&device, dims, dtype, lhs, rhs, c, 1.0, 0.0).map_err(cuda_error(OP))?;
    Ok(out)
}

//! General matrix multiply on strided operands: `C = alpha * A @ B + beta * C`.
//!
//! Interface (kept by later SIMD tuning): operands are strided views into slices, so transposed and
//! narrowed operands need no copy; packing absorbs the strides. C is contiguous row-major.
use crate::Float;

/// Problem size: A is m x k, B is k x n, C is m x n.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// A read-only strided matrix view: element (i, j) is `data[offset + i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// A batch of strided matrices sharing strides: matrix b starts at `data[offsets[b]]`.
/// Broadcast batch dimensions are expressed by repeating an offset.
#[derive(Clone, Copy, Debug)]
pub struct BatchRef<'a, T> {
    pub data: &'a [T],
    pub offsets: &'a [usize],
    pub row_stride: usize,
    pub col_stride: usize,
}

/// `C = alpha * A @ B + beta * C`, C contiguous row-major `m x n` (`c.len() == m * n`).
/// When `beta == 0` the previous contents of C are ignored (NaNs in C do not propagate).
pub fn gemm<T: Float>(dims: Dims, alpha: T, a: MatRef<'_, T>, b: MatRef<'_, T>, beta: T, c: &mut [T]) {
    let _ = (dims, alpha, a, b, beta, c);
    unimplemented!("gemm")
}

/// Batched GEMM: for each b, `C[b] = alpha * A[b] @ B[b] + beta * C[b]` with C contiguous
/// `[batch, m, n]`, `batch == a.offsets.len() == b.offsets.len()`.
pub fn gemm_batched<T: Float>(
    dims: Dims,
    alpha: T,
    a: BatchRef<'_, T>,
    b: BatchRef<'_, T>,
    beta: T,
    c: &mut [T],
) {
    let _ = (dims, alpha, a, b, beta, c);
    unimplemented!("gemm_batched")
}

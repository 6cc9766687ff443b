//! Elementwise kernels on contiguous slices: activation functions and their derivatives, plus the
//! row-splitting and dot-product helpers the fused kernels of this module family share.
use crate::float::PARALLEL_MIN_ELEMS;
use crate::Float;
use rayon::prelude::*;

/// `y = x * sigmoid(x)`.
pub fn silu_forward<T: Float>(x: &[T], y: &mut [T]) {
    for_each_row_block(y, 1, 1, |start, ys| {
        for (yi, &xi) in ys.iter_mut().zip(&x[start..]) {
            *yi = xi * sigmoid(xi);
        }
    });
}

/// `grad_x = grad_y * s * (1 + x * (1 - s))` with `s = sigmoid(x)`.
pub fn silu_backward<T: Float>(x: &[T], grad_y: &[T], grad_x: &mut [T]) {
    for_each_row_block(grad_x, 1, 1, |start, gxs| {
        let inputs = x[start..].iter().zip(&grad_y[start..]);
        for (gx, (&xi, &gy)) in gxs.iter_mut().zip(inputs) {
            let s = sigmoid(xi);
            *gx = gy * s * (T::ONE + xi * (T::ONE - s));
        }
    });
}

/// `1 / (1 + exp(-x))`; saturates to exactly 0 or 1 for large |x| instead of producing NaN, because
/// `exp(-x)` overflows to infinity and `1 / inf == 0`.
#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

/// Runs `f(first_row, rows)` over contiguous blocks of whole rows of `out` (rows are `row_len` long and
/// cost about `row_cost` element-operations each).
///
/// Blocks hold `max(1, PARALLEL_MIN_ELEMS / row_cost)` rows, a size fixed by the problem alone, so a
/// kernel whose rows are independent gives the same bits on any number of threads. Work below
/// `PARALLEL_MIN_ELEMS` runs on the calling thread as a single call.
pub(crate) fn for_each_row_block<T: Send>(
    out: &mut [T],
    row_len: usize,
    row_cost: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / row_len;
    if rows.saturating_mul(row_cost) < PARALLEL_MIN_ELEMS {
        f(0, out);
        return;
    }
    let rows_per_block = (PARALLEL_MIN_ELEMS / row_cost.max(1)).max(1);
    out.par_chunks_mut(rows_per_block * row_len)
        .enumerate()
        .for_each(|(block, chunk)| f(block * rows_per_block, chunk));
}

/// Number of independent accumulators in [`dot`]: enough for the compiler to vectorise the loop
/// without reassociating a single sequential sum (which it may not do for floats).
pub(crate) const LANES: usize = 8;

/// `sum_i a[i] * b[i]` over the shorter length, accumulated in `LANES` interleaved partial sums that are
/// combined in a fixed tree, so the result depends only on the inputs.
#[inline]
pub(crate) fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::ZERO; LANES];
    let a_chunks = a.chunks_exact(LANES);
    let b_chunks = b.chunks_exact(LANES);
    let mut tail = T::ZERO;
    for (&x, &y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        tail += x * y;
    }
    for (xs, ys) in a_chunks.zip(b_chunks) {
        for ((s, &x), &y) in acc.iter_mut().zip(xs).zip(ys) {
            *s += x * y;
        }
    }
    combine_lanes(acc) + tail
}

/// Fixed-order tree sum of the lane accumulators.
#[inline(always)]
pub(crate) fn combine_lanes<T: Float>(acc: [T; LANES]) -> T {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// `y += alpha * x` over the shorter length.
#[inline]
pub(crate) fn axpy<T: Float>(alpha: T, x: &[T], y: &mut [T]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

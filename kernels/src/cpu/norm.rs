//! Fused RMSNorm: `y = x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
//!
//! With `r = 1 / sqrt(mean(x^2) + eps)` per row, `y = x * r * w`. Differentiating through `r`
//! (`dr/dx_j = -r^3 x_j / dim`) gives the backward equations
//!     `dx = r * (g * w) - x * r^3 / dim * sum(g * w * x)`,   `dw = sum_rows(g * x * r)`.
//! One pass per row, so the normalised activations are never materialised for backward.
use super::elementwise::{dot, for_each_row_block};
use crate::float::PARALLEL_MIN_ELEMS;
use crate::Float;
use rayon::prelude::*;

/// Forward over rows of length `dim`: `x.len() == y.len()`, a multiple of `dim`; `weight.len() == dim`.
pub fn rms_norm_forward<T: Float>(x: &[T], weight: &[T], dim: usize, eps: T, y: &mut [T]) {
    if dim == 0 {
        return;
    }
    for_each_row_block(y, dim, dim, |row0, ys| {
        let xs = &x[row0 * dim..row0 * dim + ys.len()];
        for (xr, yr) in xs.chunks_exact(dim).zip(ys.chunks_exact_mut(dim)) {
            let r = inv_rms(xr, eps);
            for ((yi, &xi), &wi) in yr.iter_mut().zip(xr).zip(weight) {
                *yi = xi * r * wi;
            }
        }
    });
}

/// Backward: writes `grad_x` (same length as x) and `grad_weight` (length `dim`, overwritten, not
/// accumulated). Recomputes the inverse RMS from x.
///
/// `grad_weight` is a reduction over rows: rows are cut into blocks of a size fixed by `dim` alone, each
/// block sums its rows in order into its own partial, and the partials are added in block order, so the
/// result is the same on any number of threads.
pub fn rms_norm_backward<T: Float>(
    x: &[T],
    weight: &[T],
    grad_y: &[T],
    dim: usize,
    eps: T,
    grad_x: &mut [T],
    grad_weight: &mut [T],
) {
    grad_weight.fill(T::ZERO);
    if dim == 0 || grad_x.is_empty() {
        return;
    }
    let rows = grad_x.len() / dim;
    let rows_per_block = (PARALLEL_MIN_ELEMS / dim).max(1);
    let blocks = rows.div_ceil(rows_per_block);
    let block_len = rows_per_block * dim;
    let run_block = |block: usize, gx: &mut [T], partial: &mut [T]| {
        let start = block * block_len;
        let end = start + gx.len();
        backward_rows(&x[start..end], weight, &grad_y[start..end], dim, eps, gx, partial);
    };
    if blocks <= 1 {
        run_block(0, grad_x, grad_weight);
        return;
    }
    let mut partials = vec![T::ZERO; blocks * dim];
    grad_x
        .par_chunks_mut(block_len)
        .zip(partials.par_chunks_mut(dim))
        .enumerate()
        .for_each(|(block, (gx, partial))| run_block(block, gx, partial));
    for partial in partials.chunks_exact(dim) {
        for (gw, &p) in grad_weight.iter_mut().zip(partial) {
            *gw += p;
        }
    }
}

/// Backward of consecutive rows; adds each row's `g * x * r` into `partial` in row order.
fn backward_rows<T: Float>(
    x: &[T],
    weight: &[T],
    grad_y: &[T],
    dim: usize,
    eps: T,
    grad_x: &mut [T],
    partial: &mut [T],
) {
    let inv_dim = T::ONE / T::from_f64(dim as f64);
    let mut gw = vec![T::ZERO; dim];
    let rows = x.chunks_exact(dim).zip(grad_y.chunks_exact(dim));
    for ((xr, gr), gxr) in rows.zip(grad_x.chunks_exact_mut(dim)) {
        let r = inv_rms(xr, eps);
        for ((p, &g), &w) in gw.iter_mut().zip(gr).zip(weight) {
            *p = g * w;
        }
        let coef = r * r * r * inv_dim * dot(&gw, xr);
        for ((gx, &p), &xi) in gxr.iter_mut().zip(&gw).zip(xr) {
            *gx = r * p - xi * coef;
        }
        for ((acc, &g), &xi) in partial.iter_mut().zip(gr).zip(xr) {
            *acc += g * xi * r;
        }
    }
}

/// `1 / sqrt(mean(x^2) + eps)` of one row.
#[inline]
fn inv_rms<T: Float>(row: &[T], eps: T) -> T {
    let mean_square = dot(row, row) / T::from_f64(row.len() as f64);
    T::ONE / (mean_square + eps).sqrt()
}

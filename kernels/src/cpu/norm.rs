//! Fused RMSNorm: `y = x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
//!
//! With `r = 1 / sqrt(mean(x^2) + eps)` per row, `y = x * r * w`. Differentiating through `r`
//! (`dr/dx_j = -r^3 x_j / dim`) gives the backward equations
//!     `dx = r * (g * w) - x * r^3 / dim * sum(g * w * x)`,   `dw = sum_rows(g * x * r)`.
//! One pass over memory, so the normalised activations are never materialised for backward. A row's
//! outputs need its sums first; so that the loads of a row are not stalled behind that dependency (rows
//! are a few KB, and hardware prefetchers do not cross 4 KB pages on their own), each row's output loop
//! also computes the sums of the next row.
use super::bf16::{round, widen};
use super::elementwise::for_each_row_block;
use super::simd::{self, multiversion, Isa, WIDE};
use crate::float::PARALLEL_MIN_ELEMS;
use crate::Float;
use half::bf16;
use rayon::prelude::*;

/// Forward over rows of length `dim`: `x.len() == y.len()`, a multiple of `dim`; `weight.len() == dim`.
pub fn rms_norm_forward<T: Float>(x: &[T], weight: &[T], dim: usize, eps: T, y: &mut [T]) {
    if dim == 0 {
        return;
    }
    let isa = Isa::active();
    for_each_row_block(y, dim, dim, |row0, ys| {
        forward_rows(isa, &x[row0 * dim..row0 * dim + ys.len()], weight, eps, ys)
    });
}

multiversion! {
    /// Forward of consecutive rows (`weight.len()` long).
    fn forward_rows[T: Float](isa: Isa, x: &[T], weight: &[T], eps: T, y: &mut [T]) {
        let dim = weight.len();
        let mut sum_xx = simd::sum_map(&x[..dim], |v| v * v);
        for (k, yr) in y.chunks_exact_mut(dim).enumerate() {
            let (xr, next) = (&x[k * dim..(k + 1) * dim], x.get((k + 1) * dim..(k + 2) * dim).unwrap_or(&[]));
            let r = inv_rms(sum_xx, dim, eps);
            let mut acc = [T::ZERO; WIDE];
            let lanes = next.len() / WIDE * WIDE;
            let outs = yr[..lanes].chunks_exact_mut(WIDE).zip(chunk_pairs(&xr[..lanes], &weight[..lanes]));
            for ((ys, (xs, ws)), ns) in outs.zip(next[..lanes].chunks_exact(WIDE)) {
                for l in 0..WIDE {
                    ys[l] = xs[l] * r * ws[l];
                    acc[l] += ns[l] * ns[l];
                }
            }
            for ((yi, &xi), &wi) in yr[lanes..].iter_mut().zip(&xr[lanes..]).zip(&weight[lanes..]) {
                *yi = xi * r * wi;
            }
            sum_xx = next[lanes..].iter().fold(simd::combine(acc), |s, &v| s + v * v);
        }
    }
}

/// Pairs of `WIDE`-long chunks of two slices.
#[inline(always)]
fn chunk_pairs<'a, T>(a: &'a [T], b: &'a [T]) -> impl Iterator<Item = (&'a [T], &'a [T])> {
    a.chunks_exact(WIDE).zip(b.chunks_exact(WIDE))
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
    let isa = Isa::active();
    backward_blocks(
        dim,
        grad_x,
        grad_weight,
        || (),
        |(), start, gx, partial| {
            let end = start + gx.len();
            backward_rows(isa, &x[start..end], weight, &grad_y[start..end], eps, gx, partial);
        },
    );
}

/// [`rms_norm_backward`] of bf16 `x` and `grad_y` into a bf16 `grad_x`, with the weight (widened) and its
/// gradient in f32. Each block of rows is widened into per-thread f32 buffers, runs the f32 kernel and is
/// rounded once on store: the same blocks, the same f32 arithmetic, so the bits of widening the whole
/// tensors, running [`rms_norm_backward`] and rounding its results (`tensor/tests/suite/bf16_fused.rs`),
/// without the three whole-tensor f32 copies.
pub fn rms_norm_backward_bf16(
    x: &[bf16],
    weight: &[f32],
    grad_y: &[bf16],
    dim: usize,
    eps: f32,
    grad_x: &mut [bf16],
    grad_weight: &mut [f32],
) {
    let isa = Isa::active();
    let buffers = || (Vec::new(), Vec::new(), Vec::new());
    backward_blocks(dim, grad_x, grad_weight, buffers, |(xw, gw, gxw), start, gx, partial| {
        let (len, end) = (gx.len(), start + gx.len());
        for buf in [&mut *xw, &mut *gw, &mut *gxw] {
            buf.resize(len, 0.0f32);
        }
        widen(&x[start..end], xw);
        widen(&grad_y[start..end], gw);
        backward_rows(isa, xw, weight, gw, eps, gxw, partial);
        round(gxw, gx);
    });
}

/// The row blocks of the backward pass: zeroes `grad_weight`, cuts `grad_x` into blocks of whole rows
/// (their number fixed by `dim` alone) and runs `run(buffers, first element, block of grad_x, partial)` on
/// each, in parallel over blocks with per-thread `buffers` from `init`; then adds the blocks' partials into
/// `grad_weight` in block order. A single block writes `grad_weight` directly.
fn backward_blocks<G: Send, T: Float, B>(
    dim: usize,
    grad_x: &mut [G],
    grad_weight: &mut [T],
    init: impl Fn() -> B + Sync + Send,
    run: impl Fn(&mut B, usize, &mut [G], &mut [T]) + Sync + Send,
) {
    grad_weight.fill(T::ZERO);
    if dim == 0 || grad_x.is_empty() {
        return;
    }
    let rows = grad_x.len() / dim;
    let rows_per_block = (PARALLEL_MIN_ELEMS / dim).max(1);
    let blocks = rows.div_ceil(rows_per_block);
    let block_len = rows_per_block * dim;
    if blocks <= 1 {
        run(&mut init(), 0, grad_x, grad_weight);
        return;
    }
    let mut partials = vec![T::ZERO; blocks * dim];
    grad_x
        .par_chunks_mut(block_len)
        .zip(partials.par_chunks_mut(dim))
        .enumerate()
        .for_each_init(init, |bufs, (block, (gx, partial))| run(bufs, block * block_len, gx, partial));
    for partial in partials.chunks_exact(dim) {
        for (gw, &p) in grad_weight.iter_mut().zip(partial) {
            *gw += p;
        }
    }
}

multiversion! {
    /// Backward of consecutive rows (`weight.len()` long); adds each row's `g * x * r` into `partial` in
    /// row order.
    fn backward_rows[T: Float](
        isa: Isa,
        x: &[T],
        weight: &[T],
        grad_y: &[T],
        eps: T,
        grad_x: &mut [T],
        partial: &mut [T],
    ) {
        let dim = weight.len();
        let inv_dim = T::ONE / T::from_f64(dim as f64);
        let gw_dot_x = |x: &[T], g: &[T]| -> T {
            let lanes = x.len() / WIDE * WIDE;
            let mut acc = [T::ZERO; WIDE];
            for ((xs, gs), ws) in chunk_pairs(&x[..lanes], &g[..lanes]).zip(weight.chunks_exact(WIDE)) {
                for (s, ((&xi, &gi), &wi)) in acc.iter_mut().zip(xs.iter().zip(gs).zip(ws)) {
                    *s += gi * wi * xi;
                }
            }
            let tail = x[lanes..].iter().zip(&g[lanes..]).zip(&weight[lanes..]);
            tail.fold(simd::combine(acc), |s, ((&xi, &gi), &wi)| s + gi * wi * xi)
        };
        let mut sum_xx = simd::sum_map(&x[..dim], |v| v * v);
        let mut sum_gwx = gw_dot_x(&x[..dim], &grad_y[..dim]);
        let rows = grad_x.chunks_exact_mut(dim).zip(x.chunks_exact(dim).zip(grad_y.chunks_exact(dim)));
        for (k, (gxr, (xr, gr))) in rows.enumerate() {
            let r = inv_rms(sum_xx, dim, eps);
            let coef = r * r * r * inv_dim * sum_gwx;
            let next = (k + 1) * dim..(k + 2) * dim;
            let (xn, gn) = (x.get(next.clone()).unwrap_or(&[]), grad_y.get(next).unwrap_or(&[]));
            // The row's outputs, and the lane sums of the next row in the same loop.
            let lanes = xn.len().min(gn.len()) / WIDE * WIDE;
            let (mut xx, mut gwx) = ([T::ZERO; WIDE], [T::ZERO; WIDE]);
            let outs = gxr[..lanes].chunks_exact_mut(WIDE).zip(partial[..lanes].chunks_exact_mut(WIDE));
            let ins = chunk_pairs(&xr[..lanes], &gr[..lanes]).zip(chunk_pairs(&xn[..lanes], &gn[..lanes]));
            for (((gxs, accs), ((xs, gs), (xns, gns))), ws) in outs.zip(ins).zip(weight.chunks_exact(WIDE)) {
                for l in 0..WIDE {
                    let (xi, g, w) = (xs[l], gs[l], ws[l]);
                    gxs[l] = r * (g * w) - xi * coef;
                    accs[l] += g * xi * r;
                    xx[l] += xns[l] * xns[l];
                    gwx[l] += gns[l] * w * xns[l];
                }
            }
            let rest = gxr[lanes..].iter_mut().zip(partial[lanes..].iter_mut());
            let rest_in = xr[lanes..].iter().zip(&gr[lanes..]).zip(&weight[lanes..]);
            for ((gx, acc), ((&xi, &g), &w)) in rest.zip(rest_in) {
                *gx = r * (g * w) - xi * coef;
                *acc += g * xi * r;
            }
            sum_xx = xn[lanes..].iter().fold(simd::combine(xx), |s, &v| s + v * v);
            let tail = xn[lanes..].iter().zip(&gn[lanes..]).zip(&weight[lanes..]);
            sum_gwx = tail.fold(simd::combine(gwx), |s, ((&xi, &gi), &wi)| s + gi * wi * xi);
        }
    }
}

/// `1 / sqrt(mean(x^2) + eps)` of a row of `dim` values whose squares sum to `sum_xx`.
#[inline(always)]
fn inv_rms<T: Float>(sum_xx: T, dim: usize, eps: T) -> T {
    let mean_square = sum_xx / T::from_f64(dim as f64);
    T::ONE / (mean_square + eps).sqrt()
}

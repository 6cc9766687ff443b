//! Elementwise kernels on contiguous slices: activation functions (silu, gelu, relu) and their derivatives, plus the
//! row-splitting and dot-product helpers the fused kernels of this module family share.
use super::simd::{self, multiversion, Isa};
use crate::float::PARALLEL_MIN_ELEMS;
use crate::Float;
use rayon::prelude::*;

/// `y = x * sigmoid(x)`, computed as `x / (1 + exp(-x))`.
pub fn silu_forward<T: Float>(x: &[T], y: &mut [T]) {
    let isa = Isa::active();
    for_each_row_block(y, 1, 1, |start, ys| silu_forward_block(isa, &x[start..start + ys.len()], ys));
}

/// `grad_x = grad_y * s * (1 + x * (1 - s))` with `s = sigmoid(x)`.
pub fn silu_backward<T: Float>(x: &[T], grad_y: &[T], grad_x: &mut [T]) {
    let isa = Isa::active();
    for_each_row_block(grad_x, 1, 1, |start, gxs| {
        let end = start + gxs.len();
        silu_backward_block(isa, &x[start..end], &grad_y[start..end], gxs)
    });
}

multiversion! {
    fn silu_forward_block[T: Float](isa: Isa, x: &[T], y: &mut [T]) {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi = silu(xi);
        }
    }
}

multiversion! {
    fn silu_backward_block[T: Float](isa: Isa, x: &[T], grad_y: &[T], grad_x: &mut [T]) {
        for (gx, (&xi, &gy)) in grad_x.iter_mut().zip(x.iter().zip(grad_y)) {
            *gx = gy * silu_slope(xi);
        }
    }
}

/// GELU in its tanh form (PyTorch's `gelu(approximate="tanh")`, Hugging Face's `gelu_pytorch_tanh`):
/// `0.5 x (1 + tanh(u))` with `u = sqrt(2/pi) (x + 0.044715 x^3)`, computed as `x * sigmoid(2u)` (the
/// same value, and a form that saturates without NaN). The tanh form, not the erf one, because its
/// derivative is closed-form in the functions every kernel already has.
pub fn gelu_forward<T: Float>(x: &[T], y: &mut [T]) {
    let isa = Isa::active();
    for_each_row_block(y, 1, 1, |start, ys| gelu_forward_block(isa, &x[start..start + ys.len()], ys));
}

/// `grad_x = grad_y * (s + 2 x s (1 - s) u')` with `s = sigmoid(2u)`, `u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)`.
pub fn gelu_backward<T: Float>(x: &[T], grad_y: &[T], grad_x: &mut [T]) {
    let isa = Isa::active();
    for_each_row_block(grad_x, 1, 1, |start, gxs| {
        let end = start + gxs.len();
        gelu_backward_block(isa, &x[start..end], &grad_y[start..end], gxs)
    });
}

/// `y = max(x, 0)`.
pub fn relu_forward<T: Float>(x: &[T], y: &mut [T]) {
    for_each_row_block(y, 1, 1, |start, ys| {
        let xs = &x[start..start + ys.len()];
        for (yi, &xi) in ys.iter_mut().zip(xs) {
            *yi = xi.max(T::ZERO);
        }
    });
}

/// `grad_x = grad_y` where `x > 0`, else 0 (the subgradient 0 at `x = 0`, as PyTorch).
pub fn relu_backward<T: Float>(x: &[T], grad_y: &[T], grad_x: &mut [T]) {
    for_each_row_block(grad_x, 1, 1, |start, gxs| {
        let end = start + gxs.len();
        for (gx, (&xi, &gy)) in gxs.iter_mut().zip(x[start..end].iter().zip(&grad_y[start..end])) {
            *gx = if xi > T::ZERO { gy } else { T::ZERO };
        }
    });
}

multiversion! {
    fn gelu_forward_block[T: Float](isa: Isa, x: &[T], y: &mut [T]) {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi = xi * sigmoid(gelu_2u(xi));
        }
    }
}

multiversion! {
    fn gelu_backward_block[T: Float](isa: Isa, x: &[T], grad_y: &[T], grad_x: &mut [T]) {
        for (gx, (&xi, &gy)) in grad_x.iter_mut().zip(x.iter().zip(grad_y)) {
            *gx = gy * gelu_slope(xi);
        }
    }
}

/// `sqrt(2 / pi)`, the scale of GELU's tanh argument.
const GELU_SCALE: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of GELU's tanh argument.
const GELU_CUBIC: f64 = 0.044715;

/// `2u = 2 sqrt(2/pi) (x + 0.044715 x^3)`, the argument of the sigmoid in [`gelu_forward`].
#[inline(always)]
fn gelu_2u<T: Float>(x: T) -> T {
    T::from_f64(2.0 * GELU_SCALE) * (x + T::from_f64(GELU_CUBIC) * x * x * x)
}

/// `d gelu / dx = s + 2 x s (1 - s) u'` with `s = sigmoid(2u)`.
#[inline(always)]
fn gelu_slope<T: Float>(x: T) -> T {
    let s = sigmoid(gelu_2u(x));
    let du = T::from_f64(GELU_SCALE) * (T::ONE + T::from_f64(3.0 * GELU_CUBIC) * x * x);
    s + T::from_f64(2.0) * x * s * (T::ONE - s) * du
}

/// `x / (1 + exp(-x))` (one rounding fewer than `x * sigmoid(x)`); 0 for large negative x.
#[inline(always)]
pub(crate) fn silu<T: Float>(x: T) -> T {
    x / (T::ONE + simd::exp(-x))
}

/// `1 / (1 + exp(-x))`; saturates to exactly 0 or 1 for large |x| instead of producing NaN, because
/// `exp(-x)` overflows to infinity and `1 / inf == 0`.
#[inline(always)]
pub(crate) fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + simd::exp(-x))
}

/// `d silu / dx = s * (1 + x * (1 - s))` with `s = sigmoid(x)`.
#[inline(always)]
fn silu_slope<T: Float>(x: T) -> T {
    let s = sigmoid(x);
    s * (T::ONE + x * (T::ONE - s))
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

/// `sum_i a[i] * b[i]` over the shorter length, in [`simd::WIDE`] interleaved partial sums combined in
/// a fixed order, so the result depends only on the inputs.
#[inline(always)]
pub(crate) fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    simd::sum_map2(a, b, |x, y| x * y)
}

//! Fused RMSNorm: `y = x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
use crate::Float;

/// Forward over rows of length `dim`: `x.len() == y.len()`, a multiple of `dim`; `weight.len() == dim`.
pub fn rms_norm_forward<T: Float>(x: &[T], weight: &[T], dim: usize, eps: T, y: &mut [T]) {
    let _ = (x, weight, dim, eps, y);
    unimplemented!()
}

/// Backward: writes `grad_x` (same length as x) and `grad_weight` (length `dim`, overwritten, not
/// accumulated). Recomputes the inverse RMS from x.
pub fn rms_norm_backward<T: Float>(
    x: &[T],
    weight: &[T],
    grad_y: &[T],
    dim: usize,
    eps: T,
    grad_x: &mut [T],
    grad_weight: &mut [T],
) {
    let _ = (x, weight, grad_y, dim, eps, grad_x, grad_weight);
    unimplemented!()
}

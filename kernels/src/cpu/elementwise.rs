//! Elementwise kernels on contiguous slices: activation functions and their derivatives.
use crate::Float;

/// `y = x * sigmoid(x)`.
pub fn silu_forward<T: Float>(x: &[T], y: &mut [T]) {
    let _ = (x, y);
    unimplemented!()
}

/// `grad_x = grad_y * s * (1 + x * (1 - s))` with `s = sigmoid(x)`.
pub fn silu_backward<T: Float>(x: &[T], grad_y: &[T], grad_x: &mut [T]) {
    let _ = (x, grad_y, grad_x);
    unimplemented!()
}

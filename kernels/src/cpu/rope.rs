//! Rotary position embedding, rotate-half convention.
use crate::Float;

/// Shape of a rope operand laid out contiguously as `[batch, seq, heads, head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeDims {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// `y = x * cos + rotate_half(x) * sin` with angle `positions[s] * theta^(-2i/head_dim)` for pair i.
/// `positions.len() == dims.seq`; `head_dim` even.
pub fn rope_forward<T: Float>(x: &[T], dims: RopeDims, positions: &[u32], theta: f64, y: &mut [T]) {
    let _ = (x, dims, positions, theta, y);
    unimplemented!()
}

/// Backward: the transpose of the rotation, i.e. rotation by the negated angle.
pub fn rope_backward<T: Float>(
    grad_y: &[T],
    dims: RopeDims,
    positions: &[u32],
    theta: f64,
    grad_x: &mut [T],
) {
    let _ = (grad_y, dims, positions, theta, grad_x);
    unimplemented!()
}

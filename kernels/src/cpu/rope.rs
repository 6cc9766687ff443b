//! Rotary position embedding, rotate-half convention.
//!
//! Pair i of a head is the dims `(i, i + head_dim/2)`; it is rotated by the angle
//! `a = position * theta^(-2i/head_dim)`:
//!     `y_i = x_i cos a - x_{i+h} sin a`,   `y_{i+h} = x_{i+h} cos a + x_i sin a`   (h = head_dim / 2),
//! which is `y = x * cos + rotate_half(x) * sin` with `rotate_half(x) = [-x_{h..}, x_{..h}]`.
//! A rotation is orthogonal, so the backward is the rotation by `-a`.
use super::elementwise::for_each_row_block;
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
    rotate(x, dims, positions, theta, 1.0, y);
}

/// Backward: the transpose of the rotation, i.e. rotation by the negated angle.
pub fn rope_backward<T: Float>(
    grad_y: &[T],
    dims: RopeDims,
    positions: &[u32],
    theta: f64,
    grad_x: &mut [T],
) {
    rotate(grad_y, dims, positions, theta, -1.0, grad_x);
}

/// Cosine and sine of every (sequence index, pair) angle, `[seq, head_dim / 2]` each.
///
/// Computed in f64 and rounded once, so f32 angles do not lose precision at large positions;
/// `sin_sign = -1` negates the sines (exactly), giving the inverse rotation.
fn angle_table<T: Float>(positions: &[u32], head_dim: usize, theta: f64, sin_sign: f64) -> (Vec<T>, Vec<T>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half).map(|i| theta.powf(-((2 * i) as f64) / head_dim as f64)).collect();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &pos in positions {
        for &freq in &inv_freq {
            let angle = pos as f64 * freq;
            cos.push(T::from_f64(angle.cos()));
            sin.push(T::from_f64(sin_sign * angle.sin()));
        }
    }
    (cos, sin)
}

/// Rotates every head of `src` into `dst` by the table angles of its sequence index.
fn rotate<T: Float>(src: &[T], dims: RopeDims, positions: &[u32], theta: f64, sin_sign: f64, dst: &mut [T]) {
    let RopeDims { seq, heads, head_dim, .. } = dims;
    let half = head_dim / 2;
    let token_len = heads * head_dim;
    if half == 0 || seq == 0 || token_len == 0 {
        return;
    }
    let (cos, sin) = angle_table::<T>(&positions[..seq], head_dim, theta, sin_sign);
    for_each_row_block(dst, token_len, token_len, |token0, out| {
        let input = &src[token0 * token_len..token0 * token_len + out.len()];
        let tokens = input.chunks_exact(token_len).zip(out.chunks_exact_mut(token_len));
        for (t, (x_tok, y_tok)) in tokens.enumerate() {
            let s = (token0 + t) % seq;
            let (cos_s, sin_s) = (&cos[s * half..(s + 1) * half], &sin[s * half..(s + 1) * half]);
            for (x, y) in x_tok.chunks_exact(head_dim).zip(y_tok.chunks_exact_mut(head_dim)) {
                let (x_lo, x_hi) = x.split_at(half);
                let (y_lo, y_hi) = y.split_at_mut(half);
                for i in 0..half {
                    let (a, b, c, sn) = (x_lo[i], x_hi[i], cos_s[i], sin_s[i]);
                    y_lo[i] = a * c - b * sn;
                    y_hi[i] = b * c + a * sn;
                }
            }
        }
    });
}

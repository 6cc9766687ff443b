//! Rotary position embedding, rotate-half convention.
//!
//! Pair i of a head is the dims `(i, i + head_dim/2)`; it is rotated by the angle
//! `a = position * theta^(-2i/head_dim)`:
//!     `y_i = x_i cos a - x_{i+h} sin a`,   `y_{i+h} = x_{i+h} cos a + x_i sin a`   (h = head_dim / 2),
//! which is `y = x * cos + rotate_half(x) * sin` with `rotate_half(x) = [-x_{h..}, x_{..h}]`.
//! A rotation is orthogonal, so the backward is the rotation by `-a`.
use super::bf16::{round, widen};
use super::elementwise::for_each_row_block;
use super::simd::{multiversion, Isa};
use crate::Float;
use half::bf16;

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

/// [`rope_forward`] (`inverse == false`) or [`rope_backward`] on bf16 data: each block of tokens is
/// widened to f32, rotated by the f32 angle table and rounded once to bf16 as it is stored. The same
/// arithmetic as the f32 kernel on the widened tensor, so the bits of the upcast path, without its two
/// whole-tensor conversions.
pub fn rope_bf16(x: &[bf16], dims: RopeDims, positions: &[u32], theta: f64, inverse: bool, y: &mut [bf16]) {
    let sin_sign = if inverse { -1.0 } else { 1.0 };
    for_each_token_block::<f32, _>(
        y,
        dims,
        positions,
        theta,
        sin_sign,
        |isa, token0, input, out, cos, sin| {
            let (mut wide, mut rotated) = (vec![0.0f32; out.len()], vec![0.0f32; out.len()]);
            widen(&x[input], &mut wide);
            rotate_tokens(isa, &wide, &mut rotated, token0, dims, cos, sin);
            round(&rotated, out);
        },
    );
}

/// Positions are split as `pos = coarse + fine` with `fine = pos % FINE`, and the rotation by `pos`
/// composed from the rotations by `coarse` and `fine`, so a run of consecutive positions needs
/// `FINE + len / FINE` sine-cosine evaluations per frequency instead of `len`.
const FINE: u32 = 16;

/// Cosine and sine of every (sequence index, pair) angle, `[seq, head_dim / 2]` each.
///
/// Computed in f64 and rounded once, so f32 angles do not lose precision at large positions. The angle
/// `pos * freq` is composed as `coarse * freq + fine * freq` by the angle-addition formulas: the error is
/// that of rounding the two angles in f64 (as a direct evaluation rounds `pos * freq`) plus a few f64
/// roundings, far below f32 precision. The coarse factors are recomputed whenever the coarse part changes
/// along `positions`. `sin_sign = -1` negates the sines (exactly), giving the inverse rotation.
fn angle_table<T: Float>(positions: &[u32], head_dim: usize, theta: f64, sin_sign: f64) -> (Vec<T>, Vec<T>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half).map(|i| theta.powf(-((2 * i) as f64) / head_dim as f64)).collect();
    let rotations =
        |pos: u32| -> Vec<(f64, f64)> { inv_freq.iter().map(|&f| (pos as f64 * f).sin_cos()).collect() };
    let fine: Vec<Vec<(f64, f64)>> = (0..FINE).map(rotations).collect();
    let (mut cos, mut sin) =
        (Vec::with_capacity(positions.len() * half), Vec::with_capacity(positions.len() * half));
    let mut coarse: Option<(u32, Vec<(f64, f64)>)> = None;
    for &pos in positions {
        let base = pos - pos % FINE;
        if coarse.as_ref().is_none_or(|(b, _)| *b != base) {
            coarse = Some((base, rotations(base)));
        }
        let coarse_rot = coarse.as_ref().map_or(&[][..], |(_, r)| r);
        for (&(sin_c, cos_c), &(sin_f, cos_f)) in coarse_rot.iter().zip(&fine[(pos % FINE) as usize]) {
            cos.push(T::from_f64(cos_c * cos_f - sin_c * sin_f));
            sin.push(T::from_f64(sin_sign * (sin_c * cos_f + cos_c * sin_f)));
        }
    }
    (cos, sin)
}

/// Rotates every head of `src` into `dst` by the table angles of its sequence index.
fn rotate<T: Float>(src: &[T], dims: RopeDims, positions: &[u32], theta: f64, sin_sign: f64, dst: &mut [T]) {
    for_each_token_block::<T, _>(
        dst,
        dims,
        positions,
        theta,
        sin_sign,
        |isa, token0, input, out, cos, sin| rotate_tokens(isa, &src[input], out, token0, dims, cos, sin),
    );
}

/// The angle table in `T` ([`angle_table`]), then `f(isa, token0, input, out, cos, sin)` over blocks of
/// whole tokens of `dst` (in parallel, blocks fixed by the shape alone), `input` the block's element
/// range of the source, `token0` its first token.
fn for_each_token_block<T: Float, O: Send>(
    dst: &mut [O],
    dims: RopeDims,
    positions: &[u32],
    theta: f64,
    sin_sign: f64,
    f: impl Fn(Isa, usize, std::ops::Range<usize>, &mut [O], &[T], &[T]) + Sync,
) {
    let RopeDims { seq, heads, head_dim, .. } = dims;
    let token_len = heads * head_dim;
    if head_dim / 2 == 0 || seq == 0 || token_len == 0 {
        return;
    }
    let (cos, sin) = angle_table::<T>(&positions[..seq], head_dim, theta, sin_sign);
    let isa = Isa::active();
    for_each_row_block(dst, token_len, token_len, |token0, out| {
        let start = token0 * token_len;
        f(isa, token0, start..start + out.len(), out, &cos, &sin)
    });
}

multiversion! {
    /// Rotates consecutive tokens, the first being token `token0` of the whole operand.
    fn rotate_tokens[T: Float](
        isa: Isa,
        x: &[T],
        y: &mut [T],
        token0: usize,
        dims: RopeDims,
        cos: &[T],
        sin: &[T],
    ) {
        let (seq, head_dim) = (dims.seq, dims.head_dim);
        let (half, token_len) = (head_dim / 2, dims.heads * head_dim);
        let tokens = x.chunks_exact(token_len).zip(y.chunks_exact_mut(token_len));
        for (t, (x_tok, y_tok)) in tokens.enumerate() {
            let s = (token0 + t) % seq;
            let (cos_s, sin_s) = (&cos[s * half..(s + 1) * half], &sin[s * half..(s + 1) * half]);
            for (x, y) in x_tok.chunks_exact(head_dim).zip(y_tok.chunks_exact_mut(head_dim)) {
                let (x_lo, x_hi) = x.split_at(half);
                let (y_lo, y_hi) = y.split_at_mut(half);
                let outs = y_lo.iter_mut().zip(y_hi.iter_mut());
                let ins = x_lo.iter().zip(x_hi).zip(cos_s.iter().zip(sin_s));
                for ((y_a, y_b), ((&a, &b), (&c, &sn))) in outs.zip(ins) {
                    *y_a = a * c - b * sn;
                    *y_b = b * c + a * sn;
                }
            }
        }
    }
}

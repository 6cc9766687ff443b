//! GPU implementation of the rope ops (see `ops/rope.rs` for the CPU path and the shape rules).
//!
//! The cosine and sine of every (sequence index, pair) angle are computed on the host in f64, as the CPU
//! kernel does, rounded once to f32 and uploaded: the GPU rotation then uses the same factors as the CPU
//! (up to the last bit) at any position, with no f32 angle arithmetic.
use super::cuda_error;
use crate::error::Result;
use crate::Tensor;
use cola_kernels::cuda::ops::rope::{self as kernels, RopeShape};

/// `[cos | sin]`, each `[seq, head_dim / 2]`: angle `positions[s] * theta^(-2p/head_dim)` for pair p;
/// `sin_sign = -1` gives the inverse rotation.
fn angle_table(positions: &[u32], head_dim: usize, theta: f64, sin_sign: f64) -> Vec<f32> {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half).map(|p| theta.powf(-((2 * p) as f64) / head_dim as f64)).collect();
    let mut table = vec![0f32; 2 * positions.len() * half];
    let (cos, sin) = table.split_at_mut(positions.len() * half);
    let rows = cos.chunks_exact_mut(half.max(1)).zip(sin.chunks_exact_mut(half.max(1)));
    for ((cos_s, sin_s), &pos) in rows.zip(positions) {
        for ((c, s), &f) in cos_s.iter_mut().zip(sin_s.iter_mut()).zip(&inv_freq) {
            let (sin_a, cos_a) = (pos as f64 * f).sin_cos();
            *c = cos_a as f32;
            *s = (sin_sign * sin_a) as f32;
        }
    }
    table
}

/// Rotation of `x: [batch, seq, heads, head_dim]` (validated by the caller) by the positions' angles
/// (`inverse`: by their negation, the backward).
pub(crate) fn rope(
    op: &'static str,
    x: &Tensor,
    positions: &[u32],
    theta: f64,
    inverse: bool,
) -> Result<Tensor> {
    let (device, dtype) = (x.gpu_device(op)?, x.gpu_dtype(op)?);
    let x = x.gpu_contiguous()?;
    let s = x.shape();
    let shape = RopeShape { batch: s[0], seq: s[1], heads: s[2], head_dim: s[3] };
    let y = Tensor::gpu_empty(&device, s, x.dtype())?;
    if y.numel() == 0 || shape.head_dim == 0 {
        return Ok(y);
    }
    let table = angle_table(positions, shape.head_dim, theta, if inverse { -1.0 } else { 1.0 });
    let table = device.upload(&table).map_err(cuda_error(op))?;
    let cos = table.ptr();
    let sin = cos + (positions.len() * shape.head_dim / 2 * std::mem::size_of::<f32>()) as u64;
    // SAFETY: x and y are contiguous tensors of `shape` in `dtype`; the table buffer holds the two
    // `[seq, head_dim / 2]` f32 tables (`positions.len() == seq`, checked by the caller) and stays alive
    // until after the launch (later reuse of its memory is ordered after the kernel on the stream).
    unsafe { kernels::rope_rotate(&device, dtype, x.gpu_ptr(op)?, y.gpu_ptr(op)?, cos, sin, shape) }
        .map_err(cuda_error(op))?;
    Ok(y)
}

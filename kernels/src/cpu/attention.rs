//! Fused causal self-attention: scaled scores, causal mask, softmax, weighted sum of values.
use crate::Float;

/// Shapes: q is `[batch, q_len, heads, head_dim]`, k and v are `[batch, kv_len, heads, head_dim]`,
/// all contiguous. Query i sits at absolute position `i + kv_len - q_len` and attends keys at positions
/// `<=` its own (so `q_len == kv_len` is ordinary causal training attention and `q_len < kv_len` is
/// decoding against a cache). Requires `q_len <= kv_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
}

/// `out[b, i, h] = sum_j softmax_j(scale * q[b,i,h] . k[b,j,h]) v[b,j,h]`, out shaped like q.
pub fn attention_forward<T: Float>(q: &[T], k: &[T], v: &[T], dims: AttentionDims, scale: T, out: &mut [T]) {
    let _ = (q, k, v, dims, scale, out);
    unimplemented!()
}

/// Gradients of attention; the probabilities are recomputed from q and k, nothing is saved by forward.
pub struct AttentionGrads<'a, T> {
    pub q: &'a mut [T],
    pub k: &'a mut [T],
    pub v: &'a mut [T],
}

/// Writes (overwrites) grad q, k, v given the gradient of the output.
pub fn attention_backward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    grad_out: &[T],
    dims: AttentionDims,
    scale: T,
    grads: AttentionGrads<'_, T>,
) {
    let _ = (q, k, v, grad_out, dims, scale, grads);
    unimplemented!()
}

//! Fused causal self-attention: scaled scores, causal mask, softmax, weighted sum of values.
//!
//! Per (batch, head) and query row i with `n_i = i + kv_len - q_len + 1` visible keys:
//!     `s_ij = scale * q_i . k_j`,   `p_ij = exp(s_ij - max_j s_ij) / sum_j exp(s_ij - max_j s_ij)`,
//!     `o_i = sum_j p_ij v_j`                                   (j < n_i; masked keys are never visited).
//! Backward recomputes `p` from q and k (nothing is saved) and applies
//!     `dV = P^T dO`,  `dP = dO V^T`,  `dS = P * (dP - rowsum(P * dP))`,
//!     `dQ = scale dS K`,  `dK = scale dS^T Q`.
//!
//! Work is split over (batch, head) pairs. Their rows are interleaved in the `[batch, seq, heads, head_dim]`
//! layout, so each pair computes into its own contiguous scratch block and the blocks are scattered into
//! place afterwards; every accumulation runs in a fixed order inside one pair, so the result does not depend
//! on the number of threads.
use super::elementwise::{axpy, dot};
use crate::float::PARALLEL_MIN_ELEMS;
use crate::Float;
use rayon::prelude::*;

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

impl AttentionDims {
    /// Multiply-adds of one score pass (upper bound, ignoring the mask), the measure of work that decides
    /// whether to parallelise.
    fn work(&self) -> usize {
        self.batch
            .saturating_mul(self.heads)
            .saturating_mul(self.q_len)
            .saturating_mul(self.kv_len)
            .saturating_mul(self.head_dim)
    }
}

/// `out[b, i, h] = sum_j softmax_j(scale * q[b,i,h] . k[b,j,h]) v[b,j,h]`, out shaped like q.
pub fn attention_forward<T: Float>(q: &[T], k: &[T], v: &[T], dims: AttentionDims, scale: T, out: &mut [T]) {
    let block = dims.q_len * dims.head_dim;
    if block == 0 || dims.batch * dims.heads == 0 {
        return;
    }
    let mut scratch = vec![T::ZERO; dims.batch * dims.heads * block];
    for_each_head(&mut scratch, block, dims, |head, o| {
        let view = HeadView::new(dims, head);
        let k_t = view.transposed(k);
        let mut p = vec![T::ZERO; dims.kv_len];
        for (i, o_i) in o.chunks_exact_mut(dims.head_dim).enumerate() {
            let n = view.probabilities(view.q_row(q, i), &k_t, i, scale, &mut p);
            o_i.fill(T::ZERO);
            for (j, &p_ij) in p[..n].iter().enumerate() {
                axpy(p_ij, view.kv_row(v, j), o_i);
            }
        }
    });
    scatter_heads(&scratch, block, 0, dims.q_len, dims, out);
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
    let AttentionDims { q_len, kv_len, head_dim, .. } = dims;
    // Scratch block of one pair: dQ `[q_len, head_dim]`, then dK and dV `[kv_len, head_dim]` each.
    let (dk_at, dv_at) = (q_len * head_dim, (q_len + kv_len) * head_dim);
    let block = (q_len + 2 * kv_len) * head_dim;
    if block == 0 || dims.batch * dims.heads == 0 {
        return;
    }
    let mut scratch = vec![T::ZERO; dims.batch * dims.heads * block];
    for_each_head(&mut scratch, block, dims, |head, grads| {
        let view = HeadView::new(dims, head);
        let (dq, dkv) = grads.split_at_mut(dk_at);
        let (dk, dv) = dkv.split_at_mut(dv_at - dk_at);
        let (k_t, v_t) = (view.transposed(k), view.transposed(v));
        let mut p = vec![T::ZERO; kv_len];
        let mut dp = vec![T::ZERO; kv_len];
        for (i, dq_i) in dq.chunks_exact_mut(head_dim).enumerate() {
            let q_i = view.q_row(q, i);
            let n = view.probabilities(q_i, &k_t, i, scale, &mut p);
            let (p, dp) = (&p[..n], &mut dp[..n]);
            let do_i = view.q_row(grad_out, i);
            times_transposed(do_i, &v_t, kv_len, dp);
            let row_dot = dot(p, dp);
            let rows = dk.chunks_exact_mut(head_dim).zip(dv.chunks_exact_mut(head_dim));
            for (j, ((dk_j, dv_j), (&p_ij, &dp_ij))) in rows.zip(p.iter().zip(dp.iter())).enumerate() {
                let ds_ij = p_ij * (dp_ij - row_dot);
                axpy(ds_ij, view.kv_row(k, j), dq_i);
                axpy(scale * ds_ij, q_i, dk_j);
                axpy(p_ij, do_i, dv_j);
            }
            for x in dq_i.iter_mut() {
                *x *= scale;
            }
        }
    });
    scatter_heads(&scratch, block, 0, q_len, dims, grads.q);
    scatter_heads(&scratch, block, dk_at, kv_len, dims, grads.k);
    scatter_heads(&scratch, block, dv_at, kv_len, dims, grads.v);
}

/// Row addressing of one (batch, head) pair inside the interleaved layout.
struct HeadView {
    batch: usize,
    head: usize,
    dims: AttentionDims,
}

impl HeadView {
    fn new(dims: AttentionDims, pair: usize) -> Self {
        Self { batch: pair / dims.heads, head: pair % dims.heads, dims }
    }

    /// Row i of this pair in a `[batch, q_len, heads, head_dim]` tensor.
    #[inline]
    fn q_row<'a, T>(&self, x: &'a [T], i: usize) -> &'a [T] {
        let d = &self.dims;
        let start = ((self.batch * d.q_len + i) * d.heads + self.head) * d.head_dim;
        &x[start..start + d.head_dim]
    }

    /// Row j of this pair in a `[batch, kv_len, heads, head_dim]` tensor.
    #[inline]
    fn kv_row<'a, T>(&self, x: &'a [T], j: usize) -> &'a [T] {
        let d = &self.dims;
        let start = ((self.batch * d.kv_len + j) * d.heads + self.head) * d.head_dim;
        &x[start..start + d.head_dim]
    }

    /// This pair's rows of a `[batch, kv_len, heads, head_dim]` tensor, transposed to `[head_dim, kv_len]`,
    /// so that a query's dot products with all keys become `head_dim` contiguous multiply-adds over keys
    /// (vectorisable, no horizontal sums).
    fn transposed<T: Float>(&self, x: &[T]) -> Vec<T> {
        let (len, head_dim) = (self.dims.kv_len, self.dims.head_dim);
        let mut t = vec![T::ZERO; head_dim * len];
        for j in 0..len {
            for (c, &x_jc) in self.kv_row(x, j).iter().enumerate() {
                t[c * len + j] = x_jc;
            }
        }
        t
    }

    /// Writes the softmax probabilities of query `q_i` (row i) over its visible keys into `p[..n]` and
    /// returns n; `k_t` is [`Self::transposed`] of k.
    fn probabilities<T: Float>(&self, q_i: &[T], k_t: &[T], i: usize, scale: T, p: &mut [T]) -> usize {
        let n = i + self.dims.kv_len - self.dims.q_len + 1;
        let p = &mut p[..n];
        times_transposed(q_i, k_t, self.dims.kv_len, p);
        let mut max = T::NEG_INFINITY;
        for s in p.iter_mut() {
            *s *= scale;
            max = max.max(*s);
        }
        let mut sum = T::ZERO;
        for s in p.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv_sum = T::ONE / sum;
        for s in p.iter_mut() {
            *s *= inv_sum;
        }
        n
    }
}

/// `out[j] = sum_c a[c] * t[c * len + j]` for `j < out.len()`: the dot products of `a` with the first
/// `out.len()` rows of a matrix stored transposed (`[a.len(), len]`), summed over c in order.
fn times_transposed<T: Float>(a: &[T], t: &[T], len: usize, out: &mut [T]) {
    out.fill(T::ZERO);
    let n = out.len();
    for (c, &a_c) in a.iter().enumerate() {
        axpy(a_c, &t[c * len..c * len + n], out);
    }
}

/// Runs `f(pair, block)` for every (batch, head) pair over consecutive `block`-long chunks of `scratch`,
/// in parallel when the attention is large enough to pay for it.
fn for_each_head<T: Float>(
    scratch: &mut [T],
    block: usize,
    dims: AttentionDims,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if dims.work() < PARALLEL_MIN_ELEMS {
        scratch.chunks_mut(block).enumerate().for_each(|(pair, b)| f(pair, b));
    } else {
        scratch.par_chunks_mut(block).enumerate().for_each(|(pair, b)| f(pair, b));
    }
}

/// Copies `rows` rows per pair, found at `offset` inside each pair's `block` of `scratch`, into their
/// interleaved places in `dst` (`[batch, rows, heads, head_dim]`).
fn scatter_heads<T: Float>(
    scratch: &[T],
    block: usize,
    offset: usize,
    rows: usize,
    dims: AttentionDims,
    dst: &mut [T],
) {
    let (heads, head_dim) = (dims.heads, dims.head_dim);
    let per_batch = rows * heads * head_dim;
    if per_batch == 0 {
        return;
    }
    let copy = |b: usize, dst_b: &mut [T]| {
        for h in 0..heads {
            let start = (b * heads + h) * block + offset;
            let src = &scratch[start..start + rows * head_dim];
            for (i, src_row) in src.chunks_exact(head_dim).enumerate() {
                let at = (i * heads + h) * head_dim;
                dst_b[at..at + head_dim].copy_from_slice(src_row);
            }
        }
    };
    if dst.len() < PARALLEL_MIN_ELEMS {
        dst.chunks_exact_mut(per_batch).enumerate().for_each(|(b, d)| copy(b, d));
    } else {
        dst.par_chunks_exact_mut(per_batch).enumerate().for_each(|(b, d)| copy(b, d));
    }
}

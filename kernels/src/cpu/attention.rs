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
//! layout, so each pair gathers its rows into contiguous (and, for keys, transposed) buffers, computes into
//! its own scratch block, and the blocks are scattered into place afterwards. Inside a pair, query rows go
//! in blocks whose products run as register-tiled micro-kernels (`blocks.rs`); every accumulation runs in
//! a fixed order inside one pair, so the result does not depend on the number of threads or on the SIMD
//! level.
//!
//! Decoding against a KV cache would gather (and transpose) the whole cache at every call that way. So a
//! cache can instead hold one sequence's keys and values in the layout the per-pair code reads
//! ([`CacheLayout`]: each head's keys transposed, each head's value rows contiguous, written there once
//! by [`write_cache`]), and [`attention_forward_cached`] runs the same per-head code on its buffers in
//! place: the same operations on the same values, so its result is [`attention_forward`]'s bit for bit.
mod blocks;

use super::simd::{multiversion, Isa, Level};
use crate::float::PARALLEL_MIN_ELEMS;
use crate::Float;
use blocks::{accumulate_transposed, interleave, interleave_rows, score_gradients, scores, weighted_rows};
use blocks::{Block, Rows, Tile, MAX_TILE, ROWS};
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
    let width = padded(dims.head_dim);
    let block = dims.q_len * width;
    if block == 0 || dims.batch * dims.heads == 0 {
        return;
    }
    let isa = Isa::active();
    let mut scratch = vec![T::ZERO; dims.batch * dims.heads * block];
    let inputs = [q, k, v];
    // Tiles of 16 fit AVX2's registers, 32 AVX-512's. The portable path (slow in any case) takes 32 too,
    // so that the tests, which compare every level with it bit for bit, also compare the two tilings.
    match isa.level() {
        Level::Avx2 => for_each_head(&mut scratch, block, dims, |pair, o| {
            forward_pair(isa, Tile::<16>, inputs, dims, pair, scale, o)
        }),
        _ => for_each_head(&mut scratch, block, dims, |pair, o| {
            forward_pair(isa, Tile::<32>, inputs, dims, pair, scale, o)
        }),
    }
    scatter_heads(&scratch, block, 0, dims.q_len, dims, out);
}

/// The head-major layout of one sequence's cached keys and values, which [`attention_forward_cached`]
/// reads in place: the keys transposed per head, `[heads, head_dim, capacity]` (each head's keys as
/// [`attention_forward`] lays them out for its products, with row stride `capacity`), and the values per
/// head, `[heads, capacity, width]` with `width` the head dim rounded up to whole tiles (each head's
/// value rows as [`attention_forward`] gathers them). `capacity` is a multiple of the widest tile, so
/// that a tile of keys never runs past a row. Positions past the filled ones and the values' padding
/// columns never reach a result; the cache keeps them zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLayout {
    pub heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
}

impl CacheLayout {
    /// The layout with room for at least `positions` positions (rounded up to whole tiles).
    pub fn new(heads: usize, head_dim: usize, positions: usize) -> Self {
        Self { heads, head_dim, capacity: padded(positions) }
    }

    /// The row stride of the values: the head dim rounded up to whole tiles.
    pub fn width(&self) -> usize {
        padded(self.head_dim)
    }

    /// Elements of the keys buffer, `heads * head_dim * capacity`.
    pub fn keys_len(&self) -> usize {
        self.heads * self.head_dim * self.capacity
    }

    /// Elements of the values buffer, `heads * capacity * width`.
    pub fn values_len(&self) -> usize {
        self.heads * self.capacity * self.width()
    }
}

/// One sequence's cache buffers in `layout` ([`CacheLayout`]) and how many positions are filled.
#[derive(Clone, Copy, Debug)]
pub struct CachedKeysValues<'a, T> {
    pub keys_t: &'a [T],
    pub values: &'a [T],
    pub layout: CacheLayout,
    pub len: usize,
}

/// Writes `keys` and `values`, `[new, heads, head_dim]` each (one sequence's positions in the layout of
/// [`attention_forward`]'s inputs), at positions `start..start + new` of the cache buffers `keys_t` and
/// `values` in `layout`: each key element to its head's transposed row (a strided write), each value row
/// to its head's rows. Panics if the positions do not fit or a buffer is not of the layout's size.
pub fn write_cache<T: Float>(
    layout: CacheLayout,
    start: usize,
    keys: &[T],
    values: &[T],
    keys_t: &mut [T],
    values_out: &mut [T],
) {
    let CacheLayout { heads, head_dim, capacity } = layout;
    let (width, row) = (layout.width(), heads * head_dim);
    assert!(keys_t.len() == layout.keys_len() && values_out.len() == layout.values_len(), "cache buffers");
    if row == 0 {
        return;
    }
    assert!(keys.len() == values.len() && keys.len().is_multiple_of(row), "keys and values");
    let new = keys.len() / row;
    assert!(start + new <= capacity, "positions {start}..{} past capacity {capacity}", start + new);
    for (j, (k_j, v_j)) in keys.chunks_exact(row).zip(values.chunks_exact(row)).enumerate() {
        let at = start + j;
        for (h, (k_jh, v_jh)) in k_j.chunks_exact(head_dim).zip(v_j.chunks_exact(head_dim)).enumerate() {
            for (c, &x) in k_jh.iter().enumerate() {
                keys_t[(h * head_dim + c) * capacity + at] = x;
            }
            values_out[(h * capacity + at) * width..][..head_dim].copy_from_slice(v_jh);
        }
    }
}

/// Copies the first `len` positions of a cache in `from` into the buffers of a cache in `to`, of the
/// same heads and head dim and at least `len` positions of capacity (the growth of a full cache).
pub fn copy_cache<T: Float>(
    from: CachedKeysValues<'_, T>,
    to: CacheLayout,
    keys_t: &mut [T],
    values: &mut [T],
) {
    let (old, len, width) = (from.layout, from.len, to.width());
    assert!(old.heads == to.heads && old.head_dim == to.head_dim, "cache layouts");
    assert!(
        len <= old.capacity && len <= to.capacity,
        "{len} positions, capacities {} and {}",
        old.capacity,
        to.capacity
    );
    assert!(keys_t.len() == to.keys_len() && values.len() == to.values_len(), "cache buffers");
    if len == 0 || width == 0 {
        return;
    }
    let key_rows = from.keys_t.chunks_exact(old.capacity).zip(keys_t.chunks_exact_mut(to.capacity));
    for (src, dst) in key_rows {
        dst[..len].copy_from_slice(&src[..len]);
    }
    let heads =
        from.values.chunks_exact(old.capacity * width).zip(values.chunks_exact_mut(to.capacity * width));
    for (src, dst) in heads {
        dst[..len * width].copy_from_slice(&src[..len * width]);
    }
}

/// [`attention_forward`] of one sequence's `q` (`[q_len, heads, head_dim]`, its last `q_len` positions)
/// against its cached keys and values, read in place: `dims` has `batch = 1` and `kv_len = cache.len`,
/// and the heads and head dim of the cache's layout. The result is [`attention_forward`]'s on the
/// cache's positions laid out as `[1, kv_len, heads, head_dim]`, bit for bit (the same per-head code on
/// the same values; only the gathering of keys and values is skipped).
pub fn attention_forward_cached<T: Float>(
    q: &[T],
    cache: CachedKeysValues<'_, T>,
    dims: AttentionDims,
    scale: T,
    out: &mut [T],
) {
    let layout = cache.layout;
    assert!(dims.batch == 1 && dims.kv_len == cache.len && dims.q_len <= dims.kv_len, "dims {dims:?}");
    assert!(dims.heads == layout.heads && dims.head_dim == layout.head_dim && cache.len <= layout.capacity);
    assert!(cache.keys_t.len() == layout.keys_len() && cache.values.len() == layout.values_len());
    let n = dims.q_len * dims.heads * dims.head_dim;
    assert!(q.len() == n && out.len() == n, "q and out must be [q_len, heads, head_dim]");
    let width = padded(dims.head_dim);
    let block = dims.q_len * width;
    if block == 0 || dims.heads == 0 {
        return;
    }
    let isa = Isa::active();
    let mut scratch = vec![T::ZERO; dims.heads * block];
    match isa.level() {
        Level::Avx2 => for_each_head(&mut scratch, block, dims, |head, o| {
            forward_cached_head(isa, Tile::<16>, q, cache, head, scale, o)
        }),
        _ => for_each_head(&mut scratch, block, dims, |head, o| {
            forward_cached_head(isa, Tile::<32>, q, cache, head, scale, o)
        }),
    }
    scatter_heads(&scratch, block, 0, dims.q_len, dims, out);
}

multiversion! {
    /// Forward of one head against a cache into its `[q_len, padded(head_dim)]` block `out`: the query
    /// rows gathered as [`forward_pair`] gathers them, the keys and values the head's slices of the
    /// cache's buffers (`q` is `[q_len, heads, head_dim]`, as [`attention_forward_cached`] checked).
    fn forward_cached_head[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        q: &[T],
        cache: CachedKeysValues<'_, T>,
        head: usize,
        scale: T,
        out: &mut [T],
    ) {
        let CacheLayout { heads, head_dim, capacity } = cache.layout;
        let q_len = q.len() / (heads * head_dim);
        let dims = AttentionDims { batch: 1, heads, q_len, kv_len: cache.len, head_dim };
        let width = cache.layout.width();
        let qs = HeadView::new(dims, head).rows(q, dims.q_len);
        let k_t = &cache.keys_t[head * head_dim * capacity..][..head_dim * capacity];
        let vs = &cache.values[head * capacity * width..][..capacity * width];
        forward_head(isa, tile, [&qs, k_t, vs], capacity, dims, scale, out);
    }
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
    // Scratch block of one pair, rows padded to `width`: dQ `[q_len, width]`, then dK and dV
    // `[kv_len, width]` each.
    let width = padded(head_dim);
    let (dk_at, dv_at) = (q_len * width, (q_len + kv_len) * width);
    let block = (q_len + 2 * kv_len) * width;
    if head_dim == 0 || block == 0 || dims.batch * dims.heads == 0 {
        return;
    }
    let isa = Isa::active();
    let mut scratch = vec![T::ZERO; dims.batch * dims.heads * block];
    let inputs = [q, k, v, grad_out];
    match isa.level() {
        Level::Avx2 => for_each_head(&mut scratch, block, dims, |pair, grads| {
            backward_pair(isa, Tile::<16>, inputs, dims, pair, scale, grads)
        }),
        _ => for_each_head(&mut scratch, block, dims, |pair, grads| {
            backward_pair(isa, Tile::<32>, inputs, dims, pair, scale, grads)
        }),
    }
    scatter_heads(&scratch, block, 0, q_len, dims, grads.q);
    scatter_heads(&scratch, block, dk_at, kv_len, dims, grads.k);
    scatter_heads(&scratch, block, dv_at, kv_len, dims, grads.v);
}

/// `n` rounded up to a whole number of tiles: the row stride of every per-pair buffer.
fn padded(n: usize) -> usize {
    n.div_ceil(MAX_TILE) * MAX_TILE
}

multiversion! {
    /// Forward of one (batch, head) pair into its `[q_len, padded(head_dim)]` block `out`; `inputs` is
    /// `[q, k, v]`.
    ///
    /// Query rows go in blocks of `ROWS`: their scores against all visible keys (tiles of `W` keys,
    /// summed over the head dim in order), the softmax of each row, then the weighted sum of value rows
    /// (summed over keys in order). Every output element is computed by the same sequence of operations
    /// a row-at-a-time loop would use; the blocking only decides which ones share a register load.
    fn forward_pair[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        inputs: [&[T]; 3],
        dims: AttentionDims,
        pair: usize,
        scale: T,
        out: &mut [T],
    ) {
        let [q, k, v] = inputs;
        let view = HeadView::new(dims, pair);
        let (qs, k_t, vs) = (view.rows(q, dims.q_len), view.transposed(k), view.rows(v, dims.kv_len));
        forward_head(isa, tile, [&qs, &k_t, &vs], view.keys, dims, scale, out);
    }
}

/// The forward of one head, every input laid out as the kernels read it: `qs` the query rows
/// `[q_len, width]`, `k_t` the keys transposed `[head_dim, keys]` (row stride `keys`, a multiple of the
/// widest tile, at least `padded(kv_len)`), `vs` the value rows `[>= kv_len, width]`; `out` is
/// `[q_len, width]`. Both [`attention_forward`] (on gathered copies, `keys = padded(kv_len)`) and
/// [`attention_forward_cached`] (on the cache's buffers, `keys` its capacity) run this, so they compute
/// every output element by the same operations on the same values: the key stride only places the
/// scores, whose columns past a row's visible keys are never read.
#[inline(always)]
fn forward_head<T: Float, const W: usize>(
    isa: Isa,
    tile: Tile<W>,
    inputs: [&[T]; 3],
    keys: usize,
    dims: AttentionDims,
    scale: T,
    out: &mut [T],
) {
    let [qs, k_t, vs] = inputs;
    let width = padded(dims.head_dim);
    let mut block = Block::new(width, keys);
    for (b, out) in out.chunks_mut(ROWS * width).enumerate() {
        let rows = Rows::new(b * ROWS, out.len() / width, dims.kv_len - dims.q_len);
        block.probabilities(isa, tile, &rows, qs, k_t, scale);
        interleave(&rows, &block.scores, keys, &mut block.coef);
        weighted_rows(isa, tile, &rows, &block.coef, vs, width, out);
    }
}

multiversion! {
    /// Backward of one (batch, head) pair into its scratch block `dQ | dK | dV`; `inputs` is
    /// `[q, k, v, grad_out]`. Per block of query rows: P recomputed, `dP = dO V^T`,
    /// `dS = P * (dP - rowsum(P * dP))`, then `dQ = scale dS K`, `dK += scale dS^T Q`, `dV += P^T dO`,
    /// every sum in the order of a row-at-a-time loop.
    fn backward_pair[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        inputs: [&[T]; 4],
        dims: AttentionDims,
        pair: usize,
        scale: T,
        grads: &mut [T],
    ) {
        let [q, k, v, grad_out] = inputs;
        let view = HeadView::new(dims, pair);
        let (head_dim, width, keys) = (dims.head_dim, view.width, view.keys);
        let (qs, dos) = (view.rows(q, dims.q_len), view.rows(grad_out, dims.q_len));
        let (ks, k_t, v_t) = (view.rows(k, dims.kv_len), view.transposed(k), view.transposed(v));
        let (dq, dkv) = grads.split_at_mut(dims.q_len * width);
        let (dk, dv) = dkv.split_at_mut(dims.kv_len * width);
        dk.fill(T::ZERO);
        dv.fill(T::ZERO);
        let mut block = Block::new(width, keys);
        let mut dp = vec![T::ZERO; ROWS * keys];
        let [mut ds_t, mut scaled_ds_t] = [(); 2].map(|_| vec![T::ZERO; keys * ROWS]);
        for (b, dq) in dq.chunks_mut(ROWS * width).enumerate() {
            let rows = Rows::new(b * ROWS, dq.len() / width, dims.kv_len - dims.q_len);
            block.probabilities(isa, tile, &rows, &qs, &k_t, scale);
            interleave_rows(&rows, &dos, width, head_dim, &mut block.a_t);
            scores(isa, tile, &rows, &block.a_t, &v_t, keys, &mut dp);
            score_gradients(isa, &rows, &block.scores, &dp, keys, scale, [&mut ds_t, &mut scaled_ds_t]);
            weighted_rows(isa, tile, &rows, &ds_t, &ks, width, dq);
            for x in dq.iter_mut() {
                *x *= scale;
            }
            interleave(&rows, &block.scores, keys, &mut block.coef);
            accumulate_transposed(isa, tile, &rows, &scaled_ds_t, &qs, width, dk);
            accumulate_transposed(isa, tile, &rows, &block.coef, &dos, width, dv);
        }
    }
}

/// Row addressing of one (batch, head) pair inside the interleaved layout.
struct HeadView {
    batch: usize,
    head: usize,
    dims: AttentionDims,
    /// `head_dim` rounded up to whole tiles: the row stride of gathered rows and outputs.
    width: usize,
    /// `kv_len` rounded up to whole tiles: the row stride of transposed and score buffers.
    keys: usize,
}

impl HeadView {
    #[inline(always)]
    fn new(dims: AttentionDims, pair: usize) -> Self {
        let (width, keys) = (padded(dims.head_dim), padded(dims.kv_len));
        Self { batch: pair / dims.heads, head: pair % dims.heads, dims, width, keys }
    }

    /// This pair's `len` rows of a `[batch, len, heads, head_dim]` tensor, gathered into `[len, width]`
    /// with zero padding.
    #[inline(always)]
    fn rows<T: Float>(&self, x: &[T], len: usize) -> Vec<T> {
        let d = &self.dims;
        let mut out = vec![T::ZERO; len * self.width];
        for (i, row) in out.chunks_exact_mut(self.width).enumerate() {
            let start = ((self.batch * len + i) * d.heads + self.head) * d.head_dim;
            row[..d.head_dim].copy_from_slice(&x[start..start + d.head_dim]);
        }
        out
    }

    /// This pair's rows of a `[batch, kv_len, heads, head_dim]` tensor, transposed to `[head_dim, keys]`
    /// (zero padding), so that the dot products of a query with a tile of keys are `head_dim`
    /// contiguous multiply-adds over keys (vectorisable, no horizontal sums). Goes a tile of keys at a
    /// time, so that every store fills a contiguous run of a row of the result.
    #[inline(always)]
    fn transposed<T: Float>(&self, x: &[T]) -> Vec<T> {
        let (d, keys) = (&self.dims, self.keys);
        let start = |j: usize| ((self.batch * d.kv_len + j) * d.heads + self.head) * d.head_dim;
        let mut t = vec![T::ZERO; d.head_dim * keys];
        for j0 in (0..d.kv_len).step_by(MAX_TILE) {
            let n = MAX_TILE.min(d.kv_len - j0);
            let rows: [&[T]; MAX_TILE] =
                std::array::from_fn(|jj| &x[start(j0 + jj.min(n - 1))..][..d.head_dim]);
            for (c, t_c) in t.chunks_exact_mut(keys).enumerate() {
                for (t_cj, row) in t_c[j0..j0 + n].iter_mut().zip(&rows) {
                    *t_cj = row[c];
                }
            }
        }
        t
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

/// Copies `rows` rows per pair, found at `offset` inside each pair's `block` of `scratch` with row stride
/// `padded(head_dim)`, into their interleaved places in `dst` (`[batch, rows, heads, head_dim]`).
fn scatter_heads<T: Float>(
    scratch: &[T],
    block: usize,
    offset: usize,
    rows: usize,
    dims: AttentionDims,
    dst: &mut [T],
) {
    let (heads, head_dim, width) = (dims.heads, dims.head_dim, padded(dims.head_dim));
    let per_batch = rows * heads * head_dim;
    if per_batch == 0 {
        return;
    }
    let copy = |b: usize, dst_b: &mut [T]| {
        for h in 0..heads {
            let start = (b * heads + h) * block + offset;
            let src = &scratch[start..start + rows * width];
            for (i, src_row) in src.chunks_exact(width).enumerate() {
                let at = (i * heads + h) * head_dim;
                dst_b[at..at + head_dim].copy_from_slice(&src_row[..head_dim]);
            }
        }
    };
    if dst.len() < PARALLEL_MIN_ELEMS {
        dst.chunks_exact_mut(per_batch).enumerate().for_each(|(b, d)| copy(b, d));
    } else {
        dst.par_chunks_exact_mut(per_batch).enumerate().for_each(|(b, d)| copy(b, d));
    }
}

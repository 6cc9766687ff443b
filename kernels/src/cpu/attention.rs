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
//! layout, so each pair gathers its rows into contiguous (and, for keys, transposed) buffers, which a task
//! allocates once and reuses for every pair it runs, and writes its output rows in place (through the
//! lists of `rows_by_pair`, each row owned by one pair). Inside a pair, query rows go
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
use blocks::{accumulate_transposed, interleave_rows, score_gradients, scores, weighted_rows};
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
    let inputs = [q, k, v];
    let outs = rows_by_pair(out, dims.q_len, dims);
    let buffers = || Buffers::new(dims, Pass::Forward);
    // Tiles of 16 fit AVX2's registers, 32 AVX-512's. The portable path (slow in any case) takes 32 too,
    // so that the tests, which compare every level with it bit for bit, also compare the two tilings.
    match isa.level() {
        Level::Avx2 => for_each_pair(outs, dims, buffers, |bufs, pair, mut o| {
            forward_pair(isa, Tile::<16>, inputs, dims, pair, scale, bufs, &mut o)
        }),
        _ => for_each_pair(outs, dims, buffers, |bufs, pair, mut o| {
            forward_pair(isa, Tile::<32>, inputs, dims, pair, scale, bufs, &mut o)
        }),
    }
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
    let outs = rows_by_pair(out, dims.q_len, dims);
    let buffers = || Buffers::new(AttentionDims { kv_len: layout.capacity, ..dims }, Pass::Cached);
    match isa.level() {
        Level::Avx2 => for_each_pair(outs, dims, buffers, |bufs, head, mut o| {
            forward_cached_head(isa, Tile::<16>, q, cache, head, scale, bufs, &mut o)
        }),
        _ => for_each_pair(outs, dims, buffers, |bufs, head, mut o| {
            forward_cached_head(isa, Tile::<32>, q, cache, head, scale, bufs, &mut o)
        }),
    }
}

multiversion! {
    /// Forward of one head against a cache into its `q_len` output rows `out`: the query rows gathered
    /// as [`forward_pair`] gathers them, the keys and values the head's slices of the cache's buffers
    /// (`q` is `[q_len, heads, head_dim]`, as [`attention_forward_cached`] checked).
    #[allow(clippy::too_many_arguments)]
    fn forward_cached_head[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        q: &[T],
        cache: CachedKeysValues<'_, T>,
        head: usize,
        scale: T,
        bufs: &mut Buffers<T>,
        out: &mut [&mut [T]],
    ) {
        let CacheLayout { heads, head_dim, capacity } = cache.layout;
        let q_len = q.len() / (heads * head_dim);
        let dims = AttentionDims { batch: 1, heads, q_len, kv_len: cache.len, head_dim };
        let width = cache.layout.width();
        HeadView::new(dims, head).gather(q, dims.q_len, &mut bufs.qs);
        let k_t = &cache.keys_t[head * head_dim * capacity..][..head_dim * capacity];
        let vs = &cache.values[head * capacity * width..][..capacity * width];
        forward_head(isa, tile, [&bufs.qs, k_t, vs], dims, scale, &mut bufs.block, out);
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
    if head_dim == 0 || kv_len == 0 || dims.batch * dims.heads == 0 {
        return;
    }
    let isa = Isa::active();
    let inputs = [q, k, v, grad_out];
    let (dq, dk) = (rows_by_pair(grads.q, q_len, dims), rows_by_pair(grads.k, kv_len, dims));
    let dv = rows_by_pair(grads.v, kv_len, dims);
    let outs: Vec<_> = dq.into_iter().zip(dk).zip(dv).map(|((dq, dk), dv)| [dq, dk, dv]).collect();
    let buffers = || Buffers::new(dims, Pass::Backward);
    match isa.level() {
        Level::Avx2 => for_each_pair(outs, dims, buffers, |bufs, pair, mut grads| {
            backward_pair(isa, Tile::<16>, inputs, dims, pair, scale, bufs, &mut grads)
        }),
        _ => for_each_pair(outs, dims, buffers, |bufs, pair, mut grads| {
            backward_pair(isa, Tile::<32>, inputs, dims, pair, scale, bufs, &mut grads)
        }),
    }
}

/// `n` rounded up to a whole number of tiles: the row stride of every per-pair buffer.
fn padded(n: usize) -> usize {
    n.div_ceil(MAX_TILE) * MAX_TILE
}

multiversion! {
    /// Forward of one (batch, head) pair into its `q_len` output rows `out`; `inputs` is `[q, k, v]`.
    ///
    /// Query rows go in blocks of `ROWS`: their scores against all visible keys (tiles of `W` keys,
    /// summed over the head dim in order), the softmax of each row, then the weighted sum of value rows
    /// (summed over keys in order). Every output element is computed by the same sequence of operations
    /// a row-at-a-time loop would use; the blocking only decides which ones share a register load.
    #[allow(clippy::too_many_arguments)]
    fn forward_pair[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        inputs: [&[T]; 3],
        dims: AttentionDims,
        pair: usize,
        scale: T,
        bufs: &mut Buffers<T>,
        out: &mut [&mut [T]],
    ) {
        let [q, k, v] = inputs;
        let view = HeadView::new(dims, pair);
        view.gather(q, dims.q_len, &mut bufs.qs);
        view.gather(k, dims.kv_len, &mut bufs.ks);
        view.gather(v, dims.kv_len, &mut bufs.vs);
        view.transpose(&bufs.ks, &mut bufs.k_t);
        let inputs = [&bufs.qs[..], &bufs.k_t, &bufs.vs];
        forward_head(isa, tile, inputs, dims, scale, &mut bufs.block, out);
    }
}

/// The forward of one head, every input laid out as the kernels read it: `qs` the query rows
/// `[q_len, width]`, `k_t` the keys transposed `[head_dim, keys]` (row stride `keys`, a multiple of the
/// widest tile, at least `padded(kv_len)`), `vs` the value rows `[>= kv_len, width]`; `out` holds the
/// `q_len` output rows (`head_dim` each); `block` was made for `keys`. Both [`attention_forward`] (on
/// gathered copies, `keys = padded(kv_len)`) and [`attention_forward_cached`] (on the cache's buffers,
/// `keys` its capacity) run this, so they compute every output element by the same operations on the
/// same values: the key stride only places the scores, whose columns past a row's visible keys are never
/// read.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_head<T: Float, const W: usize>(
    isa: Isa,
    tile: Tile<W>,
    inputs: [&[T]; 3],
    dims: AttentionDims,
    scale: T,
    block: &mut Block<T>,
    out: &mut [&mut [T]],
) {
    let [qs, k_t, vs] = inputs;
    let width = padded(dims.head_dim);
    for (b, out) in out.chunks_mut(ROWS).enumerate() {
        let rows = Rows::new(b * ROWS, out.len(), dims.kv_len - dims.q_len);
        block.probabilities(isa, tile, &rows, qs, k_t, scale);
        weighted_rows(isa, tile, &rows, &block.coef, vs, width, &mut block.out);
        for (o, row) in out.iter_mut().zip(block.out.chunks_exact(width)) {
            o.copy_from_slice(&row[..dims.head_dim]);
        }
    }
}

multiversion! {
    /// Backward of one (batch, head) pair into its output rows of dQ, dK and dV (`grads`); `inputs` is
    /// `[q, k, v, grad_out]`. Per block of query rows: P recomputed, `dP = dO V^T`,
    /// `dS = P * (dP - rowsum(P * dP))`, then `dQ = scale dS K`, `dK += scale dS^T Q`, `dV += P^T dO`,
    /// every sum in the order of a row-at-a-time loop.
    #[allow(clippy::too_many_arguments)]
    fn backward_pair[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        inputs: [&[T]; 4],
        dims: AttentionDims,
        pair: usize,
        scale: T,
        bufs: &mut Buffers<T>,
        grads: &mut [Vec<&mut [T]>; 3],
    ) {
        let [q, k, v, grad_out] = inputs;
        let view = HeadView::new(dims, pair);
        let (head_dim, width, keys) = (dims.head_dim, view.width, view.keys);
        view.gather(q, dims.q_len, &mut bufs.qs);
        view.gather(grad_out, dims.q_len, &mut bufs.dos);
        view.gather(k, dims.kv_len, &mut bufs.ks);
        view.gather(v, dims.kv_len, &mut bufs.vs);
        view.transpose(&bufs.ks, &mut bufs.k_t);
        view.transpose(&bufs.vs, &mut bufs.v_t);
        let Buffers { qs, dos, ks, k_t, v_t, block, dp, ds_t, scaled_ds_t, dk, dv, .. } = bufs;
        let [dq_out, dk_out, dv_out] = grads;
        dk.fill(T::ZERO);
        dv.fill(T::ZERO);
        for (b, dq_out) in dq_out.chunks_mut(ROWS).enumerate() {
            let rows = Rows::new(b * ROWS, dq_out.len(), dims.kv_len - dims.q_len);
            block.probabilities(isa, tile, &rows, qs, k_t, scale);
            interleave_rows(&rows, dos, width, head_dim, &mut block.a_t);
            scores(isa, tile, &rows, &block.a_t, v_t, keys, dp);
            score_gradients(isa, &rows, &block.scores, dp, keys, scale, [ds_t, scaled_ds_t]);
            weighted_rows(isa, tile, &rows, ds_t, ks, width, &mut block.out);
            for (o, row) in dq_out.iter_mut().zip(block.out.chunks_exact(width)) {
                for (o, &x) in o.iter_mut().zip(row) {
                    *o = x * scale;
                }
            }
            accumulate_transposed(isa, tile, &rows, scaled_ds_t, qs, width, dk);
            accumulate_transposed(isa, tile, &rows, &block.coef, dos, width, dv);
        }
        for (out, acc) in [(dk_out, &dk), (dv_out, &dv)] {
            for (o, row) in out.iter_mut().zip(acc.chunks_exact(width)) {
                o.copy_from_slice(&row[..head_dim]);
            }
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

    /// Copies this pair's `len` rows of a `[batch, len, heads, head_dim]` tensor into the first `len` rows
    /// of `out` (`[_, width]`); the padding columns are left as they are.
    #[inline(always)]
    fn gather<T: Float>(&self, x: &[T], len: usize, out: &mut [T]) {
        let d = &self.dims;
        for (i, row) in out.chunks_exact_mut(self.width).take(len).enumerate() {
            let start = ((self.batch * len + i) * d.heads + self.head) * d.head_dim;
            row[..d.head_dim].copy_from_slice(&x[start..start + d.head_dim]);
        }
    }

    /// The first `kv_len` rows of `rows` (`[_, width]`, as [`HeadView::gather`] writes them), transposed
    /// into `t` (`[head_dim, keys]`), so that the dot products of a query with a tile of keys are
    /// `head_dim` contiguous multiply-adds over keys (vectorisable, no horizontal sums); the padding keys
    /// are left as they are. Goes a tile of keys at a time, so that every store fills a contiguous run of
    /// a row of the result.
    #[inline(always)]
    fn transpose<T: Float>(&self, rows: &[T], t: &mut [T]) {
        let (d, keys, width) = (&self.dims, self.keys, self.width);
        for j0 in (0..d.kv_len).step_by(MAX_TILE) {
            let n = MAX_TILE.min(d.kv_len - j0);
            let rows: [&[T]; MAX_TILE] =
                std::array::from_fn(|jj| &rows[(j0 + jj.min(n - 1)) * width..][..d.head_dim]);
            for (c, t_c) in (0..d.head_dim).zip(t.chunks_exact_mut(keys)) {
                for (t_cj, row) in t_c[j0..j0 + n].iter_mut().zip(&rows) {
                    *t_cj = row[c];
                }
            }
        }
    }
}

/// Which computation a task's [`Buffers`] serve.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    /// Forward against a cache, whose keys and values are read in place.
    Cached,
    Backward,
}

/// A task's buffers, reused by each pair it runs: the pair's rows of q (and, in backward, dO), k and v
/// gathered (`[len, width]`), the keys (and, in backward, the values) transposed (`[head_dim, keys]`),
/// the per-block buffers, and backward's dK and dV sums. Allocated zeroed once; every pair overwrites
/// the parts it reads, and the padding (columns past the head dim, keys past `kv_len`) is never written,
/// so it stays zero.
struct Buffers<T> {
    qs: Vec<T>,
    dos: Vec<T>,
    ks: Vec<T>,
    vs: Vec<T>,
    k_t: Vec<T>,
    v_t: Vec<T>,
    block: Block<T>,
    /// Backward's per-block `dP` (`[ROWS, keys]`) and `dS`, `scale * dS` (interleaved, `[keys, ROWS]`).
    dp: Vec<T>,
    ds_t: Vec<T>,
    scaled_ds_t: Vec<T>,
    /// Backward's dK and dV of the pair (`[kv_len, width]`), summed over the blocks of query rows.
    dk: Vec<T>,
    dv: Vec<T>,
}

impl<T: Float> Buffers<T> {
    /// The buffers of a pair of `dims` in `pass` (for [`Pass::Cached`], `kv_len` is the capacity).
    fn new(dims: AttentionDims, pass: Pass) -> Self {
        let (width, keys) = (padded(dims.head_dim), padded(dims.kv_len));
        let zeros = |n: usize| vec![T::ZERO; n];
        let only = |on: bool, n: usize| if on { zeros(n) } else { Vec::new() };
        let (gathered, backward) = (pass != Pass::Cached, pass == Pass::Backward);
        Self {
            qs: zeros(dims.q_len * width),
            dos: only(backward, dims.q_len * width),
            ks: only(gathered, dims.kv_len * width),
            vs: only(gathered, dims.kv_len * width),
            k_t: only(gathered, dims.head_dim * keys),
            v_t: only(backward, dims.head_dim * keys),
            block: Block::new(width, keys),
            dp: only(backward, ROWS * keys),
            ds_t: only(backward, keys * ROWS),
            scaled_ds_t: only(backward, keys * ROWS),
            dk: only(backward, dims.kv_len * width),
            dv: only(backward, dims.kv_len * width),
        }
    }
}

/// The rows of a `[batch, len, heads, head_dim]` tensor grouped by (batch, head) pair: for each pair in
/// order, its `len` rows (`head_dim` each), in order. Each pair's outputs are written through these, in
/// place, by whichever thread runs the pair.
fn rows_by_pair<T>(x: &mut [T], len: usize, dims: AttentionDims) -> Vec<Vec<&mut [T]>> {
    let (heads, head_dim) = (dims.heads, dims.head_dim);
    let mut pairs: Vec<Vec<&mut [T]>> = (0..dims.batch * heads).map(|_| Vec::with_capacity(len)).collect();
    for (n, row) in x.chunks_exact_mut(head_dim).enumerate() {
        pairs[n / (len * heads) * heads + n % heads].push(row);
    }
    pairs
}

/// Runs `f(buffers, pair, outputs)` for every (batch, head) pair with its outputs, in parallel when the
/// attention is large enough to pay for it; each task makes its buffers once with `buffers`.
fn for_each_pair<O: Send, B>(
    outputs: Vec<O>,
    dims: AttentionDims,
    buffers: impl Fn() -> B + Sync + Send,
    f: impl Fn(&mut B, usize, O) + Sync,
) {
    if dims.work() < PARALLEL_MIN_ELEMS {
        let mut bufs = buffers();
        outputs.into_iter().enumerate().for_each(|(pair, o)| f(&mut bufs, pair, o));
    } else {
        outputs.into_par_iter().enumerate().for_each_init(buffers, |bufs, (pair, o)| f(bufs, pair, o));
    }
}

//! Fused causal self-attention: scaled scores, causal mask, softmax, weighted sum of values.
//!
//! Per (batch, head) and query row i with `n_i = i + kv_len - q_len + 1` visible keys:
//!     `s_ij = scale * q_i . k_j`,   `p_ij = exp(s_ij - max_j s_ij) / sum_j exp(s_ij - max_j s_ij)`,
//!     `o_i = sum_j p_ij v_j`                                   (j < n_i; masked keys are never visited).
//! Backward recomputes `p` from q and k (nothing is saved) and applies
//!     `dV = P^T dO`,  `dP = dO V^T`,  `dS = P * (dP - rowsum(P * dP))`,
//!     `dQ = scale dS K`,  `dK = scale dS^T Q`.
//!
//! Work is split over tasks, each a group of heads of one batch element (all its heads unless there are
//! too few batch elements to keep the threads busy; [`Tasks`]). Their rows are interleaved in the
//! `[batch, seq, heads, head_dim]` layout, so a task splits each input into its heads' contiguous
//! buffers in one pass over its rows (reading each row's run of the group's heads once, instead of one
//! strided gather per head), transposes one head's keys at a time, writes each head's outputs over its
//! input rows and merges them into its output rows in one pass. Each thread keeps its buffers between
//! calls ([`Kept`]). Inside a head, query rows go in blocks whose products run as register-tiled
//! micro-kernels (`blocks.rs`); every accumulation runs in a fixed order inside one head, so the result
//! does not depend on the number of threads, on the grouping of heads, or on the SIMD level.
//!
//! Decoding against a KV cache would gather (and transpose) the whole cache at every call that way. So a
//! cache can instead hold one sequence's keys and values in the layout the per-head code reads
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
use std::any::Any;
use std::cell::RefCell;

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
    let tasks = Tasks::new(dims);
    let outs = tasks.segments(out, dims.q_len, dims);
    let buffers = || Kept::take(dims, tasks.heads, Pass::Forward);
    // Tiles of 16 fit AVX2's registers, 32 AVX-512's. The portable path (slow in any case) takes 32 too,
    // so that the tests, which compare every level with it bit for bit, also compare the two tilings.
    match isa.level() {
        Level::Avx2 => tasks.run(outs, dims, buffers, |bufs, task, mut o| {
            forward_task(isa, Tile::<16>, inputs, dims, task, scale, bufs, &mut o)
        }),
        _ => tasks.run(outs, dims, buffers, |bufs, task, mut o| {
            forward_task(isa, Tile::<32>, inputs, dims, task, scale, bufs, &mut o)
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
    let tasks = Tasks::new(dims);
    let outs = tasks.segments(out, dims.q_len, dims);
    let buffers = || Kept::take(AttentionDims { kv_len: layout.capacity, ..dims }, tasks.heads, Pass::Cached);
    match isa.level() {
        Level::Avx2 => tasks.run(outs, dims, buffers, |bufs, task, mut o| {
            forward_cached_task(isa, Tile::<16>, q, cache, dims, task, scale, bufs, &mut o)
        }),
        _ => tasks.run(outs, dims, buffers, |bufs, task, mut o| {
            forward_cached_task(isa, Tile::<32>, q, cache, dims, task, scale, bufs, &mut o)
        }),
    }
}

multiversion! {
    /// Forward of one task's heads against a cache into the task's output segments `out`: the query
    /// rows split as [`forward_task`] splits them, the keys and values each head's slices of the cache's
    /// buffers (`q` is `[q_len, heads, head_dim]`, as [`attention_forward_cached`] checked).
    #[allow(clippy::too_many_arguments)]
    fn forward_cached_task[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        q: &[T],
        cache: CachedKeysValues<'_, T>,
        dims: AttentionDims,
        task: Task,
        scale: T,
        bufs: &mut Buffers<T>,
        out: &mut [&mut [T]],
    ) {
        let CacheLayout { head_dim, capacity, .. } = cache.layout;
        let width = cache.layout.width();
        let q_rows = dims.q_len * width;
        task.split(q, dims.q_len, dims, &mut bufs.qs);
        for h in 0..task.count {
            let head = task.first + h;
            let k_t = &cache.keys_t[head * head_dim * capacity..][..head_dim * capacity];
            let vs = &cache.values[head * capacity * width..][..capacity * width];
            let qs = &mut bufs.qs[h * q_rows..][..q_rows];
            forward_head(isa, tile, qs, k_t, vs, dims, scale, &mut bufs.block);
        }
        task.merge(&bufs.qs, dims.q_len, dims, out);
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
    let tasks = Tasks::new(dims);
    let (dq, dk) = (tasks.segments(grads.q, q_len, dims), tasks.segments(grads.k, kv_len, dims));
    let dv = tasks.segments(grads.v, kv_len, dims);
    let outs: Vec<_> = dq.into_iter().zip(dk).zip(dv).map(|((dq, dk), dv)| [dq, dk, dv]).collect();
    let buffers = || Kept::take(dims, tasks.heads, Pass::Backward);
    match isa.level() {
        Level::Avx2 => tasks.run(outs, dims, buffers, |bufs, task, mut grads| {
            backward_task(isa, Tile::<16>, inputs, dims, task, scale, bufs, &mut grads)
        }),
        _ => tasks.run(outs, dims, buffers, |bufs, task, mut grads| {
            backward_task(isa, Tile::<32>, inputs, dims, task, scale, bufs, &mut grads)
        }),
    }
}

/// `n` rounded up to a whole number of tiles: the row stride of every per-head buffer.
fn padded(n: usize) -> usize {
    n.div_ceil(MAX_TILE) * MAX_TILE
}

multiversion! {
    /// Forward of one task's heads into the task's output segments `out`; `inputs` is `[q, k, v]`.
    ///
    /// The task's rows of q, k and v are split into each head's contiguous rows (one pass over each
    /// input), then each head's keys are transposed and [`forward_head`] writes its output rows over its
    /// query rows, which are merged into `out` (one pass).
    #[allow(clippy::too_many_arguments)]
    fn forward_task[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        inputs: [&[T]; 3],
        dims: AttentionDims,
        task: Task,
        scale: T,
        bufs: &mut Buffers<T>,
        out: &mut [&mut [T]],
    ) {
        let [q, k, v] = inputs;
        let (q_len, kv_len, width) = (dims.q_len, dims.kv_len, padded(dims.head_dim));
        let (q_rows, kv_rows) = (q_len * width, kv_len * width);
        task.split(q, q_len, dims, &mut bufs.qs);
        task.split(k, kv_len, dims, &mut bufs.ks);
        task.split(v, kv_len, dims, &mut bufs.vs);
        let Buffers { qs, ks, vs, k_t, block, .. } = bufs;
        for h in 0..task.count {
            let (ks, vs) = (&ks[h * kv_rows..][..kv_rows], &vs[h * kv_rows..][..kv_rows]);
            transpose(dims, ks, k_t);
            forward_head(isa, tile, &mut qs[h * q_rows..][..q_rows], k_t, vs, dims, scale, block);
        }
        task.merge(&bufs.qs, q_len, dims, out);
    }
}

/// The forward of one head, every input laid out as the kernels read it: `qs` the query rows
/// `[q_len, width]`, `k_t` the keys transposed `[head_dim, keys]` (row stride `keys`, a multiple of the
/// widest tile, at least `padded(kv_len)`), `vs` the value rows `[>= kv_len, width]`; `block` was made
/// for `keys`. Each block's output rows are written over its query rows in `qs` (only the first
/// `head_dim` columns), once its scores are computed: later blocks read only their own query rows.
/// Both [`attention_forward`] (on split copies, `keys = padded(kv_len)`) and [`attention_forward_cached`]
/// (on the cache's buffers, `keys` its capacity) run this, so they compute every output element by the
/// same operations on the same values: the key stride only places the scores, whose columns past a
/// row's visible keys are never read.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_head<T: Float, const W: usize>(
    isa: Isa,
    tile: Tile<W>,
    qs: &mut [T],
    k_t: &[T],
    vs: &[T],
    dims: AttentionDims,
    scale: T,
    block: &mut Block<T>,
) {
    let (head_dim, width) = (dims.head_dim, padded(dims.head_dim));
    for b in 0..dims.q_len.div_ceil(ROWS) {
        let rows = Rows::new(b * ROWS, ROWS.min(dims.q_len - b * ROWS), dims.kv_len - dims.q_len);
        block.probabilities(isa, tile, &rows, qs, k_t, scale);
        weighted_rows(isa, tile, &rows, &block.coef, vs, width, &mut block.out);
        let outs = qs[b * ROWS * width..].chunks_mut(width).zip(block.out.chunks_exact(width));
        for (o, row) in outs.take(rows.count()) {
            o[..head_dim].copy_from_slice(&row[..head_dim]);
        }
    }
}

multiversion! {
    /// Backward of one task's heads into the task's segments of dQ, dK and dV (`grads`); `inputs` is
    /// `[q, k, v, grad_out]`, split into each head's rows as [`forward_task`] splits them. Per head, per
    /// block of query rows: P recomputed, `dP = dO V^T`, `dS = P * (dP - rowsum(P * dP))`, then
    /// `dQ = scale dS K`, `dK += scale dS^T Q`, `dV += P^T dO`, every sum in the order of a
    /// row-at-a-time loop. A block's dQ rows are written over its query rows once the block has read
    /// them, the head's dK and dV over its key and value rows once all blocks are done; the three are
    /// then merged into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn backward_task[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        inputs: [&[T]; 4],
        dims: AttentionDims,
        task: Task,
        scale: T,
        bufs: &mut Buffers<T>,
        grads: &mut [Vec<&mut [T]>; 3],
    ) {
        let [q, k, v, grad_out] = inputs;
        let AttentionDims { q_len, kv_len, head_dim, .. } = dims;
        let (width, keys) = (padded(head_dim), padded(kv_len));
        task.split(q, q_len, dims, &mut bufs.qs);
        task.split(grad_out, q_len, dims, &mut bufs.dos);
        task.split(k, kv_len, dims, &mut bufs.ks);
        task.split(v, kv_len, dims, &mut bufs.vs);
        let Buffers { qs, dos, ks, vs, k_t, v_t, block, dp, ds_t, scaled_ds_t, dk, dv, .. } = bufs;
        let (q_rows, kv_rows) = (q_len * width, kv_len * width);
        for h in 0..task.count {
            let (qs, dos) = (&mut qs[h * q_rows..][..q_rows], &dos[h * q_rows..][..q_rows]);
            let (ks, vs) = (&mut ks[h * kv_rows..][..kv_rows], &mut vs[h * kv_rows..][..kv_rows]);
            transpose(dims, ks, k_t);
            transpose(dims, vs, v_t);
            dk.fill(T::ZERO);
            dv.fill(T::ZERO);
            for b in 0..q_len.div_ceil(ROWS) {
                let rows = Rows::new(b * ROWS, ROWS.min(q_len - b * ROWS), kv_len - q_len);
                block.probabilities(isa, tile, &rows, qs, k_t, scale);
                interleave_rows(&rows, dos, width, head_dim, &mut block.a_t);
                scores(isa, tile, &rows, &block.a_t, v_t, keys, dp);
                score_gradients(isa, &rows, &block.scores, dp, keys, scale, [ds_t, scaled_ds_t]);
                weighted_rows(isa, tile, &rows, ds_t, ks, width, &mut block.out);
                accumulate_transposed(isa, tile, &rows, scaled_ds_t, qs, width, dk);
                accumulate_transposed(isa, tile, &rows, &block.coef, dos, width, dv);
                let dq = qs[b * ROWS * width..].chunks_mut(width).zip(block.out.chunks_exact(width));
                for (o, row) in dq.take(rows.count()) {
                    for (o, &x) in o[..head_dim].iter_mut().zip(row) {
                        *o = x * scale;
                    }
                }
            }
            for (rows, acc) in [(ks, &dk), (vs, &dv)] {
                for (o, row) in rows.chunks_exact_mut(width).zip(acc.chunks_exact(width)) {
                    o[..head_dim].copy_from_slice(&row[..head_dim]);
                }
            }
        }
        let [dq_out, dk_out, dv_out] = grads;
        task.merge(qs, q_len, dims, dq_out);
        task.merge(ks, kv_len, dims, dk_out);
        task.merge(vs, kv_len, dims, dv_out);
    }
}

/// The first `kv_len` rows of `rows` (`[_, width]`, one head's rows as [`Task::split`] writes them),
/// transposed into `t` (`[head_dim, keys]`, `keys = padded(kv_len)`), so that the dot products of a
/// query with a tile of keys are `head_dim` contiguous multiply-adds over keys (vectorisable, no
/// horizontal sums); the padding keys are left as they are. Goes a tile of keys at a time, so that every
/// store fills a contiguous run of a row of the result.
#[inline(always)]
fn transpose<T: Float>(dims: AttentionDims, rows: &[T], t: &mut [T]) {
    let (keys, width) = (padded(dims.kv_len), padded(dims.head_dim));
    for j0 in (0..dims.kv_len).step_by(MAX_TILE) {
        let n = MAX_TILE.min(dims.kv_len - j0);
        let rows: [&[T]; MAX_TILE] =
            std::array::from_fn(|jj| &rows[(j0 + jj.min(n - 1)) * width..][..dims.head_dim]);
        for (c, t_c) in (0..dims.head_dim).zip(t.chunks_exact_mut(keys)) {
            for (t_cj, row) in t_c[j0..j0 + n].iter_mut().zip(&rows) {
                *t_cj = row[c];
            }
        }
    }
}

/// How the (batch, head) pairs are grouped into tasks: each task runs `heads` consecutive heads of one
/// batch element (the last group of a batch element may have fewer), `groups` tasks per batch element.
/// A task reads its rows of each `[batch, len, heads, head_dim]` input in one pass (each row's run of
/// `heads * head_dim` contiguous values, split into the heads' buffers) and writes its outputs the same
/// way, instead of one strided gather per pair. A batch element is split into groups only when there are
/// fewer batch elements than twice the threads, to keep every thread busy; the grouping decides only
/// which copies a task makes, never how a head's results are computed.
#[derive(Clone, Copy)]
struct Tasks {
    heads: usize,
    groups: usize,
}

/// One task: heads `first..first + count` of batch element `batch`.
#[derive(Clone, Copy)]
struct Task {
    batch: usize,
    first: usize,
    count: usize,
}

impl Tasks {
    fn new(dims: AttentionDims) -> Self {
        let groups = (2 * rayon::current_num_threads()).div_ceil(dims.batch).clamp(1, dims.heads);
        let heads = dims.heads.div_ceil(groups);
        Self { heads, groups: dims.heads.div_ceil(heads) }
    }

    fn task(&self, dims: AttentionDims, n: usize) -> Task {
        let first = n % self.groups * self.heads;
        Task { batch: n / self.groups, first, count: self.heads.min(dims.heads - first) }
    }

    /// The rows of a `[batch, len, heads, head_dim]` tensor grouped by task: for each task in order, its
    /// `len` segments (its heads' `count * head_dim` contiguous values of one row), in order. Each task's
    /// outputs are written through these, in place, by whichever thread runs the task.
    fn segments<'a, T>(&self, x: &'a mut [T], len: usize, dims: AttentionDims) -> Vec<Vec<&'a mut [T]>> {
        let n = dims.batch * self.groups;
        let mut tasks: Vec<Vec<&mut [T]>> = (0..n).map(|_| Vec::with_capacity(len)).collect();
        for (i, row) in x.chunks_exact_mut(dims.heads * dims.head_dim).enumerate() {
            let at = i / len * self.groups;
            for (task, s) in tasks[at..].iter_mut().zip(row.chunks_mut(self.heads * dims.head_dim)) {
                task.push(s);
            }
        }
        tasks
    }

    /// Runs `f(buffers, task, outputs)` for every task with its outputs, in parallel when the attention
    /// is large enough to pay for it; each job (a run of tasks on one thread) gets its buffers from
    /// `buffers`.
    fn run<O: Send, B>(
        &self,
        outputs: Vec<O>,
        dims: AttentionDims,
        buffers: impl Fn() -> B + Sync + Send,
        f: impl Fn(&mut B, Task, O) + Sync,
    ) {
        let task = |n| self.task(dims, n);
        if dims.work() < PARALLEL_MIN_ELEMS {
            let mut bufs = buffers();
            outputs.into_iter().enumerate().for_each(|(n, o)| f(&mut bufs, task(n), o));
        } else {
            outputs.into_par_iter().enumerate().for_each_init(buffers, |bufs, (n, o)| f(bufs, task(n), o));
        }
    }
}

impl Task {
    /// Copies the task's `len` rows of a `[batch, len, heads, head_dim]` tensor into `out` as each of
    /// its heads' rows in turn (`[count, len, width]`, a head's row `i` at `(h * len + i) * width`),
    /// reading each row's run of the task's heads once, in order; the padding columns are left as they
    /// are.
    #[inline(always)]
    fn split<T: Float>(&self, x: &[T], len: usize, dims: AttentionDims, out: &mut [T]) {
        let (head_dim, width) = (dims.head_dim, padded(dims.head_dim));
        for i in 0..len {
            let start = ((self.batch * len + i) * dims.heads + self.first) * head_dim;
            let run = x[start..start + self.count * head_dim].chunks_exact(head_dim);
            for (h, src) in run.enumerate() {
                out[(h * len + i) * width..][..head_dim].copy_from_slice(src);
            }
        }
    }

    /// The reverse of [`Task::split`]: each of the task's `len` output segments `out` (its heads'
    /// `count * head_dim` values of one row) from the heads' rows in `rows` (`[count, len, width]`).
    #[inline(always)]
    fn merge<T: Float>(&self, rows: &[T], len: usize, dims: AttentionDims, out: &mut [&mut [T]]) {
        let (head_dim, width) = (dims.head_dim, padded(dims.head_dim));
        for (i, segment) in out.iter_mut().enumerate() {
            for (h, dst) in segment.chunks_exact_mut(head_dim).enumerate() {
                dst.copy_from_slice(&rows[(h * len + i) * width..][..head_dim]);
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

/// A task's buffers, reused by each task a thread runs: the task's heads' rows of q (and, in backward,
/// dO), k and v split (`[heads, len, width]`), which then hold its outputs, one head's keys (and, in
/// backward, values) transposed (`[head_dim, keys]`), the per-block buffers, and backward's dK and dV
/// sums of one head. Allocated zeroed once; every task overwrites the parts it reads, and the padding
/// (columns past the head dim, keys past `kv_len`) is never written, so it stays zero.
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
    /// Backward's dK and dV of one head (`[kv_len, width]`), summed over the blocks of query rows.
    dk: Vec<T>,
    dv: Vec<T>,
    /// What the buffers were made for: `dims`, heads per task and pass.
    shape: (AttentionDims, usize, Pass),
}

impl<T: Float> Buffers<T> {
    /// The buffers of a task of `heads` heads of `dims` in `pass` (for [`Pass::Cached`], `kv_len` is the
    /// capacity).
    fn new(dims: AttentionDims, heads: usize, pass: Pass) -> Self {
        let (width, keys) = (padded(dims.head_dim), padded(dims.kv_len));
        let zeros = |n: usize| vec![T::ZERO; n];
        let only = |on: bool, n: usize| if on { zeros(n) } else { Vec::new() };
        let (split, backward) = (pass != Pass::Cached, pass == Pass::Backward);
        Self {
            qs: zeros(heads * dims.q_len * width),
            dos: only(backward, heads * dims.q_len * width),
            ks: only(split, heads * dims.kv_len * width),
            vs: only(split, heads * dims.kv_len * width),
            k_t: only(split, dims.head_dim * keys),
            v_t: only(backward, dims.head_dim * keys),
            block: Block::new(width, keys),
            dp: only(backward, ROWS * keys),
            ds_t: only(backward, keys * ROWS),
            scaled_ds_t: only(backward, keys * ROWS),
            dk: only(backward, dims.kv_len * width),
            dv: only(backward, dims.kv_len * width),
            shape: (dims, heads, pass),
        }
    }
}

thread_local! {
    /// Each thread's attention buffers, at most one set per element type and pass, kept between calls
    /// so that a call neither allocates nor zero-fills them (a few MiB at training sizes) every time.
    static KEPT: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// A task's [`Buffers`], taken from this thread's kept ones when they were made for the same shape
/// (so their padding is still zero: no call writes it), made afresh otherwise, and kept again when
/// dropped, replacing those kept for the same element type and pass.
struct Kept<T: Float>(Option<Buffers<T>>);

impl<T: Float> Kept<T> {
    fn take(dims: AttentionDims, heads: usize, pass: Pass) -> Self {
        let shape = (dims, heads, pass);
        let kept = KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            let same = |b: &Box<dyn Any>| b.downcast_ref::<Buffers<T>>().is_some_and(|b| b.shape == shape);
            let index = kept.iter().position(same)?;
            kept.swap_remove(index).downcast::<Buffers<T>>().ok()
        });
        Self(Some(kept.map_or_else(|| Buffers::new(dims, heads, pass), |b| *b)))
    }
}

impl<T: Float> Drop for Kept<T> {
    fn drop(&mut self) {
        if let Some(bufs) = self.0.take() {
            KEPT.with(|kept| {
                let mut kept = kept.borrow_mut();
                kept.retain(|b| b.downcast_ref::<Buffers<T>>().is_none_or(|b| b.shape.2 != bufs.shape.2));
                kept.push(Box::new(bufs));
            });
        }
    }
}

impl<T: Float> std::ops::Deref for Kept<T> {
    type Target = Buffers<T>;
    fn deref(&self) -> &Buffers<T> {
        self.0.as_ref().expect("buffers are present until dropped")
    }
}

impl<T: Float> std::ops::DerefMut for Kept<T> {
    fn deref_mut(&mut self) -> &mut Buffers<T> {
        self.0.as_mut().expect("buffers are present until dropped")
    }
}

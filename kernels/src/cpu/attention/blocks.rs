//! The register-tiled pieces of attention for one block of up to `ROWS` query rows of one (batch, head)
//! pair: scores against a tile of `W` keys at a time, the row softmax, weighted sums of key or value
//! rows, and the transposed accumulation of dK and dV.
//!
//! Every output element is computed by the same sequence of operations a row-at-a-time loop would use
//! (dot products over the head dim in order, sums over keys or query rows in order, each term a fused
//! multiply-add); the tiling only decides which elements share a register load. The tiles are
//! `ROWS x W` arrays of accumulators that LLVM keeps in vector registers; each tiled function is
//! multiversioned on its own so the vectoriser sees it as one unit.
use crate::cpu::elementwise::dot;
use crate::cpu::simd::{self, multiversion, Isa};
use crate::Float;

/// Query rows handled together: each key row loaded from cache serves `ROWS` queries.
pub(super) const ROWS: usize = 6;
/// The widest tile: buffers are padded to a multiple of it, so every tile width fits.
pub(super) const MAX_TILE: usize = 32;

/// Tile width `W`, as a value: keys per score tile and head-dim columns per output tile. The
/// `ROWS x W` accumulators of a tile should fill most of the vector registers: `W = 16` is two AVX2
/// vectors of f32 (12 of 16 registers), `W = 32` two AVX-512 vectors (12 of 32).
#[derive(Clone, Copy, Debug)]
pub(super) struct Tile<const W: usize>;

/// A block of up to `ROWS` consecutive query rows: `first`, how many (`count`), and how many keys each
/// sees (`lens`, increasing; 0 for the unused slots of a short last block).
pub(super) struct Rows {
    first: usize,
    count: usize,
    lens: [usize; ROWS],
}

impl Rows {
    /// Rows `first..first + count` of a pair whose query i sees `i + offset + 1` keys
    /// (`offset = kv_len - q_len`).
    #[inline(always)]
    pub(super) fn new(first: usize, count: usize, offset: usize) -> Self {
        let lens = std::array::from_fn(|r| if r < count { first + r + offset + 1 } else { 0 });
        Self { first, count, lens }
    }

    /// How many rows the block has.
    #[inline(always)]
    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// Keys every slot of the block sees (all `ROWS` rows are real): loops below it need no mask.
    #[inline(always)]
    fn common(&self) -> usize {
        if self.count == ROWS {
            self.lens[0]
        } else {
            0
        }
    }

    #[inline(always)]
    fn longest(&self) -> usize {
        self.lens[self.count - 1]
    }
}

/// Per-block buffers: the block's rows of q or dO interleaved (`a_t`, `[width, ROWS]`), its scores then
/// probabilities (`scores`, `[ROWS, keys]`), the probabilities interleaved (`coef`, `[keys, ROWS]`), and
/// its rows of a weighted sum (`out`, `[ROWS, width]`: forward's output, backward's dQ before scaling).
pub(super) struct Block<T> {
    pub(super) a_t: Vec<T>,
    pub(super) scores: Vec<T>,
    pub(super) coef: Vec<T>,
    pub(super) out: Vec<T>,
}

impl<T: Float> Block<T> {
    #[inline(always)]
    pub(super) fn new(width: usize, keys: usize) -> Self {
        let a_t = vec![T::ZERO; width * ROWS];
        let (scores, coef) = (vec![T::ZERO; ROWS * keys], vec![T::ZERO; keys * ROWS]);
        Self { a_t, scores, coef, out: vec![T::ZERO; ROWS * width] }
    }

    /// Softmax probabilities of the block's rows over their visible keys into `self.scores` and,
    /// interleaved, into `self.coef` (entries past a row's visible keys are unspecified); `qs` holds the
    /// query rows (`[q_len, width]`) and `k_t` the keys transposed (`[head_dim, keys]`).
    #[inline(always)]
    pub(super) fn probabilities<const W: usize>(
        &mut self,
        isa: Isa,
        tile: Tile<W>,
        rows: &Rows,
        qs: &[T],
        k_t: &[T],
        scale: T,
    ) {
        let keys = self.scores.len() / ROWS;
        interleave_rows(rows, qs, self.a_t.len() / ROWS, k_t.len() / keys, &mut self.a_t);
        scores(isa, tile, rows, &self.a_t, k_t, keys, &mut self.scores);
        softmax_rows(isa, rows, keys, scale, &mut self.scores, &mut self.coef);
    }
}

multiversion! {
    /// `p_r = softmax(scale * s_r)` over the visible keys of each row r of the block, in place in
    /// `scores` (`[ROWS, keys]`) and interleaved into `coef` (`coef[j * ROWS + r] = p_rj`, `[keys, ROWS]`:
    /// the layout in which [`weighted_rows`] and [`accumulate_transposed`] read one coefficient per row
    /// for each key; they never read those of the keys a row does not see).
    fn softmax_rows[T: Float](isa: Isa, rows: &Rows, keys: usize, scale: T, scores: &mut [T], coef: &mut [T]) {
        let lens = rows.lens.iter().take(rows.count);
        for (r, (p_r, &n)) in (0..ROWS).zip(scores.chunks_exact_mut(keys).zip(lens)) {
            let p_r = &mut p_r[..n];
            for s in p_r.iter_mut() {
                *s *= scale;
            }
            let max = simd::max(p_r);
            let inv_sum = T::ONE / simd::exp_sum_in_place(p_r, max);
            for (s, coef_j) in p_r.iter_mut().zip(coef.chunks_exact_mut(ROWS)) {
                *s *= inv_sum;
                coef_j[r] = *s;
            }
        }
    }
}

/// `a_t[c * ROWS + r] = a[row r of the block][c]` for `c < head_dim`; `a` is `[rows, width]`. The unused
/// slots of a short block repeat its last row (their results are never used).
#[inline(always)]
pub(super) fn interleave_rows<T: Float>(rows: &Rows, a: &[T], width: usize, head_dim: usize, a_t: &mut [T]) {
    let block_rows: [&[T]; ROWS] =
        std::array::from_fn(|r| &a[(rows.first + r.min(rows.count - 1)) * width..][..head_dim]);
    for (c, a_t_c) in (0..head_dim).zip(a_t.chunks_exact_mut(ROWS)) {
        for (x, a_r) in a_t_c.iter_mut().zip(&block_rows) {
            *x = a_r[c];
        }
    }
}

multiversion! {
    /// `out[r * keys + j] = sum_c a_t[c * ROWS + r] * t[c * keys + j]` (c ascending over the rows of `t`) for
    /// every key j below the block's longest row, rounded up to whole tiles: the dot products of the
    /// block's rows with the rows of a matrix stored transposed (`t`, `[head_dim, keys]`). A block of one
    /// row computes only that row (the others of `out` are left as they were), by the same sums.
    pub(super) fn scores[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        rows: &Rows,
        a_t: &[T],
        t: &[T],
        keys: usize,
        out: &mut [T],
    ) {
        if rows.count == 1 {
            // One query row (a decode step): each row of `t` is read once, in order, into the row of
            // scores, instead of one tile's columns of every row at a time.
            let n = rows.longest().next_multiple_of(W);
            let out = &mut out[..n];
            out.fill(T::ZERO);
            for (a_c, t_c) in a_t.chunks_exact(ROWS).zip(t.chunks_exact(keys)) {
                for (s, &x) in out.iter_mut().zip(&t_c[..n]) {
                    *s = simd::fma(a_c[0], x, *s);
                }
            }
            return;
        }
        for j0 in (0..rows.longest()).step_by(W) {
            let mut acc = [[T::ZERO; W]; ROWS];
            for (a_c, t_c) in a_t.chunks_exact(ROWS).zip(t.chunks_exact(keys)) {
                let t_c = &t_c[j0..j0 + W];
                for (acc_r, &a_rc) in acc.iter_mut().zip(a_c) {
                    for (s, &x) in acc_r.iter_mut().zip(t_c) {
                        *s = simd::fma(a_rc, x, *s);
                    }
                }
            }
            for (out_r, acc_r) in out.chunks_exact_mut(keys).zip(&acc) {
                out_r[j0..j0 + W].copy_from_slice(acc_r);
            }
        }
    }
}

multiversion! {
    /// `out[row r] = sum_j coef[j * ROWS + r] * m[j]` over the keys row r sees (j ascending), for the
    /// block's rows; `m` and `out` are `[_, width]`. A block of one row reads each row of `m` once.
    pub(super) fn weighted_rows[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        rows: &Rows,
        coef: &[T],
        m: &[T],
        width: usize,
        out: &mut [T],
    ) {
        if rows.count == 1 {
            // One query row: the row of `out` is summed over the visible keys' rows of `m`, each read
            // once, in order.
            let out = &mut out[..width];
            out.fill(T::ZERO);
            for (coef_j, m_j) in coef.chunks_exact(ROWS).zip(m.chunks_exact(width)).take(rows.longest()) {
                for (s, &x) in out.iter_mut().zip(m_j) {
                    *s = simd::fma(coef_j[0], x, *s);
                }
            }
            return;
        }
        let (common, longest) = (rows.common(), rows.longest());
        for c0 in (0..width).step_by(W) {
            let mut acc = [[T::ZERO; W]; ROWS];
            let terms = coef.chunks_exact(ROWS).zip(m.chunks_exact(width));
            for (coef_j, m_j) in terms.clone().take(common) {
                let m_j = &m_j[c0..c0 + W];
                for (acc_r, &w) in acc.iter_mut().zip(coef_j) {
                    for (s, &x) in acc_r.iter_mut().zip(m_j) {
                        *s = simd::fma(w, x, *s);
                    }
                }
            }
            for (j, (coef_j, m_j)) in terms.enumerate().take(longest).skip(common) {
                let m_j = &m_j[c0..c0 + W];
                for ((acc_r, &w), &len) in acc.iter_mut().zip(coef_j).zip(&rows.lens) {
                    if j < len {
                        for (s, &x) in acc_r.iter_mut().zip(m_j) {
                            *s = simd::fma(w, x, *s);
                        }
                    }
                }
            }
            for (out_r, acc_r) in out.chunks_exact_mut(width).zip(&acc) {
                out_r[c0..c0 + W].copy_from_slice(acc_r);
            }
        }
    }
}

multiversion! {
    /// `out[j] += sum_r coef[j * ROWS + r] * a[row r]` over the block's rows that see key j (r ascending),
    /// for every key j below the longest row; `a` and `out` are `[_, width]`. The block's rows of `a` stay
    /// in registers while j runs.
    pub(super) fn accumulate_transposed[T: Float, const W: usize](
        isa: Isa,
        tile: Tile<W>,
        rows: &Rows,
        coef: &[T],
        a: &[T],
        width: usize,
        out: &mut [T],
    ) {
        let (common, longest) = (rows.common(), rows.longest());
        for c0 in (0..width).step_by(W) {
            let a_tile: [[T; W]; ROWS] = std::array::from_fn(|r| {
                let start = (rows.first + r.min(rows.count - 1)) * width + c0;
                let mut a_r = [T::ZERO; W];
                a_r.copy_from_slice(&a[start..start + W]);
                a_r
            });
            let terms = coef.chunks_exact(ROWS).zip(out.chunks_exact_mut(width));
            for (j, (coef_j, out_j)) in terms.enumerate().take(longest) {
                let out_j = &mut out_j[c0..c0 + W];
                if j < common {
                    for (a_r, &w) in a_tile.iter().zip(coef_j) {
                        for (s, &x) in out_j.iter_mut().zip(a_r) {
                            *s = simd::fma(w, x, *s);
                        }
                    }
                } else {
                    for ((a_r, &w), &len) in a_tile.iter().zip(coef_j).zip(&rows.lens) {
                        if j < len {
                            for (s, &x) in out_j.iter_mut().zip(a_r) {
                                *s = simd::fma(w, x, *s);
                            }
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// `dS = P * (dP - rowsum(P * dP))` of the block's rows over their visible keys, written interleaved
    /// (`[keys, ROWS]`) into `ds[0]` and, times `scale`, into `ds[1]`; `p` and `dp` are `[ROWS, keys]`.
    pub(super) fn score_gradients[T: Float](
        isa: Isa,
        rows: &Rows,
        p: &[T],
        dp: &[T],
        keys: usize,
        scale: T,
        ds: [&mut [T]; 2],
    ) {
        let [ds_t, scaled_ds_t] = ds;
        let p_dp = p.chunks_exact(keys).zip(dp.chunks_exact(keys));
        for (r, ((p_r, dp_r), &n)) in p_dp.zip(&rows.lens).enumerate().take(rows.count) {
            let (p_r, dp_r) = (&p_r[..n], &dp_r[..n]);
            let row_dot = dot(p_r, dp_r);
            let ds = ds_t.chunks_exact_mut(ROWS).zip(scaled_ds_t.chunks_exact_mut(ROWS));
            for ((ds_j, sds_j), (&p_ij, &dp_ij)) in ds.zip(p_r.iter().zip(dp_r)) {
                ds_j[r] = p_ij * (dp_ij - row_dot);
                sds_j[r] = scale * ds_j[r];
            }
        }
    }
}

//! Few-row products at memory speed: `C[m, n] = alpha * A[m, k] @ B[k, n] + beta * C` for
//! `m <= FEW_ROWS_MAX` and a B whose columns are contiguous (`col_stride == 1`: the row-major `[in, out]`
//! weights of every projection and of the LM head, `x @ W`).
//!
//! Why: with one to a few rows (a decode step) the blocked GEMM's cost is packing B, a full extra pass
//! over the weights (plus the MR-tall micro-kernel mostly multiplying padding). Here B is read once, in
//! place: C's columns are cut into chunks of `CHUNK_COLS` (the unit of parallel work; narrower when
//! there would be fewer chunks than threads, see [`chunk_width`]), a chunk into register tiles of `TILE` columns. For each depth block (the path's KC) every tile of the chunk
//! runs with its `m x TILE` accumulators in registers, each depth step loading one `TILE`-wide run of a
//! B row and broadcasting the m values of A's column (A is gathered once per call into depth-major
//! `[k][m]`); the chunk's first tile prefetches the whole chunk's width of the rows ahead, so B streams
//! from memory in runs of a chunk's width, and the other tiles find their rows in cache.
//!
//! Summation order: exactly the blocked GEMM's on the same path, so a row's result does not depend on
//! whether it went through here or through the GEMM (nor on how many rows shared the call): for each
//! element, depth blocks of the path's KC in order; within a block a sum from zero over k in order
//! (`acc = fma(a, b, acc)` on the AVX2+FMA and AVX-512F paths, `acc += a * b` on the portable one); then
//! the block is combined into C as the micro-kernels do (first block `alpha * acc` when `beta == 0`, else
//! `alpha * acc + beta * C`; later blocks `alpha * acc + C`, fused on the FMA paths). The tests check
//! this bit for bit against the GEMM.
//!
//! bf16 operands (`gemv_bf16`, the few-row dispatch of the bf16 matmul): the same loops with A and B
//! read as bf16 and widened to f32 in registers (a bf16 is the top half of an f32, so widening is exact),
//! f32 accumulation and an f32 C. B is read once at two bytes per weight, half the f32 path's traffic,
//! and the results are bit for bit this path's f32 results on the widened operands (which the tests
//! check), hence also the blocked GEMM's and the bf16 GEMM's widening path (`bf16/`) on the same f32
//! micro-kernel path.
//!
//! Determinism: each element is computed by one task in the order above, whichever chunk holds it,
//! and the instruction-set level (`simd::multiversion!`) changes only the vector width (every operation
//! is lane-wise and explicitly fused or not), so results are bit-identical for any thread count and any
//! level. A partial last tile runs on a zero-padded copy of its columns of B, through the same code.
use super::driver::{check_extent, Product};
use super::kernel::{Kernel, KernelPath, PathUnavailable, Update};
use super::{BatchRef, Dims, MatRef, PARALLEL_MIN_VOLUME};
use crate::cpu::simd::{fma, multiversion, Isa};
use crate::Float;
use half::bf16;
use rayon::prelude::*;

/// An element of A and B as this path reads it: widened exactly to the accumulation type `T`.
pub(super) trait Operand<T>: Copy + Send + Sync + 'static {
    const ZERO: Self;
    fn widen(self) -> T;
}

impl<T: Float> Operand<T> for T {
    const ZERO: T = T::ZERO;
    #[inline(always)]
    fn widen(self) -> T {
        self
    }
}

impl Operand<f32> for bf16 {
    const ZERO: bf16 = bf16::ZERO;
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// The largest m this path takes. Measured with `bench_gemm --few-rows` (AVX-512, 2 threads): at m = 8
/// on `[8, 1024] @ [1024, 32000]` it still runs near the copy bandwidth and well ahead of the blocked
/// GEMM, so a decode step of 8 rows (their projections stack into one 8-row product) takes it.
pub const FEW_ROWS_MAX: usize = 8;

// `gemv_on` has one arm per row count up to FEW_ROWS_MAX.
const _: () = assert!(FEW_ROWS_MAX == 8);

/// Columns per register tile: two 512-bit f32 vectors per row, so 8 rows use 16 of the 32 registers.
pub(super) const TILE: usize = 32;

/// Columns per parallel task: 8 tiles, 1 KiB of each f32 B row, so a 32000-column head gives 125 tasks.
const CHUNK_COLS: usize = 8 * TILE;

/// The chunk width for `n` columns on `threads` threads: [`CHUNK_COLS`], or whole tiles split evenly
/// when that would give fewer chunks than threads. The CoLA down factors `[d, r]` have `r = 256`
/// columns, one full chunk, which one thread would otherwise stream alone while the others wait; a
/// chunk only decides which task computes a column, never how, so the results do not depend on it.
fn chunk_width(n: usize, threads: usize) -> usize {
    if threads <= 1 || n.div_ceil(CHUNK_COLS) >= threads {
        return CHUNK_COLS;
    }
    n.div_ceil(threads).next_multiple_of(TILE).clamp(TILE, CHUNK_COLS)
}

/// Whether a product takes this path: few rows and B's columns contiguous.
pub(super) fn fits<T>(dims: Dims, b: MatRef<'_, T>) -> bool {
    dims.m <= FEW_ROWS_MAX && (b.col_stride == 1 || dims.n == 1)
}

/// What a tile needs besides its B columns and C rows.
#[derive(Clone, Copy)]
pub(super) struct Params<T> {
    /// The micro-kernel path whose rounding the tile follows.
    pub(super) path: KernelPath,
    /// The path's depth block.
    pub(super) kc: usize,
    pub(super) alpha: T,
    pub(super) beta: T,
}

/// Depth block `block` of one `R x TILE` tile, in the summation order of the file header: `a[p]` is A's
/// column `block * kc + p`, that row of B is `b[p * b_stride..][..TILE]`; the block's sum is combined
/// into `out` (C's tile) as the micro-kernels combine theirs. `prefetch` asks for that many columns of
/// the B rows some steps ahead to be prefetched (a hint: no effect on results).
///
/// Unsafe to call: SIMD implementations execute instructions the CPU must have (`gemv_x86::tile_for`
/// returns one only after detecting them). B's elements are `S` (widened to `T` as they are loaded).
pub(super) type TileFn<T, S, const R: usize> =
    unsafe fn(Params<T>, usize, &[[T; R]], &[S], usize, usize, &mut [[T; TILE]; R]);

/// The few-row product on `kernel`'s summation order (its KC, fused or not), operands `S` widened to
/// `T`; `threads == 1` runs on the calling thread. The caller has checked [`fits`], that `k > 0`,
/// `alpha != 0` and that A and B lie in their slices.
pub(super) fn gemv_on<T: Float, S: Operand<T>>(
    kernel: &Kernel<T>,
    product: Product<'_, T, S>,
    c: &mut [T],
    threads: usize,
) {
    let Product { dims, alpha, a, b, beta } = product;
    let params = Params { path: kernel.path, kc: kernel.kc, alpha, beta };
    match dims.m {
        1 => rows::<T, S, 1>(params, dims, a, b, c, threads),
        2 => rows::<T, S, 2>(params, dims, a, b, c, threads),
        3 => rows::<T, S, 3>(params, dims, a, b, c, threads),
        4 => rows::<T, S, 4>(params, dims, a, b, c, threads),
        5 => rows::<T, S, 5>(params, dims, a, b, c, threads),
        6 => rows::<T, S, 6>(params, dims, a, b, c, threads),
        7 => rows::<T, S, 7>(params, dims, a, b, c, threads),
        8 => rows::<T, S, 8>(params, dims, a, b, c, threads),
        m => unreachable!("gemv: {m} rows exceed FEW_ROWS_MAX (callers check `fits`)"),
    }
}

/// Why [`gemv_bf16`] did not run a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FewRowsBf16Error {
    /// The product is not a few-row one: more than [`FEW_ROWS_MAX`] rows in all, B's columns strided, or
    /// a batch that is not one matrix in disguise (A's items stacked rows of one matrix, B shared).
    #[error("not a few-row product (the blocked bf16 GEMM runs it)")]
    NotFewRows,
    /// The CPU lacks the f32 micro-kernel path asked for.
    #[error(transparent)]
    Path(#[from] PathUnavailable),
}

/// The few-row path for bf16 operands: `C = A @ B` with A's items `[m, k]` stacked into one matrix of
/// `batch * m <= FEW_ROWS_MAX` rows, a B shared by every item with contiguous columns, and an f32 C
/// (`batch x m x n`, every element written) that the caller rounds as it likes. bf16 is widened in
/// registers and summed in f32 on `path`'s summation order (the module header): bit for bit `path`'s
/// f32 product of the widened operands. Errs, computing nothing, when the product does not fit or the
/// CPU lacks `path` ([`KernelPath::selected`] is always available).
pub fn gemv_bf16(
    path: KernelPath,
    dims: Dims,
    a: BatchRef<'_, bf16>,
    b: BatchRef<'_, bf16>,
    c: &mut [f32],
) -> Result<(), FewRowsBf16Error> {
    let batch = a.offsets.len();
    let rows = batch * dims.m;
    let shared_b = b.offsets.len() == batch && b.offsets.iter().all(|&offset| offset == b.offsets[0]);
    let b_view = |offset| MatRef { data: b.data, offset, row_stride: b.row_stride, col_stride: b.col_stride };
    let fits = batch > 0
        && rows <= FEW_ROWS_MAX
        && shared_b
        && (batch == 1 || super::stacks_rows(a, dims.m))
        && fits(dims, b_view(b.offsets[0]));
    if !fits {
        return Err(FewRowsBf16Error::NotFewRows);
    }
    let kernel = Kernel::<f32>::for_path(path).ok_or(PathUnavailable { path })?;
    assert_eq!(c.len(), rows * dims.n, "gemv_bf16: C has {} elements, expected {rows} x {}", c.len(), dims.n);
    if rows == 0 || dims.n == 0 {
        return Ok(());
    }
    if dims.k == 0 {
        c.fill(0.0);
        return Ok(());
    }
    let a = MatRef { data: a.data, offset: a.offsets[0], row_stride: a.row_stride, col_stride: a.col_stride };
    let b = b_view(b.offsets[0]);
    check_extent("A", a, rows, dims.k);
    check_extent("B", b, dims.k, dims.n);
    let product = Product { dims: Dims { m: rows, ..dims }, alpha: 1.0, a, b, beta: 0.0 };
    gemv_on(&kernel, product, c, rayon::current_num_threads());
    Ok(())
}

/// [`gemv_on`] for exactly `R` rows.
fn rows<T: Float, S: Operand<T>, const R: usize>(
    params: Params<T>,
    dims: Dims,
    a: MatRef<'_, S>,
    b: MatRef<'_, S>,
    c: &mut [T],
    threads: usize,
) {
    let Dims { n, k, .. } = dims;
    let a_cols: Vec<[T; R]> = (0..k)
        .map(|p| std::array::from_fn(|i| a.data[a.offset + i * a.row_stride + p * a.col_stride].widen()))
        .collect();
    // `chunks[t][i]` is row i of C restricted to chunk t's columns.
    let width = chunk_width(n, threads);
    let mut chunks: Vec<Vec<&mut [T]>> = (0..n.div_ceil(width)).map(|_| Vec::with_capacity(R)).collect();
    for row in c.chunks_mut(n) {
        for (chunk, part) in chunks.iter_mut().zip(row.chunks_mut(width)) {
            chunk.push(part);
        }
    }
    let isa = Isa::active();
    let b_rows = Columns { data: b.data, offset: b.offset, row_stride: b.row_stride };
    let run = |(t, chunk): (usize, Vec<&mut [T]>)| chunk_task(isa, params, &a_cols, b_rows, t * width, chunk);
    let volume = n.saturating_mul(k).saturating_mul(R);
    if threads > 1 && volume >= PARALLEL_MIN_VOLUME && chunks.len() > 1 {
        chunks.into_par_iter().enumerate().for_each(run);
    } else {
        chunks.into_iter().enumerate().for_each(run);
    }
}

/// B as rows of contiguous columns: element (p, j) is `data[offset + p * row_stride + j]`.
#[derive(Clone, Copy)]
struct Columns<'a, T> {
    data: &'a [T],
    offset: usize,
    row_stride: usize,
}

/// One chunk of columns starting at `col0`: `c_rows[i]` is row i of C over the chunk.
fn chunk_task<T: Float, S: Operand<T>, const R: usize>(
    isa: Isa,
    params: Params<T>,
    a_cols: &[[T; R]],
    b: Columns<'_, S>,
    col0: usize,
    mut c_rows: Vec<&mut [T]>,
) {
    let width = c_rows.first().map_or(0, |row| row.len());
    let k = a_cols.len();
    #[cfg(target_arch = "x86_64")]
    let simd = super::gemv_x86::tile_for::<T, S, R>(params.path);
    #[cfg(not(target_arch = "x86_64"))]
    let simd: Option<TileFn<T, S, R>> = None;
    let tile = |block, a: &[[T; R]], b: &[S], b_stride, prefetch, out: &mut [[T; TILE]; R]| match simd {
        // SAFETY: `tile_for` returns a SIMD tile only for a path whose features this CPU has.
        Some(simd) => unsafe { simd(params, block, a, b, b_stride, prefetch, out) },
        None => portable_tile(isa, params, block, a, b, b_stride, out),
    };
    let tiles = width.div_ceil(TILE);
    let mut outs: Vec<[[T; TILE]; R]> = vec![[[T::ZERO; TILE]; R]; tiles];
    for (t, out) in outs.iter_mut().enumerate() {
        let cols = t * TILE..(t * TILE + TILE).min(width);
        for (out_row, c_row) in out.iter_mut().zip(c_rows.iter()) {
            out_row[..cols.len()].copy_from_slice(&c_row[cols.clone()]);
        }
    }
    // A partial last tile runs on its columns of B copied into TILE-wide zero-padded rows.
    let live = width - (tiles - 1) * TILE;
    let padded = (live < TILE).then(|| {
        let first = b.offset + col0 + (tiles - 1) * TILE;
        let mut padded = vec![S::ZERO; k * TILE];
        for (p, padded_row) in padded.chunks_exact_mut(TILE).enumerate() {
            padded_row[..live].copy_from_slice(&b.data[first + p * b.row_stride..][..live]);
        }
        padded
    });
    let kc = params.kc.max(1);
    for (block, a_block) in a_cols.chunks(kc).enumerate() {
        for (t, out) in outs.iter_mut().enumerate() {
            let row0 = block * kc;
            // The first tile prefetches the whole chunk's part of the rows ahead, so B streams in runs of
            // the chunk's width, not of one tile's.
            let prefetch = if t == 0 { width } else { 0 };
            match (&padded, t + 1 == tiles) {
                (Some(padded), true) => tile(block, a_block, &padded[row0 * TILE..], TILE, 0, out),
                _ => {
                    let first = b.offset + row0 * b.row_stride + col0 + t * TILE;
                    tile(block, a_block, &b.data[first..], b.row_stride, prefetch, out);
                }
            }
        }
    }
    for (t, out) in outs.iter().enumerate() {
        let cols = t * TILE..(t * TILE + TILE).min(width);
        for (c_row, out_row) in c_rows.iter_mut().zip(out.iter()) {
            c_row[cols.clone()].copy_from_slice(&out_row[..cols.len()]);
        }
    }
}

multiversion! {
    /// The portable [`TileFn`] (without prefetching): plain loops compiled for every instruction-set
    /// level (bit-identical on all). Runs the portable path's rounding, and the fused one where no SIMD
    /// tile exists.
    fn portable_tile[T: Float, S: Operand<T>, const R: usize](
        isa: Isa,
        params: Params<T>,
        block: usize,
        a: &[[T; R]],
        b: &[S],
        b_stride: usize,
        out: &mut [[T; TILE]; R]
    ) {
        let Params { path, alpha, beta, .. } = params;
        let fused = path != KernelPath::Portable;
        let mut acc = [[T::ZERO; TILE]; R];
        for (p, a_p) in a.iter().enumerate() {
            let b_row = &b[p * b_stride..p * b_stride + TILE];
            for (acc_row, &a_i) in acc.iter_mut().zip(a_p) {
                for (acc_ij, &b_j) in acc_row.iter_mut().zip(b_row) {
                    let b_j = b_j.widen();
                    *acc_ij = if fused { fma(a_i, b_j, *acc_ij) } else { *acc_ij + a_i * b_j };
                }
            }
        }
        let update = match block {
            0 if beta == T::ZERO => Update::Overwrite,
            0 => Update::Scale(beta),
            _ => Update::Accumulate,
        };
        combine(fused, alpha, update, &acc, out);
    }
}

/// Combines one depth block's sums into the tile as the micro-kernels do ([`Update`]).
#[inline(always)]
fn combine<T: Float, const R: usize>(
    fused: bool,
    alpha: T,
    update: Update<T>,
    acc: &[[T; TILE]; R],
    out: &mut [[T; TILE]; R],
) {
    let pairs = out.iter_mut().flatten().zip(acc.iter().flatten());
    match (update, fused) {
        (Update::Overwrite, _) => pairs.for_each(|(c, &t)| *c = alpha * t),
        (Update::Scale(beta), true) => pairs.for_each(|(c, &t)| *c = fma(alpha, t, beta * *c)),
        (Update::Scale(beta), false) => pairs.for_each(|(c, &t)| *c = alpha * t + beta * *c),
        (Update::Accumulate, true) => pairs.for_each(|(c, &t)| *c = fma(alpha, t, *c)),
        (Update::Accumulate, false) => pairs.for_each(|(c, &t)| *c += alpha * t),
    }
}

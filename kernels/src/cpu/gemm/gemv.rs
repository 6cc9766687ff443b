//! Few-row products at memory speed: `C[m, n] = alpha * A[m, k] @ B[k, n] + beta * C` for
//! `m <= FEW_ROWS_MAX` and a B whose columns are contiguous (`col_stride == 1`: the row-major `[in, out]`
//! weights of every projection and of the LM head, `x @ W`).
//!
//! Why: with one to a few rows (a decode step) the blocked GEMM's cost is packing B, a full extra pass
//! over the weights (plus the MR-tall micro-kernel mostly multiplying padding). Here B is read once, in
//! place, as a stream: C's columns are cut into runs of `4096 / m` (the unit of parallel work, see
//! [`split`]); a task keeps the f32 (or f64) sums of its `m x width` outputs in a buffer that stays in the
//! L1 cache, and walks B's rows in depth order, each row's run read from one end to the other. Long
//! contiguous runs are what let the hardware prefetcher stream the weights: the register-tile form this
//! replaced read 256-column pieces a row apart, and on an AVX2 Zen 3 its bf16 head product took nearly
//! the time of the f32 one (8.5 against 13.5 ms for `[1, 1024] @ [1024, 32000]`; now 2.0 and 5.8). A
//! pass loads each accumulator once, applies [`STEPS`] consecutive depth steps to it and stores it, so
//! the accumulator traffic is a fraction of B's; each pass prefetches the rows 8 ahead (`gemv_x86.rs`).
//! A is gathered once per call into depth-major `[k][m]`.
//!
//! Summation order: exactly the blocked GEMM's on the same path, so a row's result does not depend on
//! whether it went through here or through the GEMM (nor on how many rows shared the call): for each
//! element, depth blocks of the path's KC in order; within a block a sum from zero over k in order
//! (`acc = fma(a, b, acc)` on the AVX2+FMA and AVX-512F paths, `acc += a * b` on the portable one); then
//! the block is combined into C as the micro-kernels do (first block `alpha * acc` when `beta == 0`, else
//! `alpha * acc + beta * C`; later blocks `alpha * acc + C`, fused on the FMA paths). How many steps a
//! pass applies, and in which order the columns are visited, change nothing in that per-element chain.
//! The tests check this bit for bit against the GEMM.
//!
//! bf16 operands (`gemv_bf16`, the few-row dispatch of the bf16 matmul): the same loops with A and B
//! read as bf16 and widened to f32 in registers (a bf16 is the top half of an f32, so widening is exact),
//! f32 accumulation and an f32 C. B is read once at two bytes per weight, half the f32 path's traffic,
//! and the results are bit for bit this path's f32 results on the widened operands (which the tests
//! check), hence also the blocked GEMM's and the bf16 GEMM's widening path (`bf16/`) on the same f32
//! micro-kernel path.
//!
//! Determinism: each depth block of each element is summed by one task in the order above, whichever
//! task holds it, and the blocks are combined into C in block order (by the task that owns the column
//! run, or, after the tasks of a depth split, on the calling thread); the instruction-set level
//! (`simd::multiversion!`) changes only the vector width (every operation is lane-wise and explicitly
//! fused or not). So results are bit-identical for any thread count and any level. The SIMD passes take
//! whole vectors of columns; a task's last few columns (fewer than a vector) run through the portable
//! pass with the same rounding.
use super::driver::{check_extent, Product};
use super::kernel::{Kernel, KernelPath, PathUnavailable, Update};
use super::{BatchRef, Dims, MatRef, PARALLEL_MIN_VOLUME};
use crate::cpu::simd::{fma, multiversion, Isa};
use crate::Float;
use half::bf16;
use rayon::prelude::*;

/// An element of A and B as this path reads it: widened exactly to the accumulation type `T`.
pub(super) trait Operand<T>: Copy + Send + Sync + 'static {
    fn widen(self) -> T;
}

impl<T: Float> Operand<T> for T {
    #[inline(always)]
    fn widen(self) -> T {
        self
    }
}

impl Operand<f32> for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// The largest m this path takes. Measured with `bench_gemm --few-rows` (2 threads): at m = 8 on
/// `[8, 1024] @ [1024, 32000]` it runs well ahead of the blocked GEMM (AVX-512 near the copy bandwidth;
/// AVX2 Zen 3 1.4-1.9x the blocked GEMM), so a decode step of 8 rows (their projections stack into one
/// 8-row product) takes it.
pub const FEW_ROWS_MAX: usize = 8;

// `gemv_on` has one arm per row count up to FEW_ROWS_MAX.
const _: () = assert!(FEW_ROWS_MAX == 8);

/// Depth steps a pass applies to each accumulator between loading and storing it. Four rows of B are
/// read side by side (four sequential streams); at one step per pass the accumulators' load and store
/// traffic outweighed B's (measured: half the bandwidth at one row).
pub(super) const STEPS: usize = 4;

/// Accumulators one task keeps, for all its rows: 4096 f32 are 16 KiB, half an L1 data cache, so the
/// accumulators stay there while B streams past. A row's run is then `4096 / m` columns (8 KiB of a
/// bf16 row at m = 1). Measured on an AVX2 Zen 3 with a bf16 `[1024, 32768]` B: at m = 1 runs of 4096
/// columns read at about the machine's read bandwidth, 1024 at two thirds of it; at m = 8, 512 columns
/// ran 1.5x faster than 1024 (accumulators spilling out of L1 cost more than the shorter runs).
const TASK_ACCUMULATORS: usize = 4096;

/// Task widths are multiples of this (an AVX-512 f32 vector), except where a product ends.
const COLUMN_ALIGN: usize = 16;

/// How a product is cut into tasks (the unit of parallel work): C's columns in runs of `width`, and
/// each run's depth blocks (the path's KC) in `groups` consecutive ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Split {
    width: usize,
    groups: usize,
}

/// The split of `n` columns and `blocks` depth blocks of a product of `rows` rows on `threads` threads.
/// Columns are cut into runs of [`TASK_ACCUMULATORS`]` / rows`. Where that gives fewer runs than threads:
/// a product of several depth blocks (a CoLA down factor `[d, r]`: 256 columns, depth 1024) splits its
/// blocks among the threads instead, so each thread streams one contiguous piece of B (whole rows); a
/// product of one block (an up factor `[r, d]`) splits its columns evenly into whole [`COLUMN_ALIGN`]
/// groups. A split only decides which thread computes what, never how (each block's sums start from zero
/// and are combined into C in block order either way), so the results do not depend on it.
fn split(n: usize, blocks: usize, rows: usize, threads: usize) -> Split {
    let full = (TASK_ACCUMULATORS / rows.max(1)).next_multiple_of(COLUMN_ALIGN);
    let runs = n.div_ceil(full);
    if threads <= 1 || runs >= threads {
        return Split { width: full, groups: 1 };
    }
    if blocks > 1 {
        return Split { width: full, groups: threads.div_ceil(runs).min(blocks) };
    }
    Split { width: n.div_ceil(threads).next_multiple_of(COLUMN_ALIGN).clamp(COLUMN_ALIGN, full), groups: 1 }
}

/// Whether a product takes this path: few rows and B's columns contiguous.
pub(super) fn fits<T>(dims: Dims, b: MatRef<'_, T>) -> bool {
    dims.m <= FEW_ROWS_MAX && (b.col_stride == 1 || dims.n == 1)
}

/// What a task needs besides its B columns and C rows.
#[derive(Clone, Copy)]
pub(super) struct Params<T> {
    /// The micro-kernel path whose rounding the task follows.
    pub(super) path: KernelPath,
    /// The path's depth block.
    pub(super) kc: usize,
    pub(super) alpha: T,
    pub(super) beta: T,
}

/// One depth block's products added into a task's accumulators: for every depth step `p` of `a` in
/// order, `acc[i * acc_stride + j] = fma(a[p][i], b[p * b_stride + j], acc[i * acc_stride + j])` for the
/// rows `i < R` and the columns `j < cols` (B's elements `S` widened to `T` as they are loaded). Arguments:
/// `(a, b, b_stride, acc, acc_stride, cols)`; `cols` is a multiple of the function's vector width.
///
/// Unsafe to call: SIMD implementations execute instructions the CPU must have (`gemv_x86::span_for`
/// returns one only after detecting them).
pub(super) type SpanFn<T, S, const R: usize> = unsafe fn(&[[T; R]], &[S], usize, &mut [T], usize, usize);

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
    let job = Job::new(params, &a_cols, Columns { data: b.data, offset: b.offset, row_stride: b.row_stride });
    let blocks = k.div_ceil(job.kc);
    let volume = n.saturating_mul(k).saturating_mul(R);
    let parallel = threads > 1 && volume >= PARALLEL_MIN_VOLUME;
    let Split { width, groups } = split(n, blocks, R, if parallel { threads } else { 1 });
    // `runs[t][i]` is row i of C restricted to run t's columns.
    let mut runs: Vec<Vec<&mut [T]>> = (0..n.div_ceil(width)).map(|_| Vec::with_capacity(R)).collect();
    for row in c.chunks_mut(n) {
        for (run, part) in runs.iter_mut().zip(row.chunks_mut(width)) {
            run.push(part);
        }
    }
    let columns = |t: usize| t * width..(t * width + width).min(n);
    if groups > 1 {
        // Every (run, block range) computes its blocks' sums; then each run's are combined in block order.
        let per_group = blocks.div_ceil(groups);
        let tasks: Vec<(usize, usize)> =
            (0..runs.len()).flat_map(|t| (0..groups).map(move |g| (t, g))).collect();
        let sums: Vec<Vec<Vec<T>>> = tasks
            .into_par_iter()
            .map(|(t, g)| {
                let cols = columns(t);
                let range = g * per_group..(g * per_group + per_group).min(blocks);
                range
                    .map(|block| {
                        let mut acc = vec![T::ZERO; R * cols.len()];
                        job.block_sums(block, cols.clone(), &mut acc);
                        acc
                    })
                    .collect()
            })
            .collect();
        let mut sums = sums.into_iter();
        for mut c_rows in runs {
            for (block, acc) in sums.by_ref().take(groups).flatten().enumerate() {
                job.combine(block, &acc, &mut c_rows);
            }
        }
    } else {
        let run = |(t, mut c_rows): (usize, Vec<&mut [T]>)| {
            let cols = columns(t);
            let mut acc = vec![T::ZERO; R * cols.len()];
            for block in 0..blocks {
                job.block_sums(block, cols.clone(), &mut acc);
                job.combine(block, &acc, &mut c_rows);
            }
        };
        if parallel && runs.len() > 1 {
            runs.into_par_iter().enumerate().for_each(run);
        } else {
            runs.into_iter().enumerate().for_each(run);
        }
    }
}

/// B as rows of contiguous columns: element (p, j) is `data[offset + p * row_stride + j]`.
#[derive(Clone, Copy)]
struct Columns<'a, T> {
    data: &'a [T],
    offset: usize,
    row_stride: usize,
}

/// What every task of one product shares: A's columns (`[k][R]`), B, the depth block and the SIMD pass
/// with its vector width (`None`: the portable pass for every column).
#[derive(Clone, Copy)]
struct Job<'a, T, S, const R: usize> {
    isa: Isa,
    params: Params<T>,
    kc: usize,
    simd: Option<(SpanFn<T, S, R>, usize)>,
    a_cols: &'a [[T; R]],
    b: Columns<'a, S>,
}

impl<'a, T: Float, S: Operand<T>, const R: usize> Job<'a, T, S, R> {
    fn new(params: Params<T>, a_cols: &'a [[T; R]], b: Columns<'a, S>) -> Self {
        #[cfg(target_arch = "x86_64")]
        let simd = super::gemv_x86::span_for::<T, S, R>(params.path);
        #[cfg(not(target_arch = "x86_64"))]
        let simd = None;
        Self { isa: Isa::active(), params, kc: params.kc.max(1), simd, a_cols, b }
    }

    /// Depth block `block`'s sums over the columns `cols` into `acc` (R rows of `cols.len()`, overwritten),
    /// each a sum from zero over the block's depth steps in order.
    fn block_sums(&self, block: usize, cols: std::ops::Range<usize>, acc: &mut [T]) {
        let Self { isa, params, kc, simd, a_cols, b } = *self;
        let width = cols.len();
        acc.fill(T::ZERO);
        let a_block = &a_cols[block * kc..((block + 1) * kc).min(a_cols.len())];
        let b_block = &b.data[b.offset + block * kc * b.row_stride + cols.start..];
        // The SIMD pass takes whole vectors; the rest of the columns take the portable pass.
        let vector_cols = simd.map_or(0, |(_, lanes)| width / lanes * lanes);
        if let Some((span, _)) = simd.filter(|_| vector_cols > 0) {
            // SAFETY: `span_for` returns a SIMD pass only for a path whose features this CPU has.
            unsafe { span(a_block, b_block, b.row_stride, acc, width, vector_cols) };
        }
        if vector_cols < width {
            let fused = params.path != KernelPath::Portable;
            let (b_rest, acc_rest) = (&b_block[vector_cols..], &mut acc[vector_cols..]);
            portable_span(isa, fused, a_block, b_rest, b.row_stride, acc_rest, width, width - vector_cols);
        }
    }

    /// Combines depth block `block`'s sums into C's rows over their columns, as the micro-kernels do.
    fn combine(&self, block: usize, acc: &[T], c_rows: &mut [&mut [T]]) {
        let Params { path, alpha, beta, .. } = self.params;
        let update = match block {
            0 if beta == T::ZERO => Update::Overwrite,
            0 => Update::Scale(beta),
            _ => Update::Accumulate,
        };
        combine(self.isa, path != KernelPath::Portable, alpha, update, acc, c_rows);
    }
}

multiversion! {
    /// The portable [`SpanFn`] (with the rounding of `fused`): plain loops compiled for every
    /// instruction-set level (bit-identical on all). Runs the whole task on the portable path, and the
    /// columns past the last whole vector on the SIMD ones.
    #[allow(clippy::too_many_arguments)]
    fn portable_span[T: Float, S: Operand<T>, const R: usize](
        isa: Isa,
        fused: bool,
        a: &[[T; R]],
        b: &[S],
        b_stride: usize,
        acc: &mut [T],
        acc_stride: usize,
        cols: usize
    ) {
        for (p, a_p) in a.iter().enumerate() {
            let b_row = &b[p * b_stride..][..cols];
            for (i, &a_i) in a_p.iter().enumerate() {
                let acc_row = &mut acc[i * acc_stride..][..cols];
                for (acc_ij, &b_j) in acc_row.iter_mut().zip(b_row) {
                    let b_j = b_j.widen();
                    *acc_ij = if fused { fma(a_i, b_j, *acc_ij) } else { *acc_ij + a_i * b_j };
                }
            }
        }
    }
}

multiversion! {
    /// Combines one depth block's sums (`acc`, C's rows one after the other) into C's rows as the
    /// micro-kernels do ([`Update`]).
    fn combine[T: Float](
        isa: Isa,
        fused: bool,
        alpha: T,
        update: Update<T>,
        acc: &[T],
        c_rows: &mut [&mut [T]]
    ) {
        let width = c_rows.first().map_or(0, |row| row.len());
        for (c_row, acc_row) in c_rows.iter_mut().zip(acc.chunks_exact(width.max(1))) {
            let pairs = c_row.iter_mut().zip(acc_row);
            match (update, fused) {
                (Update::Overwrite, _) => pairs.for_each(|(c, &t)| *c = alpha * t),
                (Update::Scale(beta), true) => pairs.for_each(|(c, &t)| *c = fma(alpha, t, beta * *c)),
                (Update::Scale(beta), false) => pairs.for_each(|(c, &t)| *c = alpha * t + beta * *c),
                (Update::Accumulate, true) => pairs.for_each(|(c, &t)| *c = fma(alpha, t, *c)),
                (Update::Accumulate, false) => pairs.for_each(|(c, &t)| *c += alpha * t),
            }
        }
    }
}

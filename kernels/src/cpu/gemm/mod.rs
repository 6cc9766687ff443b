//! General matrix multiply on strided operands: `C = alpha * A @ B + beta * C`.
//!
//! Operands are strided views into slices, so transposed and narrowed operands need no copy: packing
//! absorbs the strides. C is contiguous row-major.
//!
//! Structure (BLIS; Van Zee & van de Geijn, "BLIS: A Framework for Rapidly Instantiating BLAS
//! Functionality", 2015): B is packed a column panel at a time into NR-wide slivers, KC-deep depth block
//! after depth block (the panel sits in L3); C's panel is cut into tasks of rows (and columns when rows
//! are few); a task packs its rows of A into MR-tall slivers, a depth block at a time, and a
//! register-blocked micro-kernel multiplies one A sliver by one B sliver (in L1) into an `MR x NR`
//! tile of accumulators that it adds into C. Packing zero-pads partial slivers, so micro-kernels only
//! ever see full tiles; edge tiles go through a scratch tile with the same micro-kernel.
//!
//! Micro-kernels and block sizes (f32 / f64), chosen at run time from the CPU's features:
//!
//! | path       | MR x NR            | KC        | MC (A block rows) | B panel                  |
//! |------------|--------------------|-----------|-------------------|--------------------------|
//! | avx512f    | 12 x 32 / 12 x 16  | 256 / 128 | 288 / 144         | <= 4096 cols and 8 MiB   |
//! | avx2+fma   | 6 x 16 / 6 x 8     | 256       | 144 / 72          | <= 4080 cols and 8 MiB   |
//! | portable   | 6 x 8 / 6 x 4      | 256       | 144 / 72          | <= 2048 cols and 8 MiB   |
//!
//! When a task's share of a B depth block fits in L2 (256 KiB: narrow products such as `x @ A` with
//! rank-256 A), A is packed in groups of 8 slivers (48 rows on AVX2) that each meet the whole block
//! before the next group is packed, so the packed A stays in L1/L2 next to the B block.
//!
//! Few rows (`m <= FEW_ROWS_MAX`, a decode step) with B's columns contiguous go to the few-row path
//! instead (`gemv`): B read once in place, no packing, the same bits as the blocked GEMM on the same
//! path. [`gemm`], [`gemm_with_path`] and [`gemm_batched`] take it by themselves.
//!
//! Files: `driver` (the loop nest and the thread split), `pack` (packing), `pack_x86` (register-transpose
//! packing of a row-major f32 A on AVX2 and AVX-512), `kernel` (run-time choice of micro-kernel and block
//! sizes), `portable` (the fallback micro-kernel, any target), `x86` (AVX2+FMA and AVX-512F
//! micro-kernels, x86-64 only, chosen by CPU feature detection at run time), `gemv` and
//! `gemv_x86` (the few-row path and its SIMD passes), `peak` (the FMA and copy ceilings benchmarks compare
//! against), `bf16/` (the bf16 GEMM: bf16 operands, f32 accumulation, on the same loop nest with k-pair
//! packing and a `VDPBF16PS` micro-kernel, or widening onto the f32 micro-kernels; its header states
//! its paths and rounding models). The loop nest and packing are generic over the operands' element
//! type and the packed one, which are `T` for the f32 and f64 GEMMs.
//!
//! Determinism: each output element is the sum over k in a fixed order (KC blocks in order, k in order
//! within a block, starting from zero in the micro-kernel) computed by one thread; the split into tasks only
//! decides which thread computes which tiles, never how a tile is computed. KC depends on the micro-kernel
//! path only, so results are bit-identical for any thread count. Different paths (FMA or not, vector
//! width) may round differently. The depth is never split across threads (that would need partial sums
//! combined in a fixed order): the skinny products of training, the weight gradients `[d, T] @ [T, r]`
//! with a long T, still have d x r >= 512 x 128 outputs, dozens of tiles per thread.
mod bf16;
mod driver;
mod gemv;
#[cfg(target_arch = "x86_64")]
mod gemv_x86;
mod kernel;
mod pack;
#[cfg(target_arch = "x86_64")]
mod pack_x86;
mod peak;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::Float;
use driver::{check_extent, gemm_on, with_workspace, CElement, Product, Workspace};
use kernel::Kernel;
use rayon::prelude::*;

pub use bf16::{
    gemm_bf16, gemm_bf16_batched, gemm_bf16_with_path, Bf16GemmOutput, Bf16Path, Bf16PathUnavailable,
};
pub use gemv::{gemv_bf16, FewRowsBf16Error, FEW_ROWS_MAX};
pub use kernel::{KernelPath, PathUnavailable};
pub use peak::{copy_bandwidth, fma_probe};

/// Problem size: A is m x k, B is k x n, C is m x n.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// A read-only strided matrix view: element (i, j) is `data[offset + i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// A batch of strided matrices sharing strides: matrix b starts at `data[offsets[b]]`.
/// Broadcast batch dimensions are expressed by repeating an offset.
#[derive(Clone, Copy, Debug)]
pub struct BatchRef<'a, T> {
    pub data: &'a [T],
    pub offsets: &'a [usize],
    pub row_stride: usize,
    pub col_stride: usize,
}

/// Below this `m * n * k` a GEMM runs on the calling thread: a task spawn costs about as much as
/// this many multiply-adds.
const PARALLEL_MIN_VOLUME: usize = 1 << 16;

/// `C = alpha * A @ B + beta * C`, C contiguous row-major `m x n` (`c.len() == m * n`), on the fastest
/// micro-kernel this CPU supports ([`KernelPath::selected`]).
/// When `beta == 0` the previous contents of C are ignored (NaNs in C do not propagate).
/// When `alpha == 0` or `k == 0`, A and B are not read (as in BLAS) and `C = beta * C`.
pub fn gemm<T: Float>(dims: Dims, alpha: T, a: MatRef<'_, T>, b: MatRef<'_, T>, beta: T, c: &mut [T]) {
    let product = Product { dims, alpha, a, b, beta };
    let threads = rayon::current_num_threads();
    with_workspace(|workspace| product_on(&Kernel::selected(), product, c, threads, workspace));
}

/// [`gemm`] on a chosen micro-kernel path (tests compare paths; benchmarks time them). Errs, computing
/// nothing, when this CPU lacks the path's instructions.
pub fn gemm_with_path<T: Float>(
    path: KernelPath,
    dims: Dims,
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: &mut [T],
) -> Result<(), PathUnavailable> {
    on_path(path, Product { dims, alpha, a, b, beta }, c, product_on)
}

/// [`gemm_with_path`] always through the blocked GEMM, never the few-row path (benchmarks compare the
/// two; tests check that they give the same bits).
pub fn gemm_blocked_with_path<T: Float>(
    path: KernelPath,
    dims: Dims,
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: &mut [T],
) -> Result<(), PathUnavailable> {
    on_path(path, Product { dims, alpha, a, b, beta }, c, gemm_on)
}

/// A product runner on a chosen kernel: the dispatching entry ([`product_on`]) or the blocked GEMM; for
/// the bf16 GEMM, operands `S` packed as `P` and C's elements `C`.
type RunOn<T, S = T, P = T, C = T> =
    fn(&Kernel<T, S, P>, Product<'_, T, S>, &mut [C], usize, &mut Workspace<P>);

/// The product on `path`'s micro-kernel through `run` (the dispatching entry or the blocked GEMM), with
/// every thread of the pool; errs, computing nothing, when this CPU lacks the path.
fn on_path<T: Float>(
    path: KernelPath,
    product: Product<'_, T>,
    c: &mut [T],
    run: RunOn<T>,
) -> Result<(), PathUnavailable> {
    let kernel = Kernel::for_path(path).ok_or(PathUnavailable { path })?;
    let threads = rayon::current_num_threads();
    with_workspace(|workspace| run(&kernel, product, c, threads, workspace));
    Ok(())
}

/// Whether [`gemm`] runs a product of these dims on the few-row path (`gemv.rs`): at most
/// [`FEW_ROWS_MAX`] rows and B's columns contiguous; otherwise on the blocked GEMM. Both give the same
/// bits on the same path.
pub fn takes_few_row_path<T>(dims: Dims, b: MatRef<'_, T>) -> bool {
    gemv::fits(dims, b)
}

/// One product on `kernel`: the few-row path when it fits, else the blocked GEMM.
fn product_on<T: Float>(
    kernel: &Kernel<T>,
    product: Product<'_, T>,
    c: &mut [T],
    threads: usize,
    workspace: &mut Workspace<T>,
) {
    let Dims { m, n, k } = product.dims;
    let trivial = m == 0 || n == 0 || k == 0 || product.alpha == T::ZERO;
    if trivial || !gemv::fits(product.dims, product.b) {
        return gemm_on(kernel, product, c, threads, workspace);
    }
    assert_eq!(c.len(), m * n, "gemm: C has {} elements, expected {m} x {n}", c.len());
    check_extent("A", product.a, m, k);
    check_extent("B", product.b, k, n);
    gemv::gemv_on(kernel, product, c, threads);
}

/// Batched GEMM: for each b, `C[b] = alpha * A[b] @ B[b] + beta * C[b]` with C contiguous
/// `[batch, m, n]`, `batch == a.offsets.len() == b.offsets.len()`.
///
/// A batch that is one matrix in disguise (B shared by every item, the A items stacked rows of one
/// strided matrix, as in `[batch, seq, d] @ [d, r]`) runs as a single GEMM with `batch * m` rows. Otherwise
/// many items run in parallel across items (each single-threaded, no nested splitting) and a few large
/// items run one after another, each using all threads. All give the same bits as per-item [`gemm`] calls:
/// each element is summed over k by the same micro-kernel in the same order.
pub fn gemm_batched<T: Float>(
    dims: Dims,
    alpha: T,
    a: BatchRef<'_, T>,
    b: BatchRef<'_, T>,
    beta: T,
    c: &mut [T],
) {
    batched_on(&Kernel::selected(), product_on, BatchProduct { dims, alpha, a, b, beta }, c);
}

/// A batched product except C, as [`gemm_batched`] takes it: operands of elements `S`, scalars `T`.
#[derive(Clone, Copy)]
struct BatchProduct<'a, T, S> {
    dims: Dims,
    alpha: T,
    a: BatchRef<'a, S>,
    b: BatchRef<'a, S>,
    beta: T,
}

/// [`gemm_batched`] on `kernel` through `run` (one product: the dispatching entry or the blocked GEMM);
/// `product` holds the batch views in place of matrices.
fn batched_on<T: Float, S: Copy + Sync, P: Copy + Default + Send + Sync + 'static, C: CElement<T>>(
    kernel: &Kernel<T, S, P>,
    run: RunOn<T, S, P, C>,
    product: BatchProduct<'_, T, S>,
    c: &mut [C],
) {
    let BatchProduct { dims, alpha, a, b, beta } = product;
    let Dims { m, n, k } = dims;
    let batch = a.offsets.len();
    assert_eq!(b.offsets.len(), batch, "gemm_batched: A has {batch} items, B has {}", b.offsets.len());
    assert_eq!(
        c.len(),
        batch * m * n,
        "gemm_batched: C has {} elements, expected {batch} x {m} x {n}",
        c.len()
    );
    if m == 0 || n == 0 || batch == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let a_item = |offset| MatRef { data: a.data, offset, row_stride: a.row_stride, col_stride: a.col_stride };
    let b_item = |offset| MatRef { data: b.data, offset, row_stride: b.row_stride, col_stride: b.col_stride };
    let item = |a_offset, b_offset| Product { dims, alpha, a: a_item(a_offset), b: b_item(b_offset), beta };
    if batch > 1 && stacks_rows(a, m) && b.offsets.iter().all(|&offset| offset == b.offsets[0]) {
        let product = Product { dims: Dims { m: batch * m, n, k }, ..item(a.offsets[0], b.offsets[0]) };
        with_workspace(|workspace| run(kernel, product, c, threads, workspace));
        return;
    }
    let item_volume = m.saturating_mul(n).saturating_mul(k);
    let over_items = threads > 1
        && batch > 1
        && batch.saturating_mul(item_volume) >= PARALLEL_MIN_VOLUME
        && (batch >= 2 * threads || item_volume < PARALLEL_MIN_VOLUME);
    if over_items {
        let items = c.par_chunks_mut(m * n).zip(a.offsets.par_iter().zip(b.offsets.par_iter()));
        items.for_each(|(c_item, (&a_off, &b_off))| {
            with_workspace(|workspace| run(kernel, item(a_off, b_off), c_item, 1, workspace));
        });
    } else {
        with_workspace(|workspace| {
            for (c_item, (&a_off, &b_off)) in c.chunks_mut(m * n).zip(a.offsets.iter().zip(b.offsets)) {
                run(kernel, item(a_off, b_off), c_item, threads, workspace);
            }
        });
    }
}

/// Whether item `i` of A starts exactly `i * m` rows after item 0, so the batch is one `batch * m`-row
/// matrix with the same strides.
fn stacks_rows<T>(a: BatchRef<'_, T>, m: usize) -> bool {
    let item_step = m.saturating_mul(a.row_stride);
    a.offsets.iter().enumerate().all(|(i, &offset)| {
        i.checked_mul(item_step).and_then(|step| step.checked_add(a.offsets[0])) == Some(offset)
    })
}

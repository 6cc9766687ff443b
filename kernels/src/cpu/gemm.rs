//! General matrix multiply on strided operands: `C = alpha * A @ B + beta * C`.
//!
//! Interface (kept by later SIMD tuning): operands are strided views into slices, so transposed and
//! narrowed operands need no copy; packing absorbs the strides. C is contiguous row-major.
//!
//! Structure (BLIS; Van Zee & van de Geijn, "BLIS: A Framework for Rapidly Instantiating BLAS
//! Functionality", 2015): column panels of NC columns of B, then depth blocks of KC, packed once into
//! NR-wide slivers that stay in L3/L2; for each MC-row block, A is packed into MR-tall slivers that stay
//! in L2; a micro-kernel multiplies one A sliver by one B sliver into an `MR x NR` register tile. Packing
//! zero-pads partial slivers, so the micro-kernel only ever sees full tiles and edge handling lives in
//! the (cheap) tile store.
//!
//! Determinism: each output element is the sum over k in a fixed order (KC blocks in order, k in order
//! within a block, starting from zero in the micro-kernel), and the split into threads only decides which
//! thread computes which tiles, never how a tile is computed. Block sizes depend on the element type
//! only, so results are bit-identical for any thread count.
use crate::Float;
use rayon::prelude::*;
use std::mem::size_of;
use std::ops::Range;

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

/// Largest `mr * nr` of any micro-kernel, so the tile buffer can live on the stack.
const MAX_TILE: usize = 64;

/// Column chunks handed to separate tasks are at least this many NR slivers wide, so the A block each
/// task packs for itself is amortised over enough columns.
const MIN_CHUNK_SLIVERS: usize = 4;

/// B slivers packed together in one pass over B's rows (one parallel packing task).
const PACK_GROUP_SLIVERS: usize = 8;

/// Computes one register tile `tile[i * nr + j] = sum_p a[p * mr + i] * b[p * nr + j]` over the depth
/// `p = 0..a.len() / mr` in increasing order, starting from zero. Every implementation must keep this
/// per-element order (it is what makes results independent of the thread split).
type MicroKernelFn<T> = fn(a_sliver: &[T], b_sliver: &[T], tile: &mut [T]);

/// A micro-kernel together with the block sizes tuned for it; the swap point for SIMD variants.
#[derive(Clone, Copy)]
struct Kernel<T> {
    mr: usize,
    nr: usize,
    mc: usize,
    kc: usize,
    nc: usize,
    compute: MicroKernelFn<T>,
}

impl<T: Float> Kernel<T> {
    /// The portable kernel. Tiles are sized for 16 128-bit registers (the x86-64 baseline): 12
    /// accumulator registers plus the B row and the broadcast A element. A KC-deep B sliver is 8 KiB
    /// (L1), an MC x KC block of A about 144 KiB (L2), a KC x NC panel of B 2-4 MiB (L3).
    fn portable() -> Self {
        if size_of::<T>() <= 4 {
            Kernel { mr: 6, nr: 8, mc: 144, kc: 256, nc: 2048, compute: portable_micro_kernel::<T, 6, 8> }
        } else {
            Kernel { mr: 6, nr: 4, mc: 72, kc: 256, nc: 2048, compute: portable_micro_kernel::<T, 6, 4> }
        }
    }
}

/// Fixed-size accumulators and an inner loop over NR let LLVM keep the tile in vector registers.
fn portable_micro_kernel<T: Float, const MR: usize, const NR: usize>(a: &[T], b: &[T], tile: &mut [T]) {
    let mut acc = [[T::ZERO; NR]; MR];
    for (a_col, b_row) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (acc_row, &a_i) in acc.iter_mut().zip(a_col) {
            for (acc_ij, &b_j) in acc_row.iter_mut().zip(b_row) {
                *acc_ij += a_i * b_j;
            }
        }
    }
    for (dst, acc_row) in tile.chunks_exact_mut(NR).zip(&acc) {
        dst.copy_from_slice(acc_row);
    }
}

/// How a finished tile combines with C: the first depth block applies beta (or ignores C when beta is
/// zero, so NaNs in C do not propagate); later depth blocks accumulate.
#[derive(Clone, Copy)]
enum Update<T> {
    Overwrite,
    Scale(T),
    Accumulate,
}

fn update_row<T: Float>(c: &mut [T], tile_row: &[T], alpha: T, update: Update<T>) {
    let pairs = c.iter_mut().zip(tile_row);
    match update {
        Update::Overwrite => pairs.for_each(|(c, &t)| *c = alpha * t),
        Update::Scale(beta) => pairs.for_each(|(c, &t)| *c = alpha * t + beta * *c),
        Update::Accumulate => pairs.for_each(|(c, &t)| *c += alpha * t),
    }
}

/// One operand seen as slivers: `across` runs along the sliver width (rows of A, columns of B),
/// `depth` along k.
#[derive(Clone, Copy)]
struct PanelSource<'a, T> {
    data: &'a [T],
    offset: usize,
    across_stride: usize,
    depth_stride: usize,
}

impl<'a, T> PanelSource<'a, T> {
    fn lhs(a: MatRef<'a, T>) -> Self {
        PanelSource {
            data: a.data,
            offset: a.offset,
            across_stride: a.row_stride,
            depth_stride: a.col_stride,
        }
    }

    fn rhs(b: MatRef<'a, T>) -> Self {
        PanelSource {
            data: b.data,
            offset: b.offset,
            across_stride: b.col_stride,
            depth_stride: b.row_stride,
        }
    }
}

/// Everything about one product except C: `C = alpha * A @ B + beta * C`.
#[derive(Clone, Copy)]
struct Product<'a, T> {
    dims: Dims,
    alpha: T,
    a: MatRef<'a, T>,
    b: MatRef<'a, T>,
    beta: T,
}

/// Packs `lanes` (zero-padded to whole slivers) over `depth` into consecutive slivers
/// `dst[s][p * width + lane]`, `dst.len() / (width * depth.len())` of them. Reads run along the
/// contiguous stride: a lane's depth run when k is contiguous, else one row segment across all slivers
/// per `p`, so a row-major B is read a full cache line at a time instead of one sliver width per
/// (set-conflicting) row.
fn pack_slivers<T: Float>(
    src: PanelSource<'_, T>,
    lanes: Range<usize>,
    depth: Range<usize>,
    width: usize,
    dst: &mut [T],
) {
    let kc = depth.len();
    let base = src.offset + depth.start * src.depth_stride;
    if src.depth_stride == 1 && src.across_stride != 1 {
        for (s, sliver) in dst.chunks_exact_mut(width * kc).enumerate() {
            for lane in 0..width {
                let dst = sliver[lane..].iter_mut().step_by(width);
                let index = lanes.start + s * width + lane;
                if index < lanes.end {
                    let start = base + index * src.across_stride;
                    dst.zip(&src.data[start..start + kc]).for_each(|(d, &x)| *d = x);
                } else {
                    dst.for_each(|d| *d = T::ZERO);
                }
            }
        }
        return;
    }
    let mut slivers: Vec<&mut [T]> = dst.chunks_exact_mut(width * kc).collect();
    for p in 0..kc {
        let row = base + p * src.depth_stride;
        for (s, sliver) in slivers.iter_mut().enumerate() {
            let first = lanes.start + s * width;
            let (head, pad) = sliver[p * width..(p + 1) * width].split_at_mut(width.min(lanes.end - first));
            if src.across_stride == 1 {
                let start = row + first;
                head.copy_from_slice(&src.data[start..start + head.len()]);
            } else {
                for (lane, d) in head.iter_mut().enumerate() {
                    *d = src.data[row + (first + lane) * src.across_stride];
                }
            }
            pad.fill(T::ZERO);
        }
    }
}

/// A rectangle of C owned by one task: `c_rows[i]` is row `rows.start + i` of C restricted to the
/// panel columns `cols` (relative to the panel start; `cols.start` is a multiple of nr).
struct Task<'c, T> {
    rows: Range<usize>,
    cols: Range<usize>,
    c_rows: Vec<&'c mut [T]>,
}

/// Reusable packing buffers, so batched calls of small GEMMs do not allocate per item.
#[derive(Default)]
struct Workspace<T> {
    a_pack: Vec<T>,
    b_pack: Vec<T>,
}

/// Everything a task needs about the current (panel, depth block) pair.
struct BlockStep<'a, T> {
    kernel: Kernel<T>,
    a: PanelSource<'a, T>,
    depth: Range<usize>,
    b_pack: &'a [T],
    alpha: T,
    update: Update<T>,
}

impl<T: Float> BlockStep<'_, T> {
    /// Packs this task's rows of A, then runs the micro-kernel over its tiles, B sliver outermost so
    /// that sliver stays in L1 while the A block streams from L2.
    fn run(&self, task: &mut Task<'_, T>, a_buf: &mut Vec<T>) {
        let Kernel { mr, nr, compute, .. } = self.kernel;
        let kc = self.depth.len();
        let mc = task.rows.len();
        let a_len = mc.div_ceil(mr) * mr * kc;
        if a_buf.len() < a_len {
            a_buf.resize(a_len, T::ZERO);
        }
        let a_pack = &mut a_buf[..a_len];
        pack_slivers(self.a, task.rows.clone(), self.depth.clone(), mr, a_pack);
        let mut tile_buf = [T::ZERO; MAX_TILE];
        let tile = &mut tile_buf[..mr * nr];
        for col in task.cols.clone().step_by(nr) {
            let b_sliver = &self.b_pack[(col / nr) * nr * kc..][..nr * kc];
            let local = col - task.cols.start;
            let cols_live = nr.min(task.cols.end - col);
            for (s, a_sliver) in a_pack.chunks_exact(mr * kc).enumerate() {
                compute(a_sliver, b_sliver, tile);
                let row0 = s * mr;
                let rows_live = mr.min(mc - row0);
                for (c_row, tile_row) in
                    task.c_rows[row0..row0 + rows_live].iter_mut().zip(tile.chunks_exact(nr))
                {
                    update_row(
                        &mut c_row[local..local + cols_live],
                        &tile_row[..cols_live],
                        self.alpha,
                        self.update,
                    );
                }
            }
        }
    }
}

/// Splits the panel `jc..jc + nc` of C into tasks: balanced MC-row blocks, and, when there are too few
/// row blocks to keep `threads` busy (small m), NR-aligned column chunks as well.
fn split_panel<'c, T>(
    c: &'c mut [T],
    dims: Dims,
    kernel: &Kernel<T>,
    panel: Range<usize>,
    threads: usize,
) -> Vec<Task<'c, T>> {
    let Kernel { mr, nr, .. } = *kernel;
    let (m, nc) = (dims.m, panel.len());
    let mc = m.div_ceil(m.div_ceil(kernel.mc)).next_multiple_of(mr);
    let row_blocks = m.div_ceil(mc);
    let slivers = nc.div_ceil(nr);
    let chunks = if threads > 1 { (4 * threads).div_ceil(row_blocks) } else { 1 };
    let chunks = chunks.clamp(1, (slivers / MIN_CHUNK_SLIVERS).max(1));
    let chunk_width = slivers.div_ceil(chunks) * nr;
    let col_chunks: Vec<Range<usize>> =
        (0..nc).step_by(chunk_width).map(|start| start..(start + chunk_width).min(nc)).collect();
    let mut tasks: Vec<Task<'c, T>> = Vec::with_capacity(row_blocks * col_chunks.len());
    for row_start in (0..m).step_by(mc) {
        let rows = row_start..(row_start + mc).min(m);
        for cols in &col_chunks {
            tasks.push(Task {
                rows: rows.clone(),
                cols: cols.clone(),
                c_rows: Vec::with_capacity(rows.len()),
            });
        }
    }
    for (r, row) in c.chunks_mut(dims.n).enumerate() {
        let mut rest = &mut row[panel.clone()];
        let first_task = (r / mc) * col_chunks.len();
        for (task, cols) in tasks[first_task..].iter_mut().zip(&col_chunks) {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(cols.len());
            task.c_rows.push(head);
            rest = tail;
        }
    }
    tasks
}

/// `C = beta * C`, with `beta == 0` writing zeros: the result when `k == 0` or `alpha == 0`.
fn scale_c<T: Float>(beta: T, c: &mut [T]) {
    if beta == T::ZERO {
        c.fill(T::ZERO);
    } else if beta != T::ONE {
        c.iter_mut().for_each(|x| *x *= beta);
    }
}

/// Panics with the operand's name when a view reaches past its slice: a caller bug, never user input.
fn check_extent<T>(name: &str, view: MatRef<'_, T>, rows: usize, cols: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1)
        .saturating_mul(view.row_stride)
        .saturating_add((cols - 1).saturating_mul(view.col_stride))
        .saturating_add(view.offset);
    assert!(
        last < view.data.len(),
        "gemm: {name} ({rows} x {cols}) reaches index {last} of {}",
        view.data.len()
    );
}

/// The blocked GEMM; `threads == 1` runs on the calling thread.
fn gemm_on<T: Float>(
    kernel: &Kernel<T>,
    product: Product<'_, T>,
    c: &mut [T],
    threads: usize,
    workspace: &mut Workspace<T>,
) {
    let Product { dims, alpha, a, b, beta } = product;
    let Dims { m, n, k } = dims;
    assert_eq!(c.len(), m * n, "gemm: C has {} elements, expected {m} x {n}", c.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == T::ZERO {
        scale_c(beta, c);
        return;
    }
    check_extent("A", a, m, k);
    check_extent("B", b, k, n);
    let threads = if m.saturating_mul(n).saturating_mul(k) < PARALLEL_MIN_VOLUME { 1 } else { threads };
    let nr = kernel.nr;
    let (a_src, b_src) = (PanelSource::lhs(a), PanelSource::rhs(b));
    let b_len = n.min(kernel.nc).div_ceil(nr) * nr * k.min(kernel.kc);
    if workspace.b_pack.len() < b_len {
        workspace.b_pack.resize(b_len, T::ZERO);
    }
    for jc in (0..n).step_by(kernel.nc) {
        let panel = jc..(jc + kernel.nc).min(n);
        let mut tasks = split_panel(&mut *c, dims, kernel, panel.clone(), threads);
        for pc in (0..k).step_by(kernel.kc) {
            let depth = pc..(pc + kernel.kc).min(k);
            let kc = depth.len();
            let b_pack = &mut workspace.b_pack[..panel.len().div_ceil(nr) * nr * kc];
            let pack_b = |(g, group): (usize, &mut [T])| {
                let first = panel.start + g * PACK_GROUP_SLIVERS * nr;
                let lanes = first..(first + PACK_GROUP_SLIVERS * nr).min(panel.end);
                pack_slivers(b_src, lanes, depth.clone(), nr, group);
            };
            let update = match pc {
                0 if beta == T::ZERO => Update::Overwrite,
                0 => Update::Scale(beta),
                _ => Update::Accumulate,
            };
            if threads > 1 {
                b_pack.par_chunks_mut(PACK_GROUP_SLIVERS * nr * kc).enumerate().for_each(pack_b);
            } else {
                b_pack.chunks_mut(PACK_GROUP_SLIVERS * nr * kc).enumerate().for_each(pack_b);
            }
            let step = BlockStep { kernel: *kernel, a: a_src, depth, b_pack, alpha, update };
            if threads > 1 {
                tasks.par_iter_mut().for_each_init(Vec::new, |a_buf, task| step.run(task, a_buf));
            } else {
                tasks.iter_mut().for_each(|task| step.run(task, &mut workspace.a_pack));
            }
        }
    }
}

/// `C = alpha * A @ B + beta * C`, C contiguous row-major `m x n` (`c.len() == m * n`).
/// When `beta == 0` the previous contents of C are ignored (NaNs in C do not propagate).
/// When `alpha == 0` or `k == 0`, A and B are not read (as in BLAS) and `C = beta * C`.
pub fn gemm<T: Float>(dims: Dims, alpha: T, a: MatRef<'_, T>, b: MatRef<'_, T>, beta: T, c: &mut [T]) {
    let threads = rayon::current_num_threads();
    let product = Product { dims, alpha, a, b, beta };
    gemm_on(&Kernel::portable(), product, c, threads, &mut Workspace::default());
}

/// Batched GEMM: for each b, `C[b] = alpha * A[b] @ B[b] + beta * C[b]` with C contiguous
/// `[batch, m, n]`, `batch == a.offsets.len() == b.offsets.len()`.
///
/// Many items run in parallel across items (each single-threaded, no nested splitting); a few large
/// items run one after another, each using all threads. Both give the same bits.
pub fn gemm_batched<T: Float>(
    dims: Dims,
    alpha: T,
    a: BatchRef<'_, T>,
    b: BatchRef<'_, T>,
    beta: T,
    c: &mut [T],
) {
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
    let kernel = Kernel::portable();
    let item = |a_offset, b_offset| Product {
        dims,
        alpha,
        a: MatRef { data: a.data, offset: a_offset, row_stride: a.row_stride, col_stride: a.col_stride },
        b: MatRef { data: b.data, offset: b_offset, row_stride: b.row_stride, col_stride: b.col_stride },
        beta,
    };
    let threads = rayon::current_num_threads();
    let item_volume = m.saturating_mul(n).saturating_mul(k);
    let over_items = threads > 1
        && batch > 1
        && batch.saturating_mul(item_volume) >= PARALLEL_MIN_VOLUME
        && (batch >= 2 * threads || item_volume < PARALLEL_MIN_VOLUME);
    if over_items {
        let items = c.par_chunks_mut(m * n).zip(a.offsets.par_iter().zip(b.offsets.par_iter()));
        items.for_each_init(Workspace::default, |workspace, (c_item, (&a_off, &b_off))| {
            gemm_on(&kernel, item(a_off, b_off), c_item, 1, workspace);
        });
    } else {
        let mut workspace = Workspace::default();
        for (c_item, (&a_off, &b_off)) in c.chunks_mut(m * n).zip(a.offsets.iter().zip(b.offsets)) {
            gemm_on(&kernel, item(a_off, b_off), c_item, threads, &mut workspace);
        }
    }
}

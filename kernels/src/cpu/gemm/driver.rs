//! The blocked loop nest and its split over threads.
//!
//! For each column panel of C, B's panel is packed for the whole depth, every KC depth block one after
//! the other (in parallel, in groups of slivers); then the panel is cut into tasks (row blocks, and
//! column chunks when there are too few row blocks to feed every thread), and each task walks the depth
//! blocks in order, packing its rows of A and running the micro-kernel over its tiles. So a panel costs
//! two parallel regions whatever the depth, not two per depth block: with a long k (the weight gradients,
//! k = tokens) a wake-up and a barrier per block would cost several percent, more on a busy machine.
//! Tasks are handed out dynamically to one worker per thread, each with its own A buffer, so a core slowed
//! by other load simply takes fewer tasks; which worker runs a task never changes how it is computed.
//! A product too deep for B's whole depth to fit the panel bound at C's full width (the LM head's
//! `dlogits @ W`, depth = vocabulary) runs as consecutive depth ranges of whole KC blocks, each one panel
//! wide, so A is packed once rather than once per narrowed panel; the bits are the same.
use super::kernel::{Kernel, Update};
use super::pack::PanelSource;
use super::{Dims, MatRef, PARALLEL_MIN_VOLUME};
use crate::Float;
use rayon::prelude::*;
use std::any::Any;
use std::cell::RefCell;
use std::mem::size_of;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Largest `mr * nr` of any micro-kernel, so the edge scratch tile can live on the stack.
const MAX_TILE: usize = 12 * 32;

/// Row blocks handed to separate tasks are at least this many MR slivers tall, so the B panel each task
/// streams is reused by enough rows.
const MIN_TASK_SLIVERS: usize = 4;

/// Column chunks handed to separate tasks are at least this many NR slivers wide, so the A block each
/// task packs for itself is amortised over enough columns.
const MIN_CHUNK_SLIVERS: usize = 4;

/// A task's part of the packed B panel up to this size stays in L2 (half of a Zen 3 core's 512 KiB),
/// so A can be packed in small groups that each meet the whole panel.
const B_PANEL_L2_BYTES: usize = 256 << 10;

/// Upper bound on the packed B panel (all depth blocks), which sits in L3 while the tasks run; the panel
/// is narrowed (never below one sliver) so that `k x width` fits.
const B_PANEL_BYTES: usize = 8 << 20;

/// Slivers packed together in one pass: a parallel packing task of B; the unit of A packed between
/// micro-kernel calls (8 slivers of 6 rows are 3 whole cache lines of a transposed f32 A's rows).
const PACK_GROUP_SLIVERS: usize = 8;

/// Everything about one product except C: `C = alpha * A @ B + beta * C`, the operands' elements `S`
/// (`T` but for the bf16 GEMM).
#[derive(Clone, Copy)]
pub(super) struct Product<'a, T, S = T> {
    pub(super) dims: Dims,
    pub(super) alpha: T,
    pub(super) a: MatRef<'a, S>,
    pub(super) b: MatRef<'a, S>,
    pub(super) beta: T,
}

/// An element type of C for accumulators `T`: `T` itself (the micro-kernel combines its tile into C in
/// place), or a narrower type that a tile is rounded to once as it is stored (the bf16 C of the bf16 GEMM:
/// the tile is combined with C in an f32 scratch tile, C widened into it first when the update reads C).
/// A rounding C is only ever given products whose depth is one depth block (`k <= kc`), so no partial
/// sum is rounded: every element is `alpha * tile + beta * C` rounded once, as through a whole f32 C.
pub(super) trait CElement<T>: Copy + Send + Sync {
    /// Whether storing rounds (C is not `T`).
    const ROUNDS: bool;
    /// The rows of a tile as the micro-kernel writes them, when C is `T`.
    fn direct<'r, 'c>(rows: &'r mut [&'c mut [Self]]) -> Option<&'r mut [&'c mut [T]]>;
    /// `dst = src` as `T` (exact).
    fn load(src: &[Self], dst: &mut [T]);
    /// A tile stored, rounded when C is narrower than `T`: row `i` of `src` (its first `cols.len()`
    /// elements) into `dst[i][cols]`, for every row of `dst` (one call per tile, so a rounding C
    /// dispatches its SIMD loop once per tile, not once per row).
    fn store_tile(src: &[&mut [T]], dst: &mut [&mut [Self]], cols: std::ops::Range<usize>);
    /// `C = beta * C` (zeros when `beta == 0`): the whole product when `k == 0` or `alpha == 0`.
    fn scale(beta: T, c: &mut [Self]);
}

impl<T: Float> CElement<T> for T {
    const ROUNDS: bool = false;

    fn direct<'r, 'c>(rows: &'r mut [&'c mut [T]]) -> Option<&'r mut [&'c mut [T]]> {
        Some(rows)
    }

    fn load(src: &[T], dst: &mut [T]) {
        dst.copy_from_slice(src);
    }

    fn store_tile(src: &[&mut [T]], dst: &mut [&mut [T]], cols: std::ops::Range<usize>) {
        for (d, s) in dst.iter_mut().zip(src) {
            d[cols.clone()].copy_from_slice(&s[..cols.len()]);
        }
    }

    fn scale(beta: T, c: &mut [T]) {
        scale_c(beta, c);
    }
}

/// Packing buffers of packed elements `P`: B's packed panel and one A buffer per worker.
pub(super) struct Workspace<P> {
    a_packs: Vec<Vec<P>>,
    b_pack: Vec<P>,
}

impl<P> Default for Workspace<P> {
    fn default() -> Self {
        Workspace { a_packs: Vec::new(), b_pack: Vec::new() }
    }
}

thread_local! {
    /// Each calling thread's workspaces (one per element type), kept between calls so a GEMM neither
    /// allocates nor zero-fills its packing buffers (a few MiB) every time.
    static WORKSPACES: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's cached workspace for packed elements `P`. The workspace is taken out of the
/// cache for the call, so a nested call on the same thread (a rayon worker running another GEMM while it
/// waits) finds none and uses a fresh one.
pub(super) fn with_workspace<P: 'static, R>(f: impl FnOnce(&mut Workspace<P>) -> R) -> R {
    let cached = WORKSPACES.with(|cache| {
        let mut cache = cache.borrow_mut();
        let index = cache.iter().position(|workspace| workspace.is::<Workspace<P>>())?;
        Some(cache.swap_remove(index))
    });
    let mut workspace: Box<Workspace<P>> = cached.and_then(|any| any.downcast().ok()).unwrap_or_default();
    let result = f(&mut workspace);
    WORKSPACES.with(|cache| cache.borrow_mut().push(workspace));
    result
}

/// `buf[start..start + len]` with `start` on a 64-byte boundary (a cache line, the widest vector), so
/// packed slivers never straddle lines needlessly. Grows `buf` as needed.
fn aligned<P: Copy + Default>(buf: &mut Vec<P>, len: usize) -> &mut [P] {
    let line = 64 / size_of::<P>();
    if buf.len() < len + line {
        buf.resize(len + line, P::default());
    }
    let misalignment = (buf.as_ptr() as usize % 64) / size_of::<P>();
    let start = (line - misalignment) % line;
    &mut buf[start..start + len]
}

/// A rectangle of C owned by one task: `c_rows[i]` is row `rows.start + i` of C restricted to the
/// panel columns `cols` (relative to the panel start; `cols.start` is a multiple of nr).
struct Task<'c, C> {
    rows: Range<usize>,
    cols: Range<usize>,
    c_rows: Vec<&'c mut [C]>,
}

/// Everything a task needs about one panel: B packed for every depth block, block after block.
struct PanelStep<'a, T, S, P> {
    kernel: Kernel<T, S, P>,
    a: PanelSource<'a, S>,
    k: usize,
    /// Slivers across the panel (each depth block of `b_pack` holds this many).
    slivers: usize,
    b_pack: &'a [P],
    alpha: T,
    beta: T,
}

impl<T: Float, S: Copy, P: Copy + Default> PanelStep<'_, T, S, P> {
    /// Runs the task over every depth block in order (the fixed summation order of each element).
    fn run<C: CElement<T>>(&self, task: &mut Task<'_, C>, a_buf: &mut Vec<P>) {
        let Kernel { nr, kc, .. } = self.kernel;
        for pc in (0..self.k).step_by(kc) {
            let depth = pc..(pc + kc).min(self.k);
            let update = match pc {
                0 if self.beta == T::ZERO => Update::Overwrite,
                0 => Update::Scale(self.beta),
                _ => Update::Accumulate,
            };
            let packed = self.kernel.packed_depth(depth.len());
            let b_pack = &self.b_pack[self.slivers * nr * pc..][..self.slivers * nr * packed];
            let step = BlockStep { kernel: self.kernel, a: self.a, depth, b_pack, alpha: self.alpha, update };
            step.run(task, a_buf);
        }
    }
}

/// Everything a task needs about one (panel, depth block) pair.
struct BlockStep<'a, T, S, P> {
    kernel: Kernel<T, S, P>,
    a: PanelSource<'a, S>,
    depth: Range<usize>,
    b_pack: &'a [P],
    alpha: T,
    update: Update<T>,
}

impl<T: Float, S: Copy, P: Copy + Default> BlockStep<'_, T, S, P> {
    /// Runs the micro-kernel over the task's tiles, packing A a group of slivers at a time just before
    /// their first use.
    ///
    /// Narrow tasks (the task's part of the packed B panel fits in L2): each A group meets every B sliver
    /// before the next group is packed; per B sliver, the group's slivers run in turn, so the B sliver
    /// stays in L1 and the A group in L1/L2 (BLIS with a 48-row A block, B's panel in L2). Wide tasks: the
    /// whole A block is packed during the first B sliver's pass and then streams from L2 for every other
    /// B sliver, B sliver outermost (BLIS as usual).
    fn run<C: CElement<T>>(&self, task: &mut Task<'_, C>, a_buf: &mut Vec<P>) {
        let Kernel { mr, nr, .. } = self.kernel;
        let kc = self.kernel.packed_depth(self.depth.len());
        let group_rows = PACK_GROUP_SLIVERS * mr;
        let narrow = task.cols.len().next_multiple_of(nr) * kc * size_of::<P>() <= B_PANEL_L2_BYTES;
        let a_len = if narrow { group_rows.min(task.rows.len()) } else { task.rows.len() };
        let a_pack = aligned(a_buf, a_len.div_ceil(mr) * mr * kc);
        let mut scratch = [T::ZERO; MAX_TILE];
        let mut scratch: Vec<&mut [T]> = scratch[..mr * nr].chunks_exact_mut(nr).collect();
        let cols = task.cols.clone().step_by(nr);
        let groups = task.rows.len().div_ceil(group_rows);
        for g in 0..groups {
            let start = task.rows.start + g * group_rows;
            let rows = start..(start + group_rows).min(task.rows.end);
            let slivers = rows.len().div_ceil(mr);
            let group = if narrow {
                &mut a_pack[..slivers * mr * kc]
            } else {
                &mut a_pack[g * group_rows * kc..][..slivers * mr * kc]
            };
            (self.kernel.pack_a)(self.a, rows, self.depth.clone(), group);
            let group = &*group;
            for col in cols.clone().take(if narrow { cols.len() } else { 1 }) {
                for (s, a_sliver) in group.chunks_exact(mr * kc).enumerate() {
                    self.tile(task, g * PACK_GROUP_SLIVERS + s, col, a_sliver, &mut scratch);
                }
            }
        }
        if !narrow {
            for col in cols.skip(1) {
                for (s, a_sliver) in a_pack.chunks_exact(mr * kc).enumerate() {
                    self.tile(task, s, col, a_sliver, &mut scratch);
                }
            }
        }
    }

    /// One tile: A sliver `s` of the task times the B sliver at panel column `col`, into C.
    fn tile<C: CElement<T>>(
        &self,
        task: &mut Task<'_, C>,
        s: usize,
        col: usize,
        a_sliver: &[P],
        scratch: &mut [&mut [T]],
    ) {
        let Kernel { mr, nr, .. } = self.kernel;
        let kc = self.kernel.packed_depth(self.depth.len());
        let b_sliver = &self.b_pack[(col / nr) * nr * kc..][..nr * kc];
        let local = col - task.cols.start;
        let cols_live = nr.min(task.cols.end - col);
        let row0 = s * mr;
        let c_tile = &mut task.c_rows[row0..(row0 + mr).min(task.rows.len())];
        if c_tile.len() == mr && cols_live == nr {
            if let Some(c_tile) = C::direct(c_tile) {
                self.kernel.tile(a_sliver, b_sliver, c_tile, local, self.alpha, self.update);
                return;
            }
        }
        // Edge tile, or a C that is not `T`: the same micro-kernel on a scratch tile, so edge elements
        // round exactly as they would in a full tile (C is read in only when the update reads it).
        if !matches!(self.update, Update::Overwrite) {
            for (scratch_row, c_row) in scratch.iter_mut().zip(c_tile.iter()) {
                C::load(&c_row[local..local + cols_live], &mut scratch_row[..cols_live]);
            }
        }
        self.kernel.tile(a_sliver, b_sliver, scratch, 0, self.alpha, self.update);
        C::store_tile(scratch, c_tile, local..local + cols_live);
    }
}

/// `parts` nearly equal ranges covering `0..units` (sizes differ by at most one), scaled by `unit` and
/// clipped to `end`.
fn balanced(units: usize, parts: usize, unit: usize, end: usize) -> Vec<Range<usize>> {
    (0..parts)
        .map(|p| (p * units / parts * unit).min(end)..((p + 1) * units / parts * unit).min(end))
        .collect()
}

/// Splits the panel `panel` of C into tasks: row blocks of at most about MC rows, at least two per thread
/// and a multiple of `threads` in number, down to MIN_TASK_SLIVERS slivers each; NR-aligned column chunks
/// as well only when even such rows cannot feed two tasks per thread (tiny m), since every column chunk
/// packs the same rows of A again while row blocks share nothing. Task sizes never affect results, only
/// who computes what.
fn split_panel<'c, T, S, P, C>(
    c: &'c mut [C],
    dims: Dims,
    kernel: &Kernel<T, S, P>,
    panel: Range<usize>,
    threads: usize,
) -> Vec<Mutex<Task<'c, C>>> {
    let (mr, nr) = (kernel.mr, kernel.nr);
    let (m, width) = (dims.m, panel.len());
    let row_slivers = m.div_ceil(mr);
    let wanted = if threads > 1 { 2 * threads } else { 1 };
    let row_parts = m.div_ceil(kernel.mc).max(wanted).next_multiple_of(threads);
    let row_parts = row_parts.min((row_slivers / MIN_TASK_SLIVERS).max(1));
    let col_slivers = width.div_ceil(nr);
    let col_parts = if row_parts < wanted {
        wanted.div_ceil(row_parts).min((col_slivers / MIN_CHUNK_SLIVERS).max(1))
    } else {
        1
    };
    let col_ranges = balanced(col_slivers, col_parts, nr, width);
    let mut c_rows = c.chunks_mut(dims.n);
    let mut tasks = Vec::with_capacity(row_parts * col_parts);
    for rows in balanced(row_slivers, row_parts, mr, m) {
        let mut chunks: Vec<Task<'c, C>> = col_ranges
            .iter()
            .map(|cols| Task {
                rows: rows.clone(),
                cols: cols.clone(),
                c_rows: Vec::with_capacity(rows.len()),
            })
            .collect();
        for row in c_rows.by_ref().take(rows.len()) {
            let mut rest = &mut row[panel.clone()];
            for chunk in &mut chunks {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(chunk.cols.len());
                chunk.c_rows.push(head);
                rest = tail;
            }
        }
        tasks.extend(chunks.into_iter().map(Mutex::new));
    }
    tasks
}

/// Runs every task once: one worker per A buffer pulls task indices from a shared counter.
fn run_tasks<T: Float, S: Copy + Sync, P: Copy + Default + Send + Sync, C: CElement<T>>(
    tasks: &[Mutex<Task<'_, C>>],
    a_packs: &mut [Vec<P>],
    step: &PanelStep<'_, T, S, P>,
) {
    let next = AtomicUsize::new(0);
    let work = |a_buf: &mut Vec<P>| {
        while let Some(task) = tasks.get(next.fetch_add(1, Ordering::Relaxed)) {
            step.run(&mut task.lock().unwrap_or_else(PoisonError::into_inner), a_buf);
        }
    };
    match a_packs {
        [only] => work(only),
        _ => a_packs.par_iter_mut().for_each(work),
    }
}

/// `C = beta * C`, with `beta == 0` writing zeros: the result when `k == 0` or `alpha == 0`.
pub(super) fn scale_c<T: Float>(beta: T, c: &mut [T]) {
    if beta == T::ZERO {
        c.fill(T::ZERO);
    } else if beta != T::ONE {
        c.iter_mut().for_each(|x| *x *= beta);
    }
}

/// Panics with the operand's name when a view reaches past its slice: a caller bug, never user input.
pub(super) fn check_extent<T>(name: &str, view: MatRef<'_, T>, rows: usize, cols: usize) {
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

/// The blocked GEMM; `threads == 1` runs on the calling thread. A rounding C ([`CElement::ROUNDS`]) needs
/// `k <= kc` (one depth block).
/// The columns of one B panel of depth `k`: as many whole NR slivers as fit [`B_PANEL_BYTES`] packed,
/// at least one, at most NC.
fn panel_width<T, S, P>(kernel: &Kernel<T, S, P>, k: usize, packed_size: usize) -> usize {
    (B_PANEL_BYTES / (kernel.packed_depth(k) * packed_size) / kernel.nr * kernel.nr)
        .clamp(kernel.nr, kernel.nc)
}

/// The depth of the ranges a deep product is split into, if it is split. When B's whole depth does not
/// fit [`B_PANEL_BYTES`] at the widest panel the kernel takes (`min(n, NC)`), the panels are narrowed and
/// every row block of A is packed again for each of them (the LM head's `dlogits @ W`, depth 32000 and 512
/// columns, packed its 1024 x 32000 A eight times). Depth ranges of whole KC blocks that fit at the widest
/// panel pack A fewer times, but read and write C once more per range: split when the A elements spared
/// outnumber the C elements added (per row of C: `k * (panels before - panels after)` against
/// `2 n (ranges - 1)`), which keeps the head's logits product (depth d, 32000 columns) whole.
fn depth_range<T, S, P>(kernel: &Kernel<T, S, P>, k: usize, n: usize, packed_size: usize) -> Option<usize> {
    let panel_width = |depth: usize| panel_width(kernel, depth, packed_size);
    let widest = n.next_multiple_of(kernel.nr).min(kernel.nc);
    if k <= kernel.kc || panel_width(k) >= widest {
        return None;
    }
    let blocks = (B_PANEL_BYTES / packed_size / widest / kernel.packed_depth(kernel.kc)).max(1);
    let range = blocks * kernel.kc;
    let spared = k * (n.div_ceil(panel_width(k)) - n.div_ceil(panel_width(range)));
    let added = 2 * n * (k.div_ceil(range) - 1);
    (spared > added).then_some(range)
}

pub(super) fn gemm_on<T: Float, S: Copy + Sync, P: Copy + Default + Send + Sync, C: CElement<T>>(
    kernel: &Kernel<T, S, P>,
    product: Product<'_, T, S>,
    c: &mut [C],
    threads: usize,
    workspace: &mut Workspace<P>,
) {
    let Product { dims, alpha, a, b, beta } = product;
    let Dims { m, n, k } = dims;
    assert_eq!(c.len(), m * n, "gemm: C has {} elements, expected {m} x {n}", c.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == T::ZERO {
        C::scale(beta, c);
        return;
    }
    assert!(
        !C::ROUNDS || k <= kernel.kc,
        "gemm: a rounding C needs one depth block, k = {k} > {}",
        kernel.kc
    );
    check_extent("A", a, m, k);
    check_extent("B", b, k, n);
    let volume = m.saturating_mul(n).saturating_mul(k);
    let threads = if volume < PARALLEL_MIN_VOLUME { 1 } else { threads.max(1) };
    let Kernel { nr, kc, .. } = *kernel;
    if let Some(range) = depth_range(kernel, k, n, size_of::<P>()) {
        // Consecutive depth ranges, each a product over all of C's columns: every element still takes
        // its depth blocks in order, the first combined with `beta * C` and the rest added to C, so the
        // bits are those of one call.
        for start in (0..k).step_by(range) {
            let depth = range.min(k - start);
            let part = Product {
                dims: Dims { m, n, k: depth },
                alpha,
                a: MatRef { offset: a.offset + start * a.col_stride, ..a },
                b: MatRef { offset: b.offset + start * b.row_stride, ..b },
                beta: if start == 0 { beta } else { T::ONE },
            };
            gemm_on(kernel, part, c, threads, workspace);
        }
        return;
    }
    let (a_src, b_src) = (PanelSource::lhs(a), PanelSource::rhs(b));
    let packed_k = kernel.packed_depth(k);
    let width = panel_width(kernel, k, size_of::<P>());
    workspace.a_packs.resize_with(threads, Vec::new);
    let Workspace { a_packs, b_pack: b_buf } = workspace;
    let a_packs = &mut a_packs[..threads];
    for jc in (0..n).step_by(width) {
        let panel = jc..(jc + width).min(n);
        let slivers = panel.len().div_ceil(nr);
        let b_pack = aligned(b_buf, slivers * nr * packed_k);
        let mut jobs = Vec::new();
        let mut rest = &mut *b_pack;
        for pc in (0..k).step_by(kc) {
            let depth = pc..(pc + kc).min(k);
            let packed = kernel.packed_depth(depth.len());
            let (block, tail) = std::mem::take(&mut rest).split_at_mut(slivers * nr * packed);
            rest = tail;
            for (g, group) in block.chunks_mut(PACK_GROUP_SLIVERS * nr * packed).enumerate() {
                let first = panel.start + g * PACK_GROUP_SLIVERS * nr;
                jobs.push((depth.clone(), first..(first + PACK_GROUP_SLIVERS * nr).min(panel.end), group));
            }
        }
        let pack_b = |(depth, lanes, group): (Range<usize>, Range<usize>, &mut [P])| {
            (kernel.pack_b)(b_src, lanes, depth, group);
        };
        if threads > 1 {
            jobs.into_par_iter().for_each(pack_b);
        } else {
            jobs.into_iter().for_each(pack_b);
        }
        let tasks = split_panel(&mut *c, dims, kernel, panel, threads);
        let step = PanelStep { kernel: *kernel, a: a_src, k, slivers, b_pack, alpha, beta };
        run_tasks(&tasks, a_packs, &step);
    }
}

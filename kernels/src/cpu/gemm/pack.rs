//! Packing: copying a block of A or B into the sliver layout the micro-kernels read.
//!
//! A sliver of width `w` over a depth block of `kc` is `kc` runs of `w` consecutive values,
//! `sliver[p * w + lane]`, zero-padded past the operand's edge. Packing is where strides are absorbed:
//! any view (transposed, narrowed, offset) is read once here, so the micro-kernel always streams
//! contiguous memory. The width is a const generic so the inner copies compile to fixed-size moves.
//! Packing may also widen (bf16 operands packed as f32 for the f32 micro-kernels: [`PackFrom`]).
use super::MatRef;
use crate::Float;
use half::bf16;
use std::ops::Range;

/// How a source element lands in a packed buffer: copied (f32, f64) or widened (bf16 to f32, exact).
pub(super) trait PackFrom<S: Copy>: Copy + Default + Send + Sync + 'static {
    fn from_source(value: S) -> Self;

    /// `dst[i] = from_source(src[i])`; the same-type impls copy the run as a whole.
    #[inline(always)]
    fn convert_run(dst: &mut [Self], src: &[S]) {
        for (out, &value) in dst.iter_mut().zip(src) {
            *out = Self::from_source(value);
        }
    }
}

impl<T: Float> PackFrom<T> for T {
    #[inline(always)]
    fn from_source(value: T) -> T {
        value
    }
    #[inline(always)]
    fn convert_run(dst: &mut [T], src: &[T]) {
        dst.copy_from_slice(src);
    }
}

impl PackFrom<bf16> for f32 {
    #[inline(always)]
    fn from_source(value: bf16) -> f32 {
        value.to_f32()
    }
}

/// One operand seen as slivers: `across` runs along the sliver width (rows of A, columns of B),
/// `depth` along k.
#[derive(Clone, Copy)]
pub(super) struct PanelSource<'a, T> {
    pub(super) data: &'a [T],
    pub(super) offset: usize,
    pub(super) across_stride: usize,
    pub(super) depth_stride: usize,
}

impl<'a, T> PanelSource<'a, T> {
    pub(super) fn lhs(a: MatRef<'a, T>) -> Self {
        PanelSource {
            data: a.data,
            offset: a.offset,
            across_stride: a.row_stride,
            depth_stride: a.col_stride,
        }
    }

    pub(super) fn rhs(b: MatRef<'a, T>) -> Self {
        PanelSource {
            data: b.data,
            offset: b.offset,
            across_stride: b.col_stride,
            depth_stride: b.row_stride,
        }
    }
}

/// Packs `lanes` (zero-padded to whole slivers) over `depth` into consecutive slivers in `dst`, whose
/// length is `lanes.len().div_ceil(width) * width * packed_depth` (`packed_depth` is `depth.len()` padded
/// to the kernel's `k_unit`, see `Kernel::packed_depth`).
pub(super) type PackFn<S, P = S> =
    fn(src: PanelSource<'_, S>, lanes: Range<usize>, depth: Range<usize>, dst: &mut [P]);

/// The [`PackFn`] for slivers `W` wide. Reads follow the contiguous stride: one row segment across all
/// slivers per depth step when lanes are contiguous (a row-major B, a transposed A), so each cache line
/// is read once; `W` rows at a time when depth is contiguous (a row-major A, a transposed B).
pub(super) fn pack<T: Float, const W: usize>(
    src: PanelSource<'_, T>,
    lanes: Range<usize>,
    depth: Range<usize>,
    dst: &mut [T],
) {
    pack_into::<T, T, W>(src, lanes, depth, dst);
}

/// [`pack`] from source elements `S` into packed elements `T` (a copy or a widening).
pub(super) fn pack_into<S: Copy, T: PackFrom<S>, const W: usize>(
    src: PanelSource<'_, S>,
    lanes: Range<usize>,
    depth: Range<usize>,
    dst: &mut [T],
) {
    let kc = depth.len();
    assert_eq!(dst.len(), lanes.len().div_ceil(W) * W * kc, "pack: destination length");
    if kc == 0 || lanes.is_empty() {
        return;
    }
    let base = src.offset + depth.start * src.depth_stride;
    if src.across_stride == 1 && src.depth_stride != 1 {
        pack_contiguous_lanes::<S, T, W>(src, lanes, base, kc, dst);
    } else if src.depth_stride == 1 {
        for (s, sliver) in dst.chunks_exact_mut(W * kc).enumerate() {
            let first = lanes.start + s * W;
            if lanes.end - first >= W {
                pack_contiguous_depth::<S, T, W>(src, base + first * src.across_stride, sliver);
            } else {
                pack_strided::<S, T, W>(src, first..lanes.end, base, sliver);
            }
        }
    } else {
        for (s, sliver) in dst.chunks_exact_mut(W * kc).enumerate() {
            let first = lanes.start + s * W;
            pack_strided::<S, T, W>(src, first..lanes.end.min(first + W), base, sliver);
        }
    }
}

/// Lanes contiguous: for each depth step, one contiguous row segment is cut into sliver-wide pieces,
/// prefetching the segment a few depth steps ahead (the rows are too short a run for the hardware
/// prefetcher to lock onto).
fn pack_contiguous_lanes<S: Copy, T: PackFrom<S>, const W: usize>(
    src: PanelSource<'_, S>,
    lanes: Range<usize>,
    base: usize,
    kc: usize,
    dst: &mut [T],
) {
    let count = lanes.len();
    let full = count / W;
    let line = 64 / std::mem::size_of::<S>();
    for p in 0..kc {
        let start = base + p * src.depth_stride + lanes.start;
        for lane in (0..count).step_by(line) {
            prefetch(src.data, start + PREFETCH_DEPTH_AHEAD * src.depth_stride + lane);
        }
        let row = &src.data[start..][..count];
        let pieces = row.chunks_exact(W);
        let rest = pieces.remainder();
        for (s, piece) in pieces.enumerate() {
            T::convert_run(&mut dst[s * W * kc + p * W..][..W], piece);
        }
        if !rest.is_empty() {
            let (head, pad) = dst[full * W * kc + p * W..][..W].split_at_mut(rest.len());
            T::convert_run(head, rest);
            pad.fill(T::default());
        }
    }
}

/// Depth contiguous, one full sliver starting at `data[start]`: `W` rows of `kc` values each are
/// interleaved (a transpose). Rows are taken in groups of at most 8 so the lines being read stay within
/// an L1 set's ways even when the row stride is a multiple of 4 KiB.
fn pack_contiguous_depth<S: Copy, T: PackFrom<S>, const W: usize>(
    src: PanelSource<'_, S>,
    start: usize,
    sliver: &mut [T],
) {
    let kc = sliver.len() / W;
    let rows: [&[S]; W] = std::array::from_fn(|lane| &src.data[start + lane * src.across_stride..][..kc]);
    for group in 0..W.div_ceil(8) {
        let lanes = group * 8..(group * 8 + 8).min(W);
        for (p, out) in sliver.chunks_exact_mut(W).enumerate() {
            for (value, row) in out[lanes.clone()].iter_mut().zip(&rows[lanes.clone()]) {
                *value = T::from_source(row[p]);
            }
        }
    }
}

/// Any strides, one sliver holding `lanes` (at most `W`; the rest is zero padding).
fn pack_strided<S: Copy, T: PackFrom<S>, const W: usize>(
    src: PanelSource<'_, S>,
    lanes: Range<usize>,
    base: usize,
    sliver: &mut [T],
) {
    for (p, out) in sliver.chunks_exact_mut(W).enumerate() {
        let row = base + p * src.depth_stride;
        let (head, pad) = out.split_at_mut(lanes.len());
        for (value, lane) in head.iter_mut().zip(lanes.clone()) {
            *value = T::from_source(src.data[row + lane * src.across_stride]);
        }
        pad.fill(T::default());
    }
}

/// Depth steps ahead that lane-contiguous packing prefetches.
const PREFETCH_DEPTH_AHEAD: usize = 8;

/// Asks the CPU to bring `data[index]` into cache: a hint, skipped when out of range or not on x86-64.
#[inline(always)]
fn prefetch<T>(data: &[T], index: usize) {
    #[cfg(target_arch = "x86_64")]
    if index < data.len() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint that never faults, and the address is inside `data`; SSE (which
        // provides it) is part of the x86-64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(data.as_ptr().add(index).cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, index);
}

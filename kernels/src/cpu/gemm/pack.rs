//! Packing: copying a block of A or B into the sliver layout the micro-kernels read.
//!
//! A sliver of width `w` over a depth block of `kc` is `kc` runs of `w` consecutive values,
//! `sliver[p * w + lane]`, zero-padded past the operand's edge. Packing is where strides are absorbed:
//! any view (transposed, narrowed, offset) is read once here, so the micro-kernel always streams
//! contiguous memory. The width is a const generic so the inner copies compile to fixed-size moves.
use super::MatRef;
use crate::Float;
use std::ops::Range;

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
/// length is `lanes.len().div_ceil(width) * width * depth.len()`.
pub(super) type PackFn<T> =
    fn(src: PanelSource<'_, T>, lanes: Range<usize>, depth: Range<usize>, dst: &mut [T]);

/// The [`PackFn`] for slivers `W` wide. Reads follow the contiguous stride: one row segment across all
/// slivers per depth step when lanes are contiguous (a row-major B, a transposed A), so each cache line
/// is read once; `W` rows at a time when depth is contiguous (a row-major A, a transposed B).
pub(super) fn pack<T: Float, const W: usize>(
    src: PanelSource<'_, T>,
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
        pack_contiguous_lanes::<T, W>(src, lanes, base, kc, dst);
    } else if src.depth_stride == 1 {
        for (s, sliver) in dst.chunks_exact_mut(W * kc).enumerate() {
            let first = lanes.start + s * W;
            if lanes.end - first >= W {
                pack_contiguous_depth::<T, W>(src, base + first * src.across_stride, sliver);
            } else {
                pack_strided::<T, W>(src, first..lanes.end, base, sliver);
            }
        }
    } else {
        for (s, sliver) in dst.chunks_exact_mut(W * kc).enumerate() {
            let first = lanes.start + s * W;
            pack_strided::<T, W>(src, first..lanes.end.min(first + W), base, sliver);
        }
    }
}

/// Lanes contiguous: for each depth step, one contiguous row segment is cut into sliver-wide pieces,
/// prefetching the segment a few depth steps ahead (the rows are too short a run for the hardware
/// prefetcher to lock onto).
fn pack_contiguous_lanes<T: Float, const W: usize>(
    src: PanelSource<'_, T>,
    lanes: Range<usize>,
    base: usize,
    kc: usize,
    dst: &mut [T],
) {
    let count = lanes.len();
    let full = count / W;
    let line = 64 / std::mem::size_of::<T>();
    for p in 0..kc {
        let start = base + p * src.depth_stride + lanes.start;
        for lane in (0..count).step_by(line) {
            prefetch(src.data, start + PREFETCH_DEPTH_AHEAD * src.depth_stride + lane);
        }
        let row = &src.data[start..][..count];
        let pieces = row.chunks_exact(W);
        let rest = pieces.remainder();
        for (s, piece) in pieces.enumerate() {
            dst[s * W * kc + p * W..][..W].copy_from_slice(piece);
        }
        if !rest.is_empty() {
            let (head, pad) = dst[full * W * kc + p * W..][..W].split_at_mut(rest.len());
            head.copy_from_slice(rest);
            pad.fill(T::ZERO);
        }
    }
}

/// Depth contiguous, one full sliver starting at `data[start]`: `W` rows of `kc` values each are
/// interleaved (a transpose). Rows are taken in groups of at most 8 so the lines being read stay within
/// an L1 set's ways even when the row stride is a multiple of 4 KiB.
fn pack_contiguous_depth<T: Float, const W: usize>(src: PanelSource<'_, T>, start: usize, sliver: &mut [T]) {
    let kc = sliver.len() / W;
    let rows: [&[T]; W] = std::array::from_fn(|lane| &src.data[start + lane * src.across_stride..][..kc]);
    for group in 0..W.div_ceil(8) {
        let lanes = group * 8..(group * 8 + 8).min(W);
        for (p, out) in sliver.chunks_exact_mut(W).enumerate() {
            for (value, row) in out[lanes.clone()].iter_mut().zip(&rows[lanes.clone()]) {
                *value = row[p];
            }
        }
    }
}

/// Any strides, one sliver holding `lanes` (at most `W`; the rest is zero padding).
fn pack_strided<T: Float, const W: usize>(
    src: PanelSource<'_, T>,
    lanes: Range<usize>,
    base: usize,
    sliver: &mut [T],
) {
    for (p, out) in sliver.chunks_exact_mut(W).enumerate() {
        let row = base + p * src.depth_stride;
        let (head, pad) = out.split_at_mut(lanes.len());
        for (value, lane) in head.iter_mut().zip(lanes.clone()) {
            *value = src.data[row + lane * src.across_stride];
        }
        pad.fill(T::ZERO);
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

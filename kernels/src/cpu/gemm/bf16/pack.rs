//! Packing bf16 operands as k-pairs, the layout `VDPBF16PS` reads: in a sliver `W` wide, depth step
//! `2q + h` of lane `l` is `sliver[q * 2 * W + 2 * l + h]`, so the two bf16 of one 32-bit lane are
//! consecutive k. A depth block of odd length gets a zero partner for its last step (a zero pair adds
//! nothing: `0 * 0`), and lanes past the operand's edge are zero, as in the f32 packing.
use super::super::pack::PanelSource;
use half::bf16;
use std::ops::Range;

/// The [`super::super::pack::PackFn`] for k-pair slivers `W` wide; `dst` holds
/// `lanes.len().div_ceil(W) * W * depth.len().next_multiple_of(2)` values. Reads follow the contiguous
/// stride: two rows of lanes interleaved per pair step when lanes are contiguous (a row-major B), one pair
/// per lane and step when depth is (a row-major A).
pub(in super::super) fn pack_pairs<const W: usize>(
    src: PanelSource<'_, bf16>,
    lanes: Range<usize>,
    depth: Range<usize>,
    dst: &mut [bf16],
) {
    let kc = depth.len();
    let steps = kc.div_ceil(2);
    assert_eq!(dst.len(), lanes.len().div_ceil(W) * W * 2 * steps, "pack: destination length");
    if kc == 0 || lanes.is_empty() {
        return;
    }
    let base = src.offset + depth.start * src.depth_stride;
    for (s, sliver) in dst.chunks_exact_mut(2 * W * steps).enumerate() {
        let first = lanes.start + s * W;
        let live = (lanes.end - first).min(W);
        let start = base + first * src.across_stride;
        if live == W && src.across_stride == 1 {
            interleave_rows::<W>(src, start, kc, sliver);
        } else if live == W && src.depth_stride == 1 {
            pairs_per_lane::<W>(src, start, kc, sliver);
        } else {
            strided::<W>(src, start, live, kc, sliver);
        }
    }
}

/// Lanes contiguous: for each pair step, rows `2q` and `2q + 1` (W values each) interleaved.
fn interleave_rows<const W: usize>(src: PanelSource<'_, bf16>, start: usize, kc: usize, sliver: &mut [bf16]) {
    let zeros = [bf16::ZERO; W];
    for (q, out) in sliver.chunks_exact_mut(2 * W).enumerate() {
        let even: &[bf16; W] =
            src.data[start + 2 * q * src.depth_stride..][..W].try_into().expect("W values");
        let odd: &[bf16; W] = if 2 * q + 1 < kc {
            src.data[start + (2 * q + 1) * src.depth_stride..][..W].try_into().expect("W values")
        } else {
            &zeros
        };
        for (lane, pair) in out.chunks_exact_mut(2).enumerate() {
            pair[0] = even[lane];
            pair[1] = odd[lane];
        }
    }
}

/// Depth contiguous: each lane's row gives one consecutive pair per step (a transpose of pairs), rows
/// taken in groups of 8 so the lines being read stay within an L1 set's ways.
fn pairs_per_lane<const W: usize>(src: PanelSource<'_, bf16>, start: usize, kc: usize, sliver: &mut [bf16]) {
    let rows: [&[bf16]; W] = std::array::from_fn(|lane| &src.data[start + lane * src.across_stride..][..kc]);
    let full = kc / 2;
    for group in 0..W.div_ceil(8) {
        let lanes = group * 8..(group * 8 + 8).min(W);
        for (q, out) in sliver.chunks_exact_mut(2 * W).take(full).enumerate() {
            for (pair, row) in
                out[2 * lanes.start..2 * lanes.end].chunks_exact_mut(2).zip(&rows[lanes.clone()])
            {
                pair.copy_from_slice(&row[2 * q..2 * q + 2]);
            }
        }
    }
    if kc % 2 == 1 {
        let out = &mut sliver[full * 2 * W..];
        for (pair, row) in out.chunks_exact_mut(2).zip(&rows) {
            pair[0] = row[kc - 1];
            pair[1] = bf16::ZERO;
        }
    }
}

/// Any strides, `live <= W` lanes; the rest is zero.
fn strided<const W: usize>(
    src: PanelSource<'_, bf16>,
    start: usize,
    live: usize,
    kc: usize,
    sliver: &mut [bf16],
) {
    for (q, out) in sliver.chunks_exact_mut(2 * W).enumerate() {
        for (lane, pair) in out.chunks_exact_mut(2).enumerate() {
            for (h, value) in pair.iter_mut().enumerate() {
                let p = 2 * q + h;
                *value = if lane < live && p < kc {
                    src.data[start + p * src.depth_stride + lane * src.across_stride]
                } else {
                    bf16::ZERO
                };
            }
        }
    }
}

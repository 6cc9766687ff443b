//! bf16 <-> f32 conversion on slices, vectorised, and the chunked "load bf16, compute in f32, round once
//! on store" pattern that the bf16 paths of the element-wise kernels share.
//!
//! Widening is exact (a bf16 is the top half of an f32). Rounding is round-to-nearest-even with NaN kept
//! quiet, bit for bit what `half::bf16::from_f32` returns (`kernels/tests/suite/bf16_cpu.rs` checks every
//! class of input on every SIMD level), written without branches so that the loop vectorises: the
//! whole-tensor conversions of a bf16 op ran scalar before, through f64.
use super::simd::{multiversion, Isa};
use crate::float::PARALLEL_MIN_ELEMS;
use half::bf16;
use rayon::prelude::*;

/// Elements converted per step of the chunked paths: 4 KiB of f32 per operand, so a kernel's chunked
/// operands stay in L1 between the widening, the f32 kernel and the rounding.
pub const CHUNK: usize = 1024;

/// The f32 value of a bf16 (exact).
#[inline(always)]
pub fn widen_one(x: bf16) -> f32 {
    f32::from_bits((x.to_bits() as u32) << 16)
}

/// `x` rounded to the nearest bf16, ties to even; a NaN keeps its sign and top payload bits and is made
/// quiet. The same bits as `half::bf16::from_f32`.
#[inline(always)]
pub fn round_one(x: f32) -> bf16 {
    let u = x.to_bits();
    let rounded = (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((u >> 16) | 0x40) as u16;
    bf16::from_bits(if (u & 0x7fff_ffff) > 0x7f80_0000 { quiet_nan } else { rounded })
}

multiversion! {
    fn widen_block(isa: Isa, src: &[bf16], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = widen_one(s);
        }
    }
}

multiversion! {
    fn round_block(isa: Isa, src: &[f32], dst: &mut [bf16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = round_one(s);
        }
    }
}

multiversion! {
    fn round_rows_block(isa: Isa, src: &[&mut [f32]], dst: &mut [&mut [bf16]], at: usize, len: usize) {
        for (d, s) in dst.iter_mut().zip(src) {
            for (d, &s) in d[at..at + len].iter_mut().zip(&s[..len]) {
                *d = round_one(s);
            }
        }
    }
}

/// Row `i` of `src` (its first `cols.len()` elements) rounded into `dst[i][cols]`, for every row of
/// `dst`: [`round`] of a GEMM tile in one call (one dispatch for the tile, not one per row).
pub fn round_rows(src: &[&mut [f32]], dst: &mut [&mut [bf16]], cols: std::ops::Range<usize>) {
    debug_assert!(src.len() >= dst.len());
    round_rows_block(Isa::active(), src, dst, cols.start, cols.len());
}

/// `dst[i] = src[i]` widened to f32, on the calling thread (lengths must match).
pub fn widen(src: &[bf16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    widen_block(Isa::active(), src, dst);
}

/// `dst[i] = src[i]` rounded to bf16, on the calling thread (lengths must match).
pub fn round(src: &[f32], dst: &mut [bf16]) {
    debug_assert_eq!(src.len(), dst.len());
    round_block(Isa::active(), src, dst);
}

/// [`widen`] split over the thread pool for large slices.
pub fn widen_par(src: &[bf16], dst: &mut [f32]) {
    split_par(src, dst, widen_block);
}

/// [`round`] split over the thread pool for large slices.
pub fn round_par(src: &[f32], dst: &mut [bf16]) {
    split_par(src, dst, round_block);
}

/// `convert` over `src` into `dst` (same lengths), on the calling thread below [`PARALLEL_MIN_ELEMS`]
/// elements, else in chunks of that many over the thread pool.
fn split_par<S: Sync, D: Send>(src: &[S], dst: &mut [D], convert: impl Fn(Isa, &[S], &mut [D]) + Sync) {
    let isa = Isa::active();
    if src.len() < PARALLEL_MIN_ELEMS {
        return convert(isa, src, dst);
    }
    dst.par_chunks_mut(PARALLEL_MIN_ELEMS)
        .zip(src.par_chunks(PARALLEL_MIN_ELEMS))
        .for_each(|(d, s)| convert(isa, s, d));
}

/// Widens `CHUNK` elements of each of `N` bf16 inputs at a time into stack buffers and hands them, with
/// `M` f32 output chunks, to `f`; each output is rounded once into its bf16 slice. Inputs and outputs are
/// all as long as `outs[0]`. The f32 kernel `f` sees exactly the values the upcast path would give it, so
/// a kernel whose element `i` depends only on element `i` of its inputs gives the upcast path's bits.
pub fn map_chunks<const N: usize, const M: usize>(
    inputs: [&[bf16]; N],
    mut outs: [&mut [bf16]; M],
    f: impl Fn([&[f32]; N], [&mut [f32]; M]),
) {
    let n = outs.first().map_or(0, |o| o.len());
    let mut wide = [[0.0f32; CHUNK]; N];
    let mut results = [[0.0f32; CHUNK]; M];
    for start in (0..n).step_by(CHUNK) {
        let len = CHUNK.min(n - start);
        for (w, x) in wide.iter_mut().zip(inputs) {
            widen(&x[start..start + len], &mut w[..len]);
        }
        let views: [&[f32]; N] = std::array::from_fn(|i| &wide[i][..len]);
        let mut rest: &mut [[f32; CHUNK]] = &mut results;
        let chunk_outs: [&mut [f32]; M] = std::array::from_fn(|_| {
            let (first, tail) = std::mem::take(&mut rest).split_first_mut().expect("M results");
            rest = tail;
            &mut first[..len]
        });
        f(views, chunk_outs);
        for (r, o) in results.iter().zip(outs.iter_mut()) {
            round(&r[..len], &mut o[start..start + len]);
        }
    }
}

/// [`map_chunks`] split over the thread pool in grains of `PARALLEL_MIN_ELEMS` elements (each a whole
/// number of chunks), for large element-wise ops.
pub fn map_chunks_par<const N: usize, const M: usize>(
    inputs: [&[bf16]; N],
    outs: [&mut [bf16]; M],
    f: impl Fn([&[f32]; N], [&mut [f32]; M]) + Sync,
) {
    let n = outs.first().map_or(0, |o| o.len());
    if n < PARALLEL_MIN_ELEMS {
        return map_chunks(inputs, outs, f);
    }
    // One entry per grain holding the grain of every output.
    let mut per_output: Vec<std::slice::ChunksMut<'_, bf16>> =
        outs.into_iter().map(|o| o.chunks_mut(PARALLEL_MIN_ELEMS)).collect();
    let grains: Vec<Vec<&mut [bf16]>> = (0..n.div_ceil(PARALLEL_MIN_ELEMS))
        .map(|_| per_output.iter_mut().filter_map(Iterator::next).collect())
        .collect();
    grains.into_par_iter().enumerate().for_each(|(g, grain)| {
        let start = g * PARALLEL_MIN_ELEMS;
        let len = grain.first().map_or(0, |o| o.len());
        let parts: [&[bf16]; N] = std::array::from_fn(|k| &inputs[k][start..start + len]);
        let Ok(grain) = <[&mut [bf16]; M]>::try_from(grain) else { return };
        map_chunks(parts, grain, &f);
    });
}

/// `f` applied in place to `data`, a chunk at a time: widened, transformed in f32, rounded once.
pub fn map_in_place(data: &mut [bf16], f: impl Fn(&mut [f32]) + Sync) {
    let run = |data: &mut [bf16]| {
        let mut wide = [0.0f32; CHUNK];
        for chunk in data.chunks_mut(CHUNK) {
            let w = &mut wide[..chunk.len()];
            widen(chunk, w);
            f(w);
            round(w, chunk);
        }
    };
    if data.len() < PARALLEL_MIN_ELEMS {
        return run(data);
    }
    data.par_chunks_mut(PARALLEL_MIN_ELEMS).for_each(run);
}

/// [`map_chunks_par`] for a row-local kernel with one input and one output: each chunk holds whole rows
/// of `row_len` elements (one row when a row is longer than [`CHUNK`]), so `f` sees complete rows, and a
/// kernel whose row `r` depends only on row `r` of its input gives the upcast path's bits.
pub fn map_rows_par(input: &[bf16], out: &mut [bf16], row_len: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    let chunk = (CHUNK / row_len).max(1) * row_len;
    let grain = (PARALLEL_MIN_ELEMS / chunk).max(1) * chunk;
    let buffers = || (vec![0.0f32; chunk], vec![0.0f32; chunk]);
    let run = |bufs: &mut (Vec<f32>, Vec<f32>), start: usize, out: &mut [bf16]| {
        let (wide, result) = bufs;
        for (k, o) in out.chunks_mut(chunk).enumerate() {
            let (from, len) = (start + k * chunk, o.len());
            widen(&input[from..from + len], &mut wide[..len]);
            f(&wide[..len], &mut result[..len]);
            round(&result[..len], o);
        }
    };
    if out.len() <= grain {
        return run(&mut buffers(), 0, out);
    }
    out.par_chunks_mut(grain).enumerate().for_each_init(buffers, |bufs, (g, o)| run(bufs, g * grain, o));
}

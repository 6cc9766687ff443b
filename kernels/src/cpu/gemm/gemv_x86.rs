//! x86-64 register tiles of the few-row path (`gemv.rs`): AVX2+FMA and AVX-512F, f32, f64 and bf16
//! operands with f32 accumulators, all six from one macro (as the GEMM micro-kernels in `x86.rs`), so
//! the AVX-512 kernels share every line of logic with the AVX2 ones. A bf16 tile differs only in how it
//! loads a B run: 16 (or 8) bf16 zero-extended to 32-bit lanes and shifted into the top half, which is
//! the f32 of the same value (exact), so a bf16 tile's sums are the f32 tile's on the widened values.
//!
//! A tile is `R x TILE` accumulator lanes (`R x NV` vectors): per depth step, `NV` loads of a B row's
//! run, `R` broadcasts of A's column, `R * NV` independent FMAs. f32 on AVX-512 at R = 8 is 16
//! accumulators of 32 registers; wider combinations spill some accumulators to L1, which a product
//! bound by memory bandwidth does not notice.
use super::gemv::{Params, TileFn, TILE};
use super::kernel::KernelPath;
use crate::Float;
use half::bf16;
use std::any::Any;
use std::arch::x86_64::*;
use std::mem::size_of;

/// How many B rows ahead the first tile of a chunk prefetches: enough requests in flight to cover the
/// memory latency (tens of depth steps run in that time), few enough to stay in L1.
const PREFETCH_ROWS: usize = 16;

/// One depth block's call: whether it is the first (which applies beta), B's row stride, and how many
/// cache lines of each row `PREFETCH_ROWS` ahead to prefetch.
#[derive(Clone, Copy)]
struct Step {
    first_block: bool,
    b_stride: usize,
    prefetch_lines: usize,
}

macro_rules! gemv_tile {
    (
        $(#[$doc:meta])*
        $name:ident / $inner:ident: $features:literal, $t:ty, B $s:ty, $lanes:literal lanes,
        $zero:ident, $load:ident, $load_b:ident, $store:ident, $splat:ident, $mul:ident, $fmadd:ident
    ) => {
        $(#[$doc])*
        /// A [`TileFn`].
        ///
        /// # Safety
        /// The CPU must have the target features named in the `target_feature` of the inner function.
        unsafe fn $name<const R: usize>(
            params: Params<$t>,
            block: usize,
            a: &[[$t; R]],
            b: &[$s],
            b_stride: usize,
            prefetch: usize,
            out: &mut [[$t; TILE]; R],
        ) {
            let Some(last) = a.len().checked_sub(1) else { return };
            assert!(b.len() >= last * b_stride + TILE, "gemv tile: B holds {} values", b.len());
            let step = Step { first_block: block == 0, b_stride, prefetch_lines: (prefetch * size_of::<$s>()).div_ceil(64) };
            // SAFETY: the caller guarantees the CPU features; B's rows `p < a.len()` each hold TILE values
            // from `p * b_stride` (asserted above); `out` is borrowed mutably for the call.
            unsafe { $inner::<R>(params, step, a, b.as_ptr(), out) }
        }

        /// # Safety
        /// The CPU has the features; `b.add(p * b_stride)` points at TILE readable values for
        /// `p < a.len()`.
        #[target_feature(enable = $features)]
        unsafe fn $inner<const R: usize>(
            params: Params<$t>,
            step: Step,
            a: &[[$t; R]],
            b: *const $s,
            out: &mut [[$t; TILE]; R],
        ) {
            const NV: usize = TILE / $lanes;
            let Params { alpha, beta, .. } = params;
            let Step { first_block, b_stride, prefetch_lines } = step;
            let line = 64 / size_of::<$s>();
            // SAFETY: B loads stay inside the rows the caller guarantees (depth step p reads row
            // `p < a.len()`, lanes `0..TILE`); prefetch addresses are formed with wrapping arithmetic and
            // never dereferenced (a prefetch cannot fault); `out` rows are TILE values each. Unaligned
            // loads and stores throughout.
            unsafe {
                let mut acc = [[$zero(); NV]; R];
                let mut b_row = b;
                for a_p in a {
                    let ahead = b_row.wrapping_add(PREFETCH_ROWS * b_stride);
                    for l in 0..prefetch_lines {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l * line).cast());
                    }
                    let mut b_v = [$zero(); NV];
                    for (v, b_vv) in b_v.iter_mut().enumerate() {
                        *b_vv = $load_b(b_row.add(v * $lanes));
                    }
                    for (acc_row, &a_i) in acc.iter_mut().zip(a_p) {
                        let a_i = $splat(a_i);
                        for (acc_v, &b_vv) in acc_row.iter_mut().zip(&b_v) {
                            *acc_v = $fmadd(a_i, b_vv, *acc_v);
                        }
                    }
                    b_row = b_row.wrapping_add(b_stride);
                }
                // The micro-kernels' combine (`Update`): overwrite, scale by beta, or accumulate.
                let alpha_v = $splat(alpha);
                for (out_row, acc_row) in out.iter_mut().zip(&acc) {
                    for (v, &acc_v) in acc_row.iter().enumerate() {
                        let dst = out_row.as_mut_ptr().add(v * $lanes);
                        let value = match first_block {
                            true if beta == 0.0 => $mul(alpha_v, acc_v),
                            true => $fmadd(alpha_v, acc_v, $mul($splat(beta), $load(dst))),
                            false => $fmadd(alpha_v, acc_v, $load(dst)),
                        };
                        $store(dst, value);
                    }
                }
            }
        }
    };
}

/// 8 bf16 at `p` as the 8 f32 of the same values (zero-extend, shift into the top half).
///
/// # Safety
/// The CPU has AVX2; `p` points at 8 readable bf16.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_bf16_256(p: *const bf16) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes at `p` (an unaligned load).
    unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))) }
}

/// 16 bf16 at `p` as the 16 f32 of the same values.
///
/// # Safety
/// The CPU has AVX-512F; `p` points at 16 readable bf16.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_bf16_512(p: *const bf16) -> __m512 {
    // SAFETY: the caller guarantees 32 readable bytes at `p` (an unaligned load).
    unsafe {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()))))
    }
}

gemv_tile!(
    /// AVX2+FMA f32: 4 vectors of 8 per row.
    avx2_f32 / avx2_f32_inner: "avx2,fma", f32, B f32, 8 lanes,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_mul_ps,
    _mm256_fmadd_ps
);

gemv_tile!(
    /// AVX2+FMA f64: 8 vectors of 4 per row.
    avx2_f64 / avx2_f64_inner: "avx2,fma", f64, B f64, 4 lanes,
    _mm256_setzero_pd, _mm256_loadu_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd, _mm256_mul_pd,
    _mm256_fmadd_pd
);

gemv_tile!(
    /// AVX2+FMA, bf16 B widened to f32: 4 vectors of 8 per row.
    avx2_bf16 / avx2_bf16_inner: "avx2,fma", f32, B bf16, 8 lanes,
    _mm256_setzero_ps, _mm256_loadu_ps, load_bf16_256, _mm256_storeu_ps, _mm256_set1_ps, _mm256_mul_ps,
    _mm256_fmadd_ps
);

gemv_tile!(
    /// AVX-512F f32: 2 vectors of 16 per row.
    avx512_f32 / avx512_f32_inner: "avx512f", f32, B f32, 16 lanes,
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_mul_ps,
    _mm512_fmadd_ps
);

gemv_tile!(
    /// AVX-512F f64: 4 vectors of 8 per row.
    avx512_f64 / avx512_f64_inner: "avx512f", f64, B f64, 8 lanes,
    _mm512_setzero_pd, _mm512_loadu_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd, _mm512_mul_pd,
    _mm512_fmadd_pd
);

gemv_tile!(
    /// AVX-512F, bf16 B widened to f32: 2 vectors of 16 per row.
    avx512_bf16 / avx512_bf16_inner: "avx512f", f32, B bf16, 16 lanes,
    _mm512_setzero_ps, _mm512_loadu_ps, load_bf16_512, _mm512_storeu_ps, _mm512_set1_ps, _mm512_mul_ps,
    _mm512_fmadd_ps
);

/// The SIMD tile of `path` for accumulators `T`, B elements `S` and `R` rows, or `None` for the portable
/// path, for a path this CPU lacks (so a returned function's features are present), or for a pair of
/// element types without one.
pub(super) fn tile_for<T: Float, S: 'static, const R: usize>(path: KernelPath) -> Option<TileFn<T, S, R>> {
    if path == KernelPath::Portable || !path.is_available() {
        return None;
    }
    type Tiles<const R: usize> = (TileFn<f32, f32, R>, TileFn<f64, f64, R>, TileFn<f32, bf16, R>);
    let tiles: Tiles<R> = match path {
        KernelPath::Avx512F => (avx512_f32::<R>, avx512_f64::<R>, avx512_bf16::<R>),
        _ => (avx2_f32::<R>, avx2_f64::<R>, avx2_bf16::<R>),
    };
    let candidates: [&dyn Any; 3] = [&tiles.0, &tiles.1, &tiles.2];
    let tile = candidates.into_iter().find_map(|tile| tile.downcast_ref::<TileFn<T, S, R>>().copied());
    tile
}

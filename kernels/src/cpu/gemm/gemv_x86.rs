//! x86-64 register tiles of the few-row path (`gemv.rs`): AVX2+FMA and AVX-512F, f32 and f64, all four
//! from one macro (as the GEMM micro-kernels in `x86.rs`), so the AVX-512 kernels share every line of
//! logic with the AVX2 ones.
//!
//! A tile is `R x TILE` accumulator lanes (`R x NV` vectors): per depth step, `NV` loads of a B row's
//! run, `R` broadcasts of A's column, `R * NV` independent FMAs. f32 on AVX-512 at R = 8 is 16
//! accumulators of 32 registers; wider combinations spill some accumulators to L1, which a product
//! bound by memory bandwidth does not notice.
use super::gemv::{Params, TileFn, TILE};
use super::kernel::KernelPath;
use crate::Float;
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
        $name:ident / $inner:ident: $features:literal, $t:ty, $lanes:literal lanes,
        $zero:ident, $load:ident, $store:ident, $splat:ident, $mul:ident, $fmadd:ident
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
            b: &[$t],
            b_stride: usize,
            prefetch: usize,
            out: &mut [[$t; TILE]; R],
        ) {
            let Some(last) = a.len().checked_sub(1) else { return };
            assert!(b.len() >= last * b_stride + TILE, "gemv tile: B holds {} values", b.len());
            let step = Step { first_block: block == 0, b_stride, prefetch_lines: (prefetch * size_of::<$t>()).div_ceil(64) };
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
            b: *const $t,
            out: &mut [[$t; TILE]; R],
        ) {
            const NV: usize = TILE / $lanes;
            let Params { alpha, beta, .. } = params;
            let Step { first_block, b_stride, prefetch_lines } = step;
            let line = 64 / size_of::<$t>();
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
                        *b_vv = $load(b_row.add(v * $lanes));
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

gemv_tile!(
    /// AVX2+FMA f32: 4 vectors of 8 per row.
    avx2_f32 / avx2_f32_inner: "avx2,fma", f32, 8 lanes,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_mul_ps, _mm256_fmadd_ps
);

gemv_tile!(
    /// AVX2+FMA f64: 8 vectors of 4 per row.
    avx2_f64 / avx2_f64_inner: "avx2,fma", f64, 4 lanes,
    _mm256_setzero_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd, _mm256_mul_pd, _mm256_fmadd_pd
);

gemv_tile!(
    /// AVX-512F f32: 2 vectors of 16 per row.
    avx512_f32 / avx512_f32_inner: "avx512f", f32, 16 lanes,
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_mul_ps, _mm512_fmadd_ps
);

gemv_tile!(
    /// AVX-512F f64: 4 vectors of 8 per row.
    avx512_f64 / avx512_f64_inner: "avx512f", f64, 8 lanes,
    _mm512_setzero_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd, _mm512_mul_pd, _mm512_fmadd_pd
);

/// The SIMD tile of `path` for `T` and `R` rows, or `None` for the portable path, for a path this CPU
/// lacks (so a returned function's features are present), or for an element type without one.
pub(super) fn tile_for<T: Float, const R: usize>(path: KernelPath) -> Option<TileFn<T, R>> {
    if path == KernelPath::Portable || !path.is_available() {
        return None;
    }
    let (f32_tile, f64_tile): (TileFn<f32, R>, TileFn<f64, R>) = match path {
        KernelPath::Avx512F => (avx512_f32::<R>, avx512_f64::<R>),
        _ => (avx2_f32::<R>, avx2_f64::<R>),
    };
    let (f32_tile, f64_tile): (&dyn Any, &dyn Any) = (&f32_tile, &f64_tile);
    f32_tile.downcast_ref::<TileFn<T, R>>().or_else(|| f64_tile.downcast_ref::<TileFn<T, R>>()).copied()
}

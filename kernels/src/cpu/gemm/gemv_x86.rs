//! x86-64 passes of the few-row path (`gemv.rs`): AVX2+FMA and AVX-512F, f32, f64 and bf16 operands
//! with f32 accumulators, all six from one macro (as the GEMM micro-kernels in `x86.rs`), so the AVX-512
//! kernels share every line of logic with the AVX2 ones. A bf16 pass differs only in how it loads a B
//! run: 16 (or 8) bf16 zero-extended to 32-bit lanes and shifted into the top half, which is the f32 of
//! the same value (exact), so a bf16 pass's sums are the f32 pass's on the widened values.
//!
//! A pass over `U` depth steps (`U = STEPS`, or 1 for a block's last few steps) broadcasts the `U x R`
//! values of A once; then for each vector of columns it loads the `U` rows' runs of B, and for each row
//! of C loads its accumulator vector, applies the `U` multiply-adds in depth order and stores it. Where
//! the broadcasts outnumber the registers (AVX2 at R = 8: 32 of 16) the compiler keeps them on the stack
//! and the multiply-adds read them from L1, which a product bound by memory bandwidth does not notice.
use super::gemv::{SpanFn, STEPS};
use super::kernel::KernelPath;
use crate::Float;
use half::bf16;
use std::any::Any;
use std::arch::x86_64::*;

/// How many rows ahead of the rows it reads a pass prefetches (the same columns): a hint that hides the
/// memory latency at the start of every product and at each row's run, which the hardware prefetcher
/// would otherwise have to detect again. Measured on an AVX2 Zen 3: the 336 products of a cola-350m
/// decode step (bf16, one thread) took 42.7 ms without it and 27.1 ms with it; 4 and 16 rows ahead ran
/// within the noise of 8.
const AHEAD: usize = 8;

macro_rules! gemv_span {
    (
        $(#[$doc:meta])*
        $name:ident / $inner:ident / $pass:ident: $features:literal, $t:ty, B $s:ty, $lanes:literal lanes,
        $zero:ident, $load:ident, $load_b:ident, $store:ident, $splat:ident, $fmadd:ident
    ) => {
        $(#[$doc])*
        /// A [`SpanFn`].
        ///
        /// # Safety
        /// The CPU must have the target features named in the `target_feature` of the inner function.
        unsafe fn $name<const R: usize>(
            a: &[[$t; R]],
            b: &[$s],
            b_stride: usize,
            acc: &mut [$t],
            acc_stride: usize,
            cols: usize,
        ) {
            let Some(last) = a.len().checked_sub(1) else { return };
            assert!(cols % $lanes == 0, "gemv pass: {cols} columns are not whole vectors");
            assert!(b.len() >= last * b_stride + cols, "gemv pass: B holds {} values", b.len());
            assert!(R == 0 || acc.len() >= (R - 1) * acc_stride + cols, "gemv pass: {} accumulators", acc.len());
            // SAFETY: the caller guarantees the CPU features; B's rows `p < a.len()` each hold `cols`
            // values from `p * b_stride`, and the accumulator rows `i < R` hold `cols` from
            // `i * acc_stride` (asserted above); `acc` is borrowed mutably for the call.
            unsafe { $inner::<R>(a, b.as_ptr(), b_stride, acc.as_mut_ptr(), acc_stride, cols) }
        }

        /// # Safety
        /// The CPU has the features; `b.add(p * b_stride)` points at `cols` readable values for
        /// `p < a.len()`, `acc.add(i * acc_stride)` at `cols` writable ones for `i < R`; `cols` is a
        /// multiple of the vector width.
        #[target_feature(enable = $features)]
        unsafe fn $inner<const R: usize>(
            a: &[[$t; R]],
            b: *const $s,
            b_stride: usize,
            acc: *mut $t,
            acc_stride: usize,
            cols: usize,
        ) {
            let mut groups = a.chunks_exact(STEPS);
            let mut b_rows = b;
            // SAFETY: each pass reads the rows of its steps, which the caller guarantees; the pointer is
            // advanced with wrapping arithmetic and dereferenced only for rows that exist.
            unsafe {
                for group in groups.by_ref() {
                    $pass::<R, STEPS>(group, b_rows, b_stride, acc, acc_stride, cols);
                    b_rows = b_rows.wrapping_add(STEPS * b_stride);
                }
                for step in groups.remainder() {
                    $pass::<R, 1>(std::slice::from_ref(step), b_rows, b_stride, acc, acc_stride, cols);
                    b_rows = b_rows.wrapping_add(b_stride);
                }
            }
        }

        /// `U` depth steps (`a.len() == U`) over every column vector and accumulator row.
        ///
        /// # Safety
        /// As the inner function, for the `U` rows of B from `b`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $pass<const R: usize, const U: usize>(
            a: &[[$t; R]],
            b: *const $s,
            b_stride: usize,
            acc: *mut $t,
            acc_stride: usize,
            cols: usize,
        ) {
            let mut a_v = [[$zero(); R]; U];
            for (a_vu, a_u) in a_v.iter_mut().zip(a) {
                for (v, &x) in a_vu.iter_mut().zip(a_u) {
                    *v = $splat(x);
                }
            }
            // SAFETY: column vectors `j < cols` of B rows `u < U` and accumulator rows `i < R` lie in
            // what the caller guarantees; prefetch addresses (rows ahead, possibly past B) are formed with
            // wrapping arithmetic and never dereferenced (a prefetch cannot fault). Unaligned loads and
            // stores throughout.
            unsafe {
                for j in (0..cols).step_by($lanes) {
                    let mut b_v = [$zero(); U];
                    for (u, b_vu) in b_v.iter_mut().enumerate() {
                        *b_vu = $load_b(b.add(u * b_stride + j));
                        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((u + AHEAD) * b_stride + j).cast());
                    }
                    for i in 0..R {
                        let dst = acc.add(i * acc_stride + j);
                        let mut sum = $load(dst);
                        for (a_vu, &b_vu) in a_v.iter().zip(&b_v) {
                            sum = $fmadd(a_vu[i], b_vu, sum);
                        }
                        $store(dst, sum);
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

gemv_span!(
    /// AVX2+FMA f32: vectors of 8.
    avx2_f32 / avx2_f32_inner / avx2_f32_pass: "avx2,fma", f32, B f32, 8 lanes,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps
);

gemv_span!(
    /// AVX2+FMA f64: vectors of 4.
    avx2_f64 / avx2_f64_inner / avx2_f64_pass: "avx2,fma", f64, B f64, 4 lanes,
    _mm256_setzero_pd, _mm256_loadu_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd, _mm256_fmadd_pd
);

gemv_span!(
    /// AVX2+FMA, bf16 B widened to f32: vectors of 8.
    avx2_bf16 / avx2_bf16_inner / avx2_bf16_pass: "avx2,fma", f32, B bf16, 8 lanes,
    _mm256_setzero_ps, _mm256_loadu_ps, load_bf16_256, _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps
);

gemv_span!(
    /// AVX-512F f32: vectors of 16.
    avx512_f32 / avx512_f32_inner / avx512_f32_pass: "avx512f", f32, B f32, 16 lanes,
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps
);

gemv_span!(
    /// AVX-512F f64: vectors of 8.
    avx512_f64 / avx512_f64_inner / avx512_f64_pass: "avx512f", f64, B f64, 8 lanes,
    _mm512_setzero_pd, _mm512_loadu_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd, _mm512_fmadd_pd
);

gemv_span!(
    /// AVX-512F, bf16 B widened to f32: vectors of 16.
    avx512_bf16 / avx512_bf16_inner / avx512_bf16_pass: "avx512f", f32, B bf16, 16 lanes,
    _mm512_setzero_ps, _mm512_loadu_ps, load_bf16_512, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps
);

/// The SIMD pass of `path` for accumulators `T`, B elements `S` and `R` rows, with its vector width in
/// columns, or `None` for the portable path, for a path this CPU lacks (so a returned function's features
/// are present), or for a pair of element types without one.
pub(super) fn span_for<T: Float, S: 'static, const R: usize>(
    path: KernelPath,
) -> Option<(SpanFn<T, S, R>, usize)> {
    if path == KernelPath::Portable || !path.is_available() {
        return None;
    }
    type Spans<const R: usize> = (SpanFn<f32, f32, R>, SpanFn<f64, f64, R>, SpanFn<f32, bf16, R>);
    let (spans, lanes): (Spans<R>, [usize; 3]) = match path {
        KernelPath::Avx512F => ((avx512_f32::<R>, avx512_f64::<R>, avx512_bf16::<R>), [16, 8, 16]),
        _ => ((avx2_f32::<R>, avx2_f64::<R>, avx2_bf16::<R>), [8, 4, 8]),
    };
    let candidates: [&dyn Any; 3] = [&spans.0, &spans.1, &spans.2];
    let found = candidates
        .into_iter()
        .zip(lanes)
        .find_map(|(span, lanes)| span.downcast_ref::<SpanFn<T, S, R>>().map(|&span| (span, lanes)));
    found
}

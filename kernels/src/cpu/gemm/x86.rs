//! x86-64 micro-kernels: AVX2+FMA (16 256-bit registers) and AVX-512F (32 512-bit registers), each for
//! f32 and f64, all four generated from one macro so the AVX-512 kernels (which the development machine
//! cannot run) share every line of logic with the AVX2 ones it does test and tune.
//!
//! Shape of a kernel: `MR x NV` accumulator vectors hold the `MR x (NV * lanes)` tile. Each depth step
//! loads `NV` vectors of the B sliver and broadcasts `MR` values of the A sliver, then issues `MR * NV`
//! independent FMAs. With `MR = 6, NV = 2` on AVX2 that is 12 accumulators + 2 B vectors + 1 broadcast =
//! 15 of 16 registers, and 12 FMAs per 8 loads, which keeps both FMA pipes of a Zen 3 / Haswell core
//! busy; AVX-512 doubles MR to 12 (24 accumulators of 32 registers). C's rows are prefetched before the
//! depth loop so the final read-modify-write of the tile does not stall on memory.
use super::kernel::{Kernel, KernelPath, MicroKernelFn, Update};
use super::pack::pack;
use super::pack_x86::{pack_a_avx2_f32, pack_a_avx512_f32};
use std::arch::x86_64::*;

macro_rules! simd_micro_kernel {
    (
        $(#[$doc:meta])*
        $name:ident / $inner:ident: $features:literal, $t:ty, $mr:literal x $nv:literal vectors of $lanes:literal,
        $zero:ident, $load:ident, $store:ident, $splat:ident, $mul:ident, $fmadd:ident
    ) => {
        $(#[$doc])*
        /// A [`super::kernel::MicroKernelFn`].
        ///
        /// # Safety
        /// The CPU must have the target features named in the `target_feature` of the inner function.
        unsafe fn $name(
            a: &[$t],
            b: &[$t],
            c: &mut [&mut [$t]],
            col: usize,
            alpha: $t,
            update: Update<$t>,
        ) {
            const NR: usize = $lanes * $nv;
            let kc = b.len() / NR;
            assert!(
                a.len() == $mr * kc && b.len() == NR * kc && c.len() >= $mr,
                "micro-kernel: sliver or tile lengths"
            );
            let mut rows = [std::ptr::null_mut::<$t>(); $mr];
            for (row, c_row) in rows.iter_mut().zip(c.iter_mut()) {
                *row = c_row[col..col + NR].as_mut_ptr();
            }
            // SAFETY: the caller guarantees the CPU features; `a` and `b` hold `kc` depth steps of MR and
            // NR values (asserted above), and each `rows[i]` points at NR elements of a distinct row of C
            // (sliced above) that this function borrows mutably for the call.
            unsafe { $inner(kc, a.as_ptr(), b.as_ptr(), rows, alpha, update) }
        }

        /// # Safety
        /// The CPU has the features; `a` points at `kc * MR` and `b` at `kc * NR` readable values; each
        /// `c[i]` at NR writable values, no two overlapping.
        #[target_feature(enable = $features)]
        unsafe fn $inner(
            kc: usize,
            a: *const $t,
            b: *const $t,
            c: [*mut $t; $mr],
            alpha: $t,
            update: Update<$t>,
        ) {
            const NR: usize = $lanes * $nv;
            // SAFETY: every pointer offset stays inside the ranges the caller guarantees: depth step p
            // reads `a[p * MR..][..MR]` and `b[p * NR..][..NR]` for p < kc, and the tile store touches
            // `c[i][..NR]`; unaligned loads and stores are used throughout.
            unsafe {
                for &row in &c {
                    _mm_prefetch::<_MM_HINT_T0>(row.cast_const().cast());
                    _mm_prefetch::<_MM_HINT_T0>(row.add(NR - 1).cast_const().cast());
                }
                let mut acc = [[$zero(); $nv]; $mr];
                let (mut a, mut b) = (a, b);
                for _ in 0..kc {
                    let mut b_row = [$zero(); $nv];
                    for (v, b_v) in b_row.iter_mut().enumerate() {
                        *b_v = $load(b.add(v * $lanes));
                    }
                    for (i, acc_row) in acc.iter_mut().enumerate() {
                        let a_i = $splat(*a.add(i));
                        for (acc_v, &b_v) in acc_row.iter_mut().zip(&b_row) {
                            *acc_v = $fmadd(a_i, b_v, *acc_v);
                        }
                    }
                    a = a.add($mr);
                    b = b.add(NR);
                }
                let alpha = $splat(alpha);
                for (&row, acc_row) in c.iter().zip(&acc) {
                    for (v, &acc_v) in acc_row.iter().enumerate() {
                        let dst = row.add(v * $lanes);
                        let value = match update {
                            Update::Overwrite => $mul(alpha, acc_v),
                            Update::Scale(beta) => $fmadd(alpha, acc_v, $mul($splat(beta), $load(dst))),
                            Update::Accumulate => $fmadd(alpha, acc_v, $load(dst)),
                        };
                        $store(dst, value);
                    }
                }
            }
        }
    };
}

simd_micro_kernel!(
    /// AVX2+FMA f32, 6 x 16 tile.
    avx2_f32_6x16 / avx2_f32_6x16_inner: "avx2,fma", f32, 6 x 2 vectors of 8,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_mul_ps, _mm256_fmadd_ps
);

simd_micro_kernel!(
    /// AVX2+FMA f64, 6 x 8 tile.
    avx2_f64_6x8 / avx2_f64_6x8_inner: "avx2,fma", f64, 6 x 2 vectors of 4,
    _mm256_setzero_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd, _mm256_mul_pd, _mm256_fmadd_pd
);

simd_micro_kernel!(
    /// AVX-512F f32, 12 x 32 tile.
    avx512_f32_12x32 / avx512_f32_12x32_inner: "avx512f", f32, 12 x 2 vectors of 16,
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_mul_ps, _mm512_fmadd_ps
);

simd_micro_kernel!(
    /// AVX-512F f64, 12 x 16 tile.
    avx512_f64_12x16 / avx512_f64_12x16_inner: "avx512f", f64, 12 x 2 vectors of 8,
    _mm512_setzero_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd, _mm512_mul_pd, _mm512_fmadd_pd
);

/// AVX2+FMA f32, when the CPU has it. Block sizes tuned on Zen 3 (32 KiB L1d, 512 KiB L2): the
/// 256-deep B sliver is 16 KiB, an A block 144 x 256 is 144 KiB.
pub(super) fn avx2_f32() -> Option<Kernel<f32>> {
    KernelPath::Avx2Fma.is_available().then_some(Kernel {
        mr: 6,
        nr: 16,
        mc: 144,
        kc: 256,
        nc: 4080,
        k_unit: 1,
        pack_a: pack_a_avx2_f32,
        pack_b: pack::<f32, 16>,
        path: KernelPath::Avx2Fma,
        compute: avx2_f32_6x16,
    })
}

/// AVX2+FMA f64, when the CPU has it: the same bytes per block as f32.
pub(super) fn avx2_f64() -> Option<Kernel<f64>> {
    KernelPath::Avx2Fma.is_available().then_some(Kernel {
        mr: 6,
        nr: 8,
        mc: 72,
        kc: 256,
        nc: 4080,
        k_unit: 1,
        pack_a: pack::<f64, 6>,
        pack_b: pack::<f64, 8>,
        path: KernelPath::Avx2Fma,
        compute: avx2_f64_6x8,
    })
}

/// AVX-512F f32, when the CPU has it.
pub(super) fn avx512_f32() -> Option<Kernel<f32>> {
    KernelPath::Avx512F.is_available().then(|| avx512_f32_blocking(avx512_f32_12x32))
}

/// AVX-512F f64, when the CPU has it.
pub(super) fn avx512_f64() -> Option<Kernel<f64>> {
    KernelPath::Avx512F.is_available().then(|| avx512_f64_blocking(avx512_f64_12x16))
}

/// The AVX-512 f32 kernel around `compute` (its micro-kernel, or in tests a portable one of the same
/// shape). Block sizes measured on an Intel Xeon with AVX-512 (48 KiB L1d, 2 MiB L2 per core): KC = 256
/// makes the 32-wide B sliver 32 KiB, which stays in L1 next to the 12 KiB A sliver streaming past it,
/// and halves the passes over C against KC = 128 (about 4% faster on one thread); the A block is
/// 288 x 256 (288 KiB of L2). A row-major A is packed by register transposes (`pack_x86`).
fn avx512_f32_blocking(compute: MicroKernelFn<f32>) -> Kernel<f32> {
    Kernel {
        mr: 12,
        nr: 32,
        mc: 288,
        kc: 256,
        nc: 4096,
        k_unit: 1,
        pack_a: pack_a_avx512_f32::<12>,
        pack_b: pack::<f32, 32>,
        path: KernelPath::Avx512F,
        compute,
    }
}

/// The AVX-512 f64 kernel around `compute`: the f32 blocking's first, untuned guess (KC = 128, so the
/// 16-wide f64 B sliver is 16 KiB), kept as it is.
fn avx512_f64_blocking(compute: MicroKernelFn<f64>) -> Kernel<f64> {
    Kernel {
        mr: 12,
        nr: 16,
        mc: 144,
        kc: 128,
        nc: 4096,
        k_unit: 1,
        pack_a: pack::<f64, 12>,
        pack_b: pack::<f64, 16>,
        path: KernelPath::Avx512F,
        compute,
    }
}

macro_rules! fma_probe_loop {
    ($(#[$doc:meta])* $name:ident: $features:literal, $chains:literal chains, $zero:ident, $splat:ident, $fmadd:ident, $add:ident, $store:ident, $lanes:literal) => {
        $(#[$doc])*
        /// # Safety
        /// The CPU must have the target features.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name(steps: usize, x: f32, y: f32) -> f32 {
            let (x, y) = ($splat(x), $splat(y));
            let mut acc = [$zero(); $chains];
            for _ in 0..steps {
                for chain in acc.iter_mut() {
                    *chain = $fmadd(*chain, x, y);
                }
            }
            let total = acc.iter().fold($zero(), |sum, &chain| $add(sum, chain));
            let mut lanes = [0.0f32; $lanes];
            // SAFETY: `lanes` holds exactly one vector of f32.
            unsafe { $store(lanes.as_mut_ptr(), total) };
            lanes.iter().sum()
        }
    };
}

fma_probe_loop!(
    /// 12 independent 8-lane FMA chains: the AVX2 micro-kernel's accumulators without its loads.
    fma_probe_avx2: "avx2,fma", 12 chains, _mm256_setzero_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps,
    _mm256_storeu_ps, 8
);

fma_probe_loop!(
    /// 24 independent 16-lane FMA chains: the AVX-512 micro-kernel's accumulators without its loads.
    fma_probe_avx512: "avx512f", 24 chains, _mm512_setzero_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps,
    _mm512_storeu_ps, 16
);

#[cfg(test)]
mod tests {
    use super::super::driver::{gemm_on, Product, Workspace};
    use super::super::portable::micro_kernel;
    use super::super::{Dims, MatRef};
    use super::*;
    use crate::Float;

    /// A `rows x cols` matrix, row-major or (transposed) column-major, with deterministic values.
    fn matrix<T: Float>(rows: usize, cols: usize, transposed: bool, seed: u64) -> (Vec<T>, usize, usize) {
        let data = (0..rows * cols)
            .map(|i| T::from_f64(((i as u64 * 2654435761 + seed) % 1000) as f64 / 500.0 - 1.0))
            .collect();
        (data, if transposed { 1 } else { cols }, if transposed { rows } else { 1 })
    }

    fn check<T: Float>(kernel: Kernel<T>, tol: f64) {
        for (m, n, k) in [(13, 33, 129), (97, 65, 300), (300, 20, 5), (12, 400, 128), (5, 31, 127)] {
            for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let (a, a_rs, a_cs) = matrix::<T>(m, k, a_t, 1);
                let (b, b_rs, b_cs) = matrix::<T>(k, n, b_t, 2);
                let a_view = MatRef { data: &a, offset: 0, row_stride: a_rs, col_stride: a_cs };
                let b_view = MatRef { data: &b, offset: 0, row_stride: b_rs, col_stride: b_cs };
                let product =
                    Product { dims: Dims { m, n, k }, alpha: T::ONE, a: a_view, b: b_view, beta: T::ZERO };
                for threads in [1, 2] {
                    let mut c = vec![T::from_f64(f64::NAN); m * n];
                    gemm_on(&kernel, product, &mut c, threads, &mut Workspace::default());
                    for i in 0..m {
                        for j in 0..n {
                            let terms = (0..k)
                                .map(|p| a[i * a_rs + p * a_cs].to_f64() * b[p * b_rs + j * b_cs].to_f64());
                            let (sum, magnitude) = terms.fold((0.0, 0.0), |(s, g), t| (s + t, g + t.abs()));
                            let got = c[i * n + j].to_f64();
                            assert!(
                                (got - sum).abs() <= tol * magnitude,
                                "{} {m}x{n}x{k} a_t={a_t} b_t={b_t} threads={threads}: C[{i}][{j}] = {got}, expected {sum}",
                                T::NAME
                            );
                        }
                    }
                }
            }
        }
    }

    /// Everything of the AVX-512 paths but their intrinsics (block sizes, 12-row and 16/32-wide packing,
    /// the driver's splits and edges), with portable micro-kernels of the same tile shape, so it runs on
    /// any x86-64 CPU; the intrinsics themselves share every line with the AVX2 kernels (one macro).
    #[test]
    fn avx512_blocking_with_portable_tiles() {
        check::<f32>(avx512_f32_blocking(micro_kernel::<f32, 12, 32>), 1e-5);
        check::<f64>(avx512_f64_blocking(micro_kernel::<f64, 12, 16>), 1e-12);
    }
}

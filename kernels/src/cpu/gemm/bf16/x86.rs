//! The AVX512-BF16 micro-kernel: `VDPBF16PS` (`_mm512_dpbf16_ps`) on k-pair slivers, a 12 x 32 tile of
//! f32 accumulators in 24 of the 32 zmm registers, as the AVX-512F f32 kernel. Each pair step loads the
//! two 32-lane B vectors (16 lanes of bf16 pairs each) and broadcasts each of the 12 rows' A pair (one
//! 32-bit lane) against them: 24 instructions of 32 multiply-adds each for 2 loads and 12 broadcasts. Its
//! rounding is `dot::dot_pair`'s, lane by lane; the tile is combined into C as the f32 kernels do.
use super::super::kernel::{MicroKernelFn, Update};
use half::bf16;
use std::arch::x86_64::*;

/// Whether this CPU has the AVX512-BF16 dot product (and the AVX-512F it extends).
pub(super) fn cpu_has_avx512bf16() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
}

const MR: usize = 12;
const NR: usize = 32;

/// The 12 x 32 `VDPBF16PS` micro-kernel, a [`MicroKernelFn`] on k-pair slivers.
///
/// # Safety
/// The CPU must have AVX-512F and AVX512-BF16 ([`cpu_has_avx512bf16`]).
pub(super) unsafe fn dot_12x32(
    a: &[bf16],
    b: &[bf16],
    c: &mut [&mut [f32]],
    col: usize,
    alpha: f32,
    update: Update<f32>,
) {
    let pairs = b.len() / (2 * NR);
    assert!(
        a.len() == 2 * MR * pairs && b.len() == 2 * NR * pairs && c.len() >= MR,
        "micro-kernel: sliver or tile lengths"
    );
    let mut rows = [std::ptr::null_mut::<f32>(); MR];
    for (row, c_row) in rows.iter_mut().zip(c.iter_mut()) {
        *row = c_row[col..col + NR].as_mut_ptr();
    }
    // SAFETY: the caller guarantees the CPU features; `a` and `b` hold `pairs` pair steps of MR and NR
    // pairs (asserted above), and each `rows[i]` points at NR elements of a distinct row of C (sliced
    // above) that this function borrows mutably for the call.
    unsafe { dot_12x32_inner(pairs, a.as_ptr(), b.as_ptr(), rows, alpha, update) }
}

const _: MicroKernelFn<f32, bf16> = dot_12x32;

/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `a` points at `pairs * 2 * MR` and `b` at `pairs * 2 * NR`
/// readable bf16; each `c[i]` at NR writable f32, no two overlapping.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_12x32_inner(
    pairs: usize,
    a: *const bf16,
    b: *const bf16,
    c: [*mut f32; MR],
    alpha: f32,
    update: Update<f32>,
) {
    // SAFETY: pair step q reads `a[q * 2 * MR..][..2 * MR]` (as MR unaligned 32-bit pairs) and
    // `b[q * 2 * NR..][..2 * NR]` (two unaligned 64-byte vectors) for q < pairs; the tile store touches
    // `c[i][..NR]`. The transmutes reinterpret 512 bits of bf16 pairs as the dot product's operand type,
    // which has the same size and no invalid bit patterns.
    unsafe {
        for &row in &c {
            _mm_prefetch::<_MM_HINT_T0>(row.cast_const().cast());
            _mm_prefetch::<_MM_HINT_T0>(row.add(NR - 1).cast_const().cast());
        }
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let (mut a, mut b) = (a, b);
        for _ in 0..pairs {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(NR).cast()));
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let pair = a.add(2 * i).cast::<i32>().read_unaligned();
                let a_i: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                acc_row[0] = _mm512_dpbf16_ps(acc_row[0], a_i, b0);
                acc_row[1] = _mm512_dpbf16_ps(acc_row[1], a_i, b1);
            }
            a = a.add(2 * MR);
            b = b.add(2 * NR);
        }
        let alpha = _mm512_set1_ps(alpha);
        for (&row, acc_row) in c.iter().zip(&acc) {
            for (v, &acc_v) in acc_row.iter().enumerate() {
                let dst = row.add(v * 16);
                let value = match update {
                    Update::Overwrite => _mm512_mul_ps(alpha, acc_v),
                    Update::Scale(beta) => _mm512_fmadd_ps(
                        alpha,
                        acc_v,
                        _mm512_mul_ps(_mm512_set1_ps(beta), _mm512_loadu_ps(dst)),
                    ),
                    Update::Accumulate => _mm512_fmadd_ps(alpha, acc_v, _mm512_loadu_ps(dst)),
                };
                _mm512_storeu_ps(dst, value);
            }
        }
    }
}

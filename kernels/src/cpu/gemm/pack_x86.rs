//! x86-64 packing of f32 A slivers from a row-major A (depth contiguous, as in every forward product),
//! where the portable pack copies element by element: each full sliver is transposed in registers, many
//! depth steps at a time. Any other layout, and a partial last sliver, go to the portable pack; the
//! packed values are the same either way (a copy), so only speed differs.
use super::kernel::KernelPath;
use super::pack::{pack, PanelSource};
use std::arch::x86_64::*;
use std::ops::Range;

/// The AVX2 [`super::pack::PackFn`] for 6-row f32 A slivers. When A's depth is contiguous (a row-major
/// A, as in every forward product) each full sliver is transposed 8 depth steps at a time in registers,
/// about three times faster than element by element; any other layout, and the partial last sliver, go
/// to the portable pack.
pub(super) fn pack_a_avx2_f32(
    src: PanelSource<'_, f32>,
    lanes: Range<usize>,
    depth: Range<usize>,
    dst: &mut [f32],
) {
    pack_rows_with::<6>(src, lanes, depth, dst, KernelPath::Avx2Fma, |rows, kc, sliver| {
        // SAFETY: the CPU has AVX2 (checked by `pack_rows_with`); each row holds `kc` values and `sliver`
        // `6 * kc`.
        unsafe { transpose_6_rows_avx2(rows.map(<[f32]>::as_ptr), kc, sliver.as_mut_ptr()) }
    })
}

/// What both x86 packs share: the portable pack unless A's depth is contiguous and `path` is available;
/// otherwise `transpose(rows, kc, sliver)` for each full sliver (its `W` rows of `kc` values, and its
/// `W * kc` destination), and the portable pack for the partial last sliver.
fn pack_rows_with<const W: usize>(
    src: PanelSource<'_, f32>,
    lanes: Range<usize>,
    depth: Range<usize>,
    dst: &mut [f32],
    path: KernelPath,
    transpose: impl Fn([&[f32]; W], usize, &mut [f32]),
) {
    if src.depth_stride != 1 || !path.is_available() {
        return pack::<f32, W>(src, lanes, depth, dst);
    }
    let kc = depth.len();
    assert_eq!(dst.len(), lanes.len().div_ceil(W) * W * kc, "pack: destination length");
    let full = lanes.len() / W;
    let (full_dst, rest_dst) = dst.split_at_mut(full * W * kc);
    for (s, sliver) in full_dst.chunks_exact_mut(W * kc).enumerate() {
        let start = src.offset + depth.start + (lanes.start + s * W) * src.across_stride;
        let rows: [&[f32]; W] = std::array::from_fn(|l| &src.data[start + l * src.across_stride..][..kc]);
        transpose(rows, kc, sliver);
    }
    if full * W < lanes.len() {
        pack::<f32, W>(src, lanes.start + full * W..lanes.end, depth, rest_dst);
    }
}

/// `out[p * 6 + l] = rows[l][p]` for `p < kc`: an 8 x 8 transpose (rows 6 and 7 zero) per 8 depth steps,
/// stored as 8 overlapping runs of 6.
///
/// # Safety
/// AVX2 present; `rows[l]` readable for `kc` values; `out` writable for `6 * kc` values.
#[target_feature(enable = "avx2")]
unsafe fn transpose_6_rows_avx2(rows: [*const f32; 6], kc: usize, out: *mut f32) {
    // SAFETY: loads read `rows[l][p..p + 8]` with `p + 8 <= kc`; stores write `out[p * 6..p * 6 + 48]`
    // (the last run as 4 + 2 values so nothing lands past `out[(p + 8) * 6]`); the scalar tail stays below
    // `kc`.
    unsafe {
        let zero = _mm256_setzero_ps();
        let mut p = 0;
        while p + 8 <= kc {
            let r: [__m256; 6] = [
                _mm256_loadu_ps(rows[0].add(p)),
                _mm256_loadu_ps(rows[1].add(p)),
                _mm256_loadu_ps(rows[2].add(p)),
                _mm256_loadu_ps(rows[3].add(p)),
                _mm256_loadu_ps(rows[4].add(p)),
                _mm256_loadu_ps(rows[5].add(p)),
            ];
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, zero);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, zero);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, zero);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, zero);
            let dst = out.add(p * 6);
            _mm256_storeu_ps(dst, _mm256_permute2f128_ps::<0x20>(u0, u4));
            _mm256_storeu_ps(dst.add(6), _mm256_permute2f128_ps::<0x20>(u1, u5));
            _mm256_storeu_ps(dst.add(12), _mm256_permute2f128_ps::<0x20>(u2, u6));
            _mm256_storeu_ps(dst.add(18), _mm256_permute2f128_ps::<0x20>(u3, u7));
            _mm256_storeu_ps(dst.add(24), _mm256_permute2f128_ps::<0x31>(u0, u4));
            _mm256_storeu_ps(dst.add(30), _mm256_permute2f128_ps::<0x31>(u1, u5));
            _mm256_storeu_ps(dst.add(36), _mm256_permute2f128_ps::<0x31>(u2, u6));
            let last = _mm256_permute2f128_ps::<0x31>(u3, u7);
            _mm_storeu_ps(dst.add(42), _mm256_castps256_ps128(last));
            _mm_storel_epi64(dst.add(46).cast(), _mm_castps_si128(_mm256_extractf128_ps::<1>(last)));
            p += 8;
        }
        while p < kc {
            for (l, row) in rows.iter().enumerate() {
                *out.add(p * 6 + l) = *row.add(p);
            }
            p += 1;
        }
    }
}

/// The AVX-512F [`super::pack::PackFn`] for `W`-row f32 A slivers: as [`pack_a_avx2_f32`], with a 16 x 16
/// transpose per 16 depth steps and 16 rows.
pub(super) fn pack_a_avx512_f32<const W: usize>(
    src: PanelSource<'_, f32>,
    lanes: Range<usize>,
    depth: Range<usize>,
    dst: &mut [f32],
) {
    pack_rows_with::<W>(src, lanes, depth, dst, KernelPath::Avx512F, |rows, kc, sliver| {
        for first in (0..W).step_by(16) {
            let count = (W - first).min(16);
            let block: [*const f32; 16] = std::array::from_fn(|l| rows[first + l.min(count - 1)].as_ptr());
            // SAFETY: the CPU has AVX-512F (checked by `pack_rows_with`); rows `first..first + count` each
            // hold `kc` values (the unused pointers repeat the last of them and are not read), and `sliver`
            // holds `W * kc` values with `first + count <= W`.
            unsafe { transpose_16_rows_avx512(block, count, kc, sliver[first..].as_mut_ptr(), W) }
        }
    })
}

/// `out[p * stride + l] = rows[l][p]` for `l < count` and `p < kc`: for every 16 depth steps, a 16 x 16
/// transpose in registers (rows from `count` on are zero) and 16 masked stores of `count` values each, so
/// nothing is written outside the sliver's lanes `0..count`.
///
/// # Safety
/// AVX-512F present; `1 <= count <= 16`; `rows[l]` readable for `kc` values for `l < count`; `out`
/// writable at `p * stride + l` for `p < kc`, `l < count`.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_16_rows_avx512(
    rows: [*const f32; 16],
    count: usize,
    kc: usize,
    out: *mut f32,
    stride: usize,
) {
    // SAFETY: loads read `rows[l][p..p + 16]` with `p + 16 <= kc` and `l < count`; the masked stores write
    // `out[(p + j) * stride..][..count]`; the scalar tail stays below `kc`.
    unsafe {
        let mask: __mmask16 = ((1u32 << count) - 1) as __mmask16;
        let mut p = 0;
        while p + 16 <= kc {
            let mut r = [_mm512_setzero_ps(); 16];
            for (l, row) in r.iter_mut().enumerate().take(count) {
                *row = _mm512_loadu_ps(rows[l].add(p));
            }
            // Pairs of rows interleaved within each 128-bit lane, then groups of four rows: `u[4 * g + c]`
            // holds, in 128-bit lane `q`, rows `4 * g..4 * g + 4` at column `4 * q + c`.
            let mut t = [_mm512_setzero_ps(); 16];
            for i in (0..16).step_by(2) {
                t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
                t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
            }
            let mut u = [_mm512_setzero_ps(); 16];
            for g in (0..16).step_by(4) {
                u[g] = _mm512_shuffle_ps::<0x44>(t[g], t[g + 2]);
                u[g + 1] = _mm512_shuffle_ps::<0xEE>(t[g], t[g + 2]);
                u[g + 2] = _mm512_shuffle_ps::<0x44>(t[g + 1], t[g + 3]);
                u[g + 3] = _mm512_shuffle_ps::<0xEE>(t[g + 1], t[g + 3]);
            }
            // Column `4 * q + c` gathers lane `q` of `u[c]`, `u[4 + c]`, `u[8 + c]`, `u[12 + c]`.
            for c in 0..4 {
                let v0 = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
                let v1 = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
                let v2 = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
                let v3 = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
                let columns = [
                    _mm512_shuffle_f32x4::<0x88>(v0, v2),
                    _mm512_shuffle_f32x4::<0xDD>(v0, v2),
                    _mm512_shuffle_f32x4::<0x88>(v1, v3),
                    _mm512_shuffle_f32x4::<0xDD>(v1, v3),
                ];
                for (q, &column) in columns.iter().enumerate() {
                    _mm512_mask_storeu_ps(out.add((p + 4 * q + c) * stride), mask, column);
                }
            }
            p += 16;
        }
        while p < kc {
            for (l, row) in rows.iter().take(count).enumerate() {
                *out.add(p * stride + l) = *row.add(p);
            }
            p += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The register transposes against the portable pack: a pack is a copy, so the two must agree bit for
    //! bit (no tolerance) on every sliver width in use, partial last slivers, depths below, at and past
    //! the 8- and 16-step transposes, and padded row strides.
    use super::*;

    fn check(pack_fn: super::super::pack::PackFn<f32>, width: usize) {
        let portable = match width {
            6 => pack::<f32, 6>,
            12 => pack::<f32, 12>,
            14 => pack::<f32, 14>,
            28 => pack::<f32, 28>,
            _ => unreachable!("no portable pack of width {width} in this test"),
        };
        for (rows, depth, pad) in
            [(width, 16, 0), (3 * width + 5, 37, 3), (width - 1, 7, 1), (2 * width, 129, 0)]
        {
            let stride = depth + 3 + pad;
            let data: Vec<f32> = (0..(rows + 2) * stride).map(|i| i as f32 * 0.5 - 7.0).collect();
            let src = PanelSource { data: &data, offset: stride + 1, across_stride: stride, depth_stride: 1 };
            let (lanes, steps) = (1..rows + 1, 2..depth + 2);
            let len = lanes.len().div_ceil(width) * width * depth;
            let (mut fast, mut reference) = (vec![f32::NAN; len], vec![f32::NAN; len]);
            pack_fn(src, lanes.clone(), steps.clone(), &mut fast);
            portable(src, lanes, steps, &mut reference);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&reference), "width {width}, {rows} rows, depth {depth}");
        }
    }

    #[test]
    fn register_transposes_equal_the_portable_pack() {
        if KernelPath::Avx2Fma.is_available() {
            check(pack_a_avx2_f32, 6);
        } else {
            println!("skipped the AVX2 pack: this CPU lacks avx2+fma");
        }
        if KernelPath::Avx512F.is_available() {
            check(pack_a_avx512_f32::<12>, 12);
            check(pack_a_avx512_f32::<14>, 14);
            check(pack_a_avx512_f32::<28>, 28);
        } else {
            println!("skipped the AVX-512 packs: this CPU lacks avx512f");
        }
    }
}

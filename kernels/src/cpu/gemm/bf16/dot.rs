//! The rounding model of `VDPBF16PS` in plain Rust, bit for bit, and the portable micro-kernel built on
//! it: the reference the AVX512-BF16 kernel is compared with, and the dot path of CPUs without it when a
//! test forces it (the model is exact, not fast: several f64 operations per product).
//!
//! One lane of `VDPBF16PS acc, a, b` (a and b hold bf16 pairs, element 0 the even k, element 1 the odd k):
//!
//! ```text
//! acc = ftz(round(daz(acc) + daz(a[1]) * daz(b[1])))   // the odd element's product first
//! acc = ftz(round(acc + daz(a[0]) * daz(b[0])))         // then the even one's
//! ```
//!
//! - each product is exact (8-bit by 8-bit significands fit in f32's 24) and is not rounded, nor limited
//!   to f32's exponent range: `-2^127 + 2^100 * 2^28` gives `2^127`, not infinity;
//! - each addition is rounded once to f32 (24-bit significand), to nearest even;
//! - `daz`: a bf16 input, and the incoming accumulator, that is denormal counts as a zero of its sign;
//! - `ftz`: a sum that is tiny after rounding (below `2^-126` once rounded to 24 bits with an unbounded
//!   exponent) becomes a zero of its sign, so `2^-126 - 2^-152` stays `2^-126` while `2^-126 - 2^-150`
//!   becomes 0;
//! - MXCSR is ignored (no exceptions, always round to nearest even).
//!
//! This is Intel's pseudo-code for the instruction (per lane: `srcdest += make_fp32(src1.bf16[2j+1]) *
//! make_fp32(src2.bf16[2j+1])`, then the same for `2j+0`, "DAZ, FTZ, RNE, SAE"), with what the pseudo-code
//! leaves open (the product is not rounded; tininess is detected after rounding) settled on an Intel Xeon
//! with AVX512-BF16; the unit tests below hold those cases, and `kernels/tests/suite/gemm_bf16.rs` compares
//! the hardware with this model on random and edge-biased inputs. NaN results are NaN in both, their
//! payloads may differ.
use super::super::kernel::Update;
use half::bf16;

/// `2^-126 - 2^-151`: the midpoint below the smallest normal f32; a sum whose magnitude is below it rounds
/// (24 bits, unbounded exponent) to less than `2^-126`, i.e. is tiny after rounding.
const TINY_BELOW: f64 = f64::from_bits(0x380f_ffff_f000_0000);

/// A bf16 as f32 with a denormal read as a zero of its sign (DAZ).
#[inline]
pub(super) fn daz(x: bf16) -> f32 {
    let bits = x.to_bits();
    if bits & 0x7f80 == 0 {
        f32::from_bits(u32::from(bits & 0x8000) << 16)
    } else {
        x.to_f32()
    }
}

/// One addition of `VDPBF16PS`: `acc + x * y` with the product exact, one rounding to nearest even to
/// f32's significand, and a result tiny after rounding flushed to a zero of its sign. `x` and `y` are
/// bf16 values (after [`daz`]), `acc` is not denormal.
///
/// How: `x * y` is exact in f64, so `acc + x * y` is the f64 sum `s` plus its exact error `e` (TwoSum).
/// Rounding `s` to odd (the neighbour with an odd last bit, toward `e`, when `e != 0`) keeps 53 bits, more
/// than f32's 24 + 2, so rounding that to f32 is the correct single rounding (Boldo and Melquiond,
/// "Emulation of FMA and correctly rounded sums: proved algorithms using rounding to odd", 2008); the
/// tininess test compares with [`TINY_BELOW`], which the odd rounding preserves.
#[inline]
pub(super) fn add_product(acc: f32, x: f32, y: f32) -> f32 {
    let (a, p) = (f64::from(acc), f64::from(x) * f64::from(y));
    let s = a + p;
    if !s.is_finite() {
        return s as f32;
    }
    let p_part = s - a;
    let e = (a - (s - p_part)) + (p - p_part);
    let s = if e != 0.0 && s.to_bits() & 1 == 0 {
        let away_from_zero = (e > 0.0) == (s > 0.0);
        f64::from_bits(if away_from_zero { s.to_bits() + 1 } else { s.to_bits() - 1 })
    } else {
        s
    };
    if s.abs() < TINY_BELOW {
        return if s.is_sign_negative() { -0.0 } else { 0.0 };
    }
    s as f32
}

/// One lane of `VDPBF16PS`: `acc` plus the pair `a . b` (element 1 first, then element 0).
#[inline]
pub(super) fn dot_pair(acc: f32, a: [bf16; 2], b: [bf16; 2]) -> f32 {
    let acc = if acc.is_subnormal() { 0.0f32.copysign(acc) } else { acc };
    let odd = add_product(acc, daz(a[1]), daz(b[1]));
    add_product(odd, daz(a[0]), daz(b[0]))
}

/// The portable dot micro-kernel on k-pair slivers (`a[q * 2 * MR + 2 * i + h]` is row i at depth
/// `2q + h`, B likewise): each accumulator takes the pairs in order through [`dot_pair`], exactly as the
/// AVX512-BF16 kernel's `VDPBF16PS`, then is combined into C as that kernel does (`alpha * acc`, or a
/// fused `alpha * acc + beta * c` / `alpha * acc + c`), so the two agree bit for bit.
pub(super) fn micro_kernel<const MR: usize, const NR: usize>(
    a: &[bf16],
    b: &[bf16],
    c: &mut [&mut [f32]],
    col: usize,
    alpha: f32,
    update: Update<f32>,
) {
    assert_eq!(a.len() / (2 * MR), b.len() / (2 * NR), "micro-kernel: sliver depths differ");
    let mut acc = [[0.0f32; NR]; MR];
    for (a_step, b_step) in a.chunks_exact(2 * MR).zip(b.chunks_exact(2 * NR)) {
        for (acc_row, a_pair) in acc.iter_mut().zip(a_step.chunks_exact(2)) {
            let a_pair = [a_pair[0], a_pair[1]];
            for (acc_ij, b_pair) in acc_row.iter_mut().zip(b_step.chunks_exact(2)) {
                *acc_ij = dot_pair(*acc_ij, a_pair, [b_pair[0], b_pair[1]]);
            }
        }
    }
    for (c_row, acc_row) in c[..MR].iter_mut().zip(&acc) {
        let pairs = c_row[col..col + NR].iter_mut().zip(acc_row);
        match update {
            Update::Overwrite => pairs.for_each(|(c, &t)| *c = alpha * t),
            Update::Scale(beta) => pairs.for_each(|(c, &t)| *c = alpha.mul_add(t, beta * *c)),
            Update::Accumulate => pairs.for_each(|(c, &t)| *c = alpha.mul_add(t, *c)),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The model on the cases that pin down each clause of the header, with the results an Intel Xeon's
    //! `VDPBF16PS` gave for them (read off the hardware, not derived from the model).
    use super::*;

    fn bf(x: f32) -> bf16 {
        bf16::from_f32(x)
    }

    fn p2(e: i32) -> f32 {
        2f32.powi(e)
    }

    /// (name, acc, [a even, a odd], [b even, b odd], the result's bits on the hardware)
    type Pinned = (&'static str, f32, [bf16; 2], [bf16; 2], u32);

    fn cases() -> Vec<Pinned> {
        let one = bf(1.0);
        let zero = bf16::ZERO;
        vec![
            ("odd product first", p2(24), [bf(-p2(24)), one], [one, one], 0x0000_0000),
            ("product not flushed", p2(-126), [bf(p2(-70)), zero], [bf(p2(-70)), zero], 0x0080_0200),
            (
                "product not rounded to f32 range",
                -p2(127),
                [bf(p2(100)), zero],
                [bf(p2(28)), zero],
                0x7f00_0000,
            ),
            ("denormal input is zero", 0.0, [bf16::from_bits(1), zero], [bf(p2(126)), zero], 0x0000_0000),
            (
                "denormal accumulator is zero",
                f32::from_bits(0x100),
                [bf(p2(-125)), zero],
                [one, zero],
                0x0100_0000,
            ),
            (
                "tiny intermediate flushed",
                1.5 * p2(-126),
                [bf(p2(-126)), bf(-p2(-126))],
                [one, one],
                0x0080_0000,
            ),
            (
                "flush keeps the sign",
                -1.5 * p2(-126),
                [bf16::NEG_ZERO, bf(p2(-126))],
                [one, one],
                0x8000_0000,
            ),
            ("normal after rounding", p2(-126), [bf(-p2(-76)), zero], [bf(p2(-76)), zero], 0x0080_0000),
            ("tie rounds up to normal", p2(-126), [bf(-p2(-76)), zero], [bf(p2(-75)), zero], 0x0080_0000),
            ("tiny after rounding", p2(-126), [bf(-p2(-75)), zero], [bf(p2(-75)), zero], 0x0000_0000),
            ("exact cancellation is +0", 1.0, [zero, bf(-1.0)], [zero, one], 0x0000_0000),
            ("-0 plus -0 products", -0.0, [bf16::NEG_ZERO, bf16::NEG_ZERO], [one, one], 0x8000_0000),
        ]
    }

    #[test]
    fn tiny_threshold_is_the_midpoint_below_the_smallest_normal() {
        assert_eq!(TINY_BELOW, 2f64.powi(-126) - 2f64.powi(-151));
    }

    #[test]
    fn model_matches_the_hardware_on_pinned_cases() {
        for (name, acc, a, b, bits) in cases() {
            let got = dot_pair(acc, a, b);
            assert_eq!(got.to_bits(), bits, "{name}: got {got:e} ({:#010x})", got.to_bits());
        }
        let nan = dot_pair(0.0, [bf16::INFINITY, bf16::NEG_INFINITY], [bf(1.0), bf(1.0)]);
        assert!(nan.is_nan(), "inf - inf is NaN");
    }

    /// On normal, in-range values the model is the plain f32 sum of exact products, odd first.
    #[test]
    fn model_is_two_roundings_on_ordinary_values() {
        let values = [0.5f32, -1.25, 3.0e3, -7.5e-3, 1.0e-10, 6.0e15];
        for &acc in &values {
            for &x in &values {
                for &y in &values {
                    let (a, b) = ([bf(x), bf(y)], [bf(y), bf(-x)]);
                    let expected = (acc + a[1].to_f32() * b[1].to_f32()) + a[0].to_f32() * b[0].to_f32();
                    assert_eq!(dot_pair(acc, a, b).to_bits(), expected.to_bits(), "{acc} {x} {y}");
                }
            }
        }
    }
}

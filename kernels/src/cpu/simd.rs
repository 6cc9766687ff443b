//! Run-time choice of the instruction set the hot loops run with, and the vectorisable `exp` they share.
//!
//! Kernels are written once, as plain loops over slices and fixed-size arrays. [`multiversion!`]
//! compiles such a loop three times: for the build's baseline target (SSE2 on x86-64; whatever the
//! target guarantees elsewhere), with AVX2+FMA, and with AVX-512, and picks one per call from what the
//! CPU reports (`is_x86_feature_detected!`), never from `-C target-cpu`.
//!
//! The three copies perform the same IEEE operations in the same order: Rust never contracts `a * b + c`
//! into a fused multiply-add (kernels ask for one explicitly with [`fma`], which is exact on every
//! path), the vectoriser never reassociates floating-point sums, and every reduction runs through
//! accumulator arrays of a fixed length. So every level gives bit-identical results, only the vector
//! width differs; `kernels/tests/suite/fused.rs` checks this bit for bit on the levels the CPU has.
use crate::Float;
use std::any::TypeId;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The build's baseline target, on every CPU.
    Portable,
    /// x86-64 with AVX2 and FMA (256-bit vectors).
    Avx2,
    /// x86-64 with AVX-512 F, VL, BW and DQ (512-bit vectors).
    Avx512,
}

/// The level cap set by [`set_max_level`], stored as `level + 1`; 0 means no cap.
static CAP: AtomicU8 = AtomicU8::new(0);

impl Level {
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    /// Whether this CPU can run code compiled for the level.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The highest level this CPU supports, detected once: [`Isa::active`] runs before every
    /// multiversioned call, some of them per row of a GEMM tile, where re-testing each feature flag took
    /// 3% of a bf16 product's time.
    pub fn best() -> Level {
        static BEST: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            Level::ALL.into_iter().rev().find(|l| l.is_supported()).unwrap_or(Level::Portable)
        })
    }

    /// The level kernels run with: the best supported one, lowered by [`set_max_level`].
    pub fn active() -> Level {
        let best = Level::best();
        match CAP.load(Ordering::Relaxed) {
            0 => best,
            cap => best.min(Level::ALL[cap as usize - 1]),
        }
    }
}

/// Caps the level kernels run with (`None` lifts the cap). Meant for tests and benchmarks: all levels
/// give bit-identical results, so changing the cap while kernels run changes only their speed.
pub fn set_max_level(cap: Option<Level>) {
    CAP.store(cap.map_or(0, |l| l as u8 + 1), Ordering::Relaxed);
}

/// Proof that the CPU supports a level: only [`Isa::active`] makes one, so code compiled for `self.0`
/// may run. Kernels read it once per call and pass it to their multiversioned blocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Isa(Level);

impl Isa {
    pub(crate) fn active() -> Isa {
        Isa(Level::active())
    }

    pub(crate) fn level(self) -> Level {
        self.0
    }
}

/// Defines `fn name(isa: Isa, args...)` that runs its body compiled for `isa`'s level. The first
/// parameter must be the `Isa`; the body may use it to call other multiversioned functions.
///
/// The body becomes an `#[inline(always)]` function that two `#[target_feature]` wrappers inline, so
/// every helper it calls must be `#[inline(always)]` (or small enough to be inlined) to be compiled with
/// the wider instructions. The wrappers themselves are never inlined: a multiversioned function is a
/// unit of work the vectoriser sees on its own (inlined into a large caller, its fixed-size accumulator
/// arrays may no longer be vectorised). Generic parameters are written in brackets:
/// `fn name[T: Float](isa: Isa, x: &[T])`.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $([$($generics:tt)*])? (
            $isa:ident: Isa $(, $arg:ident: $ty:ty)* $(,)?
        ) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name $(<$($generics)*>)? ($isa: $crate::cpu::simd::Isa $(, $arg: $ty)*) $(-> $ret)? {
            #[inline(always)]
            #[allow(unused_variables)]
            fn portable $(<$($generics)*>)? ($isa: $crate::cpu::simd::Isa $(, $arg: $ty)*) $(-> $ret)?
                $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[inline(never)]
            fn avx2 $(<$($generics)*>)? ($isa: $crate::cpu::simd::Isa $(, $arg: $ty)*) $(-> $ret)? {
                portable($isa $(, $arg)*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
            #[inline(never)]
            fn avx512 $(<$($generics)*>)? ($isa: $crate::cpu::simd::Isa $(, $arg: $ty)*) $(-> $ret)? {
                portable($isa $(, $arg)*)
            }

            match $isa.level() {
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::simd::Level::Avx2 => {
                    // SAFETY: an `Isa` comes only from `Isa::active`, which never exceeds the level
                    // `Level::is_supported` detected on this CPU, so AVX2 and FMA are present.
                    unsafe { avx2($isa $(, $arg)*) }
                }
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::simd::Level::Avx512 => {
                    // SAFETY: as above; AVX-512 F/VL/BW/DQ, AVX2 and FMA were all detected.
                    unsafe { avx512($isa $(, $arg)*) }
                }
                _ => portable($isa $(, $arg)*),
            }
        }
    };
}
pub(crate) use multiversion;

/// True when `T` is `f32`: kernels then take the vectorisable f32 routines; the test folds away at
/// compile time.
#[inline(always)]
pub(crate) fn is_f32<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>()
}

/// `e^x`: [`exp_f32`] for f32 (vectorisable), the standard library's `exp` otherwise (f64 stays scalar).
/// The round trip through f64 is exact for f32 and compiles to nothing.
#[inline(always)]
pub fn exp<T: Float>(x: T) -> T {
    if is_f32::<T>() {
        T::from_f64(exp_f32(x.to_f64() as f32) as f64)
    } else {
        x.exp()
    }
}

/// `a * b + c` with one rounding, for f32 and f64. Compiles to an FMA instruction on the AVX2 and
/// AVX-512 paths (and on targets whose baseline has FMA, such as aarch64); the x86-64 baseline path
/// calls the C library's correctly rounded `fma` instead, slower but bit-identical.
#[inline(always)]
pub fn fma<T: Float>(a: T, b: T, c: T) -> T {
    if is_f32::<T>() {
        let [a, b, c] = [a, b, c].map(|v| v.to_f64() as f32);
        T::from_f64(a.mul_add(b, c) as f64)
    } else {
        T::from_f64(a.to_f64().mul_add(b.to_f64(), c.to_f64()))
    }
}

/// `e^x` in f32, within 2 ulp of the correctly rounded result for `x >= -86.9` (results above
/// `2^-125`; tested against f64 in `kernels/tests/suite/fused.rs`); smaller results flush to 0 (an absolute
/// error below `2.4e-38`). Overflows to +inf, propagates NaN. Written with operations that have
/// lane-wise SIMD forms, so loops calling it vectorise.
///
/// `x = n ln2 + r` with `n = round(x / ln2)` and `|r| <= ln2/2` (Cody-Waite: `ln2` split in a part with
/// few significant bits and a correction, so `n * LN2_HI` is exact); `2 e^r` by the degree-7 polynomial of
/// Cephes' `expf` with doubled coefficients, evaluated by Estrin's scheme (a short dependency chain);
/// the result is `2 e^r * 2^(n-1)`, with `2^(n-1)` built from exponent bits (the factor 2 lets n reach 128,
/// so results up to `f32::MAX` need no second scaling).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding it rounds to an integer, which lands in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Cephes expf: e^r = 1 + r + r^2 (P5 + P4 r + P3 r^2 + P2 r^3 + P1 r^4 + P0 r^5); here doubled.
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.0e-1];
    // Above 88.8 the result overflows anyway; at -87.5, n = -126 and 2^(n-1) is built as +0. NaN fails
    // both tests and propagates through the polynomial.
    let x = if x > 88.8 { 88.8 } else { x };
    let x = if x < -87.5 { -87.5 } else { x };
    let t = x.mul_add(LOG2E, SHIFTER);
    let n = t - SHIFTER;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let (r2, lo) = (r * r, r.mul_add(2.0, 2.0));
    let a = r.mul_add(2.0 * P[4], 2.0 * P[5]);
    let b = r.mul_add(2.0 * P[2], 2.0 * P[3]);
    let c = r.mul_add(2.0 * P[0], 2.0 * P[1]);
    let two_exp_r = (r2 * r2).mul_add(r2.mul_add(c, b), r2.mul_add(a, lo));
    let n_bits = t.to_bits().wrapping_sub(SHIFTER.to_bits());
    two_exp_r * f32::from_bits(n_bits.wrapping_add(126) << 23)
}

/// Number of independent accumulators of the reductions ([`sum_map`], [`max`]): two AVX2
/// vectors or one AVX-512 vector, so a reduction is not limited by the latency of one add chain.
pub(crate) const WIDE: usize = 16;

/// Sum of `WIDE` lane accumulators, in lane order. (A pairwise tree would be as good numerically, but
/// it leads LLVM's SLP vectoriser to split the accumulators into 2-lane vectors.)
#[inline(always)]
pub(crate) fn combine<T: Float>(acc: [T; WIDE]) -> T {
    acc.iter().fold(T::ZERO, |s, &v| s + v)
}

/// `sum_i f(x[i])` in `WIDE` interleaved partial sums combined in a fixed order (the tail is summed
/// last, in order): the result depends only on the inputs.
#[inline(always)]
pub(crate) fn sum_map<T: Float>(x: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::ZERO; WIDE];
    let chunks = x.chunks_exact(WIDE);
    let tail = chunks.remainder();
    for xs in chunks {
        for (s, &v) in acc.iter_mut().zip(xs) {
            *s += f(v);
        }
    }
    tail.iter().fold(combine(acc), |s, &v| s + f(v))
}

/// `sum_i f(a[i], b[i])` over the shorter length, accumulated like [`sum_map`].
#[inline(always)]
pub(crate) fn sum_map2<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::ZERO; WIDE];
    for (xs, ys) in a.chunks_exact(WIDE).zip(b.chunks_exact(WIDE)) {
        for (s, (&x, &y)) in acc.iter_mut().zip(xs.iter().zip(ys)) {
            *s += f(x, y);
        }
    }
    let tail = n / WIDE * WIDE;
    a[tail..].iter().zip(&b[tail..]).fold(combine(acc), |s, (&x, &y)| s + f(x, y))
}

/// `max_i x[i]` (`-inf` for an empty slice), in lanes so it vectorises; max is exact, so the lane split
/// does not change the result.
#[inline(always)]
pub(crate) fn max<T: Float>(x: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; WIDE];
    let chunks = x.chunks_exact(WIDE);
    let tail = chunks.remainder();
    for xs in chunks {
        for (m, &v) in acc.iter_mut().zip(xs) {
            *m = if v > *m { v } else { *m };
        }
    }
    let lanes = acc.iter().fold(T::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    tail.iter().fold(lanes, |m, &v| if v > m { v } else { m })
}

/// Replaces `x[j]` by `exp(x[j] - shift)` and returns their sum, accumulated like [`sum_map`]. In f32
/// the exponentials of the tail are computed in a full `WIDE` array, so that they vectorise too (the
/// unused lanes are dropped; each lane's value is the same as a scalar call's), and summed in order.
#[inline(always)]
pub(crate) fn exp_sum_in_place<T: Float>(x: &mut [T], shift: T) -> T {
    let mut acc = [T::ZERO; WIDE];
    let mut chunks = x.chunks_exact_mut(WIDE);
    for xs in &mut chunks {
        for (s, v) in acc.iter_mut().zip(xs) {
            *v = exp(*v - shift);
            *s += *v;
        }
    }
    let tail = chunks.into_remainder();
    if is_f32::<T>() {
        let mut lanes = [T::ZERO; WIDE];
        lanes[..tail.len()].copy_from_slice(tail);
        for v in lanes.iter_mut() {
            *v = exp(*v - shift);
        }
        tail.copy_from_slice(&lanes[..tail.len()]);
    } else {
        for v in tail.iter_mut() {
            *v = exp(*v - shift);
        }
    }
    tail.iter().fold(combine(acc), |s, &v| s + v)
}

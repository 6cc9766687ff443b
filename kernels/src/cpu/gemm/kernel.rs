//! Which micro-kernel runs: the paths, their run-time detection, and the block sizes each path is tuned
//! with.
use super::pack::PackFn;
use super::portable;
use crate::Float;
use std::fmt;
use std::sync::OnceLock;

/// A micro-kernel implementation, chosen at run time from the CPU's features (never at compile time: the
/// crate is built for the baseline target, no `-C target-cpu=native`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Plain Rust that the compiler vectorises for the baseline target (SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// x86-64 with AVX2 and FMA: 256-bit fused multiply-add.
    Avx2Fma,
    /// x86-64 with AVX-512F: 512-bit fused multiply-add, 32 vector registers.
    Avx512F,
}

impl KernelPath {
    /// Every path, portable first.
    pub const ALL: [KernelPath; 3] = [KernelPath::Portable, KernelPath::Avx2Fma, KernelPath::Avx512F];

    /// The CPU feature names the path needs, as `/proc/cpuinfo` and `is_x86_feature_detected!` spell them.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Portable => "portable",
            KernelPath::Avx2Fma => "avx2+fma",
            KernelPath::Avx512F => "avx512f",
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            KernelPath::Portable => true,
            KernelPath::Avx2Fma => cpu_has_avx2_fma(),
            KernelPath::Avx512F => cpu_has_avx512f(),
        }
    }

    /// The widest available path; detected on first use and cached.
    pub fn selected() -> KernelPath {
        static SELECTED: OnceLock<KernelPath> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            let widest_first = [KernelPath::Avx512F, KernelPath::Avx2Fma];
            widest_first.into_iter().find(|path| path.is_available()).unwrap_or(KernelPath::Portable)
        })
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_avx512f() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_avx2_fma() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_avx512f() -> bool {
    false
}

/// Asked for a micro-kernel path whose instructions this CPU lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathUnavailable {
    pub path: KernelPath,
}

impl fmt::Display for PathUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gemm: this CPU lacks {} (the {:?} micro-kernel path)", self.path.name(), self.path)
    }
}

impl std::error::Error for PathUnavailable {}

/// How a finished tile combines with C: the first depth block applies beta (or ignores C when beta is
/// zero, so NaNs in C do not propagate); later depth blocks accumulate.
#[derive(Clone, Copy, Debug)]
pub(super) enum Update<T> {
    /// `C = alpha * tile`
    Overwrite,
    /// `C = alpha * tile + beta * C`
    Scale(T),
    /// `C = alpha * tile + C`
    Accumulate,
}

/// Computes the register tile `tile[i][j] = sum_p a[p * mr + i] * b[p * nr + j]` over the depth
/// `p = 0..a.len() / mr` in increasing order starting from zero, then combines it into
/// `c[i][col..col + nr]` for `i < mr` as `update` says. Every implementation keeps this per-element order
/// (it is what makes results independent of the thread split) and checks the slice lengths it relies on.
/// A kernel on k-pairs (`k_unit == 2`, the bf16 dot products) reads `a[q * 2 * mr + 2 * i + h]` for depth
/// `2 * q + h`, and likewise B; its order within a pair is its own (`bf16/`).
///
/// Unsafe to call: SIMD implementations execute instructions the CPU must have (see [`Kernel::tile`]).
pub(super) type MicroKernelFn<T, P = T> =
    unsafe fn(a: &[P], b: &[P], c: &mut [&mut [T]], col: usize, alpha: T, update: Update<T>);

/// A micro-kernel together with its packing routines and the block sizes tuned for it: C and the scalars
/// are `T`, the operands are read as `S` and packed as `P` (all `T` but for the bf16 GEMM, whose operands
/// are bf16 and are packed as bf16 pairs or widened to f32).
#[derive(Clone, Copy)]
pub(super) struct Kernel<T, S = T, P = T> {
    /// Rows of the register tile (A sliver width).
    pub(super) mr: usize,
    /// Columns of the register tile (B sliver width).
    pub(super) nr: usize,
    /// Target rows of an A block packed per task (`mc x kc` stays in L2); a multiple of `mr`.
    pub(super) mc: usize,
    /// Depth block: a `kc x nr` B sliver stays in L1 while A slivers stream past it.
    pub(super) kc: usize,
    /// Column panel: a `kc x nc` packed B panel stays in L3; a multiple of `nr`.
    pub(super) nc: usize,
    /// Depth steps the micro-kernel reads as one: 1, or 2 for k-pairs; packing pads each depth block to
    /// a multiple of it with zeros, and `kc` is a multiple of it.
    pub(super) k_unit: usize,
    pub(super) pack_a: PackFn<S, P>,
    pub(super) pack_b: PackFn<S, P>,
    /// The path `compute` belongs to: the few-row path (`gemv.rs`) follows its rounding (fused
    /// multiply-adds on the SIMD paths, a multiply then an add on the portable one) so both give the same
    /// bits, and runs its own loops for the same instruction set.
    pub(super) path: KernelPath,
    /// Invariant: a SIMD micro-kernel is stored here only by a constructor that has just checked that the
    /// CPU has its features (`x86::avx2_f32` and the like return `None` otherwise).
    pub(super) compute: MicroKernelFn<T, P>,
}

impl<T, S, P> Kernel<T, S, P> {
    /// A depth block of `depth` steps as packed: padded to whole `k_unit`s.
    pub(super) fn packed_depth(&self, depth: usize) -> usize {
        depth.next_multiple_of(self.k_unit)
    }

    /// Runs the micro-kernel on one full tile (see [`MicroKernelFn`]).
    #[inline]
    pub(super) fn tile(&self, a: &[P], b: &[P], c: &mut [&mut [T]], col: usize, alpha: T, update: Update<T>) {
        // SAFETY: `compute` is a portable kernel (safe) or a SIMD kernel that was stored only after its
        // constructor detected the CPU features it executes (the field's invariant); the kernel itself
        // checks the slice lengths it reads and writes.
        unsafe { (self.compute)(a, b, c, col, alpha, update) }
    }
}

impl<T: Float> Kernel<T> {
    /// The kernel of `path` for element type `T`, or `None` when the CPU cannot run it.
    pub(super) fn for_path(path: KernelPath) -> Option<Self> {
        match path {
            KernelPath::Portable => Some(portable::kernel()),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2Fma => by_type(super::x86::avx2_f32(), super::x86::avx2_f64()),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512F => by_type(super::x86::avx512_f32(), super::x86::avx512_f64()),
            #[cfg(not(target_arch = "x86_64"))]
            KernelPath::Avx2Fma | KernelPath::Avx512F => None,
        }
    }

    /// The kernel of [`KernelPath::selected`].
    pub(super) fn selected() -> Self {
        Self::for_path(KernelPath::selected()).unwrap_or_else(portable::kernel)
    }
}

/// Picks the f32 or the f64 kernel for `T` (the kernels are per concrete type; `T` is one of them).
#[cfg(target_arch = "x86_64")]
fn by_type<T: Float>(f32_kernel: Option<Kernel<f32>>, f64_kernel: Option<Kernel<f64>>) -> Option<Kernel<T>> {
    use std::any::Any;
    let (f32_kernel, f64_kernel): (&dyn Any, &dyn Any) = (&f32_kernel, &f64_kernel);
    let typed = f32_kernel.downcast_ref::<Option<Kernel<T>>>();
    typed.or_else(|| f64_kernel.downcast_ref::<Option<Kernel<T>>>()).copied().flatten()
}

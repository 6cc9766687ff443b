//! bf16 GEMM: `C = alpha * A @ B + beta * C` with bf16 A and B (any strides the f32 GEMM takes), f32
//! accumulation, and an f32 or bf16 C (a bf16 C is computed in f32 and rounded once, to nearest even,
//! as it is stored). It runs the f32 GEMM's loop nest (`driver.rs`) with other packing and micro-kernels,
//! on one of these paths, chosen at run time ([`Bf16Path::selected`]) or forced ([`gemm_bf16_with_path`]):
//!
//! | path              | packing                       | micro-kernel                          | KC  |
//! |-------------------|-------------------------------|---------------------------------------|-----|
//! | `dot-avx512bf16`  | k-pairs (`pack.rs`)           | `VDPBF16PS`, 12 x 32 (`x86.rs`)       | 512 |
//! | `dot-portable`    | k-pairs                       | `VDPBF16PS` emulated exactly (`dot.rs`) | 512 |
//! | `widen-<f32 path>`| bf16 widened to f32           | that f32 path's micro-kernel          | 256 |
//!
//! The widening paths are for CPUs without bf16 dot products (the selected one there is the widest f32
//! path); AMX-BF16 (tile multiplies) is not implemented: the development machine's CPU, an Intel Xeon with
//! AVX512-BF16, does not expose AMX (no `amx_bf16` in `/proc/cpuinfo`), so such a kernel could be neither
//! tested nor tuned here.
//!
//! Rounding models, each element summed by one thread in a fixed order, so results are bit-identical for
//! any thread count:
//! - dot paths: per depth block of KC (= 512) steps, an f32 accumulator from zero takes the k-pairs
//!   `(2q, 2q + 1)` in order, each as `VDPBF16PS` does (the odd k's exact product added first, then the
//!   even one's, each addition rounded to nearest even; denormal inputs read as zero, tiny sums flushed
//!   to zero: `dot.rs` states it in full); the block's sum is combined into C as `alpha * acc` (first
//!   block, `beta == 0`), `fma(alpha, acc, beta * c)` (first block) or `fma(alpha, acc, c)` (later
//!   blocks). The portable and AVX512-BF16 paths give the same bits (up to NaN payloads).
//! - widening paths: exactly the f32 GEMM's model on the widened inputs (KC = 256, `fma(a, b, acc)` on
//!   the SIMD paths, `acc + a * b` on the portable one; the product of two bf16 is exact in f32 unless it
//!   leaves f32's normal range, so the two agree bit for bit on such inputs when alpha scales exactly);
//!   the result is bit for bit the f32 [`super::gemm_with_path`] of the widened operands.
//!
//! A bf16 C is rounded once per element either way: a product whose depth is one depth block (`k <= KC`,
//! most of CoLA's: the low-rank factors' depth is d or r) rounds each tile as it is stored (the tile
//! combined with C in an f32 scratch tile, C widened into it first when `beta != 0`), so C is written once
//! as bf16; a deeper one goes through an f32 accumulator (kept per thread between calls) and one rounding
//! pass at the end, so no partial sum over depth blocks is rounded. Both give the f32 C's value rounded.
//!
//! Measured on the development machine (an Intel Xeon with AVX512-BF16 under a hypervisor, `bench_gemm
//! --bf16 --bf16-path ...`, one thread, CPU time): `VDPBF16PS` issues about a quarter as often as an
//! AVX-512 FMA, so its 64 FLOPs per instruction give about half the FMA's FLOP rate, and the dot path runs
//! at about 0.65x the widening one (cube1024: 68 against 105 GFLOP/s). The selection still prefers the
//! dot path where the CPU has it, as for the f32 paths (widest instructions first).
mod dot;
mod pack;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::driver::{gemm_on, CElement, Product, Workspace};
use super::kernel::{Kernel, KernelPath, MicroKernelFn};
use super::pack::{pack_into, PackFn};
use super::{batched_on, with_workspace, BatchProduct, BatchRef, Dims, MatRef};
use crate::cpu::bf16::{round_par, round_rows, widen, widen_par};
use half::bf16;
use std::fmt;

/// A bf16 GEMM implementation (see the module header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bf16Path {
    /// `VDPBF16PS` emulated bit for bit in plain Rust: the reference of [`Bf16Path::DotAvx512Bf16`].
    DotPortable,
    /// x86-64 with AVX512-BF16: `VDPBF16PS` on k-pairs.
    DotAvx512Bf16,
    /// bf16 widened to f32 while packing, then the f32 micro-kernel of this path.
    Widen(KernelPath),
}

impl Bf16Path {
    /// Every path: the dot paths, then one widening path per f32 path.
    pub const ALL: [Bf16Path; 5] = [
        Bf16Path::DotPortable,
        Bf16Path::DotAvx512Bf16,
        Bf16Path::Widen(KernelPath::Portable),
        Bf16Path::Widen(KernelPath::Avx2Fma),
        Bf16Path::Widen(KernelPath::Avx512F),
    ];

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Bf16Path::DotPortable => true,
            Bf16Path::DotAvx512Bf16 => cpu_has_avx512bf16(),
            Bf16Path::Widen(path) => path.is_available(),
        }
    }

    /// `VDPBF16PS` where the CPU has it and runs it at the FMA's rate, else the widening path of the
    /// selected f32 path; detected once. A `VDPBF16PS` does two multiply-adds per lane, so it doubles the
    /// f32 peak only where it issues as often as an FMA: AMD's Zen 4 and Zen 5 do. The Intel Xeon with
    /// AVX512-BF16 (no AMX exposed) that this project is measured on issues it at well under the FMA's
    /// rate (README, "bf16 GEMM"), so Intel CPUs widen to f32 while packing, which ran faster there.
    pub fn selected() -> Bf16Path {
        static SELECTED: std::sync::OnceLock<Bf16Path> = std::sync::OnceLock::new();
        *SELECTED.get_or_init(|| {
            if Bf16Path::DotAvx512Bf16.is_available() && cpu_is_amd() {
                Bf16Path::DotAvx512Bf16
            } else {
                Bf16Path::Widen(KernelPath::selected())
            }
        })
    }
}

impl fmt::Display for Bf16Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bf16Path::DotPortable => write!(f, "dot-portable"),
            Bf16Path::DotAvx512Bf16 => write!(f, "dot-avx512bf16"),
            Bf16Path::Widen(path) => write!(f, "widen-{}", path.name()),
        }
    }
}

/// Asked for a bf16 GEMM path whose instructions this CPU lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bf16 gemm: this CPU cannot run the {path} path")]
pub struct Bf16PathUnavailable {
    pub path: Bf16Path,
}

/// Whether the CPU's vendor string (CPUID leaf 0) is AMD's.
#[cfg(target_arch = "x86_64")]
fn cpu_is_amd() -> bool {
    // SAFETY: CPUID leaf 0 exists on every x86_64 CPU and only reads identification registers.
    #[allow(unused_unsafe)]
    let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
    let vendor: Vec<u8> = [leaf.ebx, leaf.edx, leaf.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
    vendor == b"AuthenticAMD"
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_is_amd() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_avx512bf16() -> bool {
    x86::cpu_has_avx512bf16()
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_avx512bf16() -> bool {
    false
}

/// The dot kernels around `compute` (the `VDPBF16PS` kernel or its emulation: one blocking, so one KC and
/// the same bits). KC = 512 makes the 32-wide B sliver 32 KiB of k-pairs, the f32 kernel's 32 KiB at
/// KC = 256, next to a 12 KiB A sliver in a 48 KiB L1d; the A block is 288 x 512 (288 KiB of L2).
fn dot_kernel(compute: MicroKernelFn<f32, bf16>, path: KernelPath) -> Kernel<f32, bf16, bf16> {
    Kernel {
        mr: 12,
        nr: 32,
        mc: 288,
        kc: 512,
        nc: 4096,
        k_unit: 2,
        pack_a: pack::pack_pairs::<12>,
        pack_b: pack::pack_pairs::<32>,
        path,
        compute,
    }
}

/// The widening [`PackFn`] for slivers `width` wide (the f32 kernels' widths).
fn widening_pack(width: usize) -> Option<PackFn<bf16, f32>> {
    match width {
        6 => Some(pack_into::<bf16, f32, 6>),
        8 => Some(pack_into::<bf16, f32, 8>),
        12 => Some(pack_into::<bf16, f32, 12>),
        16 => Some(pack_into::<bf16, f32, 16>),
        32 => Some(pack_into::<bf16, f32, 32>),
        _ => None,
    }
}

/// The f32 kernel of `path` reading bf16 operands: the same micro-kernel and blocking, widening packs.
fn widening_kernel(path: KernelPath) -> Option<Kernel<f32, bf16, f32>> {
    let f32_kernel = Kernel::<f32>::for_path(path)?;
    let (pack_a, pack_b) = (widening_pack(f32_kernel.mr)?, widening_pack(f32_kernel.nr)?);
    let Kernel { mr, nr, mc, kc, nc, k_unit, path, compute, .. } = f32_kernel;
    Some(Kernel { mr, nr, mc, kc, nc, k_unit, pack_a, pack_b, path, compute })
}

/// An output element type of the bf16 GEMM: f32 (C is the accumulator) or bf16 (C is rounded once from
/// f32 sums). A bf16 C of a product whose depth fits one depth block takes each tile rounded as it is
/// stored (`driver::CElement`); a deeper one goes through a whole f32 accumulator rounded at the end, so
/// no partial sum is ever rounded. Implemented for `f32` and `bf16` only.
pub trait Bf16GemmOutput: Copy + Send + Sync + 'static {
    /// Runs `compute` (which writes `alpha * A @ B + beta * C` into an f32 C) on `c` or on its f32 copy.
    #[doc(hidden)]
    fn through_f32(c: &mut [Self], beta: f32, compute: impl FnOnce(&mut [f32]));

    /// `c` as bf16 when it is (C rounded at tile store), else `None`.
    #[doc(hidden)]
    fn as_bf16(c: &mut [Self]) -> Option<&mut [bf16]>;
}

impl Bf16GemmOutput for f32 {
    fn through_f32(c: &mut [f32], _beta: f32, compute: impl FnOnce(&mut [f32])) {
        compute(c);
    }

    fn as_bf16(_c: &mut [f32]) -> Option<&mut [bf16]> {
        None
    }
}

/// A bf16 C rounded at tile store (see `driver::CElement`).
impl CElement<f32> for bf16 {
    const ROUNDS: bool = true;

    fn direct<'r, 'c>(_rows: &'r mut [&'c mut [bf16]]) -> Option<&'r mut [&'c mut [f32]]> {
        None
    }

    fn load(src: &[bf16], dst: &mut [f32]) {
        widen(src, dst);
    }

    fn store_tile(src: &[&mut [f32]], dst: &mut [&mut [bf16]], cols: std::ops::Range<usize>) {
        round_rows(src, dst, cols);
    }

    fn scale(beta: f32, c: &mut [bf16]) {
        if beta == 0.0 {
            c.fill(bf16::ZERO);
        } else {
            c.iter_mut().for_each(|x| *x = bf16::from_f32(x.to_f32() * beta));
        }
    }
}

/// Largest f32 accumulator for a bf16 C a thread keeps between calls (160 MiB); a larger one is freed after
/// its call. Sized for the LM head's logits block (`HEAD_LOSS_CHUNK_ROWS` = 1024 rows x 32000, 125 MiB): at
/// 64 MiB it was freed and faulted in afresh at every block, 32,000 pages each (measured over six cola-60m
/// bf16-mixed steps of 8 x 256 tokens: 1.24 M minor page faults before, 0.89 M after).
const KEPT_ACCUMULATOR_LEN: usize = 40 << 20;

thread_local! {
    /// Each calling thread's f32 accumulator for a bf16 C, kept so that a call neither allocates nor
    /// faults in fresh pages (a 4096 x 1024 C is 16 MiB of f32).
    static ACCUMULATOR: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Bf16GemmOutput for bf16 {
    fn as_bf16(c: &mut [bf16]) -> Option<&mut [bf16]> {
        Some(c)
    }

    fn through_f32(c: &mut [bf16], beta: f32, compute: impl FnOnce(&mut [f32])) {
        // Taken out for the call, so a nested call on this thread uses a fresh buffer.
        let mut kept = ACCUMULATOR.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
        if kept.len() < c.len() {
            kept.resize(c.len(), 0.0);
        }
        let acc = &mut kept[..c.len()];
        // With `beta == 0` the GEMM ignores C's contents, so stale values are never read.
        if beta != 0.0 {
            widen_par(c, acc);
        }
        compute(acc);
        round_par(acc, c);
        if kept.len() <= KEPT_ACCUMULATOR_LEN {
            ACCUMULATOR.with(|cell| *cell.borrow_mut() = kept);
        }
    }
}

/// `C = alpha * A @ B + beta * C` on bf16 A and B, accumulated in f32, on [`Bf16Path::selected`]; C is
/// contiguous row-major `m x n` of f32 or bf16. As [`super::gemm`]: `beta == 0` ignores C's contents;
/// `alpha == 0` or `k == 0` reads neither A nor B.
pub fn gemm_bf16<O: Bf16GemmOutput>(
    dims: Dims,
    alpha: f32,
    a: MatRef<'_, bf16>,
    b: MatRef<'_, bf16>,
    beta: f32,
    c: &mut [O],
) {
    let threads = rayon::current_num_threads();
    run(&selected_kernels(), Product { dims, alpha, a, b, beta }, c, threads);
}

/// [`gemm_bf16`] on a chosen path (tests compare paths, benchmarks time them); errs, computing nothing,
/// when this CPU lacks the path.
pub fn gemm_bf16_with_path<O: Bf16GemmOutput>(
    path: Bf16Path,
    dims: Dims,
    alpha: f32,
    a: MatRef<'_, bf16>,
    b: MatRef<'_, bf16>,
    beta: f32,
    c: &mut [O],
) -> Result<(), Bf16PathUnavailable> {
    on_path(path, Product { dims, alpha, a, b, beta }, c)
}

/// Batched bf16 GEMM on [`Bf16Path::selected`]: for each item, `C[i] = alpha * A[i] @ B[i] + beta * C[i]`
/// with C contiguous `[batch, m, n]`; split over items and threads as [`super::gemm_batched`] does, so
/// every item has the bits of a [`gemm_bf16`] call.
pub fn gemm_bf16_batched<O: Bf16GemmOutput>(
    dims: Dims,
    alpha: f32,
    a: BatchRef<'_, bf16>,
    b: BatchRef<'_, bf16>,
    beta: f32,
    c: &mut [O],
) {
    let product = BatchProduct { dims, alpha, a, b, beta };
    let kernels = selected_kernels();
    if kernels.single_block(dims.k) {
        if let Some(c) = O::as_bf16(c) {
            return kernels.batched(product, c);
        }
    }
    O::through_f32(c, beta, |c| kernels.batched(product, c));
}

/// The kernel of a path: k-pairs packed as bf16, or operands widened to f32.
enum Kernels {
    Dot(Kernel<f32, bf16, bf16>),
    Widen(Kernel<f32, bf16, f32>),
}

impl Kernels {
    /// Whether a product of depth `k` is one depth block of this kernel (a bf16 C is then rounded at tile
    /// store).
    fn single_block(&self, k: usize) -> bool {
        k <= match self {
            Kernels::Dot(kernel) => kernel.kc,
            Kernels::Widen(kernel) => kernel.kc,
        }
    }

    /// One product with `threads` threads into C of elements `C`.
    fn gemm<C: CElement<f32>>(&self, product: Product<'_, f32, bf16>, c: &mut [C], threads: usize) {
        match self {
            Kernels::Dot(kernel) => {
                with_workspace(|w: &mut Workspace<bf16>| gemm_on(kernel, product, c, threads, w))
            }
            Kernels::Widen(kernel) => {
                with_workspace(|w: &mut Workspace<f32>| gemm_on(kernel, product, c, threads, w))
            }
        }
    }

    /// A batched product into C of elements `C`.
    fn batched<C: CElement<f32>>(&self, product: BatchProduct<'_, f32, bf16>, c: &mut [C]) {
        match self {
            Kernels::Dot(kernel) => batched_on(kernel, gemm_on, product, c),
            Kernels::Widen(kernel) => batched_on(kernel, gemm_on, product, c),
        }
    }
}

/// The kernel of `path`, or `None` when this CPU cannot run it.
fn kernels(path: Bf16Path) -> Option<Kernels> {
    match path {
        Bf16Path::DotPortable => {
            Some(Kernels::Dot(dot_kernel(dot::micro_kernel::<12, 32>, KernelPath::Portable)))
        }
        // The `VDPBF16PS` kernel is stored only once its features are detected (`Kernel::compute`'s
        // invariant).
        #[cfg(target_arch = "x86_64")]
        Bf16Path::DotAvx512Bf16 => {
            cpu_has_avx512bf16().then(|| Kernels::Dot(dot_kernel(x86::dot_12x32, KernelPath::Avx512F)))
        }
        #[cfg(not(target_arch = "x86_64"))]
        Bf16Path::DotAvx512Bf16 => None,
        Bf16Path::Widen(path) => widening_kernel(path).map(Kernels::Widen),
    }
}

/// The kernel of [`Bf16Path::selected`] (available by construction; the portable widening kernel, which
/// every CPU runs, stands in should detection ever disagree).
fn selected_kernels() -> Kernels {
    kernels(Bf16Path::selected())
        .or_else(|| kernels(Bf16Path::Widen(KernelPath::Portable)))
        .unwrap_or_else(|| Kernels::Dot(dot_kernel(dot::micro_kernel::<12, 32>, KernelPath::Portable)))
}

/// One product on `path`'s kernel with every thread of the pool; errs when this CPU lacks the path.
fn on_path<O: Bf16GemmOutput>(
    path: Bf16Path,
    product: Product<'_, f32, bf16>,
    c: &mut [O],
) -> Result<(), Bf16PathUnavailable> {
    let kernels = kernels(path).ok_or(Bf16PathUnavailable { path })?;
    run(&kernels, product, c, rayon::current_num_threads());
    Ok(())
}

/// One product on `kernels` with `threads` threads: a bf16 C of one depth block rounded at tile store,
/// else through an f32 C.
fn run<O: Bf16GemmOutput>(kernels: &Kernels, product: Product<'_, f32, bf16>, c: &mut [O], threads: usize) {
    if kernels.single_block(product.dims.k) {
        if let Some(c) = O::as_bf16(c) {
            return kernels.gemm(product, c, threads);
        }
    }
    O::through_f32(c, product.beta, |c| kernels.gemm(product, c, threads));
}

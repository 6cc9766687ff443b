//! The ceilings products can approach. A GEMM's: independent f32 FMA chains in registers, no memory
//! traffic; benchmarks time [`fma_probe`] next to the GEMM (`cargo bench --bench gemm -- fma_peak`). A
//! few-row product's (a decode step's), which reads every weight once: the machine's memory bandwidth,
//! as [`copy_bandwidth`] measures it (`bench_gemm --few-rows`, `bench_inference`).
use super::kernel::{KernelPath, PathUnavailable};
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

/// Runs `steps` rounds of independent f32 multiply-add chains with the register shape of `path`'s
/// micro-kernel (AVX2: 12 chains of 8 lanes; AVX-512: 24 of 16; portable: 12 of 4, plain multiply and
/// add as the portable kernel compiles them; each chain is `acc = acc * x + y`, so nothing can be hoisted)
/// and returns the floating-point operations performed.
pub fn fma_probe(path: KernelPath, steps: usize) -> Result<u64, PathUnavailable> {
    if !path.is_available() {
        return Err(PathUnavailable { path });
    }
    let (x, y) = (black_box(1.000_000_1f32), black_box(0.999_999_9f32));
    let (sink, flops_per_step) = match path {
        KernelPath::Portable => (portable_probe(steps, x, y), 12 * 4 * 2),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        KernelPath::Avx2Fma => (unsafe { super::x86::fma_probe_avx2(steps, x, y) }, 12 * 8 * 2),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F (checked above).
        KernelPath::Avx512F => (unsafe { super::x86::fma_probe_avx512(steps, x, y) }, 24 * 16 * 2),
        #[cfg(not(target_arch = "x86_64"))]
        KernelPath::Avx2Fma | KernelPath::Avx512F => return Err(PathUnavailable { path }),
    };
    black_box(sink);
    Ok(steps as u64 * flops_per_step)
}

fn portable_probe(steps: usize, x: f32, y: f32) -> f32 {
    let mut acc = [[0.0f32; 4]; 12];
    for _ in 0..steps {
        for chain in acc.iter_mut() {
            for lane in chain.iter_mut() {
                *lane = *lane * x + y;
            }
        }
    }
    acc.iter().flatten().sum()
}

/// The machine's copy bandwidth in GB/s (10^9 bytes copied per second; each byte is read once and
/// written once, so the memory bus carries twice that): a 512 MiB buffer copied into another, split in
/// equal parts among the current rayon pool's threads (as a decode step's products are), the median of
/// `repeats` timed copies after one that faults the target's pages in. Both buffers pass through
/// `black_box` around every copy, so none can be elided.
pub fn copy_bandwidth(repeats: usize) -> f64 {
    const BYTES: usize = 512 << 20;
    let source = vec![1u64; BYTES / 8];
    let mut target = vec![0u64; BYTES / 8];
    let part = source.len().div_ceil(rayon::current_num_threads());
    let mut copy = || {
        let began = Instant::now();
        let source = black_box(&source);
        target
            .par_chunks_mut(part)
            .zip(source.par_chunks(part))
            .for_each(|(to, from)| to.copy_from_slice(from));
        black_box(&mut target);
        began.elapsed().as_secs_f64()
    };
    copy();
    let mut seconds: Vec<f64> = (0..repeats.max(1)).map(|_| copy()).collect();
    seconds.sort_by(f64::total_cmp);
    BYTES as f64 / seconds[seconds.len() / 2] / 1e9
}

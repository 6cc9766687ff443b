//! Criterion benches of the CPU GEMM on CoLA's shapes (the cases of `examples/bench_gemm`, which
//! `scripts/bench_gemm_vs_numpy.sh` times side by side with numpy), f32, all rayon threads, on the path
//! selected for this CPU; then each available micro-kernel path on two shapes; then the ceiling, the FMA
//! peak of each path on one thread and on all threads. Throughput is reported as elements = floating-point
//! operations (`2 m n k`), so criterion's "elem/s" reads as FLOP/s.
//!
//! `cargo bench --bench gemm`; filter with a name, e.g. `cargo bench --bench gemm -- wgrad` or `-- fma_peak`.
use cola::kernels::cpu::gemm::{fma_probe, gemm, gemm_with_path, Dims, KernelPath, MatRef};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

/// `(name, m, k, n, a_transposed)`: the cube, then per preset (d_model, ffn_dim, rank) of 350m and 60m
/// with 4096 tokens, the forward products of the low-rank factors and the weight-gradient products
/// `x^T @ g` (A stored transposed, as backward reads the activations).
fn cases() -> Vec<(String, usize, usize, usize, bool)> {
    let mut out = vec![("cube1024".to_string(), 1024, 1024, 1024, false)];
    let tokens = 4096;
    for (preset, size) in [("350m", cola::nn::Size::M350), ("60m", cola::nn::Size::M60)] {
        let (d, f, r) = (size.spec().d_model, size.spec().ffn_dim, size.spec().rank);
        out.push((format!("{preset}_down_d"), tokens, d, r, false));
        out.push((format!("{preset}_up_d"), tokens, r, d, false));
        out.push((format!("{preset}_up_f"), tokens, r, f, false));
        out.push((format!("{preset}_down_f"), tokens, f, r, false));
        out.push((format!("{preset}_wgrad_a"), d, tokens, r, true));
        out.push((format!("{preset}_wgrad_b"), r, tokens, d, true));
    }
    out
}

/// Deterministic values in [-0.5, 0.5).
fn filled(len: usize, seed: u64) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            let x = (i ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Operands of one case: A (`m x k`, or stored `k x m` when transposed), B (`k x n`), C.
struct Operands {
    dims: Dims,
    a: Vec<f32>,
    a_strides: (usize, usize),
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Operands {
    fn new(m: usize, k: usize, n: usize, a_transposed: bool) -> Self {
        let a_strides = if a_transposed { (1, m) } else { (k, 1) };
        Operands {
            dims: Dims { m, n, k },
            a: filled(m * k, 1),
            a_strides,
            b: filled(k * n, 2),
            c: vec![0.0; m * n],
        }
    }

    fn run(&mut self, path: Option<KernelPath>) {
        let a =
            MatRef { data: &self.a, offset: 0, row_stride: self.a_strides.0, col_stride: self.a_strides.1 };
        let b = MatRef { data: &self.b, offset: 0, row_stride: self.dims.n, col_stride: 1 };
        match path {
            None => gemm(self.dims, 1.0, a, b, 0.0, &mut self.c),
            Some(path) => {
                gemm_with_path(path, self.dims, 1.0, a, b, 0.0, &mut self.c).expect("path checked available")
            }
        }
    }
}

fn bench_cases(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("gemm_{}", KernelPath::selected().name()));
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for (name, m, k, n, a_transposed) in cases() {
        let mut operands = Operands::new(m, k, n, a_transposed);
        group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        group.bench_function(BenchmarkId::new(name, format!("{m}x{k}x{n}")), |bencher| {
            bencher.iter(|| operands.run(None))
        });
    }
    group.finish();
}

fn bench_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm_paths");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for path in KernelPath::ALL {
        if !path.is_available() {
            println!("skipped: CPU lacks {}", path.name());
            continue;
        }
        for (name, m, k, n, a_transposed) in
            [("cube512", 512, 512, 512, false), ("wgrad", 512, 4096, 128, true)]
        {
            let mut operands = Operands::new(m, k, n, a_transposed);
            group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
            group.bench_function(BenchmarkId::new(name, path.name()), |bencher| {
                bencher.iter(|| operands.run(Some(path)))
            });
        }
    }
    group.finish();
}

fn bench_fma_peak(c: &mut Criterion) {
    const STEPS: usize = 1 << 20;
    let mut group = c.benchmark_group("fma_peak");
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    let threads = rayon::current_num_threads();
    for path in KernelPath::ALL.into_iter().filter(|path| path.is_available()) {
        let flops = fma_probe(path, STEPS).expect("path checked available");
        group.throughput(Throughput::Elements(flops));
        group.bench_function(BenchmarkId::new(path.name(), "1 thread"), |bencher| {
            bencher.iter(|| fma_probe(path, STEPS))
        });
        group.throughput(Throughput::Elements(flops * threads as u64));
        group.bench_function(BenchmarkId::new(path.name(), format!("{threads} threads")), |bencher| {
            bencher.iter(|| rayon::broadcast(|_| fma_probe(path, STEPS)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_cases, bench_paths, bench_fma_peak);
criterion_main!(benches);

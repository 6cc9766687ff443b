//! GEMM throughput on CoLA's shapes, then the bandwidth of the fused kernels.
//!
//! Prints one line per GEMM case: `gemm <name> M=<m> K=<k> N=<n> gflops=<x>` (median of timed
//! repetitions, f32, all rayon threads), then the fused-kernel table (`fused.rs`). `--list` prints the GEMM
//! cases as `<name> <m> <k> <n> <a_transposed>` for `scripts/bench_gemm_vs_numpy.sh`, which runs numpy on
//! exactly these shapes; `--gemm-only` skips the fused kernels. `--few-rows` prints only the few-row
//! table (`few_rows.rs`: decode-sized products on the few-row path against the blocked GEMM).
mod few_rows;
mod fused;
mod shapes;

use cola::kernels::cpu::gemm::{gemm, Dims, MatRef};
use cola::tensor::rng::uniform_at;
use std::time::Instant;

/// One benchmark case; `a_transposed` means A is stored as its transpose (`[k, m]`, as the weight-gradient
/// products of backward read the activations).
struct Case {
    name: String,
    m: usize,
    k: usize,
    n: usize,
    a_transposed: bool,
}

fn cases() -> Vec<Case> {
    let case = |name: String, m, k, n, a_transposed| Case { name, m, k, n, a_transposed };
    let mut out = vec![case("cube1024".into(), 1024, 1024, 1024, false)];
    let tokens = 4096;
    // (preset, d_model, ffn_dim, rank) from the preset table (docs/METHOD.md section 4).
    for (preset, size) in [("350m", cola::nn::Size::M350), ("60m", cola::nn::Size::M60)] {
        let (d, f, r) = (size.spec().d_model, size.spec().ffn_dim, size.spec().rank);
        out.push(case(format!("{preset}_down_d"), tokens, d, r, false));
        out.push(case(format!("{preset}_up_d"), tokens, r, d, false));
        out.push(case(format!("{preset}_up_f"), tokens, r, f, false));
        out.push(case(format!("{preset}_down_f"), tokens, f, r, false));
        out.push(case(format!("{preset}_wgrad_a"), d, tokens, r, true));
        out.push(case(format!("{preset}_wgrad_b"), r, tokens, d, true));
    }
    out
}

fn filled(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64).map(|i| uniform_at(seed, i) as f32 - 0.5).collect()
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn run(case: &Case) -> f64 {
    let (m, k, n) = (case.m, case.k, case.n);
    let a = filled(m * k, 1);
    let b = filled(k * n, 2);
    let mut c = vec![0.0f32; m * n];
    let (a_rs, a_cs) = if case.a_transposed { (1, m) } else { (k, 1) };
    let mut once = || {
        let lhs = MatRef { data: &a, offset: 0, row_stride: a_rs, col_stride: a_cs };
        let rhs = MatRef { data: &b, offset: 0, row_stride: n, col_stride: 1 };
        let start = Instant::now();
        gemm(Dims { m, n, k }, 1.0, lhs, rhs, 0.0, &mut c);
        start.elapsed().as_secs_f64()
    };
    once();
    let mut times = Vec::new();
    let budget = Instant::now();
    while times.len() < 5 || (budget.elapsed().as_secs_f64() < 1.0 && times.len() < 50) {
        times.push(once());
    }
    2.0 * (m * k * n) as f64 / median(times) / 1e9
}

fn main() {
    let list = std::env::args().any(|a| a == "--list");
    let gemm_only = std::env::args().any(|a| a == "--gemm-only");
    if std::env::args().any(|a| a == "--few-rows") {
        few_rows::run_all();
        return;
    }
    for case in cases() {
        if list {
            println!("{} {} {} {} {}", case.name, case.m, case.k, case.n, case.a_transposed as u8);
        } else {
            let gflops = run(&case);
            println!("gemm {} M={} K={} N={} gflops={:.1}", case.name, case.m, case.k, case.n, gflops);
        }
    }
    if !list && !gemm_only {
        fused::run_all();
    }
}

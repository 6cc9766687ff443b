//! GEMM throughput on CoLA's shapes, then the bandwidth of the fused kernels.
//!
//! Prints one line per GEMM case: `gemm <name> M=<m> K=<k> N=<n> gflops=<x>` (median of timed
//! repetitions, f32, all rayon threads), then the fused-kernel table (`fused.rs`). `--list` prints the GEMM
//! cases as `<name> <m> <k> <n> <a_transposed>` for `scripts/bench_gemm_vs_numpy.sh`, which runs numpy on
//! exactly these shapes; `--gemm-only` skips the fused kernels; `--case NAME` (repeatable) runs only the named
//! GEMM cases (for profiling or A/B timing of one shape; it also reaches the LM head's deep products,
//! `60m_head_dx` and the like, which the default list leaves out) and implies `--gemm-only`; `--cpu-time` divides
//! the work of all timed repetitions by the CPU time the process's threads ran (Linux schedstat) instead of
//! taking the median wall time, so time the scheduler gave to other jobs on a shared machine does not count
//! (waiting threads that spin still do). `--attention` prints only the fused table's attention lines (350m and
//! cola-60m sizes). `--few-rows` prints only the few-row
//! table (`few_rows.rs`: decode-sized products on the few-row path against the blocked GEMM). `--bf16`
//! times each case on the bf16 GEMM as well (`bf16.rs`: bf16 operands and output, f32 accumulation, the
//! selected path, or the one `--bf16-path NAME` names, e.g. `widen-avx512f`), printing
//! `gemm_bf16 <name> ... path=<path> gflops=<x>` before the f32 line, and implies `--gemm-only`.
mod bf16;
mod few_rows;
mod fused;
mod shapes;

use cola::kernels::cpu::gemm::{gemm, Bf16Path, Dims, KernelPath, MatRef};
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

/// The LM head's two deep products per block of 1024 rows (`tensor/src/ops/head_loss.rs`), run only when
/// named with `--case`: the hidden states' gradient `dlogits @ W` (depth = vocabulary) and the weight's
/// gradient `dlogits^T @ h` (depth = rows, A transposed).
fn head_cases() -> Vec<Case> {
    let (rows, vocab) = (1024, cola::nn::Size::M60.spec().vocab_size);
    let mut out = Vec::new();
    for (preset, size) in [("350m", cola::nn::Size::M350), ("60m", cola::nn::Size::M60)] {
        let d = size.spec().d_model;
        out.push(Case { name: format!("{preset}_head_dx"), m: rows, k: vocab, n: d, a_transposed: false });
        out.push(Case { name: format!("{preset}_head_dw"), m: vocab, k: rows, n: d, a_transposed: true });
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

/// Nanoseconds the threads of this process have run on a CPU: the sum over `/proc/self/task/*/schedstat`
/// of its first field. Zero where that is unavailable (not Linux).
fn cpu_nanos() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let schedstat = |task: std::fs::DirEntry| std::fs::read_to_string(task.path().join("schedstat")).ok();
    let first_field =
        |text: String| text.split_whitespace().next().and_then(|field| field.parse::<u64>().ok());
    tasks.flatten().filter_map(schedstat).filter_map(first_field).sum()
}

/// GFLOP/s of `once` (one product, returning its wall seconds) on `case`: median wall time over at least 5
/// timed runs (up to 1 s of them) after a warm-up, or with `cpu_time` the CPU time of all of them.
fn gflops(case: &Case, cpu_time: bool, mut once: impl FnMut() -> f64) -> f64 {
    once();
    let mut times = Vec::new();
    let budget = Instant::now();
    let cpu_start = cpu_nanos();
    while times.len() < 5 || (budget.elapsed().as_secs_f64() < 1.0 && times.len() < 50) {
        times.push(once());
    }
    let seconds =
        if cpu_time { (cpu_nanos() - cpu_start) as f64 / 1e9 / times.len() as f64 } else { median(times) };
    2.0 * (case.m * case.k * case.n) as f64 / seconds / 1e9
}

/// A's strides: row-major `[m, k]`, or stored as its transpose `[k, m]`.
fn a_strides(case: &Case) -> (usize, usize) {
    if case.a_transposed {
        (1, case.m)
    } else {
        (case.k, 1)
    }
}

fn run(case: &Case, cpu_time: bool) -> f64 {
    let (m, k, n) = (case.m, case.k, case.n);
    let a = filled(m * k, 1);
    let b = filled(k * n, 2);
    let mut c = vec![0.0f32; m * n];
    let (a_rs, a_cs) = a_strides(case);
    gflops(case, cpu_time, || {
        let lhs = MatRef { data: &a, offset: 0, row_stride: a_rs, col_stride: a_cs };
        let rhs = MatRef { data: &b, offset: 0, row_stride: n, col_stride: 1 };
        let start = Instant::now();
        gemm(Dims { m, n, k }, 1.0, lhs, rhs, 0.0, &mut c);
        start.elapsed().as_secs_f64()
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let list = args.iter().any(|a| a == "--list");
    let chosen: Vec<&str> =
        args.windows(2).filter(|pair| pair[0] == "--case").map(|pair| pair[1].as_str()).collect();
    let cpu_time = args.iter().any(|a| a == "--cpu-time");
    let bf16 = args.iter().any(|a| a == "--bf16");
    let gemm_only = bf16 || !chosen.is_empty() || args.iter().any(|a| a == "--gemm-only");
    if std::env::args().any(|a| a == "--few-rows") {
        few_rows::run_all();
        return;
    }
    if args.iter().any(|a| a == "--attention") {
        fused::run_all(true);
        return;
    }
    let named_path = args.windows(2).find(|pair| pair[0] == "--bf16-path").map(|pair| pair[1].as_str());
    let bf16_path = match named_path {
        None => Bf16Path::selected(),
        Some(name) => match Bf16Path::ALL.into_iter().find(|path| path.to_string() == name) {
            Some(path) if path.is_available() => path,
            _ => {
                let names: Vec<String> =
                    Bf16Path::ALL.iter().filter(|p| p.is_available()).map(|p| p.to_string()).collect();
                eprintln!("--bf16-path {name}: not a path this CPU runs (it runs: {})", names.join(", "));
                std::process::exit(2);
            }
        },
    };
    if bf16 && !list {
        println!("bf16 path: {bf16_path}; f32 path: {}", KernelPath::selected().name());
    }
    let named = |case: &Case| chosen.contains(&case.name.as_str());
    let all = cases().into_iter().filter(|case| chosen.is_empty() || named(case));
    for case in all.chain(head_cases().into_iter().filter(named)) {
        if list {
            println!("{} {} {} {} {}", case.name, case.m, case.k, case.n, case.a_transposed as u8);
        } else {
            if bf16 {
                let gflops = bf16::run(&case, bf16_path, cpu_time);
                println!(
                    "gemm_bf16 {} M={} K={} N={} path={bf16_path} gflops={gflops:.1}",
                    case.name, case.m, case.k, case.n
                );
            }
            let gflops = run(&case, cpu_time);
            println!("gemm {} M={} K={} N={} gflops={:.1}", case.name, case.m, case.k, case.n, gflops);
        }
    }
    if !list && !gemm_only {
        fused::run_all(false);
    }
}

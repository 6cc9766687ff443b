//! Few-row products (a decode step's projections and LM head) on the few-row path against the blocked
//! GEMM on the same micro-kernel path, with this machine's copy bandwidth timed in the same run so the
//! weight bandwidth can be judged: a few-row product reads each weight once, so its ceiling is about
//! the copy's read rate.
//!
//! Prints one line per case: `few_rows <m>x<k>@<k>x<n> few_row_ms=.. few_row_gbs=.. blocked_ms=..
//! blocked_gbs=.. speedup=..` (GB/s of B's bytes, 10^9 bytes per second; medians of timed repetitions,
//! f32, all rayon threads), after a `copy` line (a 512 MiB `copy_from_slice`, median of 5).
use super::median;
use super::shapes::filled;
use cola::kernels::cpu::gemm::{gemm, gemm_blocked_with_path, gemv_bf16, BatchRef, Dims, KernelPath, MatRef};
use cola::tensor::bf16;
use std::time::Instant;

/// (m, k, n): the 350m head, an MLP up projection, a rank-256 CoLA up projection, and 4 and 8 rows of
/// the head (batched decode; 8 is the largest m the few-row path takes).
const CASES: [(usize, usize, usize); 5] =
    [(1, 1024, 32_000), (1, 1024, 2736), (1, 256, 1024), (4, 1024, 32_000), (8, 1024, 32_000)];

/// Median seconds of `f` over at least 5 timed runs (up to 1 s of them), after one warm-up run.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let budget = Instant::now();
    while times.len() < 5 || (budget.elapsed().as_secs_f64() < 1.0 && times.len() < 200) {
        let start = Instant::now();
        f();
        times.push(start.elapsed().as_secs_f64());
    }
    median(times)
}

/// Read bandwidth of a large copy, GB/s of source bytes (the bus also carries as many written bytes).
fn copy_gbs() -> f64 {
    let n = (512 << 20) / 4;
    let src = filled(n, 7, 1.0);
    let mut dst = vec![0.0f32; n];
    let seconds = time(|| dst.copy_from_slice(&src));
    std::hint::black_box(&dst);
    (n * 4) as f64 / seconds / 1e9
}

pub fn run_all() {
    let copy = copy_gbs();
    println!("copy bytes=536870912 read_gbs={copy:.1} read_plus_write_gbs={:.1}", 2.0 * copy);
    for (m, k, n) in CASES {
        let a = filled(m * k, 1, 1.0);
        let b = filled(k * n, 2, 1.0);
        let mut c = vec![0.0f32; m * n];
        let dims = Dims { m, n, k };
        let lhs = MatRef { data: &a, offset: 0, row_stride: k, col_stride: 1 };
        let rhs = MatRef { data: &b, offset: 0, row_stride: n, col_stride: 1 };
        let few_row = time(|| gemm(dims, 1.0, lhs, rhs, 0.0, &mut c));
        let path = KernelPath::selected();
        let blocked = time(|| {
            // The selected path is available by construction, so this cannot fail.
            let _ = gemm_blocked_with_path(path, dims, 1.0, lhs, rhs, 0.0, &mut c);
        });
        let a16: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
        let b16: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
        let few_row_bf16 = time(|| {
            let lhs = BatchRef { data: &a16, offsets: &[0], row_stride: k, col_stride: 1 };
            let rhs = BatchRef { data: &b16, offsets: &[0], row_stride: n, col_stride: 1 };
            gemv_bf16(path, dims, lhs, rhs, &mut c).expect("a few-row product");
        });
        let gbs = |seconds: f64, bytes: usize| (k * n * bytes) as f64 / seconds / 1e9;
        println!(
            "few_rows {m}x{k}@{k}x{n} few_row_ms={:.3} few_row_gbs={:.1} blocked_ms={:.3} blocked_gbs={:.1} \
             speedup={:.2} bf16_ms={:.3} bf16_gbs={:.1}",
            few_row * 1e3,
            gbs(few_row, 4),
            blocked * 1e3,
            gbs(blocked, 4),
            blocked / few_row,
            few_row_bf16 * 1e3,
            gbs(few_row_bf16, 2),
        );
    }
}

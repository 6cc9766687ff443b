//! Few-row products (a decode step's projections and LM head) on the few-row path against the blocked
//! GEMM on the same micro-kernel path, with this machine's copy bandwidth timed in the same run so the
//! weight bandwidth can be judged: a few-row product reads each weight once, so its ceiling is about
//! the copy's read rate.
//!
//! Prints one line per case: `few_rows <m>x<k>@<k>x<n> few_row_ms=.. few_row_gbs=.. blocked_ms=..
//! blocked_gbs=.. speedup=.. bf16_ms=.. bf16_gbs=..` (GB/s of B's bytes, 10^9 bytes per second; medians
//! of timed repetitions, all rayon threads; f32 on the few-row path and the blocked GEMM, then bf16
//! operands on the few-row path, `gemv_bf16`), after a `copy` line (`copy_bandwidth`: a 512 MiB copy split
//! among the threads, median of 5). Then `few_rows_layers` lines: a decode step's projections of every
//! layer of cola-350m (distinct weights, so they stream from memory as in a model; the head excluded),
//! at 1 and 8 rows, f32 and bf16: milliseconds per step and GB/s of weights.
use super::median;
use super::shapes::filled;
use cola::kernels::cpu::gemm::{
    copy_bandwidth, gemm, gemm_blocked_with_path, gemv_bf16, BatchRef, Dims, KernelPath, MatRef,
};
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

pub fn run_all() {
    let copy = copy_bandwidth(5);
    println!(
        "copy bytes=536870912 threads={} read_gbs={copy:.1} read_plus_write_gbs={:.1}",
        rayon::current_num_threads(),
        2.0 * copy
    );
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
    layers();
}

/// The CoLA projections of one layer as `(k, n)`: attention's q, k, v, o and the MLP's gate, up and down,
/// each a down factor `[in, r]` and an up factor `[r, out]`.
fn layer_shapes(d: usize, f: usize, r: usize) -> Vec<(usize, usize)> {
    let mut shapes = Vec::new();
    for (input, output) in [(d, d), (d, d), (d, d), (d, d), (d, f), (d, f), (f, d)] {
        shapes.push((input, r));
        shapes.push((r, output));
    }
    shapes
}

/// Every layer's projections run in order, as a decode step runs them (the input of each product is a
/// fixed row, which does not change the time).
fn layers() {
    let spec = cola::nn::Size::M350.spec();
    let shapes = layer_shapes(spec.d_model, spec.ffn_dim, spec.rank);
    // `(k, n)` of every product of a step, layer after layer.
    let products: Vec<(usize, usize)> = (0..spec.n_layers).flat_map(|_| shapes.iter().copied()).collect();
    let weights: Vec<Vec<f32>> =
        products.iter().enumerate().map(|(i, &(k, n))| filled(k * n, i as u64, 1.0)).collect();
    let weights16: Vec<Vec<bf16>> =
        weights.iter().map(|w| w.iter().map(|&x| bf16::from_f32(x)).collect()).collect();
    let widest = spec.d_model.max(spec.ffn_dim);
    let path = KernelPath::selected();
    for m in [1, 8] {
        let a = filled(m * widest, 99, 1.0);
        let a16: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
        let mut c = vec![0.0f32; m * widest];
        let f32_step = time(|| {
            for (w, &(k, n)) in weights.iter().zip(&products) {
                let lhs = MatRef { data: &a, offset: 0, row_stride: k, col_stride: 1 };
                let rhs = MatRef { data: w, offset: 0, row_stride: n, col_stride: 1 };
                gemm(Dims { m, n, k }, 1.0, lhs, rhs, 0.0, &mut c[..m * n]);
            }
        });
        let bf16_step = time(|| {
            for (w, &(k, n)) in weights16.iter().zip(&products) {
                let lhs = BatchRef { data: &a16, offsets: &[0], row_stride: k, col_stride: 1 };
                let rhs = BatchRef { data: w, offsets: &[0], row_stride: n, col_stride: 1 };
                gemv_bf16(path, Dims { m, n, k }, lhs, rhs, &mut c[..m * n]).expect("a few-row product");
            }
        });
        let count: usize = weights.iter().map(Vec::len).sum();
        let gbs = |seconds: f64, bytes: usize| (count * bytes) as f64 / seconds / 1e9;
        println!(
            "few_rows_layers cola-350m m={m} products={} f32_ms={:.2} f32_gbs={:.1} bf16_ms={:.2} bf16_gbs={:.1}",
            weights.len(),
            f32_step * 1e3,
            gbs(f32_step, 4),
            bf16_step * 1e3,
            gbs(bf16_step, 2)
        );
    }
}

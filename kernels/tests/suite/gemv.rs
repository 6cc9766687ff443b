//! The few-row path of the GEMM (`m <= FEW_ROWS_MAX`, B's columns contiguous): against a naive f64
//! reference for every m up to one past the threshold (the last goes through the blocked GEMM), odd n
//! and k (1, 7, 33, 1000: partial vectors and column runs, depths across the KC blocks), alpha/beta
//! cases, strided and transposed A, padded B inside NaN-filled buffers (reading outside a view poisons
//! C); bit for bit against the blocked GEMM on every micro-kernel path the CPU has (the few-row path
//! follows its summation order exactly); every instruction-set level bit-identical to the portable one;
//! bit-identical results in pools of 1, 2 and 3 threads; batched calls. Paths this CPU lacks are
//! skipped with a printed notice.
//!
//! Tolerance: each element is a sum of k products in T, in an order other than the reference's (depth
//! blocks, fused or not), so its rounding error is bounded by `gamma_(k+2) = (k + 2) eps` times
//! `|alpha| sum |a b| + |beta c|` (the deterministic worst case of sequential summation, Higham ch. 3;
//! +2 for the alpha and beta steps). The tests use `(k + 2) * eps` with the type's machine epsilon, a
//! bound that cannot fail on correct arithmetic yet catches any wrong or missing term (one term is
//! typically ~1/k of the magnitude, far above `(k + 2) eps`).
use cola_kernels::cpu::gemm::{
    gemm, gemm_batched, gemm_blocked_with_path, gemm_with_path, takes_few_row_path, BatchRef, Dims,
    KernelPath, MatRef, FEW_ROWS_MAX,
};
use cola_kernels::cpu::simd::{self, Level};
use cola_kernels::Float;
use common::{Rng, Stored};

use crate::common;

/// One product's inputs: A (`a_layout`: row-major with a padded row, or transposed), B row-major with a
/// padded row (the few-row layout), C random or NaN when beta is 0 (which must ignore it).
struct Case<T> {
    dims: Dims,
    a: Stored<T>,
    b: Stored<T>,
    c0: Vec<T>,
    alpha: f64,
    beta: f64,
}

fn case<T: Float>(dims: Dims, a_transposed: bool, (alpha, beta): (f64, f64), seed: u64) -> Case<T> {
    let Dims { m, n, k } = dims;
    let mut rng = Rng(seed);
    let a_strides = if a_transposed { (1, m + 2) } else { (k + 3, 1) };
    let a = Stored::new(m, k, a_strides, 5, &mut rng);
    let b = Stored::new(k, n, (n + 5, 1), 2, &mut rng);
    let c0 = (0..m * n).map(|_| T::from_f64(if beta == 0.0 { f64::NAN } else { rng.uniform() })).collect();
    Case { dims, a, b, c0, alpha, beta }
}

impl<T: Float> Case<T> {
    /// C after the product on `path` (few-row path when it fits), or the selected path when `None`.
    fn run(&self, path: Option<KernelPath>) -> Vec<T> {
        let mut c = self.c0.clone();
        let (alpha, beta) = (T::from_f64(self.alpha), T::from_f64(self.beta));
        match path {
            None => gemm(self.dims, alpha, self.a.view(), self.b.view(), beta, &mut c),
            Some(path) => gemm_with_path(path, self.dims, alpha, self.a.view(), self.b.view(), beta, &mut c)
                .expect("only available paths are run"),
        }
        c
    }

    /// C after the blocked GEMM on `path`.
    fn run_blocked(&self, path: KernelPath) -> Vec<T> {
        let mut c = self.c0.clone();
        let (alpha, beta) = (T::from_f64(self.alpha), T::from_f64(self.beta));
        gemm_blocked_with_path(path, self.dims, alpha, self.a.view(), self.b.view(), beta, &mut c)
            .expect("only available paths are run");
        c
    }

    /// Checks `c` against the f64 reference within the header's bound.
    fn check(&self, c: &[T], label: &str) {
        let Dims { m, n, k } = self.dims;
        let eps = if T::NAME == "f32" { f32::EPSILON as f64 } else { f64::EPSILON };
        let tol = (k + 2) as f64 * eps;
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut magnitude) = (0.0, 0.0);
                for p in 0..k {
                    let t = self.a.get(i, p) * self.b.get(p, j);
                    sum += t;
                    magnitude += t.abs();
                }
                let old = if self.beta == 0.0 { 0.0 } else { self.beta * self.c0[i * n + j].to_f64() };
                let expected = self.alpha * sum + old;
                let bound = tol * (self.alpha.abs() * magnitude + old.abs());
                let got = c[i * n + j].to_f64();
                assert!(
                    (got - expected).abs() <= bound,
                    "{} {label} {:?} alpha={} beta={}: C[{i}][{j}] = {got}, expected {expected} (bound {bound})",
                    T::NAME,
                    self.dims,
                    self.alpha,
                    self.beta
                );
            }
        }
    }
}

fn bits<T: Float>(values: &[T]) -> Vec<u64> {
    values.iter().map(|v| v.to_f64().to_bits()).collect()
}

/// The paths this CPU can run; prints a notice for each one it cannot.
fn available_paths() -> Vec<KernelPath> {
    let (available, lacking): (Vec<_>, Vec<_>) = KernelPath::ALL.into_iter().partition(|p| p.is_available());
    for path in lacking {
        println!("skipped: CPU lacks {}", path.name());
    }
    available
}

const SCALARS: [(f64, f64); 3] = [(1.0, 0.0), (-0.75, 0.5), (2.0, 1.0)];

/// Every m up to one past the threshold, odd n and k, both A layouts, on every path: within the
/// reference bound, and bit for bit equal to the blocked GEMM on the same path.
fn check_grid<T: Float>() {
    let mut seed = 0;
    for path in available_paths() {
        for m in 1..=FEW_ROWS_MAX + 1 {
            for (n, k) in [(1, 1), (7, 33), (33, 7), (1000, 1), (1, 1000), (33, 1000), (1000, 33), (7, 1000)]
            {
                seed += 1;
                let dims = Dims { m, n, k };
                let scalars = SCALARS[seed as usize % SCALARS.len()];
                let inputs = case::<T>(dims, seed % 2 == 0, scalars, seed);
                assert_eq!(takes_few_row_path(dims, inputs.b.view()), m <= FEW_ROWS_MAX, "{dims:?}");
                let c = inputs.run(Some(path));
                inputs.check(&c, path.name());
                let blocked = inputs.run_blocked(path);
                assert!(
                    bits(&c) == bits(&blocked),
                    "{} {} {dims:?}: few-row path differs from the GEMM",
                    T::NAME,
                    path.name()
                );
            }
        }
    }
}

#[test]
fn few_row_products_match_the_reference_and_the_blocked_gemm() {
    check_grid::<f32>();
    check_grid::<f64>();
}

/// A B with non-contiguous columns (a transposed weight) is not a few-row product; the GEMM runs it.
#[test]
fn transposed_b_takes_the_blocked_gemm() {
    let mut rng = Rng(3);
    let dims = Dims { m: 2, n: 40, k: 300 };
    let b = Stored::<f32>::new(dims.k, dims.n, (1, dims.k + 1), 0, &mut rng);
    assert!(!takes_few_row_path(dims, b.view()));
    let a = Stored::<f32>::new(dims.m, dims.k, (dims.k, 1), 0, &mut rng);
    let mut c = vec![f32::NAN; dims.m * dims.n];
    gemm(dims, 1.0, a.view(), b.view(), 0.0, &mut c);
    let inputs = Case { dims, a, b, c0: vec![f32::NAN; dims.m * dims.n], alpha: 1.0, beta: 0.0 };
    inputs.check(&c, "transposed B");
}

/// Each SIMD path and the portable path on the same inputs: both within the reference bound (they may
/// round differently: fused or not, other depth blocks); and every instruction-set level of the
/// few-row loops gives the same bits as the portable level on each path.
#[test]
fn simd_paths_and_levels_match_portable() {
    let _level = common::level_lock();
    for (dims, seed) in [(Dims { m: 3, n: 1000, k: 300 }, 11), (Dims { m: 8, n: 70, k: 1000 }, 12)] {
        let inputs = case::<f32>(dims, false, (1.5, 0.25), seed);
        for path in available_paths() {
            let levels: Vec<Level> = Level::ALL.into_iter().filter(|l| l.is_supported()).collect();
            simd::set_max_level(Some(Level::Portable));
            let portable_level = inputs.run(Some(path));
            inputs.check(&portable_level, path.name());
            for &level in &levels {
                simd::set_max_level(Some(level));
                let c = inputs.run(Some(path));
                simd::set_max_level(None);
                assert!(
                    bits(&c) == bits(&portable_level),
                    "{} {dims:?}: level {level:?} differs",
                    path.name()
                );
            }
        }
        inputs.check(&inputs.run(None), "selected");
    }
}

/// The same product in pools of 1, 2 and 3 threads: the split into tasks changes with the thread count
/// (column runs, and for narrow deep products depth blocks split among threads), the bits must not.
fn check_threads<T: Float>(dims: Dims) {
    let inputs = case::<T>(dims, true, (1.25, 0.5), 21);
    for path in available_paths() {
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
            bits(&pool.install(|| inputs.run(Some(path))))
        };
        let single = run(1);
        for threads in [2, 3] {
            assert!(run(threads) == single, "{} {} {dims:?}: {threads} threads differ", T::NAME, path.name());
        }
    }
}

#[test]
fn few_row_path_is_bit_identical_across_thread_counts() {
    check_threads::<f32>(Dims { m: 1, n: 5001, k: 300 });
    check_threads::<f32>(Dims { m: 8, n: 2736, k: 256 });
    check_threads::<f64>(Dims { m: 3, n: 1500, k: 260 });
    // Narrow and deep (a CoLA down factor): one column run, depth blocks split among the threads.
    check_threads::<f32>(Dims { m: 1, n: 256, k: 1024 });
    check_threads::<f32>(Dims { m: 8, n: 300, k: 2736 });
}

/// Batched few-row products (a decode step's stacked rows, and per-item A and B) equal per-item calls.
#[test]
fn batched_few_row_products_equal_per_item_gemm() {
    let (batch, dims) = (4, Dims { m: 1, n: 300, k: 200 });
    let mut rng = Rng(31);
    let a: Vec<f32> = (0..batch * dims.k).map(|_| rng.uniform() as f32).collect();
    let b: Vec<f32> = (0..batch * dims.k * dims.n).map(|_| rng.uniform() as f32).collect();
    for shared_b in [true, false] {
        let a_offsets: Vec<usize> = (0..batch).map(|i| i * dims.k).collect();
        let b_offsets: Vec<usize> =
            (0..batch).map(|i| if shared_b { 0 } else { i * dims.k * dims.n }).collect();
        let a_batch = BatchRef { data: &a, offsets: &a_offsets, row_stride: dims.k, col_stride: 1 };
        let b_batch = BatchRef { data: &b, offsets: &b_offsets, row_stride: dims.n, col_stride: 1 };
        let mut c = vec![f32::NAN; batch * dims.m * dims.n];
        gemm_batched(dims, 1.0, a_batch, b_batch, 0.0, &mut c);
        for (item, c_item) in c.chunks(dims.m * dims.n).enumerate() {
            let a_item = MatRef { data: &a, offset: a_offsets[item], row_stride: dims.k, col_stride: 1 };
            let b_item = MatRef { data: &b, offset: b_offsets[item], row_stride: dims.n, col_stride: 1 };
            let mut expected = vec![f32::NAN; dims.m * dims.n];
            gemm(dims, 1.0, a_item, b_item, 0.0, &mut expected);
            assert!(bits(c_item) == bits(&expected), "shared_b={shared_b}: item {item} differs");
        }
    }
}

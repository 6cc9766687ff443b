//! The few-row path for bf16 operands (`gemv_bf16`, what a bf16 decode step's projections and head run
//! on), on every f32 micro-kernel path this CPU has (the others are skipped with a printed notice), for
//! every row count up to `FEW_ROWS_MAX`, odd n (partial vectors and column runs) and depths across
//! KC = 256, with A and B inside NaN-filled buffers (reading outside a view poisons C):
//!
//! - bit for bit the f32 GEMM on the same path of the widened operands (`gemm_with_path`, which itself
//!   takes the f32 few-row path): a bf16 widens to f32 exactly and the passes run the f32 passes' order;
//! - every SIMD path bit for bit the portable path: the product of two bf16 has at most 16 significant
//!   bits, so it is exact in f32, and `fma(a, b, acc)` then rounds exactly as `acc + a * b` does (the
//!   combine with alpha = 1 is exact too), so fused and unfused sums agree;
//! - within a rigorous bound of an f64 reference: each of the k additions rounds once, relative error at
//!   most 2^-24 of a partial sum bounded by `sum |a b|`, so `|C - exact| <= k * 2^-24 * sum |a b|`
//!   (the products are exact); the test allows `(k + 2) 2^-24 sum |a b|`, which catches any wrong or
//!   missing term (one term is about 1/k of the magnitude);
//! - the same bits in pools of 1, 2, 3 and 4 threads, for column counts that make a run per thread
//!   narrower than the usual `4096 / m` columns or split by depth (the CoLA down factors: 256 columns,
//!   depth 1024) and ones that do not;
//! - a batch of stacked items equals the one matrix they form; products that are not few-row ones (too
//!   many rows, strided B columns, a B per item) are refused, computing nothing.
//!
//! Under a second in release.
use cola_kernels::cpu::gemm::{
    gemm_with_path, gemv_bf16, BatchRef, Dims, FewRowsBf16Error, KernelPath, MatRef,
};
use common::Rng;
use half::bf16;

use crate::common;

const PATHS: [KernelPath; 3] = [KernelPath::Portable, KernelPath::Avx2Fma, KernelPath::Avx512F];

/// A `rows x cols` bf16 matrix with row stride `cols + pad` inside a NaN-filled buffer at offset 3.
struct Matrix {
    data: Vec<bf16>,
    row_stride: usize,
}

const OFFSET: usize = 3;

impl Matrix {
    fn new(rows: usize, cols: usize, pad: usize, rng: &mut Rng) -> Matrix {
        let row_stride = cols + pad;
        let mut data = vec![bf16::NAN; OFFSET + rows * row_stride + 2];
        for i in 0..rows {
            for j in 0..cols {
                data[OFFSET + i * row_stride + j] = bf16::from_f64(rng.uniform());
            }
        }
        Matrix { data, row_stride }
    }

    fn batch<'a>(&'a self, offsets: &'a [usize]) -> BatchRef<'a, bf16> {
        BatchRef { data: &self.data, offsets, row_stride: self.row_stride, col_stride: 1 }
    }

    fn widened(&self) -> Vec<f32> {
        self.data.iter().map(|x| x.to_f32()).collect()
    }

    fn get(&self, i: usize, j: usize) -> f64 {
        self.data[OFFSET + i * self.row_stride + j].to_f64()
    }
}

fn few_rows(path: KernelPath, dims: Dims, a: &Matrix, b: &Matrix) -> Vec<f32> {
    let mut c = vec![f32::NAN; dims.m * dims.n];
    gemv_bf16(path, dims, a.batch(&[OFFSET]), b.batch(&[OFFSET]), &mut c).expect("a few-row product");
    c
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn bit_for_bit_the_f32_path_and_the_portable_path_and_near_the_exact_product() {
    let available: Vec<KernelPath> = PATHS.into_iter().filter(|p| p.is_available()).collect();
    for path in PATHS.iter().filter(|p| !available.contains(p)) {
        println!("skipped: this CPU lacks the {path:?} path");
    }
    let mut rng = Rng(7);
    let mut checked = 0;
    for m in 1..=8 {
        for (n, k) in [(1, 5), (7, 33), (33, 300), (256, 600), (300, 600)] {
            let dims = Dims { m, n, k };
            let a = Matrix::new(m, k, 3, &mut rng);
            let b = Matrix::new(k, n, 5, &mut rng);
            let portable = few_rows(KernelPath::Portable, dims, &a, &b);
            for &path in &available {
                let got = few_rows(path, dims, &a, &b);
                let (wa, wb) = (a.widened(), b.widened());
                let view = |data, row_stride| MatRef { data, offset: OFFSET, row_stride, col_stride: 1 };
                let mut f32_c = vec![f32::NAN; m * n];
                gemm_with_path(
                    path,
                    dims,
                    1.0,
                    view(&wa, a.row_stride),
                    view(&wb, b.row_stride),
                    0.0,
                    &mut f32_c,
                )
                .expect("an available path");
                assert_eq!(bits(&got), bits(&f32_c), "{path:?} m {m} n {n} k {k}: the f32 path differs");
                assert_eq!(
                    bits(&got),
                    bits(&portable),
                    "{path:?} m {m} n {n} k {k}: the portable path differs"
                );
                checked += 1;
            }
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|p| a.get(i, p) * b.get(p, j));
                    let (exact, magnitude) = terms.fold((0.0, 0.0), |(s, g), t| (s + t, g + t.abs()));
                    let error = (portable[i * n + j] as f64 - exact).abs();
                    let bound = (k + 2) as f64 * 2f64.powi(-24) * magnitude;
                    assert!(error <= bound, "m {m} n {n} k {k} ({i}, {j}): error {error:e} above {bound:e}");
                }
            }
        }
    }
    assert_eq!(checked, 40 * available.len());
}

#[test]
fn the_thread_count_changes_no_bit() {
    let mut rng = Rng(3);
    for (m, n, k) in [(1, 256, 1024), (3, 96, 700), (8, 2736, 64), (2, 1000, 300)] {
        let dims = Dims { m, n, k };
        let (a, b) = (Matrix::new(m, k, 1, &mut rng), Matrix::new(k, n, 3, &mut rng));
        let runs: Vec<Vec<u32>> = (1..=4)
            .map(|threads| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                bits(&pool.install(|| few_rows(KernelPath::selected(), dims, &a, &b)))
            })
            .collect();
        assert!(runs.iter().all(|run| *run == runs[0]), "{dims:?}: results depend on the thread count");
    }
}

#[test]
fn stacked_batches_are_one_matrix_and_other_products_are_refused() {
    let mut rng = Rng(11);
    let (m, n, k) = (2, 70, 40);
    let a = Matrix::new(3 * m, k, 0, &mut rng);
    let b = Matrix::new(k, n, 2, &mut rng);
    let path = KernelPath::selected();
    let whole = few_rows(path, Dims { m: 3 * m, n, k }, &a, &b);
    let stacked = [OFFSET, OFFSET + m * k, OFFSET + 2 * m * k];
    let mut c = vec![f32::NAN; 3 * m * n];
    gemv_bf16(path, Dims { m, n, k }, a.batch(&stacked), b.batch(&[OFFSET; 3]), &mut c)
        .expect("stacked rows");
    assert_eq!(bits(&c), bits(&whole));

    let refused = |dims: Dims, a: BatchRef<'_, bf16>, b: BatchRef<'_, bf16>| {
        let mut c = vec![f32::NAN; a.offsets.len() * dims.m * dims.n];
        let result = gemv_bf16(path, dims, a, b, &mut c);
        assert_eq!(result, Err(FewRowsBf16Error::NotFewRows), "{dims:?}");
        assert!(c.iter().all(|x| x.is_nan()), "a refused product wrote C");
    };
    let tall = Matrix::new(9, k, 0, &mut rng);
    refused(Dims { m: 9, n, k }, tall.batch(&[OFFSET]), b.batch(&[OFFSET]));
    refused(
        Dims { m: 3, n, k },
        tall.batch(&[OFFSET, OFFSET + 3 * k, OFFSET + 6 * k]),
        b.batch(&[OFFSET; 3]),
    );
    let strided_b = BatchRef { col_stride: 2, ..b.batch(&[OFFSET]) };
    refused(Dims { m: 1, n: n / 2, k }, a.batch(&[OFFSET]), strided_b);
    refused(Dims { m, n, k: 10 }, a.batch(&stacked[..2]), b.batch(&[OFFSET, OFFSET + 1]));
}

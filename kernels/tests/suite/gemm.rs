//! GEMM against a naive f64 triple loop, over shapes that cross every block size of every micro-kernel
//! path (portable MR x NR = 6 x 8 (f32) / 6 x 4 (f64); AVX2 6 x 16 / 6 x 8; AVX-512 12 x 32 / 12 x 16;
//! KC = 256 or 128; row blocks of 48 and 72 to 288 rows; B panels narrowed to 8 MiB), all transpose
//! combinations and narrowed views; each SIMD path against the portable path on the same inputs (paths
//! this CPU lacks are skipped with a printed notice); batched/broadcast parity; thread-count determinism
//! on every path.
//!
//! Tolerances: the reference sums in f64, so its own error is negligible. The blocked kernel sums k
//! products in order in T; for random-sign data the rounding error grows like sqrt(k) * eps * sum|a||b|,
//! about 3e-6 (f32) and 6e-15 (f64) at k = 600, so bounds of 1e-5 and 1e-12 relative to
//! `|alpha| sum|a||b| + |beta c|` leave a wide margin yet catch any wrong or missing term. Two paths
//! differ by at most the sum of their errors (FMA or not, other depth blocks), so they are compared within
//! twice those bounds.
use cola_kernels::cpu::gemm::{gemm, gemm_batched, gemm_with_path, BatchRef, Dims, KernelPath, MatRef};
use cola_kernels::Float;
use common::{Rng, Stored};
use proptest::prelude::*;

use crate::common;

/// How an operand sits in memory: column-major (the transpose of a row-major buffer) or row-major,
/// a leading dimension `pad` wider than the logical width, and a start offset.
#[derive(Clone, Copy, Debug)]
struct Layout {
    transposed: bool,
    pad: usize,
    offset: usize,
}

fn layout() -> impl Strategy<Value = Layout> {
    (any::<bool>(), 0..=3usize, 0..=5usize).prop_map(|(transposed, pad, offset)| Layout {
        transposed,
        pad,
        offset,
    })
}

/// A random `rows x cols` matrix laid out as `layout` says, inside a NaN-filled buffer.
fn random<T: Float>(rows: usize, cols: usize, layout: Layout, rng: &mut Rng) -> Stored<T> {
    let width = if layout.transposed { rows } else { cols };
    let leading = width + layout.pad;
    let strides = if layout.transposed { (1, leading) } else { (leading, 1) };
    Stored::new(rows, cols, strides, layout.offset, rng)
}

/// C before the call: random, or all NaN when beta == 0 (which must ignore it).
fn initial_c<T: Float>(len: usize, beta: f64, rng: &mut Rng) -> Vec<T> {
    (0..len).map(|_| T::from_f64(if beta == 0.0 { f64::NAN } else { rng.uniform() })).collect()
}

/// Runs one gemm (on `path`, or the selected path when `None`) and checks every element against the f64
/// reference within `tol * magnitude`; returns C.
fn check_path<T: Float>(
    path: Option<KernelPath>,
    dims: Dims,
    layouts: (Layout, Layout),
    (alpha, beta): (f64, f64),
    seed: u64,
    tol: f64,
) -> Result<Vec<T>, TestCaseError> {
    let Dims { m, n, k } = dims;
    let mut rng = Rng(seed);
    let a = random::<T>(m, k, layouts.0, &mut rng);
    let b = random::<T>(k, n, layouts.1, &mut rng);
    let c0 = initial_c::<T>(m * n, beta, &mut rng);
    let mut c = c0.clone();
    let (alpha_t, beta_t) = (T::from_f64(alpha), T::from_f64(beta));
    match path {
        None => gemm(dims, alpha_t, a.view(), b.view(), beta_t, &mut c),
        Some(path) => gemm_with_path(path, dims, alpha_t, a.view(), b.view(), beta_t, &mut c)
            .map_err(|e| TestCaseError::fail(e.to_string()))?,
    }
    let label = path.map_or("selected", KernelPath::name);
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut magnitude) = (0.0, 0.0);
            for p in 0..k {
                sum += a.get(i, p) * b.get(p, j);
                magnitude += (a.get(i, p) * b.get(p, j)).abs();
            }
            let old = if beta == 0.0 { 0.0 } else { beta * c0[i * n + j].to_f64() };
            let expected = alpha * sum + old;
            let bound = tol * (alpha.abs() * magnitude + old.abs());
            let got = c[i * n + j].to_f64();
            prop_assert!(
                (got - expected).abs() <= bound,
                "{} {label} {dims:?} {layouts:?} alpha={alpha} beta={beta}: C[{i}][{j}] = {got}, expected {expected} (bound {bound})",
                T::NAME
            );
        }
    }
    Ok(c)
}

/// [`check_path`] on the selected path.
fn check_against_reference<T: Float>(
    dims: Dims,
    layouts: (Layout, Layout),
    alpha: f64,
    beta: f64,
    seed: u64,
    tol: f64,
) -> Result<(), TestCaseError> {
    check_path::<T>(None, dims, layouts, (alpha, beta), seed, tol).map(drop)
}

/// Shapes biased to cross block boundaries while keeping the naive reference cheap: at most one
/// dimension is large at a time, except for a medium cube that takes the parallel path.
fn shape() -> impl Strategy<Value = Dims> {
    prop_oneof![
        (1..=24usize, 1..=24usize, 1..=24usize),
        (100..=300usize, 1..=20usize, 1..=40usize),
        (1..=20usize, 1..=20usize, 200..=600usize),
        (1..=8usize, 2000..=4200usize, 1..=8usize),
        (1..=12usize, 60..=400usize, 20..=80usize),
        (20..=160usize, 20..=80usize, 240..=300usize),
    ]
    .prop_map(|(m, n, k)| Dims { m, n, k })
}

fn scalars() -> impl Strategy<Value = (f64, f64)> {
    (prop::sample::select(vec![1.0, -0.5, 2.0, 0.0]), prop::sample::select(vec![0.0, 1.0, -1.5, 0.25]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn gemm_f32_matches_reference(
        dims in shape(), layouts in (layout(), layout()), (alpha, beta) in scalars(), seed in any::<u64>()
    ) {
        check_against_reference::<f32>(dims, layouts, alpha, beta, seed, 1e-5)?;
    }

    #[test]
    fn gemm_f64_matches_reference(
        dims in shape(), layouts in (layout(), layout()), (alpha, beta) in scalars(), seed in any::<u64>()
    ) {
        check_against_reference::<f64>(dims, layouts, alpha, beta, seed, 1e-12)?;
    }
}

/// Exact block boundaries of every path and their neighbours (tile edges, KC = 128 / 256, 48-row A
/// groups, row blocks, B panels of 4080 / 4096 columns, a B panel narrowed by a long k), every transpose
/// combination, both types.
const BOUNDARY_SHAPES: [(usize, usize, usize); 20] = [
    (1, 1, 1),
    (6, 8, 256),
    (7, 9, 257),
    (5, 3, 255),
    (6, 16, 128),
    (12, 32, 129),
    (11, 31, 127),
    (48, 17, 16),
    (49, 33, 3),
    (144, 8, 16),
    (145, 17, 3),
    (72, 4, 513),
    (73, 5, 2),
    (289, 3, 7),
    (3, 2048, 2),
    (2, 4081, 5),
    (1, 4097, 3),
    (13, 300, 260),
    (7, 300, 8200),
    (25, 40, 385),
];

/// Exact block boundaries and their neighbours, every transpose combination, both types.
#[test]
fn gemm_matches_reference_at_block_boundaries() {
    let shapes = BOUNDARY_SHAPES;
    for (index, &(m, n, k)) in shapes.iter().enumerate() {
        for combo in 0..4 {
            let layout = |transposed| Layout { transposed, pad: index % 3, offset: index % 4 };
            let layouts = (layout(combo & 1 == 1), layout(combo & 2 == 2));
            let dims = Dims { m, n, k };
            let seed = (index * 4 + combo) as u64;
            check_against_reference::<f32>(dims, layouts, 1.5, 0.0, seed, 1e-5).unwrap();
            check_against_reference::<f64>(dims, layouts, -1.0, 0.5, seed, 1e-12).unwrap();
        }
    }
}

#[test]
fn empty_and_zero_depth_products() {
    let empty: [f32; 0] = [];
    let view = |data| MatRef { data, offset: 0, row_stride: 1, col_stride: 1 };
    let mut c: Vec<f32> = Vec::new();
    gemm(Dims { m: 0, n: 3, k: 4 }, 1.0, view(&[0.0; 16]), view(&[0.0; 16]), 0.0, &mut c);
    gemm(Dims { m: 3, n: 0, k: 4 }, 1.0, view(&[0.0; 16]), view(&[0.0; 16]), 0.0, &mut c);

    // k == 0: the product is empty, so C = beta * C, and beta == 0 clears NaNs.
    let mut c = vec![f32::NAN; 6];
    gemm(Dims { m: 2, n: 3, k: 0 }, 1.0, view(&empty), view(&empty), 0.0, &mut c);
    assert_eq!(c, vec![0.0; 6]);
    let mut c = vec![1.0, -2.0, 3.0, 4.0, 5.0, 6.0];
    gemm(Dims { m: 2, n: 3, k: 0 }, 1.0, view(&empty), view(&empty), 2.0, &mut c);
    assert_eq!(c, vec![2.0, -4.0, 6.0, 8.0, 10.0, 12.0]);

    // alpha == 0: A and B are not read (BLAS convention), so their NaNs do not reach C.
    let nan = [f32::NAN; 4];
    let mut c = vec![1.0, 2.0, 3.0, 4.0];
    gemm(
        Dims { m: 2, n: 2, k: 2 },
        0.0,
        MatRef { data: &nan, offset: 0, row_stride: 2, col_stride: 1 },
        MatRef { data: &nan, offset: 0, row_stride: 2, col_stride: 1 },
        -1.0,
        &mut c,
    );
    assert_eq!(c, vec![-1.0, -2.0, -3.0, -4.0]);
}

fn bits<T: Float>(values: &[T]) -> Vec<u64> {
    values.iter().map(|x| x.to_f64().to_bits()).collect()
}

/// Batched items (parallel over items, or one by one with a parallel gemm each) equal independent gemm
/// calls bit for bit; repeated offsets broadcast one matrix over the batch.
fn check_batched<T: Float>(
    batch: usize,
    dims: Dims,
    distinct: (usize, usize),
    layouts: (Layout, Layout),
    seed: u64,
) {
    let Dims { m, n, k } = dims;
    let mut rng = Rng(seed);
    let a = random::<T>(m, k * distinct.0, layouts.0, &mut rng);
    let b = random::<T>(k, n * distinct.1, layouts.1, &mut rng);
    let a_offsets: Vec<usize> =
        (0..batch).map(|_| a.offset + (rng.next_u64() as usize % distinct.0) * k * a.col_stride).collect();
    let b_offsets: Vec<usize> =
        (0..batch).map(|_| b.offset + (rng.next_u64() as usize % distinct.1) * n * b.col_stride).collect();
    let c0 = initial_c::<T>(batch * m * n, 0.5, &mut rng);
    let (alpha, beta) = (T::from_f64(0.75), T::from_f64(-2.0));

    let mut c = c0.clone();
    let a_batch =
        BatchRef { data: &a.data, offsets: &a_offsets, row_stride: a.row_stride, col_stride: a.col_stride };
    let b_batch =
        BatchRef { data: &b.data, offsets: &b_offsets, row_stride: b.row_stride, col_stride: b.col_stride };
    gemm_batched(dims, alpha, a_batch, b_batch, beta, &mut c);

    let mut expected = c0;
    for (item, c_item) in expected.chunks_mut(m * n).enumerate() {
        let a_item = MatRef {
            data: &a.data,
            offset: a_offsets[item],
            row_stride: a.row_stride,
            col_stride: a.col_stride,
        };
        let b_item = MatRef {
            data: &b.data,
            offset: b_offsets[item],
            row_stride: b.row_stride,
            col_stride: b.col_stride,
        };
        gemm(dims, alpha, a_item, b_item, beta, c_item);
    }
    assert_eq!(bits(&c), bits(&expected), "{} batch {batch} {dims:?} {layouts:?}", T::NAME);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn gemm_batched_equals_per_item_gemm(
        batch in 1..=12usize,
        (m, n, k) in prop_oneof![(1..=40usize, 1..=40usize, 1..=80usize), (50..=120usize, 40..=100usize, 60..=300usize)],
        distinct in (1..=3usize, 1..=3usize),
        layouts in (layout(), layout()),
        seed in any::<u64>(),
    ) {
        let dims = Dims { m, n, k };
        check_batched::<f32>(batch, dims, distinct, layouts, seed);
        check_batched::<f64>(batch, dims, distinct, layouts, seed);
    }
}

/// The same product on `path` in pools of 1, 2 and 3 threads: tiles are split differently, bits must
/// not change.
fn check_thread_count_independence<T: Float>(path: KernelPath, dims: Dims, layouts: (Layout, Layout)) {
    let mut rng = Rng(7);
    let a = random::<T>(dims.m, dims.k, layouts.0, &mut rng);
    let b = random::<T>(dims.k, dims.n, layouts.1, &mut rng);
    let c0 = initial_c::<T>(dims.m * dims.n, 1.0, &mut rng);
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
        let mut c = c0.clone();
        let (alpha, beta) = (T::from_f64(1.25), T::from_f64(0.5));
        pool.install(|| gemm_with_path(path, dims, alpha, a.view(), b.view(), beta, &mut c))
            .expect("path checked available");
        bits(&c)
    };
    let single = run(1);
    for threads in [2, 3] {
        assert!(
            run(threads) == single,
            "{} {} {dims:?}: {threads} threads differ from 1",
            T::NAME,
            path.name()
        );
    }
}

/// The paths this CPU can run; prints a notice for each one it cannot.
fn available_paths() -> Vec<KernelPath> {
    let (available, lacking): (Vec<_>, Vec<_>) = KernelPath::ALL.into_iter().partition(|p| p.is_available());
    for path in lacking {
        println!("skipped: CPU lacks {}", path.name());
    }
    available
}

#[test]
fn gemm_is_bit_identical_across_thread_counts() {
    let plain = Layout { transposed: false, pad: 0, offset: 0 };
    let transposed = Layout { transposed: true, pad: 1, offset: 3 };
    for path in available_paths() {
        check_thread_count_independence::<f32>(path, Dims { m: 301, n: 203, k: 700 }, (plain, transposed));
        check_thread_count_independence::<f32>(path, Dims { m: 5, n: 3000, k: 300 }, (transposed, plain));
        check_thread_count_independence::<f32>(path, Dims { m: 40, n: 150, k: 5000 }, (transposed, plain));
        check_thread_count_independence::<f32>(path, Dims { m: 700, n: 40, k: 300 }, (plain, plain));
        check_thread_count_independence::<f64>(
            path,
            Dims { m: 150, n: 97, k: 530 },
            (transposed, transposed),
        );
        check_thread_count_independence::<f64>(path, Dims { m: 3, n: 2500, k: 260 }, (plain, plain));
    }
}

/// One SIMD path against the portable path on the same inputs: both within the reference bound, and
/// within twice it of each other.
fn check_simd_against_portable<T: Float>(
    path: KernelPath,
    dims: Dims,
    layouts: (Layout, Layout),
    scalars: (f64, f64),
    seed: u64,
    tol: f64,
) -> Result<(), TestCaseError> {
    let simd = check_path::<T>(Some(path), dims, layouts, scalars, seed, tol)?;
    let portable = check_path::<T>(Some(KernelPath::Portable), dims, layouts, scalars, seed, tol)?;
    // The inputs are regenerated from the seed, so the magnitudes match those of the reference check.
    let mut rng = Rng(seed);
    let a = random::<T>(dims.m, dims.k, layouts.0, &mut rng);
    let b = random::<T>(dims.k, dims.n, layouts.1, &mut rng);
    let c0 = initial_c::<T>(dims.m * dims.n, scalars.1, &mut rng);
    for (index, (x, y)) in simd.iter().zip(&portable).enumerate() {
        let (i, j) = (index / dims.n, index % dims.n);
        let magnitude: f64 = (0..dims.k).map(|p| (a.get(i, p) * b.get(p, j)).abs()).sum();
        let old = if scalars.1 == 0.0 { 0.0 } else { (scalars.1 * c0[index].to_f64()).abs() };
        let bound = 2.0 * tol * (scalars.0.abs() * magnitude + old);
        prop_assert!(
            (x.to_f64() - y.to_f64()).abs() <= bound,
            "{} {} vs portable {dims:?} {layouts:?}: C[{i}][{j}] = {x} vs {y} (bound {bound})",
            T::NAME,
            path.name()
        );
    }
    Ok(())
}

/// The SIMD paths (AVX2+FMA, AVX-512F) this CPU has.
fn simd_paths() -> Vec<KernelPath> {
    available_paths().into_iter().filter(|&path| path != KernelPath::Portable).collect()
}

/// Shapes around the SIMD tiles and blocks: tile edges (6 x 16, 12 x 32), KC = 128 / 256, 48-row groups.
fn simd_shape() -> impl Strategy<Value = Dims> {
    prop_oneof![
        (1..=30usize, 1..=40usize, 1..=20usize),
        (40..=60usize, 1..=70usize, 120..=140usize),
        (1..=14usize, 1..=66usize, 250..=520usize),
        (130..=300usize, 10..=40usize, 1..=12usize),
    ]
    .prop_map(|(m, n, k)| Dims { m, n, k })
}

#[test]
fn simd_paths_match_portable_at_block_boundaries() {
    let paths = simd_paths();
    for (index, &(m, n, k)) in BOUNDARY_SHAPES.iter().enumerate() {
        for combo in 0..4 {
            let layout = |transposed| Layout { transposed, pad: index % 3, offset: index % 4 };
            let layouts = (layout(combo & 1 == 1), layout(combo & 2 == 2));
            let (dims, seed) = (Dims { m, n, k }, (index * 4 + combo) as u64);
            for &path in &paths {
                check_simd_against_portable::<f32>(path, dims, layouts, (1.5, 0.0), seed, 1e-5).unwrap();
                check_simd_against_portable::<f64>(path, dims, layouts, (-1.0, 0.5), seed, 1e-12).unwrap();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn simd_paths_match_portable_f32(
        dims in simd_shape(), layouts in (layout(), layout()), scalars in scalars(), seed in any::<u64>()
    ) {
        for path in simd_paths() {
            check_simd_against_portable::<f32>(path, dims, layouts, scalars, seed, 1e-5)?;
        }
    }

    #[test]
    fn simd_paths_match_portable_f64(
        dims in simd_shape(), layouts in (layout(), layout()), scalars in scalars(), seed in any::<u64>()
    ) {
        for path in simd_paths() {
            check_simd_against_portable::<f64>(path, dims, layouts, scalars, seed, 1e-12)?;
        }
    }
}

#[test]
fn unavailable_path_is_an_error() {
    let data = [1.0f32; 4];
    let view = MatRef { data: &data, offset: 0, row_stride: 2, col_stride: 1 };
    let mut c = [0.0f32; 4];
    for path in KernelPath::ALL {
        let result = gemm_with_path(path, Dims { m: 2, n: 2, k: 2 }, 1.0, view, view, 0.0, &mut c);
        assert_eq!(result.is_ok(), path.is_available(), "{}", path.name());
        if result.is_ok() {
            assert_eq!(c, [2.0; 4]);
        }
    }
    assert!(KernelPath::selected().is_available());
}

/// `[batch, m, k] @ [k, n]` with B shared: the batch runs as one GEMM of `batch * m` rows; bits equal
/// per-item calls.
#[test]
fn batch_of_stacked_rows_equals_per_item_gemm() {
    for (batch, m, n, k) in [(4, 50, 40, 70), (3, 7, 33, 300), (8, 1, 17, 9)] {
        for a_transposed in [false, true] {
            let mut rng = Rng(batch as u64);
            // A's batch items stacked along rows: one (batch * m) x k matrix.
            let layout = Layout { transposed: a_transposed, pad: 2, offset: 1 };
            let a = random::<f32>(batch * m, k, layout, &mut rng);
            let b = random::<f32>(k, n, Layout { transposed: false, pad: 1, offset: 0 }, &mut rng);
            let a_offsets: Vec<usize> = (0..batch).map(|i| a.offset + i * m * a.row_stride).collect();
            let b_offsets = vec![b.offset; batch];
            let c0 = initial_c::<f32>(batch * m * n, 1.0, &mut rng);
            let mut c = c0.clone();
            let a_batch = BatchRef {
                data: &a.data,
                offsets: &a_offsets,
                row_stride: a.row_stride,
                col_stride: a.col_stride,
            };
            let b_batch = BatchRef {
                data: &b.data,
                offsets: &b_offsets,
                row_stride: b.row_stride,
                col_stride: b.col_stride,
            };
            gemm_batched(Dims { m, n, k }, 0.5, a_batch, b_batch, 2.0, &mut c);
            let mut expected = c0;
            for (item, c_item) in expected.chunks_mut(m * n).enumerate() {
                let a_item = MatRef {
                    data: &a.data,
                    offset: a_offsets[item],
                    row_stride: a.row_stride,
                    col_stride: a.col_stride,
                };
                gemm(Dims { m, n, k }, 0.5, a_item, b.view(), 2.0, c_item);
            }
            assert_eq!(bits(&c), bits(&expected), "batch {batch} m {m} transposed {a_transposed}");
        }
    }
}

/// A product too deep for B's whole depth to fit the 8 MiB panel at C's full width runs as consecutive
/// depth ranges (`driver.rs`, `depth_range`); it must give exactly the bits of the unsplit blocked
/// product. Every element's arithmetic is independent of which columns share its panel, so the reference
/// is the same product computed in column slices 40 wide, each shallow enough at that width to run as
/// one panel: equal bit for bit on every path, with beta = 0.5 (applied once, in the first range) and a
/// transposed A.
#[test]
fn deep_products_split_by_depth_equal_narrow_unsplit_ones() {
    let (m, n, k) = (37, 600, 6000); // 6000 x 600 f32 is 13.7 MiB of packed B
    let slice = 40; // 6000 x 48 (rounded to NR) is 1.1 MiB
    let mut rng = Rng(31);
    let a = random::<f32>(m, k, Layout { transposed: true, pad: 1, offset: 2 }, &mut rng);
    let b = random::<f32>(k, n, Layout { transposed: false, pad: 3, offset: 1 }, &mut rng);
    let c0 = initial_c::<f32>(m * n, 1.0, &mut rng);
    let (alpha, beta) = (1.25f32, 0.5f32);
    for path in available_paths() {
        let mut whole = c0.clone();
        gemm_with_path(path, Dims { m, n, k }, alpha, a.view(), b.view(), beta, &mut whole).unwrap();
        for j0 in (0..n).step_by(slice) {
            let width = slice.min(n - j0);
            let mut part: Vec<f32> = (0..m).flat_map(|i| c0[i * n + j0..][..width].to_vec()).collect();
            let b_cols = MatRef { offset: b.offset + j0 * b.col_stride, ..b.view() };
            gemm_with_path(path, Dims { m, n: width, k }, alpha, a.view(), b_cols, beta, &mut part).unwrap();
            for i in 0..m {
                let got = bits(&whole[i * n + j0..][..width]);
                assert!(got == bits(&part[i * width..][..width]), "{}: row {i}, columns {j0}..", path.name());
            }
        }
    }
}

//! GEMM against a naive f64 triple loop, over shapes that cross every block size of the blocked kernel
//! (MR = 6, NR = 8 (f32) / 4 (f64), MC = 144 / 72, KC = 256, NC = 2048), all transpose combinations and
//! narrowed views; plus batched/broadcast parity and thread-count determinism.
//!
//! Tolerances: the reference sums in f64, so its own error is negligible. The blocked kernel sums k
//! products in order in T; for random-sign data the rounding error grows like sqrt(k) * eps * sum|a||b|,
//! about 3e-6 (f32) and 6e-15 (f64) at k = 600, so bounds of 1e-5 and 1e-12 relative to
//! `|alpha| sum|a||b| + |beta c|` leave a wide margin yet catch any wrong or missing term.
use cola_kernels::cpu::gemm::{gemm, gemm_batched, BatchRef, Dims, MatRef};
use cola_kernels::Float;
use proptest::prelude::*;

/// SplitMix64: cheap reproducible fill for large operands (proptest shrinking of big vectors is slow).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

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

/// A `rows x cols` matrix inside a NaN-filled buffer: reading anything outside the view poisons C.
struct Stored<T> {
    data: Vec<T>,
    offset: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<T: Float> Stored<T> {
    fn random(rows: usize, cols: usize, layout: Layout, rng: &mut Rng) -> Self {
        let (outer, width) = if layout.transposed { (cols, rows) } else { (rows, cols) };
        let leading = width + layout.pad;
        let mut data = vec![T::from_f64(f64::NAN); layout.offset + leading * outer + layout.pad];
        let (row_stride, col_stride) = if layout.transposed { (1, leading) } else { (leading, 1) };
        for i in 0..rows {
            for j in 0..cols {
                data[layout.offset + i * row_stride + j * col_stride] = T::from_f64(rng.uniform());
            }
        }
        Stored { data, offset: layout.offset, row_stride, col_stride }
    }

    fn view(&self) -> MatRef<'_, T> {
        MatRef {
            data: &self.data,
            offset: self.offset,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    fn get(&self, i: usize, j: usize) -> f64 {
        self.data[self.offset + i * self.row_stride + j * self.col_stride].to_f64()
    }
}

/// C before the call: random, or all NaN when beta == 0 (which must ignore it).
fn initial_c<T: Float>(len: usize, beta: f64, rng: &mut Rng) -> Vec<T> {
    (0..len).map(|_| T::from_f64(if beta == 0.0 { f64::NAN } else { rng.uniform() })).collect()
}

/// Runs one gemm and checks every element against the f64 reference within `tol * magnitude`.
fn check_against_reference<T: Float>(
    dims: Dims,
    layouts: (Layout, Layout),
    alpha: f64,
    beta: f64,
    seed: u64,
    tol: f64,
) -> Result<(), TestCaseError> {
    let Dims { m, n, k } = dims;
    let mut rng = Rng(seed);
    let a = Stored::<T>::random(m, k, layouts.0, &mut rng);
    let b = Stored::<T>::random(k, n, layouts.1, &mut rng);
    let c0 = initial_c::<T>(m * n, beta, &mut rng);
    let mut c = c0.clone();
    gemm(dims, T::from_f64(alpha), a.view(), b.view(), T::from_f64(beta), &mut c);
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
                "{} {dims:?} {layouts:?} alpha={alpha} beta={beta}: C[{i}][{j}] = {got}, expected {expected} (bound {bound})",
                T::NAME
            );
        }
    }
    Ok(())
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

/// Exact block boundaries and their neighbours, every transpose combination, both types.
#[test]
fn gemm_matches_reference_at_block_boundaries() {
    let shapes = [
        (1, 1, 1),
        (6, 8, 256),
        (7, 9, 257),
        (5, 3, 255),
        (144, 8, 16),
        (145, 17, 3),
        (72, 4, 513),
        (73, 5, 2),
        (289, 3, 7),
        (3, 2048, 2),
        (2, 2049, 5),
        (1, 4097, 3),
        (13, 300, 260),
    ];
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
    let a = Stored::<T>::random(m, k * distinct.0, layouts.0, &mut rng);
    let b = Stored::<T>::random(k, n * distinct.1, layouts.1, &mut rng);
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

/// The same product in pools of 1, 2 and 3 threads: tiles are split differently, bits must not change.
fn check_thread_count_independence<T: Float>(dims: Dims, layouts: (Layout, Layout)) {
    let mut rng = Rng(7);
    let a = Stored::<T>::random(dims.m, dims.k, layouts.0, &mut rng);
    let b = Stored::<T>::random(dims.k, dims.n, layouts.1, &mut rng);
    let c0 = initial_c::<T>(dims.m * dims.n, 1.0, &mut rng);
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
        let mut c = c0.clone();
        pool.install(|| gemm(dims, T::from_f64(1.25), a.view(), b.view(), T::from_f64(0.5), &mut c));
        bits(&c)
    };
    let single = run(1);
    for threads in [2, 3] {
        assert!(run(threads) == single, "{} {dims:?}: {threads} threads differ from 1", T::NAME);
    }
}

#[test]
fn gemm_is_bit_identical_across_thread_counts() {
    let plain = Layout { transposed: false, pad: 0, offset: 0 };
    let transposed = Layout { transposed: true, pad: 1, offset: 3 };
    check_thread_count_independence::<f32>(Dims { m: 301, n: 203, k: 700 }, (plain, transposed));
    check_thread_count_independence::<f32>(Dims { m: 5, n: 3000, k: 300 }, (transposed, plain));
    check_thread_count_independence::<f64>(Dims { m: 150, n: 97, k: 530 }, (transposed, transposed));
    check_thread_count_independence::<f64>(Dims { m: 3, n: 2500, k: 260 }, (plain, plain));
}

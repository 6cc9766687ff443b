//! The bf16 GEMM (bf16 A and B, f32 accumulation) on every path this CPU has (the others are skipped with
//! a printed notice), over random shapes that cross its blocks (tile edges 12 x 32 and 6/12 x 8/16/32,
//! odd depths that need a zero partner in the last k-pair, KC = 256 and 512) and every layout:
//!
//! - the `VDPBF16PS` path equals its portable emulation bit for bit, on ordinary values and on values
//!   biased to the edges of the rounding model (tiny and huge exponents, denormals, signed zeros,
//!   infinities): this is the check of the model against the machine (NaN results compare as NaN);
//! - each widening path equals its portable twin bit for bit when alpha is a power of two (the product of
//!   two bf16 is exact in f32, so a fused and an unfused multiply-add agree; alpha * acc is exact), and
//!   equals the f32 GEMM on the same path of the widened operands bit for bit for any alpha and beta;
//! - a bf16 C is the f32 C rounded once to nearest even;
//! - every path is within a rigorous bound of an f64 reference: each of the k additions and the final
//!   combination rounds once, relative error at most 2^-24 of a partial sum whose magnitude is at most
//!   `sum|a||b|`, so `|C - exact| <= (k + 2) * 2^-24 * (|alpha| sum|a||b| + |beta c|)`, plus the
//!   flushed tiny sums of the dot paths, at most 2^-126 each (k of them);
//! - results do not depend on the thread count; batched items equal single products.
//!
//! About 10 s on 2 cores in release: the portable emulation is exact, not fast.
use cola_kernels::cpu::gemm::{
    gemm_bf16, gemm_bf16_batched, gemm_bf16_with_path, gemm_with_path, BatchRef, Bf16Path, Dims, KernelPath,
    MatRef,
};
use common::Rng;
use half::bf16;
use proptest::prelude::*;

use crate::common;

/// A bf16 `rows x cols` matrix inside a NaN-filled buffer: transposed or not, a leading dimension `pad`
/// wider than the logical width, a start offset.
struct Matrix {
    data: Vec<bf16>,
    offset: usize,
    row_stride: usize,
    col_stride: usize,
}

impl Matrix {
    fn new(
        rows: usize,
        cols: usize,
        (transposed, pad, offset): (bool, usize, usize),
        value: impl FnMut() -> bf16,
    ) -> Self {
        let mut value = value;
        let leading = if transposed { rows } else { cols } + pad;
        let (row_stride, col_stride) = if transposed { (1, leading) } else { (leading, 1) };
        let extent = (rows.max(1) - 1) * row_stride + (cols.max(1) - 1) * col_stride + 1;
        let mut data = vec![bf16::NAN; offset + extent + 3];
        for i in 0..rows {
            for j in 0..cols {
                data[offset + i * row_stride + j * col_stride] = value();
            }
        }
        Matrix { data, offset, row_stride, col_stride }
    }

    fn view(&self) -> MatRef<'_, bf16> {
        MatRef {
            data: &self.data,
            offset: self.offset,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    fn get(&self, i: usize, j: usize) -> f32 {
        self.data[self.offset + i * self.row_stride + j * self.col_stride].to_f32()
    }

    /// The same matrix widened to f32, in the same layout (NaN padding included).
    fn widened(&self) -> Vec<f32> {
        self.data.iter().map(|x| x.to_f32()).collect()
    }
}

type LayoutSpec = (bool, usize, usize);

/// One product's inputs: A, B, C before the call (NaN when beta == 0, which must ignore it).
struct Case {
    dims: Dims,
    a: Matrix,
    b: Matrix,
    c0: Vec<f32>,
    alpha: f32,
    beta: f32,
}

impl Case {
    fn new(
        dims: Dims,
        layouts: (LayoutSpec, LayoutSpec),
        (alpha, beta): (f32, f32),
        mut value: impl FnMut() -> bf16,
        rng: &mut Rng,
    ) -> Self {
        let a = Matrix::new(dims.m, dims.k, layouts.0, &mut value);
        let b = Matrix::new(dims.k, dims.n, layouts.1, &mut value);
        let c0 =
            (0..dims.m * dims.n).map(|_| if beta == 0.0 { f32::NAN } else { rng.uniform() as f32 }).collect();
        Case { dims, a, b, c0, alpha, beta }
    }

    fn uniform(dims: Dims, layouts: (LayoutSpec, LayoutSpec), scalars: (f32, f32), seed: u64) -> Self {
        let mut rng = Rng(seed);
        let mut values = Rng(seed ^ 0x5eed);
        Case::new(dims, layouts, scalars, || bf16::from_f64(values.uniform()), &mut rng)
    }

    /// C on `path` (f32 output).
    fn run(&self, path: Bf16Path) -> Vec<f32> {
        let mut c = self.c0.clone();
        gemm_bf16_with_path(path, self.dims, self.alpha, self.a.view(), self.b.view(), self.beta, &mut c)
            .expect("path checked available");
        c
    }

    /// C on the f32 GEMM of `path` with the widened operands.
    fn run_f32(&self, path: KernelPath) -> Vec<f32> {
        let (a, b) = (self.a.widened(), self.b.widened());
        let view = |m: &Matrix, data| MatRef {
            data,
            offset: m.offset,
            row_stride: m.row_stride,
            col_stride: m.col_stride,
        };
        let mut c = self.c0.clone();
        gemm_with_path(path, self.dims, self.alpha, view(&self.a, &a), view(&self.b, &b), self.beta, &mut c)
            .expect("path checked available");
        c
    }

    /// Checks `c` against an f64 reference within the header's bound.
    fn check_reference(&self, c: &[f32], label: &str) -> Result<(), TestCaseError> {
        let Dims { m, n, k } = self.dims;
        let unit = 2f64.powi(-24);
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut magnitude) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let term = f64::from(self.a.get(i, p)) * f64::from(self.b.get(p, j));
                    sum += term;
                    magnitude += term.abs();
                }
                let old =
                    if self.beta == 0.0 { 0.0 } else { f64::from(self.beta) * f64::from(self.c0[i * n + j]) };
                let expected = f64::from(self.alpha) * sum + old;
                let scale = f64::from(self.alpha).abs() * magnitude + old.abs();
                let bound = (k + 2) as f64 * unit * scale + k as f64 * 2f64.powi(-126);
                let got = f64::from(c[i * n + j]);
                prop_assert!(
                    (got - expected).abs() <= bound,
                    "{label} {:?}: C[{i}][{j}] = {got}, expected {expected} (bound {bound})",
                    self.dims
                );
            }
        }
        Ok(())
    }
}

/// Bit patterns, with every NaN the same (payloads may differ between the hardware and the model).
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() }).collect()
}

fn available(paths: &[Bf16Path]) -> Vec<Bf16Path> {
    let (yes, no): (Vec<_>, Vec<_>) = paths.iter().partition(|p| p.is_available());
    for path in no {
        println!("skipped: CPU cannot run the {path} path");
    }
    yes
}

fn widening_paths() -> Vec<Bf16Path> {
    available(&[Bf16Path::Widen(KernelPath::Avx2Fma), Bf16Path::Widen(KernelPath::Avx512F)])
}

fn layout() -> impl Strategy<Value = LayoutSpec> {
    (any::<bool>(), 0..=3usize, 0..=5usize)
}

/// Shapes across the tiles (12 x 32; 6 x 8/16), odd depths, KC = 256 and 512, and several B slivers.
fn shape() -> impl Strategy<Value = Dims> {
    prop_oneof![
        (1..=30usize, 1..=70usize, 1..=20usize),
        (10..=40usize, 30..=100usize, 250..=530usize),
        (1..=14usize, 1..=40usize, 500..=1100usize),
        (100..=300usize, 10..=40usize, 1..=12usize),
    ]
    .prop_map(|(m, n, k)| Dims { m, n, k })
}

/// (alpha, beta): alpha a power of two, so the widening twins agree bit for bit (see the header).
fn scalars() -> impl Strategy<Value = (f32, f32)> {
    (prop::sample::select(vec![1.0f32, -0.5, 2.0]), prop::sample::select(vec![0.0f32, 1.0, -1.5, 0.25]))
}

/// A value biased to the edges of `VDPBF16PS`'s rounding model: exponents near the bottom of f32's normal
/// range (products and sums that are tiny, or tiny after rounding), near the top (products beyond f32's
/// range), denormals, signed zeros, infinities; otherwise ordinary.
fn edge_value(rng: &mut Rng) -> bf16 {
    let r = rng.next_u64();
    let sign = if r & 1 == 1 { -1.0f32 } else { 1.0 };
    let mantissa = 1.0 + ((r >> 8) % 128) as f32 / 128.0;
    let value = match (r >> 1) % 16 {
        0 => return bf16::from_bits(((r >> 20) % 128) as u16 | (r as u16 & 1) << 15),
        1 => sign * 0.0,
        2 => sign * f32::INFINITY,
        3..=6 => sign * mantissa * 2f32.powi(-126 + ((r >> 20) % 70) as i32),
        7..=9 => sign * mantissa * 2f32.powi(-63 + ((r >> 20) % 8) as i32),
        10..=11 => sign * mantissa * 2f32.powi(60 + ((r >> 20) % 67) as i32),
        _ => sign * mantissa * 2f32.powi(((r >> 20) % 16) as i32 - 8),
    };
    bf16::from_f32(value)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn dot_hardware_equals_its_emulation(
        dims in shape(), layouts in (layout(), layout()), scalars in scalars(), seed in any::<u64>()
    ) {
        if Bf16Path::DotAvx512Bf16.is_available() {
            let case = Case::uniform(dims, layouts, scalars, seed);
            let hardware = case.run(Bf16Path::DotAvx512Bf16);
            prop_assert_eq!(bits(&hardware), bits(&case.run(Bf16Path::DotPortable)), "{:?}", dims);
            case.check_reference(&hardware, "dot-avx512bf16")?;
        }
    }

    #[test]
    fn dot_hardware_equals_its_emulation_on_edge_values(
        (m, n, k) in (1..=13usize, 1..=33usize, 1..=40usize), layouts in (layout(), layout()),
        scalars in scalars(), seed in any::<u64>()
    ) {
        if Bf16Path::DotAvx512Bf16.is_available() {
            let mut rng = Rng(seed);
            let mut values = Rng(seed ^ 0xed9e);
            let case = Case::new(Dims { m, n, k }, layouts, scalars, || edge_value(&mut values), &mut rng);
            let hardware = case.run(Bf16Path::DotAvx512Bf16);
            prop_assert_eq!(bits(&hardware), bits(&case.run(Bf16Path::DotPortable)), "{} {} {}", m, n, k);
        }
    }

    #[test]
    fn widening_paths_equal_their_twins_and_the_f32_gemm(
        dims in shape(), layouts in (layout(), layout()), scalars in scalars(), seed in any::<u64>()
    ) {
        let case = Case::uniform(dims, layouts, scalars, seed);
        let portable = case.run(Bf16Path::Widen(KernelPath::Portable));
        case.check_reference(&portable, "widen-portable")?;
        prop_assert_eq!(bits(&portable), bits(&case.run_f32(KernelPath::Portable)));
        for path in widening_paths() {
            let Bf16Path::Widen(f32_path) = path else { unreachable!() };
            let simd = case.run(path);
            prop_assert_eq!(bits(&simd), bits(&portable), "{} {:?}", path, dims);
            prop_assert_eq!(bits(&simd), bits(&case.run_f32(f32_path)), "{} {:?}", path, dims);
        }
    }

    #[test]
    fn dot_emulation_is_within_the_reference_bound(
        dims in shape(), layouts in (layout(), layout()), scalars in scalars(), seed in any::<u64>()
    ) {
        let case = Case::uniform(dims, layouts, scalars, seed);
        case.check_reference(&case.run(Bf16Path::DotPortable), "dot-portable")?;
    }
}

/// Any alpha (not a power of two): the widening paths still equal the f32 GEMM of the widened operands.
#[test]
fn widening_equals_the_f32_gemm_for_any_scalars() {
    let plain = (false, 1, 2);
    let transposed = (true, 0, 1);
    for path in [KernelPath::Portable, KernelPath::Avx2Fma, KernelPath::Avx512F] {
        if !path.is_available() {
            continue;
        }
        for (index, (m, n, k)) in
            [(1, 40, 70), (8, 33, 300), (50, 70, 257), (13, 200, 600)].into_iter().enumerate()
        {
            let case = Case::uniform(Dims { m, n, k }, (plain, transposed), (0.7, -1.3), index as u64);
            let widened = case.run(Bf16Path::Widen(path));
            assert_eq!(bits(&widened), bits(&case.run_f32(path)), "{} {m}x{n}x{k}", path.name());
        }
    }
}

/// A bf16 C is the f32 C (computed from the widened old C) rounded once to nearest even, on every path
/// this CPU has, whether the depth is one block (tiles rounded as they are stored: full tiles and edge
/// tiles, beta 0 and not) or several (an f32 accumulator rounded at the end: k = 530 > KC on every path);
/// `alpha == 0` and `k == 0` give `beta * C` rounded. Also through the selected path's `gemm_bf16`.
#[test]
fn bf16_output_is_the_f32_output_rounded_once() {
    let cases = [
        (37, 45, 530, 1.0, 0.0),
        (5, 70, 31, 0.5, -2.0),
        (50, 100, 128, 1.0, 0.0),
        (30, 70, 200, 1.0, 1.5),
        (20, 9, 0, 1.0, 3.0),
        (7, 7, 7, 0.0, 0.5),
    ];
    let to_bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (m, n, k, alpha, beta) in cases {
        let dims = Dims { m, n, k };
        let mut case = Case::uniform(dims, ((false, 0, 0), (true, 2, 1)), (alpha, beta), k as u64);
        let c_bf16: Vec<bf16> = (0..m * n).map(|i| bf16::from_f32(i as f32 * 0.37 - 5.0)).collect();
        case.c0 = c_bf16.iter().map(|x| x.to_f32()).collect();
        for path in available(&Bf16Path::ALL) {
            let expected: Vec<bf16> = case.run(path).iter().map(|&x| bf16::from_f32(x)).collect();
            let mut got = c_bf16.clone();
            gemm_bf16_with_path(path, dims, alpha, case.a.view(), case.b.view(), beta, &mut got).unwrap();
            assert_eq!(to_bits(&got), to_bits(&expected), "{path}: {m}x{n}x{k} alpha {alpha} beta {beta}");
        }
        let expected: Vec<bf16> = case.run(Bf16Path::selected()).iter().map(|&x| bf16::from_f32(x)).collect();
        let mut got = c_bf16.clone();
        gemm_bf16(dims, alpha, case.a.view(), case.b.view(), beta, &mut got);
        assert_eq!(to_bits(&got), to_bits(&expected), "selected: {m}x{n}x{k} alpha {alpha} beta {beta}");
    }
}

/// Tiles are split differently in pools of 1, 2 and 3 threads; the bits must not change.
#[test]
fn bf16_gemm_is_bit_identical_across_thread_counts() {
    let paths = available(&Bf16Path::ALL);
    for (dims, layouts) in [
        (Dims { m: 301, n: 203, k: 700 }, ((false, 0, 0), (true, 1, 3))),
        (Dims { m: 5, n: 3000, k: 300 }, ((true, 1, 3), (false, 0, 0))),
    ] {
        let case = Case::uniform(dims, layouts, (1.25, 0.5), 11);
        for &path in &paths {
            if path == Bf16Path::DotPortable && dims.m * dims.n * dims.k > 10_000_000 {
                continue;
            }
            let run = |threads| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
                bits(&pool.install(|| case.run(path)))
            };
            let single = run(1);
            assert!(run(2) == single && run(3) == single, "{path} {dims:?}: thread counts differ");
        }
    }
}

/// Batched products (broadcast B, stacked rows, independent items) equal per-item products bit for bit.
#[test]
fn batched_items_equal_single_products() {
    let (m, n, k, batch) = (9, 40, 77, 5);
    let mut rng = Rng(3);
    let a = Matrix::new(batch * m, k, (false, 1, 2), || bf16::from_f64(rng.uniform()));
    let b = Matrix::new(k, 2 * n, (false, 0, 1), || bf16::from_f64(rng.uniform()));
    for (a_offsets, b_offsets) in [
        ((0..batch).map(|i| a.offset + i * m * a.row_stride).collect::<Vec<_>>(), vec![b.offset; batch]),
        (
            (0..batch).map(|i| a.offset + (batch - 1 - i) * m * a.row_stride).collect(),
            (0..batch).map(|i| b.offset + (i % 2) * n).collect(),
        ),
    ] {
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
        let mut c = vec![bf16::NAN; batch * m * n];
        gemm_bf16_batched(Dims { m, n, k }, 1.0, a_batch, b_batch, 0.0, &mut c);
        for (item, c_item) in c.chunks(m * n).enumerate() {
            let a_item =
                MatRef { data: &a.data, offset: a_offsets[item], row_stride: a.row_stride, col_stride: 1 };
            let b_item =
                MatRef { data: &b.data, offset: b_offsets[item], row_stride: b.row_stride, col_stride: 1 };
            let mut expected = vec![bf16::ZERO; m * n];
            gemm_bf16(Dims { m, n, k }, 1.0, a_item, b_item, 0.0, &mut expected);
            assert!(c_item.iter().zip(&expected).all(|(x, y)| x.to_bits() == y.to_bits()), "item {item}");
        }
    }
}

#[test]
fn unavailable_path_is_an_error() {
    let data = [bf16::ONE; 4];
    let view = MatRef { data: &data, offset: 0, row_stride: 2, col_stride: 1 };
    for path in Bf16Path::ALL {
        let mut c = [0.0f32; 4];
        let result = gemm_bf16_with_path(path, Dims { m: 2, n: 2, k: 2 }, 1.0, view, view, 0.0, &mut c);
        assert_eq!(result.is_ok(), path.is_available(), "{path}");
        match result {
            Ok(()) => assert_eq!(c, [2.0; 4], "{path}"),
            Err(error) => assert!(error.to_string().contains(&path.to_string()), "{error}"),
        }
    }
    assert!(Bf16Path::selected().is_available());
}

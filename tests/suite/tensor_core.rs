//! The tensor core: views copy nothing and read the right elements, reshape copies exactly when strides
//! cannot express the new shape, creation, the counter-based RNG, dtype round trips and printing.
//!
//! Expected values come from a naive model written here: a tensor's logical values as a row-major `Vec`
//! and its shape, transformed by longhand index arithmetic for each view op.
use cola::tensor::{bf16, DType, Layout, Rng, Tensor};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------------
// The naive model.
// ---------------------------------------------------------------------------------------------------

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
    idx
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    let mut flat = 0;
    for d in 0..shape.len() {
        flat = flat * shape[d] + idx[d];
    }
    flat
}

/// Logical values of a tensor: row-major values and shape.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    values: Vec<f64>,
    shape: Vec<usize>,
}

impl Model {
    /// Builds the new shape's values by reading `source(idx)` of the old model for every new index.
    fn remap(&self, shape: Vec<usize>, source: impl Fn(&[usize]) -> Vec<usize>) -> Model {
        let values =
            (0..numel(&shape)).map(|f| self.values[ravel(&source(&unravel(f, &shape)), &self.shape)]);
        Model { values: values.collect(), shape }
    }

    fn permute(&self, perm: &[usize]) -> Model {
        let shape = perm.iter().map(|&p| self.shape[p]).collect();
        self.remap(shape, |idx| {
            let mut old = vec![0; idx.len()];
            for (d, &p) in perm.iter().enumerate() {
                old[p] = idx[d];
            }
            old
        })
    }

    fn narrow(&self, axis: usize, start: usize, len: usize) -> Model {
        let mut shape = self.shape.clone();
        shape[axis] = len;
        self.remap(shape, |idx| {
            let mut old = idx.to_vec();
            old[axis] += start;
            old
        })
    }

    fn broadcast_to(&self, shape: &[usize]) -> Model {
        let lead = shape.len() - self.shape.len();
        self.remap(shape.to_vec(), |idx| {
            (0..self.shape.len()).map(|d| if self.shape[d] == 1 { 0 } else { idx[lead + d] }).collect()
        })
    }
}

/// A contiguous f64 tensor holding `0, 1, 2, ...` (every element distinguishable) and its model.
fn iota(shape: &[usize]) -> (Tensor, Model) {
    let values: Vec<f64> = (0..numel(shape)).map(|i| i as f64).collect();
    let t = Tensor::from_vec(values.clone(), shape).unwrap();
    (t, Model { values, shape: shape.to_vec() })
}

#[track_caller]
fn assert_matches(t: &Tensor, model: &Model) {
    assert_eq!(t.shape(), &model.shape[..], "shape");
    assert_eq!(t.to_vec_f64(), model.values, "values of {:?}", t.layout());
}

/// Independent oracle: can a layout of `shape` over the same buffer address exactly the element offsets
/// `offsets` (row-major order)? Strides are forced by the offset differences along each dim.
fn expressible_as_view(offsets: &[usize], shape: &[usize]) -> bool {
    if offsets.is_empty() {
        return true;
    }
    let base = offsets[0];
    let strides: Vec<usize> = (0..shape.len())
        .map(|d| {
            if shape[d] < 2 {
                return 0;
            }
            let mut idx = vec![0; shape.len()];
            idx[d] = 1;
            offsets[ravel(&idx, shape)] - base
        })
        .collect();
    (0..offsets.len()).all(|f| {
        let idx = unravel(f, shape);
        offsets[f] == base + idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()
    })
}

/// Storage offset of every element of a layout, in row-major order.
fn element_offsets(layout: &Layout) -> Vec<usize> {
    (0..layout.numel())
        .map(|f| {
            let idx = unravel(f, layout.shape());
            layout.offset() + idx.iter().zip(layout.strides()).map(|(i, s)| i * s).sum::<usize>()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Views.
// ---------------------------------------------------------------------------------------------------

#[test]
fn views_share_storage_and_read_the_right_elements() {
    let (x, m) = iota(&[2, 3, 4]);

    let r = x.reshape(&[6, 4]).unwrap();
    assert!(r.shares_storage(&x) && r.is_contiguous());
    assert_matches(&r, &Model { values: m.values.clone(), shape: vec![6, 4] });

    let p = x.permute(&[2, 0, 1]).unwrap();
    assert!(p.shares_storage(&x) && !p.is_contiguous());
    assert_eq!(p.layout().strides(), &[1, 12, 4]);
    assert_matches(&p, &m.permute(&[2, 0, 1]));

    let t = x.transpose(0, -1).unwrap();
    assert!(t.shares_storage(&x));
    assert_matches(&t, &m.permute(&[2, 1, 0]));
    let tt = x.t().unwrap();
    assert!(tt.shares_storage(&x));
    assert_matches(&tt, &m.permute(&[0, 2, 1]));

    let n = x.narrow(-1, 1, 2).unwrap();
    assert!(n.shares_storage(&x) && !n.is_contiguous());
    assert_eq!((n.layout().offset(), n.layout().strides()), (1, &[12, 4, 1][..]));
    assert_matches(&n, &m.narrow(2, 1, 2));
    // Narrowing the outermost dim keeps the rows dense: contiguous, at an offset.
    let rows = x.narrow(0, 1, 1).unwrap();
    assert!(rows.shares_storage(&x) && rows.is_contiguous() && rows.layout().offset() == 12);
    assert_matches(&rows, &m.narrow(0, 1, 1));

    let (col, col_model) = iota(&[3, 1]);
    let b = col.broadcast_to(&[2, 3, 5]).unwrap();
    assert!(b.shares_storage(&col));
    assert_eq!(b.layout().strides(), &[0, 1, 0]);
    assert_matches(&b, &col_model.broadcast_to(&[2, 3, 5]));

    let parts = x.split(&[1, 0, 3], 2).unwrap();
    let mut start = 0;
    for (part, len) in parts.iter().zip([1, 0, 3]) {
        assert!(part.shares_storage(&x));
        assert_matches(part, &m.narrow(2, start, len));
        start += len;
    }

    let u = x.unsqueeze(1).unwrap();
    assert!(u.shares_storage(&x));
    assert_eq!(u.shape(), &[2, 1, 3, 4]);
    let s = u.squeeze(-3).unwrap();
    assert!(s.shares_storage(&x));
    assert_eq!(s.shape(), &[2, 3, 4]);
    assert_eq!(x.unsqueeze(-1).unwrap().shape(), &[2, 3, 4, 1]);

    // Views of views compose.
    let vv = x.permute(&[1, 0, 2]).unwrap().narrow(0, 1, 2).unwrap().t().unwrap();
    assert!(vv.shares_storage(&x));
    assert_matches(&vv, &m.permute(&[1, 0, 2]).narrow(0, 1, 2).permute(&[0, 2, 1]));
}

#[test]
fn reshape_of_non_contiguous_views() {
    let (x, m) = iota(&[4, 6]);

    // Narrowed columns [4, 4] with strides [6, 1]: splitting a dim is expressible.
    let cols = x.narrow(1, 1, 4).unwrap();
    let split = cols.reshape(&[2, 2, 2, 2]).unwrap();
    assert!(split.shares_storage(&x));
    assert_eq!(split.layout().strides(), &[12, 6, 2, 1]);
    assert_eq!(split.to_vec_f64(), m.narrow(1, 1, 4).values);
    // ... merging the two dims is not: a copy, with the right values.
    let flat = cols.reshape(&[16]).unwrap();
    assert!(!flat.shares_storage(&x) && flat.is_contiguous());
    assert_eq!(flat.to_vec_f64(), m.narrow(1, 1, 4).values);

    // The transpose [6, 4] (strides [1, 6]): splitting the first dim is a view, flattening copies.
    let t = x.t().unwrap();
    let split = t.reshape(&[3, 2, 4]).unwrap();
    assert!(split.shares_storage(&x));
    assert_eq!(split.layout().strides(), &[2, 1, 6]);
    assert_eq!(split.to_vec_f64(), m.permute(&[1, 0]).values);
    let flat = t.reshape(&[24]).unwrap();
    assert!(!flat.shares_storage(&x));
    assert_eq!(flat.to_vec_f64(), m.permute(&[1, 0]).values);

    // Size-1 dims can be added and removed anywhere in a view.
    let ones = t.reshape(&[1, 6, 1, 4, 1]).unwrap();
    assert!(ones.shares_storage(&x));
    assert_eq!(ones.to_vec_f64(), m.permute(&[1, 0]).values);
}

/// A chain of views over an iota tensor of `shape`: a permutation, a narrow of `axis` (start and length
/// taken modulo what fits) and possibly a broadcast to `broadcast` new leading entries.
#[derive(Clone, Debug)]
struct ViewChain {
    shape: Vec<usize>,
    perm: Vec<usize>,
    narrow: (usize, usize, usize),
    broadcast: Option<usize>,
}

fn random_view() -> impl Strategy<Value = ViewChain> {
    prop::collection::vec(1usize..5, 1..5)
        .prop_flat_map(|shape| {
            let rank = shape.len();
            (
                Just(shape),
                Just((0..rank).collect::<Vec<usize>>()).prop_shuffle(),
                (0..rank, 0usize..4, 0usize..4),
                prop::option::of(1usize..4),
            )
        })
        .prop_map(|(shape, perm, narrow, broadcast)| ViewChain { shape, perm, narrow, broadcast })
}

/// Applies the view chain to both a tensor and its model.
fn apply_view(chain: &ViewChain) -> (Tensor, Tensor, Model) {
    let (axis, a, b) = chain.narrow;
    let (base, m) = iota(&chain.shape);
    let (mut t, mut m) = (base.permute(&chain.perm).unwrap(), m.permute(&chain.perm));
    let size = t.shape()[axis];
    let start = a % size;
    let len = b % (size - start + 1);
    t = t.narrow(axis as isize, start, len).unwrap();
    m = m.narrow(axis, start, len);
    if let Some(lead) = chain.broadcast {
        let mut target = vec![lead];
        target.extend_from_slice(t.shape());
        // Stretch one size-1 dim when there is one.
        if let Some(d) = target.iter().skip(1).position(|&d| d == 1) {
            target[d + 1] = 3;
        }
        t = t.broadcast_to(&target).unwrap();
        m = m.broadcast_to(&target);
    }
    (base, t, m)
}

/// Every factorisation of `n` into `parts` factors (small n only).
fn factorisations(n: usize, parts: usize) -> Vec<Vec<usize>> {
    if parts == 1 {
        return vec![vec![n]];
    }
    (1..=n.max(1))
        .filter(|d| n.is_multiple_of(*d) || n == 0)
        .flat_map(|d| {
            factorisations(n / d, parts - 1).into_iter().map(move |mut f| {
                f.insert(0, d);
                f
            })
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any chain of views reads the elements the model says, `contiguous()` gathers them into a dense
    /// copy (or returns the tensor itself when it already is dense), and `to_vec` agrees.
    #[test]
    fn views_and_contiguous_match_naive_gather(chain in random_view()) {
        let (base, t, model) = apply_view(&chain);
        prop_assert!(t.shares_storage(&base));
        assert_matches(&t, &model);
        let c = t.contiguous().unwrap();
        prop_assert!(c.is_contiguous());
        if !t.is_contiguous() {
            prop_assert_eq!(c.layout(), &Layout::contiguous(&model.shape));
        }
        prop_assert_eq!(c.shares_storage(&base), t.is_contiguous());
        assert_matches(&c, &model);
        prop_assert_eq!(t.to_vec::<f64>().unwrap(), model.values.clone());
        // The f32 and bf16 copies of the view hold the same small integers.
        prop_assert_eq!(t.to_dtype(DType::F32).unwrap().to_vec_f64(), model.values.clone());
        prop_assert_eq!(t.to_dtype(DType::BF16).unwrap().contiguous().unwrap().to_vec_f64(), model.values.clone());
    }

    /// reshape keeps the row-major values; it is a view exactly when some strides express the new shape
    /// over the same buffer (decided by an independent oracle), and a contiguous copy otherwise.
    #[test]
    fn reshape_is_a_view_exactly_when_strides_can_express_it(
        chain in random_view(), parts in 1usize..5, pick in any::<prop::sample::Index>(),
    ) {
        let (base, t, model) = apply_view(&chain);
        let candidates = factorisations(t.numel(), parts);
        let target = pick.get(&candidates).clone();
        let r = t.reshape(&target).unwrap();
        prop_assert_eq!(r.shape(), &target[..]);
        prop_assert_eq!(r.to_vec_f64(), model.values.clone());
        let offsets = element_offsets(t.layout());
        let expressible = t.numel() == 0 || expressible_as_view(&offsets, &target);
        if t.numel() > 0 {
            prop_assert_eq!(r.shares_storage(&base), expressible, "{:?} -> {:?}", t.layout(), target);
        }
        if !r.shares_storage(&base) {
            prop_assert!(r.is_contiguous());
        }
        if t.is_contiguous() {
            prop_assert!(r.shares_storage(&base), "a contiguous tensor always reshapes as a view");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Creation.
// ---------------------------------------------------------------------------------------------------

#[test]
fn creation_functions() {
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        let z = Tensor::zeros(&[2, 3], dtype);
        assert_eq!((z.shape(), z.dtype(), z.is_contiguous()), (&[2usize, 3][..], dtype, true));
        assert_eq!(z.to_vec_f64(), vec![0.0; 6]);
        assert_eq!(Tensor::ones(&[4], dtype).to_vec_f64(), vec![1.0; 4]);
        assert_eq!(Tensor::full(&[2, 1, 2], -2.5, dtype).to_vec_f64(), vec![-2.5; 4]);
        assert_eq!(Tensor::arange(5, dtype).to_vec_f64(), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(Tensor::arange(5, dtype).shape(), &[5]);
        assert_eq!(Tensor::zeros(&[], dtype).to_vec_f64(), vec![0.0]);
        assert_eq!(Tensor::zeros(&[3, 0], dtype).numel(), 0);
        assert_eq!(z.size_in_bytes(), 6 * dtype.size_in_bytes());
    }
    // A value bf16 cannot hold exactly is rounded once.
    assert_eq!(Tensor::full(&[1], 1.0 + 1.0 / 512.0, DType::BF16).to_vec_f64(), vec![1.0]);

    let f = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2]).unwrap();
    assert_eq!((f.dtype(), f.shape(), f.rank(), f.numel()), (DType::F32, &[3usize, 2][..], 2, 6));
    assert_eq!(f.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!((f.dim(0).unwrap(), f.dim(-1).unwrap()), (3, 2));
    let h = Tensor::from_vec(vec![bf16::from_f32(0.5), bf16::from_f32(-3.0)], &[2]).unwrap();
    assert_eq!((h.dtype(), h.to_vec_f64()), (DType::BF16, vec![0.5, -3.0]));

    let s = Tensor::scalar(7.5f64);
    assert_eq!((s.shape(), s.rank(), s.numel(), s.dtype()), (&[] as &[usize], 0, 1, DType::F64));
    assert_eq!(s.to_scalar().unwrap(), 7.5);
    assert_eq!(Tensor::from_vec(vec![2.0f32], &[1, 1]).unwrap().to_scalar().unwrap(), 2.0);
}

// ---------------------------------------------------------------------------------------------------
// The RNG.
// ---------------------------------------------------------------------------------------------------

#[test]
fn rng_same_seed_gives_identical_values() {
    let draw = |seed| {
        let mut rng = Rng::new(seed);
        let a = Tensor::randn(&[64, 33], 0.0, 1.0, DType::F32, &mut rng).to_vec::<f32>().unwrap();
        let b = Tensor::rand_uniform(&[100], -1.0, 1.0, DType::F64, &mut rng).to_vec::<f64>().unwrap();
        let c: Vec<u64> = (0..50).map(|_| rng.below(17)).collect();
        (a, b, c, rng)
    };
    let (first, second) = (draw(42), draw(42));
    assert_eq!(first.0, second.0);
    assert_eq!(first.1, second.1);
    assert_eq!(first.2, second.2);
    assert_eq!(first.3, second.3);
    assert_eq!(first.3.counter, 64 * 33 + 100 + 50, "one counter step per value drawn");
    assert_ne!(draw(43).0, first.0, "another seed gives another stream");
}

#[test]
fn rng_counters_address_the_stream() {
    let seed = 2024;
    let mut rng = Rng::new(seed);
    let a = Tensor::randn(&[1000], 0.0, 1.0, DType::F64, &mut rng).to_vec::<f64>().unwrap();
    let b = Tensor::randn(&[1000], 0.0, 1.0, DType::F64, &mut rng).to_vec::<f64>().unwrap();
    assert_eq!(rng.counter, 2000);
    // Consecutive draws (different counters) differ everywhere.
    assert!(a.iter().zip(&b).all(|(x, y)| x != y));
    // Value i is a pure function of (seed, counter + i): resuming at a counter continues the stream.
    let mut resumed = Rng { seed, counter: 500 };
    let tail = Tensor::randn(&[1500], 0.0, 1.0, DType::F64, &mut resumed).to_vec::<f64>().unwrap();
    assert_eq!(&tail[..500], &a[500..]);
    assert_eq!(&tail[500..], &b[..]);
    // Uniform values and integers stay in range.
    let mut rng = Rng::new(1);
    for _ in 0..10_000 {
        let u = rng.uniform();
        assert!(u > 0.0 && u < 1.0);
        assert!(rng.below(3) < 3);
    }
}

/// Sample moments of 100k draws. Tolerances are 5 standard errors: for the mean `5 std / sqrt(n)`, for the
/// standard deviation `5 std / sqrt(2n)`, for a fraction `5 sqrt(p (1 - p) / n)`.
#[test]
fn randn_and_uniform_have_the_right_distribution() {
    let n = 100_000;
    let (mean, std) = (2.0, 3.0);
    let mut rng = Rng::new(7);
    let x = Tensor::randn(&[n], mean, std, DType::F64, &mut rng).to_vec::<f64>().unwrap();
    let sample_mean = x.iter().sum::<f64>() / n as f64;
    let sample_std = (x.iter().map(|v| (v - sample_mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    assert!((sample_mean - mean).abs() < 5.0 * std / (n as f64).sqrt(), "mean {sample_mean}");
    assert!((sample_std - std).abs() < 5.0 * std / (2.0 * n as f64).sqrt(), "std {sample_std}");
    // Shape of the distribution: P(|z| < 1) = 0.6827 for a normal.
    let within = x.iter().filter(|v| ((*v - mean) / std).abs() < 1.0).count() as f64 / n as f64;
    let p = 0.682_689;
    assert!((within - p).abs() < 5.0 * (p * (1.0 - p) / n as f64).sqrt(), "P(|z| < 1) = {within}");

    let u = Tensor::rand_uniform(&[n], -1.0, 3.0, DType::F32, &mut rng).to_vec_f64();
    assert!(u.iter().all(|&v| v > -1.0 && v < 3.0));
    let u_mean = u.iter().sum::<f64>() / n as f64;
    // Uniform on (-1, 3): mean 1, std 4 / sqrt(12).
    assert!((u_mean - 1.0).abs() < 5.0 * (4.0 / 12f64.sqrt()) / (n as f64).sqrt(), "uniform mean {u_mean}");
}

/// Filling is parallel, but value i depends only on (seed, i): bit-identical for any thread count.
#[test]
fn rng_results_do_not_depend_on_the_thread_count() {
    let draw = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut rng = Rng::new(11);
            let a = Tensor::randn(&[300, 700], 0.0, 0.02, DType::F32, &mut rng).to_vec::<f32>().unwrap();
            let b = Tensor::rand_uniform(&[100_000], 0.0, 1.0, DType::BF16, &mut rng).to_vec_f64();
            (a, b)
        })
    };
    let (one, three) = (draw(1), draw(3));
    assert!(one.0.iter().zip(&three.0).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(one.1, three.1);
}

// ---------------------------------------------------------------------------------------------------
// Dtype conversions.
// ---------------------------------------------------------------------------------------------------

#[test]
fn to_vec_and_to_dtype_round_trips() {
    let values = vec![0.1f64, -2.75, 1e-3, 3.0e5, -0.0, 1.0 / 3.0];
    let x = Tensor::from_vec(values.clone(), &[2, 3]).unwrap();
    assert!(x.to_dtype(DType::F64).unwrap().shares_storage(&x), "converting to its own dtype is free");

    // f64 -> f32 rounds to nearest; f32 -> f64 -> f32 is exact.
    let f = x.to_dtype(DType::F32).unwrap();
    assert_eq!(f.to_vec::<f32>().unwrap(), values.iter().map(|&v| v as f32).collect::<Vec<_>>());
    assert_eq!(
        f.to_dtype(DType::F64).unwrap().to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(),
        f.to_vec::<f32>().unwrap()
    );

    // -> bf16 rounds to nearest; bf16 -> f32 -> bf16 and bf16 -> f64 -> bf16 are exact.
    let h = x.to_dtype(DType::BF16).unwrap();
    let want: Vec<bf16> = values.iter().map(|&v| bf16::from_f64(v)).collect();
    assert_eq!(h.to_vec::<bf16>().unwrap(), want);
    assert_eq!(
        h.to_dtype(DType::F32).unwrap().to_dtype(DType::BF16).unwrap().to_vec::<bf16>().unwrap(),
        want
    );
    assert_eq!(
        h.to_dtype(DType::F64).unwrap().to_dtype(DType::BF16).unwrap().to_vec::<bf16>().unwrap(),
        want
    );

    // Converting a view gathers it.
    let t = x.t().unwrap().to_dtype(DType::F32).unwrap();
    assert!(t.is_contiguous());
    assert_eq!(
        t.to_vec::<f32>().unwrap(),
        [0.1, 3.0e5, -2.75, -0.0, 1e-3, 1.0 / 3.0].iter().map(|&v: &f64| v as f32).collect::<Vec<_>>()
    );

    // Devices: the CPU is a no-op move.
    assert!(x.to_device(cola::tensor::Device::Cpu).unwrap().shares_storage(&x));
}

// ---------------------------------------------------------------------------------------------------
// Display.
// ---------------------------------------------------------------------------------------------------

#[test]
fn display_shows_shape_dtype_and_values_and_elides_long_dims() {
    let small = Tensor::from_vec(vec![1.5f32, -2.0, 0.25, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    let text = small.to_string();
    assert!(
        text.contains("shape=[2, 3]") && text.contains("dtype=f32") && text.contains("device=cpu"),
        "{text}"
    );
    for v in ["1.500000", "-2.000000", "0.250000", "6.000000"] {
        assert!(text.contains(v), "{v} missing from {text}");
    }
    assert!(!text.contains("..."), "{text}");
    assert_eq!(format!("{small:?}"), text, "Debug prints like Display");

    // A dim of 20: the first and last three entries around an ellipsis.
    let long = Tensor::arange(20, DType::F64);
    let text = long.to_string();
    assert!(text.contains("dtype=f64") && text.contains("shape=[20]") && text.contains("..."), "{text}");
    for shown in ["0.000000", "2.000000", "17.000000", "19.000000"] {
        assert!(text.contains(shown), "{shown} missing from {text}");
    }
    for hidden in ["3.000000", "10.000000", "16.000000"] {
        assert!(!text.contains(hidden), "{hidden} should be elided: {text}");
    }

    // Long outer dims elide whole rows; bf16 and views print their logical values.
    let rows = Tensor::arange(40, DType::BF16).reshape(&[20, 2]).unwrap();
    let text = rows.t().unwrap().to_string();
    assert!(text.contains("shape=[2, 20]") && text.contains("dtype=bf16") && text.contains("..."), "{text}");
    assert!(text.contains("38.000000") && !text.contains("20.000000"), "{text}");
    let text = rows.to_string();
    assert!(text.contains("39.000000") && !text.contains("[20.000000"), "{text}");

    let scalar = Tensor::scalar(3.25f64).to_string();
    assert!(scalar.contains("shape=[]") && scalar.contains("3.250000"), "{scalar}");
}

//! Shared helpers of the gradient tests: random f64 tensors (also laid out as non-contiguous views), a
//! central finite-difference checker for anything recorded on a [`Tape`], and a tiny CoLA network.
//!
//! Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use cola::autograd::Graph as _;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod mutation;
pub mod network;
pub mod training;

use cola::autograd::{Policy, Result, Tape, Var};
use cola::tensor::{DType, Rng, Tensor};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Relative step of the finite differences: `h = STEP * max(1, |x|)`.
pub const STEP: f64 = 1e-6;

/// Tolerance of `|analytic - numeric| <= TOLERANCE * max(1, |numeric|)`.
///
/// Why 1e-6: the checked scalar `L` is O(1..100) and a sum of at most a few hundred O(1..10) terms, so its
/// f64 rounding error is at most ~1e3 * 2.2e-16 ≈ 2e-13; divided by the `2h = 2e-6` of a central difference
/// that is ~1e-7 in the worst case (typically 1e-10). The truncation error `h^2 |L'''| / 6` is ~1e-12 for the
/// smooth ops tested here (|L'''| < 1e3 with the input ranges chosen). An analytic rule that is wrong in any
/// element (a missing term, a transposed index, a wrong broadcast sum) is off by O(|grad|) ≫ 1e-6.
pub const TOLERANCE: f64 = 1e-6;

/// How a leaf's value is laid out in memory; the logical value is the same random tensor either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Contiguous,
    /// A `permute` (all dims reversed) of a contiguous tensor of the reversed shape.
    Transposed,
    /// A `narrow` of the last dim of a wider contiguous tensor (row stride > row length, non-zero offset).
    Narrowed,
    /// A `broadcast_to` along the first dim of size > 1 (stride 0; rows repeat).
    Broadcast,
}

pub fn any_view() -> impl Strategy<Value = View> {
    prop_oneof![Just(View::Contiguous), Just(View::Transposed), Just(View::Narrowed), Just(View::Broadcast)]
}

/// Distribution of random input values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist {
    /// Normal(0, std^2).
    Normal(f64),
    /// Uniform in (low, high).
    Uniform(f64, f64),
    /// Magnitude uniform in (0.5, 2), random sign: safe denominators.
    AwayFromZero,
}

pub fn sample(n: usize, dist: Dist, rng: &mut Rng) -> Vec<f64> {
    let t = match dist {
        Dist::Normal(std) => Tensor::randn(&[n], 0.0, std, DType::F64, rng),
        Dist::Uniform(low, high) => Tensor::rand_uniform(&[n], low, high, DType::F64, rng),
        Dist::AwayFromZero => {
            let magnitude = Tensor::rand_uniform(&[n], 0.5, 2.0, DType::F64, rng).to_vec_f64();
            let values = magnitude.iter().map(|&m| if rng.below(2) == 0 { m } else { -m }).collect();
            return values;
        }
    };
    t.to_vec_f64()
}

/// A contiguous f64 tensor of random values.
pub fn tensor(shape: &[usize], dist: Dist, rng: &mut Rng) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(sample(n, dist, rng), shape).expect("shape matches data")
}

/// A random f64 tensor of logical shape `shape`, stored as `view` says (contiguous when the view does not
/// apply to the shape, e.g. a transpose of a rank-1 tensor).
pub fn input(shape: &[usize], view: View, dist: Dist, rng: &mut Rng) -> Tensor {
    let rank = shape.len();
    let t = match view {
        View::Transposed if rank >= 2 => {
            let reversed: Vec<usize> = shape.iter().rev().copied().collect();
            let perm: Vec<usize> = (0..rank).rev().collect();
            tensor(&reversed, dist, rng).permute(&perm).expect("valid permutation")
        }
        View::Narrowed if rank >= 1 => {
            let mut wider = shape.to_vec();
            wider[rank - 1] += 3;
            tensor(&wider, dist, rng).narrow(-1, 1, shape[rank - 1]).expect("valid narrow")
        }
        View::Broadcast if shape.iter().any(|&d| d > 1) => {
            let axis = shape.iter().position(|&d| d > 1).expect("some dim > 1");
            let mut base = shape.to_vec();
            base[axis] = 1;
            tensor(&base, dist, rng).broadcast_to(shape).expect("valid broadcast")
        }
        _ => tensor(shape, dist, rng),
    };
    assert_eq!(t.shape(), shape);
    t
}

/// Multi-index of element `flat` of a row-major `shape` (for failure messages).
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = flat % shape[d].max(1);
        flat /= shape[d].max(1);
    }
    idx
}

/// Central difference of `loss` along element `j` of input `i`, with a step scaled to the value.
/// The actual step `x_plus - x_minus` is used (not `2h`), so the representable step is exact.
pub fn central_difference(inputs: &[Tensor], i: usize, j: usize, loss: &dyn Fn(&[Tensor]) -> f64) -> f64 {
    let mut data = inputs[i].to_vec_f64();
    let x = data[j];
    let h = STEP * x.abs().max(1.0);
    let (x_plus, x_minus) = (x + h, x - h);
    let mut moved: Vec<Tensor> = inputs.to_vec();
    data[j] = x_plus;
    moved[i] = Tensor::from_vec(data.clone(), inputs[i].shape()).expect("same shape");
    let l_plus = loss(&moved);
    data[j] = x_minus;
    moved[i] = Tensor::from_vec(data, inputs[i].shape()).expect("same shape");
    let l_minus = loss(&moved);
    (l_plus - l_minus) / (x_plus - x_minus)
}

/// Compares analytic gradients with central differences for every element of every input (except where
/// `skip(input, element)`), panicking with the worst offenders. Returns the largest `error / tolerance`.
pub fn compare_with_numeric(
    what: &str,
    inputs: &[Tensor],
    analytic: &[Tensor],
    skip: &dyn Fn(usize, usize) -> bool,
    loss: &dyn Fn(&[Tensor]) -> f64,
) -> f64 {
    let mut failures = Vec::new();
    let mut worst: f64 = 0.0;
    for (i, (x, g)) in inputs.iter().zip(analytic).enumerate() {
        assert_eq!(g.shape(), x.shape(), "{what}: gradient of input {i} has the wrong shape");
        assert_eq!(g.dtype(), x.dtype(), "{what}: gradient of input {i} has the wrong dtype");
        let g = g.to_vec_f64();
        for (j, &a) in g.iter().enumerate() {
            if skip(i, j) {
                continue;
            }
            let n = central_difference(inputs, i, j, loss);
            let ratio = (a - n).abs() / (TOLERANCE * n.abs().max(1.0));
            worst = worst.max(ratio);
            if ratio.is_nan() || ratio > 1.0 {
                failures.push(format!(
                    "  input {i} {:?} at {:?}: analytic {a:.12e}, numeric {n:.12e}",
                    x.shape(),
                    unravel(j, x.shape())
                ));
            }
        }
    }
    if std::env::var_os("COLA_GRADCHECK_VERBOSE").is_some() {
        eprintln!("{what}: worst |analytic - numeric| / tolerance = {worst:.3e}");
    }
    assert!(
        failures.is_empty(),
        "{what}: {} gradient entries differ from finite differences by more than \
         {TOLERANCE} * max(1, |numeric|):\n{}",
        failures.len(),
        failures.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
    worst
}

/// A graph under test: records a function of the leaf vars and returns its outputs.
pub type Graph<'a> = dyn Fn(&mut Tape, &[Var]) -> Result<Vec<Var>> + 'a;

/// Fixed random weights `R` of the outputs' shapes (seeded by output index, so every run uses the same).
fn loss_weights(shapes: &[Vec<usize>]) -> Vec<Tensor> {
    shapes
        .iter()
        .enumerate()
        .map(|(o, s)| tensor(s, Dist::Normal(1.0), &mut Rng::new(0x5EED_0000 + o as u64)))
        .collect()
}

/// `L = sum_o sum(out_o * R_o)` evaluated with no gradient recording, in plain f64 arithmetic.
fn loss_value(inputs: &[Tensor], graph: &Graph, weights: &[Tensor]) -> f64 {
    let mut tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|x| tape.constant(x.clone())).collect();
    let outs = graph(&mut tape, &vars).expect("the graph records without error");
    outs.iter()
        .zip(weights)
        .map(|(&o, r)| {
            let out = tape.value(o).expect("value of an output").to_vec_f64();
            out.iter().zip(r.to_vec_f64()).map(|(a, b)| a * b).sum::<f64>()
        })
        .sum()
}

/// Analytic gradients of `L = sum_o sum(out_o * R_o)` with respect to every input (each a leaf that
/// requires a gradient; `R_o` random so that every output element matters). A leaf no path reaches gets
/// zeros. The whole suite also runs under the recompute-everything policy: backward with every non-leaf
/// value released and replayed must give the same gradients bit for bit.
pub fn analytic_gradients(inputs: &[Tensor], graph: &Graph) -> (Vec<Tensor>, Vec<Tensor>) {
    let (kept, weights) = analytic_gradients_under(Policy::KeepAll, inputs, graph);
    let (replayed, _) = analytic_gradients_under(Policy::RecomputeAll, inputs, graph);
    for (i, (a, b)) in kept.iter().zip(&replayed).enumerate() {
        assert_eq!(a.to_vec_f64(), b.to_vec_f64(), "input {i}: replayed gradients differ from kept ones");
    }
    (kept, weights)
}

fn analytic_gradients_under(policy: Policy, inputs: &[Tensor], graph: &Graph) -> (Vec<Tensor>, Vec<Tensor>) {
    let mut tape = Tape::with_policy(policy);
    let vars: Vec<Var> = inputs.iter().map(|x| tape.leaf(x.clone(), true)).collect();
    let outs = graph(&mut tape, &vars).expect("the graph records without error");
    let shapes: Vec<Vec<usize>> =
        outs.iter().map(|&o| tape.shape(o).expect("shape of an output").to_vec()).collect();
    let weights = loss_weights(&shapes);
    let mut total = None;
    for (&o, r) in outs.iter().zip(&weights) {
        let r = tape.constant(r.clone());
        let weighted = tape.mul(&o, &r).expect("out * R");
        let term = tape.sum(&weighted, &[], false).expect("sum(out * R)");
        total = Some(match total {
            None => term,
            Some(t) => tape.add(&t, &term).expect("sum of terms"),
        });
    }
    let loss = total.expect("the graph has an output");
    let grads = tape.backward(loss).expect("backward");
    let grads = vars
        .iter()
        .zip(inputs)
        .map(|(&v, x)| grads.get(v).cloned().unwrap_or_else(|| Tensor::zeros(x.shape(), x.dtype())))
        .collect();
    (grads, weights)
}

/// Checks the gradients of `graph` at `inputs` against finite differences (skipping the elements
/// `skip(input, element)` selects) and returns the analytic gradients for further assertions.
pub fn check_gradients_skipping(
    what: &str,
    inputs: &[Tensor],
    skip: &dyn Fn(usize, usize) -> bool,
    graph: &Graph,
) -> Vec<Tensor> {
    let (grads, weights) = analytic_gradients(inputs, graph);
    compare_with_numeric(what, inputs, &grads, skip, &|x| loss_value(x, graph, &weights));
    grads
}

/// [`check_gradients_skipping`] with every element checked.
pub fn check_gradients(what: &str, inputs: &[Tensor], graph: &Graph) -> Vec<Tensor> {
    check_gradients_skipping(what, inputs, &|_, _| false, graph)
}

/// A shape derived from `shape` by dropping `drop` leading dims and setting to 1 the dims whose bit is set
/// in `ones` (bit 0 = last dim): an operand that broadcasts to `shape`.
pub fn broadcastable(shape: &[usize], drop: usize, ones: u8) -> Vec<usize> {
    let kept = &shape[drop.min(shape.len())..];
    let rank = kept.len();
    kept.iter().enumerate().map(|(d, &s)| if ones >> (rank - 1 - d) & 1 == 1 { 1 } else { s }).collect()
}

/// A random permutation of `0..n`.
pub fn permutation(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i as u64 + 1) as usize);
    }
    p
}

/// A random shape with `numel` elements (prime factors shuffled into up to 4 dims, some of size 1).
pub fn random_shape_with_numel(numel: usize, rng: &mut Rng) -> Vec<usize> {
    let mut factors = Vec::new();
    let (mut rest, mut p) = (numel, 2);
    while rest > 1 {
        while rest % p == 0 {
            factors.push(p);
            rest /= p;
        }
        p += 1;
    }
    let rank = 1 + rng.below(4) as usize;
    let mut shape = vec![1; rank];
    for f in factors {
        shape[rng.below(rank as u64) as usize] *= f;
    }
    shape
}

/// Bit patterns of a tensor's elements (f32 widens to f64 exactly), for bit-identity assertions.
pub fn bits(t: &Tensor) -> Vec<u64> {
    t.to_vec_f64().iter().map(|x| x.to_bits()).collect()
}

/// A graph of every elementwise, reduction and view op with fan-out: x and y (same shape, y away from 0).
pub fn elementwise_composite(t: &mut Tape, v: &[Var]) -> Result<Vec<Var>> {
    let (x, y) = (v[0], v[1]);
    let rank = t.shape(x)?.len();
    let xx = t.mul(&x, &x)?;
    let e = t.exp(&x)?;
    let s = t.silu(&xx)?;
    let q = t.div(&e, &y)?;
    let yy = t.mul(&y, &y)?;
    let l = t.log(&yy)?;
    let a = t.affine(&l, 0.5, -1.0)?;
    let d = t.sub(&q, &a)?;
    let n = t.neg(&s)?;
    let z = t.add(&d, &n)?;
    let m = t.mean(&z, &[-1], true)?;
    let centered = t.sub(&z, &m)?;
    let last = t.shape(x)?[rank - 1];
    let parts = t.split(&centered, &[last / 2, last - last / 2], -1)?;
    let swapped = t.concat(&[parts[1], parts[0]], -1)?;
    let perm: Vec<usize> = (0..rank).rev().collect();
    let p = t.permute(&swapped, &perm)?;
    let total = t.sum(&x, &[], false)?;
    let b = t.broadcast_to(&total, t.shape(p)?.to_vec().as_slice())?;
    let out = t.mul(&p, &b)?;
    Ok(vec![out, e])
}

/// A fresh folder under the system temp dir (named after the test binary's process, a number unique within
/// it, and `name`), removed when dropped. The number keeps apart the folders of tests that run at the same
/// time under the same name (one binary holds the tests of many files: `tests/suite/main.rs`).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("cola-test-{}-{number}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `contents` to `name` inside the folder (creating subfolders) and returns its path.
    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

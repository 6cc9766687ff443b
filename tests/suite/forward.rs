//! Forward correctness of every tensor op against a naive reference written here: plain loops over f64
//! vectors with explicit row-major index arithmetic, sharing no code with the kernels.
//!
//! Every property runs each random case twice, once in f64 and once in f32, on the same inputs (for f32
//! the inputs are rounded to f32 first and the reference computes in f64 on the rounded values), so the
//! only difference between op and reference is the op's own arithmetic.
//!
//! Tolerances. An error is measured against a magnitude `mag` per element: `|got - want| <= tol * mag`.
//! For ops that sum products (matmul, sum, mean) `mag` is the sum of the absolute values of the terms, the
//! quantity the classic bound `|fl(sum) - sum| <= n u sum|terms|` is stated in; for the other ops it is
//! `max(1, |want|)` (inputs are O(1), so this is a relative error above 1 and an absolute one below).
//! - f32: `tol = 1e-5`. The unit roundoff is `u = 2^-24 = 6e-8`; the longest accumulation in these
//!   properties is 40 terms, so `n u <= 2.4e-6`; the fused ops (softmax, norms, rotations) add a few
//!   roundings of exp, sqrt, sin and cos of O(1) values, each within a few `u`. 1e-5 leaves a factor of 4.
//! - f64: `tol = 1e-12`, the same reasoning with `u = 2^-53 = 1.1e-16` (bound ~5e-15), leaving room for
//!   the reference's own rounding in a different order.
//!
//! bf16 is a storage type computed in f32: a bf16 op must agree with the f32 op on the same (bf16-valued)
//! inputs, rounded to bf16, within bf16 precision (8 significant bits: half an ulp is 2^-9 = 2e-3
//! relative; 1e-2 allows a few ulps of double rounding), and its output dtype must be bf16.
use cola::tensor::{bf16, DType, GateActivation, Tensor};
use proptest::prelude::*;

const F32_TOL: f64 = 1e-5;
const F64_TOL: f64 = 1e-12;
const BF16_TOL: f64 = 1e-2;

/// The two compute dtypes and their tolerances.
const DTYPES: [(DType, f64); 2] = [(DType::F64, F64_TOL), (DType::F32, F32_TOL)];

// ---------------------------------------------------------------------------------------------------
// Helpers: a random source independent of the stack, index arithmetic, operand construction.
// ---------------------------------------------------------------------------------------------------

/// splitmix64 stream: the test's own random numbers, so the reference shares nothing with `cola::Rng`.
struct Gen(u64);

impl Gen {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }

    fn values(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Uniform in `[lo, hi)` when `lo >= 0` is meant as a magnitude: with a random sign.
    fn signed_values(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| if self.next_u64() & 1 == 0 { 1.0 } else { -1.0 } * self.uniform(lo, hi)).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// Multi-index of row-major position `flat` in `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
    idx
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(row_major_strides(shape)).map(|(i, s)| i * s).sum()
}

/// Row-major position in an operand of `shape` of the element that broadcasts to `out_idx` (numpy rules:
/// trailing dims aligned, size-1 dims repeat).
fn broadcast_source(out_idx: &[usize], shape: &[usize]) -> usize {
    let lead = out_idx.len() - shape.len();
    let idx: Vec<usize> =
        (0..shape.len()).map(|d| if shape[d] == 1 { 0 } else { out_idx[lead + d] }).collect();
    ravel(&idx, shape)
}

/// The numpy broadcast of two shapes, written out longhand.
fn broadcast_pair(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|d| {
            let x = if d + a.len() >= rank { a[d + a.len() - rank] } else { 1 };
            let y = if d + b.len() >= rank { b[d + b.len() - rank] } else { 1 };
            match (x, y) {
                _ if x == y => Some(x),
                (1, _) => Some(y),
                (_, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// `x` as stored in `dtype`.
fn round_to(x: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F64 => x,
        DType::F32 => x as f32 as f64,
        DType::BF16 => bf16::from_f64(x).to_f64(),
    }
}

/// A contiguous tensor of `dtype` holding `values`, and the values as stored (rounded to the dtype).
fn tensor(values: &[f64], shape: &[usize], dtype: DType) -> (Tensor, Vec<f64>) {
    let t = Tensor::from_vec(values.to_vec(), shape).unwrap().to_dtype(dtype).unwrap();
    assert_eq!(t.dtype(), dtype);
    (t, values.iter().map(|&x| round_to(x, dtype)).collect())
}

/// How an operand is laid out in memory: as a transposed view of its last two dims, and/or narrowed out
/// of a buffer whose last logical dim is `pad` entries longer. Ops must give the same results on views.
#[derive(Clone, Copy, Debug)]
struct View {
    transposed: bool,
    pad: usize,
}

const PLAIN: View = View { transposed: false, pad: 0 };

fn view_strategy() -> impl Strategy<Value = View> {
    (any::<bool>(), prop_oneof![Just(0usize), 1usize..4])
        .prop_map(|(transposed, pad)| View { transposed, pad })
}

/// An operand of logical `shape` with values uniform in `[lo, hi)`, laid out as `view` says, and its
/// logical values in row-major order (computed by index arithmetic on the buffer, not by the stack).
fn operand(gen: &mut Gen, shape: &[usize], view: View, lo: f64, hi: f64, dtype: DType) -> (Tensor, Vec<f64>) {
    operand_from(gen, shape, view, dtype, |gen, n| gen.values(n, lo, hi))
}

/// [`operand`] with values drawn by `draw(gen, count)`.
fn operand_from(
    gen: &mut Gen,
    shape: &[usize],
    view: View,
    dtype: DType,
    draw: impl Fn(&mut Gen, usize) -> Vec<f64>,
) -> (Tensor, Vec<f64>) {
    let rank = shape.len();
    if rank == 0 {
        return tensor(&draw(gen, 1), shape, dtype);
    }
    let transposed = view.transposed && rank >= 2;
    let mut base_shape = shape.to_vec();
    if transposed {
        base_shape.swap(rank - 2, rank - 1);
    }
    // The logical last dim is base dim `narrow_dim`.
    let narrow_dim = if transposed { rank - 2 } else { rank - 1 };
    base_shape[narrow_dim] += view.pad;
    let start = gen.below(view.pad + 1);
    let (base, base_values) = tensor(&draw(gen, numel(&base_shape)), &base_shape, dtype);
    let mut t = base.narrow(narrow_dim as isize, start, shape[rank - 1]).unwrap();
    if transposed {
        t = t.t().unwrap();
    }
    assert_eq!(t.shape(), shape);
    let logical = (0..numel(shape))
        .map(|flat| {
            let mut idx = unravel(flat, shape);
            if transposed {
                idx.swap(rank - 2, rank - 1);
            }
            idx[narrow_dim] += start;
            base_values[ravel(&idx, &base_shape)]
        })
        .collect();
    (t, logical)
}

/// Asserts shape, dtype and `|got - want| <= tol * mag` elementwise.
#[track_caller]
fn assert_close(
    what: &str,
    got: &Tensor,
    shape: &[usize],
    dtype: DType,
    want: &[f64],
    mag: &[f64],
    tol: f64,
) {
    assert_eq!(got.shape(), shape, "{what}: shape");
    assert_eq!(got.dtype(), dtype, "{what}: dtype");
    let values = got.to_vec_f64();
    assert_eq!(values.len(), want.len(), "{what}: element count");
    for (i, ((&g, &w), &m)) in values.iter().zip(want).zip(mag).enumerate() {
        assert!(
            (g - w).abs() <= tol * m,
            "{what} ({dtype}): element {i} of {shape:?} is {g}, reference {w} (error {:e} > {tol:e} * {m})",
            (g - w).abs()
        );
    }
}

/// Magnitudes for ops whose error is relative to the result (floored at 1 for small results).
fn rel_mag(want: &[f64]) -> Vec<f64> {
    want.iter().map(|w| w.abs().max(1.0)).collect()
}

#[track_caller]
fn assert_rel(what: &str, got: &Tensor, shape: &[usize], dtype: DType, want: &[f64], tol: f64) {
    assert_close(what, got, shape, dtype, want, &rel_mag(want), tol);
}

/// Shapes `(a, b)` that broadcast together: a random output shape of rank <= `max_rank` from which each
/// operand drops some leading dims and shrinks some dims to 1.
fn broadcastable_shapes(max_rank: usize, max_dim: usize) -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (
        prop::collection::vec((1..=max_dim, any::<bool>(), any::<bool>()), 0..=max_rank),
        0..=max_rank,
        0..=max_rank,
    )
        .prop_map(|(dims, drop_a, drop_b)| {
            let a: Vec<usize> = dims.iter().map(|&(d, one, _)| if one { 1 } else { d }).collect();
            let b: Vec<usize> = dims.iter().map(|&(d, _, one)| if one { 1 } else { d }).collect();
            (a[drop_a.min(a.len())..].to_vec(), b[drop_b.min(b.len())..].to_vec())
        })
}

fn shape_strategy(min_rank: usize, max_rank: usize, max_dim: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..=max_dim, min_rank..=max_rank)
}

// ---------------------------------------------------------------------------------------------------
// References.
// ---------------------------------------------------------------------------------------------------

/// Batched matmul with broadcast batch dims: returns (values, magnitudes `sum_p |a_ip b_pj|`, shape).
fn ref_matmul(
    a: &[f64],
    a_shape: &[usize],
    b: &[f64],
    b_shape: &[usize],
) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let (m, k, n) = (a_shape[ra - 2], a_shape[ra - 1], b_shape[rb - 1]);
    let (a_batch, b_batch) = (&a_shape[..ra - 2], &b_shape[..rb - 2]);
    let batch = broadcast_pair(a_batch, b_batch).unwrap();
    let (mut out, mut mag) = (Vec::new(), Vec::new());
    for bi in 0..numel(&batch) {
        let idx = unravel(bi, &batch);
        let a0 = broadcast_source(&idx, a_batch) * m * k;
        let b0 = broadcast_source(&idx, b_batch) * k * n;
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut s_abs) = (0.0, 0.0);
                for p in 0..k {
                    let term = a[a0 + i * k + p] * b[b0 + p * n + j];
                    s += term;
                    s_abs += term.abs();
                }
                out.push(s);
                mag.push(s_abs.max(f64::MIN_POSITIVE));
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    (out, mag, shape)
}

/// Which dims `axes` names (all when empty; negative axes count from the end).
fn reduced_dims(rank: usize, axes: &[isize]) -> Vec<bool> {
    (0..rank)
        .map(|d| {
            axes.is_empty() || axes.iter().any(|&a| (if a < 0 { a + rank as isize } else { a }) as usize == d)
        })
        .collect()
}

/// Sum over `axes` (all when empty; negative axes count from the end): (values, `sum |x|`, keepdim shape).
fn ref_sum(x: &[f64], shape: &[usize], axes: &[isize]) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
    let rank = shape.len();
    let reduced = reduced_dims(rank, axes);
    let kept: Vec<usize> = (0..rank).map(|d| if reduced[d] { 1 } else { shape[d] }).collect();
    let (mut out, mut mag) = (vec![0.0; numel(&kept)], vec![0.0; numel(&kept)]);
    for (flat, &v) in x.iter().enumerate() {
        let mut idx = unravel(flat, shape);
        for d in 0..rank {
            if reduced[d] {
                idx[d] = 0;
            }
        }
        let o = ravel(&idx, &kept);
        out[o] += v;
        mag[o] += v.abs();
    }
    (out, mag, kept)
}

fn ref_rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let d = w.len();
    let mut out = vec![0.0; x.len()];
    for r in 0..x.len() / d {
        let mean_sq = (0..d).map(|i| x[r * d + i] * x[r * d + i]).sum::<f64>() / d as f64;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for i in 0..d {
            out[r * d + i] = x[r * d + i] * inv * w[i];
        }
    }
    out
}

/// Rotate-half rope on `[batch, seq, heads, head_dim]`: pair `(i, i + h)` rotated by
/// `positions[s] * theta^(-2i / head_dim)`.
fn ref_rope(x: &[f64], shape: &[usize], positions: &[u32], theta: f64) -> Vec<f64> {
    let (b, s, nh, hd) = (shape[0], shape[1], shape[2], shape[3]);
    let half = hd / 2;
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for (si, &position) in positions.iter().enumerate().take(s) {
            for hi in 0..nh {
                let base = ((bi * s + si) * nh + hi) * hd;
                for i in 0..half {
                    let angle = position as f64 * theta.powf(-2.0 * i as f64 / hd as f64);
                    let (sin, cos) = angle.sin_cos();
                    let (x1, x2) = (x[base + i], x[base + i + half]);
                    out[base + i] = x1 * cos - x2 * sin;
                    out[base + i + half] = x2 * cos + x1 * sin;
                }
            }
        }
    }
    out
}

/// Causal attention, q `[b, sq, h, hd]`, k/v `[b, skv, h, hd]`; query i sits at position `i + skv - sq`.
fn ref_attention(q: &[f64], k: &[f64], v: &[f64], q_shape: &[usize], kv_len: usize, scale: f64) -> Vec<f64> {
    let (b, sq, nh, hd) = (q_shape[0], q_shape[1], q_shape[2], q_shape[3]);
    let q_at = |bi: usize, s: usize, h: usize| ((bi * sq + s) * nh + h) * hd;
    let kv_at = |bi: usize, s: usize, h: usize| ((bi * kv_len + s) * nh + h) * hd;
    let mut out = vec![0.0; q.len()];
    for bi in 0..b {
        for h in 0..nh {
            for i in 0..sq {
                let visible = i + kv_len - sq + 1;
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        scale * (0..hd).map(|d| q[q_at(bi, i, h) + d] * k[kv_at(bi, j, h) + d]).sum::<f64>()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..hd {
                    out[q_at(bi, i, h) + d] =
                        (0..visible).map(|j| weights[j] / total * v[kv_at(bi, j, h) + d]).sum::<f64>();
                }
            }
        }
    }
    out
}

fn ref_cross_entropy(logits: &[f64], vocab: usize, targets: &[u32], ignore: Option<u32>) -> f64 {
    let (mut total, mut count) = (0.0, 0);
    for (r, &t) in targets.iter().enumerate() {
        if Some(t) == ignore {
            continue;
        }
        let row = &logits[r * vocab..(r + 1) * vocab];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        total += lse - row[t as usize];
        count += 1;
    }
    if count == 0 {
        0.0
    } else {
        total / count as f64
    }
}

/// A binary tensor op and its scalar reference, by name.
type BinaryCase = (&'static str, fn(&Tensor, &Tensor) -> cola::tensor::Result<Tensor>, fn(f64, f64) -> f64);

// ---------------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `[..., m, k] @ [..., k, n]` with broadcast batch dims (rank 2 against higher ranks included) and
    /// operands given as transposed and/or narrowed views.
    #[test]
    fn matmul_matches_reference(
        (a_batch, b_batch) in broadcastable_shapes(2, 3),
        m in 1usize..=20, k in 1usize..=40, n in 1usize..=20,
        a_view in view_strategy(), b_view in view_strategy(), seed in any::<u64>(),
    ) {
        let a_shape: Vec<usize> = a_batch.iter().cloned().chain([m, k]).collect();
        let b_shape: Vec<usize> = b_batch.iter().cloned().chain([k, n]).collect();
        for (dtype, tol) in DTYPES {
            let mut gen = Gen(seed);
            let (a, av) = operand(&mut gen, &a_shape, a_view, -1.0, 1.0, dtype);
            let (b, bv) = operand(&mut gen, &b_shape, b_view, -1.0, 1.0, dtype);
            let (want, mag, shape) = ref_matmul(&av, &a_shape, &bv, &b_shape);
            assert_close("matmul", &a.matmul(&b).unwrap(), &shape, dtype, &want, &mag, tol);
        }
    }

    /// add, sub, mul, div with numpy broadcasting, on plain and strided operands.
    #[test]
    fn binary_ops_broadcast_like_numpy(
        (a_shape, b_shape) in broadcastable_shapes(4, 4),
        a_view in view_strategy(), b_view in view_strategy(), seed in any::<u64>(),
    ) {
        let out_shape = broadcast_pair(&a_shape, &b_shape).unwrap();
        for (dtype, tol) in DTYPES {
            let mut gen = Gen(seed);
            let (a, av) = operand(&mut gen, &a_shape, a_view, -2.0, 2.0, dtype);
            // Divisors are kept away from zero: |b| in [0.5, 2).
            let (b, bv) = operand_from(&mut gen, &b_shape, b_view, dtype, |gen, n| gen.signed_values(n, 0.5, 2.0));
            let ops: [BinaryCase; 4] = [
                ("add", Tensor::add, |x, y| x + y),
                ("sub", Tensor::sub, |x, y| x - y),
                ("mul", Tensor::mul, |x, y| x * y),
                ("div", Tensor::div, |x, y| x / y),
            ];
            for (name, op, f) in ops {
                let want: Vec<f64> = (0..numel(&out_shape))
                    .map(|flat| {
                        let idx = unravel(flat, &out_shape);
                        f(av[broadcast_source(&idx, &a_shape)], bv[broadcast_source(&idx, &b_shape)])
                    })
                    .collect();
                assert_rel(name, &op(&a, &b).unwrap(), &out_shape, dtype, &want, tol);
            }
        }
    }

    /// neg, exp, log, silu, gelu, relu, affine, add_scalar and mul_scalar, elementwise on plain and strided inputs.
    #[test]
    fn unary_and_scalar_ops_match_reference(
        shape in shape_strategy(0, 4, 5), view in view_strategy(),
        scale in -3.0f64..3.0, shift in -3.0f64..3.0, seed in any::<u64>(),
    ) {
        for (dtype, tol) in DTYPES {
            let mut gen = Gen(seed);
            let (x, xv) = operand(&mut gen, &shape, view, -3.0, 3.0, dtype);
            let (pos, pv) = operand(&mut gen, &shape, view, 0.05, 4.0, dtype);
            let map = |f: &dyn Fn(f64) -> f64, v: &[f64]| v.iter().map(|&x| f(x)).collect::<Vec<f64>>();
            assert_rel("neg", &x.neg().unwrap(), &shape, dtype, &map(&|x| -x, &xv), tol);
            assert_rel("exp", &x.exp().unwrap(), &shape, dtype, &map(&f64::exp, &xv), tol);
            assert_rel("log", &pos.log().unwrap(), &shape, dtype, &map(&f64::ln, &pv), tol);
            let silu = |x: f64| x / (1.0 + (-x).exp());
            assert_rel("silu", &x.silu().unwrap(), &shape, dtype, &map(&silu, &xv), tol);
            // The tanh form as PyTorch writes it (the kernel computes x * sigmoid(2u), the same function).
            let gelu = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert_rel("gelu", &x.gelu().unwrap(), &shape, dtype, &map(&gelu, &xv), tol);
            assert_rel("relu", &x.relu().unwrap(), &shape, dtype, &map(&|x| x.max(0.0), &xv), tol);
            let affine = map(&|x| scale * x + shift, &xv);
            assert_rel("affine", &x.affine(scale, shift).unwrap(), &shape, dtype, &affine, tol);
            assert_rel("add_scalar", &x.add_scalar(shift).unwrap(), &shape, dtype, &map(&|x| x + shift, &xv), tol);
            assert_rel("mul_scalar", &x.mul_scalar(scale).unwrap(), &shape, dtype, &map(&|x| x * scale, &xv), tol);
        }
    }

    /// The fused gated product and its backward against silu-then-multiply (or the plain product)
    /// written out here, gate and up in independent layouts; the gate spans [-8, 8] so both SiLU tails
    /// and its curved middle are visited.
    #[test]
    fn gated_matches_silu_then_mul_reference(
        shape in shape_strategy(0, 4, 7), (vg, vu, vd) in (view_strategy(), view_strategy(), view_strategy()),
        seed in any::<u64>(),
    ) {
        for (dtype, tol) in DTYPES {
            let mut gen = Gen(seed);
            let (gate, gv) = operand(&mut gen, &shape, vg, -8.0, 8.0, dtype);
            let (up, uv) = operand(&mut gen, &shape, vu, -3.0, 3.0, dtype);
            let (grad, dv) = operand(&mut gen, &shape, vd, -3.0, 3.0, dtype);
            let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
            for activation in [GateActivation::Silu, GateActivation::Identity] {
                let silu = activation == GateActivation::Silu;
                let act = |g: f64| if silu { g * sigmoid(g) } else { g };
                let slope = |g: f64| if silu { sigmoid(g) * (1.0 + g * (1.0 - sigmoid(g))) } else { 1.0 };
                let n = numel(&shape);
                let want: Vec<f64> = (0..n).map(|i| act(gv[i]) * uv[i]).collect();
                let what = format!("gated {activation:?}");
                assert_rel(&what, &gate.gated(&up, activation).unwrap(), &shape, dtype, &want, tol);
                let (grad_gate, grad_up) = Tensor::gated_backward(&gate, &up, &grad, activation).unwrap();
                let want_gate: Vec<f64> = (0..n).map(|i| dv[i] * uv[i] * slope(gv[i])).collect();
                let want_up: Vec<f64> = (0..n).map(|i| dv[i] * act(gv[i])).collect();
                assert_rel(&format!("{what} grad_gate"), &grad_gate, &shape, dtype, &want_gate, tol);
                assert_rel(&format!("{what} grad_up"), &grad_up, &shape, dtype, &want_up, tol);
            }
        }
    }

    /// sum and mean over any set of axes (given positive or negative, or none = all), with and without
    /// keepdim, on plain and strided inputs.
    #[test]
    fn sum_and_mean_match_reference(
        shape in shape_strategy(1, 4, 6), view in view_strategy(),
        axis_picks in prop::collection::vec((any::<bool>(), any::<bool>()), 4),
        keepdim in any::<bool>(), seed in any::<u64>(),
    ) {
        let rank = shape.len();
        let axes: Vec<isize> = (0..rank)
            .filter(|&d| axis_picks[d].0)
            .map(|d| if axis_picks[d].1 { d as isize - rank as isize } else { d as isize })
            .collect();
        for (dtype, tol) in DTYPES {
            let mut gen = Gen(seed);
            let (x, xv) = operand(&mut gen, &shape, view, -1.0, 1.0, dtype);
            let (want, mag, kept) = ref_sum(&xv, &shape, &axes);
            let reduced = reduced_dims(rank, &axes);
            let out_shape: Vec<usize> =
                if keepdim { kept.clone() } else { (0..rank).filter(|&d| !reduced[d]).map(|d| shape[d]).collect() };
            assert_close("sum", &x.sum(&axes, keepdim).unwrap(), &out_shape, dtype, &want, &mag, tol);
            let count = numel(&shape) / numel(&kept);
            let mean: Vec<f64> = want.iter().map(|s| s / count as f64).collect();
            let mean_mag: Vec<f64> = mag.iter().map(|s| (s / count as f64).max(f64::MIN_POSITIVE)).collect();
            assert_close("mean", &x.mean(&axes, keepdim).unwrap(), &out_shape, dtype, &mean, &mean_mag, tol);
        }
    }

    /// concat of parts (some possibly empty along the axis) equals interleaving their rows; split returns
    /// the consecutive pieces and concat(split(x)) == x.
    #[test]
    fn concat_and_split_match_reference(
        shape in shape_strategy(1, 4, 4), axis_pick in 0usize..4, negative in any::<bool>(),
        sizes in prop::collection::vec(0usize..4, 1..4), view in view_strategy(), seed in any::<u64>(),
    ) {
        let rank = shape.len();
        let axis = axis_pick % rank;
        let axis_arg = if negative { axis as isize - rank as isize } else { axis as isize };
        for (dtype, _) in DTYPES {
            let mut gen = Gen(seed);
            let parts: Vec<(Tensor, Vec<f64>, Vec<usize>)> = sizes
                .iter()
                .map(|&len| {
                    let mut s = shape.clone();
                    s[axis] = len;
                    let (t, v) = operand(&mut gen, &s, view, -1.0, 1.0, dtype);
                    (t, v, s)
                })
                .collect();
            let mut out_shape = shape.clone();
            out_shape[axis] = sizes.iter().sum();
            let want: Vec<f64> = (0..numel(&out_shape))
                .map(|flat| {
                    let mut idx = unravel(flat, &out_shape);
                    let mut part = 0;
                    while idx[axis] >= sizes[part] {
                        idx[axis] -= sizes[part];
                        part += 1;
                    }
                    parts[part].1[ravel(&idx, &parts[part].2)]
                })
                .collect();
            let tensors: Vec<Tensor> = parts.iter().map(|p| p.0.clone()).collect();
            let joined = Tensor::concat(&tensors, axis_arg).unwrap();
            // Copies only: exact.
            assert_close("concat", &joined, &out_shape, dtype, &want, &vec![1.0; want.len()], 0.0);

            let pieces = joined.split(&sizes, axis_arg).unwrap();
            prop_assert_eq!(pieces.len(), sizes.len());
            for (piece, (_, values, s)) in pieces.iter().zip(&parts) {
                assert_close("split", piece, s, dtype, values, &vec![1.0; values.len()], 0.0);
            }
            let rejoined = Tensor::concat(&pieces, axis_arg).unwrap();
            prop_assert_eq!(rejoined.to_vec_f64(), joined.to_vec_f64());
        }
    }

    /// rms_norm over the last dim, for any leading dims and an input that may be a strided view.
    #[test]
    fn rms_norm_matches_reference(
        lead in shape_strategy(0, 2, 4), d in 1usize..=40, view in view_strategy(),
        eps in prop_oneof![Just(1e-6), Just(1e-5), Just(0.1)], seed in any::<u64>(),
    ) {
        let shape: Vec<usize> = lead.iter().cloned().chain([d]).collect();
        for (dtype, tol) in DTYPES {
            let mut gen = Gen(seed);
            let (x, xv) = operand(&mut gen, &shape, view, -2.0, 2.0, dtype);
            let (w, wv) = tensor(&gen.values(d, -1.5, 1.5), &[d], dtype);
            let want = ref_rms_norm(&xv, &wv, eps);
            assert_rel("rms_norm", &x.rms_norm(&w, eps).unwrap(), &shape, dtype, &want, tol);
        }
    }

    /// rope with the rotate-half pairing, arbitrary (not necessarily consecutive) positions and theta.
    #[test]
    fn rope_matches_reference(
        batch in 1usize..3, seq in 1usize..6, heads in 1usize..4, half in 1usize..9,
        theta in prop_oneof![Just(10_000.0), Just(500_000.0), Just(10.0), 1.5f64..1e6],
        positions in prop::collection::vec(0u32..5000, 6), seed in any::<u64>(),
    ) {
        let shape = [batch, seq, heads, 2 * half];
        let positions = &positions[..seq];
        for (dtype, tol) in DTYPES {
            let mut gen = Gen(seed);
            let (x, xv) = tensor(&gen.values(numel(&shape), -1.0, 1.0), &shape, dtype);
            let want = ref_rope(&xv, &shape, positions, theta);
            assert_rel("rope", &x.rope(positions, theta).unwrap(), &shape, dtype, &want, tol);
        }
    }

    /// Causal attention, including decoding against a longer key/value prefix (q_len < kv_len).
    #[test]
    fn attention_matches_reference(
        batch in 1usize..3, heads in 1usize..4, head_dim in 1usize..17,
        kv_len in 1usize..13, q_frac in 0.0f64..1.0, default_scale in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let q_len = 1 + ((kv_len - 1) as f64 * q_frac) as usize;
        let scale = if default_scale { 1.0 / (head_dim as f64).sqrt() } else { 0.9 };
        let q_shape = [batch, q_len, heads, head_dim];
        let kv_shape = [batch, kv_len, heads, head_dim];
        for (dtype, tol) in DTYPES {
            let mut gen = Gen(seed);
            let (q, qv) = tensor(&gen.values(numel(&q_shape), -1.5, 1.5), &q_shape, dtype);
            let (k, kv) = tensor(&gen.values(numel(&kv_shape), -1.5, 1.5), &kv_shape, dtype);
            let (v, vv) = tensor(&gen.values(numel(&kv_shape), -1.5, 1.5), &kv_shape, dtype);
            let want = ref_attention(&qv, &kv, &vv, &q_shape, kv_len, scale);
            assert_rel("attention", &Tensor::attention(&q, &k, &v, scale).unwrap(), &q_shape, dtype, &want, tol);
        }
    }

    /// Embedding gathers rows by id, for ids of any shape (rank 0 included).
    #[test]
    fn embedding_matches_reference(
        vocab in 1usize..20, dim in 1usize..17, ids_shape in shape_strategy(0, 3, 4), seed in any::<u64>(),
    ) {
        let mut gen = Gen(seed ^ 1);
        let ids: Vec<u32> = (0..numel(&ids_shape)).map(|_| gen.below(vocab) as u32).collect();
        let out_shape: Vec<usize> = ids_shape.iter().cloned().chain([dim]).collect();
        for (dtype, _) in DTYPES {
            let mut gen = Gen(seed);
            let (w, wv) = tensor(&gen.values(vocab * dim, -1.0, 1.0), &[vocab, dim], dtype);
            let want: Vec<f64> = ids.iter().flat_map(|&id| (0..dim).map(move |j| id as usize * dim + j)).map(|i| wv[i]).collect();
            // A gather copies: exact.
            let got = Tensor::embedding(&w, &ids, &ids_shape).unwrap();
            assert_close("embedding", &got, &out_shape, dtype, &want, &vec![1.0; want.len()], 0.0);
        }
    }

    /// Mean cross-entropy over the targets that are not ignored (the ignore id may lie outside the
    /// vocabulary); logits up to +-30 check the log-sum-exp is stabilised.
    #[test]
    fn cross_entropy_matches_reference(
        lead in shape_strategy(1, 2, 4), vocab in 1usize..20, logit_range in prop_oneof![Just(3.0), Just(30.0)],
        ignore in prop_oneof![Just(None), Just(Some(u32::MAX)), (0u32..20).prop_map(Some)],
        ignore_rate in 0.0f64..0.5, seed in any::<u64>(),
    ) {
        let shape: Vec<usize> = lead.iter().cloned().chain([vocab]).collect();
        let rows = numel(&lead);
        let mut gen = Gen(seed ^ 1);
        let targets: Vec<u32> = (0..rows)
            .map(|_| match ignore {
                Some(id) if gen.uniform(0.0, 1.0) < ignore_rate => id,
                _ => gen.below(vocab) as u32,
            })
            .collect();
        for (dtype, tol) in DTYPES {
            let mut gen = Gen(seed);
            let (x, xv) = tensor(&gen.values(numel(&shape), -logit_range, logit_range), &shape, dtype);
            let want = ref_cross_entropy(&xv, vocab, &targets, ignore);
            // The loss is a sum of log-sum-exps of logits up to 30: errors scale with the logits.
            let mag = [logit_range.max(want.abs())];
            assert_close("cross_entropy", &x.cross_entropy(&targets, ignore).unwrap(), &[], dtype, &[want], &mag, tol);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Fixed cases.
// ---------------------------------------------------------------------------------------------------

/// A GEMM larger than one cache block in every direction (MC = 144 rows, KC = 256 deep) and above the
/// size at which it runs in parallel. Tolerance: the depth is 300, so the f32 bound is `300 u = 1.8e-5`
/// of `sum |a b|`.
#[test]
fn matmul_spanning_several_cache_blocks() {
    let (m, k, n) = (150, 300, 70);
    for (dtype, tol) in [(DType::F64, F64_TOL), (DType::F32, 300.0 * f32::EPSILON as f64 / 2.0)] {
        let mut gen = Gen(7);
        let (a, av) = operand(&mut gen, &[m, k], View { transposed: true, pad: 3 }, -1.0, 1.0, dtype);
        let (b, bv) = operand(&mut gen, &[k, n], PLAIN, -1.0, 1.0, dtype);
        let (want, mag, shape) = ref_matmul(&av, &[m, k], &bv, &[k, n]);
        assert_close("large matmul", &a.matmul(&b).unwrap(), &shape, dtype, &want, &mag, tol);
    }
}

/// Operands that are broadcast views (stride 0 along rows, columns or batch) multiply like the dense
/// tensors they stand for.
#[test]
fn matmul_of_broadcast_views() {
    let (b, m, k, n) = (3, 5, 7, 4);
    for (dtype, tol) in DTYPES {
        let mut gen = Gen(5);
        let (row, row_v) = tensor(&gen.values(k, -1.0, 1.0), &[1, k], dtype);
        let (col, col_v) = tensor(&gen.values(k, -1.0, 1.0), &[k, 1], dtype);
        let (mat, mat_v) = tensor(&gen.values(m * k, -1.0, 1.0), &[1, m, k], dtype);
        // Row stride 0 on the left, column stride 0 on the right.
        let a = row.broadcast_to(&[m, k]).unwrap();
        let c = col.broadcast_to(&[k, n]).unwrap();
        let a_v: Vec<f64> = (0..m * k).map(|i| row_v[i % k]).collect();
        let c_v: Vec<f64> = (0..k * n).map(|i| col_v[i / n]).collect();
        let (want, mag, shape) = ref_matmul(&a_v, &[m, k], &c_v, &[k, n]);
        assert_close("broadcast operands", &a.matmul(&c).unwrap(), &shape, dtype, &want, &mag, tol);
        // Batch stride 0 on the left against a real batch on the right.
        let batched = mat.broadcast_to(&[b, m, k]).unwrap();
        let (rhs, rhs_v) = tensor(&gen.values(b * k * n, -1.0, 1.0), &[b, k, n], dtype);
        let lhs_v: Vec<f64> = (0..b).flat_map(|_| mat_v.iter().cloned()).collect();
        let (want, mag, shape) = ref_matmul(&lhs_v, &[b, m, k], &rhs_v, &[b, k, n]);
        assert_close("broadcast batch", &batched.matmul(&rhs).unwrap(), &shape, dtype, &want, &mag, tol);
    }
}

/// When every target is ignored the loss is exactly 0, not NaN (0 / 0).
#[test]
fn cross_entropy_with_every_target_ignored_is_zero() {
    for (dtype, _) in DTYPES {
        let logits =
            Tensor::from_vec(vec![0.3, -1.2, 2.0, 0.1, 0.0, 5.0], &[2, 3]).unwrap().to_dtype(dtype).unwrap();
        for ignore in [7u32, 1] {
            let loss = logits.cross_entropy(&[ignore, ignore], Some(ignore)).unwrap();
            assert_eq!(loss.shape(), &[] as &[usize]);
            assert_eq!(loss.to_scalar().unwrap(), 0.0);
        }
    }
}

/// Hand-computed values pin the conventions the references encode.
#[test]
fn hand_computed_values() {
    // rope, head_dim 4, position 1, theta 1: pair 0 turns by 1 rad, pair 1 by 1^(-1/2) = 1 rad.
    let x = Tensor::from_vec(vec![1.0f64, 0.0, 0.0, 0.0], &[1, 1, 1, 4]).unwrap();
    let y = x.rope(&[1], 1.0).unwrap().to_vec::<f64>().unwrap();
    let (s, c) = 1f64.sin_cos();
    assert_eq!(y, vec![c, 0.0, s, 0.0]);
    // Position 0 leaves x unchanged.
    assert_eq!(x.rope(&[0], 10_000.0).unwrap().to_vec::<f64>().unwrap(), vec![1.0, 0.0, 0.0, 0.0]);

    // Causal attention: the first query sees only the first key, so it returns v[0].
    let q = Tensor::from_vec(vec![1.0f64, 1.0], &[1, 2, 1, 1]).unwrap();
    let v = Tensor::from_vec(vec![10.0f64, 20.0], &[1, 2, 1, 1]).unwrap();
    let out = Tensor::attention(&q, &q, &v, 1.0).unwrap().to_vec::<f64>().unwrap();
    assert_eq!(out[0], 10.0);
    assert!((out[1] - 15.0).abs() < 1e-12, "equal scores average the values: {}", out[1]);

    // Cross-entropy of uniform logits is ln(vocab).
    let logits = Tensor::zeros(&[3, 5], DType::F64);
    let loss = logits.cross_entropy(&[0, 4, 2], None).unwrap().to_scalar().unwrap();
    assert!((loss - 5f64.ln()).abs() < 1e-12);

    // Rows of [[1, 2], [3, 4]] times [[5], [6]].
    let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let b = Tensor::from_vec(vec![5.0f32, 6.0], &[2, 1]).unwrap();
    assert_eq!(a.matmul(&b).unwrap().to_vec::<f32>().unwrap(), vec![17.0, 39.0]);
}

// ---------------------------------------------------------------------------------------------------
// bf16.
// ---------------------------------------------------------------------------------------------------

/// Runs `op` on bf16 inputs and on the same values in f32, and checks the bf16 result is bf16 and equals
/// the f32 result rounded to bf16 within bf16 precision.
#[track_caller]
fn check_bf16(what: &str, inputs: &[Tensor], op: impl Fn(&[Tensor]) -> Tensor) {
    let as_bf16: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(DType::BF16).unwrap()).collect();
    let as_f32: Vec<Tensor> = as_bf16.iter().map(|t| t.to_dtype(DType::F32).unwrap()).collect();
    let got = op(&as_bf16);
    let reference = op(&as_f32);
    assert_eq!(reference.dtype(), DType::F32);
    let want: Vec<f64> = reference.to_vec_f64().iter().map(|&x| round_to(x, DType::BF16)).collect();
    assert_rel(what, &got, reference.shape(), DType::BF16, &want, BF16_TOL);
}

#[test]
fn bf16_ops_agree_with_f32_rounded_to_bf16() {
    let mut gen = Gen(99);
    let mut rand = |shape: &[usize]| tensor(&gen.values(numel(shape), -2.0, 2.0), shape, DType::F32).0;
    let (a, b, w) = (rand(&[3, 4, 8]), rand(&[8, 5]), rand(&[8]));
    let (row, q, kv) = (rand(&[1, 8]), rand(&[2, 3, 2, 4]), rand(&[2, 5, 2, 4]));

    check_bf16("matmul", &[a.clone(), b], |t| t[0].matmul(&t[1]).unwrap());
    check_bf16("add (broadcast)", &[a.clone(), row.clone()], |t| t[0].add(&t[1]).unwrap());
    check_bf16("mul (broadcast)", &[a.clone(), row], |t| t[0].mul(&t[1]).unwrap());
    check_bf16("silu", std::slice::from_ref(&a), |t| t[0].silu().unwrap());
    for activation in [GateActivation::Silu, GateActivation::Identity] {
        let (gate, up) = (a.clone(), a.mul_scalar(-0.75).unwrap());
        check_bf16("gated", &[gate.clone(), up.clone()], |t| t[0].gated(&t[1], activation).unwrap());
        let grad = a.add_scalar(0.5).unwrap();
        let backward = |t: &[Tensor]| Tensor::gated_backward(&t[0], &t[1], &t[2], activation).unwrap();
        check_bf16("gated_backward gate", &[gate.clone(), up.clone(), grad.clone()], |t| backward(t).0);
        check_bf16("gated_backward up", &[gate, up, grad], |t| backward(t).1);
    }
    check_bf16("exp", std::slice::from_ref(&a), |t| t[0].exp().unwrap());
    check_bf16("affine", std::slice::from_ref(&a), |t| t[0].affine(0.5, -1.0).unwrap());
    check_bf16("sum", std::slice::from_ref(&a), |t| t[0].sum(&[-1], false).unwrap());
    check_bf16("mean", std::slice::from_ref(&a), |t| t[0].mean(&[0, 2], true).unwrap());
    check_bf16("rms_norm", &[a.clone(), w], |t| t[0].rms_norm(&t[1], 1e-5).unwrap());
    check_bf16("rope", std::slice::from_ref(&q), |t| t[0].rope(&[4, 5, 6], 10_000.0).unwrap());
    check_bf16("attention", &[q, kv.clone(), kv.mul_scalar(-1.0).unwrap()], |t| {
        Tensor::attention(&t[0], &t[1], &t[2], 0.5).unwrap()
    });
    // The loss of bf16 logits is an f32 scalar (a bf16 loss would keep 8 significant bits), computed from
    // the bf16 values exactly as the f32 path computes it from the same values.
    let logits = a.reshape(&[12, 8]).unwrap().to_dtype(DType::BF16).unwrap();
    let targets = [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3];
    let loss = logits.cross_entropy(&targets, Some(3)).unwrap();
    let want = logits.to_dtype(DType::F32).unwrap().cross_entropy(&targets, Some(3)).unwrap();
    assert_eq!(loss.dtype(), DType::F32, "cross_entropy of bf16 logits is f32");
    assert_eq!(loss.to_scalar().unwrap(), want.to_scalar().unwrap());
    check_bf16("concat", &[a.clone(), a.clone()], |t| Tensor::concat(t, 1).unwrap());
    let table = a.reshape(&[12, 8]).unwrap();
    check_bf16("embedding", &[table], |t| Tensor::embedding(&t[0], &[3, 0, 11, 3], &[2, 2]).unwrap());
}

/// Tensors with a zero-sized dim, plain or as strided views over an empty buffer, pass through every op
/// and give empty results (or the value of an empty sum, 0).
#[test]
fn empty_tensors_flow_through_every_op() {
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        let empty = Tensor::zeros(&[0, 3], dtype);
        // A non-contiguous view of an empty buffer: strides [1, 3] for shape [3, 0].
        let view = empty.t().unwrap();
        assert_eq!(view.shape(), &[3, 0]);
        assert!(view.contiguous().unwrap().to_vec_f64().is_empty());
        assert!(view.exp().unwrap().to_vec_f64().is_empty());
        assert!(view.add(&view).unwrap().to_vec_f64().is_empty());
        assert_eq!(view.reshape(&[0, 5]).unwrap().shape(), &[0, 5]);
        assert_eq!(view.sum(&[-1], false).unwrap().to_vec_f64(), vec![0.0; 3]);
        assert_eq!(empty.sum(&[], false).unwrap().to_scalar().unwrap(), 0.0);
        // k = 0: the product of [3, 0] and [0, 2] is all zeros.
        let product = view.matmul(&Tensor::zeros(&[0, 2], dtype)).unwrap();
        assert_eq!((product.shape(), product.to_vec_f64()), (&[3usize, 2][..], vec![0.0; 6]));
        let joined = Tensor::concat(&[view.clone(), Tensor::ones(&[3, 2], dtype)], 1).unwrap();
        assert_eq!(joined.to_vec_f64(), vec![1.0; 6]);
        let weight = Tensor::ones(&[3], dtype);
        assert_eq!(empty.rms_norm(&weight, 1e-5).unwrap().shape(), &[0, 3]);
    }
}

/// The gated product refuses operands that differ in shape (it does not broadcast) or dtype, forward and
/// backward, with an error value naming the op and the shapes.
#[test]
fn gated_refuses_mismatched_operands() {
    let gate = Tensor::zeros(&[3, 5], DType::F32);
    for activation in [GateActivation::Silu, GateActivation::Identity] {
        for up in [Tensor::zeros(&[3, 4], DType::F32), Tensor::zeros(&[5], DType::F32)] {
            let message = gate.gated(&up, activation).unwrap_err().to_string();
            assert!(message.contains("gated") && message.contains("[3, 5]"), "{message}");
            let err = Tensor::gated_backward(&gate, &up, &gate, activation).unwrap_err().to_string();
            assert!(err.contains("gated_backward"), "{err}");
            assert!(Tensor::gated_backward(&gate, &gate, &up, activation).is_err(), "grad of another shape");
        }
        let up = Tensor::zeros(&[3, 5], DType::F64);
        let message = gate.gated(&up, activation).unwrap_err().to_string();
        assert!(message.contains("dtypes"), "{message}");
        assert!(Tensor::gated_backward(&gate, &gate, &up, activation).is_err(), "grad of another dtype");
    }
}

/// Rank-0 tensors are ordinary operands: reductions over no axes, broadcasting against any shape.
#[test]
fn rank_zero_tensors() {
    let s = Tensor::scalar(2.0f64);
    assert_eq!(s.sum(&[], false).unwrap().to_vec_f64(), vec![2.0]);
    assert_eq!(s.mean(&[], true).unwrap().shape(), &[] as &[usize]);
    assert_eq!(s.exp().unwrap().to_scalar().unwrap(), 2f64.exp());
    let row = Tensor::from_vec(vec![1.0, -1.0, 0.5], &[3]).unwrap();
    assert_eq!(s.mul(&row).unwrap().to_vec_f64(), vec![2.0, -2.0, 1.0]);
    assert_eq!(row.sub(&s).unwrap().to_vec_f64(), vec![-1.0, -3.0, -1.5]);
    assert_eq!(s.unsqueeze(0).unwrap().shape(), &[1]);
    assert_eq!(s.broadcast_to(&[2, 2]).unwrap().to_vec_f64(), vec![2.0; 4]);
}

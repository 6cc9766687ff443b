//! Fused CPU kernels (silu, rmsnorm, rope, attention, cross-entropy, embedding) checked against naive f64
//! compositions written here, against central finite differences of their own forward, in f32 against f64,
//! and for bit-identical results across rayon pools of different sizes.
//!
//! Tolerances: f64 kernels vs f64 references 1e-12 (only summation order differs); finite differences 1e-6
//! (step 1e-5: truncation ~h^2 = 1e-10, cancellation ~1e-16/h = 1e-11); f32 vs f64 1e-5 (a few f32 ulps
//! through short sums). Each bound is relative to `|want| + max(1, max|want|)`: inputs are O(1), so
//! rounding is bounded on that scale, and an entry that cancels to near zero is judged on the scale of
//! the terms that cancelled, not on its own tiny magnitude.
use cola_kernels::cpu::attention::{attention_backward, attention_forward, AttentionDims, AttentionGrads};
use cola_kernels::cpu::elementwise::{silu_backward, silu_forward};
use cola_kernels::cpu::embedding::{embedding_backward, embedding_forward};
use cola_kernels::cpu::loss::{cross_entropy_backward, cross_entropy_forward};
use cola_kernels::cpu::norm::{rms_norm_backward, rms_norm_forward};
use cola_kernels::cpu::rope::{rope_backward, rope_forward, RopeDims};
use cola_kernels::Float;
use proptest::prelude::*;

const REF_TOL: f64 = 1e-12;
const FD_TOL: f64 = 1e-6;
const F32_TOL: f64 = 1e-5;
const EPS: f64 = 1e-6;
const THETA: f64 = 10_000.0;

/// splitmix64: inputs come from a seed so that proptest only has to draw shapes and one number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[-scale, scale)`, rounded to f32 so the f32 and f64 kernels see the same values.
    fn values(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| ((self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale)
            .map(|x| x as f32 as f64)
            .collect()
    }
    fn ids(&mut self, n: usize, below: u32) -> Vec<u32> {
        (0..n).map(|_| (self.next() % below as u64) as u32).collect()
    }
}

fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64) {
    let scale = want.iter().fold(1.0_f64, |m, w| m.max(w.abs()));
    assert_close_at_scale(what, got, want, rtol, scale);
}

/// `|got - want| <= rtol * (|want| + scale)` elementwise.
fn assert_close_at_scale(what: &str, got: &[f64], want: &[f64], rtol: f64, scale: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err <= rtol * (w.abs() + scale), "{what}[{i}]: got {g}, want {w}, err {err:e}");
    }
}

/// Central differences of `f` with respect to every element of `x`.
fn finite_diff(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let (h, mut x) = (1e-5, x.to_vec());
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + h;
            let up = f(&x);
            x[i] = x0 - h;
            let down = f(&x);
            x[i] = x0;
            (up - down) / (2.0 * h)
        })
        .collect()
}

fn project(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
fn to32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}
fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

// ---- kernel wrappers returning fresh buffers ----

fn silu<T: Float>(x: &[T]) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    silu_forward(x, &mut y);
    y
}
fn silu_grad<T: Float>(x: &[T], g: &[T]) -> Vec<T> {
    let mut dx = vec![T::ZERO; x.len()];
    silu_backward(x, g, &mut dx);
    dx
}
fn rms<T: Float>(x: &[T], w: &[T]) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    rms_norm_forward(x, w, w.len(), T::from_f64(EPS), &mut y);
    y
}
fn rms_grad<T: Float>(x: &[T], w: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut dx, mut dw) = (vec![T::ZERO; x.len()], vec![T::from_f64(7.0); w.len()]);
    rms_norm_backward(x, w, g, w.len(), T::from_f64(EPS), &mut dx, &mut dw);
    (dx, dw)
}
fn rope<T: Float>(x: &[T], dims: RopeDims, pos: &[u32], inverse: bool) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    match inverse {
        false => rope_forward(x, dims, pos, THETA, &mut y),
        true => rope_backward(x, dims, pos, THETA, &mut y),
    }
    y
}
fn attention<T: Float>(q: &[T], k: &[T], v: &[T], dims: AttentionDims) -> Vec<T> {
    let mut out = vec![T::ZERO; q.len()];
    attention_forward(q, k, v, dims, T::from_f64(0.7), &mut out);
    out
}
fn attention_grad<T: Float>(q: &[T], k: &[T], v: &[T], g: &[T], dims: AttentionDims) -> [Vec<T>; 3] {
    let [mut dq, mut dk, mut dv] = [q, k, v].map(|x| vec![T::from_f64(7.0); x.len()]);
    let grads = AttentionGrads { q: &mut dq, k: &mut dk, v: &mut dv };
    attention_backward(q, k, v, g, dims, T::from_f64(0.7), grads);
    [dq, dk, dv]
}
fn ce_grad<T: Float>(x: &[T], vocab: usize, t: &[u32], ignore: Option<u32>, g: T) -> Vec<T> {
    let mut dx = vec![T::from_f64(7.0); x.len()];
    cross_entropy_backward(x, vocab, t, ignore, g, &mut dx);
    dx
}
fn embed<T: Float>(w: &[T], dim: usize, ids: &[u32]) -> Vec<T> {
    let mut out = vec![T::ZERO; ids.len() * dim];
    embedding_forward(w, dim, ids, &mut out);
    out
}
fn embed_grad<T: Float>(g: &[T], dim: usize, ids: &[u32], pad: Option<u32>, rows: usize) -> Vec<T> {
    let mut dw = vec![T::ZERO; rows * dim];
    embedding_backward(g, dim, ids, pad, &mut dw);
    dw
}

// ---- naive f64 references ----

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
/// Returns `(y, dx, dw)` of RMSNorm; dx through the explicit Jacobian
/// `dy_j/dx_k = w_j (r d_jk - r^3 x_j x_k / n)`.
fn rms_ref(x: &[f64], w: &[f64], g: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = w.len();
    let (mut y, mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; n]);
    for row in 0..x.len() / n {
        let (xr, gr) = (&x[row * n..][..n], &g[row * n..][..n]);
        let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / n as f64 + EPS).sqrt();
        for j in 0..n {
            y[row * n + j] = xr[j] * r * w[j];
            dw[j] += gr[j] * xr[j] * r;
            for kk in 0..n {
                let delta = if j == kk { r } else { 0.0 };
                dx[row * n + kk] += gr[j] * w[j] * (delta - r.powi(3) * xr[j] * xr[kk] / n as f64);
            }
        }
    }
    (y, dx, dw)
}
/// Applies the explicit rotation matrix of every (position, head), or its transpose.
fn rope_ref(x: &[f64], d: RopeDims, pos: &[u32], transpose: bool) -> Vec<f64> {
    let (hd, half) = (d.head_dim, d.head_dim / 2);
    let mut y = vec![0.0; x.len()];
    for (t, (xs, ys)) in x.chunks(hd).zip(y.chunks_mut(hd)).enumerate() {
        let p = pos[(t / d.heads) % d.seq] as f64;
        let mut rot = vec![vec![0.0; hd]; hd];
        for i in 0..half {
            let a = p / THETA.powf(2.0 * i as f64 / hd as f64);
            (rot[i][i], rot[i][i + half], rot[i + half][i], rot[i + half][i + half]) =
                (a.cos(), -a.sin(), a.sin(), a.cos());
        }
        for (r, yr) in ys.iter_mut().enumerate() {
            *yr = (0..hd).map(|c| if transpose { rot[c][r] } else { rot[r][c] } * xs[c]).sum();
        }
    }
    y
}
/// Returns `[out, dq, dk, dv]` from explicit score and probability matrices per (batch, head).
fn attention_ref(q: &[f64], k: &[f64], v: &[f64], g: &[f64], d: AttentionDims) -> [Vec<f64>; 4] {
    let (hd, scale, off) = (d.head_dim, 0.7, d.kv_len - d.q_len);
    let at = |len: usize, b: usize, t: usize, h: usize| ((b * len + t) * d.heads + h) * hd;
    let [mut o, mut dq, mut dk, mut dv] = [q, q, k, v].map(|x| vec![0.0; x.len()]);
    for b in 0..d.batch {
        for h in 0..d.heads {
            let (qa, ka) = (|i| at(d.q_len, b, i, h), |j| at(d.kv_len, b, j, h));
            let mut p = vec![vec![0.0; d.kv_len]; d.q_len];
            for (i, p_i) in p.iter_mut().enumerate() {
                let s: Vec<f64> = (0..d.kv_len)
                    .map(|j| match j <= i + off {
                        true => scale * (0..hd).map(|c| q[qa(i) + c] * k[ka(j) + c]).sum::<f64>(),
                        false => f64::NEG_INFINITY,
                    })
                    .collect();
                let z: f64 = s.iter().map(|x| x.exp()).sum();
                p_i.iter_mut().zip(&s).for_each(|(pij, sij)| *pij = sij.exp() / z);
            }
            for i in 0..d.q_len {
                let dp: Vec<f64> =
                    (0..d.kv_len).map(|j| (0..hd).map(|c| g[qa(i) + c] * v[ka(j) + c]).sum()).collect();
                let row: f64 = (0..d.kv_len).map(|j| p[i][j] * dp[j]).sum();
                for j in 0..d.kv_len {
                    let ds = p[i][j] * (dp[j] - row);
                    for c in 0..hd {
                        o[qa(i) + c] += p[i][j] * v[ka(j) + c];
                        dv[ka(j) + c] += p[i][j] * g[qa(i) + c];
                        dq[qa(i) + c] += scale * ds * k[ka(j) + c];
                        dk[ka(j) + c] += scale * ds * q[qa(i) + c];
                    }
                }
            }
        }
    }
    [o, dq, dk, dv]
}
/// Returns `(loss, grad)` of mean cross-entropy through an explicit softmax.
fn ce_ref(x: &[f64], vocab: usize, t: &[u32], ignore: Option<u32>, gl: f64) -> (f64, Vec<f64>) {
    let count = t.iter().filter(|&&id| Some(id) != ignore).count();
    let (mut loss, mut grad) = (0.0, vec![0.0; x.len()]);
    for (row, &target) in t.iter().enumerate().filter(|(_, &id)| Some(id) != ignore) {
        let xr = &x[row * vocab..][..vocab];
        let z: f64 = xr.iter().map(|v| v.exp()).sum();
        loss += z.ln() - xr[target as usize];
        for j in 0..vocab {
            let onehot = if j == target as usize { 1.0 } else { 0.0 };
            grad[row * vocab + j] = gl * (xr[j].exp() / z - onehot) / count as f64;
        }
    }
    (if count == 0 { 0.0 } else { loss / count as f64 }, grad)
}
fn embed_grad_ref(g: &[f64], dim: usize, ids: &[u32], pad: Option<u32>, rows: usize) -> Vec<f64> {
    let mut dw = vec![0.0; rows * dim];
    for (i, &id) in ids.iter().enumerate().filter(|(_, &id)| Some(id) != pad) {
        (0..dim).for_each(|c| dw[id as usize * dim + c] += g[i * dim + c]);
    }
    dw
}

// ---- random problems ----

fn attention_problem(seed: u64, d: AttentionDims) -> [Vec<f64>; 4] {
    let mut rng = Rng(seed);
    let (nq, nk) = (d.batch * d.q_len * d.heads * d.head_dim, d.batch * d.kv_len * d.heads * d.head_dim);
    [rng.values(nq, 1.5), rng.values(nk, 1.5), rng.values(nk, 1.0), rng.values(nq, 1.0)]
}
/// Targets in `0..vocab`, with `vocab` itself used as the ignore id when `ignore` is set (and some rows
/// set to it), so ignored rows are mixed with counted ones.
fn ce_problem(seed: u64, rows: usize, vocab: usize, ignore: bool) -> (Vec<f64>, Vec<u32>, Option<u32>) {
    let mut rng = Rng(seed);
    let x = rng.values(rows * vocab, 4.0);
    let ignore = ignore.then_some(vocab as u32);
    let t = rng.ids(rows, vocab as u32 + u32::from(ignore.is_some()));
    (x, t, ignore)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn silu_matches_reference_and_finite_differences(n in 1usize..40, seed: u64) {
        let mut rng = Rng(seed);
        let (x, g) = (rng.values(n, 6.0), rng.values(n, 1.0));
        let want: Vec<f64> = x.iter().map(|&v| v * sigmoid(v)).collect();
        assert_close("y", &silu(&x), &want, REF_TOL);
        // d/dx [x sigmoid(x)] = sigmoid(x) + x sigmoid'(x), sigmoid' = sigmoid(x) sigmoid(-x).
        let slope = |v: f64| sigmoid(v) + v * sigmoid(v) * sigmoid(-v);
        let grad_ref: Vec<f64> = x.iter().zip(&g).map(|(&v, gi)| gi * slope(v)).collect();
        let dx = silu_grad(&x, &g);
        assert_close("dx", &dx, &grad_ref, REF_TOL);
        assert_close("dx fd", &finite_diff(&x, |x| project(&silu(x), &g)), &dx, FD_TOL);
        assert_close("f32 y", &to64(&silu(&to32(&x))), &want, F32_TOL);
        assert_close("f32 dx", &to64(&silu_grad(&to32(&x), &to32(&g))), &dx, F32_TOL);
    }

    #[test]
    fn rms_norm_matches_reference_and_finite_differences(rows in 1usize..6, dim in 1usize..10, seed: u64) {
        let mut rng = Rng(seed);
        // |x| >= 0.1: a row near zero curves on the scale sqrt(eps), finer than the difference step.
        let away = |v: &f64| (v + 0.1f64.copysign(*v)) as f32 as f64;
        let x: Vec<f64> = rng.values(rows * dim, 2.0).iter().map(away).collect();
        let (g, w) = (rng.values(rows * dim, 1.0), rng.values(dim, 1.5));
        let (y_ref, dx_ref, dw_ref) = rms_ref(&x, &w, &g);
        let (dx, dw) = rms_grad(&x, &w, &g);
        assert_close("y", &rms(&x, &w), &y_ref, REF_TOL);
        assert_close("dx", &dx, &dx_ref, REF_TOL);
        assert_close("dw", &dw, &dw_ref, REF_TOL);
        assert_close("dx fd", &finite_diff(&x, |x| project(&rms(x, &w), &g)), &dx, FD_TOL);
        assert_close("dw fd", &finite_diff(&w, |w| project(&rms(&x, w), &g)), &dw, FD_TOL);
        let (x32, w32, g32) = (to32(&x), to32(&w), to32(&g));
        let (dx32, dw32) = rms_grad(&x32, &w32, &g32);
        assert_close("f32 y", &to64(&rms(&x32, &w32)), &y_ref, F32_TOL);
        // dx = r (g w) - x r^3/dim sum(g w x) cancels (to ~eps when dim == 1), so f32 rounding is judged
        // on the scale of the cancelling term r |g w|.
        let term = (0..rows).map(|row| {
            let xr = &x[row * dim..][..dim];
            let r = 1.0 / (project(xr, xr) / dim as f64 + EPS).sqrt();
            (0..dim).map(|j| r * (g[row * dim + j] * w[j]).abs()).fold(0.0, f64::max)
        });
        let term_scale = term.fold(0.0, f64::max);
        assert_close_at_scale("f32 dx", &to64(&dx32), &dx_ref, F32_TOL, term_scale);
        assert_close("f32 dw", &to64(&dw32), &dw_ref, F32_TOL);
    }

    #[test]
    fn rope_matches_reference_and_inverts(
        batch in 1usize..3, seq in 1usize..5, heads in 1usize..3, half in 1usize..5, seed: u64,
    ) {
        let dims = RopeDims { batch, seq, heads, head_dim: 2 * half };
        let mut rng = Rng(seed);
        let x = rng.values(batch * seq * heads * 2 * half, 1.0);
        let g = rng.values(x.len(), 1.0);
        let pos: Vec<u32> = rng.ids(seq, 4096);
        let y = rope(&x, dims, &pos, false);
        assert_close("y", &y, &rope_ref(&x, dims, &pos, false), REF_TOL);
        let dx = rope(&g, dims, &pos, true);
        assert_close("dx", &dx, &rope_ref(&g, dims, &pos, true), REF_TOL);
        assert_close("dx fd", &finite_diff(&x, |x| project(&rope(x, dims, &pos, false), &g)), &dx, FD_TOL);
        assert_close("backward(forward(x))", &rope(&y, dims, &pos, true), &x, REF_TOL);
        assert_close("f32 y", &to64(&rope(&to32(&x), dims, &pos, false)), &y, F32_TOL);
        assert_close("f32 dx", &to64(&rope(&to32(&g), dims, &pos, true)), &dx, F32_TOL);
    }

    #[test]
    fn attention_matches_reference_and_finite_differences(
        batch in 1usize..3, heads in 1usize..3, kv_len in 1usize..7, cut in 0usize..7, head_dim in 1usize..6,
        seed: u64,
    ) {
        let dims = AttentionDims { batch, heads, q_len: kv_len - cut % kv_len, kv_len, head_dim };
        let [q, k, v, g] = attention_problem(seed, dims);
        let [o_ref, dq_ref, dk_ref, dv_ref] = attention_ref(&q, &k, &v, &g, dims);
        let o = attention(&q, &k, &v, dims);
        let [dq, dk, dv] = attention_grad(&q, &k, &v, &g, dims);
        assert_close("out", &o, &o_ref, REF_TOL);
        assert_close("dq", &dq, &dq_ref, REF_TOL);
        assert_close("dk", &dk, &dk_ref, REF_TOL);
        assert_close("dv", &dv, &dv_ref, REF_TOL);
        assert_close("dq fd", &finite_diff(&q, |q| project(&attention(q, &k, &v, dims), &g)), &dq, FD_TOL);
        assert_close("dk fd", &finite_diff(&k, |k| project(&attention(&q, k, &v, dims), &g)), &dk, FD_TOL);
        assert_close("dv fd", &finite_diff(&v, |v| project(&attention(&q, &k, v, dims), &g)), &dv, FD_TOL);
        let [q32, k32, v32, g32] = [&q, &k, &v, &g].map(|x| to32(x));
        assert_close("f32 out", &to64(&attention(&q32, &k32, &v32, dims)), &o, F32_TOL);
        let grads32 = attention_grad(&q32, &k32, &v32, &g32, dims);
        for ((name, got), want) in ["dq", "dk", "dv"].iter().zip(&grads32).zip([&dq, &dk, &dv]) {
            assert_close(&format!("f32 {name}"), &to64(got), want, F32_TOL);
        }
    }

    #[test]
    fn attention_against_a_cache_is_the_tail_of_full_attention(
        batch in 1usize..3, heads in 1usize..3, kv_len in 1usize..9, cut in 0usize..9, head_dim in 1usize..6,
        seed: u64,
    ) {
        let full = AttentionDims { batch, heads, q_len: kv_len, kv_len, head_dim };
        let q_len = kv_len - cut % kv_len;
        let part = AttentionDims { q_len, ..full };
        let [q, k, v, mut g] = attention_problem(seed, full);
        let row = heads * head_dim;
        let tail = |x: &[f64]| -> Vec<f64> {
            x.chunks(kv_len * row).flat_map(|b| b[(kv_len - q_len) * row..].to_vec()).collect()
        };
        // Zero upstream gradient on the leading rows makes full-attention gradients equal the cached ones.
        for b in g.chunks_mut(kv_len * row) {
            b[..(kv_len - q_len) * row].fill(0.0);
        }
        prop_assert_eq!(tail(&attention(&q, &k, &v, full)), attention(&tail(&q), &k, &v, part));
        let [dq_full, dk_full, dv_full] = attention_grad(&q, &k, &v, &g, full);
        let [dq, dk, dv] = attention_grad(&tail(&q), &k, &v, &tail(&g), part);
        prop_assert_eq!(tail(&dq_full), dq);
        prop_assert_eq!(dk_full, dk);
        prop_assert_eq!(dv_full, dv);
    }

    #[test]
    fn cross_entropy_matches_reference_and_finite_differences(
        rows in 1usize..6, vocab in 1usize..9, ignore: bool, seed: u64,
    ) {
        let (x, t, ignore) = ce_problem(seed, rows, vocab, ignore);
        let (loss_ref, grad_ref) = ce_ref(&x, vocab, &t, ignore, 0.8);
        let loss = cross_entropy_forward(&x, vocab, &t, ignore);
        let grad = ce_grad(&x, vocab, &t, ignore, 0.8);
        assert_close("loss", &[loss], &[loss_ref], REF_TOL);
        assert_close("grad", &grad, &grad_ref, REF_TOL);
        let fd = finite_diff(&x, |x| 0.8 * cross_entropy_forward(x, vocab, &t, ignore));
        assert_close("grad fd", &fd, &grad, FD_TOL);
        for (row, _) in t.iter().enumerate().filter(|(_, &id)| Some(id) == ignore) {
            let zero = grad[row * vocab..][..vocab].iter().all(|&v| v == 0.0);
            prop_assert!(zero, "ignored row {} has gradient", row);
        }
        let (x32, t32) = (to32(&x), t.clone());
        let loss32 = cross_entropy_forward(&x32, vocab, &t32, ignore) as f64;
        // A confident row's loss is a small difference of logits: judge it on the logits' scale.
        let logit_scale = x.iter().fold(0.0, |m: f64, v| m.max(v.abs()));
        assert_close_at_scale("f32 loss", &[loss32], &[loss], F32_TOL, logit_scale);
        assert_close("f32 grad", &to64(&ce_grad(&x32, vocab, &t32, ignore, 0.8)), &grad, F32_TOL);
    }

    #[test]
    fn embedding_matches_reference_and_finite_differences(
        n in 1usize..12, rows in 1usize..6, dim in 1usize..7, seed: u64,
    ) {
        let mut rng = Rng(seed);
        let (w, g, ids) = (rng.values(rows * dim, 1.0), rng.values(n * dim, 1.0), rng.ids(n, rows as u32));
        let want: Vec<f64> = ids.iter().flat_map(|&id| w[id as usize * dim..][..dim].to_vec()).collect();
        prop_assert_eq!(embed(&w, dim, &ids), want);
        let dw = embed_grad(&g, dim, &ids, None, rows);
        assert_close("dw", &dw, &embed_grad_ref(&g, dim, &ids, None, rows), REF_TOL);
        assert_close("dw fd", &finite_diff(&w, |w| project(&embed(w, dim, &ids), &g)), &dw, FD_TOL);
        let pad = Some(ids[0]);
        let dw_pad = embed_grad(&g, dim, &ids, pad, rows);
        assert_close("dw pad", &dw_pad, &embed_grad_ref(&g, dim, &ids, pad, rows), REF_TOL);
        let pad_row = &dw_pad[ids[0] as usize * dim..][..dim];
        prop_assert!(pad_row.iter().all(|&v| v == 0.0), "pad row has gradient");
        assert_close("f32 dw", &to64(&embed_grad(&to32(&g), dim, &ids, pad, rows)), &dw_pad, F32_TOL);
    }
}

#[test]
fn cross_entropy_counts_only_targets_not_ignored() {
    let (x, vocab, ignore) = (Rng(5).values(4 * 3, 2.0), 3, Some(9));
    let t = [2, 9, 0, 9];
    let kept: Vec<f64> = [&x[0..3], &x[6..9]].concat();
    let loss = cross_entropy_forward(&x, vocab, &t, ignore);
    assert_eq!(loss, cross_entropy_forward(&kept, vocab, &[2, 0], None));
    assert_eq!(cross_entropy_forward(&x, vocab, &[9; 4], ignore), 0.0);
    assert!(ce_grad(&x, vocab, &[9; 4], ignore, 1.0).iter().all(|&v| v == 0.0));
    assert_eq!(cross_entropy_forward::<f64>(&[], vocab, &[], ignore), 0.0);
}

/// Degenerate shapes allowed by the documented preconditions neither panic nor leave stale outputs.
#[test]
fn empty_shapes_are_handled() {
    assert!(silu::<f32>(&[]).is_empty() && silu_grad::<f32>(&[], &[]).is_empty());
    let (dx, dw) = rms_grad::<f64>(&[], &[1.0, 2.0], &[]);
    assert!(dx.is_empty() && dw == [0.0, 0.0]);
    assert!(rms_grad::<f64>(&[], &[], &[]).1.is_empty());
    let no_heads = RopeDims { batch: 2, seq: 3, heads: 0, head_dim: 4 };
    assert!(rope::<f32>(&[], no_heads, &[0, 1, 2], false).is_empty());
    // No queries against a cache of 3 keys: dK and dV are overwritten with zeros.
    let dims = AttentionDims { batch: 1, heads: 2, q_len: 0, kv_len: 3, head_dim: 2 };
    let kv = Rng(3).values(12, 1.0);
    assert!(attention::<f64>(&[], &kv, &kv, dims).is_empty());
    let [dq, dk, dv] = attention_grad::<f64>(&[], &kv, &kv, &[], dims);
    assert!(dq.is_empty() && dk.iter().chain(&dv).all(|&v| v == 0.0));
    let no_batch = AttentionDims { batch: 0, ..dims };
    assert!(attention_grad::<f64>(&[], &[], &[], &[], no_batch).iter().all(Vec::is_empty));
    assert!(ce_grad::<f32>(&[], 5, &[], None, 1.0).is_empty());
    assert!(embed::<f32>(&[1.0; 6], 3, &[]).is_empty());
    assert_eq!(embed_grad::<f32>(&[], 3, &[], None, 2), vec![0.0; 6]);
}

/// Every kernel on inputs above the parallel threshold (multi-block rmsnorm reduction, column-blocked
/// embedding backward, parallel heads and scatter): f64 results match the references, and f32 and f64
/// results are bit-identical between rayon pools of 1 and 3 threads.
#[test]
fn large_inputs_are_correct_and_identical_across_thread_counts() {
    let mut rng = Rng(11);
    let x = rng.values(100_003, 6.0);
    let (rows, dim) = (700, 130);
    let (xn, gn, wn) = (rng.values(rows * dim, 2.0), rng.values(rows * dim, 1.0), rng.values(dim, 1.5));
    let rd = RopeDims { batch: 3, seq: 41, heads: 6, head_dim: 48 };
    let (xr, pos) = (rng.values(3 * 41 * 6 * 48, 1.0), rng.ids(41, 4096));
    let ad = AttentionDims { batch: 3, heads: 4, q_len: 100, kv_len: 128, head_dim: 32 };
    let [q, k, v, ga] = attention_problem(12, ad);
    let (xl, t, ignore) = ce_problem(13, 97, 1000, true);
    let (ew, eg, ids) = (rng.values(50 * 200, 1.0), rng.values(300 * 200, 1.0), rng.ids(300, 50));

    let (_, dx_ref, dw_ref) = rms_ref(&xn, &wn, &gn);
    assert_close("rms dx", &rms_grad(&xn, &wn, &gn).0, &dx_ref, REF_TOL);
    assert_close("rms dw", &rms_grad(&xn, &wn, &gn).1, &dw_ref, REF_TOL);
    assert_close("rope", &rope(&xr, rd, &pos, false), &rope_ref(&xr, rd, &pos, false), REF_TOL);
    let [o_ref, dq_ref, dk_ref, dv_ref] = attention_ref(&q, &k, &v, &ga, ad);
    assert_close("attention", &attention(&q, &k, &v, ad), &o_ref, REF_TOL);
    for (got, want) in attention_grad(&q, &k, &v, &ga, ad).iter().zip([&dq_ref, &dk_ref, &dv_ref]) {
        assert_close("attention grad", got, want, REF_TOL);
    }
    let (loss_ref, dl_ref) = ce_ref(&xl, 1000, &t, ignore, 1.0);
    assert_close("ce", &[cross_entropy_forward(&xl, 1000, &t, ignore)], &[loss_ref], REF_TOL);
    assert_close("ce grad", &ce_grad(&xl, 1000, &t, ignore, 1.0), &dl_ref, REF_TOL);
    let pad = Some(ids[0]);
    let dw_want = embed_grad_ref(&eg, 200, &ids, pad, 50);
    assert_close("embedding grad", &embed_grad(&eg, 200, &ids, pad, 50), &dw_want, REF_TOL);

    fn all_outputs<T: Float>(
        inputs: &[&[f64]],
        rd: RopeDims,
        pos: &[u32],
        ad: AttentionDims,
        t: &[u32],
        ids: &[u32],
    ) -> Vec<u64> {
        let c = |i: usize| -> Vec<T> { inputs[i].iter().map(|&v| T::from_f64(v)).collect() };
        let [x, xn, gn, wn, xr, q, k, v, ga, xl, ew, eg] = std::array::from_fn(c);
        let ignore = Some(1000);
        let mut outs = vec![silu(&x), silu_grad(&x, &x), rms(&xn, &wn), rope(&xr, rd, pos, false)];
        let (dx, dw) = rms_grad(&xn, &wn, &gn);
        outs.extend([dx, dw, rope(&xr, rd, pos, true), attention(&q, &k, &v, ad)]);
        outs.extend(attention_grad(&q, &k, &v, &ga, ad));
        outs.push(vec![cross_entropy_forward(&xl, 1000, t, ignore)]);
        outs.push(ce_grad(&xl, 1000, t, ignore, T::ONE));
        outs.push(embed(&ew, 200, ids));
        outs.push(embed_grad(&eg, 200, ids, Some(ids[0]), 50));
        outs.iter().flatten().map(|v| v.to_f64().to_bits()).collect()
    }
    let inputs: [&[f64]; 12] = [&x, &xn, &gn, &wn, &xr, &q, &k, &v, &ga, &xl, &ew, &eg];
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            (
                all_outputs::<f32>(&inputs, rd, &pos, ad, &t, &ids),
                all_outputs::<f64>(&inputs, rd, &pos, ad, &t, &ids),
            )
        })
    };
    let (one, three) = (run(1), run(3));
    assert!(one.0 == three.0, "f32 results differ between 1 and 3 threads");
    assert!(one.1 == three.1, "f64 results differ between 1 and 3 threads");
}

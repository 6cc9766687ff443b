//! Fused CPU kernels (silu, gated product, rmsnorm, rope, attention, cross-entropy, embedding, AdamW)
//! checked against naive f64 compositions written here, against central finite differences of their own
//! forward, in f32 against f64, for bit-identical results across rayon pools of different sizes, and for
//! bit-identical results between every SIMD level the CPU supports and the portable path.
//!
//! Tolerances: f64 kernels vs f64 references 1e-12 (only summation order differs); finite differences 1e-6
//! (step 1e-5: truncation ~h^2 = 1e-10, cancellation ~1e-16/h = 1e-11); f32 vs f64 1e-5 (a few f32 ulps
//! through short sums). Each bound is relative to `|want| + max(1, max|want|)`: inputs are O(1), so
//! rounding is bounded on that scale, and an entry that cancels to near zero is judged on the scale of
//! the terms that cancelled, not on its own tiny magnitude.
use crate::common;
use cola_kernels::cpu::adamw::{adamw_step, AdamWStep};
use cola_kernels::cpu::attention::{attention_backward, attention_forward, AttentionDims, AttentionGrads};
use cola_kernels::cpu::attention::{
    attention_forward_cached, copy_cache, write_cache, CacheLayout, CachedKeysValues,
};
use cola_kernels::cpu::elementwise::{silu_backward, silu_forward};
use cola_kernels::cpu::embedding::{embedding_backward, embedding_forward};
use cola_kernels::cpu::gated::{gated_backward, gated_forward, GateActivation};
use cola_kernels::cpu::loss::{cross_entropy_backward, cross_entropy_forward};
use cola_kernels::cpu::norm::{rms_norm_backward, rms_norm_forward};
use cola_kernels::cpu::rope::{rope_backward, rope_forward, RopeDims};
use cola_kernels::cpu::simd::{self, Level};
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
fn gated<T: Float>(g: &[T], u: &[T], act: GateActivation) -> Vec<T> {
    let mut y = vec![T::from_f64(7.0); g.len()];
    gated_forward(g, u, act, &mut y);
    y
}
fn gated_grad<T: Float>(g: &[T], u: &[T], dy: &[T], act: GateActivation) -> [Vec<T>; 2] {
    let [mut dg, mut du] = [(); 2].map(|_| vec![T::from_f64(7.0); g.len()]);
    gated_backward(g, u, dy, act, &mut dg, &mut du);
    [dg, du]
}
/// Runs `steps` AdamW steps (step numbers 1, 2, ...) with gradient `grads[t]` at step t; returns
/// `[param, m, v]`.
fn adamw<T: Float>(p: &[T], grads: &[Vec<T>], lr: f64, wd: f64) -> [Vec<T>; 3] {
    let (mut p, mut m, mut v) = (p.to_vec(), vec![T::ZERO; p.len()], vec![T::ZERO; p.len()]);
    for (t, g) in grads.iter().enumerate() {
        let hyper =
            AdamWStep { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd, step: t as u64 + 1 };
        adamw_step(&mut p, g, &mut m, &mut v, hyper);
    }
    [p, m, v]
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
/// [`attention`] of `q` (`[batch, q_len, heads, head_dim]`) against k and v (`[batch, kv_len, ..]`)
/// through a head-major cache per sequence: its positions written in pieces of the sizes in `pieces`
/// (cycled: a prefill, then decode steps), the cache starting with room for the first piece and moved
/// into one of twice the capacity (or what the next piece needs) whenever it is full.
fn cached_attention<T: Float>(q: &[T], k: &[T], v: &[T], dims: AttentionDims, pieces: &[usize]) -> Vec<T> {
    let AttentionDims { batch, heads, q_len, kv_len, head_dim } = dims;
    let (row, mut out) = (heads * head_dim, vec![T::from_f64(7.0); q.len()]);
    for b in 0..batch {
        let (k_b, v_b) = (&k[b * kv_len * row..][..kv_len * row], &v[b * kv_len * row..][..kv_len * row]);
        let mut layout = CacheLayout::new(heads, head_dim, pieces[0].min(kv_len));
        let (mut keys_t, mut values) = (vec![T::ZERO; layout.keys_len()], vec![T::ZERO; layout.values_len()]);
        let mut len = 0;
        for &piece in pieces.iter().cycle() {
            let new = piece.min(kv_len - len);
            if len + new > layout.capacity {
                let grown = CacheLayout::new(heads, head_dim, (len + new).max(2 * layout.capacity));
                let (mut k_t2, mut v2) = (vec![T::ZERO; grown.keys_len()], vec![T::ZERO; grown.values_len()]);
                copy_cache(
                    CachedKeysValues { keys_t: &keys_t, values: &values, layout, len },
                    grown,
                    &mut k_t2,
                    &mut v2,
                );
                (layout, keys_t, values) = (grown, k_t2, v2);
            }
            let (k_new, v_new) = (&k_b[len * row..][..new * row], &v_b[len * row..][..new * row]);
            write_cache(layout, len, k_new, v_new, &mut keys_t, &mut values);
            len += new;
            if len == kv_len {
                break;
            }
        }
        let cache = CachedKeysValues { keys_t: &keys_t, values: &values, layout, len };
        let one = AttentionDims { batch: 1, ..dims };
        let (q_b, out_b) = (&q[b * q_len * row..][..q_len * row], &mut out[b * q_len * row..][..q_len * row]);
        attention_forward_cached(q_b, cache, one, T::from_f64(0.7), out_b);
    }
    out
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
fn silu_ref(x: f64) -> f64 {
    x * sigmoid(x)
}
/// `(act(g), act'(g))`.
fn gate_ref(g: f64, act: GateActivation) -> (f64, f64) {
    match act {
        GateActivation::Silu => (silu_ref(g), sigmoid(g) + g * sigmoid(g) * sigmoid(-g)),
        GateActivation::Identity => (g, 1.0),
    }
}
/// Textbook AdamW (Loshchilov & Hutter, decoupled weight decay) with explicit bias-corrected moments.
fn adamw_ref(p: &[f64], grads: &[Vec<f64>], lr: f64, wd: f64) -> [Vec<f64>; 3] {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let (mut p, mut m, mut v) = (p.to_vec(), vec![0.0; p.len()], vec![0.0; p.len()]);
    for (t, g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        for i in 0..p.len() {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let (m_hat, v_hat) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
            p[i] -= lr * (m_hat / (v_hat.sqrt() + eps) + wd * p[i]);
        }
    }
    [p, m, v]
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

    /// Attention against a head-major cache (`attention_forward_cached` reading the buffers of
    /// `CacheLayout` in place; filled by `write_cache` in pieces like a prefill and decode steps, moved by
    /// `copy_cache` when full) is the full kernel's last `q_len` rows bit for bit, in f64 and in f32:
    /// what cached decoding must hold for its logits to be the full forward's exactly. Lengths and head
    /// dims cross the widest tile (32), so that several key tiles, a capacity above the filled length
    /// (grown from a small start) and padded value rows all occur.
    #[test]
    fn attention_against_a_head_major_cache_is_the_tail_of_full_attention(
        batch in 1usize..3, heads in 1usize..4, kv_len in 1usize..80, cut in 0usize..80,
        head_dim in 1usize..40, pieces in proptest::collection::vec(1usize..40, 1..5), seed: u64,
    ) {
        let full = AttentionDims { batch, heads, q_len: kv_len, kv_len, head_dim };
        let q_len = kv_len - cut % kv_len;
        let part = AttentionDims { q_len, ..full };
        let [q, k, v, _] = attention_problem(seed, full);
        let row = heads * head_dim;
        let tail = |x: &[f64]| -> Vec<f64> {
            x.chunks(kv_len * row).flat_map(|b| b[(kv_len - q_len) * row..].to_vec()).collect()
        };
        prop_assert_eq!(cached_attention(&tail(&q), &k, &v, part, &pieces), tail(&attention(&q, &k, &v, full)));
        let [q32, k32, v32] = [&q, &k, &v].map(|x| to32(x));
        let tail32 = to32(&tail(&q));
        let want32: Vec<f32> = attention(&q32, &k32, &v32, full)
            .chunks(kv_len * row)
            .flat_map(|b| b[(kv_len - q_len) * row..].to_vec())
            .collect();
        prop_assert_eq!(cached_attention(&tail32, &k32, &v32, part, &pieces), want32);
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

    #[test]
    fn gated_product_matches_reference_and_finite_differences(n in 1usize..40, silu: bool, seed: u64) {
        let act = if silu { GateActivation::Silu } else { GateActivation::Identity };
        let mut rng = Rng(seed);
        let (g, u, dy) = (rng.values(n, 6.0), rng.values(n, 2.0), rng.values(n, 1.0));
        let want: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| gate_ref(g, act).0 * u).collect();
        assert_close("y", &gated(&g, &u, act), &want, REF_TOL);
        let dg_ref: Vec<f64> = (0..n).map(|i| dy[i] * u[i] * gate_ref(g[i], act).1).collect();
        let du_ref: Vec<f64> = (0..n).map(|i| dy[i] * gate_ref(g[i], act).0).collect();
        let [dg, du] = gated_grad(&g, &u, &dy, act);
        assert_close("dg", &dg, &dg_ref, REF_TOL);
        assert_close("du", &du, &du_ref, REF_TOL);
        assert_close("dg fd", &finite_diff(&g, |g| project(&gated(g, &u, act), &dy)), &dg, FD_TOL);
        assert_close("du fd", &finite_diff(&u, |u| project(&gated(&g, u, act), &dy)), &du, FD_TOL);
        let [g32, u32_, dy32] = [&g, &u, &dy].map(|x| to32(x));
        assert_close("f32 y", &to64(&gated(&g32, &u32_, act)), &want, F32_TOL);
        let [dg32, du32] = gated_grad(&g32, &u32_, &dy32, act);
        assert_close("f32 dg", &to64(&dg32), &dg, F32_TOL);
        assert_close("f32 du", &to64(&du32), &du, F32_TOL);
    }

    /// Several steps against the textbook equations, with and without weight decay; f32 against f64.
    #[test]
    fn adamw_matches_reference(n in 1usize..40, steps in 1usize..6, decay: bool, seed: u64) {
        let (lr, wd) = (0.01, if decay { 0.1 } else { 0.0 });
        let mut rng = Rng(seed);
        let p = rng.values(n, 1.0);
        let grads: Vec<Vec<f64>> = (0..steps).map(|_| rng.values(n, 1.0)).collect();
        let got = adamw(&p, &grads, lr, wd);
        for ((name, got), want) in ["param", "m", "v"].iter().zip(&got).zip(adamw_ref(&p, &grads, lr, wd)) {
            assert_close(name, got, &want, REF_TOL);
        }
        let grads32: Vec<Vec<f32>> = grads.iter().map(|g| to32(g)).collect();
        let got32 = adamw(&to32(&p), &grads32, lr, wd);
        for ((name, got32), want) in ["param", "m", "v"].iter().zip(got32).zip(&got) {
            assert_close(&format!("f32 {name}"), &to64(&got32), want, F32_TOL);
        }
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

/// Logits of -inf (masked vocabulary entries, here a whole 2048-entry chunk and a few scattered ones)
/// have probability 0 and gradient 0; the loss and the other gradients are the reference's.
#[test]
fn cross_entropy_handles_masked_logits() {
    let (rows, vocab) = (3, 5000);
    let (mut x, t, _) = ce_problem(21, rows, vocab, false);
    x[..2048].fill(f64::NEG_INFINITY);
    for j in (3000..5000).step_by(7) {
        x[vocab + j] = f64::NEG_INFINITY;
    }
    let t: Vec<u32> = t.iter().map(|&id| id.max(2048)).collect();
    let (loss_ref, grad_ref) = ce_ref(&x, vocab, &t, None, 1.0);
    assert_close("loss", &[cross_entropy_forward(&x, vocab, &t, None)], &[loss_ref], REF_TOL);
    assert_close("grad", &ce_grad(&x, vocab, &t, None, 1.0), &grad_ref, REF_TOL);
    let x32 = to32(&x);
    assert_close("f32 loss", &[cross_entropy_forward(&x32, vocab, &t, None) as f64], &[loss_ref], F32_TOL);
    assert_close("f32 grad", &to64(&ce_grad(&x32, vocab, &t, None, 1.0)), &grad_ref, F32_TOL);
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
    assert!(gated::<f32>(&[], &[], GateActivation::Silu).is_empty());
    assert!(gated_grad::<f64>(&[], &[], &[], GateActivation::Identity).iter().all(Vec::is_empty));
    assert!(adamw::<f32>(&[], &[vec![]], 0.1, 0.1).iter().all(Vec::is_empty));
}

/// `simd::exp_f32` against the correctly rounded `e^x` (f64 `exp` rounded to f32): within 2 ulp on a sweep
/// of every 1009th f32 in `[-86.9, 88.72]` (where results are normal), an absolute error below `2.4e-38`
/// further down (the flush-to-zero range), and the documented special values.
#[test]
fn exp_f32_is_within_two_ulp() {
    let exact = |x: f32| (x as f64).exp() as f32;
    let ulps = |x: f32| (simd::exp_f32(x).to_bits() as i64 - exact(x).to_bits() as i64).abs();
    let (lo, hi) = (-86.9f32, 88.72f32);
    let positive = (0..=hi.to_bits()).step_by(1009).map(f32::from_bits);
    let negative = (0..=lo.to_bits() & 0x7fff_ffff).step_by(1009).map(|b| -f32::from_bits(b));
    let (worst, at) = positive.chain(negative).map(|x| (ulps(x), x)).max_by_key(|&(u, _)| u).unwrap();
    assert!(worst <= 2, "exp_f32 is {worst} ulp off at x = {x}", x = at);
    for x in (0..1000).map(|i| -87.6 + 0.7 * i as f32 / 1000.0) {
        let err = (simd::exp_f32(x) as f64 - (x as f64).exp()).abs();
        assert!(err < 2.4e-38, "exp_f32({x}) is {err:e} off");
    }
    assert_eq!(simd::exp_f32(0.0), 1.0);
    assert_eq!(simd::exp_f32(f32::INFINITY), f32::INFINITY);
    assert_eq!(simd::exp_f32(88.73), f32::INFINITY);
    assert_eq!(simd::exp_f32(f32::NEG_INFINITY), 0.0);
    assert_eq!(simd::exp_f32(-1000.0), 0.0);
    assert!(simd::exp_f32(f32::NAN).is_nan());
}

/// Inputs above the parallel thresholds (multi-block rmsnorm reduction, column-blocked embedding
/// backward, parallel heads and scatter), with lengths that leave vector tails everywhere, plus a small
/// attention problem whose head dim and lengths are not multiples of the tile.
struct Problem {
    x: Vec<f64>,
    up: Vec<f64>,
    dy: Vec<f64>,
    xn: Vec<f64>,
    gn: Vec<f64>,
    wn: Vec<f64>,
    xr: Vec<f64>,
    pos: Vec<u32>,
    rd: RopeDims,
    attention: [(AttentionDims, [Vec<f64>; 4]); 2],
    ce: (Vec<f64>, Vec<u32>, Option<u32>),
    embedding: (Vec<f64>, Vec<f64>, Vec<u32>),
    adamw: (Vec<f64>, Vec<Vec<f64>>),
}

const CE_VOCAB: usize = 1000;
const EMBED_DIM: usize = 200;

impl Problem {
    fn new() -> Self {
        let mut rng = Rng(11);
        let (x, up, dy) = (rng.values(100_003, 6.0), rng.values(100_003, 2.0), rng.values(100_003, 1.0));
        let (rows, dim) = (700, 130);
        let (xn, gn, wn) = (rng.values(rows * dim, 2.0), rng.values(rows * dim, 1.0), rng.values(dim, 1.5));
        let rd = RopeDims { batch: 3, seq: 41, heads: 6, head_dim: 48 };
        let (xr, pos) = (rng.values(3 * 41 * 6 * 48, 1.0), rng.ids(41, 4096));
        let ad = AttentionDims { batch: 3, heads: 4, q_len: 100, kv_len: 128, head_dim: 32 };
        let odd = AttentionDims { batch: 2, heads: 3, q_len: 30, kv_len: 37, head_dim: 5 };
        let attention = [(ad, attention_problem(12, ad)), (odd, attention_problem(14, odd))];
        let ce = ce_problem(13, 97, CE_VOCAB, true);
        let embedding = (rng.values(50 * EMBED_DIM, 1.0), rng.values(300 * EMBED_DIM, 1.0), rng.ids(300, 50));
        let adamw = (rng.values(70_001, 1.0), (0..3).map(|_| rng.values(70_001, 1.0)).collect());
        Self { x, up, dy, xn, gn, wn, xr, pos, rd, attention, ce, embedding, adamw }
    }

    /// Every kernel's outputs in `T`, as f64 bit patterns.
    fn outputs<T: Float>(&self) -> Vec<u64> {
        let c = |v: &[f64]| -> Vec<T> { v.iter().map(|&v| T::from_f64(v)).collect() };
        let (x, up, dy) = (c(&self.x), c(&self.up), c(&self.dy));
        let (xn, gn, wn, xr) = (c(&self.xn), c(&self.gn), c(&self.wn), c(&self.xr));
        let (rd, pos) = (self.rd, &self.pos);
        let mut outs = vec![silu(&x), silu_grad(&x, &dy), rms(&xn, &wn), rope(&xr, rd, pos, false)];
        let (dx, dw) = rms_grad(&xn, &wn, &gn);
        outs.extend([dx, dw, rope(&xr, rd, pos, true)]);
        for act in [GateActivation::Silu, GateActivation::Identity] {
            outs.push(gated(&x, &up, act));
            outs.extend(gated_grad(&x, &up, &dy, act));
        }
        for (ad, inputs) in &self.attention {
            let [q, k, v, g] = inputs.each_ref().map(|x| c(x));
            outs.push(attention(&q, &k, &v, *ad));
            outs.extend(attention_grad(&q, &k, &v, &g, *ad));
            let last = AttentionDims { q_len: 1, ..*ad };
            let q_last: Vec<T> = q
                .chunks(ad.q_len * ad.heads * ad.head_dim)
                .flat_map(|b| b[(ad.q_len - 1) * ad.heads * ad.head_dim..].to_vec())
                .collect();
            outs.push(cached_attention(&q_last, &k, &v, last, &[7, 1]));
        }
        let (xl, t, ignore) = (c(&self.ce.0), &self.ce.1, self.ce.2);
        outs.push(vec![cross_entropy_forward(&xl, CE_VOCAB, t, ignore)]);
        outs.push(ce_grad(&xl, CE_VOCAB, t, ignore, T::ONE));
        let (ew, eg, ids) = (c(&self.embedding.0), c(&self.embedding.1), &self.embedding.2);
        outs.push(embed(&ew, EMBED_DIM, ids));
        outs.push(embed_grad(&eg, EMBED_DIM, ids, Some(ids[0]), 50));
        let grads: Vec<Vec<T>> = self.adamw.1.iter().map(|g| c(g)).collect();
        outs.extend(adamw(&c(&self.adamw.0), &grads, 0.01, 0.1));
        outs.iter().flatten().map(|v| v.to_f64().to_bits()).collect()
    }
}

/// Every kernel on [`Problem`]: f64 results match the references, and f32 and f64 results are
/// bit-identical between rayon pools of 1 and 3 threads.
#[test]
fn large_inputs_are_correct_and_identical_across_thread_counts() {
    let pb = Problem::new();
    let (xn, gn, wn, xr, rd, pos) = (&pb.xn, &pb.gn, &pb.wn, &pb.xr, pb.rd, &pb.pos);
    let (_, dx_ref, dw_ref) = rms_ref(xn, wn, gn);
    assert_close("rms dx", &rms_grad(xn, wn, gn).0, &dx_ref, REF_TOL);
    assert_close("rms dw", &rms_grad(xn, wn, gn).1, &dw_ref, REF_TOL);
    assert_close("rope", &rope(xr, rd, pos, false), &rope_ref(xr, rd, pos, false), REF_TOL);
    for (ad, [q, k, v, ga]) in &pb.attention {
        let [o_ref, dq_ref, dk_ref, dv_ref] = attention_ref(q, k, v, ga, *ad);
        assert_close("attention", &attention(q, k, v, *ad), &o_ref, REF_TOL);
        for (got, want) in attention_grad(q, k, v, ga, *ad).iter().zip([&dq_ref, &dk_ref, &dv_ref]) {
            assert_close("attention grad", got, want, REF_TOL);
        }
    }
    let (xl, t, ignore) = &pb.ce;
    let (loss_ref, dl_ref) = ce_ref(xl, CE_VOCAB, t, *ignore, 1.0);
    assert_close("ce", &[cross_entropy_forward(xl, CE_VOCAB, t, *ignore)], &[loss_ref], REF_TOL);
    assert_close("ce grad", &ce_grad(xl, CE_VOCAB, t, *ignore, 1.0), &dl_ref, REF_TOL);
    let (_, eg, ids) = &pb.embedding;
    let pad = Some(ids[0]);
    let dw_want = embed_grad_ref(eg, EMBED_DIM, ids, pad, 50);
    assert_close("embedding grad", &embed_grad(eg, EMBED_DIM, ids, pad, 50), &dw_want, REF_TOL);
    let (p, grads) = &pb.adamw;
    for (got, want) in adamw(p, grads, 0.01, 0.1).iter().zip(adamw_ref(p, grads, 0.01, 0.1)) {
        assert_close("adamw", got, &want, REF_TOL);
    }

    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| (pb.outputs::<f32>(), pb.outputs::<f64>()))
    };
    let (one, three) = (run(1), run(3));
    assert!(one.0 == three.0, "f32 results differ between 1 and 3 threads");
    assert!(one.1 == three.1, "f64 results differ between 1 and 3 threads");
}

/// Lifts the SIMD level cap when dropped, so a failing assertion does not leave it set.
struct LevelCap;

impl Drop for LevelCap {
    fn drop(&mut self) {
        simd::set_max_level(None);
    }
}

/// Every SIMD level this CPU supports gives the same bits as the portable path on every kernel, in f32
/// and f64 (the levels run the same operations in the same order; see `cpu::simd`). Levels the CPU lacks
/// are skipped with a notice. Other tests may run meanwhile on a capped level, which is harmless for the
/// same reason.
#[test]
fn simd_levels_match_the_portable_path_bit_for_bit() {
    let pb = Problem::new();
    let _level = common::level_lock();
    let _cap = LevelCap;
    simd::set_max_level(Some(Level::Portable));
    assert_eq!(Level::active(), Level::Portable);
    let portable = (pb.outputs::<f32>(), pb.outputs::<f64>());
    for level in [Level::Avx2, Level::Avx512] {
        if !level.is_supported() {
            println!("skipped: this CPU lacks {level:?}; that path was not compared with the portable one");
            continue;
        }
        simd::set_max_level(Some(level));
        assert_eq!(Level::active(), level);
        let got = (pb.outputs::<f32>(), pb.outputs::<f64>());
        assert!(got.0 == portable.0, "f32 results differ between {level:?} and the portable path");
        assert!(got.1 == portable.1, "f64 results differ between {level:?} and the portable path");
    }
}

//! Fused AdamW update (Loshchilov & Hutter, decoupled weight decay), in place on param, m and v.
//!
//! With step number t (from 1), learning rate `lr` and weight decay `wd`, the equations of
//! `torch.optim.AdamW`:
//!     `p <- p (1 - lr wd)`
//!     `m <- m + (1 - beta1) (g - m)`,   `v <- v beta2 + (1 - beta2) g^2`
//!     `p <- p - (lr / c1) m / (sqrt(v) / sqrt(c2) + eps)`,   `c1 = 1 - beta1^t`, `c2 = 1 - beta2^t`.
//! One pass reads p, g, m, v and writes p, m, v (28 bytes per f32 parameter), with the per-step
//! constants computed once in f64.
//!
//! Two bf16 forms reuse the f32 update on chunks of widened values ([`super::bf16::CHUNK`] at a time):
//! [`adamw_step_bf16`] (pure bf16: param, m, v and the gradient stored in bf16, each result rounded once
//! to bf16, round-to-nearest-even) and [`adamw_step_mixed`] (bf16 gradient, f32 master, m and v, and the
//! bf16 param rewritten as the master's rounding in the same pass). Both give, bit for bit, the f32 kernel
//! run on the widened values followed by rounding. They match the CUDA kernels of `kernels/cuda/adamw.cu`
//! (`adamw_step_bf16`, and `multi_tensor_adamw`'s `KIND_BF16` and `KIND_MIXED`): the same f32 operations
//! in the same order (no fused multiply-adds), the constants rounded to f32 the same way, and the same
//! rounding on store (nearest even, NaN made quiet). Neither side adds stochastic rounding or a
//! compensation buffer, so a pure-bf16 update smaller than half a bf16 ulp of the weight is lost on both.
use super::bf16::{round, widen, CHUNK};
use super::simd::{multiversion, Isa};
use crate::float::PARALLEL_MIN_ELEMS;
use crate::Float;
use half::bf16;
use rayon::prelude::*;

/// Hyper-parameters of one AdamW step; `step` is the number of this update, starting at 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
}

/// Per-step constants of the update, rounded once to the element type.
#[derive(Clone, Copy)]
struct Constants<T> {
    decay: T,
    one_minus_beta1: T,
    beta2: T,
    one_minus_beta2: T,
    step_size: T,
    sqrt_c2: T,
    eps: T,
}

impl<T: Float> Constants<T> {
    fn new(h: AdamWStep) -> Self {
        let t = h.step.max(1).min(i32::MAX as u64) as i32;
        let c1 = 1.0 - h.beta1.powi(t);
        let c2 = 1.0 - h.beta2.powi(t);
        Self {
            decay: T::from_f64(1.0 - h.lr * h.weight_decay),
            one_minus_beta1: T::from_f64(1.0 - h.beta1),
            beta2: T::from_f64(h.beta2),
            one_minus_beta2: T::from_f64(1.0 - h.beta2),
            step_size: T::from_f64(h.lr / c1),
            sqrt_c2: T::from_f64(c2.sqrt()),
            eps: T::from_f64(h.eps),
        }
    }
}

/// One AdamW step on every element: `param`, `m` (first moment) and `v` (second moment) are updated in
/// place from `grad`; all four slices have the same length. Elements are independent, so the result does
/// not depend on the number of threads.
pub fn adamw_step<T: Float>(param: &mut [T], grad: &[T], m: &mut [T], v: &mut [T], hyper: AdamWStep) {
    let (isa, c) = (Isa::active(), Constants::new(hyper));
    let n = param.len().min(grad.len()).min(m.len()).min(v.len());
    let (param, grad, m, v) = (&mut param[..n], &grad[..n], &mut m[..n], &mut v[..n]);
    if n < PARALLEL_MIN_ELEMS {
        update_block(isa, param, grad, m, v, c);
        return;
    }
    param
        .par_chunks_mut(PARALLEL_MIN_ELEMS)
        .zip(grad.par_chunks(PARALLEL_MIN_ELEMS))
        .zip(m.par_chunks_mut(PARALLEL_MIN_ELEMS).zip(v.par_chunks_mut(PARALLEL_MIN_ELEMS)))
        .for_each(|((p, g), (m, v))| update_block(isa, p, g, m, v, c));
}

/// [`adamw_step`] on bf16 param, gradient, m and v (the pure-bf16 mode): each element is widened, updated
/// with the f32 formula and rounded once on store. All four slices have the same length.
pub fn adamw_step_bf16(param: &mut [bf16], grad: &[bf16], m: &mut [bf16], v: &mut [bf16], hyper: AdamWStep) {
    let c = Constants::<f32>::new(hyper);
    let n = param.len().min(grad.len()).min(m.len()).min(v.len());
    let (param, grad, m, v) = (&mut param[..n], &grad[..n], &mut m[..n], &mut v[..n]);
    let block = |p: &mut [bf16], g: &[bf16], m: &mut [bf16], v: &mut [bf16]| {
        let isa = Isa::active();
        let [mut wp, mut wg, mut wm, mut wv] = [[0.0f32; CHUNK]; 4];
        for start in (0..p.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(p.len());
            let len = end - start;
            let (wp, wg, wm, wv) = (&mut wp[..len], &mut wg[..len], &mut wm[..len], &mut wv[..len]);
            widen(&p[start..end], wp);
            widen(&g[start..end], wg);
            widen(&m[start..end], wm);
            widen(&v[start..end], wv);
            update_block(isa, wp, wg, wm, wv, c);
            round(wp, &mut p[start..end]);
            round(wm, &mut m[start..end]);
            round(wv, &mut v[start..end]);
        }
    };
    if n < PARALLEL_MIN_ELEMS {
        return block(param, grad, m, v);
    }
    param
        .par_chunks_mut(PARALLEL_MIN_ELEMS)
        .zip(grad.par_chunks(PARALLEL_MIN_ELEMS))
        .zip(m.par_chunks_mut(PARALLEL_MIN_ELEMS).zip(v.par_chunks_mut(PARALLEL_MIN_ELEMS)))
        .for_each(|((p, g), (m, v))| block(p, g, m, v));
}

/// The f32 master, m and v of a bf16 parameter, and the parameter itself (bf16-mixed): the update runs
/// on the master with the widened bf16 gradient, and the param receives the updated master's rounding.
pub struct MixedState<'a> {
    pub master: &'a mut [f32],
    pub m: &'a mut [f32],
    pub v: &'a mut [f32],
    pub param: &'a mut [bf16],
}

/// [`adamw_step`] for bf16-mixed in one pass: the same bits as widening `grad`, running [`adamw_step`] on
/// the master and rounding the master into the param, without the two whole-tensor copies. All slices
/// have the same length.
pub fn adamw_step_mixed(state: MixedState<'_>, grad: &[bf16], hyper: AdamWStep) {
    let c = Constants::<f32>::new(hyper);
    let MixedState { master, m, v, param } = state;
    let n = master.len().min(grad.len()).min(m.len()).min(v.len()).min(param.len());
    let (master, grad, m, v, param) =
        (&mut master[..n], &grad[..n], &mut m[..n], &mut v[..n], &mut param[..n]);
    let block = |w: &mut [f32], g: &[bf16], m: &mut [f32], v: &mut [f32], p: &mut [bf16]| {
        let isa = Isa::active();
        let mut wg = [0.0f32; CHUNK];
        for start in (0..w.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(w.len());
            let wg = &mut wg[..end - start];
            widen(&g[start..end], wg);
            update_block(isa, &mut w[start..end], wg, &mut m[start..end], &mut v[start..end], c);
            round(&w[start..end], &mut p[start..end]);
        }
    };
    if n < PARALLEL_MIN_ELEMS {
        return block(master, grad, m, v, param);
    }
    master
        .par_chunks_mut(PARALLEL_MIN_ELEMS)
        .zip(grad.par_chunks(PARALLEL_MIN_ELEMS))
        .zip(m.par_chunks_mut(PARALLEL_MIN_ELEMS).zip(v.par_chunks_mut(PARALLEL_MIN_ELEMS)))
        .zip(param.par_chunks_mut(PARALLEL_MIN_ELEMS))
        .for_each(|(((w, g), (m, v)), p)| block(w, g, m, v, p));
}

multiversion! {
    fn update_block[T: Float](
        isa: Isa,
        param: &mut [T],
        grad: &[T],
        m: &mut [T],
        v: &mut [T],
        c: Constants<T>,
    ) {
        let moments = m.iter_mut().zip(v.iter_mut());
        for ((p, &g), (m, v)) in param.iter_mut().zip(grad).zip(moments) {
            let m_new = *m + c.one_minus_beta1 * (g - *m);
            let v_new = *v * c.beta2 + c.one_minus_beta2 * (g * g);
            let denom = v_new.sqrt() / c.sqrt_c2 + c.eps;
            *p = *p * c.decay - c.step_size * (m_new / denom);
            (*m, *v) = (m_new, v_new);
        }
    }
}

//! Fused AdamW update (Loshchilov & Hutter, decoupled weight decay), in place on param, m and v.
//!
//! With step number t (from 1), learning rate `lr` and weight decay `wd`, the equations of
//! `torch.optim.AdamW`:
//!     `p <- p (1 - lr wd)`
//!     `m <- m + (1 - beta1) (g - m)`,   `v <- v beta2 + (1 - beta2) g^2`
//!     `p <- p - (lr / c1) m / (sqrt(v) / sqrt(c2) + eps)`,   `c1 = 1 - beta1^t`, `c2 = 1 - beta2^t`.
//! One pass reads p, g, m, v and writes p, m, v (28 bytes per f32 parameter), with the per-step
//! constants computed once in f64.
use super::simd::{multiversion, Isa};
use crate::float::PARALLEL_MIN_ELEMS;
use crate::Float;
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

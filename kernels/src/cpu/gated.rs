//! The gated product of the MLP, `h = act(gate) * up`, fused with its activation.
//!
//! LLaMA's MLP is `down(silu(gate(x)) * up(x))`; CoLA drops the SiLU for 350m and larger
//! (`down(gate(x) * up(x))`, docs/METHOD.md section 2), so the activation is either SiLU or the identity.
//! With `a = act(g)` the backward of `h = a * u` is
//!     `du = dh * a`,   `dg = dh * u * act'(g)`   (`silu'(g) = s (1 + g (1 - s))`, `s = sigmoid(g)`),
//! computed in one pass that reads g, u, dh once and writes both gradients.
use super::elementwise::{for_each_row_block, sigmoid, silu};
use super::simd::{multiversion, Isa};
use crate::float::PARALLEL_MIN_ELEMS;
use crate::Float;
use rayon::prelude::*;

/// The activation applied to the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateActivation {
    /// `silu(g) * u` (LLaMA; CoLA 60m and 130m).
    Silu,
    /// `g * u` (CoLA 350m and larger, where the low-rank SiLUs supply the non-linearity).
    Identity,
}

/// `out = act(gate) * up`; all slices the same length.
pub fn gated_forward<T: Float>(gate: &[T], up: &[T], activation: GateActivation, out: &mut [T]) {
    let isa = Isa::active();
    for_each_row_block(out, 1, 1, |start, out| {
        let (g, u) = (&gate[start..start + out.len()], &up[start..start + out.len()]);
        match activation {
            GateActivation::Silu => silu_gate_block(isa, g, u, out),
            GateActivation::Identity => product_block(isa, g, u, out),
        }
    });
}

/// Writes (overwrites) `grad_gate` and `grad_up` from `grad_out`; all slices the same length.
pub fn gated_backward<T: Float>(
    gate: &[T],
    up: &[T],
    grad_out: &[T],
    activation: GateActivation,
    grad_gate: &mut [T],
    grad_up: &mut [T],
) {
    let isa = Isa::active();
    let run = |start: usize, dg: &mut [T], du: &mut [T]| {
        let end = start + dg.len();
        let (g, u, dh) = (&gate[start..end], &up[start..end], &grad_out[start..end]);
        match activation {
            GateActivation::Silu => silu_gate_backward_block(isa, g, u, dh, dg, du),
            GateActivation::Identity => {
                product_block(isa, dh, u, dg);
                product_block(isa, dh, g, du);
            }
        }
    };
    if grad_gate.len() < PARALLEL_MIN_ELEMS {
        run(0, grad_gate, grad_up);
        return;
    }
    grad_gate
        .par_chunks_mut(PARALLEL_MIN_ELEMS)
        .zip(grad_up.par_chunks_mut(PARALLEL_MIN_ELEMS))
        .enumerate()
        .for_each(|(block, (dg, du))| run(block * PARALLEL_MIN_ELEMS, dg, du));
}

multiversion! {
    fn product_block[T: Float](isa: Isa, a: &[T], b: &[T], out: &mut [T]) {
        for (o, (&x, &y)) in out.iter_mut().zip(a.iter().zip(b)) {
            *o = x * y;
        }
    }
}

multiversion! {
    fn silu_gate_block[T: Float](isa: Isa, gate: &[T], up: &[T], out: &mut [T]) {
        for (o, (&g, &u)) in out.iter_mut().zip(gate.iter().zip(up)) {
            *o = silu(g) * u;
        }
    }
}

multiversion! {
    fn silu_gate_backward_block[T: Float](
        isa: Isa,
        gate: &[T],
        up: &[T],
        grad_out: &[T],
        grad_gate: &mut [T],
        grad_up: &mut [T],
    ) {
        let inputs = gate.iter().zip(up).zip(grad_out);
        for ((dg, du), ((&g, &u), &dh)) in grad_gate.iter_mut().zip(grad_up.iter_mut()).zip(inputs) {
            let s = sigmoid(g);
            *du = dh * (g * s);
            *dg = dh * u * (s * (T::ONE + g * (T::ONE - s)));
        }
    }
}

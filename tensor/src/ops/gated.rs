//! The gated product of the MLP, `h = act(gate) * up`, as one op with its own backward: one pass over
//! `gate` and `up` forward, one pass over `gate`, `up` and the output gradient backward, instead of a
//! SiLU and a multiply that each save their inputs (docs/METHOD.md section 2: the activation is SiLU for
//! the small CoLA models and the identity from 350m up, where the low-rank SiLUs supply the
//! non-linearity).
use super::{check_same_shape, fused_elementwise, in_compute_dtype, in_compute_dtype1, match_float};
use crate::error::{Result, TensorError};
use crate::Tensor;
use cola_kernels::cpu::gated::{gated_backward, gated_forward, GateActivation};

impl Tensor {
    /// `act(self) * up` elementwise, `self` being the gate; both the same shape, dtype and device. Views
    /// are read through a contiguous copy; bf16 is computed in f32 and rounded once.
    pub fn gated(&self, up: &Tensor, activation: GateActivation) -> Result<Tensor> {
        const OP: &str = "gated";
        check_same_shape(OP, self, up)?;
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            super::check_same(OP, &[self, up])?;
            return crate::cuda::elementwise::gated(self, up, activation);
        }
        let fused = fused_elementwise(OP, [self, up], self.shape(), |[g, u], [out]| {
            gated_forward(g, u, activation, out);
        })?;
        if let Some([out]) = fused {
            return Ok(out);
        }
        in_compute_dtype1(OP, [self, up], |[gate, up]| {
            match_float!(OP, gate.dtype(), T => {
                let (g, u) = (gate.contiguous_data::<T>()?, up.contiguous_data::<T>()?);
                let mut out = crate::pool::take_for_overwrite::<T>(g.len()); // written whole by the kernel
                gated_forward(&g, &u, activation, &mut out);
                Ok(Tensor::from_compute(out, gate.shape()))
            })
        })
    }

    /// Gradients `(grad_gate, grad_up)` of [`Tensor::gated`] from the output gradient `grad`:
    /// `grad_up = grad * act(gate)`, `grad_gate = grad * up * act'(gate)`. All three inputs share shape,
    /// dtype and device.
    pub fn gated_backward(
        gate: &Tensor,
        up: &Tensor,
        grad: &Tensor,
        activation: GateActivation,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "gated_backward";
        check_same_shape(OP, gate, up)?;
        check_same_shape(OP, gate, grad)?;
        #[cfg(feature = "cuda")]
        if gate.is_cuda() {
            super::check_same(OP, &[gate, up, grad])?;
            return crate::cuda::elementwise::gated_backward(gate, up, grad, activation);
        }
        let fused = fused_elementwise(OP, [gate, up, grad], gate.shape(), |[g, u, dh], [dg, du]| {
            gated_backward(g, u, dh, activation, dg, du);
        })?;
        if let Some([grad_gate, grad_up]) = fused {
            return Ok((grad_gate, grad_up));
        }
        let grads = in_compute_dtype(OP, [gate, up, grad], |[gate, up, grad]| {
            match_float!(OP, gate.dtype(), T => {
                let g = gate.contiguous_data::<T>()?;
                let (u, dh) = (up.contiguous_data::<T>()?, grad.contiguous_data::<T>()?);
                // Both written whole by the kernel.
                let (mut grad_gate, mut grad_up) = (crate::pool::take_for_overwrite::<T>(g.len()), crate::pool::take_for_overwrite::<T>(g.len()));
                gated_backward(&g, &u, &dh, activation, &mut grad_gate, &mut grad_up);
                Ok(vec![
                    Tensor::from_compute(grad_gate, gate.shape()),
                    Tensor::from_compute(grad_up, gate.shape()),
                ])
            })
        })?;
        let mut grads = grads.into_iter();
        match (grads.next(), grads.next()) {
            (Some(grad_gate), Some(grad_up)) => Ok((grad_gate, grad_up)),
            _ => Err(TensorError::InvalidArgument { op: OP, reason: "expected two gradients".into() }),
        }
    }
}

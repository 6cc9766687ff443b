//! The MLP's gated product `act(gate) * up` as one op: one pass forward and backward, and one saved pair
//! instead of the activation's input and the product's two inputs.
use super::{InputGrads, Needs, Rule};
use crate::backward::Context;
use crate::profile::{numel, pick};
use cola_tensor::{GateActivation, Result, Tensor};

/// Inputs gate and up, the same shape.
#[derive(Clone, Copy, Debug)]
pub struct Gated {
    pub activation: GateActivation,
}

impl Rule for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn family(&self) -> &'static str {
        "gated"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].gated(inputs[1], self.activation)
    }

    fn needs(&self) -> Needs {
        Needs::ALL_INPUTS
    }

    /// One pass gives both gradients, so they are computed together even when only one is wanted.
    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        let (grad_gate, grad_up) =
            Tensor::gated_backward(ctx.input(0)?, ctx.input(1)?, ctx.grad, self.activation)?;
        Ok(vec![Some(grad_gate).filter(|_| ctx.wants[0]), Some(grad_up).filter(|_| ctx.wants[1])])
    }

    /// Per element forward / backward: SiLU 5 / 11 (silu's 4 and the product; backward recomputes the
    /// sigmoid (3), forms `dh (g s)` (2) and `(dh u) s (1 + g (1 - s))` (6): the 9 + 2 the unfused silu
    /// and multiply backward count), identity 1 / 2 (`dh u` and `dh g`).
    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        let per_element = match self.activation {
            GateActivation::Silu => pick(backward, 5, 11),
            GateActivation::Identity => pick(backward, 1, 2),
        };
        per_element * numel(inputs.first().copied().unwrap_or(&[]))
    }
}

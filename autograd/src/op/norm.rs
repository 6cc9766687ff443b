//! RMSNorm, fused: `x / sqrt(mean(x^2) + eps) * weight`.
use super::{InputGrads, Needs, Rule};
use crate::backward::Context;
use crate::profile::{numel, pick};
use cola_tensor::{Result, Tensor};

/// Inputs x `[..., d]` and weight `[d]`.
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    pub eps: f64,
}

impl Rule for RmsNorm {
    fn name(&self) -> &'static str {
        "rms_norm"
    }

    fn family(&self) -> &'static str {
        "rms_norm"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].rms_norm(inputs[1], self.eps)
    }

    fn needs(&self) -> Needs {
        Needs::ALL_INPUTS
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        let mut grads =
            Tensor::rms_norm_backward(ctx.input(0)?, ctx.input(1)?, ctx.grad, self.eps)?.into_iter();
        let (gx, gw) = (grads.next(), grads.next());
        Ok(vec![gx.filter(|_| ctx.wants[0]), gw.filter(|_| ctx.wants[1])])
    }

    /// Per element of the output, forward / backward: 4 / 9 (`x^2`, the sum, two scalings; the
    /// backward's `w g`, `x w g`, its row sum, two scalings, a subtraction and the weight gradient's
    /// three).
    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        pick(backward, 4, 9) * numel(inputs.first().copied().unwrap_or(&[]))
    }
}

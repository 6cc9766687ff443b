//! Rotary position embedding, fused (rotate-half, `theta`, one position per sequence index).
use super::{InputGrads, Needs, Rule};
use crate::backward::Context;
use crate::profile::numel;
use cola_tensor::{Result, Tensor};
use std::sync::Arc;

/// Input `[batch, seq, heads, head_dim]`.
#[derive(Clone, Debug)]
pub struct Rope {
    pub positions: Arc<[u32]>,
    pub theta: f64,
}

impl Rule for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn family(&self) -> &'static str {
        "rope"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].rope(&self.positions, self.theta)
    }

    /// The backward is the inverse rotation of the gradient: it reads nothing.
    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        Ok(vec![ctx.grad_for(0, || Ok(Tensor::rope_backward(ctx.grad, &self.positions, self.theta)?))?])
    }

    /// 3 per element of the output both ways (a 2x2 rotation per pair).
    fn flops(&self, _backward: bool, inputs: &[&[usize]]) -> u64 {
        3 * numel(inputs.first().copied().unwrap_or(&[]))
    }
}

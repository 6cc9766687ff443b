//! Causal self-attention, fused; its backward recomputes the probabilities. On the GPU flash path the
//! forward also yields each row's log-sum-exp, which the tape keeps next to the output.
use super::{InputGrads, Needs, OutputAndSaved, Rule};
use crate::backward::Context;
use crate::profile::pick;
use cola_tensor::{AttentionSaved, Result, Tensor};

/// Inputs q, k, v `[batch, seq, heads, head_dim]`.
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    pub scale: f64,
}

impl Rule for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn family(&self) -> &'static str {
        "attention"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        Tensor::attention(inputs[0], inputs[1], inputs[2], self.scale)
    }

    /// The per-row log-sum-exp on the GPU flash path (`None` elsewhere, the CPU included). Saving it
    /// costs `batch * heads * q_len` f32, a `head_dim`-th of the output; without it the GPU backward
    /// would run the forward again (two more products per tile) to rebuild it.
    fn forward_saving(&self, inputs: &[&Tensor]) -> Result<OutputAndSaved> {
        Tensor::attention_saving_lse(inputs[0], inputs[1], inputs[2], self.scale)
    }

    /// The output, with its saved log-sum-exp, spares the GPU backward a forward pass (the CPU rule
    /// ignores both).
    fn needs(&self) -> Needs {
        Needs { inputs: u32::MAX, output: true }
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        let saved = ctx.output.zip(ctx.saved).map(|(output, lse)| AttentionSaved { output, lse });
        let (q, k, v) = (ctx.input(0)?, ctx.input(1)?, ctx.input(2)?);
        let grads = Tensor::attention_backward_saved(q, k, v, ctx.grad, saved, self.scale)?;
        Ok(grads.into_iter().zip(&ctx.wants).map(|(t, &w)| Some(t).filter(|_| w)).collect())
    }

    /// q `[b, t, h, d]` against k, v `[b, s, h, d]`: the kernels visit only the keys a query sees
    /// (`kernels/src/cpu/attention.rs`: masked keys are never visited), `pairs = t (t + 1) / 2 +
    /// t (s - t)` per head. Forward: the two products `q k^T` and `p v`, `4 b h d pairs` (half the
    /// unmasked `2 * 2 b h t s d`). Backward recomputes the scores and forms `dV = P^T dO`, `dP = dO V^T`,
    /// `dQ = dS K`, `dK = dS^T Q`: five products, `10 b h d pairs`, 2.5x forward. The softmax's per-score
    /// exp and sums (a few per pair, not per pair and head dim) are not counted.
    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        let first = inputs.first().copied().unwrap_or(&[]);
        let k_shape = inputs.get(1).copied().unwrap_or(first);
        let &[b, t, h, d] = first else { return 0 };
        let s = k_shape.get(1).copied().unwrap_or(t).max(t);
        let (b, t, h, d, s) = (b as u64, t as u64, h as u64, d as u64, s as u64);
        let pairs = t * (t + 1) / 2 + t * (s - t);
        pick(backward, 4, 10) * b * h * d * pairs
    }
}

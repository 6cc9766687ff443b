//! `[..., m, k] @ [..., k, n]`, batch dims broadcast; transposed operands are views.
use super::{InputGrads, Needs, Rule};
use crate::backward::Context;
use crate::profile::{batch_dims, broadcast_numel, last_two, pick};
use cola_tensor::{Result, Tensor};

/// Inputs a `[..., m, k]` and b `[..., k, n]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Matmul;

impl Rule for Matmul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn family(&self) -> &'static str {
        "matmul"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].matmul(inputs[1])
    }

    fn needs(&self) -> Needs {
        Needs::ALL_INPUTS
    }

    /// For `a @ b` with `a: [..., m, k]`, `b: [..., k, n]`: `grad_a = g @ b^T` and `grad_b = a^T @ g`,
    /// each summed over the batch dims it was broadcast along. A rank-2 `b` shared across a batch (a
    /// weight) gets its gradient as one GEMM over all rows of the batch.
    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        let (a, b, g) = (ctx.input(0)?, ctx.input(1)?, ctx.grad);
        let grad_a = ctx.grad_for(0, || Ok(g.matmul(&b.t()?)?.sum_to_shape(a.shape())?))?;
        let grad_b = ctx.grad_for(1, || {
            if b.rank() == 2 && a.rank() > 2 {
                let k = a.shape()[a.rank() - 1];
                let n = g.shape()[g.rank() - 1];
                let a2 = a.reshape(&[a.numel() / k.max(1), k])?;
                let g2 = g.reshape(&[g.numel() / n.max(1), n])?;
                return Ok(a2.t()?.matmul(&g2)?);
            }
            Ok(a.t()?.matmul(g)?.sum_to_shape(b.shape())?)
        })?;
        Ok(vec![grad_a, grad_b])
    }

    /// Over `batch` broadcast matrices: forward `2 batch m k n`; backward `4 batch m k n`, the two
    /// products `g @ b^T` and `a^T @ g` (every matmul of the model wants both operand gradients, so both
    /// are counted).
    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        let first = inputs.first().copied().unwrap_or(&[]);
        let b = inputs.get(1).copied().unwrap_or(&[]);
        let (m, k) = last_two(first);
        let (_, n) = last_two(b);
        let batch = broadcast_numel(&[batch_dims(first), batch_dims(b)]);
        pick(backward, 2, 4) * batch * m * k * n
    }
}

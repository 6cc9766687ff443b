//! The losses: cross-entropy of logits (fused log-softmax and NLL), and the LM head fused with it in
//! blocks of rows so that the `[rows, vocab]` logits are never saved.
use super::{InputGrads, Needs, OutputAndSaved, Rule, UnitGrads};
use crate::backward::Context;
use crate::error::AutogradError;
use crate::profile::{last_two, numel, pick};
use cola_tensor::{Result, Tensor, TensorError};
use std::sync::Arc;

/// Input: logits `[..., vocab]`; output the mean over rows whose target is not `ignore_id`, a scalar.
#[derive(Clone, Debug)]
pub struct CrossEntropy {
    pub targets: Arc<[u32]>,
    pub ignore_id: Option<u32>,
}

impl Rule for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }

    fn family(&self) -> &'static str {
        "cross_entropy"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].cross_entropy(&self.targets, self.ignore_id)
    }

    fn needs(&self) -> Needs {
        Needs { inputs: 1, output: false }
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        Ok(vec![ctx.grad_for(0, || {
            let grad_loss = ctx.grad.to_scalar()?;
            Ok(Tensor::cross_entropy_backward(ctx.input(0)?, &self.targets, self.ignore_id, grad_loss)?)
        })?])
    }

    /// Per logit, forward / backward: 4 (max, shift, exp, sum) / 5 (backward re-forms the softmax,
    /// subtracts the target and scales).
    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        pick(backward, 4, 5) * numel(inputs.first().copied().unwrap_or(&[]))
    }
}

/// Inputs: hidden states `[..., d]` and the LM head's weight `[d, vocab]`; output the mean cross-entropy
/// of `hidden @ weight`, a scalar. Recorded on a tape, it forms its input gradients in the same pass as
/// the loss ([`Rule::forward_with_grads`]): backward only scales them by the loss gradient.
#[derive(Clone, Debug)]
pub struct HeadCrossEntropy {
    pub targets: Arc<[u32]>,
    pub ignore_id: Option<u32>,
}

/// `(rows, d, vocab)` of a head and loss call: hidden `[..., d]` (`rows` rows) by weight `[d, vocab]`.
fn head_dims(inputs: &[&[usize]]) -> (u64, u64, u64) {
    let (d, vocab) = last_two(inputs.get(1).copied().unwrap_or(&[]));
    let rows = numel(inputs.first().copied().unwrap_or(&[])).checked_div(d).unwrap_or(0);
    (rows, d, vocab)
}

impl Rule for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "head_cross_entropy"
    }

    fn family(&self) -> &'static str {
        "head_cross_entropy"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].head_cross_entropy(inputs[1], &self.targets, self.ignore_id)
    }

    /// The gradients of the inputs (`Some` where `wants[i]`, in the input's dtype) for an output
    /// gradient of 1, formed while each block of logits exists for the loss
    /// (`Tensor::head_cross_entropy_with_grads`), so the logits are never formed a second time. The loss
    /// is the last op of a step, so forming its gradients early costs no extra work; the output is
    /// bit-identical to [`Rule::forward`].
    fn forward_with_grads(
        &self,
        inputs: &[&Tensor],
        wants: &[bool],
    ) -> Result<(OutputAndSaved, Option<UnitGrads>)> {
        let want = |i: usize| wants.get(i).copied().unwrap_or(false);
        let formed = inputs[0].head_cross_entropy_with_grads(
            inputs[1],
            &self.targets,
            self.ignore_id,
            want(0),
            want(1),
        )?;
        let in_dtype =
            |grad: Option<Tensor>, input: &Tensor| grad.map(|g| g.to_dtype(input.dtype())).transpose();
        let grads = vec![in_dtype(formed.grad_hidden, inputs[0])?, in_dtype(formed.grad_weight, inputs[1])?];
        Ok(((formed.loss, None), Some(grads)))
    }

    /// Reads the gradients it formed in forward, nothing else.
    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    /// The gradients formed in forward for an output gradient of 1 (in the dtypes of the inputs), times
    /// the scalar output gradient. A gradient of exactly 1 (the mean loss of a whole batch) returns them
    /// unchanged, bit for bit; any other (a micro-batch's weight in an accumulated step) scales them once.
    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        let unit = ctx.unit_grads.ok_or(AutogradError::Tensor(TensorError::InvalidArgument {
            op: "backward",
            reason: "the gradients formed in forward were not kept".into(),
        }))?;
        let scale = ctx.grad.to_scalar()?;
        let mut out = Vec::with_capacity(ctx.wants.len());
        for (i, &wanted) in ctx.wants.iter().enumerate() {
            let grad = match unit.get(i) {
                Some(Some(t)) if wanted => Some(if scale == 1.0 { t.clone() } else { t.mul_scalar(scale)? }),
                _ => None,
            };
            out.push(grad);
        }
        Ok(out)
    }

    /// Forward is the head's product and cross_entropy's forward, `2 rows d vocab + 4 rows vocab` (a
    /// recorded forward also forms the gradients, below); backward only scales those gradients by the
    /// loss gradient, nothing when it is 1 (the scaling, 1 per gradient element otherwise, is not
    /// counted): 0.
    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        let (rows, d, vocab) = head_dims(inputs);
        pick(backward, 2 * rows * d * vocab + 4 * rows * vocab, 0)
    }

    /// The forward plus the gradients formed there: the cross-entropy gradient (`5 rows vocab`) and per
    /// wanted input one product, `d logits @ weight^T` or `hidden^T @ d logits` (`2 rows d vocab` each).
    fn recorded_forward_flops(&self, inputs: &[&[usize]], wants: &[bool]) -> u64 {
        let (rows, d, vocab) = head_dims(inputs);
        let products = wants.iter().filter(|&&w| w).count() as u64;
        self.flops(false, inputs) + 5 * rows * vocab + products * 2 * rows * d * vocab
    }
}

//! What a backward rule sees of its node ([`Context`]); the rules themselves are each op family's
//! [`Rule::backward`](crate::op::Rule::backward), in `op/<family>.rs`.
use crate::error::{AutogradError, Result};
use crate::op::{InputGrads, Op};
use cola_tensor::{Tensor, TensorError};

/// What a backward rule sees of its node.
pub struct Context<'a> {
    /// Input values, present where [`Op::needs`] asked for them.
    pub inputs: Vec<Option<&'a Tensor>>,
    pub input_shapes: Vec<&'a [usize]>,
    /// The output value, present when [`Op::needs`] asked for it.
    pub output: Option<&'a Tensor>,
    /// The auxiliary tensor [`Op::forward_saving`] produced with the output, when it produced one and
    /// the output is present.
    pub saved: Option<&'a Tensor>,
    /// Gradient of the loss with respect to the output.
    pub grad: &'a Tensor,
    /// Whether input i wants a gradient; rules skip the work for the others.
    pub wants: Vec<bool>,
    /// Gradients of the inputs for an output gradient of 1, formed in forward by ops that do so
    /// ([`Op::forward_with_grads`]); `None` for the others.
    pub unit_grads: Option<&'a [Option<Tensor>]>,
}

impl<'a> Context<'a> {
    pub(crate) fn input(&self, i: usize) -> Result<&'a Tensor> {
        self.inputs[i].ok_or(AutogradError::Tensor(TensorError::InvalidArgument {
            op: "backward",
            reason: format!("input {i} was not kept for backward"),
        }))
    }

    pub(crate) fn output(&self) -> Result<&'a Tensor> {
        self.output.ok_or(AutogradError::Tensor(TensorError::InvalidArgument {
            op: "backward",
            reason: "output was not kept for backward".into(),
        }))
    }

    /// Computes the gradient of input i with `f` only when it is wanted.
    pub(crate) fn grad_for(&self, i: usize, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
        if self.wants[i] {
            f().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Gradients of every input of one node (`None` where not wanted): the op's own rule
/// ([`Rule::backward`](crate::op::Rule::backward), in `op/<family>.rs`).
pub fn backward(op: &Op, ctx: &Context) -> Result<InputGrads> {
    op.rule().backward(ctx)
}

//! Embedding lookup: rows of a table gathered by token ids; the gradient scatter-adds back, and the pad
//! id's row gets none.
use super::{InputGrads, Needs, Rule};
use crate::backward::Context;
use crate::profile::{numel, pick};
use cola_tensor::{Result, Shape, Tensor};
use std::sync::Arc;

/// Input: the table `[vocab, dim]`; the ids (of `ids_shape`) are attributes.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub ids: Arc<[u32]>,
    pub ids_shape: Shape,
    pub pad_id: Option<u32>,
}

impl Rule for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn family(&self) -> &'static str {
        "embedding"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        Tensor::embedding(inputs[0], &self.ids, &self.ids_shape)
    }

    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        let vocab = ctx.input_shapes[0][0];
        Ok(
            vec![
                ctx.grad_for(0, || Ok(Tensor::embedding_backward(ctx.grad, &self.ids, vocab, self.pad_id)?))?
            ],
        )
    }

    /// A gather forward (0); backward scatter-adds 1 per element of the output.
    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        let dim = inputs.first().and_then(|s| s.last()).copied().unwrap_or(0) as u64;
        pick(backward, 0, numel(&self.ids_shape) * dim)
    }
}

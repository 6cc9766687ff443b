//! The interface layers are written against, so that the model's maths exists once.
//!
//! A [`Graph`] applies recorded ops ([`Op`], the same enum the tape stores) to values of its own kind:
//! the [`Tape`] records a node per op and hands back a [`Var`] (training, recomputation), the [`Eager`]
//! executor computes a [`Tensor`] and keeps nothing (evaluation, generation). Both end in
//! [`Op::forward`], so a layer run eagerly gives the bits the tape records. Everything a layer may call
//! is a provided method over [`Graph::apply`]; an executor with special needs (the KV-cached decoder
//! of `nn/src/inference.rs` rotates and attends against its cache) intercepts ops there.
use crate::error::Result;
use crate::op::Op;
use crate::param::Parameter;
use crate::policy::SlotKind;
use crate::tape::{Tape, Var};
use cola_tensor::{BinaryOp, GateActivation, Tensor, UnaryOp};

/// An executor of [`Op`]s: the tape (records) or an eager one (computes only).
pub trait Graph {
    /// A handle to a value: a [`Var`] on the tape, the [`Tensor`] itself when eager.
    type Value: Clone;

    /// Runs `op` on `inputs` (in the order [`Op::forward`] takes them).
    fn apply(&mut self, op: Op, inputs: &[&Self::Value]) -> Result<Self::Value>;

    /// A parameter as an input of later ops (on the tape: a leaf whose gradient is reported).
    fn param(&mut self, param: &Parameter) -> Self::Value;

    fn shape(&self, value: &Self::Value) -> Result<Vec<usize>>;

    /// Says what a value is, for retention policies; nothing to do where nothing is kept.
    fn mark(&mut self, _value: &Self::Value, _kind: SlotKind) -> Result<()> {
        Ok(())
    }

    /// Runs decoder layer `index` (numbered from 0). The tape releases what its policy recomputes when
    /// the layer ends; a cached decoder uses the index to find the layer's keys and values.
    fn layer<R>(&mut self, _index: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        f(self)
    }

    /// `[..., m, k] @ [..., k, n]`, batch dims broadcast.
    fn matmul(&mut self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Matmul, &[a, b])
    }

    /// Broadcasting `a + b`.
    fn add(&mut self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Binary(BinaryOp::Add), &[a, b])
    }

    /// Broadcasting `a * b`.
    fn mul(&mut self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Binary(BinaryOp::Mul), &[a, b])
    }

    /// `x * sigmoid(x)`.
    fn silu(&mut self, x: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Unary(UnaryOp::Silu), &[x])
    }

    /// GELU, tanh form: `x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))`.
    fn gelu(&mut self, x: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Unary(UnaryOp::Gelu), &[x])
    }

    /// `max(x, 0)`.
    fn relu(&mut self, x: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Unary(UnaryOp::Relu), &[x])
    }

    fn reshape(&mut self, x: &Self::Value, shape: &[usize]) -> Result<Self::Value> {
        self.apply(Op::Reshape { shape: shape.into() }, &[x])
    }

    /// `len` entries of `axis` from `start` (a view).
    fn narrow(&mut self, x: &Self::Value, axis: isize, start: usize, len: usize) -> Result<Self::Value> {
        self.apply(Op::Narrow { axis, start, len }, &[x])
    }

    /// RMSNorm of `x: [..., d]` with `weight: [d]`.
    fn rms_norm(&mut self, x: &Self::Value, weight: &Self::Value, eps: f64) -> Result<Self::Value> {
        self.apply(Op::RmsNorm { eps }, &[x, weight])
    }

    /// Rotary embedding of `x: [batch, seq, heads, head_dim]` at `positions` (one per seq index).
    fn rope(&mut self, x: &Self::Value, positions: &[u32], theta: f64) -> Result<Self::Value> {
        self.apply(Op::Rope { positions: positions.into(), theta }, &[x])
    }

    /// Causal attention of `[batch, seq, heads, head_dim]` queries, keys and values.
    fn attention(
        &mut self,
        q: &Self::Value,
        k: &Self::Value,
        v: &Self::Value,
        scale: f64,
    ) -> Result<Self::Value> {
        self.apply(Op::Attention { scale }, &[q, k, v])
    }

    /// Rows of `table: [vocab, dim]` gathered by `ids` (of `ids_shape`); `pad_id`'s row gets no gradient.
    fn embedding(
        &mut self,
        table: &Self::Value,
        ids: &[u32],
        ids_shape: &[usize],
        pad_id: Option<u32>,
    ) -> Result<Self::Value> {
        self.apply(Op::Embedding { ids: ids.into(), ids_shape: ids_shape.into(), pad_id }, &[table])
    }

    /// Mean cross-entropy of `logits: [..., vocab]` against one target per row, skipping `ignore_id`.
    fn cross_entropy(
        &mut self,
        logits: &Self::Value,
        targets: &[u32],
        ignore_id: Option<u32>,
    ) -> Result<Self::Value> {
        self.apply(Op::CrossEntropy { targets: targets.into(), ignore_id }, &[logits])
    }

    /// The MLP's gated product `act(gate) * up` (same shapes) as one op: one pass forward and backward,
    /// and only `gate` and `up` saved for backward.
    fn gated(
        &mut self,
        gate: &Self::Value,
        up: &Self::Value,
        activation: GateActivation,
    ) -> Result<Self::Value> {
        self.apply(Op::Gated { activation }, &[gate, up])
    }

    /// Mean cross-entropy of the logits `hidden @ weight` (`[..., d]` by `[d, vocab]`) against one target
    /// per row, skipping `ignore_id`: the LM head and the loss in one op that never keeps the logits.
    fn head_cross_entropy(
        &mut self,
        hidden: &Self::Value,
        weight: &Self::Value,
        targets: &[u32],
        ignore_id: Option<u32>,
    ) -> Result<Self::Value> {
        self.apply(Op::HeadCrossEntropy { targets: targets.into(), ignore_id }, &[hidden, weight])
    }
}

impl Graph for Tape {
    type Value = Var;

    fn apply(&mut self, op: Op, inputs: &[&Var]) -> Result<Var> {
        let inputs: Vec<Var> = inputs.iter().map(|&&v| v).collect();
        self.record(op, &inputs)
    }

    fn param(&mut self, param: &Parameter) -> Var {
        Tape::param(self, param)
    }

    fn shape(&self, value: &Var) -> Result<Vec<usize>> {
        Ok(Tape::shape(self, *value)?.to_vec())
    }

    fn mark(&mut self, value: &Var, kind: SlotKind) -> Result<()> {
        Tape::mark(self, *value, kind)
    }

    fn layer<R>(&mut self, _index: usize, f: impl FnOnce(&mut Tape) -> R) -> R {
        Tape::layer(self, f)
    }
}

/// Runs ops at once on tensors and keeps nothing: no nodes, no saved values, no gradients. For
/// evaluation and generation, where a tape under `no_grad` would still hold every intermediate.
#[derive(Clone, Copy, Debug, Default)]
pub struct Eager;

impl Graph for Eager {
    type Value = Tensor;

    fn apply(&mut self, op: Op, inputs: &[&Tensor]) -> Result<Tensor> {
        Ok(op.forward(inputs)?)
    }

    fn param(&mut self, param: &Parameter) -> Tensor {
        param.value().clone()
    }

    fn shape(&self, value: &Tensor) -> Result<Vec<usize>> {
        Ok(value.shape().to_vec())
    }
}

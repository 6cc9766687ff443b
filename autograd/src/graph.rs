//! The interface layers are written against, so that the model's maths exists once.
//!
//! A [`Graph`] applies recorded ops ([`Op`], the same enum the tape stores) to values of its own kind:
//! the [`Tape`] records a node per op and hands back a [`Var`] (training, recomputation), the [`Eager`]
//! executor computes a [`Tensor`] and keeps nothing (evaluation, generation). Both end in
//! [`Op::forward`], so a layer run eagerly gives the bits the tape records. Everything a layer may call
//! is a provided method over [`Graph::apply`]; an executor with special needs (the KV-cached decoder
//! of `nn/src/inference.rs` rotates and attends against its cache) intercepts ops there.
use crate::error::Result;
use crate::op::{
    Affine, Attention, BroadcastTo, Concat, CrossEntropy, Embedding, Gated, HeadCrossEntropy, Mean, Narrow,
    Op, Permute, Reshape, RmsNorm, Rope, Sum,
};
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

    /// `[..., m, k] @ [..., k, n]`, batch dims broadcast; pass a transposed view (`transpose`, `t`) for
    /// an `A^T` operand.
    fn matmul(&mut self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Matmul, &[a, b])
    }

    /// Broadcasting `a + b`.
    fn add(&mut self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Binary(BinaryOp::Add), &[a, b])
    }

    /// Broadcasting `a - b`.
    fn sub(&mut self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Binary(BinaryOp::Sub), &[a, b])
    }

    /// Broadcasting `a * b`.
    fn mul(&mut self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Binary(BinaryOp::Mul), &[a, b])
    }

    /// Broadcasting `a / b`.
    fn div(&mut self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Binary(BinaryOp::Div), &[a, b])
    }

    fn neg(&mut self, x: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Unary(UnaryOp::Neg), &[x])
    }

    fn exp(&mut self, x: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Unary(UnaryOp::Exp), &[x])
    }

    fn log(&mut self, x: &Self::Value) -> Result<Self::Value> {
        self.apply(Op::Unary(UnaryOp::Log), &[x])
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

    /// `scale * x + shift`.
    fn affine(&mut self, x: &Self::Value, scale: f64, shift: f64) -> Result<Self::Value> {
        self.apply(Op::Affine(Affine { scale, shift }), &[x])
    }

    fn add_scalar(&mut self, x: &Self::Value, value: f64) -> Result<Self::Value> {
        self.affine(x, 1.0, value)
    }

    fn mul_scalar(&mut self, x: &Self::Value, value: f64) -> Result<Self::Value> {
        self.affine(x, value, 0.0)
    }

    /// Sum over `axes` (all when empty).
    fn sum(&mut self, x: &Self::Value, axes: &[isize], keepdim: bool) -> Result<Self::Value> {
        self.apply(Op::Sum(Sum { axes: axes.to_vec(), keepdim }), &[x])
    }

    /// Mean over `axes` (all when empty).
    fn mean(&mut self, x: &Self::Value, axes: &[isize], keepdim: bool) -> Result<Self::Value> {
        self.apply(Op::Mean(Mean { axes: axes.to_vec(), keepdim }), &[x])
    }

    fn reshape(&mut self, x: &Self::Value, shape: &[usize]) -> Result<Self::Value> {
        self.apply(Op::Reshape(Reshape { shape: shape.into() }), &[x])
    }

    /// Dim i of the result is dim `perm[i]` of `x` (a view).
    fn permute(&mut self, x: &Self::Value, perm: &[usize]) -> Result<Self::Value> {
        self.apply(Op::Permute(Permute { perm: perm.to_vec() }), &[x])
    }

    /// Swaps two axes (negative counts from the end), recorded as a permute.
    fn transpose(&mut self, x: &Self::Value, a: isize, b: isize) -> Result<Self::Value> {
        let rank = self.shape(x)?.len();
        self.permute(x, &cola_tensor::layout::transpose_perm(a, b, rank)?)
    }

    /// Transpose of the last two axes.
    fn t(&mut self, x: &Self::Value) -> Result<Self::Value> {
        self.transpose(x, -2, -1)
    }

    /// `len` entries of `axis` from `start` (a view).
    fn narrow(&mut self, x: &Self::Value, axis: isize, start: usize, len: usize) -> Result<Self::Value> {
        self.apply(Op::Narrow(Narrow { axis, start, len }), &[x])
    }

    fn broadcast_to(&mut self, x: &Self::Value, shape: &[usize]) -> Result<Self::Value> {
        self.apply(Op::BroadcastTo(BroadcastTo { shape: shape.into() }), &[x])
    }

    /// The parts joined along `axis` (a copy).
    fn concat(&mut self, parts: &[Self::Value], axis: isize) -> Result<Self::Value> {
        let parts: Vec<&Self::Value> = parts.iter().collect();
        self.apply(Op::Concat(Concat { axis }), &parts)
    }

    /// Consecutive pieces of `axis` with the given sizes, which must add up to its length (each piece a
    /// narrow; checked first, so a bad split adds nothing).
    fn split(&mut self, x: &Self::Value, sizes: &[usize], axis: isize) -> Result<Vec<Self::Value>> {
        cola_tensor::layout::split_axis(sizes, axis, &self.shape(x)?)?;
        let mut start = 0;
        let mut parts = Vec::with_capacity(sizes.len());
        for &len in sizes {
            parts.push(self.narrow(x, axis, start, len)?);
            start += len;
        }
        Ok(parts)
    }

    /// RMSNorm of `x: [..., d]` with `weight: [d]`.
    fn rms_norm(&mut self, x: &Self::Value, weight: &Self::Value, eps: f64) -> Result<Self::Value> {
        self.apply(Op::RmsNorm(RmsNorm { eps }), &[x, weight])
    }

    /// Rotary embedding of `x: [batch, seq, heads, head_dim]` at `positions` (one per seq index).
    fn rope(&mut self, x: &Self::Value, positions: &[u32], theta: f64) -> Result<Self::Value> {
        self.apply(Op::Rope(Rope { positions: positions.into(), theta }), &[x])
    }

    /// Causal attention of `[batch, seq, heads, head_dim]` queries, keys and values.
    fn attention(
        &mut self,
        q: &Self::Value,
        k: &Self::Value,
        v: &Self::Value,
        scale: f64,
    ) -> Result<Self::Value> {
        self.apply(Op::Attention(Attention { scale }), &[q, k, v])
    }

    /// Rows of `table: [vocab, dim]` gathered by `ids` (of `ids_shape`); `pad_id`'s row gets no gradient.
    fn embedding(
        &mut self,
        table: &Self::Value,
        ids: &[u32],
        ids_shape: &[usize],
        pad_id: Option<u32>,
    ) -> Result<Self::Value> {
        self.apply(
            Op::Embedding(Embedding { ids: ids.into(), ids_shape: ids_shape.into(), pad_id }),
            &[table],
        )
    }

    /// Mean cross-entropy of `logits: [..., vocab]` against one target per row, skipping `ignore_id`.
    fn cross_entropy(
        &mut self,
        logits: &Self::Value,
        targets: &[u32],
        ignore_id: Option<u32>,
    ) -> Result<Self::Value> {
        self.apply(Op::CrossEntropy(CrossEntropy { targets: targets.into(), ignore_id }), &[logits])
    }

    /// The MLP's gated product `act(gate) * up` (same shapes) as one op: one pass forward and backward,
    /// and only `gate` and `up` saved for backward.
    fn gated(
        &mut self,
        gate: &Self::Value,
        up: &Self::Value,
        activation: GateActivation,
    ) -> Result<Self::Value> {
        self.apply(Op::Gated(Gated { activation }), &[gate, up])
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
        self.apply(
            Op::HeadCrossEntropy(HeadCrossEntropy { targets: targets.into(), ignore_id }),
            &[hidden, weight],
        )
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

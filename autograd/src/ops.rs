//! The recording API: one method per op, each a checked forward plus a node on the tape.
use crate::error::Result;
use crate::op::Op;
use crate::tape::{Tape, Var};
use cola_tensor::{BinaryOp, GateActivation, UnaryOp};

impl Tape {
    /// `[..., m, k] @ [..., k, n]`; pass a transposed view (`transpose`, `t`) for `A^T` operands.
    pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.record(Op::Matmul, &[a, b])
    }

    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.record(Op::Binary(BinaryOp::Add), &[a, b])
    }

    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        self.record(Op::Binary(BinaryOp::Sub), &[a, b])
    }

    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.record(Op::Binary(BinaryOp::Mul), &[a, b])
    }

    pub fn div(&mut self, a: Var, b: Var) -> Result<Var> {
        self.record(Op::Binary(BinaryOp::Div), &[a, b])
    }

    pub fn neg(&mut self, x: Var) -> Result<Var> {
        self.record(Op::Unary(UnaryOp::Neg), &[x])
    }

    pub fn exp(&mut self, x: Var) -> Result<Var> {
        self.record(Op::Unary(UnaryOp::Exp), &[x])
    }

    pub fn log(&mut self, x: Var) -> Result<Var> {
        self.record(Op::Unary(UnaryOp::Log), &[x])
    }

    pub fn silu(&mut self, x: Var) -> Result<Var> {
        self.record(Op::Unary(UnaryOp::Silu), &[x])
    }

    pub fn gelu(&mut self, x: Var) -> Result<Var> {
        self.record(Op::Unary(UnaryOp::Gelu), &[x])
    }

    pub fn relu(&mut self, x: Var) -> Result<Var> {
        self.record(Op::Unary(UnaryOp::Relu), &[x])
    }

    /// `scale * x + shift`.
    pub fn affine(&mut self, x: Var, scale: f64, shift: f64) -> Result<Var> {
        self.record(Op::Affine { scale, shift }, &[x])
    }

    pub fn add_scalar(&mut self, x: Var, value: f64) -> Result<Var> {
        self.affine(x, 1.0, value)
    }

    pub fn mul_scalar(&mut self, x: Var, value: f64) -> Result<Var> {
        self.affine(x, value, 0.0)
    }

    /// Sum over `axes` (all when empty).
    pub fn sum(&mut self, x: Var, axes: &[isize], keepdim: bool) -> Result<Var> {
        self.record(Op::Sum { axes: axes.to_vec(), keepdim }, &[x])
    }

    /// Mean over `axes` (all when empty).
    pub fn mean(&mut self, x: Var, axes: &[isize], keepdim: bool) -> Result<Var> {
        self.record(Op::Mean { axes: axes.to_vec(), keepdim }, &[x])
    }

    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Result<Var> {
        self.record(Op::Reshape { shape: shape.into() }, &[x])
    }

    pub fn permute(&mut self, x: Var, perm: &[usize]) -> Result<Var> {
        self.record(Op::Permute { perm: perm.to_vec() }, &[x])
    }

    /// Swaps two axes (negative counts from the end).
    pub fn transpose(&mut self, x: Var, a: isize, b: isize) -> Result<Var> {
        let rank = self.shape(x)?.len();
        let (a, b) = (
            cola_tensor::layout::resolve_axis("transpose", a, rank)?,
            cola_tensor::layout::resolve_axis("transpose", b, rank)?,
        );
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(a, b);
        self.permute(x, &perm)
    }

    /// Transpose of the last two axes.
    pub fn t(&mut self, x: Var) -> Result<Var> {
        self.transpose(x, -2, -1)
    }

    pub fn narrow(&mut self, x: Var, axis: isize, start: usize, len: usize) -> Result<Var> {
        self.record(Op::Narrow { axis, start, len }, &[x])
    }

    pub fn broadcast_to(&mut self, x: Var, shape: &[usize]) -> Result<Var> {
        self.record(Op::BroadcastTo { shape: shape.into() }, &[x])
    }

    pub fn concat(&mut self, parts: &[Var], axis: isize) -> Result<Var> {
        self.record(Op::Concat { axis }, parts)
    }

    /// Consecutive pieces of `axis` with the given sizes (each a recorded narrow).
    pub fn split(&mut self, x: Var, sizes: &[usize], axis: isize) -> Result<Vec<Var>> {
        // Validates the sizes once, with the tensor op's error message.
        self.value(x)?.split(sizes, axis)?;
        let mut start = 0;
        let mut parts = Vec::with_capacity(sizes.len());
        for &len in sizes {
            parts.push(self.narrow(x, axis, start, len)?);
            start += len;
        }
        Ok(parts)
    }

    /// RMSNorm of `x: [..., d]` with `weight: [d]`.
    pub fn rms_norm(&mut self, x: Var, weight: Var, eps: f64) -> Result<Var> {
        self.record(Op::RmsNorm { eps }, &[x, weight])
    }

    /// Rotary embedding of `x: [batch, seq, heads, head_dim]` at `positions` (one per seq index).
    pub fn rope(&mut self, x: Var, positions: &[u32], theta: f64) -> Result<Var> {
        self.record(Op::Rope { positions: positions.into(), theta }, &[x])
    }

    /// Causal attention of `[batch, seq, heads, head_dim]` q, k, v.
    pub fn attention(&mut self, q: Var, k: Var, v: Var, scale: f64) -> Result<Var> {
        self.record(Op::Attention { scale }, &[q, k, v])
    }

    /// Rows of `table: [vocab, dim]` gathered by `ids` (of `ids_shape`); `pad_id`'s row gets no gradient.
    pub fn embedding(
        &mut self,
        table: Var,
        ids: &[u32],
        ids_shape: &[usize],
        pad_id: Option<u32>,
    ) -> Result<Var> {
        let op = Op::Embedding { ids: ids.into(), ids_shape: ids_shape.into(), pad_id };
        self.record(op, &[table])
    }

    /// Mean cross-entropy of `logits: [..., vocab]` against one target per row, skipping `ignore_id`.
    pub fn cross_entropy(&mut self, logits: Var, targets: &[u32], ignore_id: Option<u32>) -> Result<Var> {
        self.record(Op::CrossEntropy { targets: targets.into(), ignore_id }, &[logits])
    }

    /// `act(gate) * up` for same-shaped `gate` and `up`, recorded as one op.
    pub fn gated(&mut self, gate: Var, up: Var, activation: GateActivation) -> Result<Var> {
        self.record(Op::Gated { activation }, &[gate, up])
    }

    /// Mean cross-entropy of the logits `hidden @ weight` (`[..., d]` by `[d, vocab]`) against one target
    /// per row, skipping `ignore_id`, without saving the logits.
    pub fn head_cross_entropy(
        &mut self,
        hidden: Var,
        weight: Var,
        targets: &[u32],
        ignore_id: Option<u32>,
    ) -> Result<Var> {
        self.record(Op::HeadCrossEntropy { targets: targets.into(), ignore_id }, &[hidden, weight])
    }
}

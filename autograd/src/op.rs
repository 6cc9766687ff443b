//! The recorded ops: an enum carrying each op's attributes, its forward (the replayable definition) and
//! what its backward rule needs. The rules themselves are in `backward.rs`.
use cola_tensor::{BinaryOp, GateActivation, Result, Shape, Tensor, UnaryOp};
use std::sync::Arc;

/// One differentiable op with its attributes. Token ids and targets are attributes, not inputs: they carry
/// no gradient.
#[derive(Clone, Debug)]
pub enum Op {
    /// `[..., m, k] @ [..., k, n]`, batch dims broadcast.
    Matmul,
    Binary(BinaryOp),
    Unary(UnaryOp),
    /// `scale * x + shift`.
    Affine {
        scale: f64,
        shift: f64,
    },
    Sum {
        axes: Vec<isize>,
        keepdim: bool,
    },
    Mean {
        axes: Vec<isize>,
        keepdim: bool,
    },
    Reshape {
        shape: Shape,
    },
    Permute {
        perm: Vec<usize>,
    },
    Narrow {
        axis: isize,
        start: usize,
        len: usize,
    },
    BroadcastTo {
        shape: Shape,
    },
    Concat {
        axis: isize,
    },
    /// Inputs x `[..., d]` and weight `[d]`.
    RmsNorm {
        eps: f64,
    },
    /// Input `[batch, seq, heads, head_dim]`.
    Rope {
        positions: Arc<[u32]>,
        theta: f64,
    },
    /// Inputs q, k, v `[batch, seq, heads, head_dim]`.
    Attention {
        scale: f64,
    },
    /// Input: the table `[vocab, dim]`.
    Embedding {
        ids: Arc<[u32]>,
        ids_shape: Shape,
        pad_id: Option<u32>,
    },
    /// Input: logits `[..., vocab]`; output a scalar.
    CrossEntropy {
        targets: Arc<[u32]>,
        ignore_id: Option<u32>,
    },
    /// Inputs gate and up, the same shape: `act(gate) * up`, the MLP's gated product as one op (one
    /// saved pair instead of the activation's input and the product's two inputs).
    Gated {
        activation: GateActivation,
    },
    /// Inputs: hidden states `[..., d]` and the LM head's weight `[d, vocab]`; output the mean
    /// cross-entropy of `hidden @ weight`, a scalar. Fused so the `[rows, vocab]` logits are never saved.
    /// Recorded on a tape, it forms its input gradients in the same pass as the loss
    /// ([`Op::forward_with_grads`]): backward only scales them by the loss gradient.
    HeadCrossEntropy {
        targets: Arc<[u32]>,
        ignore_id: Option<u32>,
    },
}

/// An op's output and what its forward saved next to it for backward ([`Op::forward_saving`]).
pub type OutputAndSaved = (Tensor, Option<Tensor>);

/// Per input, the gradient an op formed in forward for an output gradient of 1 (`None` for inputs that
/// want none), [`Op::forward_with_grads`].
pub type UnitGrads = Vec<Option<Tensor>>;

/// Which recorded values an op's backward reads (beyond input shapes, which the tape always keeps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Bit i set: backward reads input i.
    pub inputs: u32,
    pub output: bool,
}

impl Needs {
    const NOTHING: Needs = Needs { inputs: 0, output: false };
    const ALL_INPUTS: Needs = Needs { inputs: u32::MAX, output: false };

    pub fn input(&self, i: usize) -> bool {
        i < 32 && self.inputs & (1 << i) != 0
    }
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Matmul => "matmul",
            Op::Binary(b) => b.name(),
            Op::Unary(u) => u.name(),
            Op::Affine { .. } => "affine",
            Op::Sum { .. } => "sum",
            Op::Mean { .. } => "mean",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Narrow { .. } => "narrow",
            Op::BroadcastTo { .. } => "broadcast_to",
            Op::Concat { .. } => "concat",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::Embedding { .. } => "embedding",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::Gated { .. } => "gated",
            Op::HeadCrossEntropy { .. } => "head_cross_entropy",
        }
    }

    /// Computes the op's output from its inputs. Recording and replay both call this, so a replayed value
    /// is bit-identical to the recorded one.
    pub fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        match self {
            Op::Matmul => x.matmul(inputs[1]),
            Op::Binary(op) => x.binary(*op, inputs[1]),
            Op::Unary(op) => x.unary(*op),
            Op::Affine { scale, shift } => x.affine(*scale, *shift),
            Op::Sum { axes, keepdim } => x.sum(axes, *keepdim),
            Op::Mean { axes, keepdim } => x.mean(axes, *keepdim),
            Op::Reshape { shape } => x.reshape(shape),
            Op::Permute { perm } => x.permute(perm),
            Op::Narrow { axis, start, len } => x.narrow(*axis, *start, *len),
            Op::BroadcastTo { shape } => x.broadcast_to(shape),
            Op::Concat { axis } => {
                let parts: Vec<Tensor> = inputs.iter().map(|&t| t.clone()).collect();
                Tensor::concat(&parts, *axis)
            }
            Op::RmsNorm { eps } => x.rms_norm(inputs[1], *eps),
            Op::Rope { positions, theta } => x.rope(positions, *theta),
            Op::Attention { scale } => Tensor::attention(x, inputs[1], inputs[2], *scale),
            Op::Embedding { ids, ids_shape, .. } => Tensor::embedding(x, ids, ids_shape),
            Op::CrossEntropy { targets, ignore_id } => x.cross_entropy(targets, *ignore_id),
            Op::Gated { activation } => x.gated(inputs[1], *activation),
            Op::HeadCrossEntropy { targets, ignore_id } => {
                x.head_cross_entropy(inputs[1], targets, *ignore_id)
            }
        }
    }

    /// [`Op::forward`] and, for an op whose backward reuses one, an auxiliary tensor forward computed on
    /// the way: attention's per-row log-sum-exp on the GPU flash path (`None` elsewhere, the CPU
    /// included). The tape keeps the two together in the output's slot: released together, replayed
    /// together (by this same call, so the replayed pair is bit-identical to the recorded one).
    ///
    /// Saving the log-sum-exp costs `batch * heads * q_len` f32, a `head_dim`-th of the output; without
    /// it the GPU backward would run the forward again (two more products per tile) to rebuild it.
    pub fn forward_saving(&self, inputs: &[&Tensor]) -> Result<OutputAndSaved> {
        match self {
            Op::Attention { scale } => Tensor::attention_saving_lse(inputs[0], inputs[1], inputs[2], *scale),
            _ => Ok((self.forward(inputs)?, None)),
        }
    }

    /// [`Op::forward_saving`]'s output and auxiliary and, when the tape records the op, what backward then reads instead of inputs: for the
    /// fused head and loss, the gradients of the inputs (`Some` where `wants[i]`, in the input's dtype) for
    /// an output gradient of 1, formed while each block of logits exists for the loss (`Tensor::head_cross_entropy_with_grads`),
    /// so the logits are never formed a second time. The loss is the last op of a step, so forming its
    /// gradients early costs no extra work; the output is bit-identical to [`Op::forward`]. Every other op
    /// returns `None` for the gradients: its backward reads values per [`Op::needs`].
    pub fn forward_with_grads(
        &self,
        inputs: &[&Tensor],
        wants: &[bool],
    ) -> Result<(OutputAndSaved, Option<UnitGrads>)> {
        match self {
            Op::HeadCrossEntropy { targets, ignore_id } => {
                let want = |i: usize| wants.get(i).copied().unwrap_or(false);
                let formed = inputs[0].head_cross_entropy_with_grads(
                    inputs[1],
                    targets,
                    *ignore_id,
                    want(0),
                    want(1),
                )?;
                let in_dtype = |grad: Option<Tensor>, input: &Tensor| {
                    grad.map(|g| g.to_dtype(input.dtype())).transpose()
                };
                let grads =
                    vec![in_dtype(formed.grad_hidden, inputs[0])?, in_dtype(formed.grad_weight, inputs[1])?];
                Ok(((formed.loss, None), Some(grads)))
            }
            _ => Ok((self.forward_saving(inputs)?, None)),
        }
    }

    /// What backward reads. Everything else can be released as soon as forward no longer needs it.
    pub fn needs(&self) -> Needs {
        match self {
            Op::Matmul | Op::RmsNorm { .. } => Needs::ALL_INPUTS,
            // The output, with its saved log-sum-exp, spares the GPU backward a forward pass (the CPU
            // rule ignores both).
            Op::Attention { .. } => Needs { inputs: u32::MAX, output: true },
            Op::Binary(BinaryOp::Add | BinaryOp::Sub) => Needs::NOTHING,
            Op::Binary(BinaryOp::Mul | BinaryOp::Div) => Needs::ALL_INPUTS,
            Op::Unary(UnaryOp::Exp) => Needs { inputs: 0, output: true },
            Op::Unary(UnaryOp::Log | UnaryOp::Silu | UnaryOp::Gelu | UnaryOp::Relu) => Needs { inputs: 1, output: false },
            Op::Unary(UnaryOp::Neg) => Needs::NOTHING,
            Op::CrossEntropy { .. } => Needs { inputs: 1, output: false },
            Op::Gated { .. } => Needs::ALL_INPUTS,
            Op::Affine { .. }
            | Op::Sum { .. }
            | Op::Mean { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Narrow { .. }
            | Op::BroadcastTo { .. }
            | Op::Concat { .. }
            | Op::Rope { .. }
            | Op::Embedding { .. }
            // Reads the gradients it formed in forward ([`Op::forward_with_grads`]).
            | Op::HeadCrossEntropy { .. } => Needs::NOTHING,
        }
    }
}

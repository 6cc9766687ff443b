//! The recorded ops: an enum carrying each op's attributes (data), and the [`Rule`] every op family
//! implements in its own file under `op/`: its forward (the replayable definition), what its backward
//! reads, its backward rule and its FLOPs. [`Op::rule`] is the one place the data meets the code.
use crate::backward::Context;
use cola_tensor::{BinaryOp, Result, Tensor, UnaryOp};

mod attention;
mod elementwise;
mod embedding;
mod gated;
mod loss;
mod matmul;
mod norm;
mod reduce;
mod rope;
mod view;

pub use attention::Attention;
pub use elementwise::Affine;
pub use embedding::Embedding;
pub use gated::Gated;
pub use loss::{CrossEntropy, HeadCrossEntropy};
pub use matmul::Matmul;
pub use norm::RmsNorm;
pub use reduce::{Mean, Sum};
pub use rope::Rope;
pub use view::{BroadcastTo, Concat, Narrow, Permute, Reshape};

/// One differentiable op with its attributes. Token ids and targets are attributes, not inputs: they carry
/// no gradient. Each variant's type documents its inputs and lives with its rules in `op/<family>.rs`.
#[derive(Clone, Debug)]
pub enum Op {
    Matmul,
    Binary(BinaryOp),
    Unary(UnaryOp),
    Affine(Affine),
    Sum(Sum),
    Mean(Mean),
    Reshape(Reshape),
    Permute(Permute),
    Narrow(Narrow),
    BroadcastTo(BroadcastTo),
    Concat(Concat),
    RmsNorm(RmsNorm),
    Rope(Rope),
    Attention(Attention),
    Embedding(Embedding),
    CrossEntropy(CrossEntropy),
    Gated(Gated),
    HeadCrossEntropy(HeadCrossEntropy),
}

/// An op's output and what its forward saved next to it for backward ([`Rule::forward_saving`]).
pub type OutputAndSaved = (Tensor, Option<Tensor>);

/// Per input, the gradient an op formed in forward for an output gradient of 1 (`None` for inputs that
/// want none), [`Rule::forward_with_grads`].
pub type UnitGrads = Vec<Option<Tensor>>;

/// Gradients of every input of one node (`None` where not wanted).
pub type InputGrads = Vec<Option<Tensor>>;

/// Which recorded values an op's backward reads (beyond input shapes, which the tape always keeps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Bit i set: backward reads input i.
    pub inputs: u32,
    pub output: bool,
}

impl Needs {
    pub const NOTHING: Needs = Needs { inputs: 0, output: false };
    pub const ALL_INPUTS: Needs = Needs { inputs: u32::MAX, output: false };

    pub fn input(&self, i: usize) -> bool {
        i < 32 && self.inputs & (1 << i) != 0
    }
}

/// Everything the tape and the profiler know of one op family: the file `op/<family>.rs` that
/// implements it for the family's attribute type is the whole of the op on the autograd side.
pub trait Rule {
    /// The op's name in errors and in the tour.
    fn name(&self) -> &'static str;

    /// The profiler's row for the op's time: ops that do the same kind of work share a family.
    fn family(&self) -> &'static str;

    /// Computes the op's output from its inputs. Recording and replay both call this, so a replayed
    /// value is bit-identical to the recorded one.
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor>;

    /// [`Rule::forward`] and, for an op whose backward reuses one, an auxiliary tensor forward computed
    /// on the way (attention's log-sum-exp on the GPU). The tape keeps the two together in the output's
    /// slot: released together, replayed together by this same call.
    fn forward_saving(&self, inputs: &[&Tensor]) -> Result<OutputAndSaved> {
        Ok((self.forward(inputs)?, None))
    }

    /// [`Rule::forward_saving`]'s pair and, for an op that forms them while recording (the fused head
    /// and loss), the gradients of its inputs for an output gradient of 1 (`Some` where `wants[i]`), which
    /// its backward then reads instead of values. Every other op returns `None` for the gradients.
    fn forward_with_grads(
        &self,
        inputs: &[&Tensor],
        _wants: &[bool],
    ) -> Result<(OutputAndSaved, Option<UnitGrads>)> {
        Ok((self.forward_saving(inputs)?, None))
    }

    /// What backward reads. Everything else can be released as soon as forward no longer needs it.
    fn needs(&self) -> Needs;

    /// Given the output gradient (and the values [`Rule::needs`] asked for), the gradients of the inputs
    /// that want one.
    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads>;

    /// FLOPs (a multiply-add is 2) of one call, forward or `backward`, from the input shapes; a replay
    /// costs its forward. The formulas are documented where they are written.
    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64;

    /// FLOPs of one recorded forward ([`Rule::forward_with_grads`]) when the op wants `wants` gradients:
    /// its forward, plus the gradients an op that forms them there forms.
    fn recorded_forward_flops(&self, inputs: &[&[usize]], _wants: &[bool]) -> u64 {
        self.flops(false, inputs)
    }
}

impl Op {
    /// The rules of this op: its attributes, seen as the family's [`Rule`].
    pub fn rule(&self) -> &dyn Rule {
        match self {
            Op::Matmul => &Matmul,
            Op::Binary(op) => op,
            Op::Unary(op) => op,
            Op::Affine(op) => op,
            Op::Sum(op) => op,
            Op::Mean(op) => op,
            Op::Reshape(op) => op,
            Op::Permute(op) => op,
            Op::Narrow(op) => op,
            Op::BroadcastTo(op) => op,
            Op::Concat(op) => op,
            Op::RmsNorm(op) => op,
            Op::Rope(op) => op,
            Op::Attention(op) => op,
            Op::Embedding(op) => op,
            Op::CrossEntropy(op) => op,
            Op::Gated(op) => op,
            Op::HeadCrossEntropy(op) => op,
        }
    }

    pub fn name(&self) -> &'static str {
        self.rule().name()
    }

    /// [`Rule::forward`].
    pub fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        self.rule().forward(inputs)
    }

    /// [`Rule::forward_saving`].
    pub fn forward_saving(&self, inputs: &[&Tensor]) -> Result<OutputAndSaved> {
        self.rule().forward_saving(inputs)
    }

    /// [`Rule::forward_with_grads`].
    pub fn forward_with_grads(
        &self,
        inputs: &[&Tensor],
        wants: &[bool],
    ) -> Result<(OutputAndSaved, Option<UnitGrads>)> {
        self.rule().forward_with_grads(inputs, wants)
    }

    /// [`Rule::needs`].
    pub fn needs(&self) -> Needs {
        self.rule().needs()
    }
}

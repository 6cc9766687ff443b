//! Retention policies: what a value is (its kind, marked by model code) and where it was recorded (inside a
//! decoder layer or not) decide whether it survives from forward to backward or is rebuilt by replay.
use crate::param::ParamId;

/// What a value is, as far as retention policies care. Model code marks values; policies decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotKind {
    /// A leaf that is not a parameter (data, or a tensor whose gradient a test wants).
    Input,
    Parameter(ParamId),
    /// The input of a decoder layer (the residual stream entering it).
    LayerInput,
    /// A residual-stream value inside a layer (after the attention residual add).
    Residual,
    /// A rank-r code `silu(x @ A)` of a CoLA layer.
    LowRankCode,
    /// The rank-r pre-activation `x @ A` of a CoLA layer, the bottleneck value CoLA-M keeps: its code is
    /// rebuilt from it by one SiLU pass, whereas a kept code would leave SiLU's backward, which reads the
    /// pre-activation, to replay the `x @ A` product.
    LowRankPreActivation,
    /// The output of a decoder layer (the residual stream leaving it: the next layer's input).
    LayerOutput,
    Other,
}

/// Whether a value survives from forward to backward or is rebuilt by replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    Keep,
    Recompute,
}

/// Maps a value's kind and region to its retention. Leaves are always kept (they cannot be replayed), and
/// so is everything recorded outside the decoder layers (embedding, final norm, head, loss).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// Keep every value backward reads (`none`).
    #[default]
    KeepAll,
    /// CoLA-M (docs/METHOD.md section 7): inside a layer keep only the residual stream (layer input, the
    /// post-attention residual) and the rank-r bottleneck values (the pre-activations of the codes, the
    /// same `7 r` values per token); recompute the rest.
    ColaM,
    /// Vanilla per-layer checkpointing: keep only the residual stream between layers.
    Block,
    /// Recompute every non-leaf value, in layers or not (the extreme that tests the replay mechanism).
    RecomputeAll,
}

impl Policy {
    /// The command-line names: `none`, `cola-m`, `block` (and `all`, for tests).
    pub fn parse(name: &str) -> Option<Policy> {
        match name {
            "none" => Some(Policy::KeepAll),
            "cola-m" => Some(Policy::ColaM),
            "block" => Some(Policy::Block),
            "all" => Some(Policy::RecomputeAll),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::KeepAll => "none",
            Policy::ColaM => "cola-m",
            Policy::Block => "block",
            Policy::RecomputeAll => "all",
        }
    }

    pub fn retention(self, kind: SlotKind, in_layer: bool) -> Retention {
        use Retention::{Keep, Recompute};
        use SlotKind::*;
        match (self, kind) {
            (_, Input | Parameter(_)) => Keep,
            (Policy::KeepAll, _) => Keep,
            (Policy::RecomputeAll, _) => Recompute,
            (_, _) if !in_layer => Keep,
            (_, LayerInput | LayerOutput) => Keep,
            (Policy::ColaM, Residual | LowRankPreActivation) => Keep,
            (Policy::ColaM | Policy::Block, _) => Recompute,
        }
    }
}

//! The guided tour's stops (`docs/TOUR.md`): one token walked through one whole training step, in order,
//! each stop a small seeded piece of the stack whose printed values a reader can check by hand (the
//! by-hand computation is printed next to the engine's value where it is short). `examples/tour.rs`
//! prints a stop; `tests/suite/tour.rs` runs every command of the document and compares the output with what
//! the document shows, so the text cannot drift from the code.
//!
//! Files, one per group of stops in the order of the walk: `prologue.rs` (the GEMM and views under
//! everything), `input.rs` (text to ids, the embedding row, RMSNorm), `projection.rs` (a CoLA
//! projection and what CoLA saves), `attention.rs` (RoPE, causal attention), `block.rs` (the gated MLP
//! and the residual stream, head and loss), `backward.rs` (the tape's backward, CoLA-M), `update.rs`
//! (accumulation and clipping, AdamW, the schedule, bf16), `ranks.rs` (two data-parallel ranks),
//! `output.rs` (the checkpoint, a decode step), `check.rs` (the finite differences and formatting the
//! stops share).
mod attention;
mod backward;
mod block;
mod check;
mod input;
mod output;
mod projection;
mod prologue;
mod ranks;
mod update;

use crate::autograd::AutogradError;
use crate::data::DataError;
use crate::dist::DistError;
use crate::kernels::cpu::gemm::PathUnavailable;
use crate::nn::NnError;
use crate::optim::OptimError;
use crate::tensor::TensorError;

/// Why a stop could not print its values.
#[derive(Debug, thiserror::Error)]
pub enum TourError {
    #[error("unknown stop {name:?}; the stops are {known}")]
    UnknownStop { name: String, known: String },
    #[error("the gemm stop: {0}")]
    Gemm(#[from] PathUnavailable),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Autograd(#[from] AutogradError),
    #[error(transparent)]
    Nn(#[from] NnError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("the checkpoint's header: {0}")]
    Header(String),
    #[error("the tokenizer's merges: {0}")]
    Merges(String),
    #[error("a rank of the two-rank stop panicked")]
    RankPanicked,
    #[error("formatting the output: {0}")]
    Format(#[from] std::fmt::Error),
}

pub type Result<T> = std::result::Result<T, TourError>;

/// The stops, in the order of the walk: a prologue (0a, 0b), then stops 1 to 17.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Gemm,
    Views,
    Tokens,
    Embedding,
    RmsNorm,
    Cola,
    Rope,
    Attention,
    Mlp,
    Head,
    Tape,
    Recompute,
    Accumulate,
    Adamw,
    Schedule,
    Bf16,
    Ranks,
    Checkpoint,
    Decode,
}

impl Stop {
    pub const ALL: [Stop; 19] = [
        Stop::Gemm,
        Stop::Views,
        Stop::Tokens,
        Stop::Embedding,
        Stop::RmsNorm,
        Stop::Cola,
        Stop::Rope,
        Stop::Attention,
        Stop::Mlp,
        Stop::Head,
        Stop::Tape,
        Stop::Recompute,
        Stop::Accumulate,
        Stop::Adamw,
        Stop::Schedule,
        Stop::Bf16,
        Stop::Ranks,
        Stop::Checkpoint,
        Stop::Decode,
    ];

    /// The name the example takes on its command line.
    pub fn name(self) -> &'static str {
        match self {
            Stop::Gemm => "gemm",
            Stop::Views => "views",
            Stop::Tokens => "tokens",
            Stop::Embedding => "embedding",
            Stop::RmsNorm => "rmsnorm",
            Stop::Cola => "cola",
            Stop::Rope => "rope",
            Stop::Attention => "attention",
            Stop::Mlp => "mlp",
            Stop::Head => "head",
            Stop::Tape => "tape",
            Stop::Recompute => "recompute",
            Stop::Accumulate => "accumulate",
            Stop::Adamw => "adamw",
            Stop::Schedule => "schedule",
            Stop::Bf16 => "bf16",
            Stop::Ranks => "ranks",
            Stop::Checkpoint => "checkpoint",
            Stop::Decode => "decode",
        }
    }
}

impl std::str::FromStr for Stop {
    type Err = TourError;

    fn from_str(name: &str) -> Result<Stop> {
        Stop::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Stop::ALL.iter().map(|s| s.name()).collect();
            TourError::UnknownStop { name: name.to_string(), known: names.join(", ") }
        })
    }
}

/// The printed output of one stop.
pub fn run(stop: Stop) -> Result<String> {
    let mut out = String::new();
    match stop {
        Stop::Gemm => prologue::gemm(&mut out)?,
        Stop::Views => prologue::views(&mut out)?,
        Stop::Tokens => input::tokens(&mut out)?,
        Stop::Embedding => input::embedding(&mut out)?,
        Stop::RmsNorm => input::rms_norm(&mut out)?,
        Stop::Cola => projection::cola(&mut out)?,
        Stop::Rope => attention::rope(&mut out)?,
        Stop::Attention => attention::attention(&mut out)?,
        Stop::Mlp => block::mlp(&mut out)?,
        Stop::Head => block::head(&mut out)?,
        Stop::Tape => backward::tape(&mut out)?,
        Stop::Recompute => backward::recompute(&mut out)?,
        Stop::Accumulate => update::accumulate(&mut out)?,
        Stop::Adamw => update::adamw(&mut out)?,
        Stop::Schedule => update::schedule(&mut out)?,
        Stop::Bf16 => update::bf16(&mut out)?,
        Stop::Ranks => ranks::ranks(&mut out)?,
        Stop::Checkpoint => output::checkpoint(&mut out)?,
        Stop::Decode => output::decode(&mut out)?,
    }
    Ok(out)
}

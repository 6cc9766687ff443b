//! Model variants, the ablations of docs/EXPERIMENTS.md: the activation between the low-rank factors,
//! the rank, and whether the MLP keeps its own gate SiLU. They are typed options of the one model (fields of
//! [`LlamaConfig`]), not other code paths: a [`Variant`] is what a run asks for on top of its preset.
use crate::config::LlamaConfig;
use crate::error::{NnError, Result};
use cola_autograd::Graph;
use std::fmt;
use std::str::FromStr;

/// The function `σ` of a CoLA layer `y = σ(x @ A) @ B`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowRankActivation {
    /// The paper's: `x * sigmoid(x)`.
    #[default]
    Silu,
    /// GELU in its tanh form (PyTorch's `gelu(approximate="tanh")`).
    Gelu,
    Relu,
    /// No activation: `y = (x @ A) @ B`, the plain low-rank baseline of the paper's comparison.
    Identity,
}

impl LowRankActivation {
    pub const ALL: [LowRankActivation; 4] = [
        LowRankActivation::Silu,
        LowRankActivation::Gelu,
        LowRankActivation::Relu,
        LowRankActivation::Identity,
    ];

    /// The command-line and `state.json` name.
    pub const fn name(self) -> &'static str {
        match self {
            LowRankActivation::Silu => "silu",
            LowRankActivation::Gelu => "gelu",
            LowRankActivation::Relu => "relu",
            LowRankActivation::Identity => "identity",
        }
    }

    /// The name in a Hugging Face `config.json` (`lr_act_type`, a key of transformers' `ACT2FN`): the tanh
    /// GELU is `gelu_pytorch_tanh` there (plain `gelu` being the erf form), the identity `linear`.
    pub const fn hf_name(self) -> &'static str {
        match self {
            LowRankActivation::Gelu => "gelu_pytorch_tanh",
            LowRankActivation::Identity => "linear",
            other => other.name(),
        }
    }

    /// The activation a `config.json`'s `lr_act_type` names, if it is one of these.
    pub fn from_hf_name(name: &str) -> Option<LowRankActivation> {
        LowRankActivation::ALL.into_iter().find(|a| a.hf_name() == name)
    }

    /// Records `σ(pre)`; `None` for the identity, which records no op at all (the code is `pre` itself).
    pub fn apply<G: Graph>(self, g: &mut G, pre: &G::Value) -> Result<Option<G::Value>> {
        Ok(match self {
            LowRankActivation::Silu => Some(g.silu(pre)?),
            LowRankActivation::Gelu => Some(g.gelu(pre)?),
            LowRankActivation::Relu => Some(g.relu(pre)?),
            LowRankActivation::Identity => None,
        })
    }
}

impl fmt::Display for LowRankActivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LowRankActivation {
    type Err = NnError;

    fn from_str(name: &str) -> Result<LowRankActivation> {
        LowRankActivation::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| NnError::InvalidConfig {
            reason: format!("unknown low-rank activation {name:?}; expected silu, gelu, relu or identity"),
        })
    }
}

/// What a run changes of its preset's model; `None` keeps the preset's choice. Only CoLA models have
/// low-rank layers, so any change on a dense model is an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Variant {
    /// `σ` of every CoLA layer (the presets use SiLU).
    pub lowrank_act: Option<LowRankActivation>,
    /// Width of every bottleneck, `1 <= r < min(in, out)` of every projection.
    pub rank: Option<usize>,
    /// The reference's `only_lr_act`: `true` drops the MLP's own gate SiLU (`down(gate(x) * up(x))`),
    /// `false` keeps it.
    pub only_lr_act: Option<bool>,
}

impl Variant {
    /// The preset's model unchanged.
    pub const NONE: Variant = Variant { lowrank_act: None, rank: None, only_lr_act: None };

    pub fn is_none(&self) -> bool {
        *self == Variant::NONE
    }

    /// `config` with this variant's changes, validated: the rank in `1..min(d_model, ffn_dim)`, then
    /// [`LlamaConfig::validate`].
    pub fn apply(&self, config: &LlamaConfig) -> Result<LlamaConfig> {
        if config.rank.is_none() && !self.is_none() {
            return Err(NnError::InvalidConfig {
                reason: format!(
                    "{} applies to CoLA models only: a full-rank model has no low-rank layers (use a cola-* preset)",
                    self.flags()
                ),
            });
        }
        // A bottleneck as wide as a projection's narrower side compresses nothing (its factors then hold
        // more parameters than the dense weight).
        let narrowest = config.d_model.min(config.ffn_dim);
        if let Some(rank) = self.rank.filter(|&r| r == 0 || r >= narrowest) {
            return Err(NnError::InvalidConfig {
                reason: format!(
                    "--rank {rank} must satisfy 1 <= rank < min(d_model, ffn_dim) = {narrowest}, the narrower \
                     side of a projection"
                ),
            });
        }
        let out = self.overlay(config);
        out.validate()?;
        Ok(out)
    }

    /// `config` with this variant's changes, unchecked (for a config [`Variant::apply`] has accepted).
    pub fn overlay(&self, config: &LlamaConfig) -> LlamaConfig {
        let mut out = config.clone();
        if let Some(act) = self.lowrank_act {
            out.lowrank_act = act;
        }
        if self.rank.is_some() && out.rank.is_some() {
            out.rank = self.rank;
        }
        if let Some(only_lr_act) = self.only_lr_act {
            out.mlp_gate_silu = !only_lr_act;
        }
        out
    }

    /// The command-line flags that give this variant, e.g. `--lowrank-act identity --rank 64`; empty for
    /// [`Variant::NONE`].
    pub fn flags(&self) -> String {
        let mut parts = Vec::new();
        if let Some(act) = self.lowrank_act {
            parts.push(format!("--lowrank-act {act}"));
        }
        if let Some(rank) = self.rank {
            parts.push(format!("--rank {rank}"));
        }
        if let Some(only) = self.only_lr_act {
            parts.push(format!("--only-lr-act {only}"));
        }
        parts.join(" ")
    }
}

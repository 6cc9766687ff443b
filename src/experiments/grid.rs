//! The named experiments: which models (preset, variant, retention policy, precision) each one trains, at
//! the experiment sizes (`cola-small`, `full-small`, `full-small-2l`; `cola-60m` for `precision`) or, with
//! `--quick`, at the tiny ones.
use super::{budget_tokens, ExperimentError, BATCH_SIZE, DEFAULT_BUDGET_MINUTES};
use crate::train::Precision;
use cola_autograd::Policy;
use cola_nn::{Family, LowRankActivation, Preset, Size, Variant};
use std::fmt;
use std::str::FromStr;

/// An experiment of docs/EXPERIMENTS.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Experiment {
    /// Full rank against CoLA with SiLU, GELU, ReLU and no activation (the plain low-rank baseline), all
    /// at the same rank.
    Activation,
    /// CoLA at ranks d/8, d/4 and d/2 against full rank.
    Rank,
    /// CoLA against a full-rank model of about the same training FLOPs per token (half the layers).
    Compute,
    /// CoLA trained keeping everything against CoLA-M: the same losses, less memory, more time per step.
    Colam,
    /// `cola-60m` trained in f32, bf16-mixed and pure-bf16: what the bf16 paths cost in validation loss.
    Precision,
}

impl Experiment {
    pub const ALL: [Experiment; 5] = [
        Experiment::Activation,
        Experiment::Rank,
        Experiment::Compute,
        Experiment::Colam,
        Experiment::Precision,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Experiment::Activation => "activation",
            Experiment::Rank => "rank",
            Experiment::Compute => "compute",
            Experiment::Colam => "colam",
            Experiment::Precision => "precision",
        }
    }

    /// Training tokens per run unless `--budget-minutes` or `--tokens` says otherwise: for `precision`, 300
    /// steps of 8 sequences of 256 tokens (614,400); for the others, [`DEFAULT_BUDGET_MINUTES`] of
    /// `cola-small` on the reference CPU.
    pub fn default_tokens(self) -> u64 {
        match self {
            Experiment::Precision => 300 * (BATCH_SIZE * 256) as u64,
            _ => budget_tokens(DEFAULT_BUDGET_MINUTES),
        }
    }
}

impl fmt::Display for Experiment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Experiment {
    type Err = ExperimentError;

    fn from_str(name: &str) -> Result<Experiment, ExperimentError> {
        Experiment::ALL.into_iter().find(|e| e.name() == name).ok_or_else(|| {
            ExperimentError::UnknownExperiment {
                name: name.to_string(),
                valid: Experiment::ALL.map(Experiment::name).join(", "),
            }
        })
    }
}

/// One model of a grid; each is trained once per seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    /// The table's row name and the run directories' prefix, e.g. `cola-small-identity`.
    pub label: String,
    pub preset: Preset,
    pub variant: Variant,
    pub policy: Policy,
    /// The training precision (f32 in every grid but `precision`).
    pub precision: Precision,
}

impl RunSpec {
    fn new(label: &str, preset: Preset, variant: Variant, policy: Policy) -> RunSpec {
        RunSpec { label: label.to_string(), preset, variant, policy, precision: Precision::F32 }
    }

    /// What the model is, whatever the grid calls it: the preset, then for a CoLA model its activation,
    /// rank and MLP gate as resolved against the preset, then the retention policy unless it keeps
    /// everything, then the precision unless it is f32 (so f32 runs keep the keys they had before the
    /// precision was part of a run). Two grids' rows with the same key train the same model (`cola-small`
    /// of `compute` and `cola-small-silu` of `activation` are both `cola-small-silu-r64-gated`), so they
    /// share runs.
    pub fn key(&self) -> String {
        let config = self.variant.overlay(&self.preset.config());
        let mut key = self.preset.name().to_string();
        if let Some(rank) = config.rank {
            let gate = if config.mlp_gate_silu { "gated" } else { "only-lr-act" };
            key.push_str(&format!("-{}-r{rank}-{gate}", config.lowrank_act));
        }
        if self.policy != Policy::KeepAll {
            key.push_str(&format!("-{}", self.policy.name()));
        }
        if self.precision != Precision::F32 {
            key.push_str(&format!("-{}", self.precision.name()));
        }
        key
    }
}

/// The models of `experiment`: at the experiment sizes, or at the tiny one with `quick` (where the
/// compute-matched full-rank model is `full-tiny` itself: a smoke test of the grid, not a measurement).
/// `precision` trains `cola-60m` (`cola-tiny` with `quick`), f32 first so that the table's paired column
/// is each precision minus f32.
pub fn grid(experiment: Experiment, quick: bool) -> Vec<RunSpec> {
    let size = if quick { Size::Tiny } else { Size::Small };
    let cola = Preset::new(Family::Cola, size);
    let full = Preset::new(Family::Full, size);
    let none = Variant::NONE;
    let keep = Policy::KeepAll;
    let name = |suffix: &str| format!("{cola}-{suffix}");
    match experiment {
        Experiment::Activation => {
            let mut specs = vec![RunSpec::new(full.name(), full, none, keep)];
            for act in LowRankActivation::ALL {
                let variant = Variant { lowrank_act: Some(act), ..none };
                specs.push(RunSpec::new(&name(act.name()), cola, variant, keep));
            }
            specs
        }
        Experiment::Rank => {
            let d = cola.config().d_model;
            let mut specs = vec![RunSpec::new(full.name(), full, none, keep)];
            for rank in [d / 8, d / 4, d / 2] {
                let variant = Variant { rank: Some(rank), ..none };
                specs.push(RunSpec::new(&name(&format!("r{rank}")), cola, variant, keep));
            }
            specs
        }
        Experiment::Compute => {
            let matched = if quick { full } else { Preset::new(Family::Full, Size::Small2L) };
            let mut specs = vec![RunSpec::new(cola.name(), cola, none, keep)];
            if !quick {
                specs.push(RunSpec::new(full.name(), full, none, keep));
            }
            specs.push(RunSpec::new(&format!("{}-flops-matched", matched.name()), matched, none, keep));
            specs
        }
        Experiment::Colam => vec![
            RunSpec::new(cola.name(), cola, none, keep),
            RunSpec::new(&name("cola-m"), cola, none, Policy::ColaM),
        ],
        Experiment::Precision => {
            let model = if quick { cola } else { Preset::new(Family::Cola, Size::M60) };
            Precision::ALL
                .into_iter()
                .map(|precision| RunSpec {
                    precision,
                    ..RunSpec::new(&format!("{model}-{precision}"), model, none, keep)
                })
                .collect()
        }
    }
}

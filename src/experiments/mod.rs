//! The paper's ablations as runnable experiments (docs/EXPERIMENTS.md): a named grid of models
//! ([`grid`]) times seeds, each trained through the training library on one fixed token budget
//! ([`runner`]), then a table and a plot of the results ([`report`]). Finished runs are kept in
//! `OUT/runs/` and skipped when the experiment is run again, so an interrupted experiment resumes.
//! `examples/experiments.rs` is a thin shell around [`run`].
pub mod grid;
pub mod report;
pub mod runner;

pub use grid::{grid, Experiment, RunSpec};
pub use report::{mean_std, Row};
pub use runner::{RunResult, RESULT_FILE};

use crate::train::{DeviceChoice, TrainError};
use std::path::{Path, PathBuf};

/// Tokens per second of `cola-small` training on the CPU it was sized on: 8 x 256 tokens per step, f32,
/// 2 threads of an Intel Xeon (Sapphire Rapids class, AVX-512), `llama_cola_350m --model cola-small
/// --steps 12 --batch-size 8 --eval-every 0 --threads 2` on a quiet machine, 2026-12-07 (full-small:
/// 4336, full-small-2l: 7030). `--budget-minutes` turns into a token budget at this rate, so that every
/// model of a grid sees the same tokens.
pub const REFERENCE_TOKENS_PER_S: f64 = 4882.0;

/// Sequences per optimizer step of every run (the CPU default of the training program).
pub const BATCH_SIZE: usize = 8;

/// Minutes per run unless `--budget-minutes` says otherwise (every grid but `precision`, whose default is
/// a number of steps: [`Experiment::default_tokens`]): 878,760 tokens (430 steps of 8 x 256), so that the
/// largest grid (`activation`: 5 models x 2 seeds) trains in about 33 minutes on the reference CPU (8 CoLA
/// runs at 4882 tokens/s, 2 full-rank runs at 4336).
pub const DEFAULT_BUDGET_MINUTES: f64 = 3.0;

/// The training tokens of `minutes` at [`REFERENCE_TOKENS_PER_S`].
pub fn budget_tokens(minutes: f64) -> u64 {
    (minutes * 60.0 * REFERENCE_TOKENS_PER_S) as u64
}

/// Errors of an experiment.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Nn(#[from] cola_nn::NnError),
    #[error("unknown experiment {name:?}; valid experiments: {valid}")]
    UnknownExperiment { name: String, valid: String },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run result {}: {reason}", .path.display())]
    Result { path: PathBuf, reason: String },
    #[error("could not draw {}: {reason}", .path.display())]
    Plot { path: PathBuf, reason: String },
}

impl ExperimentError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExperimentError + '_ {
        move |source| ExperimentError::Io { path: path.to_path_buf(), source }
    }
}

/// How an experiment runs: where, on how many tokens, with which seeds and data.
#[derive(Clone, Debug)]
pub struct Settings {
    pub experiment: Experiment,
    /// Tiny models and a budget of seconds: a smoke test of the whole pipeline.
    pub quick: bool,
    /// The experiment's folder: `results.md`, `loss.png`.
    pub out: PathBuf,
    /// The store of run directories, `<model key>-<tokens>tok-seed<k>/` ([`runner::run_dir`]); experiments
    /// given the same store reuse each other's finished runs of the same model, budget and seed.
    pub runs: PathBuf,
    /// Training tokens of every run.
    pub tokens: u64,
    /// Runs per model, seeded 0, 1, ...
    pub seeds: u64,
    pub device: DeviceChoice,
    /// Corpus and cache as the training program takes them (`None`: Shakespeare, `local/cache`).
    pub data: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    /// Vocabulary of every model, overriding the presets' (the BPE trained on the corpus gets it too).
    pub vocab_size: Option<usize>,
    /// Validation tokens per evaluation.
    pub eval_tokens: usize,
    pub batch_size: usize,
    /// Peak learning rate of every run, overriding the presets' (`None`: each preset's own). A run trained
    /// at another rate is another run: its directory's name carries the rate ([`runner::run_dir`]).
    pub lr: Option<f64>,
    /// Training progress on stderr.
    pub verbose: bool,
}

impl Settings {
    /// `experiment` with its defaults: `budget_minutes` per run at [`REFERENCE_TOKENS_PER_S`], or without
    /// them the experiment's own budget ([`Experiment::default_tokens`]); with `quick`, 24 steps of 4 x 16
    /// tokens whatever the budget. Into `out`.
    pub fn new(
        experiment: Experiment,
        quick: bool,
        out: PathBuf,
        budget_minutes: Option<f64>,
        seeds: u64,
    ) -> Settings {
        let (tokens, eval_tokens, batch_size) = if quick {
            (24 * 4 * 16, 64, 4)
        } else {
            let tokens = budget_minutes.map_or_else(|| experiment.default_tokens(), budget_tokens);
            (tokens, 64 * 256, BATCH_SIZE)
        };
        Settings {
            experiment,
            quick,
            runs: out.join("runs"),
            out,
            tokens,
            seeds,
            device: DeviceChoice::Auto,
            data: None,
            cache_dir: None,
            vocab_size: None,
            eval_tokens,
            batch_size,
            lr: None,
            verbose: false,
        }
    }

    /// The settings a finished run must share to be reused (model, seed and budget are in its directory's
    /// name): corpus, vocabulary, batch, validation tokens, device.
    pub fn setup(&self) -> String {
        let data = self.data.as_ref().map_or("the default corpus".to_string(), |p| p.display().to_string());
        let vocab = self.vocab_size.map_or("the preset's".to_string(), |v| v.to_string());
        let device = self.device.resolve().map_or_else(|_| format!("{:?}", self.device), |d| d.to_string());
        format!(
            "data {data}, vocabulary {vocab}, batch {}, {} validation tokens, device {device}",
            self.batch_size, self.eval_tokens
        )
    }

    /// Tokens per sequence: the preset's context (16 for the tiny presets, 256 otherwise).
    pub fn seq_len(&self, preset: cola_nn::Preset) -> usize {
        preset.config().max_seq_len
    }
}

/// The name part that marks runs and folders trained at a peak learning rate other than the presets':
/// `-lr1e-3` for `Some(0.001)`, empty for `None`.
pub fn lr_tag(lr: Option<f64>) -> String {
    lr.map_or(String::new(), |lr| format!("-lr{lr:e}"))
}

/// What [`run`] did.
#[derive(Clone, Debug)]
pub struct Report {
    pub rows: Vec<Row>,
    pub table: PathBuf,
    pub plot: PathBuf,
    /// Runs trained now, and runs read back from an earlier invocation.
    pub trained: usize,
    pub skipped: usize,
}

/// Runs every model of the experiment's grid for every seed (skipping finished runs), then writes
/// `results.md` and `loss.png` into `settings.out`.
pub fn run(settings: &Settings) -> Result<Report, ExperimentError> {
    if settings.seeds == 0 || settings.tokens == 0 {
        return Err(ExperimentError::Config(format!(
            "--seeds ({}) and the token budget ({}) must be at least 1",
            settings.seeds, settings.tokens
        )));
    }
    if let Some(lr) = settings.lr.filter(|lr| !(lr.is_finite() && *lr > 0.0)) {
        return Err(ExperimentError::Config(format!("--lr must be a positive number, got {lr}")));
    }
    std::fs::create_dir_all(&settings.out).map_err(ExperimentError::io(&settings.out))?;
    let specs = grid(settings.experiment, settings.quick);
    let (mut rows, mut trained, mut skipped) = (Vec::new(), 0, 0);
    for spec in &specs {
        let mut runs = Vec::new();
        for seed in 0..settings.seeds {
            let (result, reused) = runner::run_one(spec, seed, settings)?;
            eprintln!(
                "{} seed {seed}: val loss {:.4} after {} steps ({:.0} tokens/s){}",
                spec.label,
                result.final_val_loss,
                result.steps,
                result.tokens_per_s,
                if reused { ", kept from an earlier run" } else { "" }
            );
            if reused {
                skipped += 1;
            } else {
                trained += 1;
            }
            runs.push(result);
        }
        rows.push(Row { label: spec.label.clone(), runs });
    }
    let title = format!(
        "experiment {}{}: {} training tokens per run, {} seed(s), {}",
        settings.experiment,
        if settings.quick { " (--quick)" } else { "" },
        settings.tokens,
        settings.seeds,
        settings.lr.map_or("each preset's peak lr".to_string(), |lr| format!("peak lr {lr:e}"))
    );
    let table = settings.out.join("results.md");
    std::fs::write(&table, report::table(&title, &rows)).map_err(ExperimentError::io(&table))?;
    let plot = settings.out.join("loss.png");
    report::plot(&plot, &title, &rows)?;
    Ok(Report { rows, table, plot, trained, skipped })
}

//! The paper's ablations as experiments (docs/EXPERIMENTS.md):
//!
//!     cargo run --release --example experiments -- NAME [--quick] [--out DIR] [--budget-minutes M] [--seeds S]
//!         [--lr LR]
//!
//! NAME is `activation`, `rank`, `compute`, `colam` or `precision`. The logic is `cola::experiments`; this
//! parses the command line and prints where the table and the plot are.
use clap::Parser;
use cola::experiments::{self, Experiment, ExperimentError, Settings};
use cola::train::{self, DeviceChoice};
use std::path::PathBuf;
use std::process::ExitCode;

/// Train a named grid of model variants x seeds on one token budget, then write DIR/results.md and
/// DIR/loss.png. Finished runs in DIR/runs/ are kept and skipped when run again.
#[derive(Parser, Debug)]
#[command(name = "experiments")]
struct Args {
    /// activation, rank, compute, colam or precision
    #[arg(value_parser = |s: &str| s.parse::<Experiment>().map_err(|e| e.to_string()))]
    name: Experiment,
    /// Tiny models and a budget of seconds: checks the pipeline, measures nothing
    #[arg(long)]
    quick: bool,
    /// The experiment's folder [default: runs/experiments/NAME, or NAME-quick with --quick]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where finished runs are kept [default: runs/experiments/runs, shared by the experiments so that a
    /// model two grids train (cola-small in activation, rank, compute and colam) is trained once per seed;
    /// with --out or --quick: OUT/runs]
    #[arg(long, value_name = "DIR")]
    runs: Option<PathBuf>,
    /// Minutes of training per run on the reference CPU; the token budget is this times its measured
    /// tokens/s (the same tokens for every model of the grid) [default: 3; precision: 300 steps of 8 x 256
    /// tokens]
    #[arg(long, value_name = "M")]
    budget_minutes: Option<f64>,
    /// Training tokens per run, overriding --budget-minutes
    #[arg(long)]
    tokens: Option<u64>,
    /// Peak learning rate of every run [default: each preset's]; runs at another rate are kept apart
    /// (their directories' names carry it)
    #[arg(long)]
    lr: Option<f64>,
    /// Runs per model, seeded 0..S
    #[arg(long, value_name = "S", default_value_t = 2)]
    seeds: u64,
    /// Training corpus, as the training program's --data [default: Shakespeare's works]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Cache folder for the corpus, tokenizer and token ids [default: $COLA_CACHE or local/cache]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N [default: auto]
    #[arg(long, value_parser = |s: &str| s.parse::<DeviceChoice>().map_err(|e| e.to_string()))]
    device: Option<DeviceChoice>,
    /// Threads of the compute pool [default: one per core]
    #[arg(long)]
    threads: Option<usize>,
    /// Show each run's training progress
    #[arg(long)]
    verbose: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), ExperimentError> {
    if let Some(threads) = args.threads {
        train::set_threads(threads)?;
    }
    let lr = experiments::lr_tag(args.lr);
    let folder = format!("{}{lr}{}", args.name, if args.quick { "-quick" } else { "" });
    let shared = args.out.is_none() && !args.quick;
    let out = args.out.unwrap_or_else(|| PathBuf::from("runs/experiments").join(folder));
    let mut settings = Settings::new(args.name, args.quick, out, args.budget_minutes, args.seeds);
    if let Some(runs) = args.runs {
        settings.runs = runs;
    } else if shared {
        settings.runs = PathBuf::from("runs/experiments/runs");
    }
    if let Some(tokens) = args.tokens {
        settings.tokens = tokens;
    }
    settings.lr = args.lr;
    settings.data = args.data;
    settings.cache_dir = args.cache_dir;
    settings.device = args.device.unwrap_or(DeviceChoice::Auto);
    settings.verbose = args.verbose;
    let report = experiments::run(&settings)?;
    println!(
        "{} runs trained, {} kept from earlier; table {}, plot {}",
        report.trained,
        report.skipped,
        report.table.display(),
        report.plot.display()
    );
    print!("{}", std::fs::read_to_string(&report.table).unwrap_or_default());
    Ok(())
}

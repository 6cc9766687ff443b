//! Pre-trains a LLaMA model with CoLA low-rank activations (COLA.md), by default cola-350m on the
//! Shakespeare corpus, with the paper's recipe scaled to the CPU.
//!
//!     cargo run --release --example llama_cola_350m                       # train, defaults
//!     cargo run --release --example llama_cola_350m -- --model cola-60m --steps 200
//!     cargo run --release --example llama_cola_350m -- --resume runs/cola-60m-...   # continue
//!     cargo run --release --example llama_cola_350m -- --resume DIR --eval-only     # validation ppl
//!     cargo run --release --example llama_cola_350m -- --model cola-60m --profile   # time per op family
//!
//! The work happens in `cola::train`; this file parses arguments, prints, and sets the exit code
//! (0 done, 1 error, 130 stopped by Ctrl-C after saving a checkpoint).
use clap::Parser;
use cola::train::{self, DeviceChoice, Options, RunOutcome, TrainError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Pre-train LLaMA with CoLA low-rank activations (or the full-rank baseline) on a text corpus.
///
/// Unset values come from the preset's recipe (COLA.md section 6), scaled to the CPU, or on --resume
/// from the checkpoint. Ctrl-C saves a checkpoint and stops; --resume DIR continues bit for bit.
#[derive(Parser, Debug)]
#[command(name = "llama_cola_350m", version)]
struct Args {
    /// Model preset: cola-{60m,130m,350m,1b,7b}, full-{60m,...} (dense baseline), cola-tiny, full-tiny
    /// [default: cola-350m]
    #[arg(long)]
    model: Option<String>,
    /// Where to train: auto (the first GPU when one is usable, else the CPU), cpu, cuda or cuda:N
    /// [default: auto]
    #[arg(long)]
    device: Option<String>,
    /// Numeric precision: bf16-mixed (bf16 weights and activations, f32 accumulation, f32 master weights
    /// and AdamW state), pure-bf16 (the paper's setting) or f32 [default: bf16-mixed on a GPU, f32 on
    /// the CPU]
    #[arg(long, alias = "dtype", value_parser = ["f32", "bf16-mixed", "pure-bf16"])]
    precision: Option<String>,
    /// Training corpus: .txt file or folder, .jsonl / .json.gz (a "text" field per line), or .bin of u16
    /// token ids [default: Shakespeare's works, fetched once]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validation corpus [default: 1% of the training sequences, held out by seed]
    #[arg(long)]
    val_data: Option<PathBuf>,
    /// A tokenizer.json [default: a byte-level BPE of the model's vocabulary trained once on the corpus]
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Model vocabulary size, overriding the preset's 32000
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Optimizer updates of the schedule [default: the recipe's total, e.g. 60000 for 350m]
    #[arg(long)]
    steps: Option<u64>,
    /// Warmup updates [default: the recipe's, scaled down with --steps]
    #[arg(long)]
    warmup: Option<u64>,
    /// Peak learning rate [default: the recipe's, e.g. 3e-3 for 350m]
    #[arg(long)]
    lr: Option<f64>,
    /// Sequences per optimizer update [default: 8 on the CPU; the paper uses 512]
    #[arg(long)]
    batch_size: Option<usize>,
    /// Sequences per forward/backward pass; gradients are accumulated up to --batch-size
    /// [default: 4 for 350m, 8 for 60m/130m]
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Tokens per sequence [default: 256]
    #[arg(long)]
    seq_len: Option<usize>,
    /// Seed of the initial weights, the validation split and the data order [default: 0]
    #[arg(long)]
    seed: Option<u64>,
    /// Serve training sequences in corpus order instead of a seeded shuffle per epoch
    #[arg(long)]
    no_shuffle: bool,
    /// Evaluate every N updates and after the last [default: steps/20, at most 1000]; 0 never
    #[arg(long)]
    eval_every: Option<u64>,
    /// Validation tokens per periodic evaluation [default: 16384]
    #[arg(long)]
    eval_tokens: Option<usize>,
    /// Checkpoint every N updates, and always at the end and on Ctrl-C [default: steps/10, at most 1000]
    #[arg(long)]
    save_every: Option<u64>,
    /// Exempt RMSNorm weights and the embedding from weight decay
    #[arg(long)]
    no_decay_norms_embeddings: bool,
    /// Run directory [default: runs/<model>-<date>-<time>; on --resume the checkpoint's run directory]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from a checkpoint folder or from the latest checkpoint of a run directory
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// With --resume: print validation loss and perplexity over the whole validation set, then exit
    #[arg(long, requires = "resume")]
    eval_only: bool,
    /// Save a checkpoint and stop after this many updates (the schedule still spans --steps)
    #[arg(long)]
    stop_after: Option<u64>,
    /// Threads of the compute pool [default: one per core]
    #[arg(long)]
    threads: Option<usize>,
    /// A malformed JSON line in the corpus is an error instead of being skipped and counted
    #[arg(long)]
    strict: bool,
    /// Cache folder for the corpus, tokenizer and token ids [default: $COLA_CACHE or local/cache]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// What the tape keeps for backward: none (everything backward reads), cola-m (the residual stream and
    /// the rank-r codes; CoLA presets) or block (each layer's input). Same numbers, less memory
    /// [default: none]
    #[arg(long, value_parser = ["none", "cola-m", "block"])]
    recompute: Option<String>,
    /// Print parameter counts, FLOPs per token and the measured activation memory of one micro-batch under
    /// each applicable --recompute policy, then exit without training
    #[arg(long)]
    audit: bool,
    /// Train one warm-up step and --steps measured steps [default: 3], print calls, time, share and FLOPs
    /// per op family and direction (forward, backward, recompute, optimizer), then exit without saving
    #[arg(long, conflicts_with_all = ["audit", "resume"])]
    profile: bool,
    /// With --audit or --profile: print the same as one JSON object
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode, TrainError> {
    if let Some(threads) = args.threads {
        train::set_threads(threads)?;
    }
    if args.audit {
        let model = args.model.unwrap_or_else(|| "cola-350m".into());
        let micro_batch = args.micro_batch.unwrap_or_else(|| train::cpu_micro_batch(&model));
        let seq_len = args.seq_len.unwrap_or(256);
        let report = cola::audit::audit(&model, micro_batch, seq_len).map_err(TrainError::from)?;
        if args.json {
            print_json(&report)?;
        } else {
            print!("{report}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json && !args.profile {
        return Err(TrainError::Config("--json goes with --audit or --profile".into()));
    }
    let options = Options {
        model: args.model,
        vocab_size: args.vocab_size,
        device: args.device.as_deref().map(str::parse::<DeviceChoice>).transpose()?,
        precision: args.precision,
        data: args.data,
        val_data: args.val_data,
        tokenizer: args.tokenizer,
        steps: args.steps,
        warmup: args.warmup,
        lr: args.lr,
        batch_size: args.batch_size,
        micro_batch: args.micro_batch,
        seq_len: args.seq_len,
        seed: args.seed,
        no_shuffle: args.no_shuffle,
        eval_every: args.eval_every,
        eval_tokens: args.eval_tokens,
        save_every: args.save_every,
        no_decay_norms_embeddings: args.no_decay_norms_embeddings,
        strict: args.strict,
        out: args.out,
        resume: args.resume,
        eval_only: args.eval_only,
        stop_after: args.stop_after,
        cache_dir: args.cache_dir,
        recompute: args.recompute,
    };
    let (mut config, notes) = train::resolve(&options)?;
    for note in notes {
        eprintln!("note: {note}");
    }
    config.verbose = true;
    if args.profile {
        let steps = args.steps.unwrap_or(train::profile::DEFAULT_MEASURED_STEPS);
        let report = train::profile(&config, train::profile::DEFAULT_WARMUP_STEPS, steps)?;
        if args.json {
            print_json(&report)?;
        } else {
            print!("{report}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    config.interrupt = Some(ctrl_c_flag());

    match train::run(&config)? {
        RunOutcome::Evaluated(summary) => {
            match summary.result {
                Some(r) => println!(
                    "{} (step {}): val loss {:.4}, perplexity {:.2} over {} sequences ({} targets)",
                    summary.checkpoint.display(),
                    summary.step,
                    r.loss,
                    r.perplexity,
                    r.sequences,
                    r.targets
                ),
                None => println!("{}: the validation set has no targets", summary.checkpoint.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        RunOutcome::Trained(summary) if summary.interrupted => Ok(ExitCode::from(130)),
        RunOutcome::Trained(_) => Ok(ExitCode::SUCCESS),
    }
}

fn print_json(report: &impl serde::Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(report).map_err(|e| TrainError::Config(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// A flag the first Ctrl-C sets (the run saves after the current step and stops); a second Ctrl-C
/// exits at once, which is safe because checkpoints are renamed into place only when complete.
fn ctrl_c_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    let installed = ctrlc::set_handler(move || {
        if seen.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without saving; the last complete checkpoint stays");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing this step, then saving a checkpoint (Ctrl-C again quits at once)");
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will not save a checkpoint: {e}");
    }
    flag
}

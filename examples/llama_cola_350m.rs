//! Pre-trains a LLaMA model with CoLA low-rank activations (docs/METHOD.md), by default cola-350m on the
//! Shakespeare corpus, with the paper's recipe scaled to the CPU.
//!
//!     cargo run --release --example llama_cola_350m                       # train, defaults
//!     cargo run --release --example llama_cola_350m -- --model cola-60m --steps 200
//!     cargo run --release --example llama_cola_350m -- --resume runs/cola-60m-...   # continue
//!     cargo run --release --example llama_cola_350m -- --resume DIR --eval-only     # validation ppl
//!     cargo run --release --example llama_cola_350m -- --model cola-60m --profile   # time per op family
//!
//! Data parallel over N processes, same flags (`--batch-size` stays the global batch); rank 0 prints
//! and writes the run directory. Needs a build with `--features mpi`:
//!
//!     mpirun -np 2 target/release/examples/llama_cola_350m --model cola-60m --threads 1
//!
//! The work happens in `cola::train`, whose `Options` is the command line (`--help` lists it); this file
//! parses it, prints, and sets the exit code: 0 done, 1 error, 75 (`train::EXIT_STOPPED`) stopped by
//! SIGTERM, SIGUSR1 or Ctrl-C after saving a checkpoint (resume with `--resume`).
use clap::Parser;
use cola::dist::{self, Collective};
use cola::train::{self, DeviceChoice, Options, RunOutcome, TrainError};
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let options = Options::parse();
    let world = match dist::detect() {
        Ok(world) => world,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match run(options, &world) {
        Ok(code) => code,
        Err(error) if world.world_size() > 1 => {
            // The other ranks may be waiting in a collective call for this one: stop them all.
            eprintln!(
                "error on rank {} of {}: {error}; stopping every rank",
                world.rank(),
                world.world_size()
            );
            world.abort(1)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: Options, world: &Arc<dyn Collective>) -> Result<ExitCode, TrainError> {
    if let Some(threads) = options.threads {
        train::set_threads(threads)?;
    }
    if options.audit {
        // Every rank would measure and print the same report.
        if !world.is_root() {
            return Ok(ExitCode::SUCCESS);
        }
        let plan = train::plan::audit_plan(&options)?;
        if let Some(note) = plan.vocab.note(plan.model) {
            eprintln!("note: {note}");
        }
        let report =
            cola::audit::audit(plan.model, &plan.variant, plan.vocab.size(), plan.micro_batch, plan.seq_len)
                .map_err(TrainError::from)?
                .per_rank(world.world_size(), options.zero == 1);
        if options.json {
            print_json(&report)?;
        } else {
            print!("{report}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (mut config, notes) = train::resolve(&options)?;
    if world.is_root() {
        for note in notes {
            eprintln!("note: {note}");
        }
    }
    if world.world_size() > 1 && config.target_device()? != cola::tensor::Device::Cpu {
        // One GPU per rank: the launcher numbers the ranks of each node.
        config.device = DeviceChoice::Cuda(dist::local_rank());
        config.resolve_device()?;
    }
    config.collective = Some(world.clone());
    config.verbose = world.is_root();
    if options.profile {
        let steps = options.steps.unwrap_or(train::profile::DEFAULT_MEASURED_STEPS);
        let report = train::profile(&config, train::profile::DEFAULT_WARMUP_STEPS, steps)?;
        if !world.is_root() {
            return Ok(ExitCode::SUCCESS);
        }
        if options.json {
            print_json(&report)?;
        } else {
            print!("{report}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    match train::stop::install_handlers() {
        Ok(request) => config.interrupt = Some(request),
        Err(e) => eprintln!("warning: a stop signal will not save a checkpoint: {e}"),
    }

    match train::run(&config)? {
        RunOutcome::Evaluated(_) if !world.is_root() => Ok(ExitCode::SUCCESS),
        RunOutcome::Evaluated(summary) if options.json => {
            print_json(&summary)?;
            Ok(ExitCode::SUCCESS)
        }
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
        RunOutcome::Trained(summary) => match summary.stopped_by {
            Some(signal) => {
                if world.is_root() {
                    // The one line a job log needs: what stopped the run, where, and how to go on.
                    let checkpoint =
                        summary.checkpoint.as_ref().map_or("none".into(), |d| d.display().to_string());
                    eprintln!(
                        "stopped by {signal} at step {}: checkpoint {checkpoint} saved; continue with --resume {} \
                         (exit status {})",
                        summary.steps,
                        summary.out.display(),
                        train::EXIT_STOPPED
                    );
                }
                Ok(ExitCode::from(train::EXIT_STOPPED))
            }
            None => Ok(ExitCode::SUCCESS),
        },
    }
}

fn print_json(report: &impl serde::Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(report).map_err(|e| TrainError::Config(e.to_string()))?;
    println!("{text}");
    Ok(())
}

//! A whole run: data, model and optimizer (fresh or from a checkpoint), the step loop with its
//! evaluations, logs and checkpoints, and the `--eval-only` path.
use super::boundary::{self, SaveClock};
use super::checkpoint::{self, RngState, RunState};
use super::eval::{evaluate, EvalResult};
use super::lock::RunLock;
use super::metrics::{EvalRecord, MetricsLog, StepRecord};
use super::prepare::{prepare, Prepared};
use super::progress::{format_duration, long_run_hint, Progress};
use super::stop::StopSignal;
use super::trainer::{StepError, Trainer};
use super::{Result, Retention, TrainConfig, TrainError};
use crate::data::{DataState, Dataset, TrainBatches};
use cola_tensor::Rng;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a training run did.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    pub out: PathBuf,
    /// Updates applied in total (including those before a resume).
    pub steps: u64,
    /// Train loss of the last update of this invocation.
    pub last_loss: Option<f64>,
    pub last_eval: Option<EvalResult>,
    /// The newest checkpoint.
    pub checkpoint: Option<PathBuf>,
    /// The signal that stopped the run after a checkpoint (any rank's, agreed by all), before `steps`.
    pub stopped_by: Option<StopSignal>,
    /// Non-pad input tokens trained on in total.
    pub tokens: u64,
    /// Mean training throughput of this invocation (evaluations and saves excluded).
    pub tokens_per_s: f64,
}

/// What `--eval-only` measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalSummary {
    pub checkpoint: PathBuf,
    pub step: u64,
    pub result: Option<EvalResult>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    Trained(TrainSummary),
    Evaluated(EvalSummary),
}

/// Sizes rayon's global pool (`--threads`); call before any parallel work.
pub fn set_threads(threads: usize) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| TrainError::Config(format!("--threads {threads}: {e}")))
}

/// Trains (or with `eval_only` evaluates) as `config` says. See the module docs of [`super`].
///
/// Under several ranks ([`TrainConfig::collective`]) every rank trains and loads checkpoints; rank 0
/// alone prints, evaluates, and writes the run directory (metrics, plot, tokenizer, checkpoints).
pub fn run(config: &TrainConfig) -> Result<RunOutcome> {
    let quiet;
    let config = match config.world().is_root() {
        true => config,
        false => {
            quiet = TrainConfig { verbose: false, ..config.clone() };
            &quiet
        }
    };
    let device = config.target_device()?;
    config.validate_on(device)?;
    let say = |message: &str| {
        if config.verbose {
            eprintln!("{message}");
        }
    };
    let resume = match &config.resume {
        Some(path) => {
            let dir = checkpoint::locate(path)?;
            let state = checkpoint::read_state(&dir)?;
            Some((dir, state))
        }
        None => None,
    };
    // Training writes the run directory, so it holds the directory's lock until it returns (the guard
    // lives to the end of this function); --eval-only only reads a checkpoint, and under several ranks
    // rank 0 alone writes (and locks) the directory.
    let writes = !config.eval_only && config.world().is_root();
    let lock = if writes { Some(RunLock::acquire(&config.out)?) } else { None };
    if let Some(note) = lock.as_ref().and_then(RunLock::note) {
        say(&format!("note: {note}"));
    }
    if let (None, Some((step, dir))) = (&resume, checkpoint::list(&config.out).pop()) {
        return Err(TrainError::Config(format!(
            "{} already holds a run (checkpoint at step {step}: {}); pass --resume {} to continue it, or \
             choose another --out",
            config.out.display(),
            dir.display(),
            config.out.display()
        )));
    }
    let Prepared { dataset, mut trainer, rng } =
        prepare(config, device, resume.as_ref().map(|(dir, _)| dir.as_path()))?;

    if config.eval_only {
        let (dir, state) =
            resume.ok_or_else(|| TrainError::Config("--eval-only needs --resume DIR".into()))?;
        checkpoint::load(&dir, &state, &mut trainer.model, &mut trainer.optimizer)?;
        say(&format!("evaluating {} (step {}) on every validation sequence", dir.display(), state.step));
        let batches = dataset.val_batches(config.micro_batch)?;
        let result = evaluate(&trainer.model, batches, config.micro_batch, None, &*config.world())?;
        return Ok(RunOutcome::Evaluated(EvalSummary { checkpoint: dir, step: state.step, result }));
    }

    let root = config.world().is_root();
    if root {
        std::fs::create_dir_all(&config.out).map_err(TrainError::io(&config.out))?;
    }
    let retention =
        Retention::of_run(config, resume.as_ref().map(|(dir, state)| (dir.as_path(), state.step)));
    let (rng, data_state, tokens, elapsed, last_checkpoint) = match &resume {
        Some((dir, state)) => {
            trainer.load_checkpoint(dir, state)?;
            trainer.step = state.step;
            if state.threads != rayon::current_num_threads() {
                say(&format!(
                    "note: the checkpoint was trained with {} threads, this run has {}: the f32 rounding of \
                     the matrix products differs, so the run will not match an uninterrupted one bit for bit \
                     (pass --threads {})",
                    state.threads,
                    rayon::current_num_threads(),
                    state.threads
                ));
            }
            let rng = Rng { seed: state.rng.seed, counter: state.rng.counter };
            (rng, state.data, state.tokens, state.elapsed_s, Some(dir.clone()))
        }
        None => (rng.unwrap_or(Rng::new(config.seed)), DataState::default(), 0, 0.0, None),
    };
    let batches = dataset.train_batches_from(config.batch_size, data_state)?;
    if let Some(path) = root.then(|| dataset.save_tokenizer(&config.out)).transpose()?.flatten() {
        say(&format!("tokenizer: saved to {}", path.display()));
    }
    let metrics =
        root.then(|| MetricsLog::open(&config.out, resume.as_ref().map(|(_, s)| s.step))).transpose()?;
    let last_val = resume.as_ref().and_then(|(_, s)| s.last_val_loss);
    say(&format!(
        "training: {} updates of {} sequences x {} tokens (micro-batches of {}), peak lr {:e}, warmup {}, \
         cosine to 10%; AdamW betas 0.9/0.999, eps 1e-8, weight decay {}{}; clip 0.5; {} threads; {device} {}. \
         Tokens counted are non-pad input tokens.",
        config.steps,
        config.batch_size,
        config.seq_len,
        config.micro_batch,
        config.lr,
        config.warmup,
        config.weight_decay,
        if config.no_decay_norms_embeddings { " (not on norms and embedding)" } else { " on all parameters" },
        rayon::current_num_threads(),
        config.precision,
    ));
    let world = config.world();
    if world.world_size() > 1 {
        say(&format!(
            "data parallel: {} ranks of {} sequences each per update; gradients summed in buckets of {}{}",
            world.world_size(),
            config.batch_size / world.world_size(),
            crate::audit::human_bytes(config.bucket_bytes as f64),
            if config.overlap { ", each started as the last backward finishes it" } else { "" }
        ));
    }
    say(&format!(
        "optimizer: {} of AdamW state per rank{}",
        crate::audit::human_bytes(trainer.optimizer_bytes() as f64),
        if config.zero {
            format!(" (ZeRO-1: the state of 1/{} of the parameters on each rank)", world.world_size())
        } else {
            String::new()
        }
    ));
    say(&format!(
        "run directory: {} (metrics.jsonl, loss.png, tokenizer.json, checkpoint-<step>/); resume with --resume {}",
        config.out.display(),
        config.out.display()
    ));
    let mut looper = Loop {
        config,
        dataset: &dataset,
        trainer,
        batches,
        metrics,
        rng,
        tokens,
        elapsed_before: elapsed,
        started: Instant::now(),
        last_checkpoint,
        retention,
        last_val,
        last_eval: None,
        clock: SaveClock::new(config.save_every_minutes),
    };
    let outcome = looper.train().map(RunOutcome::Trained);
    drop(lock);
    outcome
}

/// The state of the step loop.
struct Loop<'a> {
    config: &'a TrainConfig,
    dataset: &'a Dataset,
    trainer: Trainer,
    batches: TrainBatches,
    /// Rank 0's log; `None` on the other ranks.
    metrics: Option<MetricsLog>,
    rng: Rng,
    tokens: u64,
    elapsed_before: f64,
    started: Instant,
    last_checkpoint: Option<PathBuf>,
    retention: Retention,
    last_val: Option<f64>,
    last_eval: Option<EvalResult>,
    /// When a time-based checkpoint is due (`--save-every-minutes`); rank 0's decides.
    clock: SaveClock,
}

impl Loop<'_> {
    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    fn train(&mut self) -> Result<TrainSummary> {
        let config = self.config;
        let start = self.trainer.step;
        let stop_at = config.stop_after.map_or(config.steps, |s| s.min(config.steps));
        let progress = Progress::new(config.verbose, start, config.steps);
        if start >= stop_at {
            progress.note(&format!("already at step {start} of {stop_at}: nothing to train"));
        }
        let world = config.world();
        let (mut train_time, mut run_tokens, mut last_loss) = (Duration::ZERO, 0u64, None);
        let (mut reduce_time, mut reduce_bytes) = (Duration::ZERO, 0usize);
        let (mut reduce_buckets, mut reduce_early) = (0usize, 0usize);
        let mut stopped_by = None;
        while self.trainer.step < stop_at {
            // Every rank takes the same decisions here: a signal seen by any rank stops all of them at
            // this step, and rank 0's clock decides the time-based checkpoint.
            let signal = config.interrupt.as_ref().and_then(|request| request.get());
            let boundary = boundary::agree(&*world, signal, self.clock.due())?;
            if boundary.stop.is_some() {
                stopped_by = boundary.stop;
                break;
            }
            if boundary.save && self.trainer.step > start {
                self.save(&progress)?;
            }
            if self.trainer.step == start {
                progress.status("first step...");
            }
            let batch = self.batches.next_batch();
            let began = Instant::now();
            let stats = match self.trainer.train_step(&batch) {
                Ok(stats) => stats,
                Err(StepError::Failed(error)) => return Err(error),
                Err(StepError::NonFinite(bad)) => {
                    progress.finish();
                    return Err(TrainError::Diverged {
                        step: bad.step + 1,
                        what: bad.what,
                        value: bad.value,
                        lr: bad.lr,
                        last_checkpoint: self.last_checkpoint.clone(),
                    });
                }
            };
            let took = began.elapsed();
            train_time += took;
            if let Some(reduction) = self.trainer.last_reduction() {
                (reduce_time, reduce_bytes) = (reduce_time + reduction.time, reduction.bytes);
                reduce_buckets += reduction.buckets;
                reduce_early += reduction.started_early;
            }
            run_tokens += stats.tokens;
            self.tokens += stats.tokens;
            last_loss = Some(stats.loss);
            let tokens_per_s = stats.tokens as f64 / took.as_secs_f64().max(1e-9);
            let done = self.trainer.step;
            let elapsed_s = self.elapsed();
            if let Some(metrics) = self.metrics.as_mut() {
                metrics.log_step(StepRecord {
                    step: done,
                    loss: stats.loss,
                    lr: stats.lr,
                    grad_norm: stats.grad_norm,
                    tokens: self.tokens,
                    tokens_per_s,
                    elapsed_s,
                })?;
                let per_step = train_time.as_secs_f64() / (done - start) as f64;
                let eta = Duration::from_secs_f64(per_step * (stop_at - done) as f64);
                progress.step(&stats, tokens_per_s, eta);
                if let Some(hint) = (done == start + 1).then(|| long_run_hint(eta)).flatten() {
                    progress.note(&hint);
                }
            }
            let last = done == stop_at;
            let eval_due = done.is_multiple_of(config.eval_every.max(1)) || done == config.steps;
            if config.eval_every > 0 && eval_due {
                self.evaluate(&progress)?;
            }
            if (config.save_every > 0 && done.is_multiple_of(config.save_every)) || last {
                self.save(&progress)?;
            }
        }
        if let Some(signal) = stopped_by {
            progress.note(&format!("{signal} at step {}: saving a checkpoint", self.trainer.step));
            self.save(&progress)?;
        }
        progress.finish();
        let tokens_per_s = run_tokens as f64 / train_time.as_secs_f64().max(1e-9);
        if config.verbose {
            let mut line = format!(
                "{} at step {}/{}: {} tokens in total, {:.0} tokens/s over this session's training time",
                match (stopped_by.is_some(), self.trainer.step < config.steps) {
                    (true, _) => "stopped",
                    (false, true) => "paused (--stop-after)",
                    (false, false) => "done",
                },
                self.trainer.step,
                config.steps,
                self.tokens,
                tokens_per_s
            );
            if let Some(loss) = last_loss {
                line += &format!(", last train loss {loss:.4}");
            }
            if reduce_bytes > 0 {
                line += &format!(
                    ", gradient all-reduce {:.1} MiB, blocked {:.1} ms per update after backward (waits for the \
                     slowest rank included), {reduce_early} of {reduce_buckets} bucket sums started during backward",
                    reduce_bytes as f64 / (1 << 20) as f64,
                    1e3 * reduce_time.as_secs_f64() / (self.trainer.step - start).max(1) as f64
                );
            }
            if let Some(val) = self.last_val {
                line += &format!(", last val loss {val:.4} (ppl {:.2})", val.exp());
            }
            if let Some(dir) = &self.last_checkpoint {
                line += &format!(
                    "; checkpoint {} (continue with --resume {})",
                    dir.display(),
                    config.out.display()
                );
            }
            eprintln!("{line}");
        }
        Ok(TrainSummary {
            out: config.out.clone(),
            steps: self.trainer.step,
            last_loss,
            last_eval: self.last_eval,
            checkpoint: self.last_checkpoint.clone(),
            stopped_by,
            tokens: self.tokens,
            tokens_per_s,
        })
    }

    /// Validation loss over the first `eval_tokens` tokens' worth of validation sequences (always the
    /// same ones, so the curve compares like with like), shared among the ranks; rank 0 logs, plots and
    /// reports it.
    fn evaluate(&mut self, progress: &Progress) -> Result<()> {
        let config = self.config;
        progress.status("evaluating...");
        let began = Instant::now();
        let sequences = config.eval_tokens.div_ceil(config.seq_len).max(1);
        let batches = self.dataset.val_batches(config.micro_batch)?;
        let world = config.world();
        let Some(result) =
            evaluate(&self.trainer.model, batches, config.micro_batch, Some(sequences), &*world)?
        else {
            progress.note("eval: no validation targets to evaluate");
            return Ok(());
        };
        let step = self.trainer.step;
        let Some(metrics) = self.metrics.as_mut() else { return Ok(()) };
        metrics.log_eval(EvalRecord { step, val_loss: result.loss, val_ppl: result.perplexity })?;
        self.last_val = Some(result.loss);
        self.last_eval = Some(result);
        progress.note(&format!(
            "step {step}: val loss {:.4}, perplexity {:.2} ({} sequences, {} targets, {})",
            result.loss,
            result.perplexity,
            result.sequences,
            result.targets,
            format_duration(began.elapsed())
        ));
        progress.note(&super::sample::sample_line(&self.trainer.model, self.dataset));
        progress.restore();
        if let Err(warning) = metrics.plot(&format!("{} on {}", config.model, data_name(config))) {
            progress.note(&format!("warning: {warning}; training goes on"));
        }
        Ok(())
    }

    /// Writes a checkpoint of this step (rank 0; every rank restarts its clock).
    fn save(&mut self, progress: &Progress) -> Result<()> {
        self.clock.reset();
        // Under ZeRO-1 every rank takes part in gathering the moments.
        let gathered = self.trainer.gathered_optimizer()?;
        if !self.config.world().is_root() {
            return Ok(());
        }
        progress.status("saving a checkpoint...");
        let began = Instant::now();
        let state = RunState::new(
            self.trainer.step,
            self.trainer.optimizer.step_count(),
            self.tokens,
            self.elapsed(),
            self.batches.state(),
            RngState { seed: self.rng.seed, counter: self.rng.counter },
            self.last_val,
            // The vocabulary the model was built with, also when the config left it to the run.
            TrainConfig { vocab_size: Some(self.trainer.model.config().vocab_size), ..self.config.clone() },
        );
        let (dir, written) = checkpoint::save(
            &self.config.out,
            &self.retention,
            state,
            &self.trainer.model,
            gathered.as_ref().unwrap_or(&self.trainer.optimizer),
            self.dataset.tokenizer(),
        )?;
        progress.restore();
        if written {
            progress.note(&format!("saved {} ({})", dir.display(), format_duration(began.elapsed())));
        }
        self.last_checkpoint = Some(dir);
        Ok(())
    }
}

fn data_name(config: &TrainConfig) -> String {
    config
        .data
        .as_deref()
        .and_then(Path::file_name)
        .map_or("Shakespeare".into(), |n| n.to_string_lossy().into_owned())
}

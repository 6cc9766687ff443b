//! `--profile`: where the time of a training step goes, per op family and direction.
//!
//! The run is set up as a normal run would be ([`super::prepare::prepare`]), then trains `warmup` steps that
//! are not counted (first-touch allocations, caches, kernel compilation on a GPU) and `steps` measured
//! ones with a [`Profiler`] on the trainer: each tape op is timed where it runs (forward, backward,
//! recompute) and the trainer times its optimizer phases. The measured time of a step also covers what
//! no row times (the next batch, loss scaling, bookkeeping between ops); that is the explicit `other`
//! row, so the rows sum to the measured step. Nothing is written to the run directory.
//!
//! On a GPU every timed op is bracketed by device synchronisations, so a profiled step is slower than a
//! plain one, but each row is the time of its own kernels.
use super::options::{by_name, policy_name};
use super::prepare::{prepare, Prepared};
use super::trainer::StepError;
use super::{Precision, Result, TrainConfig, TrainError};
use crate::audit::flops_per_token;
use crate::data::DataState;
use cola_autograd::profile::{Direction, Profiler};
use cola_autograd::Policy;
use cola_nn::Preset;
use cola_tensor::Device;
use serde::Serialize;
use std::time::Instant;

/// Steps trained before measuring unless the caller says otherwise.
pub const DEFAULT_WARMUP_STEPS: u64 = 1;
/// Measured steps unless `--steps` says otherwise: enough for a mean, short on a CPU.
pub const DEFAULT_MEASURED_STEPS: u64 = 3;

/// A row's direction by name, `other` for the untimed rest.
fn direction_name<S: serde::Serializer>(
    direction: &Option<Direction>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(direction.map_or("other", Direction::name))
}

/// One row of a [`StepProfile`]: totals over the measured steps.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileRow {
    /// Where the time went; `None` for the untimed rest (`other` in the table and the JSON).
    #[serde(serialize_with = "direction_name")]
    pub direction: Option<Direction>,
    /// The op family (`cola_autograd::profile::family`), or `other`.
    pub family: &'static str,
    pub calls: u64,
    pub seconds: f64,
    /// Fraction of the measured time (the rows sum to 1).
    pub share: f64,
    /// FLOPs counted by the formulas of `cola_autograd::profile::flops` (0 for `other`).
    pub flops: u64,
    pub gflops_per_s: f64,
}

/// What `--profile` measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepProfile {
    #[serde(serialize_with = "by_name::serialize")]
    pub model: Preset,
    #[serde(serialize_with = "by_name::serialize")]
    pub device: Device,
    #[serde(serialize_with = "by_name::serialize")]
    pub precision: Precision,
    #[serde(serialize_with = "policy_name::serialize")]
    pub recompute: Policy,
    pub batch_size: usize,
    pub micro_batch: usize,
    pub seq_len: usize,
    pub threads: usize,
    pub warmup_steps: u64,
    pub measured_steps: u64,
    /// Wall time of the measured steps together.
    pub measured_seconds: f64,
    /// Mean wall time of one measured step.
    pub step_seconds: f64,
    /// Non-pad input tokens of the measured steps together.
    pub tokens: u64,
    pub tokens_per_s: f64,
    /// Time of the timed rows together (the rest is the `other` row).
    pub timed_seconds: f64,
    /// The model's FLOPs per token from `crate::audit` (docs/METHOD.md section 8), forward and training.
    pub model_forward_flops_per_token: f64,
    pub model_training_flops_per_token: f64,
    /// `model_training_flops_per_token * tokens_per_s`.
    pub model_gflops_per_s: f64,
    /// FLOPs of all rows per token, for comparison with the model's.
    pub counted_flops_per_token: f64,
    /// Timed rows sorted by time (largest first), then `other`.
    pub rows: Vec<ProfileRow>,
    /// Host memory over the measured steps (CPU tensors; on a GPU these count host-side buffers only).
    pub host: HostMemory,
}

/// What the measured steps asked of host memory: the buffer pool's counters (`cola_tensor::pool`) and
/// the process's minor page faults, each a difference over the measured steps. A step that allocates
/// afresh faults its new pages in one by one (4 KiB each), which is kernel time, not compute.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct HostMemory {
    /// Op outputs served by a pooled buffer.
    pub pool_hits: usize,
    /// Op outputs allocated afresh (no pooled buffer of that dtype and size, or the pool is off).
    pub pool_misses: usize,
    /// Bytes waiting in the pool at the end, and its cap (`cola_tensor::pool::cap_bytes`).
    pub pooled_bytes: usize,
    pub pool_cap_bytes: usize,
    /// The most bytes of CPU tensor storage alive at once, since the process started.
    pub peak_live_bytes: usize,
    /// Minor page faults of the whole process (`/proc/self/stat`), if the system reports them.
    pub minor_faults: Option<u64>,
}

/// The process's minor page faults so far: field 10 of `/proc/self/stat` (Linux), after the command
/// name, which is in parentheses and may hold spaces.
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields from the 3rd on: state, ppid, pgrp, session, tty_nr, tpgid, flags, minflt.
    after_name.split_whitespace().nth(7)?.parse().ok()
}

/// Profiles `warmup` + `steps` training steps of `config` (its schedule, data and policy).
pub fn profile(config: &TrainConfig, warmup: u64, steps: u64) -> Result<StepProfile> {
    let device = config.target_device()?;
    config.validate_on(device)?;
    if steps == 0 {
        return Err(TrainError::Config("--profile needs at least one measured step (--steps)".into()));
    }
    let Prepared { dataset, mut trainer, .. } = prepare(config, device, None)?;
    let mut batches = dataset.train_batches_from(config.batch_size, DataState::default())?;
    for _ in 0..warmup {
        let batch = batches.next_batch();
        trainer.train_step(&batch).map_err(step_error)?;
    }
    trainer.set_profiler(Profiler::new(device));
    cola_tensor::synchronize(device)?;
    let pool_before = cola_tensor::pool::stats();
    let faults_before = minor_faults();
    let started = Instant::now();
    let mut tokens = 0;
    for _ in 0..steps {
        let batch = batches.next_batch();
        tokens += trainer.train_step(&batch).map_err(step_error)?.tokens;
    }
    cola_tensor::synchronize(device)?;
    let measured_seconds = started.elapsed().as_secs_f64();
    let pool_after = cola_tensor::pool::stats();
    let host = HostMemory {
        pool_hits: pool_after.hits - pool_before.hits,
        pool_misses: pool_after.misses - pool_before.misses,
        pooled_bytes: pool_after.pooled_bytes,
        pool_cap_bytes: cola_tensor::pool::cap_bytes(),
        peak_live_bytes: pool_after.peak_live_bytes,
        minor_faults: minor_faults().zip(faults_before).map(|(after, before)| after.saturating_sub(before)),
    };
    let profiler = trainer
        .take_profiler()
        .ok_or_else(|| TrainError::Config("the profiler was lost during the measured steps".into()))?;

    let seconds_of = |nanos: u64| nanos as f64 * 1e-9;
    let rate = |flops: u64, seconds: f64| if seconds > 0.0 { flops as f64 / seconds / 1e9 } else { 0.0 };
    let share = |seconds: f64| if measured_seconds > 0.0 { seconds / measured_seconds } else { 0.0 };
    let mut rows: Vec<ProfileRow> = profiler
        .entries()
        .map(|(direction, family, entry)| {
            let seconds = seconds_of(entry.nanos);
            ProfileRow {
                direction: Some(direction),
                family,
                calls: entry.calls,
                seconds,
                share: share(seconds),
                flops: entry.flops,
                gflops_per_s: rate(entry.flops, seconds),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let timed_seconds = seconds_of(profiler.total_nanos());
    let other = measured_seconds - timed_seconds;
    let other_row = ProfileRow {
        direction: None,
        family: "other",
        calls: steps,
        seconds: other,
        share: share(other),
        flops: 0,
        gflops_per_s: 0.0,
    };
    rows.push(other_row);

    let model_flops = flops_per_token(trainer.model.config(), config.seq_len);
    let tokens_per_s = tokens as f64 / measured_seconds.max(1e-9);
    let counted: u64 = rows.iter().map(|r| r.flops).sum();
    Ok(StepProfile {
        model: config.model,
        device,
        precision: config.precision,
        recompute: config.recompute,
        batch_size: config.batch_size,
        micro_batch: config.micro_batch,
        seq_len: config.seq_len,
        threads: rayon::current_num_threads(),
        warmup_steps: warmup,
        measured_steps: steps,
        measured_seconds,
        step_seconds: measured_seconds / steps as f64,
        tokens,
        tokens_per_s,
        timed_seconds,
        model_forward_flops_per_token: model_flops.forward,
        model_training_flops_per_token: model_flops.training,
        model_gflops_per_s: model_flops.training * tokens_per_s / 1e9,
        counted_flops_per_token: counted as f64 / tokens.max(1) as f64,
        rows,
        host,
    })
}

fn step_error(error: StepError) -> TrainError {
    match error {
        StepError::Failed(error) => error,
        StepError::NonFinite(bad) => TrainError::Diverged {
            step: bad.step + 1,
            what: bad.what,
            value: bad.value,
            lr: bad.lr,
            last_checkpoint: None,
        },
    }
}

impl StepProfile {
    /// The row of `direction` and `family`, if any call ran there.
    pub fn row(&self, direction: Direction, family: &str) -> Option<&ProfileRow> {
        self.rows.iter().find(|r| r.direction == Some(direction) && r.family == family)
    }
}

impl std::fmt::Display for StepProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps = self.measured_steps as f64;
        writeln!(
            f,
            "profile of {} on {} ({}, recompute {}): {} x {} tokens per step in micro-batches of {}, {} threads",
            self.model,
            self.device,
            self.precision,
            self.recompute.name(),
            self.batch_size,
            self.seq_len,
            self.micro_batch,
            self.threads
        )?;
        writeln!(
            f,
            "{} warm-up step(s) not counted, {} measured: {:.3} s per step, {:.0} tokens/s; per-step means:",
            self.warmup_steps, self.measured_steps, self.step_seconds, self.tokens_per_s
        )?;
        writeln!(
            f,
            "{:<10} {:<18} {:>8} {:>11} {:>7} {:>11} {:>9}",
            "direction", "family", "calls", "ms", "share", "GFLOP", "GFLOP/s"
        )?;
        for row in &self.rows {
            writeln!(
                f,
                "{:<10} {:<18} {:>8.0} {:>11.2} {:>6.1}% {:>11.3} {:>9.2}",
                row.direction.map_or("other", Direction::name),
                row.family,
                row.calls as f64 / steps,
                row.seconds / steps * 1e3,
                row.share * 100.0,
                row.flops as f64 / steps / 1e9,
                row.gflops_per_s
            )?;
        }
        let share: f64 = self.rows.iter().map(|r| r.share).sum();
        let flops: u64 = self.rows.iter().map(|r| r.flops).sum();
        writeln!(
            f,
            "{:<10} {:<18} {:>8} {:>11.2} {:>6.1}% {:>11.3} {:>9.2}",
            "total",
            "",
            "",
            self.step_seconds * 1e3,
            share * 100.0,
            flops as f64 / steps / 1e9,
            flops as f64 / self.measured_seconds.max(1e-9) / 1e9
        )?;
        writeln!(
            f,
            "timed rows {:.2} ms of the {:.2} ms step; counted {:.3} GFLOP per token, the model's (audit) \
             {:.3} GFLOP per token forward, {:.3} training (3x forward): {:.2} GFLOP/s at {:.0} tokens/s",
            self.timed_seconds / steps * 1e3,
            self.step_seconds * 1e3,
            self.counted_flops_per_token / 1e9,
            self.model_forward_flops_per_token / 1e9,
            self.model_training_flops_per_token / 1e9,
            self.model_gflops_per_s,
            self.tokens_per_s
        )?;
        let mib = |bytes: usize| bytes as f64 / (1u64 << 20) as f64;
        let host = &self.host;
        let faults =
            host.minor_faults.map_or("not reported".to_string(), |n| format!("{:.0}", n as f64 / steps));
        writeln!(
            f,
            "host memory per step: {:.0} outputs from the pool, {:.0} allocated afresh, {faults} minor page \
             faults; pool {:.1} of {:.1} MiB cap, peak live tensors {:.1} MiB",
            host.pool_hits as f64 / steps,
            host.pool_misses as f64 / steps,
            mib(host.pooled_bytes),
            mib(host.pool_cap_bytes),
            mib(host.peak_live_bytes)
        )
    }
}

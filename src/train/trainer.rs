//! One optimizer update of the recipe (docs/METHOD.md section 6): the global batch is split into
//! micro-batches, their gradients are accumulated, the sum is clipped to a global norm of 0.5, and AdamW applies it with
//! the learning rate `lr(s)` of update number `s` (from 0).
//!
//! Accumulation weights each micro-batch's mean loss by its share of the step's non-pad targets:
//! `loss = sum_i (n_i / N) * mean_loss_i = (1 / N) * sum_t loss_t`, the mean over every target of the
//! global batch. The accumulated gradient is therefore that of the global batch's token mean whatever the
//! micro-batch size, also when micro-batches hold different numbers of non-pad targets (padded
//! documents). When every micro-batch has the same number of targets (always in packed mode) this is the
//! PyTorch reference's `loss / gradient_accumulation`.
//!
//! Under N ranks ([`Trainer::set_collective`]) each rank runs only its slice of the global batch's rows
//! ([`crate::dist::shard_rows`]); the target count `N` is summed over the ranks before any weight is
//! set, and the weighted gradients and losses are summed in buckets (`trainer/sum.rs`): during the last
//! micro-batch's backward as its gradients become final, or after backward, the same sums either way.
//! So every rank holds the single-process gradient, clips it by the same global norm and applies the
//! same AdamW update.
//!
//! Under ZeRO-1 ([`Trainer::shard_optimizer`]) each bucket is summed to the rank that owns it (a
//! reduce-scatter in pieces), and clipping and the update are one sharded step
//! ([`crate::dist::Zero::step`]): the update of this rank's slice, then an all-gather.
//!
//! With a profiler set ([`Trainer::set_profiler`]) every micro-batch's tape times its ops, and the
//! trainer times its own phases as optimizer rows: `grad_accumulate`, `all_reduce_wait` and
//! `all_reduce` (under N ranks; `reduce_scatter` under ZeRO-1, with `zero_step`), `clip_grad_norm` and `adamw` on the CPU, `clip_adamw` on a GPU (where
//! clipping and the update are one multi-tensor step, [`AdamW::clip_and_step`]).
use super::checkpoint::{self, RunState};
use super::TrainError;
use crate::data::Batch;
use crate::dist::{self, Collective, Single};
use cola_autograd::profile::{Direction, Profiler};
use cola_autograd::Graph;
use cola_autograd::{GradStore, Gradients, Policy, Tape};
use cola_nn::{Llama, Module, ParamKind};
use cola_optim::{clip_grad_norm, AdamW, CosineSchedule};
use cola_tensor::Device;
use std::sync::Arc;
use std::time::Duration;

mod sum;

/// The names of the parameters `--no-decay-norms-embeddings` spares from weight decay, chosen by role:
/// RMSNorm weights ([`ParamKind::Vector`]) and the token embedding table ([`ParamKind::Table`]).
pub fn norms_and_embedding(model: &impl Module) -> Vec<String> {
    let mut names = Vec::new();
    model.visit(&mut |param, kind| {
        if matches!(kind, ParamKind::Vector | ParamKind::Table) {
            names.push(param.name().to_string());
        }
    });
    names
}

/// FLOPs per gradient element of the fused AdamW update (`kernels/src/cpu/adamw.rs`): the decay
/// multiply 1; the first moment `m + (1 - beta1) (g - m)` 3; the second `v beta2 + (1 - beta2) g^2` 4;
/// the update `p - step (m / (sqrt(v) / sqrt(c2) + eps))` 6 (the square root counted as 1).
pub const ADAMW_FLOPS_PER_ELEMENT: u64 = 14;

/// FLOPs per gradient element of global-norm clipping: square and add for the norm, one multiply for
/// the scaling (counted always, although it is skipped when the norm is below the threshold).
pub const CLIP_FLOPS_PER_ELEMENT: u64 = 3;

/// What one update did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The update number `s` this step applied (from 0).
    pub step: u64,
    /// Mean next-token loss over the global batch's non-pad targets, before the update.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Non-pad input tokens of the batch (every position in packed mode).
    pub tokens: u64,
    /// Non-pad next-token targets of the batch.
    pub targets: u64,
}

/// Why an update was refused; [`super::run`] adds the checkpoint to its message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NonFinite {
    pub step: u64,
    pub what: &'static str,
    pub value: f64,
    pub lr: f64,
}

/// The model, its optimizer and schedule, and the update count `step` (updates applied so far).
pub struct Trainer {
    pub model: Llama,
    pub optimizer: AdamW,
    pub schedule: CosineSchedule,
    pub micro_batch: usize,
    pub clip_norm: f64,
    pub step: u64,
    /// Retention policy of every micro-batch's tape.
    pub policy: Policy,
    grads: GradStore,
    profiler: Option<Profiler>,
    collective: Arc<dyn Collective>,
    last_reduce: Option<Reduction>,
    /// This rank's share of the optimizer under ZeRO-1 ([`Trainer::shard_optimizer`]): `optimizer` then
    /// holds the moments of this rank's slices only.
    zero: Option<dist::Zero>,
    /// Whether gradient buckets start their sums during the last micro-batch's backward, and their size
    /// ([`Trainer::set_gradient_sum`]).
    overlap: bool,
    bucket_bytes: usize,
    /// Under ZeRO-1, this rank's shard of the summed gradient (1-D f32, on the model's device), between
    /// its sum (after or during backward) and the sharded update.
    zero_shard: Option<cola_tensor::Tensor>,
}

/// What the gradient sum over the ranks of one update moved and how long it took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reduction {
    /// Gradient bytes each rank contributed (f32 elements x 4).
    pub bytes: usize,
    /// Buckets the gradients were summed in, and how many of them started before backward ended.
    pub buckets: usize,
    pub started_early: usize,
    /// Time the step was blocked on the sum: from the end of the last backward until every summed
    /// bucket was written back (without overlap, the whole bucketed sum, copies in and out included).
    pub time: Duration,
}

/// Error of [`Trainer::train_step`]: a lower layer's, or a non-finite loss or gradient norm.
#[derive(Debug)]
pub enum StepError {
    Failed(TrainError),
    NonFinite(NonFinite),
}

macro_rules! step_error_from {
    ($($error:ty),*) => {$(
        impl From<$error> for StepError {
            fn from(error: $error) -> Self {
                StepError::Failed(error.into())
            }
        }
    )*};
}
step_error_from!(
    cola_nn::NnError,
    cola_autograd::AutogradError,
    cola_optim::OptimError,
    cola_tensor::TensorError,
    crate::dist::DistError
);

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Failed(e) => write!(f, "{e}"),
            StepError::NonFinite(n) => {
                write!(f, "non-finite {} ({}) at step {} with lr {:e}", n.what, n.value, n.step, n.lr)
            }
        }
    }
}

impl Trainer {
    pub fn new(
        model: Llama,
        optimizer: AdamW,
        schedule: CosineSchedule,
        micro_batch: usize,
        clip_norm: f64,
    ) -> Self {
        Trainer {
            model,
            optimizer,
            schedule,
            micro_batch: micro_batch.max(1),
            clip_norm,
            step: 0,
            policy: Policy::KeepAll,
            grads: GradStore::new(),
            profiler: None,
            collective: Arc::new(Single),
            last_reduce: None,
            zero: None,
            overlap: false,
            bucket_bytes: dist::DEFAULT_BUCKET_BYTES,
            zero_shard: None,
        }
    }

    /// Sums gradients over the ranks in buckets of `bucket_bytes` and, with `overlap`, starts each
    /// bucket's sum as soon as the last micro-batch's backward has made its gradients final
    /// (`dist/overlap.rs`) instead of after backward: the same sums, bit for bit, with less of the step
    /// blocked on communication. Under ZeRO-1 each bucket is summed to the rank that owns it. Over MPI
    /// the buckets are host buffers; over NCCL, GPU tensors summed on a communication stream while the
    /// device's stream goes on with backward.
    pub fn set_gradient_sum(&mut self, overlap: bool, bucket_bytes: usize) {
        self.overlap = overlap;
        self.bucket_bytes = bucket_bytes.max(size_of::<f32>());
    }

    /// Makes this trainer one rank of `collective`'s world: it trains its slice of every batch and sums
    /// gradients with the other ranks.
    pub fn set_collective(&mut self, collective: Arc<dyn Collective>) {
        self.collective = collective;
    }

    /// Shards the optimizer over the ranks of the collective (ZeRO-1, [`dist::Zero`]): from now on this
    /// rank keeps AdamW's moments for its shard of the parameters only. Call it before the first update
    /// and before loading a checkpoint ([`Trainer::load_checkpoint`]).
    pub fn shard_optimizer(&mut self) -> Result<(), TrainError> {
        let (rank, world_size) = (self.collective.rank(), self.collective.world_size());
        let device = self.model.device();
        if device != Device::Cpu && !self.collective.sums_on_device() {
            return Err(dist::DistError::Zero(format!(
                "the sharded optimizer of a model on {device} needs a collective that sums on the GPU (NCCL)"
            ))
            .into());
        }
        self.zero = Some(dist::Zero::new(&self.model.parameters(), rank, world_size)?);
        Ok(())
    }

    /// Bytes of optimizer state this rank holds during training: AdamW's moments (and f32 master copies
    /// under mixed precision) for every parameter, or for this rank's shard under ZeRO-1.
    pub fn optimizer_bytes(&self) -> usize {
        // Per element of a parameter: two moments, and a master copy under mixed precision.
        let per_element = |p: &cola_autograd::Parameter| {
            let (mixed, dtype) = self.optimizer.state_dtype(p.value().dtype());
            dtype.size_in_bytes() * (2 + usize::from(mixed))
        };
        let params = self.model.parameters();
        if let Some(zero) = &self.zero {
            // The parameters share one dtype (the run's precision), so one shard's elements share one size.
            return zero.optimizer_bytes(params.first().map_or(0, |p| per_element(p)));
        }
        params.into_iter().map(|p| p.value().numel() * per_element(p)).sum()
    }

    /// The optimizer as one process holds it, for a checkpoint: under ZeRO-1 every rank's moments
    /// gathered (a collective call: every rank makes it), else `None` (the trainer's own is whole).
    pub fn gathered_optimizer(&self) -> Result<Option<AdamW>, TrainError> {
        let Some(zero) = &self.zero else { return Ok(None) };
        let params = self.model.parameters();
        Ok(Some(zero.gather_state(self.collective.as_ref(), &self.optimizer, &params)?))
    }

    /// Loads the weights and optimizer state of checkpoint `dir` (the single-process format); under
    /// ZeRO-1 this rank keeps its slices of the moments.
    pub fn load_checkpoint(&mut self, dir: &std::path::Path, state: &RunState) -> Result<(), TrainError> {
        let Some(zero) = self.zero.as_mut() else {
            return checkpoint::load(dir, state, &mut self.model, &mut self.optimizer);
        };
        let mut full = self.optimizer.clone();
        checkpoint::load(dir, state, &mut self.model, &mut full)?;
        zero.scatter_state(&full, &mut self.optimizer, &self.model.parameters())?;
        Ok(())
    }

    /// The gradient sum of the last update under several ranks (`None` in one process).
    pub fn last_reduction(&self) -> Option<Reduction> {
        self.last_reduce
    }

    /// Times every following step: tape ops per direction and family, and the optimizer's phases. A
    /// step that fails loses what the profiler had measured.
    pub fn set_profiler(&mut self, profiler: Profiler) {
        self.profiler = Some(profiler);
    }

    /// The profiler with what it measured; later steps run unprofiled.
    pub fn take_profiler(&mut self) -> Option<Profiler> {
        self.profiler.take()
    }

    /// Runs `f`, timed as the optimizer row `family` with `flops(self)` when profiling.
    fn optimizer_phase<T>(
        &mut self,
        family: &'static str,
        flops: impl FnOnce(&Self) -> u64,
        f: impl FnOnce(&mut Self) -> std::result::Result<T, StepError>,
    ) -> std::result::Result<T, StepError> {
        let Some(mut profiler) = self.profiler.take() else { return f(self) };
        let flops = flops(self);
        let result = profiler.time(Direction::Optimizer, family, flops, || f(self));
        self.profiler = Some(profiler);
        result
    }

    /// The learning rate of the next update.
    pub fn next_lr(&self) -> f64 {
        self.schedule.lr(self.step)
    }

    /// The gradients of the last [`Trainer::accumulate_gradients`] (cleared by an update).
    pub fn gradients(&self) -> &GradStore {
        &self.grads
    }

    /// Runs forward and backward over the micro-batches of this rank's rows of `batch` (the global batch)
    /// and leaves the accumulated gradient of the global batch's token-mean loss, summed over the ranks,
    /// in [`Trainer::gradients`]. Returns the loss and the global counts of non-pad input tokens and
    /// targets.
    pub fn accumulate_gradients(&mut self, batch: &Batch) -> std::result::Result<(f64, u64, u64), StepError> {
        let pad = self.model.config().pad_id;
        let (rows, seq) = (batch.rows, batch.seq_len);
        let targets_of = |start: usize, end: usize| -> u64 {
            (start..end).map(|r| batch.row(r)[1..].iter().filter(|&&t| t != pad).count() as u64).sum()
        };
        let world = self.collective.world_size();
        let sums = self.collective.sums();
        let shard = dist::shard_rows(rows, self.collective.rank(), world);
        let micro_rows: Vec<(usize, usize)> = shard
            .clone()
            .step_by(self.micro_batch)
            .map(|start| (start, (start + self.micro_batch).min(shard.end)))
            .collect();
        let local_targets: u64 = micro_rows.iter().map(|&(s, e)| targets_of(s, e)).sum();
        let local_tokens =
            batch.tokens[shard.start * seq..shard.end * seq].iter().filter(|&&t| t != pad).count();
        // Counts below 2^53 are exact in f64, so the sum is the integer sum.
        let mut counts = [local_targets as f64, local_tokens as f64];
        if sums {
            self.collective.all_reduce_sum_f64(&mut counts)?;
        }
        let (targets, tokens) = (counts[0] as u64, counts[1] as u64);

        self.grads.clear();
        self.last_reduce = None;
        self.zero_shard = None;
        let overlap = sums && self.overlap && targets > 0;
        let loss = if overlap {
            self.overlapped_micro_batches(batch, &micro_rows, targets)?
        } else {
            self.micro_batches(batch, &micro_rows, targets, None)?
        };
        if !sums {
            if let (Some(zero), true) = (&self.zero, targets > 0) {
                // One rank: its shard is its whole gradient (a sum over one rank is a copy).
                let (collective, params) = (self.collective.as_ref(), self.model.parameters());
                self.zero_shard =
                    Some(zero.reduce_after_backward(collective, &params, &self.grads, self.bucket_bytes)?);
            }
            return Ok((loss, tokens, targets));
        }
        let mut summed = [loss];
        self.collective.all_reduce_sum_f64(&mut summed)?;
        if !summed[0].is_finite() {
            return Err(self.refuse("loss", summed[0]));
        }
        // With no target on any rank no rank has a gradient: one process would have none either.
        if targets > 0 && !overlap {
            self.reduce_gradients()?;
        }
        Ok((summed[0], tokens, targets))
    }

    /// Forward and backward over this rank's micro-batches `micro_rows` (row ranges of `batch`) with the
    /// weights of a global count of `targets`, accumulating their gradients; returns this rank's weighted
    /// loss. With `reduce`, the last micro-batch's gradients are added as backward makes each final and
    /// every bucket whose gradients are all final starts its sum.
    fn micro_batches(
        &mut self,
        batch: &Batch,
        micro_rows: &[(usize, usize)],
        targets: u64,
        mut reduce: Option<(&mut dist::ReadyBuckets, &mut dyn dist::BucketSums)>,
    ) -> std::result::Result<f64, StepError> {
        let pad = self.model.config().pad_id;
        let seq = batch.seq_len;
        let targets_of = |start: usize, end: usize| -> u64 {
            (start..end).map(|r| batch.row(r)[1..].iter().filter(|&&t| t != pad).count() as u64).sum()
        };
        let sums = self.collective.sums();
        let mut loss = 0.0f64;
        for (i, &(start, end)) in micro_rows.iter().enumerate() {
            let count = targets_of(start, end);
            if count == 0 {
                continue; // all padding: no loss, no gradient
            }
            // Exactly 1 when the whole batch is one micro-batch, so that case is the plain mean loss.
            let weight = count as f64 / targets as f64;
            let mut tape = Tape::with_policy(self.policy);
            if let Some(profiler) = self.profiler.take() {
                tape.set_profiler(profiler);
            }
            let ids = &batch.tokens[start * seq..end * seq];
            let micro_loss = self.model.loss(&mut tape, ids, end - start, seq)?;
            let value = tape.value(micro_loss)?.to_scalar()?;
            if !value.is_finite() {
                if sums {
                    // The other ranks learn of it from the summed loss, so every rank refuses the update.
                    loss = value;
                    break;
                }
                return Err(self.refuse("loss", value));
            }
            loss += weight * value;
            let scaled = if weight == 1.0 { micro_loss } else { tape.mul_scalar(&micro_loss, weight)? };
            if let (true, Some((ready, bucket_sums))) = (i + 1 == micro_rows.len(), reduce.as_mut()) {
                // The hook's additions are those of `accumulate`, one parameter at a time.
                let store = &mut self.grads;
                tape.backward_with(scaled, |id, g| -> std::result::Result<(), StepError> {
                    store.accumulate_one(id, g)?;
                    ready.mark_final(id)?;
                    ready.start_ready(&mut **bucket_sums, store, false)?;
                    Ok(bucket_sums.progress()?)
                })?;
                self.profiler = tape.take_profiler();
                continue;
            }
            let grads = tape.backward(scaled)?;
            self.profiler = tape.take_profiler();
            let added = |t: &Self| summed_elements(&t.grads, &grads);
            self.optimizer_phase("grad_accumulate", added, |t| Ok(t.grads.accumulate(&grads)?))?;
        }
        Ok(loss)
    }

    /// Forgets the gradients and returns the refusal of the next update for a non-finite `what`.
    fn refuse(&mut self, what: &'static str, value: f64) -> StepError {
        self.grads.clear();
        StepError::NonFinite(NonFinite { step: self.step, what, value, lr: self.next_lr() })
    }

    /// One optimizer update on `batch` (the global batch). A non-finite loss or gradient norm leaves the
    /// model, optimizer and step count untouched.
    pub fn train_step(&mut self, batch: &Batch) -> std::result::Result<StepStats, StepError> {
        let lr = self.next_lr();
        let (loss, tokens, targets) = self.accumulate_gradients(batch)?;
        // On a GPU the clipping and the update are one multi-tensor step with no host sync before it;
        // on the CPU they are timed apart.
        let fused = matches!(self.model.device(), Device::Cuda(_));
        let grad_norm = if self.zero.is_some() {
            let flops =
                |t: &Self| (CLIP_FLOPS_PER_ELEMENT + ADAMW_FLOPS_PER_ELEMENT) * grad_elements(&t.grads);
            self.optimizer_phase("zero_step", flops, |t| {
                let Trainer { zero, model, optimizer, grads, collective, clip_norm, .. } = t;
                let mut params = model.parameters_mut();
                if targets == 0 {
                    // No rank has a gradient: one process would count the update and change nothing.
                    optimizer.step(&mut params, grads, lr)?;
                    return Ok(0.0);
                }
                let zero = zero.as_mut().expect("checked above");
                let mine =
                    t.zero_shard.take().ok_or(dist::DistError::Zero("the gradient was not summed".into()))?;
                Ok(zero.step(collective.as_ref(), optimizer, &mut params, mine, lr, *clip_norm)?)
            })?
        } else if fused {
            let flops =
                |t: &Self| (CLIP_FLOPS_PER_ELEMENT + ADAMW_FLOPS_PER_ELEMENT) * grad_elements(&t.grads);
            self.optimizer_phase("clip_adamw", flops, |t| {
                let mut params = t.model.parameters_mut();
                Ok(t.optimizer.clip_and_step(&mut params, &mut t.grads, lr, t.clip_norm)?)
            })?
        } else {
            let clip_flops = |t: &Self| CLIP_FLOPS_PER_ELEMENT * grad_elements(&t.grads);
            self.optimizer_phase("clip_grad_norm", clip_flops, |t| {
                Ok(clip_grad_norm(&mut t.grads, t.clip_norm)?)
            })?
        };
        if !grad_norm.is_finite() {
            self.grads.clear();
            let what = "gradient norm";
            return Err(StepError::NonFinite(NonFinite { step: self.step, what, value: grad_norm, lr }));
        }
        if !fused && self.zero.is_none() {
            let adamw_flops = |t: &Self| ADAMW_FLOPS_PER_ELEMENT * grad_elements(&t.grads);
            self.optimizer_phase("adamw", adamw_flops, |t| {
                let mut params = t.model.parameters_mut();
                Ok(t.optimizer.step(&mut params, &t.grads, lr)?)
            })?;
        }
        self.grads.clear();
        let stats = StepStats { step: self.step, loss, lr, grad_norm, tokens, targets };
        self.step += 1;
        Ok(stats)
    }
}

/// Elements of every gradient in `store`.
fn grad_elements(store: &GradStore) -> u64 {
    store.iter().map(|(_, g)| g.numel() as u64).sum()
}

/// Elements of `grads` that accumulation adds to a gradient already in `store` (the others are copied).
fn summed_elements(store: &GradStore, grads: &Gradients) -> u64 {
    grads.params().filter(|(id, _)| store.get(**id).is_some()).map(|(_, g)| g.numel() as u64).sum()
}

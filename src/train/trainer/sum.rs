//! The gradient sum over the ranks of one update (`dist/overlap.rs`, `dist/bucket.rs`): either the
//! buckets start while the last micro-batch's backward runs and the step waits for them when backward
//! ends, or every bucket starts after backward. The calls are the same, so are the sums. Under ZeRO-1
//! each bucket goes to the rank whose shard it lies in, and this rank keeps its shard of the sum for the
//! sharded update. Over NCCL the buckets are GPU tensors summed on a communication stream of their own
//! (`dist/nccl.rs`), and the device's stream waits for every sum before the update reads it: the time of
//! the [`Reduction`] is then the host's time to queue the rest and wait, not the transfer's.
use super::{Reduction, StepError, Trainer};
use crate::data::Batch;
use crate::dist;
use cola_autograd::profile::Direction;
use std::time::Instant;

impl Trainer {
    /// [`Trainer::micro_batches`] with the gradient sum overlapping the last backward: the buckets start
    /// as their gradients become final, the rest after backward, and the step waits for all of them.
    /// The time from the end of backward to the summed gradients is the [`Reduction`]'s time and, when
    /// profiling, the optimizer row `all_reduce` (no barrier: the wait for a slower rank is part of it).
    pub(super) fn overlapped_micro_batches(
        &mut self,
        batch: &Batch,
        micro_rows: &[(usize, usize)],
        targets: u64,
    ) -> std::result::Result<f64, StepError> {
        let collective = self.collective.clone();
        let shard = self.zero.as_ref().map(dist::Zero::shard_elements);
        let mut ready = dist::ReadyBuckets::new(&self.model.parameters(), self.bucket_bytes, shard)?;
        let owners = ready.owners().map(<[usize]>::to_vec);
        let (mut outcome, mut backward_end) = (Err(dist::DistError::Interrupted.into()), Instant::now());
        let summed =
            dist::overlap::sum_buckets(collective.as_ref(), &ready.sizes(), owners.as_deref(), &mut |sums| {
                outcome = self.micro_batches(batch, micro_rows, targets, Some((&mut ready, &mut *sums)));
                backward_end = Instant::now();
                match outcome {
                    Ok(_) => ready.start_ready(sums, &self.grads, true),
                    Err(_) => Err(dist::DistError::Interrupted),
                }
            });
        let loss = outcome?;
        if shard.is_some() {
            self.zero_shard = Some(ready.owned_shard(&summed?, collective.rank())?);
        } else {
            ready.write_back(&summed?, &mut self.grads)?;
        }
        let time = backward_end.elapsed();
        let family = self.sum_row();
        if let Some(profiler) = self.profiler.as_mut() {
            profiler.add(Direction::Optimizer, family, time.as_nanos() as u64, 0);
        }
        let (buckets, started_early) = (ready.sizes().len(), ready.started_early());
        self.last_reduce = Some(Reduction { bytes: ready.bytes(), buckets, started_early, time });
        Ok(loss)
    }

    /// Sums the gradients over the ranks, timed as the optimizer row `all_reduce`. When profiling, a
    /// barrier first waits for the slowest rank (row `all_reduce_wait`), so that the `all_reduce` row is
    /// the transfer and its copies alone; unprofiled steps have no barrier.
    pub(super) fn reduce_gradients(&mut self) -> std::result::Result<(), StepError> {
        if self.profiler.is_some() {
            self.optimizer_phase("all_reduce_wait", |_| 0, |t| Ok(t.collective.barrier()?))?;
        }
        let began = Instant::now();
        let bytes = self.optimizer_phase(
            self.sum_row(),
            |_| 0,
            |t| {
                let params = t.model.parameters();
                let collective = t.collective.as_ref();
                let Some(zero) = &t.zero else {
                    return Ok(dist::all_reduce_gradients(
                        collective,
                        &params,
                        &mut t.grads,
                        t.bucket_bytes,
                    )?);
                };
                let mine = zero.reduce_after_backward(collective, &params, &t.grads, t.bucket_bytes)?;
                t.zero_shard = Some(mine);
                Ok(params.iter().map(|p| p.value().numel() * size_of::<f32>()).sum())
            },
        )?;
        let sizes: Vec<usize> = self.model.parameters().iter().map(|p| p.value().numel()).collect();
        let shard = self.zero.as_ref().map(dist::Zero::shard_elements);
        let buckets =
            dist::Buckets::cut(&sizes, (self.bucket_bytes / size_of::<f32>()).max(1), shard)?.count();
        self.last_reduce = Some(Reduction { bytes, buckets, started_early: 0, time: began.elapsed() });
        Ok(())
    }

    /// The optimizer row the gradient sum is timed as: `all_reduce`, or `reduce_scatter` under ZeRO-1
    /// (bucket by bucket, each to the rank that owns it).
    fn sum_row(&self) -> &'static str {
        if self.zero.is_some() {
            "reduce_scatter"
        } else {
            "all_reduce"
        }
    }
}

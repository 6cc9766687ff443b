//! Validation loss and perplexity (docs/METHOD.md section 6: perplexity = exp(mean token loss)).
//!
//! The mean runs over every non-pad next-token target of the sequences evaluated, not over batches, so a
//! short last batch or padded documents weigh by their tokens. Forward passes run on the eager executor
//! (nothing recorded or kept), `batch_size` sequences at a time; the sum is taken in f64 in a fixed order, so the periodic
//! evaluation during training and `--eval-only` on the same sequences give the same number.
//!
//! Under several ranks the forward passes are dealt round-robin: rank r runs passes r, r + N, r + 2N, ...
//! of the single-process sequence of passes, each on the same rows, so each pass's f32 mean is the
//! single-process one bit for bit; the per-rank f64 sums of `mean x targets` and the target counts are
//! then summed over the ranks in f64. Only the order of the f64 additions differs from one process (a
//! relative difference of a few 1e-16 per term).
use super::Result;
use crate::data::Batch;
use crate::dist::Collective;
use cola_autograd::Eager;
use cola_nn::Llama;

/// The outcome of an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct EvalResult {
    /// Mean next-token loss over the targets (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Sequences evaluated.
    pub sequences: usize,
    /// Non-pad next-token targets the mean runs over.
    pub targets: u64,
}

/// The loss of `model` over `batches`, `batch_size` sequences per forward pass, stopping after
/// `max_sequences` sequences when given, with the passes shared among the ranks of `world` (every rank
/// calls this with the same batches and gets the same result). `None` when there is nothing to evaluate.
pub fn evaluate(
    model: &Llama,
    batches: impl Iterator<Item = Batch>,
    batch_size: usize,
    max_sequences: Option<usize>,
    world: &dyn Collective,
) -> Result<Option<EvalResult>> {
    let pad = model.config().pad_id;
    let limit = max_sequences.unwrap_or(usize::MAX);
    let (rank, ranks) = (world.rank(), world.world_size().max(1));
    let (mut sum, mut targets, mut sequences, mut pass) = (0.0f64, 0u64, 0usize, 0usize);
    'batches: for batch in batches {
        let seq = batch.seq_len;
        for start in (0..batch.rows).step_by(batch_size.max(1)) {
            if sequences >= limit {
                break 'batches;
            }
            let rows = (batch.rows - start).min(batch_size.max(1)).min(limit - sequences);
            sequences += rows;
            pass += 1;
            if (pass - 1) % ranks != rank {
                continue;
            }
            let ids = &batch.tokens[start * seq..(start + rows) * seq];
            let count = ids
                .chunks_exact(seq)
                .map(|row| row[1..].iter().filter(|&&t| t != pad).count() as u64)
                .sum::<u64>();
            if count == 0 {
                continue;
            }
            let mean = model.loss(&mut Eager, ids, rows, seq)?.to_scalar()?;
            sum += mean * count as f64;
            targets += count;
        }
    }
    if world.sums() {
        // Target counts are below 2^53, so they are exact in f64.
        let mut totals = [sum, targets as f64];
        world.all_reduce_sum_f64(&mut totals)?;
        (sum, targets) = (totals[0], totals[1] as u64);
    }
    if targets == 0 {
        return Ok(None);
    }
    let loss = sum / targets as f64;
    Ok(Some(EvalResult { loss, perplexity: loss.exp(), sequences, targets }))
}

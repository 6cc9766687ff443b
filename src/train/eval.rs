//! Validation loss and perplexity (docs/METHOD.md section 6: perplexity = exp(mean token loss)).
//!
//! The mean runs over every non-pad next-token target of the sequences evaluated, not over batches, so a
//! short last batch or padded documents weigh by their tokens. Forward passes run on the eager executor
//! (nothing recorded or kept), `batch_size` sequences at a time; the sum is taken in f64 in a fixed order, so the periodic
//! evaluation during training and `--eval-only` on the same sequences give the same number.
use super::Result;
use crate::data::Batch;
use cola_autograd::Eager;
use cola_nn::Llama;

/// The outcome of an evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
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
/// `max_sequences` sequences when given. `None` when there is nothing to evaluate.
pub fn evaluate(
    model: &Llama,
    batches: impl Iterator<Item = Batch>,
    batch_size: usize,
    max_sequences: Option<usize>,
) -> Result<Option<EvalResult>> {
    let pad = model.config().pad_id;
    let limit = max_sequences.unwrap_or(usize::MAX);
    let (mut sum, mut targets, mut sequences) = (0.0f64, 0u64, 0usize);
    'batches: for batch in batches {
        let seq = batch.seq_len;
        for start in (0..batch.rows).step_by(batch_size.max(1)) {
            if sequences >= limit {
                break 'batches;
            }
            let rows = (batch.rows - start).min(batch_size.max(1)).min(limit - sequences);
            let ids = &batch.tokens[start * seq..(start + rows) * seq];
            let count = ids
                .chunks_exact(seq)
                .map(|row| row[1..].iter().filter(|&&t| t != pad).count() as u64)
                .sum::<u64>();
            sequences += rows;
            if count == 0 {
                continue;
            }
            let mean = model.loss(&mut Eager, ids, rows, seq)?.to_scalar()?;
            sum += mean * count as f64;
            targets += count;
        }
    }
    if targets == 0 {
        return Ok(None);
    }
    let loss = sum / targets as f64;
    Ok(Some(EvalResult { loss, perplexity: loss.exp(), sequences, targets }))
}

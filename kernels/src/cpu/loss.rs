//! Fused cross-entropy: log-softmax plus negative log-likelihood, mean over targets not ignored.
//!
//! Per counted row: `loss = logsumexp(x) - x[t] = (m - x[t]) + ln(sum_j exp(x_j - m))` with
//! `m = max_j x_j`, so no exponent overflows and a confident prediction's small loss is not rounded at
//! the magnitude of the logits. The gradient of the mean over `count` rows is
//! `(softmax(x) - onehot(t)) / count`. Logits are never converted to probabilities in memory except as
//! the gradient itself.
use super::elementwise::{combine_lanes, for_each_row_block, LANES};
use crate::Float;

/// Number of rows whose target is not `ignore_id`.
pub fn counted_targets(targets: &[u32], ignore_id: Option<u32>) -> usize {
    targets.iter().filter(|&&t| Some(t) != ignore_id).count()
}

/// Mean over counted rows of `logsumexp(logits[row]) - logits[row, target]`; rows are `vocab` long.
/// Returns 0 when no row is counted. Targets of counted rows must be `< vocab` (checked by the caller).
///
/// Per-row losses are computed in parallel into a buffer, then summed sequentially in row order (in f64,
/// so a long batch loses no precision in f32) so the result is independent of the thread count.
pub fn cross_entropy_forward<T: Float>(
    logits: &[T],
    vocab: usize,
    targets: &[u32],
    ignore_id: Option<u32>,
) -> T {
    let count = counted_targets(targets, ignore_id);
    if count == 0 || vocab == 0 {
        return T::ZERO;
    }
    let mut row_loss = vec![T::ZERO; targets.len()];
    for_each_row_block(&mut row_loss, 1, vocab, |row0, losses| {
        for (r, loss) in losses.iter_mut().enumerate() {
            let row = row0 + r;
            let target = targets[row];
            if Some(target) != ignore_id {
                let x = &logits[row * vocab..(row + 1) * vocab];
                let max = row_max(x);
                *loss = (max - x[target as usize]) + sum_exp_shifted(x, max).ln();
            }
        }
    });
    let total: f64 = targets
        .iter()
        .zip(&row_loss)
        .filter(|(&t, _)| Some(t) != ignore_id)
        .fold(0.0, |acc, (_, &l)| acc + l.to_f64());
    T::from_f64(total / count as f64)
}

/// `grad_logits[row] = grad_loss / count * (softmax(logits[row]) - onehot(target))` for counted rows,
/// zero for ignored rows (overwrites).
pub fn cross_entropy_backward<T: Float>(
    logits: &[T],
    vocab: usize,
    targets: &[u32],
    ignore_id: Option<u32>,
    grad_loss: T,
    grad_logits: &mut [T],
) {
    let count = counted_targets(targets, ignore_id);
    if count == 0 || vocab == 0 {
        grad_logits.fill(T::ZERO);
        return;
    }
    let factor = grad_loss / T::from_f64(count as f64);
    for_each_row_block(grad_logits, vocab, vocab, |row0, grads| {
        for (r, g) in grads.chunks_exact_mut(vocab).enumerate() {
            let row = row0 + r;
            let target = targets[row];
            if Some(target) == ignore_id {
                g.fill(T::ZERO);
                continue;
            }
            let x = &logits[row * vocab..(row + 1) * vocab];
            let max = row_max(x);
            let scale = factor / sum_exp_shifted(x, max);
            for (gj, &xj) in g.iter_mut().zip(x) {
                *gj = (xj - max).exp() * scale;
            }
            g[target as usize] -= factor;
        }
    });
}

#[inline]
fn row_max<T: Float>(x: &[T]) -> T {
    x.iter().fold(T::NEG_INFINITY, |m, &v| m.max(v))
}

/// `sum_j exp(x_j - max)` in `LANES` interleaved partial sums combined in a fixed order (shorter
/// accumulation chains, so less rounding over a 32k vocabulary).
fn sum_exp_shifted<T: Float>(x: &[T], max: T) -> T {
    let mut acc = [T::ZERO; LANES];
    let chunks = x.chunks_exact(LANES);
    let mut tail = T::ZERO;
    for &v in chunks.remainder() {
        tail += (v - max).exp();
    }
    for xs in chunks {
        for (s, &v) in acc.iter_mut().zip(xs) {
            *s += (v - max).exp();
        }
    }
    combine_lanes(acc) + tail
}

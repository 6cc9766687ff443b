//! Fused cross-entropy: log-softmax plus negative log-likelihood, mean over targets not ignored.
use crate::Float;

/// Number of rows whose target is not `ignore_id`.
pub fn counted_targets(targets: &[u32], ignore_id: Option<u32>) -> usize {
    targets.iter().filter(|&&t| Some(t) != ignore_id).count()
}

/// Mean over counted rows of `logsumexp(logits[row]) - logits[row, target]`; rows are `vocab` long.
/// Returns 0 when no row is counted. Targets of counted rows must be `< vocab` (checked by the caller).
pub fn cross_entropy_forward<T: Float>(logits: &[T], vocab: usize, targets: &[u32], ignore_id: Option<u32>) -> T {
    let _ = (logits, vocab, targets, ignore_id);
    unimplemented!()
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
    let _ = (logits, vocab, targets, ignore_id, grad_loss, grad_logits);
    unimplemented!()
}

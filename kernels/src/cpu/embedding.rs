//! Embedding lookup (gather) and its gradient (scatter-add).
use crate::Float;

/// `out[i] = weight[ids[i]]`, rows of length `dim`. Ids must be `< weight.len() / dim` (checked by caller).
pub fn embedding_forward<T: Float>(weight: &[T], dim: usize, ids: &[u32], out: &mut [T]) {
    let _ = (weight, dim, ids, out);
    unimplemented!()
}

/// `grad_weight[ids[i]] += grad_out[i]` for every i whose id is not `pad_id` (accumulates into
/// `grad_weight`, which the caller zeroes).
pub fn embedding_backward<T: Float>(
    grad_out: &[T],
    dim: usize,
    ids: &[u32],
    pad_id: Option<u32>,
    grad_weight: &mut [T],
) {
    let _ = (grad_out, dim, ids, pad_id, grad_weight);
    unimplemented!()
}

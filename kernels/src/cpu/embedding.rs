//! Embedding lookup (gather) and its gradient (scatter-add).
//!
//! Forward `out[i] = W[ids[i]]` is linear in W, so `dW[r] = sum_{i: ids[i] = r} grad_out[i]`. Several
//! positions can share an id, so the backward is parallelised over column ranges of `dim`, never over ids:
//! each task owns a column range of every row and adds the ids in their original order, so every element
//! of `dW` sees the same sequence of additions on any number of threads.
use super::elementwise::for_each_row_block;
use crate::float::PARALLEL_MIN_ELEMS;
use crate::Float;
use rayon::prelude::*;

/// Columns per backward task: 64 f32 are 4 cache lines, so neighbouring tasks rarely share a line.
const COLUMN_BLOCK: usize = 64;

/// `out[i] = weight[ids[i]]`, rows of length `dim`. Ids must be `< weight.len() / dim` (checked by caller).
pub fn embedding_forward<T: Float>(weight: &[T], dim: usize, ids: &[u32], out: &mut [T]) {
    for_each_row_block(out, dim, dim, |row0, rows| {
        for (row, &id) in rows.chunks_exact_mut(dim).zip(&ids[row0..]) {
            let start = id as usize * dim;
            row.copy_from_slice(&weight[start..start + dim]);
        }
    });
}

/// `grad_weight[ids[i]] += grad_out[i]` for every i whose id is not `pad_id` (accumulates into
/// `grad_weight`, which the caller zeroes).
///
/// Panics if a non-pad id is out of range (a caller bug: ids are checked before reaching here).
pub fn embedding_backward<T: Float>(
    grad_out: &[T],
    dim: usize,
    ids: &[u32],
    pad_id: Option<u32>,
    grad_weight: &mut [T],
) {
    if dim == 0 || ids.is_empty() {
        return;
    }
    let rows = grad_weight.len() / dim;
    let out_of_range = ids.iter().find(|&&id| Some(id) != pad_id && id as usize >= rows);
    assert!(out_of_range.is_none(), "embedding id {out_of_range:?} out of range for {rows} rows");
    let counted = || ids.iter().enumerate().filter(|(_, &id)| Some(id) != pad_id);

    if ids.len().saturating_mul(dim) < PARALLEL_MIN_ELEMS || dim <= COLUMN_BLOCK {
        for (i, &id) in counted() {
            let dst = &mut grad_weight[id as usize * dim..(id as usize + 1) * dim];
            for (d, &g) in dst.iter_mut().zip(&grad_out[i * dim..(i + 1) * dim]) {
                *d += g;
            }
        }
        return;
    }

    let base = SharedMut(grad_weight.as_mut_ptr());
    (0..dim.div_ceil(COLUMN_BLOCK)).into_par_iter().for_each(|block| {
        let start = block * COLUMN_BLOCK;
        let width = COLUMN_BLOCK.min(dim - start);
        for (i, &id) in counted() {
            let src = &grad_out[i * dim + start..i * dim + start + width];
            // SAFETY: `id < rows` (asserted above) and `start + width <= dim`, so the range
            // `[id * dim + start, id * dim + start + width)` lies inside `grad_weight`, which is exclusively
            // borrowed for this call. Tasks own disjoint column ranges `[start, start + width)`, so no two
            // tasks ever create overlapping slices, and within a task the slice dies before the next one.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(id as usize * dim + start), width) };
            for (d, &g) in dst.iter_mut().zip(src) {
                *d += g;
            }
        }
    });
}

/// A raw pointer that tasks owning disjoint ranges of one exclusively borrowed slice may share.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);

// SAFETY: the pointer is only dereferenced through disjoint ranges (see `embedding_backward`), and `T: Send`
// makes writing elements from another thread sound.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above; sharing the wrapper only shares the address, never concurrent access to one element.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Accessor, so closures capture the whole `Send + Sync` wrapper rather than its raw-pointer field.
    #[inline(always)]
    fn get(self) -> *mut T {
        self.0
    }
}

//! Embedding lookup (gather) and its gradient (scatter-add).
//!
//! Forward `out[i] = W[ids[i]]` is linear in W, so `dW[r] = sum_{i: ids[i] = r} grad_out[i]`. Several
//! positions can share an id, so the backward first groups the positions by id (a stable counting sort:
//! within a group, positions keep their original order), then gives each row of `dW` to one task, which
//! adds its positions' gradient rows in that order. Every element of `dW` therefore sees the same
//! sequence of additions on any number of threads, and every row of `grad_out` and of `dW` is touched
//! once, contiguously.
use super::bf16::{round, widen_one};
use super::elementwise::for_each_row_block;
use super::simd::{multiversion, Isa};
use crate::float::PARALLEL_MIN_ELEMS;
use crate::Float;
use half::bf16;
use rayon::prelude::*;

/// Rows of `dW` per backward task (most rows of a large vocabulary receive nothing, and cost one check).
const ROWS_PER_TASK: usize = 256;

/// `out[i] = weight[ids[i]]`, rows of length `dim`. Ids must be `< weight.len() / dim` (checked by caller).
/// A copy, so any element type: a bf16 table is gathered as it is (widening to f32 and rounding back
/// would return the same values).
pub fn embedding_forward<T: Copy + Send + Sync>(weight: &[T], dim: usize, ids: &[u32], out: &mut [T]) {
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
    assert_in_range(ids, pad_id, rows);
    let isa = Isa::active();

    if ids.len().saturating_mul(dim) < PARALLEL_MIN_ELEMS {
        for (i, &id) in counted(ids, pad_id) {
            let dst = &mut grad_weight[id as usize * dim..(id as usize + 1) * dim];
            add_into(isa, dst, &grad_out[i * dim..(i + 1) * dim]);
        }
        return;
    }
    let groups = Groups::new(ids, pad_id, rows);
    grad_weight.par_chunks_mut(dim).with_min_len(ROWS_PER_TASK).enumerate().for_each(|(row, dst)| {
        for &i in groups.of(row) {
            add_into(isa, dst, &grad_out[i * dim..(i + 1) * dim]);
        }
    });
}

/// [`embedding_backward`] of a bf16 `grad_out` into a bf16 `grad_weight`, which it writes whole (rows no
/// id selects become zero, so the caller need not zero it). Each row is summed in f32, from zero, over its
/// positions in ascending order, and rounded once: the additions the f32 kernel makes on the widened
/// gradient, so the bits of widening `grad_out`, running [`embedding_backward`] on a zeroed f32 table and
/// rounding it (`tensor/tests/suite/bf16_fused.rs`), without the table-sized f32 buffer and its rounding
/// pass.
pub fn embedding_backward_bf16(
    grad_out: &[bf16],
    dim: usize,
    ids: &[u32],
    pad_id: Option<u32>,
    grad_weight: &mut [bf16],
) {
    if dim == 0 {
        return;
    }
    let rows = grad_weight.len() / dim;
    assert_in_range(ids, pad_id, rows);
    let groups = Groups::new(ids, pad_id, rows);
    let isa = Isa::active();
    let sum = || vec![0.0f32; dim];
    grad_weight.par_chunks_mut(dim).with_min_len(ROWS_PER_TASK).enumerate().for_each_init(
        sum,
        |sum, (row, dst)| {
            let positions = groups.of(row);
            if positions.is_empty() {
                dst.fill(bf16::ZERO);
                return;
            }
            sum.fill(0.0);
            for &i in positions {
                add_widened_into(isa, sum, &grad_out[i * dim..(i + 1) * dim]);
            }
            round(sum, dst);
        },
    );
}

/// The positions whose id is not the pad id, with their ids.
fn counted(ids: &[u32], pad_id: Option<u32>) -> impl Iterator<Item = (usize, &u32)> {
    ids.iter().enumerate().filter(move |(_, &id)| Some(id) != pad_id)
}

/// Panics if a non-pad id is `>= rows` (a caller bug: ids are checked before reaching here).
fn assert_in_range(ids: &[u32], pad_id: Option<u32>, rows: usize) {
    let out_of_range = ids.iter().find(|&&id| Some(id) != pad_id && id as usize >= rows);
    assert!(out_of_range.is_none(), "embedding id {out_of_range:?} out of range for {rows} rows");
}

/// The counted positions (id not the pad id) grouped by id with a stable counting sort:
/// `positions[starts[r]..starts[r + 1]]` are the positions of id r, ascending.
struct Groups {
    starts: Vec<usize>,
    positions: Vec<usize>,
}

impl Groups {
    fn new(ids: &[u32], pad_id: Option<u32>, rows: usize) -> Groups {
        let mut starts = vec![0usize; rows + 1];
        for (_, &id) in counted(ids, pad_id) {
            starts[id as usize + 1] += 1;
        }
        for r in 0..rows {
            starts[r + 1] += starts[r];
        }
        let (mut next, mut positions) = (starts.clone(), vec![0usize; starts[rows]]);
        for (i, &id) in counted(ids, pad_id) {
            positions[next[id as usize]] = i;
            next[id as usize] += 1;
        }
        Groups { starts, positions }
    }

    /// The positions of id `row`, ascending.
    fn of(&self, row: usize) -> &[usize] {
        &self.positions[self.starts[row]..self.starts[row + 1]]
    }
}

multiversion! {
    /// `dst += src` elementwise.
    fn add_into[T: Float](isa: Isa, dst: &mut [T], src: &[T]) {
        for (d, &g) in dst.iter_mut().zip(src) {
            *d += g;
        }
    }
}

multiversion! {
    /// `dst += src` elementwise, `src` widened (exactly) to f32.
    fn add_widened_into(isa: Isa, dst: &mut [f32], src: &[bf16]) {
        for (d, &g) in dst.iter_mut().zip(src) {
            *d += widen_one(g);
        }
    }
}

//! Strided traversal: copies of views into contiguous buffers and broadcasting elementwise maps.
//!
//! A strided operand is `(data, offset, strides)` over a logical row-major `shape`; a stride of 0 repeats
//! an element (broadcast). Outputs are contiguous row-major. Work is split into rows of the innermost
//! dimension; each output element is written exactly once, so results never depend on thread timing.
use crate::float::PARALLEL_MIN_ELEMS;
use rayon::prelude::*;

/// A read-only strided view: element at index `idx` is `data[offset + sum(idx[i] * strides[i])]`.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub strides: &'a [usize],
}

/// Offset of the start of row `row` (a row is one run of the innermost dimension) of a strided view.
#[inline]
fn row_offset(shape: &[usize], strides: &[usize], offset: usize, mut row: usize) -> usize {
    let mut off = offset;
    for d in (0..shape.len().saturating_sub(1)).rev() {
        let size = shape[d];
        off += (row % size) * strides[d];
        row /= size;
    }
    off
}

/// Rows per parallel task: enough elements that scheduling is amortised.
fn rows_per_task(inner: usize) -> usize {
    (PARALLEL_MIN_ELEMS / inner.max(1)).max(1)
}

/// Runs `f(row_index, out_row)` over the rows of a contiguous output, in parallel when it pays.
fn for_each_row<T: Send>(out: &mut [T], inner: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if inner == 0 || out.is_empty() {
        return;
    }
    let per_task = rows_per_task(inner);
    if out.len() < PARALLEL_MIN_ELEMS {
        out.chunks_mut(inner).enumerate().for_each(|(r, row)| f(r, row));
    } else {
        out.par_chunks_mut(inner * per_task).enumerate().for_each(|(task, rows)| {
            for (i, row) in rows.chunks_mut(inner).enumerate() {
                f(task * per_task + i, row);
            }
        });
    }
}

/// Copies a strided view of `shape` into the contiguous `out` (`out.len()` = product of `shape`).
pub fn copy_strided<T: Copy + Send + Sync>(src: Strided<'_, T>, shape: &[usize], out: &mut [T]) {
    if shape.is_empty() {
        if let Some(o) = out.first_mut() {
            *o = src.data[src.offset];
        }
        return;
    }
    let inner = shape[shape.len() - 1];
    let step = src.strides[shape.len() - 1];
    for_each_row(out, inner, |r, row| {
        let base = row_offset(shape, src.strides, src.offset, r);
        if step == 1 {
            row.copy_from_slice(&src.data[base..base + inner]);
        } else {
            for (j, o) in row.iter_mut().enumerate() {
                *o = src.data[base + j * step];
            }
        }
    });
}

/// `out[i] = f(a[i])` over a strided `a` of `shape`.
pub fn unary_map<T, U, F>(a: Strided<'_, T>, shape: &[usize], out: &mut [U], f: F)
where
    T: Copy + Send + Sync,
    U: Copy + Send + Sync,
    F: Fn(T) -> U + Sync,
{
    if shape.is_empty() {
        if let Some(o) = out.first_mut() {
            *o = f(a.data[a.offset]);
        }
        return;
    }
    let inner = shape[shape.len() - 1];
    let step = a.strides[shape.len() - 1];
    for_each_row(out, inner, |r, row| {
        let base = row_offset(shape, a.strides, a.offset, r);
        if step == 1 {
            for (o, &x) in row.iter_mut().zip(&a.data[base..base + inner]) {
                *o = f(x);
            }
        } else {
            for (j, o) in row.iter_mut().enumerate() {
                *o = f(a.data[base + j * step]);
            }
        }
    });
}

/// `out[i] = f(a[i], b[i])` over two strided operands already broadcast to `shape`.
pub fn binary_map<T, F>(a: Strided<'_, T>, b: Strided<'_, T>, shape: &[usize], out: &mut [T], f: F)
where
    T: Copy + Send + Sync,
    F: Fn(T, T) -> T + Sync,
{
    if shape.is_empty() {
        if let Some(o) = out.first_mut() {
            *o = f(a.data[a.offset], b.data[b.offset]);
        }
        return;
    }
    let last = shape.len() - 1;
    let inner = shape[last];
    let (sa, sb) = (a.strides[last], b.strides[last]);
    for_each_row(out, inner, |r, row| {
        let oa = row_offset(shape, a.strides, a.offset, r);
        let ob = row_offset(shape, b.strides, b.offset, r);
        // The common layouts get loops the compiler can vectorise.
        match (sa, sb) {
            (1, 1) => {
                let (ra, rb) = (&a.data[oa..oa + inner], &b.data[ob..ob + inner]);
                for ((o, &x), &y) in row.iter_mut().zip(ra).zip(rb) {
                    *o = f(x, y);
                }
            }
            (1, 0) => {
                let y = b.data[ob];
                for (o, &x) in row.iter_mut().zip(&a.data[oa..oa + inner]) {
                    *o = f(x, y);
                }
            }
            (0, 1) => {
                let x = a.data[oa];
                for (o, &y) in row.iter_mut().zip(&b.data[ob..ob + inner]) {
                    *o = f(x, y);
                }
            }
            _ => {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = f(a.data[oa + j * sa], b.data[ob + j * sb]);
                }
            }
        }
    });
}

/// Merges adjacent dimensions that are laid out as one (`stride[i] == stride[i+1] * shape[i+1]` for every
/// operand) and drops size-1 dimensions, so traversals see the longest possible inner runs.
/// Returns the merged shape and, per operand, the merged strides.
pub fn coalesce(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::with_capacity(shape.len()); strides.len()];
    for (d, &size) in shape.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let mergeable = !out_shape.is_empty()
            && strides.iter().zip(&out_strides).all(|(s, os)| os[os.len() - 1] == s[d] * size);
        if mergeable {
            let last = out_shape.len() - 1;
            out_shape[last] *= size;
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                os[last] = s[d];
            }
        } else {
            out_shape.push(size);
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                os.push(s[d]);
            }
        }
    }
    (out_shape, out_strides)
}

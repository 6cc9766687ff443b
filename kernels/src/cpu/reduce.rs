//! Sum over a set of axes of a strided view.
//!
//! Each output element is accumulated in f64, over the reduced index space in row-major order, by one
//! thread: the result is deterministic and as accurate as a plain f64 loop.
use crate::cpu::strided::{coalesce, Strided};
use crate::float::{Float, PARALLEL_MIN_ELEMS};
use rayon::prelude::*;

/// `out[kept] = sum over reduced axes of src`, where `reduce[d]` marks the reduced axes of `shape` and
/// `out` is contiguous row-major over the kept axes (its length is their product).
pub fn sum_axes<T: Float>(src: Strided<'_, T>, shape: &[usize], reduce: &[bool], out: &mut [T]) {
    let pick = |want: bool| -> (Vec<usize>, Vec<usize>) {
        (0..shape.len()).filter(|&d| reduce[d] == want).map(|d| (shape[d], src.strides[d])).unzip()
    };
    let (kept_shape, kept_strides) = pick(false);
    let (red_shape, red_strides) = pick(true);
    let (red_shape, red_strides) = coalesce(&red_shape, &[&red_strides]);
    let red_strides = &red_strides[0];
    let red_count: usize = red_shape.iter().product();

    let sum_one = |o: usize| -> T {
        let mut base = src.offset;
        let mut rest = o;
        for d in (0..kept_shape.len()).rev() {
            base += (rest % kept_shape[d]) * kept_strides[d];
            rest /= kept_shape[d];
        }
        if red_count == 0 {
            return T::ZERO;
        }
        if red_shape.is_empty() {
            return src.data[base];
        }
        let last = red_shape.len() - 1;
        let (inner, step) = (red_shape[last], red_strides[last]);
        let mut acc = 0.0f64;
        let mut idx = vec![0usize; last];
        loop {
            let mut off = base;
            for (d, &i) in idx.iter().enumerate() {
                off += i * red_strides[d];
            }
            for j in 0..inner {
                acc += src.data[off + j * step].to_f64();
            }
            // Odometer over the outer reduced axes.
            let mut d = last;
            loop {
                if d == 0 {
                    return T::from_f64(acc);
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < red_shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    };

    if out.len() * red_count.max(1) < PARALLEL_MIN_ELEMS {
        out.iter_mut().enumerate().for_each(|(o, v)| *v = sum_one(o));
    } else {
        let grain = (PARALLEL_MIN_ELEMS / red_count.max(1)).max(1);
        out.par_chunks_mut(grain).enumerate().for_each(|(c, chunk)| {
            for (i, v) in chunk.iter_mut().enumerate() {
                *v = sum_one(c * grain + i);
            }
        });
    }
}

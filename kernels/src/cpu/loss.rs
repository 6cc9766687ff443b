//! Fused cross-entropy: log-softmax plus negative log-likelihood, mean over targets not ignored.
//!
//! Per counted row: `loss = logsumexp(x) - x[t] = (m - x[t]) + ln(sum_j exp(x_j - m))` with
//! `m = max_j x_j`, so no exponent overflows and a confident prediction's small loss is not rounded at
//! the magnitude of the logits. The gradient of the mean over `count` rows is
//! `(softmax(x) - onehot(t)) / count`. Logits are never converted to probabilities in memory except as
//! the gradient itself.
use super::bf16::{round, widen};
use super::elementwise::for_each_row_block;
use super::simd::{self, multiversion, Isa, WIDE};
use crate::Float;
use half::bf16;
use rayon::prelude::*;

/// Number of rows whose target is not `ignore_id`.
pub fn counted_targets(targets: &[u32], ignore_id: Option<u32>) -> usize {
    targets.iter().filter(|&&t| Some(t) != ignore_id).count()
}

/// Mean over counted rows of `logsumexp(logits[row]) - logits[row, target]`; rows are `vocab` long.
/// Returns 0 when no row is counted. Targets of counted rows must be `< vocab` (checked by the caller).
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
    T::from_f64(cross_entropy_sum(logits, vocab, targets, ignore_id) / count as f64)
}

/// Sum over counted rows of `logsumexp(logits[row]) - logits[row, target]`, in f64; 0 when no row is
/// counted. The mean is this over [`counted_targets`]; a caller that sees the rows in blocks (the LM head
/// fused with the loss) adds the blocks' sums in order and divides once.
///
/// Per-row losses are computed in parallel into a buffer, then summed sequentially in row order (in f64,
/// so a long batch loses no precision in f32) so the result is independent of the thread count.
pub fn cross_entropy_sum<T: Float>(
    logits: &[T],
    vocab: usize,
    targets: &[u32],
    ignore_id: Option<u32>,
) -> f64 {
    if vocab == 0 || counted_targets(targets, ignore_id) == 0 {
        return 0.0;
    }
    let mut row_loss = vec![T::ZERO; targets.len()];
    let isa = Isa::active();
    for_each_row_block(&mut row_loss, 1, vocab, |row0, losses| {
        let rows = row0..row0 + losses.len();
        let x = &logits[rows.start * vocab..rows.end * vocab];
        loss_rows(isa, x, vocab, &targets[rows], ignore_id, losses);
    });
    sum_counted(&row_loss, targets, ignore_id)
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
    let isa = Isa::active();
    for_each_row_block(grad_logits, vocab, vocab, |row0, grads| {
        let rows = row0..row0 + grads.len() / vocab;
        let x = &logits[rows.start * vocab..rows.end * vocab];
        grad_rows(isa, x, vocab, &targets[rows], ignore_id, factor, grads);
    });
}

/// Rows per parallel task of [`cross_entropy_bf16`].
const BF16_ROWS_PER_TASK: usize = 4;

/// Logits that [`cross_entropy_bf16`] reads a row at a time as f32: bf16 (widened into a row buffer) or
/// f32 (read in place: the LM head can form its logits in f32 straight from the bf16 GEMM's accumulator).
pub trait LogitRow: Copy + Send + Sync {
    /// `row` as f32, in `buffer` when it must be converted.
    fn as_f32<'a>(row: &'a [Self], buffer: &'a mut [f32]) -> &'a [f32];
}

impl LogitRow for bf16 {
    fn as_f32<'a>(row: &'a [bf16], buffer: &'a mut [f32]) -> &'a [f32] {
        widen(row, buffer);
        buffer
    }
}

impl LogitRow for f32 {
    fn as_f32<'a>(row: &'a [f32], _buffer: &'a mut [f32]) -> &'a [f32] {
        row
    }
}

/// [`cross_entropy_sum`] of bf16 (or f32) logits and, with `grad = Some((grad_loss, out))`, also
/// [`cross_entropy_backward`] into the bf16 `out`, in one pass a row at a time: each row is read as f32
/// (a bf16 row widened into a row buffer), its loss and gradient row formed by the f32 kernels and the
/// gradient rounded once on store. Row `r`'s results depend only on row `r` and the row losses are added
/// in row order in f64, so these are the bits of widening the whole logits, running the two f32 kernels
/// and rounding the gradient, without the two f32 copies of the logits and the f32 gradient.
pub fn cross_entropy_bf16<L: LogitRow>(
    logits: &[L],
    vocab: usize,
    targets: &[u32],
    ignore_id: Option<u32>,
    grad: Option<(f32, &mut [bf16])>,
) -> f64 {
    let count = counted_targets(targets, ignore_id);
    if count == 0 || vocab == 0 {
        if let Some((_, out)) = grad {
            out.fill(bf16::ZERO);
        }
        return 0.0;
    }
    let isa = Isa::active();
    let mut row_loss = vec![0.0f32; targets.len()];
    let buffers = || (vec![0.0f32; vocab], vec![0.0f32; vocab]);
    let rows = |row0: usize,
                losses: &mut [f32],
                mut out: Option<(f32, &mut [bf16])>,
                bufs: &mut (Vec<f32>, Vec<f32>)| {
        let (wide, wide_grad) = bufs;
        for (i, loss) in losses.iter_mut().enumerate() {
            let r = row0 + i;
            let x = L::as_f32(&logits[r * vocab..(r + 1) * vocab], wide);
            let target = &targets[r..r + 1];
            loss_rows(isa, x, vocab, target, ignore_id, std::slice::from_mut(loss));
            if let Some((factor, out)) = out.as_mut() {
                grad_rows(isa, x, vocab, target, ignore_id, *factor, wide_grad);
                round(wide_grad, &mut out[i * vocab..(i + 1) * vocab]);
            }
        }
    };
    match grad {
        Some((grad_loss, out)) => {
            // `cross_entropy_backward`'s factor, with the same roundings.
            let factor = grad_loss / f32::from_f64(count as f64);
            row_loss
                .par_chunks_mut(BF16_ROWS_PER_TASK)
                .zip(out.par_chunks_mut(BF16_ROWS_PER_TASK * vocab))
                .enumerate()
                .for_each_init(buffers, |bufs, (task, (losses, out))| {
                    rows(task * BF16_ROWS_PER_TASK, losses, Some((factor, out)), bufs)
                });
        }
        None => row_loss
            .par_chunks_mut(BF16_ROWS_PER_TASK)
            .enumerate()
            .for_each_init(buffers, |bufs, (task, losses)| {
                rows(task * BF16_ROWS_PER_TASK, losses, None, bufs)
            }),
    }
    sum_counted(&row_loss, targets, ignore_id)
}

/// The f64 sum, in row order, of the losses of the rows whose target is not `ignore_id`.
fn sum_counted<T: Float>(row_loss: &[T], targets: &[u32], ignore_id: Option<u32>) -> f64 {
    targets
        .iter()
        .zip(row_loss)
        .filter(|(&t, _)| Some(t) != ignore_id)
        .fold(0.0, |acc, (_, &l)| acc + l.to_f64())
}

multiversion! {
    /// Loss of each counted row of `logits` (rows `vocab` long) into `losses`; ignored rows are skipped.
    fn loss_rows[T: Float](
        isa: Isa,
        logits: &[T],
        vocab: usize,
        targets: &[u32],
        ignore_id: Option<u32>,
        losses: &mut [T],
    ) {
        for ((x, &target), loss) in logits.chunks_exact(vocab).zip(targets).zip(losses) {
            if Some(target) != ignore_id {
                let (max, sum) = log_sum_exp_parts(x);
                *loss = (max - x[target as usize]) + sum.ln();
            }
        }
    }
}

/// `(m, s)` with `m = max_j x_j` and `s = sum_j exp(x_j - m)`, in a single pass (the online softmax):
/// each of `WIDE` lanes keeps the running max of its elements and the sum relative to it, rescaled when
/// the max grows, with one exponential per element; the lanes are merged in order at the end. One pass
/// means each logit is read from memory once, while the exponentials overlap the loads.
#[inline(always)]
fn log_sum_exp_parts<T: Float>(x: &[T]) -> (T, T) {
    let (mut max, mut sum) = ([T::NEG_INFINITY; WIDE], [T::ZERO; WIDE]);
    let chunks = x.chunks_exact(WIDE);
    let tail = chunks.remainder();
    for xs in chunks {
        for ((m, s), &v) in max.iter_mut().zip(sum.iter_mut()).zip(xs) {
            (*m, *s) = merge_parts((*m, *s), (v, T::ONE));
        }
    }
    let lanes = max.into_iter().zip(sum).fold((T::NEG_INFINITY, T::ZERO), merge_parts);
    tail.iter().fold(lanes, |parts, &v| merge_parts(parts, (v, T::ONE)))
}

/// Merges two `(max, sum of exp(x - max))` summaries (a single element x is `(x, 1)`): the result is
/// relative to the larger max, the other sum scaled by `exp(smaller - larger) <= 1`. A summary of
/// nothing, `(-inf, 0)`, contributes nothing (`exp(-inf - -inf)` would be NaN); NaN propagates.
#[inline(always)]
fn merge_parts<T: Float>((m1, s1): (T, T), (m2, s2): (T, T)) -> (T, T) {
    let (hi, s_hi, lo, s_lo) = if m2 > m1 { (m2, s2, m1, s1) } else { (m1, s1, m2, s2) };
    let scale = if lo == T::NEG_INFINITY { T::ZERO } else { simd::exp(lo - hi) };
    (hi, simd::fma(s_lo, scale, s_hi))
}

/// Logits per chunk of the gradient: 2048 f32 (8 KB) of logits and of gradient stay in L1 while a chunk is
/// worked on.
const CHUNK: usize = 2048;

multiversion! {
    /// Gradient rows in one pass over memory, chunk by chunk: `exp(x - chunk max)` is written into the
    /// gradient row (which stays in cache) and summed, in the same loop that finds the max of the next
    /// chunk, so the loads of one chunk overlap the exponentials of the previous one; then each chunk is
    /// scaled by `factor * exp(chunk max - max) / sum`. Each logit is read once and exponentiated once.
    fn grad_rows[T: Float](
        isa: Isa,
        logits: &[T],
        vocab: usize,
        targets: &[u32],
        ignore_id: Option<u32>,
        factor: T,
        grads: &mut [T],
    ) {
        let mut chunk_max = Vec::with_capacity(vocab.div_ceil(CHUNK));
        for ((x, &target), g) in logits.chunks_exact(vocab).zip(targets).zip(grads.chunks_exact_mut(vocab)) {
            if Some(target) == ignore_id {
                g.fill(T::ZERO);
                continue;
            }
            chunk_max.clear();
            chunk_max.push(simd::max(&x[..CHUNK.min(vocab)]));
            let mut parts = (T::NEG_INFINITY, T::ZERO);
            for (k, (xc, gc)) in x.chunks(CHUNK).zip(g.chunks_mut(CHUNK)).enumerate() {
                let next = x.get((k + 1) * CHUNK..).map_or(&[][..], |rest| &rest[..CHUNK.min(rest.len())]);
                let (sum, next_max) = if chunk_max[k] == T::NEG_INFINITY {
                    // A chunk of -inf logits has probability 0 (`exp(x - max)` would be NaN).
                    gc.fill(T::ZERO);
                    (T::ZERO, simd::max(next))
                } else {
                    exp_sum_and_next_max(xc, chunk_max[k], gc, next)
                };
                chunk_max.push(next_max);
                parts = merge_parts(parts, (chunk_max[k], sum));
            }
            let (max, factor_over_sum) = (parts.0, factor / parts.1);
            for (gc, &m) in g.chunks_mut(CHUNK).zip(&chunk_max) {
                let scale = factor_over_sum * simd::exp(m - max);
                for gj in gc.iter_mut() {
                    *gj *= scale;
                }
            }
            g[target as usize] -= factor;
        }
    }
}

/// Writes `out[j] = exp(x[j] - shift)` and returns their sum (in `WIDE` lanes, combined in order) and
/// the max of `next` (`-inf` if empty), both from one loop over the two slices.
#[inline(always)]
fn exp_sum_and_next_max<T: Float>(x: &[T], shift: T, out: &mut [T], next: &[T]) -> (T, T) {
    let (mut sum, mut max) = ([T::ZERO; WIDE], [T::NEG_INFINITY; WIDE]);
    let both = x.len().min(next.len()) / WIDE * WIDE;
    let lanes = x[..both].chunks_exact(WIDE).zip(out[..both].chunks_exact_mut(WIDE));
    for ((xs, os), ns) in lanes.zip(next[..both].chunks_exact(WIDE)) {
        for ((((s, m), o), &v), &w) in sum.iter_mut().zip(max.iter_mut()).zip(os).zip(xs).zip(ns) {
            *o = simd::exp(v - shift);
            *s += *o;
            *m = if w > *m { w } else { *m };
        }
    }
    let total = simd::combine(sum) + exp_shifted_sum(&x[both..], shift, &mut out[both..]);
    let lane_max = max.iter().fold(T::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let rest_max = simd::max(&next[both..]);
    (total, if rest_max > lane_max { rest_max } else { lane_max })
}

/// Writes `out[j] = exp(x[j] - shift)` and returns their sum, accumulated like `simd::sum_map`.
#[inline(always)]
fn exp_shifted_sum<T: Float>(x: &[T], shift: T, out: &mut [T]) -> T {
    let mut acc = [T::ZERO; WIDE];
    let split = x.len() / WIDE * WIDE;
    let (body, tail) = out.split_at_mut(split);
    for (xs, os) in x.chunks_exact(WIDE).zip(body.chunks_exact_mut(WIDE)) {
        for ((s, o), &v) in acc.iter_mut().zip(os).zip(xs) {
            *o = simd::exp(v - shift);
            *s += *o;
        }
    }
    x[split..].iter().zip(tail).fold(simd::combine(acc), |s, (&v, o)| {
        *o = simd::exp(v - shift);
        s + *o
    })
}

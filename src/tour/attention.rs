//! Stops 5 and 6: RoPE turns positions into rotations of pairs of a head's dimensions, and causal
//! attention mixes each token with the ones before it.
use super::check::{central_differences, max_abs_diff, show, softmax};
use super::Result;
use crate::tensor::Tensor;
use std::fmt::Write as _;

/// The same head vector `[1, 2, 3, 4]` at positions 0, 1, 2 through `Tensor::rope` (rotate-half: pair i
/// is dims `(i, i + 2)`, turned by `position * theta^(-2i/4)`), position 2 by hand.
pub fn rope(out: &mut String) -> Result<()> {
    let (x, theta) = ([1.0f64, 2.0, 3.0, 4.0], 10000.0);
    let input: Vec<f32> = (0..3).flat_map(|_| x.map(|v| v as f32)).collect();
    let engine = Tensor::from_vec(input, &[1, 3, 1, 4])?.rope(&[0, 1, 2], theta)?.to_vec_f64();
    let mut by_hand = [0.0; 4];
    for i in 0..2 {
        let angle = 2.0 * f64::powf(theta, -2.0 * i as f64 / 4.0);
        let (sin, cos) = angle.sin_cos();
        by_hand[i] = x[i] * cos - x[i + 2] * sin;
        by_hand[i + 2] = x[i + 2] * cos + x[i] * sin;
        writeln!(
            out,
            "pair {i} = dims ({i}, {}): angle at position 2 = 2 * 10000^(-{}/4) = {angle}",
            i + 2,
            2 * i
        )?;
    }
    writeln!(out, "position 0 leaves x = {x:?} as it is: {}", show(&engine[..4], 4))?;
    writeln!(
        out,
        "by hand, position 2: y_i = x_i cos a_i - x_(i+2) sin a_i, y_(i+2) = x_(i+2) cos a_i + x_i sin a_i"
    )?;
    writeln!(out, "by hand: {}", show(&by_hand, 5))?;
    writeln!(out, "engine:  {}", show(&engine[8..], 5))?;
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    writeln!(
        out,
        "a rotation keeps the length: |x| = {:.5}, |rope(x)| = {:.5}",
        norm(&x),
        norm(&engine[8..])
    )?;
    Ok(())
}

const SEQ: usize = 3;
const DIM: usize = 2;

/// `softmax(q k^T * scale + causal mask) v` for one head, by hand in f64: the scores, the weights and the
/// output, each `[SEQ, ...]` row-major.
fn attend(q: &[f64], k: &[f64], v: &[f64], scale: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let dot = |i: usize, j: usize| (0..DIM).map(|d| q[i * DIM + d] * k[j * DIM + d]).sum::<f64>() * scale;
    let scores: Vec<f64> = (0..SEQ * SEQ)
        .map(|ij| if ij % SEQ <= ij / SEQ { dot(ij / SEQ, ij % SEQ) } else { f64::NEG_INFINITY })
        .collect();
    let weights: Vec<f64> = scores.chunks(SEQ).flat_map(softmax).collect();
    let output = (0..SEQ * DIM)
        .map(|id| (0..SEQ).map(|j| weights[id / DIM * SEQ + j] * v[j * DIM + id % DIM]).sum::<f64>())
        .collect();
    (scores, weights, output)
}

/// Three tokens, one head of dimension 2: forward by hand against `Tensor::attention`, and the
/// gradients of `L = sum(out * c)` from `Tensor::attention_backward` against finite differences.
pub fn attention(out: &mut String) -> Result<()> {
    let q = vec![1.0, 0.0, 0.5, 1.0, -1.0, 2.0];
    let k = vec![0.0, 1.0, 1.0, 1.0, 2.0, -1.0];
    let v = vec![1.0, 2.0, -1.0, 0.0, 3.0, 1.0];
    let c = vec![1.0, -1.0, 0.5, 2.0, -0.5, 1.0];
    let scale = 1.0 / (DIM as f64).sqrt();
    let tensor = |values: &[f64]| Tensor::from_vec(values.to_vec(), &[1, SEQ, 1, DIM]);
    let (tq, tk, tv) = (tensor(&q)?, tensor(&k)?, tensor(&v)?);
    let (scores, weights, by_hand) = attend(&q, &k, &v, scale);
    writeln!(
        out,
        "q = {}, k = {}, v = {} (3 tokens x dim 2), scale 1/sqrt(2)",
        show(&q, 1),
        show(&k, 1),
        show(&v, 1)
    )?;
    for i in 0..SEQ {
        let row: Vec<String> = scores[i * SEQ..(i + 1) * SEQ]
            .iter()
            .map(|s| if s.is_finite() { format!("{s:.4}") } else { "masked".into() })
            .collect();
        writeln!(
            out,
            "token {i}: scores q{i}.k_j * scale = [{}] -> weights {}",
            row.join(", "),
            show(&weights[i * SEQ..(i + 1) * SEQ], 4)
        )?;
    }
    let engine = Tensor::attention(&tq, &tk, &tv, scale)?.to_vec_f64();
    writeln!(out, "by hand: out = weights v = {}", show(&by_hand, 6))?;
    writeln!(out, "engine:                   {}", show(&engine, 6))?;
    let grads = Tensor::attention_backward(&tq, &tk, &tv, &tensor(&c)?, scale)?;
    let engine_grads: Vec<f64> = grads.iter().flat_map(|g| g.to_vec_f64()).collect();
    let all: Vec<f64> = q.iter().chain(&k).chain(&v).copied().collect();
    let n = SEQ * DIM;
    let fd = central_differences(
        |p| {
            let (_, _, o) = attend(&p[..n], &p[n..2 * n], &p[2 * n..], scale);
            o.iter().zip(&c).map(|(o, c)| o * c).sum()
        },
        &all,
    );
    writeln!(out, "L = sum(out * c), c = {}", show(&c, 1))?;
    for (name, part) in ["dq", "dk", "dv"].iter().zip(0..3) {
        let range = part * n..(part + 1) * n;
        writeln!(
            out,
            "{name}: engine {}  finite differences {}",
            show(&engine_grads[range.clone()], 5),
            show(&fd[range], 5)
        )?;
    }
    writeln!(
        out,
        "dq of token 0 = {}: its one weight is 1 whatever its score",
        show(&engine_grads[..DIM], 5)
    )?;
    writeln!(
        out,
        "largest |engine - finite difference| below 1e-7: {}",
        max_abs_diff(&engine_grads, &fd) < 1e-7
    )?;
    Ok(())
}

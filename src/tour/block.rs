//! Stops 7 and 8: the gated MLP and the residual add that closes a block, then the LM head and the
//! cross-entropy that turn the last hidden states into a loss.
use super::check::{matmul, max_abs_diff, show, silu, softmax};
use super::Result;
use crate::autograd::{Eager, Graph, SlotKind, Tape};
use crate::nn::{Llama, LlamaConfig, Mlp, Module};
use crate::tensor::{DType, Rng, Tensor};
use std::fmt::Write as _;

const D: usize = 2;
const F: usize = 3;

/// A dense gated MLP (`nn/src/mlp.rs`) of `d_model` 2 and `ffn_dim` 3 with hand-set weights:
/// `mlp(x) = (silu(x Wg) * (x Wu)) Wd`, then the residual add `y = x + mlp(x)` of `nn/src/block.rs`.
pub fn mlp(out: &mut String) -> Result<()> {
    let mut config = LlamaConfig::preset("full-tiny")?;
    (config.d_model, config.ffn_dim, config.rank, config.mlp_gate_silu) = (D, F, None, true);
    let mut mlp = Mlp::new("mlp", &config, DType::F64, &mut crate::nn::Init::Zeros);
    let gate = vec![1.0, -0.5, 0.0, 0.5, 1.0, -1.0];
    let up = vec![0.5, 0.5, 1.0, -1.0, 0.0, 2.0];
    let down = vec![1.0, 0.0, -1.0, 1.0, 0.5, 0.5];
    let mut values = vec![(gate.clone(), [D, F]), (up.clone(), [D, F]), (down.clone(), [F, D])].into_iter();
    let mut failed = None;
    mlp.visit_mut(&mut |p, _| {
        if let Some((v, shape)) = values.next() {
            match Tensor::from_vec(v, &shape) {
                Ok(t) => p.set_value(t),
                Err(e) => failed = Some(e),
            }
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    let x = vec![1.0, -1.0];
    let g = matmul(&x, &gate, 1, D, F);
    let u = matmul(&x, &up, 1, D, F);
    let hidden: Vec<f64> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
    let by_hand = matmul(&hidden, &down, 1, F, D);
    let mut tape = Tape::new();
    let input = tape.constant(Tensor::from_vec(x.clone(), &[1, D])?);
    let mixed = mlp.forward(&mut tape, &input)?;
    let y = tape.add(&input, &mixed)?;
    writeln!(out, "x = {x:?}; Wg = {gate:?}, Wu = {up:?} [2, 3]; Wd = {down:?} [3, 2]")?;
    writeln!(out, "gate = x Wg = {}, up = x Wu = {}", show(&g, 4), show(&u, 4))?;
    writeln!(out, "silu(gate) * up = {} (one fused op, `gated`)", show(&hidden, 6))?;
    writeln!(out, "by hand: mlp(x) = (silu(gate) * up) Wd = {}", show(&by_hand, 6))?;
    writeln!(out, "engine:  mlp(x)                        = {}", show(&tape.value(mixed)?.to_vec_f64(), 6))?;
    let stream: Vec<f64> = x.iter().zip(&by_hand).map(|(x, m)| x + m).collect();
    writeln!(
        out,
        "residual: y = x + mlp(x) = {} (engine {})",
        show(&stream, 6),
        show(&tape.value(y)?.to_vec_f64(), 6)
    )?;
    residual_stream(out)
}

/// The residual stream of cola-tiny at token 0 of four: every block adds its attention branch, then its
/// MLP branch, to the stream, and never rewrites it. The adds are the nodes whose outputs `nn/src/block.rs`
/// marks `Residual` (h) and `LayerOutput` (y, which the next layer marks `LayerInput`).
fn residual_stream(out: &mut String) -> Result<()> {
    let config = LlamaConfig::preset("cola-tiny")?;
    let model = Llama::new(config.clone(), &mut Rng::new(1))?;
    let ids = [5u32, 9, 2, 7];
    let mut tape = Tape::new();
    model.hidden_states(&mut tape, &ids, 1, ids.len())?;
    let d = config.d_model;
    let rms =
        |v: &[f32]| (v[..d].iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / d as f64).sqrt();
    writeln!(out, "cola-tiny's residual stream at token 0 (RMS over its {d} values):")?;
    let mut layer = 0;
    for node in tape.nodes() {
        let kind = tape.kind(node.output)?;
        // A layer's output is the next layer's input, and marked as such by the next layer.
        let (branch, name) = match kind {
            SlotKind::Residual => ("attention", "h"),
            SlotKind::LayerOutput | SlotKind::LayerInput => ("mlp", "y"),
            _ => continue,
        };
        let [stream, added] = node.inputs[..] else { continue };
        if node.op.name() != "add" {
            continue;
        }
        let (before, branch_values) =
            (tape.value(stream)?.to_vec::<f32>()?, tape.value(added)?.to_vec::<f32>()?);
        let after = tape.value(node.output)?.to_vec::<f32>()?;
        let exact = before.iter().zip(&branch_values).zip(&after).all(|((b, r), a)| b + r == *a);
        writeln!(
            out,
            "  layer {layer}: stream {:.4} + {branch} branch {:.4} -> {name} {:.4}; exactly the sum: {exact}",
            rms(&before),
            rms(&branch_values),
            rms(&after)
        )?;
        if name == "y" {
            layer += 1;
        }
    }
    Ok(())
}

/// The loss of an untrained cola-tiny is near `ln V`; the gradient of the mean cross-entropy with respect
/// to the logits is `(softmax - one_hot) / rows`; the fused, chunked head (`tensor/src/ops/head_loss.rs`)
/// gives the loss and gradients of the unchunked formula `cross_entropy(hidden W)`.
pub fn head(out: &mut String) -> Result<()> {
    let config = LlamaConfig::preset("cola-tiny")?;
    let model = Llama::new(config.clone(), &mut Rng::new(1))?;
    let seq = config.max_seq_len;
    let ids: Vec<u32> = (0..seq as u32).map(|i| 2 + (i * 7) % (config.vocab_size as u32 - 2)).collect();
    let loss = model.loss(&mut Eager, &ids, 1, seq)?.to_scalar()?;
    let vocab = config.vocab_size as f64;
    writeln!(out, "cola-tiny at init, {seq} tokens: loss {loss:.4}, ln V = ln {vocab} = {:.4}", vocab.ln())?;

    const ROWS: usize = 3;
    const DIM: usize = 2;
    const V: usize = 4;
    let hidden = vec![1.0, 0.0, 0.5, -1.0, -1.0, 2.0];
    let weight = vec![1.0, -1.0, 0.0, 2.0, 0.5, 0.5, -1.0, 0.0];
    let targets = [2u32, 0, 3];
    let logits = matmul(&hidden, &weight, ROWS, DIM, V);
    let probs: Vec<f64> = logits.chunks(V).flat_map(softmax).collect();
    let mut grad_logits = probs.clone();
    for (row, &t) in targets.iter().enumerate() {
        grad_logits[row * V + t as usize] -= 1.0;
    }
    grad_logits.iter_mut().for_each(|g| *g /= ROWS as f64);
    let by_hand_loss =
        -targets.iter().enumerate().map(|(r, &t)| probs[r * V + t as usize].ln()).sum::<f64>() / ROWS as f64;
    let weight_t: Vec<f64> = (0..V * DIM).map(|i| weight[(i % DIM) * V + i / DIM]).collect();
    let hidden_t: Vec<f64> = (0..DIM * ROWS).map(|i| hidden[(i % ROWS) * DIM + i / ROWS]).collect();
    let grad_hidden = matmul(&grad_logits, &weight_t, ROWS, V, DIM);
    let grad_weight = matmul(&hidden_t, &grad_logits, DIM, ROWS, V);
    writeln!(
        out,
        "hidden [3, 2] = {}, W [2, 4] = {}, targets {targets:?}",
        show(&hidden, 1),
        show(&weight, 1)
    )?;
    writeln!(
        out,
        "row 0: softmax(h0 W) = {}, minus one_hot(2) = {}",
        show(&probs[..V], 4),
        show(
            &{
                let mut row = probs[..V].to_vec();
                row[2] -= 1.0;
                row
            },
            4
        )
    )?;
    writeln!(
        out,
        "by hand: loss {by_hand_loss:.8}; dL/dh = (softmax - one_hot) W^T / 3 = {}",
        show(&grad_hidden, 5)
    )?;
    let (th, tw) =
        (Tensor::from_vec(hidden.clone(), &[ROWS, DIM])?, Tensor::from_vec(weight.clone(), &[DIM, V])?);
    let formula = th.matmul(&tw)?.cross_entropy(&targets, None)?.to_scalar()?;
    writeln!(out, "unchunked formula cross_entropy(h W): loss {formula:.8}")?;
    for chunk in [1, 2, 3] {
        let fused = th.head_cross_entropy_with_grads_chunked(&tw, &targets, None, true, true, chunk)?;
        let gh = fused.grad_hidden.map(|g| g.to_vec_f64()).unwrap_or_default();
        let gw = fused.grad_weight.map(|g| g.to_vec_f64()).unwrap_or_default();
        let worst = max_abs_diff(&gh, &grad_hidden).max(max_abs_diff(&gw, &grad_weight));
        writeln!(
            out,
            "fused head in blocks of {chunk} row(s): loss {:.8}; gradients of h and W within 1e-12 of by hand: {}",
            fused.loss.to_scalar()?,
            gh.len() == grad_hidden.len() && gw.len() == grad_weight.len() && worst < 1e-12
        )?;
    }
    Ok(())
}

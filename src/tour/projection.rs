//! Stop 4: a CoLA projection `y = silu(x A) B` (`nn/src/linear.rs`), its values and gradients checked
//! by hand, and what replacing every projection of a preset with one saves.
use super::check::{central_differences, matmul, max_abs_diff, show, silu};
use super::Result;
use crate::autograd::{Graph, Tape};
use crate::nn::{ColaLinear, Init, LlamaConfig};
use crate::tensor::{DType, Rng, Tensor};
use std::collections::BTreeMap;
use std::fmt::Write as _;

const IN: usize = 4;
const RANK: usize = 2;
const OUT: usize = 3;
const ROWS: usize = 2;

/// `silu(x A) B` by hand in f64: `x [ROWS, IN]`, `A [IN, RANK]`, `B [RANK, OUT]`.
fn by_hand(x: &[f64], a: &[f64], b: &[f64]) -> Vec<f64> {
    let code: Vec<f64> = matmul(x, a, ROWS, IN, RANK).into_iter().map(silu).collect();
    matmul(&code, b, ROWS, RANK, OUT)
}

/// One seeded `ColaLinear` in f64: forward values by hand against the tape's, then the gradients of
/// `L = sum(y^2)` against central finite differences of the by-hand forward; then the parameter counts
/// of the 350m and 60m presets, dense against CoLA.
pub fn cola(out: &mut String) -> Result<()> {
    let mut rng = Rng::new(4);
    let layer = ColaLinear::new("proj", IN, OUT, RANK, DType::F64, &mut Init::Random(&mut rng));
    let x_values = vec![1.0, -1.0, 0.5, 2.0, 0.0, 3.0, -2.0, 1.0];
    let (a, b) = (layer.a().value().to_vec_f64(), layer.b().value().to_vec_f64());
    let mut tape = Tape::new();
    let x = tape.constant(Tensor::from_vec(x_values.clone(), &[ROWS, IN])?);
    let y = layer.forward(&mut tape, &x)?;
    let engine = tape.value(y)?.to_vec_f64();
    writeln!(
        out,
        "x [2, 4] = {}, A [4, 2] and B [2, 3] seeded (proj.cola_a, proj.cola_b)",
        show(&x_values, 1)
    )?;
    writeln!(out, "x A     = {}", show(&matmul(&x_values, &a, ROWS, IN, RANK), 4))?;
    writeln!(out, "by hand: y = silu(x A) B = {}", show(&by_hand(&x_values, &a, &b), 6))?;
    writeln!(out, "engine:  y               = {}", show(&engine, 6))?;
    let squares = tape.mul(&y, &y)?;
    let loss = tape.sum(&squares, &[], false)?;
    let grads = tape.backward(loss)?;
    let grad =
        |p: &crate::autograd::Parameter| grads.param(p.id()).map(|g| g.to_vec_f64()).unwrap_or_default();
    let (grad_a, grad_b) = (grad(layer.a()), grad(layer.b()));
    let params: Vec<f64> = a.iter().chain(&b).copied().collect();
    let fd = central_differences(
        |p| by_hand(&x_values, &p[..IN * RANK], &p[IN * RANK..]).iter().map(|v| v * v).sum(),
        &params,
    );
    writeln!(out, "L = sum(y^2): dL/dA by the tape        {}", show(&grad_a, 5))?;
    writeln!(out, "              dL/dA by finite differences {}", show(&fd[..IN * RANK], 5))?;
    writeln!(out, "              dL/dB by the tape        {}", show(&grad_b, 5))?;
    writeln!(out, "              dL/dB by finite differences {}", show(&fd[IN * RANK..], 5))?;
    let worst = max_abs_diff(&grad_a, &fd[..IN * RANK]).max(max_abs_diff(&grad_b, &fd[IN * RANK..]));
    writeln!(out, "largest |tape - finite difference| below 1e-7: {}", worst < 1e-7)?;
    sizes(out, "350m", true)?;
    sizes(out, "60m", false)?;
    Ok(())
}

/// Weights of each projection of layer 0, of one layer and of the whole model, dense against CoLA; the
/// products cost 2 FLOPs per weight per token, so FLOPs shrink by the same ratios.
fn sizes(out: &mut String, size: &str, per_projection: bool) -> Result<()> {
    let (cola, full) =
        (LlamaConfig::preset(&format!("cola-{size}"))?, LlamaConfig::preset(&format!("full-{size}"))?);
    let ratio = |dense: usize, low: usize| dense as f64 / low as f64;
    if per_projection {
        let (d, f, r) = (cola.d_model, cola.ffn_dim, cola.rank.unwrap_or(0));
        writeln!(out, "cola-{size}: d_model {d}, ffn_dim {f}, rank {r}; weights dense -> CoLA (2 FLOPs per weight per token)")?;
        let (dense, low) = (projections(&full), projections(&cola));
        for (names, key, shape) in [
            ("q, k, v, o_proj", "self_attn.q_proj", format!("{d} -> {d}")),
            ("gate, up_proj", "mlp.gate_proj", format!("{d} -> {f}")),
            ("down_proj", "mlp.down_proj", format!("{f} -> {d}")),
        ] {
            let (n_dense, n_low) = (dense.get(key).copied().unwrap_or(0), low.get(key).copied().unwrap_or(0));
            writeln!(out, "  {names:<15} [{shape}]: {n_dense} -> {n_low} ({:.2}x)", ratio(n_dense, n_low))?;
        }
        let (l_dense, l_low) = (dense.values().sum::<usize>(), low.values().sum::<usize>());
        writeln!(out, "  one layer, norms included: {l_dense} -> {l_low} ({:.2}x)", ratio(l_dense, l_low))?;
    }
    let (m_dense, m_low) = (full.param_counts().total, cola.param_counts().total);
    let dense_ends: usize = full
        .parameter_shapes()
        .iter()
        .filter(|(name, _, _)| !name.starts_with("model.layers."))
        .map(|(_, shape, _)| shape.iter().product::<usize>())
        .sum();
    writeln!(
        out,
        "{size} whole model: {m_dense} -> {m_low} ({:.2}x); embedding, head and final norm stay dense: {dense_ends} ({:.0}% of cola-{size})",
        ratio(m_dense, m_low),
        100.0 * dense_ends as f64 / m_low as f64
    )?;
    Ok(())
}

/// Weights of layer 0 per module (`self_attn.q_proj`, `mlp.gate_proj`, the norms, ...), the CoLA factors
/// of a projection counted together.
fn projections(config: &LlamaConfig) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (name, shape, _) in config.parameter_shapes() {
        let Some(rest) = name.strip_prefix("model.layers.0.") else { continue };
        let module = rest.rsplit_once('.').map_or(rest, |(module, _)| module);
        *counts.entry(module.to_string()).or_insert(0) += shape.iter().product::<usize>();
    }
    counts
}

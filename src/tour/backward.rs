//! Stops 9 and 10: the tape's backward walk, node by node, and CoLA-M, which releases values after
//! forward and replays their ops in backward.
use super::check::{max_abs_diff, show};
use super::Result;
use crate::autograd::{Graph, Needs, Policy, Tape, Var};
use crate::nn::{ColaLinear, Init, Llama, LlamaConfig};
use crate::tensor::{DType, Rng, Tensor};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

/// Names a value by what it is on the tape.
fn describe(tape: &Tape, var: Var) -> Result<String> {
    Ok(format!("v{} {:?} {:?}", var.index(), tape.shape(var)?, tape.kind(var)?))
}

/// What an op's backward reads, in words.
fn saves(needs: Needs, inputs: usize) -> String {
    let mut read: Vec<String> =
        (0..inputs).filter(|&i| needs.input(i)).map(|i| format!("input {i}")).collect();
    if needs.output {
        read.push("output".into());
    }
    if read.is_empty() {
        "nothing".into()
    } else {
        read.join(" and ")
    }
}

/// One CoLA projection `y = silu(x @ A) @ B` recorded on a tape: its nodes and what each keeps; then the
/// backward walk from `L = sum(y)`, each node's rule applied by hand with tensor ops in reverse order,
/// against the gradients `Tape::backward` returns.
pub fn tape(out: &mut String) -> Result<()> {
    let mut rng = Rng::new(0);
    let layer = ColaLinear::new("proj", 4, 3, 2, DType::F32, &mut Init::Random(&mut rng));
    let mut tape = Tape::new();
    let x = tape.leaf(Tensor::randn(&[2, 4], 0.0, 1.0, DType::F32, &mut rng), true);
    let y = layer.forward(&mut tape, &x)?;
    writeln!(out, "y = silu(x @ A) @ B for x [2, 4], A [4, 2], B [2, 3]: {} nodes", tape.nodes().len())?;
    for (i, node) in tape.nodes().iter().enumerate() {
        let inputs: Vec<String> = node.inputs.iter().map(|&v| describe(&tape, v)).collect::<Result<_>>()?;
        writeln!(out, "node {i}: {}({})", node.op.name(), inputs.join(", "))?;
        writeln!(
            out,
            "        -> {}; backward reads {}",
            describe(&tape, node.output)?,
            saves(node.op.needs(), node.inputs.len())
        )?;
    }
    let (a, b) = (layer.a().value().clone(), layer.b().value().clone());
    let x_value = tape.value(x)?.clone();
    let pre = tape.value(tape.nodes()[0].output)?.clone();
    let code = tape.value(tape.nodes()[1].output)?.clone();
    let loss = tape.sum(&y, &[], false)?;
    let grads = tape.backward(loss)?;
    writeln!(out, "backward from L = sum(y): dL/dy = 1 everywhere, then the nodes in reverse:")?;
    let grad_y = Tensor::ones(&[2, 3], DType::F32);
    let grad_code = grad_y.matmul(&b.t()?)?;
    let grad_b = code.t()?.matmul(&grad_y)?;
    writeln!(
        out,
        "node 2 matmul: d code = dy B^T = {}; d B = code^T dy = {}",
        vals(&grad_code),
        vals(&grad_b)
    )?;
    let grad_pre = Tensor::silu_backward(&pre, &grad_code)?;
    writeln!(out, "node 1 silu:   d pre = d code * silu'(pre) = {}", vals(&grad_pre))?;
    let grad_x = grad_pre.matmul(&a.t()?)?;
    let grad_a = x_value.t()?.matmul(&grad_pre)?;
    writeln!(out, "node 0 matmul: d x = d pre A^T = {}", vals(&grad_x))?;
    writeln!(out, "               d A = x^T d pre = {}", vals(&grad_a))?;
    let from_tape = [grads.get(x), grads.param(layer.a().id()), grads.param(layer.b().id())];
    let walk = [&grad_x, &grad_a, &grad_b];
    let same = from_tape
        .iter()
        .zip(walk)
        .all(|(t, w)| t.is_some_and(|t| max_abs_diff(&t.to_vec_f64(), &w.to_vec_f64()) < 1e-6));
    writeln!(out, "Tape::backward's gradients of x, A and B equal the walk's (within 1e-6): {same}")?;
    Ok(())
}

fn vals(t: &Tensor) -> String {
    show(&t.to_vec_f64(), 4)
}

/// cola-tiny's values under each retention policy: what is held after forward, what backward starts
/// with, and that the gradients do not change; CoLA-M's released bytes by slot kind against the formula.
pub fn recompute(out: &mut String) -> Result<()> {
    let config = LlamaConfig::preset("cola-tiny")?;
    let model = Llama::new(config.clone(), &mut Rng::new(1))?;
    let (seq, d, f, r) = (config.max_seq_len, config.d_model, config.ffn_dim, config.rank.unwrap_or(0));
    let layers = config.n_layers;
    let ids: Vec<u32> = (0..seq as u32).map(|i| 2 + i * 5 % (config.vocab_size as u32 - 2)).collect();
    writeln!(
        out,
        "cola-tiny, 1 sequence of T = {seq} tokens, {layers} layers, d {d}, ffn {f}, rank {r}, f32"
    )?;
    let mut reference: Option<Vec<Vec<f64>>> = None;
    let mut keep_all: Option<(Tape, usize)> = None;
    for policy in [Policy::KeepAll, Policy::ColaM, Policy::Block] {
        let mut tape = Tape::with_policy(policy);
        let loss = model.loss(&mut tape, &ids, 1, seq)?;
        let released: Vec<Var> = tape.vars().filter(|&v| tape.value(v).is_err()).collect();
        let held = tape.held_bytes();
        let mut detail = String::new();
        if let (Policy::ColaM, Some((all, all_held))) = (policy, &keep_all) {
            released_by_kind(&mut detail, all, &tape, &released, *all_held - held, [seq, d, f, r, layers])?;
        }
        let grads = tape.backward(loss)?;
        let values: Vec<Vec<f64>> = model
            .parameters()
            .iter()
            .map(|p| grads.param(p.id()).map(|g| g.to_vec_f64()).unwrap_or_default())
            .collect();
        let same = reference.get_or_insert_with(|| values.clone()) == &values;
        writeln!(
            out,
            "{:<7} released {:>3} values; held after forward {held:>5} bytes, at backward start {:>5}; gradients equal to none's: {same}",
            policy.name(),
            released.len(),
            tape.memory_stats().saved_bytes,
        )?;
        out.push_str(&detail);
        if policy == Policy::KeepAll {
            // A second recording keeps its values for the byte count of what CoLA-M releases.
            let mut all = Tape::with_policy(Policy::KeepAll);
            model.loss(&mut all, &ids, 1, seq)?;
            keep_all = Some((all, held));
        }
    }
    Ok(())
}

/// Bytes CoLA-M released, by slot kind: each released value's buffer counted once (a reshape is a view
/// of its input's buffer), its size read from the same recording under `none`, which keeps everything.
fn released_by_kind(
    out: &mut String,
    all: &Tape,
    cola_m: &Tape,
    released: &[Var],
    difference: usize,
    [t, d, f, r, layers]: [usize; 5],
) -> Result<()> {
    let mut seen = HashSet::new();
    let mut by_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for &var in released {
        let value = all.value(var)?;
        if seen.insert(value.storage_key()) {
            let entry = by_kind.entry(format!("{:?}", cola_m.kind(var)?)).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += value.storage_bytes();
        }
    }
    let formulas = [
        ("LowRankCode", "7 codes x T x r x 4 bytes x layers", 7 * t * r * 4 * layers),
        ("Other", "T x (10 d + 3 f) x 4 bytes x layers", t * (10 * d + 3 * f) * 4 * layers),
    ];
    writeln!(out, "  cola-m released buffers by kind, measured against the formula:")?;
    let mut total = 0;
    for (kind, (buffers, bytes)) in &by_kind {
        let formula = formulas.iter().find(|(k, _, _)| k == kind);
        let shown = formula.map_or(String::new(), |(_, text, value)| format!("; {text} = {value}"));
        writeln!(out, "    {kind:<12} {buffers:>3} buffers {bytes:>6} bytes{shown}")?;
        total += bytes;
    }
    writeln!(out, "    Other per layer: 2 norm outputs, q k v o and down outputs, roped q and k, attention: 10 d; gate, up, gated: 3 f")?;
    writeln!(out, "    together {total} bytes = none's held bytes - cola-m's: {}", total == difference)?;
    Ok(())
}

//! The guided tour's stops (`docs/TOUR.md`): each one runs a small, seeded piece of the stack and
//! prints what a reader can check by hand. `examples/tour.rs` prints a stop; `tests/tour.rs` runs
//! every command of the document and compares the output with what the document shows, so the text
//! cannot drift from the code.
use crate::autograd::{Needs, Policy, SlotKind, Tape, Var};
use crate::kernels::cpu::gemm::{gemm_with_path, Dims, KernelPath, MatRef};
use crate::nn::{ColaLinear, Init, Llama, LlamaConfig, Module};
use crate::tensor::ops::optim::AdamWStep;
use crate::tensor::{DType, Rng, Tensor};
use cola_autograd::Graph;
use std::fmt::Write as _;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The stops, in the order of the journey.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Gemm,
    Views,
    Tape,
    Cola,
    Recompute,
    Adamw,
    Checkpoint,
}

impl Stop {
    pub const ALL: [Stop; 7] =
        [Stop::Gemm, Stop::Views, Stop::Tape, Stop::Cola, Stop::Recompute, Stop::Adamw, Stop::Checkpoint];

    pub fn name(self) -> &'static str {
        match self {
            Stop::Gemm => "gemm",
            Stop::Views => "views",
            Stop::Tape => "tape",
            Stop::Cola => "cola",
            Stop::Recompute => "recompute",
            Stop::Adamw => "adamw",
            Stop::Checkpoint => "checkpoint",
        }
    }
}

impl std::str::FromStr for Stop {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<Stop, String> {
        Stop::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Stop::ALL.iter().map(|s| s.name()).collect();
            format!("unknown stop {name:?}; the stops are {}", names.join(", "))
        })
    }
}

/// The printed output of one stop.
pub fn run(stop: Stop) -> Result<String> {
    let mut out = String::new();
    match stop {
        Stop::Gemm => gemm(&mut out)?,
        Stop::Views => views(&mut out)?,
        Stop::Tape => tape(&mut out)?,
        Stop::Cola => cola(&mut out)?,
        Stop::Recompute => recompute(&mut out)?,
        Stop::Adamw => adamw(&mut out)?,
        Stop::Checkpoint => checkpoint(&mut out)?,
    }
    Ok(out)
}

/// `[[1, 2, 3], [4, 5, 6]] @ [[7, 8], [9, 10], [11, 12]]` on every micro-kernel this CPU has: small
/// integers are exact in f32, so every path must give the same C.
fn gemm(out: &mut String) -> Result<()> {
    let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let b = [7.0f32, 8.0, 9.0, 10.0, 11.0, 12.0];
    let dims = Dims { m: 2, n: 2, k: 3 };
    writeln!(out, "selected micro-kernel: {}", KernelPath::selected().name())?;
    for path in KernelPath::ALL.into_iter().filter(|p| p.is_available()) {
        let mut c = [0.0f32; 4];
        gemm_with_path(path, dims, 1.0, row_major(&a, 3), row_major(&b, 2), 0.0, &mut c)?;
        writeln!(out, "{:>9}: C = [[{}, {}], [{}, {}]]", path.name(), c[0], c[1], c[2], c[3])?;
    }
    writeln!(out, "by hand: C[0][0] = 1*7 + 2*9 + 3*11 = {}", 7 + 2 * 9 + 3 * 11)?;
    Ok(())
}

/// A row-major matrix of `cols` columns as a GEMM operand.
fn row_major(data: &[f32], cols: usize) -> MatRef<'_, f32> {
    MatRef { data, offset: 0, row_stride: cols, col_stride: 1 }
}

/// A transpose and a narrow are new layouts over the same buffer; only `contiguous` copies.
fn views(out: &mut String) -> Result<()> {
    let x = Tensor::arange(6, DType::F32).reshape(&[2, 3])?;
    let show = |out: &mut String, what: &str, t: &Tensor| -> Result<()> {
        let layout = t.layout();
        let values = t.to_vec::<f32>()?;
        writeln!(
            out,
            "{what:<12} shape {:?} strides {:?} offset {} shares x's buffer: {:<5} values {values:?}",
            layout.shape(),
            layout.strides(),
            layout.offset(),
            t.shares_storage(&x),
        )?;
        Ok(())
    };
    show(out, "x", &x)?;
    show(out, "x.t()", &x.t()?)?;
    show(out, "x.narrow", &x.narrow(1, 1, 2)?)?;
    show(out, "contiguous", &x.t()?.contiguous()?)?;
    Ok(())
}

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

/// One CoLA projection `y = silu(x @ A) @ B` recorded on a tape: its nodes and what each keeps.
fn tape(out: &mut String) -> Result<()> {
    let mut rng = Rng::new(0);
    let layer = ColaLinear::new("proj", 4, 3, 2, DType::F32, &mut Init::Random(&mut rng));
    let mut tape = Tape::new();
    let x = tape.constant(Tensor::randn(&[2, 4], 0.0, 1.0, DType::F32, &mut rng));
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
    let loss = tape.sum(&y, &[], false)?;
    let grads = tape.backward(loss)?;
    for p in layer.parameters() {
        writeln!(
            out,
            "gradient of {} has shape {:?}",
            p.name(),
            grads.param(p.id()).map(|g| g.shape().to_vec()).unwrap_or_default()
        )?;
    }
    Ok(())
}

/// Parameters and FLOPs of one CoLA projection against the dense one it replaces, at the 350m sizes.
fn cola(out: &mut String) -> Result<()> {
    let config = LlamaConfig::preset("cola-350m")?;
    let (d, r) = (config.d_model, config.rank.unwrap_or(0));
    writeln!(out, "cola-350m q projection: d_model {d}, rank {r}")?;
    writeln!(out, "dense W [{d}, {d}]: {} parameters, {} FLOPs per token", d * d, 2 * d * d)?;
    writeln!(
        out,
        "CoLA A [{d}, {r}] + B [{r}, {d}]: {} parameters, {} FLOPs per token",
        2 * d * r,
        4 * d * r
    )?;
    let full = LlamaConfig::preset("full-350m")?.param_counts().total;
    let low = config.param_counts().total;
    writeln!(
        out,
        "whole model: cola-350m {low} parameters, full-350m {full} ({:.2}x)",
        full as f64 / low as f64
    )?;
    Ok(())
}

/// cola-tiny's values under each retention policy: what survives forward, and that the gradients do not
/// change. Under CoLA-M the list of layer 0's released values shows what backward replays.
fn recompute(out: &mut String) -> Result<()> {
    let config = LlamaConfig::preset("cola-tiny")?;
    let model = Llama::new(config.clone(), &mut Rng::new(1))?;
    let seq = config.max_seq_len;
    let ids: Vec<u32> = (0..seq as u32).map(|i| 2 + i * 5 % (config.vocab_size as u32 - 2)).collect();
    let mut reference: Option<Vec<Vec<f64>>> = None;
    writeln!(out, "cola-tiny, 1 sequence of {seq} tokens, {} layers", config.n_layers)?;
    for policy in [Policy::KeepAll, Policy::ColaM, Policy::Block] {
        let mut tape = Tape::with_policy(policy);
        let loss = model.loss(&mut tape, &ids, 1, seq)?;
        let released: Vec<Var> = tape.vars().filter(|&v| tape.value(v).is_err()).collect();
        let bytes = tape.held_bytes();
        let mut detail = String::new();
        if policy == Policy::ColaM {
            // Layer 0 runs from the node after the embedding (whose output enters it) to the node whose
            // output leaves it: the first two nodes that make a residual-stream value between layers.
            let nodes = tape.nodes();
            let boundary = |n: &crate::autograd::Node| {
                matches!(tape.kind(n.output), Ok(SlotKind::LayerInput | SlotKind::LayerOutput))
            };
            let ends: Vec<usize> =
                nodes.iter().enumerate().filter(|(_, n)| boundary(n)).map(|(i, _)| i).take(2).collect();
            let layer0 = match ends.as_slice() {
                [start, end] => &nodes[start + 1..=*end],
                _ => &nodes[..0],
            };
            let names: Vec<&str> =
                layer0.iter().filter(|n| released.contains(&n.output)).map(|n| n.op.name()).collect();
            writeln!(
                detail,
                "  cola-m releases {} values in layer 0 (rebuilt in backward on demand):",
                names.len()
            )?;
            for chunk in names.chunks(13) {
                writeln!(detail, "    {}", chunk.join(" "))?;
            }
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
            "{:<8} released after forward: {:>3} values; held: {bytes:>6} bytes; gradients equal to none's: {same}",
            policy_name(policy),
            released.len()
        )?;
        out.push_str(&detail);
    }
    Ok(())
}

fn policy_name(policy: Policy) -> &'static str {
    match policy {
        Policy::KeepAll => "none",
        Policy::ColaM => "cola-m",
        Policy::Block => "block",
        Policy::RecomputeAll => "all",
    }
}

/// One AdamW step on two weights, next to the same step computed by hand in f64.
fn adamw(out: &mut String) -> Result<()> {
    let hyper = AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 1 };
    let (w, g) = ([1.0f64, -2.0], [0.5f64, -0.25]);
    let mut param = Tensor::from_vec(w.map(|x| x as f32).to_vec(), &[2])?;
    let grad = Tensor::from_vec(g.map(|x| x as f32).to_vec(), &[2])?;
    let (mut m, mut v) = (Tensor::zeros(&[2], DType::F32), Tensor::zeros(&[2], DType::F32));
    Tensor::adamw_step(&mut param, &grad, &mut m, &mut v, hyper)?;
    writeln!(out, "lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, step 1")?;
    for i in 0..2 {
        // Step 1: bias correction makes m_hat = g and v_hat = g^2, so the update is lr * sign(g).
        let decayed = w[i] * (1.0 - hyper.lr * hyper.weight_decay);
        let by_hand = decayed - hyper.lr * g[i] / (g[i].abs() + hyper.eps);
        writeln!(
            out,
            "w{i}: {} with gradient {} -> {:.6} (by hand: {:.6})",
            w[i],
            g[i],
            param.to_vec::<f32>()?[i],
            by_hand
        )?;
    }
    writeln!(out, "moments after the step: m = {:?}, v = {:?}", m.to_vec::<f32>()?, v.to_vec::<f32>()?)?;
    Ok(())
}

/// cola-tiny saved in the reference's layout, read back, and compared.
fn checkpoint(out: &mut String) -> Result<()> {
    let config = LlamaConfig::preset("cola-tiny")?;
    let model = Llama::new(config.clone(), &mut Rng::new(2))?;
    let dir = std::env::temp_dir().join(format!("cola-tour-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("model.safetensors");
    model.save_safetensors(&path)?;
    let bytes = std::fs::read(&path)?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len])?;
    writeln!(
        out,
        "model.safetensors: {} bytes, {} tensors",
        bytes.len(),
        header.as_object().map_or(0, |h| h.len() - usize::from(h.contains_key("__metadata__")))
    )?;
    for name in ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.cola_a", "lm_head.weight"] {
        let in_memory =
            model.parameters().into_iter().find(|p| p.name() == name).map(|p| p.value().shape().to_vec());
        writeln!(
            out,
            "{name}: on disk {} {}, in memory {:?}",
            header[name]["dtype"],
            header[name]["shape"],
            in_memory.unwrap_or_default()
        )?;
    }
    let loaded = Llama::from_safetensors(config, &path, DType::F32)?;
    let same = model
        .parameters()
        .iter()
        .zip(loaded.parameters())
        .all(|(a, b)| a.value().to_vec_f64() == b.value().to_vec_f64());
    writeln!(out, "reloaded parameters equal the saved ones bit for bit: {same}")?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

//! Stops 11 to 14: the gradients of a batch are summed over micro-batches and clipped, AdamW applies them
//! at the rate the schedule gives, and f32 master weights keep the small updates that bf16 would lose.
use super::check::max_abs_diff;
use super::Result;
use crate::autograd::{GradStore, Graph, Tape};
use crate::nn::{Llama, LlamaConfig, Size};
use crate::optim::{clip_grad_norm, CosineSchedule};
use crate::tensor::ops::optim::AdamWStep;
use crate::tensor::{bf16, DType, Rng, Tensor};
use std::fmt::Write as _;

/// Largest difference between the gradients of two stores, over every parameter of `model`.
fn largest_difference(model: &Llama, a: &GradStore, b: &GradStore) -> f64 {
    model
        .parameters()
        .iter()
        .map(|p| match (a.get(p.id()), b.get(p.id())) {
            (Some(x), Some(y)) => max_abs_diff(&x.to_vec_f64(), &y.to_vec_f64()),
            _ => f64::INFINITY,
        })
        .fold(0.0, f64::max)
}

/// Two sequences of cola-tiny as one batch against two micro-batches of one sequence, each loss weighted
/// by its share of the batch's targets (`src/train/trainer.rs`): the summed gradient is the batch's. Then
/// the global-norm clip (`optim/src/clip.rs`) by hand.
pub fn accumulate(out: &mut String) -> Result<()> {
    let config = LlamaConfig::preset("cola-tiny")?;
    let model = Llama::new(config.clone(), &mut Rng::new(3))?;
    let seq = config.max_seq_len;
    let ids = batch_ids(&config);
    let mut whole = GradStore::new();
    let mut tape = Tape::new();
    let loss = model.loss(&mut tape, &ids, 2, seq)?;
    whole.accumulate(&tape.backward(loss)?)?;
    let mut summed = GradStore::new();
    for row in ids.chunks(seq) {
        let mut tape = Tape::new();
        let loss = model.loss(&mut tape, row, 1, seq)?;
        // Each row has seq - 1 targets of the batch's 2 (seq - 1).
        let weighted = tape.mul_scalar(&loss, 0.5)?;
        summed.accumulate(&tape.backward(weighted)?)?;
    }
    writeln!(out, "cola-tiny, a batch of 2 sequences of {seq} tokens ({} targets each)", seq - 1)?;
    writeln!(
        out,
        "one pass over the batch against 2 micro-batches of 1 sequence, each loss x 15/30: largest gradient difference below 1e-6: {}",
        largest_difference(&model, &whole, &summed) < 1e-6
    )?;
    let squares: f64 = summed.iter().map(|(_, g)| g.to_vec_f64().iter().map(|v| v * v).sum::<f64>()).sum();
    let by_hand = squares.sqrt();
    let max_norm = 0.5;
    let norm = clip_grad_norm(&mut summed, max_norm)?;
    let after: f64 = summed.iter().map(|(_, g)| g.to_vec_f64().iter().map(|v| v * v).sum::<f64>()).sum();
    writeln!(out, "global norm sqrt(sum of every g^2): by hand {by_hand:.4}, clip_grad_norm {norm:.4}")?;
    writeln!(
        out,
        "clip to {max_norm}: every gradient x {max_norm} / ({norm:.4} + 1e-6) = {:.4}; norm after {:.4}",
        max_norm / (norm + 1e-6),
        after.sqrt()
    )?;
    Ok(())
}

/// Two sequences of seeded ids below the vocabulary, row-major `[2, max_seq_len]`.
pub fn batch_ids(config: &LlamaConfig) -> Vec<u32> {
    let mut rng = Rng::new(9);
    let draws =
        Tensor::rand_uniform(&[2 * config.max_seq_len], 2.0, config.vocab_size as f64, DType::F64, &mut rng);
    draws.to_vec_f64().iter().map(|&v| v as u32).collect()
}

/// One AdamW step on two weights, next to the same step computed by hand in f64.
pub fn adamw(out: &mut String) -> Result<()> {
    let hyper = AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 1 };
    let (w, g) = ([1.0f64, -2.0], [0.5f64, -0.25]);
    let mut param = Tensor::from_vec(w.map(|x| x as f32).to_vec(), &[2])?;
    let grad = Tensor::from_vec(g.map(|x| x as f32).to_vec(), &[2])?;
    let (mut m, mut v) = (Tensor::zeros(&[2], DType::F32), Tensor::zeros(&[2], DType::F32));
    Tensor::adamw_step(&mut param, &grad, &mut m, &mut v, hyper)?;
    writeln!(out, "lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, step 1")?;
    let after = param.to_vec::<f32>()?;
    for i in 0..2 {
        // Step 1: bias correction makes m_hat = g and v_hat = g^2, so the update is lr * sign(g).
        let decayed = w[i] * (1.0 - hyper.lr * hyper.weight_decay);
        let by_hand = decayed - hyper.lr * g[i] / (g[i].abs() + hyper.eps);
        writeln!(out, "w{i}: {} with gradient {} -> {:.6} (by hand: {:.6})", w[i], g[i], after[i], by_hand)?;
    }
    writeln!(out, "moments after the step: m = {:?}, v = {:?}", m.to_vec::<f32>()?, v.to_vec::<f32>()?)?;
    Ok(())
}

/// `lambda(step) = lr(step) / peak` of the cola-60m recipe (`optim/src/schedule.rs`), by hand next to
/// the schedule's.
pub fn schedule(out: &mut String) -> Result<()> {
    let recipe = &Size::M60.spec().recipe;
    let (w, n) = (recipe.warmup_steps, recipe.total_steps);
    let schedule = CosineSchedule::new(recipe.peak_lr, w, n)?;
    writeln!(out, "cola-60m: peak {}, warmup W = {w}, total N = {n}; lambda = lr / peak", recipe.peak_lr)?;
    for step in [0, 1000, 2000, 4000, 6000, 10000, 12000] {
        let lambda = schedule.lr(step) / recipe.peak_lr;
        let (text, by_hand) = if step < w {
            (format!("{step} / {w}"), step as f64 / w as f64)
        } else {
            let progress = ((step - w) as f64 / (n - w) as f64).min(1.0);
            let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
            (format!("0.1 + 0.9 * 0.5 * (1 + cos(pi * {progress}))"), 0.1 + 0.9 * cosine)
        };
        writeln!(out, "step {step:>5}: lambda {lambda:.6} (by hand: {text} = {by_hand:.6})")?;
    }
    Ok(())
}

/// `w - lr * g` with `w = 1` and `lr * g = 0.001`: bf16 keeps 8 significant bits, so the result rounds back
/// to 1 and a hundred steps change nothing; an f32 master copy (`optim/src/adamw.rs`, `master_weights`)
/// keeps them and rounds to bf16 only for the forward.
pub fn bf16(out: &mut String) -> Result<()> {
    let step = 1e-3;
    let one = bf16::from_f32(1.0);
    let below = bf16::from_bits(one.to_bits() - 1);
    let above = bf16::from_bits(one.to_bits() + 1);
    writeln!(
        out,
        "bf16 neighbours of 1: {below} and {above}; half the gap below is {}",
        (1.0 - below.to_f32()) / 2.0
    )?;
    let mut weight = Tensor::from_vec(vec![1.0f32], &[1])?.to_dtype(DType::BF16)?;
    let once = weight.affine(1.0, -step)?.to_vec_f64()[0];
    writeln!(out, "bf16 weight 1 - 0.001 = 0.999, rounded to bf16: {once} (the update is lost)")?;
    let mut master = Tensor::from_vec(vec![1.0f32], &[1])?;
    for _ in 0..100 {
        weight = weight.affine(1.0, -step)?;
        master = master.affine(1.0, -step)?;
    }
    writeln!(out, "after 100 such steps: bf16 weight {}", weight.to_vec_f64()[0])?;
    writeln!(
        out,
        "                      f32 master {:.6}, its bf16 copy for the forward {}",
        master.to_vec_f64()[0],
        master.to_dtype(DType::BF16)?.to_vec_f64()[0]
    )?;
    Ok(())
}

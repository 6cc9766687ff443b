//! Forward, loss and backward of the tiny presets: shapes, finiteness, the loss at init, gradients of every
//! parameter, pad handling, causality, training progress and input errors.
use cola_autograd::{Gradients, Policy, SlotKind, Tape};
use cola_nn::{next_token_targets, Llama, LlamaConfig, NnError};
use cola_tensor::Rng;

const PRESETS: [&str; 2] = ["cola-tiny", "full-tiny"];

fn model(name: &str, seed: u64) -> Llama {
    Llama::new(LlamaConfig::preset(name).unwrap(), &mut Rng::new(seed)).unwrap()
}

/// `batch * seq` ids drawn uniformly from `1..vocab` (no padding).
fn random_ids(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| 1 + rng.below(vocab as u64 - 1) as u32).collect()
}

fn loss_and_grads(model: &Llama, ids: &[u32], batch: usize, seq: usize, policy: Policy) -> (f64, Gradients) {
    let mut tape = Tape::with_policy(policy);
    let loss = model.loss(&mut tape, ids, batch, seq).unwrap();
    let value = tape.value(loss).unwrap().to_scalar().unwrap();
    (value, tape.backward(loss).unwrap())
}

#[test]
fn forward_gives_finite_logits_of_the_right_shape() {
    for name in PRESETS {
        let model = model(name, 1);
        let (batch, seq) = (3, 16);
        let ids = random_ids(64, batch * seq, 2);
        let mut tape = Tape::new();
        let logits = model.forward(&mut tape, &ids, batch, seq).unwrap();
        let value = tape.value(logits).unwrap();
        assert_eq!(value.shape(), &[batch, seq, 64], "{name}");
        assert!(value.to_vec_f64().iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn loss_at_init_is_near_ln_vocab() {
    // Logits have std ~ 0.02 sqrt(d) = 0.11, so the expected loss is ln(64) + ~0.006.
    for name in PRESETS {
        let model = model(name, 3);
        let ids = random_ids(64, 4 * 16, 4);
        let mut tape = Tape::new();
        let loss = model.loss(&mut tape, &ids, 4, 16).unwrap();
        let value = tape.value(loss).unwrap().to_scalar().unwrap();
        assert!((value - 64f64.ln()).abs() < 0.05, "{name}: loss {value}");
    }
}

#[test]
fn loss_equals_cross_entropy_of_forward_logits_over_non_pad_targets() {
    for name in PRESETS {
        let model = model(name, 5);
        let (batch, seq) = (3, 8);
        let mut ids = random_ids(64, batch * seq, 6);
        // Right padding as in the paper's data, plus a row that is all padding after its first token.
        ids[5..8].fill(0);
        ids[17..24].fill(0);
        let mut tape = Tape::new();
        let logits = model.forward(&mut tape, &ids, batch, seq).unwrap();
        let logits = tape.value(logits).unwrap().to_vec_f64();
        let (mut total, mut count) = (0.0, 0);
        for b in 0..batch {
            for t in 0..seq - 1 {
                let target = ids[b * seq + t + 1] as usize;
                if target == 0 {
                    continue;
                }
                let row = &logits[(b * seq + t) * 64..(b * seq + t + 1) * 64];
                let max = row.iter().cloned().fold(f64::MIN, f64::max);
                let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
                total += log_sum - row[target];
                count += 1;
            }
        }
        assert_eq!(count, 3 * 7 - 3 - 7);
        let expected = total / count as f64;
        let mut tape = Tape::new();
        let loss = model.loss(&mut tape, &ids, batch, seq).unwrap();
        let got = tape.value(loss).unwrap().to_scalar().unwrap();
        assert!((got - expected).abs() < 1e-5, "{name}: loss {got}, by hand {expected}");
    }
}

#[test]
fn next_token_targets_shift_each_row() {
    assert_eq!(next_token_targets(&[1, 2, 3, 4, 5, 6], 2, 3), vec![2, 3, 5, 6]);
    assert!(next_token_targets(&[1, 2], 1, 0).is_empty());
}

#[test]
fn backward_reaches_every_parameter_and_skips_the_pad_row() {
    for name in PRESETS {
        let model = model(name, 7);
        let (batch, seq) = (2, 12);
        let mut ids = random_ids(64, batch * seq, 8);
        ids[9..12].fill(0);
        let (_, grads) = loss_and_grads(&model, &ids, batch, seq, Policy::KeepAll);
        for p in model.parameters() {
            let g = grads.param(p.id()).unwrap_or_else(|| panic!("{name}: no gradient for {}", p.name()));
            assert_eq!(g.shape(), p.value().shape(), "{}", p.name());
            let values = g.to_vec_f64();
            assert!(values.iter().all(|v| v.is_finite()), "{}", p.name());
            assert!(values.iter().any(|&v| v != 0.0), "{name}: zero gradient for {}", p.name());
        }
        let table = grads.param(model.embedding().table().id()).unwrap().to_vec_f64();
        assert!(table[..32].iter().all(|&v| v == 0.0), "{name}: pad row gradient");
        assert!(table[32..].iter().any(|&v| v != 0.0));
    }
}

#[test]
fn recomputing_everything_gives_bit_identical_gradients() {
    for name in PRESETS {
        let model = model(name, 9);
        let ids = random_ids(64, 2 * 10, 10);
        let (loss_keep, keep) = loss_and_grads(&model, &ids, 2, 10, Policy::KeepAll);
        let (loss_recompute, recompute) = loss_and_grads(&model, &ids, 2, 10, Policy::RecomputeAll);
        assert_eq!(loss_keep, loss_recompute);
        for p in model.parameters() {
            let (a, b) = (keep.param(p.id()).unwrap(), recompute.param(p.id()).unwrap());
            assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap(), "{name}: {}", p.name());
        }
    }
}

#[test]
fn blocks_mark_the_values_cola_m_keeps() {
    for (name, codes_per_layer) in [("cola-tiny", 7), ("full-tiny", 0)] {
        let model = model(name, 11);
        let mut tape = Tape::new();
        model.loss(&mut tape, &random_ids(64, 8, 12), 1, 8).unwrap();
        let outputs: Vec<SlotKind> = tape.nodes().iter().map(|n| tape.kind(n.output).unwrap()).collect();
        let count = |kind: SlotKind| outputs.iter().filter(|&&k| k == kind).count();
        assert_eq!(count(SlotKind::LowRankCode), 2 * codes_per_layer, "{name}");
        assert_eq!(count(SlotKind::LowRankPreActivation), 2 * codes_per_layer, "{name}");
        assert_eq!(count(SlotKind::LayerInput), 2, "{name}");
        assert_eq!(count(SlotKind::Residual), 2, "{name}");
    }
}

#[test]
fn logits_are_causal() {
    for name in PRESETS {
        let model = model(name, 13);
        let seq = 10;
        let ids = random_ids(64, seq, 14);
        let mut changed = ids.clone();
        changed[6] = if ids[6] == 1 { 2 } else { 1 };
        let logits = |ids: &[u32]| {
            let mut tape = Tape::new();
            let l = model.forward(&mut tape, ids, 1, seq).unwrap();
            tape.value(l).unwrap().to_vec_f64()
        };
        let (a, b) = (logits(&ids), logits(&changed));
        assert_eq!(&a[..6 * 64], &b[..6 * 64], "{name}: positions before the change");
        assert_ne!(&a[6 * 64..], &b[6 * 64..], "{name}: positions from the change on");
    }
}

#[test]
fn rows_of_a_batch_are_independent() {
    let model = model("cola-tiny", 15);
    let ids = random_ids(64, 2 * 8, 16);
    let logits = |ids: &[u32], batch| {
        let mut tape = Tape::new();
        let l = model.forward(&mut tape, ids, batch, 8).unwrap();
        tape.value(l).unwrap().to_vec_f64()
    };
    let both = logits(&ids, 2);
    let second = logits(&ids[8..], 1);
    for (x, y) in both[8 * 64..].iter().zip(&second) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}

#[test]
fn sgd_steps_reduce_the_loss() {
    for name in PRESETS {
        let mut model = model(name, 17);
        let (batch, seq) = (4, 16);
        let ids = random_ids(64, batch * seq, 18);
        let mut losses = Vec::new();
        for _ in 0..6 {
            let (loss, grads) = loss_and_grads(&model, &ids, batch, seq, Policy::KeepAll);
            losses.push(loss);
            for p in model.parameters_mut() {
                let g = grads.param(p.id()).unwrap().mul_scalar(0.5).unwrap();
                let updated = p.value().sub(&g).unwrap();
                p.set_value(updated);
            }
        }
        assert!(losses.windows(2).all(|w| w[1] < w[0]), "{name}: {losses:?}");
        assert!(losses[5] < losses[0] - 0.2, "{name}: {losses:?}");
    }
}

#[test]
fn gate_silu_flag_changes_the_function() {
    let base = LlamaConfig::preset("cola-tiny").unwrap();
    let with = Llama::new(base.clone(), &mut Rng::new(19)).unwrap();
    let without = Llama::new(LlamaConfig { mlp_gate_silu: false, ..base }, &mut Rng::new(19)).unwrap();
    let ids = random_ids(64, 8, 20);
    let loss = |m: &Llama| {
        let mut tape = Tape::new();
        let l = m.loss(&mut tape, &ids, 1, 8).unwrap();
        tape.value(l).unwrap().to_scalar().unwrap()
    };
    assert_ne!(loss(&with), loss(&without));
}

#[test]
fn bad_inputs_are_errors() {
    let model = model("cola-tiny", 21);
    let ids = random_ids(64, 8, 22);
    let mut tape = Tape::new();
    let check = |result: cola_nn::Result<_>, word: &str| {
        let err = result.unwrap_err();
        assert!(matches!(err, NnError::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains(word), "{err} should mention {word}");
    };
    let mut out_of_range = ids.clone();
    out_of_range[3] = 64;
    check(model.forward(&mut tape, &out_of_range, 1, 8), "token id 64 at [0, 3]");
    check(model.loss(&mut tape, &out_of_range, 2, 4), "vocab_size 64");
    check(model.forward(&mut tape, &ids, 2, 8), "8 token ids for batch 2 x seq 8");
    check(model.forward(&mut tape, &random_ids(64, 17, 0), 1, 17), "max_seq_len 16");
    check(model.loss(&mut tape, &ids[..2], 2, 1), "seq >= 2");
    check(model.forward(&mut tape, &[], 0, 8), "positive");
}

/// The whole cola-tiny model in bf16 against the same weights widened to f32 (exact), keeping every
/// activation: the loss, and every parameter's gradient, within the bf16 bound. Each op stores its result
/// rounded once to bf16 (relative error at most 2^-9); the forward pass is about a dozen such roundings
/// deep per layer and backward as many again, each error propagating with a gain of order one through the
/// normalised layers, so a relative error of some tens of 2^-9 (0.06 at 30) is the expected scale. The test
/// allows 0.1 relative (Frobenius norm) per gradient and 0.02 on the loss (absolute, on a loss near
/// ln 64 = 4.2), and checks that bf16 really ran (some gradient differs).
#[test]
fn bf16_model_runs_close_to_f32() {
    let config = LlamaConfig::preset("cola-tiny").unwrap();
    let bf16_model = Llama::with_dtype(config, cola_tensor::DType::BF16, &mut Rng::new(23)).unwrap();
    assert_eq!(bf16_model.dtype(), cola_tensor::DType::BF16);
    let mut f32_model = bf16_model.clone();
    f32_model.to_device(cola_tensor::Device::Cpu, cola_tensor::DType::F32).unwrap();
    let ids = random_ids(64, 2 * 8, 24);
    let (a, f32_grads) = loss_and_grads(&f32_model, &ids, 2, 8, Policy::KeepAll);
    let (b, grads) = loss_and_grads(&bf16_model, &ids, 2, 8, Policy::KeepAll);
    assert!((a - b).abs() < 0.02, "f32 {a} vs bf16 {b}");
    let mut worst = 0.0f64;
    for p in bf16_model.parameters() {
        let g = grads.param(p.id()).unwrap();
        assert_eq!(g.dtype(), cola_tensor::DType::BF16, "{}", p.name());
        let (low, high) = (g.to_vec_f64(), f32_grads.param(p.id()).unwrap().to_vec_f64());
        let diff: f64 = low.iter().zip(&high).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
        let norm: f64 = high.iter().map(|y| y * y).sum::<f64>().sqrt();
        assert!(diff <= 0.1 * norm, "{}: |bf16 - f32| = {diff:.3e}, |f32| = {norm:.3e}", p.name());
        worst = worst.max(diff / norm.max(f64::MIN_POSITIVE));
    }
    assert!(worst > 0.0, "every bf16 gradient equals f32's: bf16 did not run");
    println!("largest relative gradient difference: {worst:.4}");
}

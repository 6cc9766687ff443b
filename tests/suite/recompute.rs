//! Selective recomputation changes memory, never numbers: several AdamW steps of the tiny presets give
//! bit-identical losses and weights under every applicable retention policy.
use cola::audit::synthetic_ids;
use cola::autograd::{GradStore, Policy, Tape};
use cola::nn::{Llama, LlamaConfig};
use cola::optim::{clip_grad_norm, AdamW, AdamWConfig};
use cola::tensor::Rng;

/// Losses of `steps` optimizer steps (two micro-batches each) and the final weights, bit for bit.
fn trajectory(preset: &str, policy: Policy, steps: usize) -> (Vec<u64>, Vec<Vec<u64>>) {
    let config = LlamaConfig::preset(preset).unwrap();
    let mut model = Llama::new(config, &mut Rng::new(11)).unwrap();
    let mut opt = AdamW::new(AdamWConfig::default());
    let (batch, seq) = (2, 12);
    let mut losses = Vec::new();
    for step in 0..steps {
        let mut grads = GradStore::new();
        for micro in 0..2 {
            let mut ids = synthetic_ids(64, batch * seq, (10 * step + micro) as u64);
            ids[seq - 3..seq].fill(0);
            let mut tape = Tape::with_policy(policy);
            let loss = model.loss(&mut tape, &ids, batch, seq).unwrap();
            losses.push(tape.value(loss).unwrap().to_vec_f64()[0].to_bits());
            grads.accumulate(&tape.backward(loss).unwrap()).unwrap();
        }
        clip_grad_norm(&mut grads, 0.5).unwrap();
        opt.step(&mut model.parameters_mut(), &grads, 1e-2).unwrap();
    }
    let weights = model
        .parameters()
        .iter()
        .map(|p| p.value().to_vec_f64().iter().map(|x| x.to_bits()).collect())
        .collect();
    (losses, weights)
}

#[test]
fn training_is_bit_identical_under_every_policy() {
    for preset in ["cola-tiny", "full-tiny"] {
        let config = LlamaConfig::preset(preset).unwrap();
        let reference = trajectory(preset, Policy::KeepAll, 4);
        for policy in config.policies() {
            let got = trajectory(preset, policy, 4);
            assert_eq!(got.0, reference.0, "{preset} {}: losses", policy.name());
            assert!(got.1 == reference.1, "{preset} {}: final weights differ", policy.name());
        }
    }
}

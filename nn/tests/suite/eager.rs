//! One forward: the layers are written once against `Graph`, so the eager executor (evaluation,
//! generation) must give the tape's values exactly. Bit-for-bit equality is the claim, not a tolerance:
//! both executors end in the same `Op::forward` calls on the same inputs in the same order, so any
//! difference would mean the two paths run different maths. Checked for every structural variant of the
//! presets (CoLA with and without the MLP gate SiLU, dense), on logits and on the loss, and under a
//! recomputing policy (whose replays must not change recorded values either).
use cola_autograd::{Eager, Policy, Tape};
use cola_nn::{Llama, LlamaConfig};
use cola_tensor::Rng;

fn variants() -> Vec<(&'static str, LlamaConfig)> {
    let cola = LlamaConfig::preset("cola-tiny").unwrap();
    let no_gate = LlamaConfig { mlp_gate_silu: false, ..cola.clone() };
    vec![
        ("cola-tiny", cola),
        ("cola-tiny without gate SiLU", no_gate),
        ("full-tiny", LlamaConfig::preset("full-tiny").unwrap()),
    ]
}

fn ids(config: &LlamaConfig, batch: usize, seq: usize) -> Vec<u32> {
    // Includes pad ids (0) mid-row so the loss's ignore path runs too.
    (0..batch * seq).map(|i| ((i * 29 + 3) % config.vocab_size) as u32 * u32::from(i % 7 != 4)).collect()
}

#[test]
fn eager_logits_and_loss_equal_the_tape_bit_for_bit() {
    for (name, config) in variants() {
        let model = Llama::new(config.clone(), &mut Rng::new(11)).unwrap();
        let (batch, seq) = (3, config.max_seq_len);
        let ids = ids(&config, batch, seq);
        let eager_logits = model.forward(&mut Eager, &ids, batch, seq).unwrap().to_vec::<f32>().unwrap();
        let eager_loss = model.loss(&mut Eager, &ids, batch, seq).unwrap().to_vec::<f32>().unwrap();
        for policy in [Policy::KeepAll, Policy::ColaM, Policy::Block, Policy::RecomputeAll] {
            let mut tape = Tape::with_policy(policy);
            let logits = model.forward(&mut tape, &ids, batch, seq).unwrap();
            assert_eq!(
                tape.value(logits).unwrap().to_vec::<f32>().unwrap(),
                eager_logits,
                "{name} {policy:?}"
            );
            let mut tape = Tape::with_policy(policy);
            let loss = model.loss(&mut tape, &ids, batch, seq).unwrap();
            assert_eq!(tape.value(loss).unwrap().to_vec::<f32>().unwrap(), eager_loss, "{name} {policy:?}");
        }
    }
}

#[test]
fn eager_forward_reports_input_errors_like_the_tape() {
    let config = LlamaConfig::preset("cola-tiny").unwrap();
    let model = Llama::new(config.clone(), &mut Rng::new(3)).unwrap();
    let too_long = vec![1u32; config.max_seq_len + 1];
    let eager = model.forward(&mut Eager, &too_long, 1, too_long.len()).unwrap_err().to_string();
    let taped = model.forward(&mut Tape::new(), &too_long, 1, too_long.len()).unwrap_err().to_string();
    assert_eq!(eager, taped);
    assert!(eager.contains("max_seq_len"), "{eager}");
}

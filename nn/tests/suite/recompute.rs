//! Retention policies on the real model: every policy gives bit-identical gradients to keeping everything,
//! and CoLA-M keeps exactly `2 d + 7 r` values per token per decoder layer.
use cola_autograd::Graph;
use cola_autograd::{Gradients, MemoryStats, Policy, Tape};
use cola_nn::{Llama, LlamaConfig};
use cola_tensor::{DType, Rng};

fn random_ids(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| 1 + rng.below(vocab as u64 - 1) as u32).collect()
}

fn run(
    model: &Llama,
    ids: &[u32],
    batch: usize,
    seq: usize,
    policy: Policy,
) -> (Vec<u8>, Gradients, MemoryStats) {
    let mut tape = Tape::with_policy(policy);
    let loss = model.loss(&mut tape, ids, batch, seq).unwrap();
    let bits = tape.value(loss).unwrap().to_vec_f64()[0].to_le_bytes().to_vec();
    let grads = tape.backward(loss).unwrap();
    (bits, grads, tape.memory_stats())
}

/// The policies the model says apply to it, and the recompute-everything extreme.
fn policies(config: &LlamaConfig) -> Vec<Policy> {
    let mut out = config.policies();
    out.push(Policy::RecomputeAll);
    out
}

#[test]
fn every_policy_gives_bit_identical_loss_and_gradients() {
    for preset in ["cola-tiny", "full-tiny"] {
        for dtype in [DType::F32, DType::F64] {
            let config = LlamaConfig::preset(preset).unwrap();
            let policies = policies(&config);
            let model = Llama::with_dtype(config, dtype, &mut Rng::new(7)).unwrap();
            let (batch, seq) = (2, 12);
            let mut ids = random_ids(64, batch * seq, 8);
            ids[20..].fill(0);
            let (loss, reference, _) = run(&model, &ids, batch, seq, Policy::KeepAll);
            for policy in policies {
                let (l, grads, _) = run(&model, &ids, batch, seq, policy);
                assert_eq!(l, loss, "{preset} {dtype} {policy:?}: loss");
                for p in model.parameters() {
                    let (a, b) = (reference.param(p.id()).unwrap(), grads.param(p.id()).unwrap());
                    assert_eq!(a.to_vec_f64(), b.to_vec_f64(), "{preset} {dtype} {policy:?}: {}", p.name());
                }
            }
        }
    }
}

/// The loss fuses the LM head with the cross-entropy and forms its gradients in forward: recorded unfused
/// (head, then cross_entropy) the tape saves the `[tokens, vocab]` logits and the final norm's output (all
/// `seq` rows, held by the narrow view the head reads); fused it saves instead the gradient of the
/// `seq - 1` predicting rows, so exactly the logits and one row per sequence less under every policy that
/// keeps anything. Recompute-everything saves nothing unfused and only that gradient fused. Under all
/// policies the loss and gradients are the same bit for bit (at 22 tokens the fused op runs one block,
/// whose products and loss kernels are the unfused ones on the same rows, and the loss gradient is 1).
#[test]
fn the_loss_saves_no_logits() {
    let config = LlamaConfig::preset("cola-tiny").unwrap();
    let (batch, seq, vocab, d) = (2, 12, config.vocab_size, config.d_model);
    let policies = policies(&config);
    let model = Llama::new(config, &mut Rng::new(3)).unwrap();
    let mut ids = random_ids(64, batch * seq, 9);
    ids[20..].fill(0);
    for policy in policies {
        let (fused_bits, fused_grads, fused) = run(&model, &ids, batch, seq, policy);
        let mut tape = Tape::with_policy(policy);
        let hidden = model.hidden_states(&mut tape, &ids, batch, seq).unwrap();
        let predicting = tape.narrow(&hidden, 1, 0, seq - 1).unwrap();
        let logits = model.head(&mut tape, &predicting).unwrap();
        let targets = cola_nn::model::next_token_targets(&ids, batch, seq);
        let loss = tape.cross_entropy(&logits, &targets, Some(0)).unwrap();
        let bits = tape.value(loss).unwrap().to_vec_f64()[0].to_le_bytes().to_vec();
        let grads = tape.backward(loss).unwrap();
        let unfused = tape.memory_stats();
        let row_bytes = |rows: usize, width: usize| (rows * width * 4) as i64;
        let fewer_bytes = if policy == Policy::RecomputeAll {
            -row_bytes(batch * (seq - 1), d)
        } else {
            row_bytes(batch * (seq - 1), vocab) + row_bytes(batch, d)
        };
        assert_eq!(
            unfused.saved_bytes as i64 - fused.saved_bytes as i64,
            fewer_bytes,
            "{policy:?}: {unfused:?} vs {fused:?}"
        );
        // The head's weight gradient, formed in forward, is a parameter gradient, not an activation.
        assert_eq!(fused.forward_gradient_bytes, row_bytes(d, vocab) as usize, "{policy:?}");
        assert_eq!(unfused.forward_gradient_bytes, 0, "{policy:?}");
        assert_eq!(bits, fused_bits, "{policy:?}: loss");
        for p in model.parameters() {
            let (a, b) = (grads.param(p.id()).unwrap(), fused_grads.param(p.id()).unwrap());
            assert_eq!(a.to_vec_f64(), b.to_vec_f64(), "{policy:?}: {}", p.name());
        }
    }
}

/// Saved bytes per token of one decoder layer: the difference between models of `layers + 1` and `layers`.
fn saved_per_layer_per_token(preset: &str, policy: Policy) -> f64 {
    let (batch, seq) = (2, 16);
    let ids = random_ids(64, batch * seq, 3);
    let mut saved = Vec::new();
    for layers in [2, 3] {
        let config = LlamaConfig { n_layers: layers, ..LlamaConfig::preset(preset).unwrap() };
        let model = Llama::new(config, &mut Rng::new(1)).unwrap();
        saved.push(run(&model, &ids, batch, seq, policy).2.saved_bytes as f64);
    }
    (saved[1] - saved[0]) / (batch * seq) as f64
}

#[test]
fn cola_m_keeps_exactly_2d_plus_7r_values_per_token_per_layer() {
    let config = LlamaConfig::preset("cola-tiny").unwrap();
    let (d, r) = (config.d_model as f64, config.rank.unwrap() as f64);
    let cola_m = saved_per_layer_per_token("cola-tiny", Policy::ColaM);
    assert_eq!(cola_m, 4.0 * (2.0 * d + 7.0 * r), "bytes per token per layer (f32)");
    // Vanilla checkpointing keeps the layer input alone.
    assert_eq!(saved_per_layer_per_token("cola-tiny", Policy::Block), 4.0 * d);
    assert_eq!(saved_per_layer_per_token("full-tiny", Policy::Block), 4.0 * d);
    // Keeping everything backward reads costs much more.
    let none = saved_per_layer_per_token("cola-tiny", Policy::KeepAll);
    assert!(none > 2.0 * cola_m, "none {none} vs cola-m {cola_m}");
}

#[test]
fn forward_peak_of_cola_m_stays_below_keeping_everything() {
    let config = LlamaConfig { n_layers: 4, ..LlamaConfig::preset("cola-tiny").unwrap() };
    let model = Llama::new(config, &mut Rng::new(2)).unwrap();
    let ids = random_ids(64, 2 * 16, 4);
    let none = run(&model, &ids, 2, 16, Policy::KeepAll).2;
    let cola_m = run(&model, &ids, 2, 16, Policy::ColaM).2;
    assert!(cola_m.forward_peak_bytes < none.forward_peak_bytes, "{cola_m:?} vs {none:?}");
    assert!(cola_m.saved_bytes < none.saved_bytes);
    assert!(cola_m.backward_peak_bytes < none.backward_peak_bytes, "{cola_m:?} vs {none:?}");
    assert!(none.saved_bytes <= none.forward_peak_bytes);
}

mod random_policies {
    use super::*;
    use cola_autograd::Retention;
    use proptest::prelude::{any, prop_assert_eq, proptest, ProptestConfig, Strategy};

    fn config_strategy() -> impl Strategy<Value = LlamaConfig> {
        let act = proptest::sample::select(cola_nn::LowRankActivation::ALL.to_vec());
        (1usize..=2, 1usize..=2, 1usize..=2, 1usize..=4, 4usize..=12, any::<bool>(), any::<bool>(), act)
            .prop_map(|(layers, heads, half_head, rank, ffn, gate_silu, cola, lowrank_act)| LlamaConfig {
                vocab_size: 32,
                d_model: heads * 2 * half_head,
                ffn_dim: ffn,
                n_layers: layers,
                n_heads: heads,
                rank: cola.then_some(rank),
                lowrank_act,
                mlp_gate_silu: gate_silu,
                rope_theta: 10000.0,
                norm_eps: 1e-6,
                max_seq_len: 8,
                pad_id: 0,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any subset of values marked `Recompute`, on top of any policy, leaves loss and gradients unchanged
        /// bit for bit: recomputation is a general mechanism, not a special case of the presets.
        #[test]
        fn any_recompute_subset_leaves_gradients_unchanged(
            config in config_strategy(),
            mask_seed in any::<u64>(),
            policy_index in 0usize..4,
        ) {
            let policy = [Policy::KeepAll, Policy::Block, Policy::ColaM, Policy::RecomputeAll][policy_index];
            let model = Llama::new(config, &mut Rng::new(mask_seed ^ 5)).unwrap();
            let (batch, seq) = (2, 6);
            let ids = random_ids(32, batch * seq, mask_seed);
            let (loss, reference, _) = run(&model, &ids, batch, seq, Policy::KeepAll);

            let mut tape = Tape::with_policy(policy);
            let out = model.loss(&mut tape, &ids, batch, seq).unwrap();
            let bits = tape.value(out).unwrap().to_vec_f64()[0].to_le_bytes().to_vec();
            let mut rng = Rng::new(mask_seed);
            let vars: Vec<_> = tape.vars().collect();
            for v in vars {
                let retention = if rng.below(2) == 0 { Retention::Recompute } else { Retention::Keep };
                tape.set_retention(v, retention).unwrap();
            }
            let grads = tape.backward(out).unwrap();
            prop_assert_eq!(bits, loss);
            for p in model.parameters() {
                let (a, b) = (reference.param(p.id()).unwrap(), grads.param(p.id()).unwrap());
                prop_assert_eq!(a.to_vec_f64(), b.to_vec_f64(), "{}", p.name());
            }
        }
    }
}

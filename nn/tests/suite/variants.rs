//! Model variants (`Variant`: the low-rank activation, the rank, the MLP gate) on the real model: the
//! identity records no activation op (the layer is exactly `(x @ A) @ B`), every retention policy gives
//! bit-identical losses and gradients for every activation, CoLA-M keeps `2 d + 7 r` values per token per
//! layer whatever the activation, the parameter counts follow the rank, and bad variants are clear errors.
//! Exact comparisons: the same ops on the same values give the same bits; the one tolerance (1e-12 in
//! f64) covers a product computed twice by different GEMM calls.
use cola_autograd::{Op, Policy, Tape};
use cola_nn::{ColaLinear, Init, Llama, LlamaConfig, LowRankActivation, Variant};
use cola_tensor::{DType, Rng, Tensor, UnaryOp};

fn random_ids(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| 1 + rng.below(vocab as u64 - 1) as u32).collect()
}

fn tiny(variant: Variant) -> LlamaConfig {
    variant.apply(&LlamaConfig::preset("cola-tiny").unwrap()).unwrap()
}

fn with_act(act: LowRankActivation) -> Variant {
    Variant { lowrank_act: Some(act), ..Variant::NONE }
}

/// Unary ops a tape recorded for one loss of the model.
fn unary_ops(model: &Llama) -> Vec<UnaryOp> {
    let ids = random_ids(64, 2 * 8, 1);
    let mut tape = Tape::new();
    model.loss(&mut tape, &ids, 2, 8).unwrap();
    tape.nodes().iter().filter_map(|n| if let Op::Unary(u) = n.op { Some(u) } else { None }).collect()
}

#[test]
fn each_activation_records_its_op_once_per_projection_and_identity_none() {
    let layers_x_projections = 2 * 7;
    for (act, op) in [
        (LowRankActivation::Silu, Some(UnaryOp::Silu)),
        (LowRankActivation::Gelu, Some(UnaryOp::Gelu)),
        (LowRankActivation::Relu, Some(UnaryOp::Relu)),
        (LowRankActivation::Identity, None),
    ] {
        let model = Llama::new(tiny(with_act(act)), &mut Rng::new(3)).unwrap();
        let ops = unary_ops(&model);
        let expected: Vec<UnaryOp> = op.into_iter().cycle().take(layers_x_projections).collect();
        assert_eq!(ops, expected, "{act}");
    }
}

#[test]
fn identity_layer_is_exactly_x_a_times_b() {
    let mut rng = Rng::new(5);
    let layer = ColaLinear::new("p", 12, 20, 4, DType::F64, &mut Init::Random(&mut rng))
        .with_activation(LowRankActivation::Identity);
    let x = Tensor::randn(&[3, 12], 0.0, 1.0, DType::F64, &mut Rng::new(6));
    let mut tape = Tape::new();
    let xv = tape.constant(x.clone());
    let y = layer.forward(&mut tape, &xv).unwrap();
    let expected = x.matmul(layer.a().value()).unwrap().matmul(layer.b().value()).unwrap();
    let diff = tape
        .value(y)
        .unwrap()
        .to_vec_f64()
        .iter()
        .zip(expected.to_vec_f64())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-12, "{diff}");
}

#[test]
fn every_policy_is_bit_identical_for_every_activation() {
    for act in LowRankActivation::ALL {
        let config = tiny(with_act(act));
        let model = Llama::with_dtype(config.clone(), DType::F64, &mut Rng::new(7)).unwrap();
        let mut ids = random_ids(64, 2 * 12, 8);
        ids[20..].fill(0);
        let run = |policy: Policy| {
            let mut tape = Tape::with_policy(policy);
            let loss = model.loss(&mut tape, &ids, 2, 12).unwrap();
            let bits = tape.value(loss).unwrap().to_vec_f64()[0].to_bits();
            let grads = tape.backward(loss).unwrap();
            let grads: Vec<Vec<f64>> =
                model.parameters().iter().map(|p| grads.param(p.id()).unwrap().to_vec_f64()).collect();
            (bits, grads, tape.memory_stats().saved_bytes)
        };
        let reference = run(Policy::KeepAll);
        for policy in [Policy::ColaM, Policy::Block, Policy::RecomputeAll] {
            let got = run(policy);
            assert_eq!(got.0, reference.0, "{act} {policy:?}: loss");
            assert!(got.1 == reference.1, "{act} {policy:?}: gradients differ");
        }
    }
}

/// Saved bytes per token of one decoder layer (f32) under `policy`: the difference of 3 and 2 layers.
fn saved_per_layer_per_token(variant: Variant, policy: Policy) -> f64 {
    let (batch, seq) = (2, 16);
    let ids = random_ids(64, batch * seq, 3);
    let mut saved = Vec::new();
    for layers in [2, 3] {
        let config = LlamaConfig { n_layers: layers, ..tiny(variant) };
        let model = Llama::new(config, &mut Rng::new(1)).unwrap();
        let mut tape = Tape::with_policy(policy);
        let loss = model.loss(&mut tape, &ids, batch, seq).unwrap();
        tape.backward(loss).unwrap();
        saved.push(tape.memory_stats().saved_bytes as f64);
    }
    (saved[1] - saved[0]) / (batch * seq) as f64
}

#[test]
fn cola_m_keeps_2d_plus_7r_per_layer_for_every_activation_and_identity_saves_no_codes() {
    for act in LowRankActivation::ALL {
        let variant = with_act(act);
        let config = tiny(variant);
        let (d, r) = (config.d_model as f64, config.rank.unwrap() as f64);
        assert_eq!(saved_per_layer_per_token(variant, Policy::ColaM), 4.0 * (2.0 * d + 7.0 * r), "{act}");
    }
    // Keeping everything, an activation saves its 7 codes next to their pre-activations; the identity's
    // code is the pre-activation itself.
    let r = tiny(Variant::NONE).rank.unwrap() as f64;
    let silu = saved_per_layer_per_token(with_act(LowRankActivation::Silu), Policy::KeepAll);
    let identity = saved_per_layer_per_token(with_act(LowRankActivation::Identity), Policy::KeepAll);
    assert_eq!(silu - identity, 4.0 * 7.0 * r);
}

#[test]
fn rank_override_sets_every_bottleneck_and_the_exact_parameter_count() {
    let base = LlamaConfig::preset("cola-tiny").unwrap();
    let (v, d, f, l) = (base.vocab_size, base.d_model, base.ffn_dim, base.n_layers);
    for r in [1, 4, 16, 31] {
        let config = tiny(Variant { rank: Some(r), ..Variant::NONE });
        assert_eq!(config.rank, Some(r));
        // Per layer: q, k, v, o (d -> d), gate and up (d -> f), down (f -> d), each r (in + out); two
        // norms; then embedding, head and the final norm.
        let low_rank = l * r * (4 * 2 * d + 3 * (d + f));
        let counts = config.param_counts();
        assert_eq!(counts.low_rank, low_rank, "rank {r}");
        assert_eq!(counts.total, low_rank + l * 2 * d + 2 * v * d + d, "rank {r}");
        let model = Llama::new(config, &mut Rng::new(2)).unwrap();
        let built: usize = model.parameters().iter().map(|p| p.value().numel()).sum();
        assert_eq!(built, counts.total, "rank {r}");
    }
}

#[test]
fn only_lr_act_sets_the_mlp_gate_both_ways() {
    let dropped = tiny(Variant { only_lr_act: Some(true), ..Variant::NONE });
    assert!(!dropped.mlp_gate_silu);
    let cola_350m = LlamaConfig::preset("cola-350m").unwrap();
    assert!(!cola_350m.mlp_gate_silu);
    let kept = Variant { only_lr_act: Some(false), ..Variant::NONE }.apply(&cola_350m).unwrap();
    assert!(kept.mlp_gate_silu);
}

#[test]
fn bad_variants_are_clear_errors() {
    let tiny = LlamaConfig::preset("cola-tiny").unwrap();
    let narrowest = tiny.d_model.min(tiny.ffn_dim);
    for rank in [0, narrowest, narrowest + 5] {
        let error = Variant { rank: Some(rank), ..Variant::NONE }.apply(&tiny).unwrap_err().to_string();
        assert!(
            error.contains(&format!("--rank {rank}")) && error.contains("min(d_model, ffn_dim)"),
            "{error}"
        );
    }
    let full = LlamaConfig::preset("full-tiny").unwrap();
    let error = with_act(LowRankActivation::Identity).apply(&full).unwrap_err().to_string();
    assert!(error.contains("--lowrank-act identity") && error.contains("CoLA models only"), "{error}");
    assert!("tanh"
        .parse::<LowRankActivation>()
        .unwrap_err()
        .to_string()
        .contains("silu, gelu, relu or identity"));
    assert_eq!(Variant::NONE.apply(&full).unwrap(), full);
}

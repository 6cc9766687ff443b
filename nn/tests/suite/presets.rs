//! The one preset table against the paper's numbers (written once here, as the independent check),
//! parameter counts against closed-form formulas, preset names, config validation.
//!
//! Every comparison is exact: the values are integers or decimal constants copied from the same text, so
//! any difference is a transcription error in the table.
use cola_autograd::Policy;
use cola_nn::{
    Family, Llama, LlamaConfig, Module, NnError, ParamCounts, ParamKind, Preset, Recipe, Size, PRESET_NAMES,
};
use cola_tensor::Rng;

/// `(size, d, f, layers, heads, r, CoLA keeps the MLP gate SiLU)`, transcribed from docs/METHOD.md
/// section 4 (vocabulary 32000, sequence length 256).
const TABLE: [(&str, usize, usize, usize, usize, usize, bool); 5] = [
    ("60m", 512, 1376, 8, 8, 128, true),
    ("130m", 768, 2048, 12, 12, 256, true),
    ("350m", 1024, 2736, 24, 16, 256, false),
    ("1b", 2048, 5461, 24, 32, 512, false),
    ("7b", 4096, 11008, 32, 32, 1024, false),
];

/// `(size, peak lr, warmup steps, total steps)`, transcribed from docs/METHOD.md section 6.
const RECIPES: [(&str, f64, u64, u64); 5] = [
    ("60m", 6e-3, 2000, 10000),
    ("130m", 3e-3, 2000, 20000),
    ("350m", 3e-3, 6000, 60000),
    ("1b", 2e-3, 10000, 100000),
    ("7b", 1e-3, 15000, 150000),
];

fn preset(name: &str) -> Preset {
    name.parse().unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// CoLA: per layer `4 r (d + d) + 2 r (d + f) + r (f + d)` low-rank entries and `2 d` norm weights;
/// plus embedding `V d`, head `d V` and final norm `d`.
fn cola_counts(v: usize, d: usize, f: usize, layers: usize, r: usize) -> ParamCounts {
    let low_rank = layers * (4 * r * (d + d) + 2 * r * (d + f) + r * (f + d));
    let other = layers * 2 * d + v * d + d * v + d;
    ParamCounts { total: low_rank + other, low_rank, other }
}

/// Full rank: per layer `4 d^2 + 3 d f + 2 d`, plus `2 V d + d`.
fn full_counts(v: usize, d: usize, f: usize, layers: usize) -> ParamCounts {
    let other = layers * (4 * d * d + 3 * d * f + 2 * d) + 2 * v * d + d;
    ParamCounts { total: other, low_rank: 0, other }
}

#[test]
fn presets_match_the_paper_table() {
    for (size, d, f, layers, heads, r, gate_silu) in TABLE {
        let cola = LlamaConfig::preset(&format!("cola-{size}")).unwrap();
        let full = LlamaConfig::preset(&format!("full-{size}")).unwrap();
        for c in [&cola, &full] {
            assert_eq!(
                (c.vocab_size, c.d_model, c.ffn_dim, c.n_layers, c.n_heads),
                (32000, d, f, layers, heads),
                "{size}"
            );
            assert_eq!((c.rope_theta, c.norm_eps, c.max_seq_len, c.pad_id), (10000.0, 1e-6, 256, 0));
            c.validate().unwrap();
        }
        assert_eq!(cola.rank, Some(r), "{size}");
        assert_eq!(cola.mlp_gate_silu, gate_silu, "cola-{size}");
        assert_eq!(full.rank, None, "{size}");
        assert!(full.mlp_gate_silu, "full-{size} is plain LLaMA");
    }
}

#[test]
fn tiny_presets_are_small_and_valid() {
    let cola = LlamaConfig::preset("cola-tiny").unwrap();
    let full = LlamaConfig::preset("full-tiny").unwrap();
    cola.validate().unwrap();
    full.validate().unwrap();
    assert_eq!(
        (cola.vocab_size, cola.d_model, cola.ffn_dim, cola.n_layers, cola.n_heads),
        (64, 32, 48, 2, 4)
    );
    assert_eq!((cola.rank, cola.mlp_gate_silu, cola.max_seq_len), (Some(8), true, 16));
    assert_eq!(LlamaConfig { rank: None, ..cola }, full);
}

#[test]
fn every_listed_preset_exists() {
    for name in PRESET_NAMES {
        LlamaConfig::preset(name).unwrap();
    }
}

#[test]
fn names_round_trip_and_cover_every_family_and_size() {
    assert_eq!(Preset::NAMES, PRESET_NAMES);
    assert_eq!(Preset::ALL.len(), 12);
    for (preset, name) in Preset::ALL.into_iter().zip(Preset::NAMES) {
        assert_eq!(preset.to_string(), name);
        assert_eq!(name.parse::<Preset>().unwrap(), preset);
        assert_eq!(preset.is_cola(), preset.family == Family::Cola);
        assert_eq!(preset.config(), LlamaConfig::preset(name).unwrap());
        assert_eq!(preset.config().is_cola(), preset.is_cola(), "{name}");
    }
    assert_eq!(preset("cola-350m"), Preset::new(Family::Cola, Size::M350));
    assert_eq!(preset("full-tiny"), Preset::new(Family::Full, Size::Tiny));
    assert_eq!(preset("full-7b"), Preset::new(Family::Full, Size::B7));
}

#[test]
fn recipes_match_the_paper_and_tiny_borrows_the_60m_rate() {
    for (size, peak_lr, warmup_steps, total_steps) in RECIPES {
        for family in ["cola", "full"] {
            let got = preset(&format!("{family}-{size}")).recipe();
            assert_eq!(got, Recipe { peak_lr, warmup_steps, total_steps }, "{family}-{size}");
        }
    }
    let tiny = preset("cola-tiny").recipe();
    assert_eq!(tiny, Recipe { peak_lr: 6e-3, warmup_steps: 20, total_steps: 200 });
}

#[test]
fn micro_batches_follow_the_measured_defaults() {
    // CPU: 8 sequences up to 130m, 4 for 350m (5.5 GB peak), 2 for 1b, 1 for 7b. GPU: the paper's 64 up
    // to 350m, 32 for 1b, 8 for 7b.
    let expected =
        [("tiny", 8, 64), ("60m", 8, 64), ("130m", 8, 64), ("350m", 4, 64), ("1b", 2, 32), ("7b", 1, 8)];
    for (size, cpu, gpu) in expected {
        for family in ["cola", "full"] {
            let p = preset(&format!("{family}-{size}"));
            assert_eq!((p.cpu_micro_batch(), p.gpu_micro_batch()), (cpu, gpu), "{p}");
        }
    }
}

#[test]
fn the_model_says_which_policies_apply() {
    for p in Preset::ALL {
        let policies = p.config().policies();
        assert!(policies.contains(&Policy::KeepAll) && policies.contains(&Policy::Block), "{p}");
        assert_eq!(policies.contains(&Policy::ColaM), p.is_cola(), "{p}");
        assert!(!policies.contains(&Policy::RecomputeAll), "{p}");
    }
}

#[test]
fn param_counts_match_closed_forms() {
    for (size, d, f, layers, _, r, _) in TABLE {
        let cola = LlamaConfig::preset(&format!("cola-{size}")).unwrap();
        assert_eq!(cola.param_counts(), cola_counts(32000, d, f, layers, r), "cola-{size}");
        let full = LlamaConfig::preset(&format!("full-{size}")).unwrap();
        assert_eq!(full.param_counts(), full_counts(32000, d, f, layers), "full-{size}");
    }
    let tiny = LlamaConfig::preset("cola-tiny").unwrap();
    assert_eq!(tiny.param_counts(), cola_counts(64, 32, 48, 2, 8));
}

#[test]
fn cola_is_about_half_the_size_of_full_rank() {
    // The paper's "~2x smaller": the decoder layers shrink by 2x-4x at r = d/4.
    for (size, ..) in TABLE {
        let cola = LlamaConfig::preset(&format!("cola-{size}")).unwrap().param_counts();
        let full = LlamaConfig::preset(&format!("full-{size}")).unwrap().param_counts();
        let ratio = full.total as f64 / cola.total as f64;
        assert!((1.3..3.0).contains(&ratio), "{size}: full {} / cola {} = {ratio}", full.total, cola.total);
    }
}

#[test]
fn allocated_model_matches_the_config_listing() {
    for name in ["cola-tiny", "full-tiny"] {
        let config = LlamaConfig::preset(name).unwrap();
        let model = Llama::new(config.clone(), &mut Rng::new(1)).unwrap();
        let mut listed = Vec::new();
        model.visit(&mut |p, kind| listed.push((p.name().to_string(), p.value().shape().to_vec(), kind)));
        assert_eq!(listed, config.parameter_shapes(), "{name}");
        assert_eq!(model.param_counts(), config.param_counts(), "{name}");
        assert_eq!(model.parameters().len(), listed.len());
    }
}

#[test]
fn parameter_names_follow_the_reference() {
    let cola = LlamaConfig::preset("cola-tiny").unwrap().parameter_shapes();
    let names: Vec<&str> = cola.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(names[0], "model.embed_tokens.weight");
    assert_eq!(
        &names[1..18],
        &[
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.cola_a",
            "model.layers.0.self_attn.q_proj.cola_b",
            "model.layers.0.self_attn.k_proj.cola_a",
            "model.layers.0.self_attn.k_proj.cola_b",
            "model.layers.0.self_attn.v_proj.cola_a",
            "model.layers.0.self_attn.v_proj.cola_b",
            "model.layers.0.self_attn.o_proj.cola_a",
            "model.layers.0.self_attn.o_proj.cola_b",
            "model.layers.0.post_attention_layernorm.weight",
            "model.layers.0.mlp.gate_proj.cola_a",
            "model.layers.0.mlp.gate_proj.cola_b",
            "model.layers.0.mlp.up_proj.cola_a",
            "model.layers.0.mlp.up_proj.cola_b",
            "model.layers.0.mlp.down_proj.cola_a",
            "model.layers.0.mlp.down_proj.cola_b",
            "model.layers.1.input_layernorm.weight",
        ]
    );
    assert_eq!(&names[names.len() - 2..], &["model.norm.weight", "lm_head.weight"]);
    let shape = |name: &str| cola.iter().find(|(n, ..)| n == name).map(|(_, s, k)| (s.clone(), *k)).unwrap();
    assert_eq!(shape("model.layers.1.mlp.down_proj.cola_a"), (vec![48, 8], ParamKind::LowRank));
    assert_eq!(shape("model.layers.1.mlp.down_proj.cola_b"), (vec![8, 32], ParamKind::LowRank));

    let full = LlamaConfig::preset("full-tiny").unwrap().parameter_shapes();
    let dense: Vec<_> =
        full.iter().filter(|(_, _, k)| *k == ParamKind::Dense).map(|(n, ..)| n.as_str()).collect();
    assert_eq!(dense.len(), 2 * 7 + 1);
    assert!(dense.contains(&"model.layers.0.mlp.gate_proj.weight"));
    assert!(dense.contains(&"lm_head.weight"));
}

#[test]
fn unknown_preset_lists_the_valid_ones() {
    for bad in ["cola-2b", "cola-3b", "llama-60m", "tiny", "cola-60M", "cola-60m ", ""] {
        assert!(bad.parse::<Preset>().is_err(), "{bad}");
        let err = LlamaConfig::preset(bad).unwrap_err();
        assert!(matches!(err, NnError::UnknownPreset { .. }), "{bad}: {err}");
        let message = err.to_string();
        assert!(message.contains("cola-350m") && message.contains("full-tiny"), "{message}");
    }
}

#[test]
fn invalid_configs_are_errors() {
    let tiny = LlamaConfig::preset("cola-tiny").unwrap();
    let cases = [
        (LlamaConfig { n_heads: 5, ..tiny.clone() }, "divisible"),
        (LlamaConfig { d_model: 36, n_heads: 12, ..tiny.clone() }, "even"),
        (LlamaConfig { rank: Some(0), ..tiny.clone() }, "rank"),
        (LlamaConfig { pad_id: 64, ..tiny.clone() }, "pad_id"),
        (LlamaConfig { vocab_size: 0, ..tiny.clone() }, "vocab_size"),
        (LlamaConfig { n_heads: 0, ..tiny.clone() }, "n_heads"),
        (LlamaConfig { norm_eps: 0.0, ..tiny.clone() }, "norm_eps"),
    ];
    for (config, word) in cases {
        let err = config.validate().unwrap_err();
        assert!(matches!(err, NnError::InvalidConfig { .. }) && err.to_string().contains(word), "{err}");
        assert!(Llama::new(config, &mut Rng::new(0)).is_err());
    }
}

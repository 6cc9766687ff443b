//! Initialisation statistics (docs/METHOD.md section 5) and determinism of `Llama::new`.
use cola_nn::{cola_init_std, Llama, LlamaConfig, ParamKind};
use cola_tensor::Rng;

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// A one-layer CoLA model wide enough that every factor has >= 8192 entries: the sample std of n
/// Gaussian draws has relative standard error 1/sqrt(2n) < 0.8%, so 5% is > 6 sigma.
fn wide_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 512,
        d_model: 256,
        ffn_dim: 384,
        n_layers: 1,
        n_heads: 4,
        rank: Some(32),
        ..LlamaConfig::preset("cola-tiny").unwrap()
    }
}

#[test]
fn cola_factors_have_std_s() {
    let model = Llama::new(wide_config(), &mut Rng::new(7)).unwrap();
    let config = model.config().clone();
    let factors: Vec<_> = model.parameters().into_iter().filter(|p| p.name().contains(".cola_")).collect();
    let mut checked = 0;
    // Factors come in (A, B) pairs per projection: A is `[in, r]`, B is `[r, out]`.
    for pair in factors.chunks_exact(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(a.name().ends_with(".cola_a") && b.name().ends_with(".cola_b"), "{}", a.name());
        let (fan_in, rank, fan_out) = (a.value().shape()[0], a.value().shape()[1], b.value().shape()[1]);
        assert_eq!(Some(rank), config.rank);
        let s = cola_init_std(rank, fan_in, fan_out);
        assert!((s - (32.0 * (fan_in + fan_out) as f64).powf(-0.25)).abs() < 1e-15);
        for factor in [a, b] {
            let (mean, std) = mean_std(&factor.value().to_vec_f64());
            assert!((std / s - 1.0).abs() < 0.05, "{}: std {std}, s {s}", factor.name());
            assert!(
                mean.abs() < 5.0 * s / (factor.value().numel() as f64).sqrt(),
                "{}: mean {mean}",
                factor.name()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 14);
}

#[test]
fn embedding_head_and_norms() {
    let config = wide_config();
    let model = Llama::new(config.clone(), &mut Rng::new(8)).unwrap();
    let table = model.embedding().table().value().to_vec_f64();
    let d = config.d_model;
    let pad = config.pad_id as usize;
    assert!(table[pad * d..(pad + 1) * d].iter().all(|&v| v == 0.0 && v.is_sign_positive()), "pad row");
    let (_, std) = mean_std(&table[d..]);
    assert!((std / 0.02 - 1.0).abs() < 0.05, "embedding std {std}");
    let (_, std) = mean_std(&model.lm_head().weight().value().to_vec_f64());
    assert!((std / 0.02 - 1.0).abs() < 0.05, "head std {std}");
    for p in model.parameters() {
        if p.name().ends_with("norm.weight") || p.name().ends_with("layernorm.weight") {
            assert!(p.value().to_vec_f64().iter().all(|&v| v == 1.0), "{}", p.name());
        }
    }
}

#[test]
fn pad_row_is_zero_for_a_nonzero_pad_id() {
    let config = LlamaConfig { pad_id: 5, ..LlamaConfig::preset("cola-tiny").unwrap() };
    let model = Llama::new(config.clone(), &mut Rng::new(3)).unwrap();
    let table = model.embedding().table().value().to_vec_f64();
    let d = config.d_model;
    assert!(table[5 * d..6 * d].iter().all(|&v| v == 0.0));
    assert!(table[..5 * d].iter().chain(&table[6 * d..]).all(|&v| v != 0.0));
    // Rows other than the pad row do not depend on which id pads.
    let reference = Llama::new(LlamaConfig::preset("cola-tiny").unwrap(), &mut Rng::new(3)).unwrap();
    let other = reference.embedding().table().value().to_vec_f64();
    assert_eq!(&table[d..5 * d], &other[d..5 * d]);
}

#[test]
fn dense_projections_have_std_0_02() {
    let config = LlamaConfig { rank: None, ..wide_config() };
    let model = Llama::new(config, &mut Rng::new(9)).unwrap();
    let mut dense = 0;
    for (p, kind) in model.parameters().into_iter().zip(model.config().parameter_shapes()) {
        if kind.2 == ParamKind::Dense {
            let (_, std) = mean_std(&p.value().to_vec_f64());
            assert!((std / 0.02 - 1.0).abs() < 0.05, "{}: std {std}", p.name());
            dense += 1;
        }
    }
    assert_eq!(dense, 8);
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let config = LlamaConfig::preset("cola-tiny").unwrap();
    let a = Llama::new(config.clone(), &mut Rng::new(42)).unwrap();
    let b = Llama::new(config.clone(), &mut Rng::new(42)).unwrap();
    let c = Llama::new(config, &mut Rng::new(43)).unwrap();
    for ((pa, pb), pc) in a.parameters().iter().zip(b.parameters()).zip(c.parameters()) {
        assert_eq!(pa.value().to_vec::<f32>().unwrap(), pb.value().to_vec::<f32>().unwrap(), "{}", pa.name());
        if !pa.name().contains("norm") {
            assert_ne!(
                pa.value().to_vec::<f32>().unwrap(),
                pc.value().to_vec::<f32>().unwrap(),
                "{}",
                pa.name()
            );
        }
    }
}

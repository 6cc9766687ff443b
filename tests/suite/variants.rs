//! Model variants through the training program: the flags parse into the run's config and `state.json`,
//! a trained checkpoint's `config.json` and generation follow the variant, resume refuses a changed one,
//! bad variants are clear errors, and `--audit`'s parameter counts and FLOPs are exact for each variant
//! (against the formulas of docs/METHOD.md section 8 written out here). Runs are 3 steps of cola-tiny on
//! the 300-entry test BPE: about a second.
use crate::common;

use clap::Parser;
use cola::audit::sizes;
use cola::generate::{self, LoadOptions};
use cola::nn::{LowRankActivation, Preset, Variant};
use cola::train::{self, Options, TrainConfig};
use cola_tensor::Device;
use common::training::{tiny_config, trained, write_corpus};
use common::TempDir;

fn parse(args: &[&str]) -> Options {
    Options::try_parse_from(std::iter::once("llama_cola_350m").chain(args.iter().copied())).unwrap()
}

#[test]
fn flags_parse_into_the_config_and_state_json() {
    let options = parse(&[
        "--model",
        "cola-tiny",
        "--lowrank-act",
        "identity",
        "--rank",
        "4",
        "--only-lr-act",
        "--device",
        "cpu",
    ]);
    let (config, _) = train::resolve(&options).unwrap();
    let expected =
        Variant { lowrank_act: Some(LowRankActivation::Identity), rank: Some(4), only_lr_act: Some(true) };
    assert_eq!(config.variant, expected);
    let model = config.model_config();
    assert_eq!(
        (model.rank, model.lowrank_act, model.mlp_gate_silu),
        (Some(4), LowRankActivation::Identity, false)
    );
    let json = serde_json::to_string(&config).unwrap();
    assert!(json.contains(r#""variant":{"lowrank_act":"identity","rank":4,"only_lr_act":true}"#), "{json}");
    let back: TrainConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back.variant, expected);
    // A state.json from before variants has none: the preset's model.
    let old = json.replace(r#""variant":{"lowrank_act":"identity","rank":4,"only_lr_act":true},"#, "");
    assert_eq!(serde_json::from_str::<TrainConfig>(&old).unwrap().variant, Variant::NONE);
    assert_eq!(parse(&["--only-lr-act", "false"]).only_lr_act, Some(false));
}

#[test]
fn bad_variants_are_clear_errors() {
    let error = |args: &[&str]| {
        let (config, _) = train::resolve(&parse(args)).unwrap();
        config.validate().unwrap_err().to_string()
    };
    let full = error(&["--model", "full-tiny", "--rank", "4", "--device", "cpu"]);
    assert!(full.contains("--rank 4") && full.contains("CoLA models only"), "{full}");
    let wide = error(&["--model", "cola-tiny", "--rank", "32", "--device", "cpu"]);
    assert!(wide.contains("--rank 32") && wide.contains("min(d_model, ffn_dim) = 32"), "{wide}");
    let unknown = Options::try_parse_from(["x", "--lowrank-act", "tanh"]).unwrap_err().to_string();
    assert!(unknown.contains("silu") && unknown.contains("identity"), "{unknown}");
}

#[test]
fn checkpoints_generation_and_resume_follow_the_variant() {
    let dir = TempDir::new("variants-run");
    write_corpus(&dir);
    let mut config = tiny_config(&dir, "cola-tiny", "identity", 3);
    config.variant =
        Variant { lowrank_act: Some(LowRankActivation::Identity), rank: Some(6), ..Variant::NONE };
    trained(&config);
    let run = dir.join("identity");
    let checkpoint = train::checkpoint::locate(&run).unwrap();
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("config.json")).unwrap()).unwrap();
    assert_eq!((&hf["lr_act_type"], &hf["cola_rank"]), (&serde_json::json!("linear"), &serde_json::json!(6)));

    let options = LoadOptions { checkpoint: run.clone(), model: None, tokenizer: None, device: Device::Cpu };
    let loaded = generate::load(&options).unwrap();
    assert_eq!(
        (loaded.model.config().lowrank_act, loaded.model.config().rank),
        (LowRankActivation::Identity, Some(6))
    );
    // Without state.json the config.json alone says the variant.
    std::fs::remove_file(checkpoint.join("state.json")).unwrap();
    let bare = LoadOptions { checkpoint: checkpoint.clone(), ..options };
    assert_eq!(generate::load(&bare).unwrap().model.config().lowrank_act, LowRankActivation::Identity);

    let mut other = tiny_config(&dir, "cola-tiny", "silu", 3);
    other.stop_after = Some(1);
    trained(&other);
    let resume = |flags: &[&str]| {
        let path = dir.join("silu");
        let mut args = vec!["--resume", path.to_str().unwrap(), "--device", "cpu"];
        args.extend_from_slice(flags);
        train::resolve(&parse(&args)).map(|_| ()).map_err(|e| e.to_string())
    };
    let changed = resume(&["--lowrank-act", "gelu"]).unwrap_err();
    assert!(changed.contains("--lowrank-act gelu differs from the checkpoint's preset default"), "{changed}");
    assert!(resume(&["--rank", "4"]).unwrap_err().contains("--rank 4 differs"));
    assert!(resume(&[]).is_ok());
}

#[test]
fn audit_sizes_are_exact_for_every_variant() {
    let preset: Preset = "cola-60m".parse().unwrap();
    let c = preset.config();
    let (v, d, f, layers, n) =
        (c.vocab_size as f64, c.d_model as f64, c.ffn_dim as f64, c.n_layers as f64, 256.0);
    for rank in [64usize, 128, 256] {
        for act in LowRankActivation::ALL {
            let variant = Variant { lowrank_act: Some(act), rank: Some(rank), ..Variant::NONE };
            let audit = sizes(preset, &variant, c.vocab_size, 8, 256).unwrap();
            let r = rank as f64;
            let low_rank = layers * r * (4.0 * 2.0 * d + 3.0 * (d + f));
            assert_eq!(audit.params_low_rank as f64, low_rank, "{rank} {act}");
            assert_eq!(audit.params_total as f64, low_rank + layers * 2.0 * d + 2.0 * v * d + d);
            // Matmuls only: the activation adds no FLOPs to the formula.
            let forward = layers * (2.0 * (8.0 * r * d + 3.0 * r * (d + f)) + 4.0 * n * d) + 2.0 * d * v;
            assert_eq!(
                (audit.forward_flops_per_token, audit.training_flops_per_token),
                (forward, 3.0 * forward)
            );
            assert!(audit.preset.contains(&format!("--rank {rank}")), "{}", audit.preset);
        }
    }
}

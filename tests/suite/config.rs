//! The typed configuration: `state.json` files written before the fields were typed still load with the
//! same meaning, the command line parses straight into typed options (bad values are errors that list the
//! valid ones), and weight-decay exemptions follow parameter roles. Every check is an exact comparison:
//! the values are names, integers and the decimal constants the JSON spells out.
use clap::Parser;
use cola::train::checkpoint::RunState;
use cola::train::trainer::norms_and_embedding;
use cola::train::{DeviceChoice, Keep, Options, Precision, TrainConfig};
use cola_autograd::Policy;
use cola_nn::{Family, Llama, LlamaConfig, ParamKind, Preset, Size};
use cola_tensor::Rng;
use std::path::PathBuf;

/// `state.json` of a checkpoint written by the training program before its configuration was typed
/// (the model, precision and policy were strings then): `--model cola-tiny --vocab-size 300 --seq-len 16
/// --batch-size 8 --steps 2 --recompute block --threads 1`, verbatim.
const OLD_STATE: &str = r#"{
  "format": "cola-train-checkpoint/1",
  "step": 2,
  "optimizer_step": 2,
  "tokens": 256,
  "elapsed_s": 0.020539346,
  "data": {
    "epoch": 0,
    "index": 16
  },
  "rng": {
    "seed": 0,
    "counter": 27136
  },
  "threads": 1,
  "last_val_loss": 5.3794355392456055,
  "config": {
    "model": "cola-tiny",
    "vocab_size": 300,
    "device": "auto",
    "precision": "f32",
    "data": "corpus.txt",
    "val_data": null,
    "tokenizer": null,
    "steps": 2,
    "warmup": 0,
    "lr": 0.006,
    "batch_size": 8,
    "micro_batch": 8,
    "seq_len": 16,
    "seed": 0,
    "shuffle": true,
    "eval_every": 10,
    "eval_tokens": 8192,
    "save_every": 20,
    "weight_decay": 0.01,
    "no_decay_norms_embeddings": false,
    "clip_norm": 0.5,
    "recompute": "block",
    "strict": false,
    "out": "run"
  },
  "files": {
    "model.safetensors": {
      "bytes": 112688,
      "hash": "908ca6f844a396fd"
    },
    "optimizer.safetensors": {
      "bytes": 226088,
      "hash": "98c6037a454a08fc"
    },
    "tokenizer.json": {
      "bytes": 3847,
      "hash": "f31189b5c5f0a3db"
    }
  }
}"#;

fn state(text: &str) -> RunState {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_state_json_written_before_the_typed_config_loads_with_typed_values() {
    let old = state(OLD_STATE);
    let config = &old.config;
    assert_eq!(config.model, Preset::new(Family::Cola, Size::Tiny));
    assert_eq!(config.device, DeviceChoice::Auto);
    assert_eq!(config.precision, Precision::F32);
    assert_eq!(config.recompute, Policy::Block);
    assert_eq!((config.vocab_size, config.steps, config.lr, config.micro_batch), (Some(300), 2, 0.006, 8));
    assert_eq!(config.data, Some(PathBuf::from("corpus.txt")));
    assert_eq!((old.step, old.rng.counter, old.files.len()), (2, 27136, 3));
    // Older than the retention fields: the latest checkpoint only, as those runs kept.
    assert_eq!((config.keep_checkpoints, config.keep_every), (Keep::default(), 0));

    // Other spellings of the same era: a GPU by ordinal, the `dtype` alias of `precision`, and no
    // `recompute` field at all (files older than the field), which means `none`.
    let gpu = OLD_STATE
        .replace(r#""device": "auto""#, r#""device": {"cuda": 1}"#)
        .replace(r#""precision": "f32""#, r#""dtype": "bf16-mixed""#)
        .replace("    \"recompute\": \"block\",\n", "")
        .replace(r#""model": "cola-tiny""#, r#""model": "full-350m""#);
    let gpu = state(&gpu).config;
    assert_eq!(gpu.device, DeviceChoice::Cuda(1));
    assert_eq!(gpu.precision, Precision::Bf16Mixed);
    assert_eq!(gpu.recompute, Policy::KeepAll);
    assert_eq!(gpu.model, Preset::new(Family::Full, Size::M350));
    let pure = state(&OLD_STATE.replace(r#""precision": "f32""#, r#""precision": "pure-bf16""#));
    assert_eq!(pure.config.precision, Precision::PureBf16);
    let cola_m = state(&OLD_STATE.replace(r#""recompute": "block""#, r#""recompute": "cola-m""#));
    assert_eq!(cola_m.config.recompute, Policy::ColaM);
    assert_eq!(
        state(&OLD_STATE.replace(r#""device": "auto""#, r#""device": "cpu""#)).config.device,
        DeviceChoice::Cpu
    );

    // What is written now reads back the same and keeps the old names.
    let written = serde_json::to_string(&old).unwrap();
    for name in
        [r#""model":"cola-tiny""#, r#""device":"auto""#, r#""precision":"f32""#, r#""recompute":"block""#]
    {
        assert!(written.contains(name), "{name} in {written}");
    }
    let again = state(&written).config;
    assert_eq!(
        (again.model, again.precision, again.recompute),
        (config.model, config.precision, config.recompute)
    );

    // Unknown names are errors naming the field's value.
    for (from, to) in [
        (r#""model": "cola-tiny""#, r#""model": "cola-3b""#),
        (r#""precision": "f32""#, r#""precision": "fp16""#),
        (r#""recompute": "block""#, r#""recompute": "sometimes""#),
    ] {
        let error = serde_json::from_str::<RunState>(&OLD_STATE.replace(from, to)).unwrap_err().to_string();
        let value = to.rsplit('"').nth(1).unwrap();
        assert!(error.contains(value), "{error}");
    }
}

fn parse(args: &[&str]) -> Result<Options, String> {
    Options::try_parse_from(std::iter::once("llama_cola_350m").chain(args.iter().copied()))
        .map_err(|e| e.to_string())
}

#[test]
fn the_command_line_parses_into_typed_options() {
    let options = parse(&[
        "--model",
        "full-60m",
        "--device",
        "cuda:1",
        "--dtype",
        "pure-bf16",
        "--recompute",
        "block",
        "--threads",
        "3",
        "--micro-batch",
        "2",
        "--no-decay-norms-embeddings",
    ])
    .unwrap();
    assert_eq!(options.model, Some(Preset::new(Family::Full, Size::M60)));
    assert_eq!(options.device, Some(DeviceChoice::Cuda(1)));
    assert_eq!(options.precision, Some(Precision::PureBf16));
    assert_eq!(options.recompute, Some(Policy::Block));
    assert_eq!((options.threads, options.micro_batch), (Some(3), Some(2)));
    assert!(options.no_decay_norms_embeddings && !options.audit);
    let audit = parse(&["--audit", "--json", "--model", "cola-60m", "--precision", "f32"]).unwrap();
    assert!(audit.audit && audit.json);
    assert_eq!(audit.precision, Some(Precision::F32));
    let none = parse(&[]).unwrap();
    assert_eq!((none.model, none.device, none.precision, none.recompute), (None, None, None, None));

    // Bad values: clap's error, listing what is accepted.
    let error = parse(&["--precision", "fp16"]).unwrap_err();
    assert!(error.contains("fp16") && error.contains("f32, bf16-mixed, pure-bf16"), "{error}");
    let error = parse(&["--model", "cola-3b"]).unwrap_err();
    assert!(
        error.contains("cola-3b") && error.contains("cola-350m") && error.contains("full-tiny"),
        "{error}"
    );
    let error = parse(&["--recompute", "all"]).unwrap_err();
    assert!(error.contains("none, cola-m, block"), "{error}");
    let error = parse(&["--device", "tpu"]).unwrap_err();
    assert!(error.contains("expected auto, cpu, cuda or cuda:N"), "{error}");
    assert!(parse(&["--json"]).unwrap_err().contains("--audit"));
    assert!(parse(&["--eval-only"]).unwrap_err().contains("--resume"));
    // ZeRO: stage 0 (whole optimizer on every rank) by default, 1 shards it, nothing else exists.
    assert_eq!((none.zero, parse(&["--zero", "1"]).unwrap().zero), (0, 1));
    let error = parse(&["--zero", "2"]).unwrap_err();
    assert!(error.contains("--zero") && error.contains("0..=1"), "{error}");
}

#[test]
fn a_full_rank_model_refuses_cola_m_before_any_work() {
    let mut config = TrainConfig::new("full-60m".parse().unwrap(), "unused");
    config.device = DeviceChoice::Cpu;
    config.recompute = Policy::ColaM;
    let error = config.validate().unwrap_err().to_string();
    assert!(
        error.contains("--recompute cola-m keeps the rank-r bottlenecks") && error.contains("full-60m"),
        "{error}"
    );
    config.recompute = Policy::Block;
    config.validate().unwrap();
    config.model = "cola-60m".parse().unwrap();
    config.recompute = Policy::ColaM;
    config.validate().unwrap();
}

#[test]
fn weight_decay_exemptions_follow_parameter_roles() {
    for name in ["cola-tiny", "full-tiny"] {
        let config = LlamaConfig::preset(name).unwrap();
        let model = Llama::new(config.clone(), &mut Rng::new(0)).unwrap();
        let expected: Vec<String> = config
            .parameter_shapes()
            .into_iter()
            .filter(|(_, _, kind)| matches!(kind, ParamKind::Vector | ParamKind::Table))
            .map(|(name, ..)| name)
            .collect();
        // The embedding, two norms per layer and the final norm.
        assert_eq!(expected.len(), 1 + 2 * config.n_layers + 1, "{name}");
        assert_eq!(norms_and_embedding(&model), expected, "{name}");
        assert!(!expected.iter().any(|n| n.contains("proj") || n == "lm_head.weight"), "{expected:?}");
    }
}

//! Tiny training runs shared by the training and checkpoint tests: a repetitive corpus written into a
//! test's temp folder and a cola-tiny / full-tiny config of 8 x 16 tokens per step on it.
use super::TempDir;
use cola::tensor::Rng;
use cola::train::{self, RunOutcome, TrainConfig, TrainSummary};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const VOCAB: usize = 300;
pub const SEQ: usize = 16;

/// A repetitive text: a handful of sentences in a fixed pseudo-random order.
pub fn write_corpus(dir: &TempDir) -> PathBuf {
    let sentences = [
        "the cat sat on the mat.",
        "a dog ran to the red house.",
        "birds sing in the tall green tree.",
        "we bake bread every morning.",
    ];
    let mut rng = Rng::new(7);
    let text: Vec<&str> = (0..400).map(|_| sentences[rng.below(4) as usize]).collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text.join(" ")).unwrap();
    path
}

/// cola-tiny (or `model`) with a 300-entry vocabulary on the test corpus: 8 x 16 tokens per step in one
/// micro-batch, no evaluations or periodic checkpoints unless a test asks.
pub fn tiny_config(dir: &TempDir, model: &str, out: &str, steps: u64) -> TrainConfig {
    let mut config = TrainConfig::new(model.parse().unwrap(), dir.join(out));
    config.vocab_size = Some(VOCAB);
    config.data = Some(dir.join("corpus.txt"));
    config.cache_dir = Some(dir.join("cache"));
    config.seq_len = SEQ;
    config.batch_size = 8;
    config.micro_batch = 8;
    config.steps = steps;
    config.warmup = 2;
    config.lr = 1e-2;
    config.eval_every = 0;
    config.save_every = 0;
    config
}

pub fn trained(config: &TrainConfig) -> TrainSummary {
    match train::run(config).unwrap() {
        RunOutcome::Trained(summary) => summary,
        other => panic!("expected a training run, got {other:?}"),
    }
}

/// The training program as `cargo build --release --features FEATURES --example llama_cola_350m` builds
/// it (a no-op when `cargo test` built it already with the same features), next to the test's own binary:
/// `target/release/deps/NAME-*` -> `target/release/examples/llama_cola_350m`.
pub fn build_training_program(features: &[&str]) -> PathBuf {
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--release", "--example", "llama_cola_350m"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if !features.is_empty() {
        build.args(["--features", &features.join(",")]);
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building the training program with features {features:?} failed");
    let exe = std::env::current_exe().unwrap();
    let release: &Path = exe.parent().and_then(Path::parent).unwrap();
    release.join("examples").join("llama_cola_350m")
}

/// The flags of a tiny command-line run into `dir/out`: cola-tiny with a 300-entry vocabulary on
/// `dir/corpus.txt`, 16 tokens per sequence, the data cache in `dir/cache`, one compute thread; then
/// `rest`, the test's own flags.
pub fn tiny_run_flags(dir: &TempDir, out: &str, rest: &[(&str, String)]) -> Vec<String> {
    let path = |name: &str| dir.join(name).display().to_string();
    let mut flags: Vec<String> =
        ["--model", "cola-tiny", "--vocab-size", "300", "--seq-len", "16"].map(String::from).to_vec();
    flags.extend(["--data".into(), path("corpus.txt"), "--cache-dir".into(), path("cache")]);
    flags.extend(["--out".into(), path(out), "--threads".into(), "1".into()]);
    for (flag, value) in rest {
        flags.extend([flag.to_string(), value.clone()]);
    }
    flags
}

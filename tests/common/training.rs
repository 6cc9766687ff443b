//! Tiny training runs shared by the training and checkpoint tests: a repetitive corpus written into a
//! test's temp folder and a cola-tiny / full-tiny config of 8 x 16 tokens per step on it.
use super::TempDir;
use cola::tensor::Rng;
use cola::train::{self, RunOutcome, TrainConfig, TrainSummary};
use std::path::PathBuf;

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

//! Every preset of the table runs on the default corpus (Shakespeare) as a new user starts it, through the
//! command line's library path (`train::resolve`, then `train::run`; `--audit` through `plan::audit_plan`):
//! - the tiny presets, whose own 64-entry vocabulary is smaller than any byte-level BPE, train one optimizer
//!   step of 2 x 32 tokens with the vocabulary raised for them (tokenizer and model), announced by a note,
//!   and a resume takes that vocabulary from the checkpoint; a `TrainConfig` built in code without a
//!   vocabulary trains the same step bit for bit (same seed, data and sizes);
//! - every other preset goes through the `--audit` plan and the model-free part of the audit report: the
//!   vocabulary a run would use is the preset's own, the same the run's config gets, and the parameter
//!   counts are PyTorch's (`tests/fixtures/parity/param_counts.json`). No model is built for them.
//!
//! The corpus cache lives in the target folder and is shared by every run of this test, so the BPE is
//! trained and the corpus tokenized once; the archive is copied from `local/cache` when it was fetched
//! there before, else the pipeline fetches it.
use crate::common;

use cola::data::shakespeare::{shakespeare_dir, SHAKESPEARE_ARCHIVE};
use cola::data::tokenizer::MIN_BPE_VOCAB;
use cola::data::{cache_root, Tokenizer};
use cola::train::plan::{audit_plan, ModelVocab, SMALL_PRESET_BPE_VOCAB};
use cola::train::{self, Options, RunOutcome, TrainConfig, TrainError};
use cola_nn::{Preset, Size};
use common::TempDir;
use std::path::PathBuf;

/// The corpus cache of this test, seeded with the archive of the program's own cache when it has one.
fn shared_cache() -> PathBuf {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("presets-run-cache");
    let archive = shakespeare_dir(&cache).join(SHAKESPEARE_ARCHIVE);
    let fetched = shakespeare_dir(&cache_root()).join(SHAKESPEARE_ARCHIVE);
    if !archive.is_file() && fetched.is_file() {
        std::fs::create_dir_all(shakespeare_dir(&cache)).unwrap();
        std::fs::copy(&fetched, &archive).unwrap();
    }
    cache
}

/// `(total, low_rank, other)` parameters of `preset` as PyTorch counts them.
fn reference_counts(preset: Preset) -> (usize, usize, usize) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/parity/param_counts.json");
    let text = std::fs::read_to_string(path).unwrap();
    let counts: serde_json::Value = serde_json::from_str(&text).unwrap();
    let count = |key: &str| counts[preset.name()][key].as_u64().unwrap() as usize;
    (count("total"), count("low_rank"), count("other"))
}

/// Why 0.05: with all-zero logits the first step's cross-entropy is exactly ln V; the small initial weights
/// spread the logits, and 62 targets are few, so it lands near ln V, not on it: 0.016 below for cola-tiny
/// and 0.020 for full-tiny here. The preset's own 64 rows would give ln 64 = 4.16, more than 2 away, so
/// the loss proves the model's vocabulary.
const FIRST_LOSS_TOLERANCE: f64 = 0.05;

#[test]
fn tiny_presets_train_a_step_on_the_default_corpus_with_a_raised_vocabulary() {
    let dir = TempDir::new("presets-run");
    let cache = shared_cache();
    for preset in Preset::ALL.into_iter().filter(|p| p.size == Size::Tiny) {
        let preset_vocab = preset.config().vocab_size;
        assert!(preset_vocab < MIN_BPE_VOCAB, "{preset}: {preset_vocab}");
        let out = dir.join(preset.name());
        let options = Options {
            model: Some(preset),
            steps: Some(1),
            batch_size: Some(2),
            micro_batch: Some(2),
            seq_len: Some(32),
            eval_every: Some(0),
            out: Some(out.clone()),
            cache_dir: Some(cache.clone()),
            ..Options::default()
        };
        let plan = audit_plan(&options).unwrap();
        let raised = ModelVocab::Raised { preset: preset_vocab, size: SMALL_PRESET_BPE_VOCAB };
        assert_eq!(plan.vocab, raised, "{preset}");
        let (config, notes) = train::resolve(&options).unwrap();
        assert_eq!(config.vocab_size, Some(SMALL_PRESET_BPE_VOCAB), "{preset}");
        let note = raised.note(preset).unwrap();
        assert!(notes.contains(&note), "{preset}: {notes:?}");
        assert!(
            note.contains(&format!("{preset}'s {preset_vocab} entries")) && note.contains("512"),
            "{note}"
        );

        let summary = match train::run(&config).unwrap() {
            RunOutcome::Trained(summary) => summary,
            other => panic!("{preset}: expected a training run, got {other:?}"),
        };
        assert_eq!(summary.steps, 1, "{preset}");
        let loss = summary.last_loss.unwrap();
        let expected = (SMALL_PRESET_BPE_VOCAB as f64).ln();
        assert!((loss - expected).abs() < FIRST_LOSS_TOLERANCE, "{preset}: loss {loss}, ln V {expected}");
        let tokenizer = Tokenizer::load(&out.join("tokenizer.json")).unwrap();
        assert_eq!(tokenizer.vocab_size(), SMALL_PRESET_BPE_VOCAB, "{preset}");

        // A config built in code, without a vocabulary, gets the same one from the run itself.
        let mut direct = TrainConfig::new(preset, dir.join(&format!("{preset}-direct")));
        direct.steps = config.steps;
        direct.warmup = config.warmup;
        direct.batch_size = config.batch_size;
        direct.micro_batch = config.micro_batch;
        direct.seq_len = config.seq_len;
        direct.eval_every = 0;
        direct.cache_dir = Some(cache.clone());
        let direct_loss = match train::run(&direct).unwrap() {
            RunOutcome::Trained(summary) => summary.last_loss.unwrap(),
            other => panic!("{preset}: expected a training run, got {other:?}"),
        };
        assert_eq!(direct_loss.to_bits(), loss.to_bits(), "{preset}: {direct_loss} vs {loss}");

        // The audit counts the model the run trained: the preset's, with 448 more rows of embedding and head.
        let sizes =
            cola::audit::sizes(preset, &plan.variant, plan.vocab.size(), plan.micro_batch, plan.seq_len)
                .unwrap();
        let (total, low_rank, other) = reference_counts(preset);
        let extra = 2 * (SMALL_PRESET_BPE_VOCAB - preset_vocab) * preset.config().d_model;
        assert_eq!(
            (sizes.params_total, sizes.params_low_rank, sizes.params_other),
            (total + extra, low_rank, other + extra),
            "{preset}"
        );

        let resume =
            Options { resume: Some(out.clone()), cache_dir: Some(cache.clone()), ..Options::default() };
        let (resumed, _) = train::resolve(&resume).unwrap();
        assert_eq!(resumed.vocab_size, Some(SMALL_PRESET_BPE_VOCAB), "{preset}");
        let conflict = Options { vocab_size: Some(preset_vocab), ..resume };
        let message = train::resolve(&conflict).unwrap_err().to_string();
        let expected =
            format!("--vocab-size {preset_vocab} differs from the checkpoint's {SMALL_PRESET_BPE_VOCAB}");
        assert!(message.contains(&expected), "{message}");

        // A vocabulary asked for below the smallest BPE stays an error, before any data is read.
        let too_small = Options { vocab_size: Some(preset_vocab), ..options };
        match train::resolve(&too_small) {
            Err(TrainError::Config(message)) => {
                assert!(message.contains(&format!("--vocab-size {preset_vocab} cannot hold")), "{message}");
                assert!(message.contains(&format!("at least {MIN_BPE_VOCAB}")), "{message}");
            }
            other => panic!("{preset}: expected a config error, got {other:?}"),
        }
    }
}

#[test]
fn every_other_preset_audits_with_its_own_vocabulary_and_reference_sizes() {
    let others: Vec<Preset> = Preset::ALL.into_iter().filter(|p| p.size != Size::Tiny).collect();
    assert_eq!(others.len(), Preset::ALL.len() - 2, "the table has two tiny presets, one per family");
    for preset in others {
        let options = Options { model: Some(preset), audit: true, ..Options::default() };
        let plan = audit_plan(&options).unwrap();
        let vocab = preset.config().vocab_size;
        assert_eq!(plan.vocab, ModelVocab::Preset(vocab), "{preset}");
        assert_eq!(plan.vocab.note(preset), None, "{preset}");
        assert_eq!((plan.micro_batch, plan.seq_len), (preset.cpu_micro_batch(), 256), "{preset}");
        // The run given the same options uses the same vocabulary: the preset's, not an override.
        let (config, _) = train::resolve(&Options { model: Some(preset), ..Options::default() }).unwrap();
        assert_eq!(config.vocab_size, None, "{preset}");

        let sizes =
            cola::audit::sizes(preset, &plan.variant, plan.vocab.size(), plan.micro_batch, plan.seq_len)
                .unwrap();
        assert_eq!(
            (sizes.params_total, sizes.params_low_rank, sizes.params_other),
            reference_counts(preset),
            "{preset}"
        );
        assert!(sizes.policies.is_empty(), "{preset}: nothing is measured without a model");
        let report = sizes.to_string();
        assert!(report.contains(&format!("(vocabulary {vocab})")), "{report}");
    }
}

//! The training loop end to end on cola-tiny / full-tiny (d_model 32, 2 layers) with a 300-entry BPE
//! trained on a small text each test writes into its own temp folder: bit-exact resume, learning,
//! gradient accumulation, atomic checkpoints, every bad input as an error value, metrics, and
//! `--eval-only`. Runs are a few dozen steps of 8 x 16 tokens, well under a second each.
use crate::common;

use cola::data::{BatchMode, DataConfig, Dataset, Tokenizer};
use cola::train::{
    self, checkpoint, Options, Precision, RunOutcome, StopRequest, StopSignal, TrainConfig, TrainError,
    Trainer,
};
use cola_autograd::Policy;
use cola_nn::{Llama, LlamaConfig, Preset};
use cola_optim::{AdamW, AdamWConfig, CosineSchedule};
use cola_tensor::Rng;
use common::training::{tiny_config, trained, write_corpus, SEQ, VOCAB};
use common::TempDir;
use std::path::Path;
use std::sync::Arc;

/// `(step, loss)` of every step line of `run_dir/metrics.jsonl`, and the eval lines' `(step, val_loss)`.
/// `(step, loss)` pairs.
type Curve = Vec<(u64, f64)>;

fn read_metrics(run_dir: &Path) -> (Curve, Curve) {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let (mut steps, mut evals) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let object = value.as_object().unwrap();
        let step = object["step"].as_u64().unwrap();
        if let Some(val) = object.get("val_loss") {
            assert!(object["val_ppl"].is_f64(), "{line}");
            evals.push((step, val.as_f64().unwrap()));
        } else {
            for field in ["loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"] {
                assert!(object[field].is_f64(), "{field} in {line}");
            }
            assert!(object["tokens"].is_u64(), "{line}");
            steps.push((step, object["loss"].as_f64().unwrap()));
        }
    }
    (steps, evals)
}

fn checkpoint_bytes(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(checkpoint::locate(dir).unwrap().join(file)).unwrap()
}

#[test]
fn resume_continues_bit_for_bit() {
    let dir = TempDir::new("resume");
    write_corpus(&dir);
    let mut whole = tiny_config(&dir, "cola-tiny", "whole", 12);
    whole.eval_every = 4;
    let uninterrupted = trained(&whole);
    assert_eq!(uninterrupted.steps, 12);

    let mut first = tiny_config(&dir, "cola-tiny", "halves", 12);
    first.eval_every = 4;
    first.stop_after = Some(6);
    assert_eq!(trained(&first).steps, 6);
    // The second half goes through the command line's path: the checkpoint supplies the config.
    let options = Options {
        resume: Some(dir.join("halves")),
        cache_dir: Some(dir.join("cache")),
        ..Options::default()
    };
    let (second, _notes) = train::resolve(&options).unwrap();
    assert_eq!((second.steps, second.out.clone()), (12, dir.join("halves")));
    assert_eq!(trained(&second).steps, 12);

    let (a, a_evals) = read_metrics(&dir.join("whole"));
    let (b, b_evals) = read_metrics(&dir.join("halves"));
    assert_eq!(a.len(), 12);
    let bits = |v: &[(u64, f64)]| v.iter().map(|&(s, l)| (s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b), "train losses differ");
    assert_eq!(bits(&a_evals), bits(&b_evals), "validation losses differ");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            checkpoint_bytes(&dir.join("whole"), file) == checkpoint_bytes(&dir.join("halves"), file),
            "{file}"
        );
    }
}

#[test]
fn interrupt_saves_a_checkpoint_and_resume_completes_the_run() {
    let dir = TempDir::new("interrupt");
    write_corpus(&dir);
    let whole = tiny_config(&dir, "full-tiny", "whole", 5);
    trained(&whole);
    let mut interrupted = tiny_config(&dir, "full-tiny", "interrupted", 5);
    interrupted.interrupt = Some(Arc::new(StopRequest::requested_by(StopSignal::Interrupt)));
    let summary = trained(&interrupted);
    assert!(summary.stopped_by == Some(StopSignal::Interrupt) && summary.steps == 0, "{summary:?}");
    assert!(summary.checkpoint.as_ref().unwrap().ends_with("checkpoint-0"));
    let mut resumed = tiny_config(&dir, "full-tiny", "interrupted", 5);
    resumed.resume = Some(dir.join("interrupted"));
    assert_eq!(trained(&resumed).steps, 5);
    assert!(
        checkpoint_bytes(&dir.join("whole"), "model.safetensors")
            == checkpoint_bytes(&dir.join("interrupted"), "model.safetensors")
    );
}

#[test]
fn loss_falls_by_half_on_a_repetitive_corpus() {
    let dir = TempDir::new("learns");
    write_corpus(&dir);
    let mut config = tiny_config(&dir, "cola-tiny", "run", 40);
    config.warmup = 4;
    trained(&config);
    let (steps, _) = read_metrics(&dir.join("run"));
    let first = steps[0].1;
    let last = steps[35..].iter().map(|s| s.1).sum::<f64>() / 5.0;
    assert!((first - (VOCAB as f64).ln()).abs() < 0.5, "initial loss {first} should be near ln(vocab)");
    assert!(last < 0.5 * first, "loss fell only from {first} to {last}");
}

/// A model, AdamW and schedule for one trainer; the same seed gives the same weights.
fn tiny_trainer(model: &str, micro_batch: usize, pad_id: u32) -> Trainer {
    let mut config = LlamaConfig::preset(model).unwrap();
    config.vocab_size = VOCAB;
    config.pad_id = pad_id;
    let model = Llama::new(config, &mut Rng::new(3)).unwrap();
    let schedule = CosineSchedule::new(1e-2, 0, 10).unwrap();
    Trainer::new(model, AdamW::new(AdamWConfig::default()), schedule, micro_batch, 0.5)
}

/// Accumulated gradients of micro-batches of 2 equal the one-pass gradient of the batch of 4, within f32
/// rounding (the sums run in a different order, so not bit for bit): packed text, and padded documents
/// whose micro-batches hold different numbers of targets (the token-weighted mean keeps them equal).
#[test]
fn micro_batches_accumulate_to_the_full_batch_gradient() {
    let dir = TempDir::new("accumulate");
    write_corpus(&dir);
    let documents: Vec<String> = (0..60)
        .map(|i| format!("{{\"text\": \"{}\"}}", "the cat sat on the mat. ".repeat(1 + i % 5)))
        .collect();
    std::fs::write(dir.join("docs.jsonl"), documents.join("\n")).unwrap();
    for (corpus, mode) in [("corpus.txt", BatchMode::Packed), ("docs.jsonl", BatchMode::Document)] {
        let data = Dataset::prepare(&DataConfig {
            data: Some(dir.join(corpus)),
            vocab_size: VOCAB,
            seq_len: SEQ,
            shuffle: false,
            cache_dir: Some(dir.join("cache")),
            verbose: false,
            ..DataConfig::default()
        })
        .unwrap();
        assert_eq!(data.report().mode, mode);
        let mut batches = data.train_batches(4).unwrap();
        let batch = batches.next_batch();
        let pad = data.pad_id();
        if mode == BatchMode::Document {
            let targets = |r: usize| batch.row(r)[1..].iter().filter(|&&t| t != pad).count();
            assert_ne!(
                targets(0) + targets(1),
                targets(2) + targets(3),
                "the test needs unequal micro-batches"
            );
        }
        let mut split = tiny_trainer("cola-tiny", 2, pad);
        let mut whole = tiny_trainer("cola-tiny", 4, pad);
        let (split_loss, ..) = split.accumulate_gradients(&batch).ok().unwrap();
        let (whole_loss, ..) = whole.accumulate_gradients(&batch).ok().unwrap();
        assert!(
            (split_loss - whole_loss).abs() < 1e-6 * whole_loss,
            "{mode}: loss {split_loss} vs {whole_loss}"
        );
        let mut compared = 0;
        for (a, b) in split.model.parameters().iter().zip(whole.model.parameters()) {
            let (ga, gb) = (split.gradients().get(a.id()).unwrap(), whole.gradients().get(b.id()).unwrap());
            let (ga, gb) = (ga.to_vec_f64(), gb.to_vec_f64());
            let scale = gb.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            let worst = ga.iter().zip(&gb).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            // f32 sums of a few hundred terms: relative error well below 1e-5 of the largest entry.
            assert!(
                worst <= 1e-5 * scale + 1e-9,
                "{mode}: {} differs by {worst} (max |g| {scale})",
                a.name()
            );
            compared += 1;
        }
        assert_eq!(compared, split.model.parameters().len());
    }
}

#[test]
fn checkpoints_are_atomic_and_a_crashed_save_leaves_the_last_one() {
    let dir = TempDir::new("atomic");
    write_corpus(&dir);
    let mut config = tiny_config(&dir, "cola-tiny", "run", 9);
    config.save_every = 3;
    config.stop_after = Some(6);
    trained(&config);
    let run = dir.join("run");
    let kept: Vec<u64> = checkpoint::list(&run).into_iter().map(|(step, _)| step).collect();
    assert_eq!(kept, vec![6], "older checkpoints are removed once a newer one is complete");

    // A crash while writing step 9's checkpoint leaves a temp folder with a partial file.
    let crashed = run.join(".checkpoint-9.tmp-999999");
    std::fs::create_dir_all(&crashed).unwrap();
    std::fs::write(crashed.join("model.safetensors"), b"partial").unwrap();
    assert!(checkpoint::locate(&run).unwrap().ends_with("checkpoint-6"));

    // A save that fails (here: the final name is taken by a file) keeps the previous checkpoint.
    std::fs::write(run.join("checkpoint-9"), b"in the way").unwrap();
    let mut resume = tiny_config(&dir, "cola-tiny", "run", 9);
    resume.save_every = 3;
    resume.resume = Some(run.clone());
    let error = train::run(&resume).unwrap_err();
    assert!(error.to_string().contains("checkpoint-9"), "{error}");
    assert!(checkpoint::locate(&run).unwrap().ends_with("checkpoint-6"));
    std::fs::remove_file(run.join("checkpoint-9")).unwrap();

    // The leftover temp folder breaks nothing: resume from step 6 finishes the run and sweeps it. The
    // checkpoint the run resumed from is kept while that run lasts.
    assert_eq!(trained(&resume).steps, 9);
    assert!(!crashed.exists());
    let kept: Vec<u64> = checkpoint::list(&run).into_iter().map(|(step, _)| step).collect();
    assert_eq!(kept, vec![6, 9]);
}

/// The message of the error `run` returns for `config`, which must not panic.
fn error_of(config: &TrainConfig) -> String {
    match train::run(config) {
        Ok(outcome) => panic!("expected an error, got {outcome:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dir = TempDir::new("bad");
    write_corpus(&dir);
    let base = tiny_config(&dir, "cola-tiny", "run", 3);

    let mut config = base.clone();
    config.data = Some(dir.join("missing.txt"));
    assert!(error_of(&config).contains("missing.txt does not exist"));

    std::fs::write(dir.join("empty.txt"), "").unwrap();
    config.data = Some(dir.join("empty.txt"));
    assert!(error_of(&config).contains("is empty"));

    let lines = ["{\"text\": \"the cat sat on the mat.\"}"; 40].join("\n") + "\n{\"text\": oops\n";
    std::fs::write(dir.join("broken.jsonl"), lines).unwrap();
    config.data = Some(dir.join("broken.jsonl"));
    config.strict = true;
    assert!(error_of(&config).contains("broken.jsonl:41: malformed JSON line"));
    config.strict = false;
    config.out = dir.join("lenient");
    assert_eq!(trained(&config).steps, 3, "without --strict the line is skipped and counted");

    // Enough distinct pseudo-words for 400 BPE entries.
    let mut rng = Rng::new(1);
    let words: Vec<String> = (0..3000)
        .map(|_| (0..2 + rng.below(6)).map(|_| (b'a' + rng.below(26) as u8) as char).collect())
        .collect();
    let big = Tokenizer::train_bpe(std::iter::once(words.join(" ")), 400, false).unwrap();
    assert!(big.vocab_size() > VOCAB);
    let mut config = base.clone();
    config.tokenizer = Some(big.save_into_dir(&dir.join("tok400")).unwrap());
    // A larger tokenizer is refused only because the corpus holds ids the model's 300 rows lack.
    let message = error_of(&config);
    assert!(message.contains("is not below the model's vocabulary size 300"), "{message}");

    let unknown = "cola-5m".parse::<Preset>().unwrap_err().to_string();
    assert!(unknown.contains("unknown preset \"cola-5m\"") && unknown.contains("cola-350m"), "{unknown}");

    let mut config = base.clone();
    if train::gpu_count() == 0 {
        config.device = "cuda".parse().unwrap();
        assert!(matches!(train::run(&config), Err(TrainError::DeviceUnavailable { .. })));
    }
    let bad = "bf16".parse::<Precision>().unwrap_err().to_string();
    assert!(bad.contains("expected f32, bf16-mixed or pure-bf16"), "{bad}");
    let mut config = tiny_config(&dir, "full-tiny", "run", 3);
    config.recompute = Policy::ColaM;
    assert!(error_of(&config).contains("--recompute cola-m keeps the rank-r bottlenecks"));
    config.recompute = Policy::RecomputeAll;
    assert!(error_of(&config).contains("--recompute must be none, cola-m or block, got 'all'"));
    let mut config = base.clone();
    config.resume = Some(dir.join("nowhere"));
    assert!(error_of(&config).contains("does not exist"));
}

#[test]
fn a_diverging_run_stops_with_a_message_and_keeps_its_last_checkpoint() {
    let dir = TempDir::new("nan");
    write_corpus(&dir);
    let mut config = tiny_config(&dir, "cola-tiny", "run", 10);
    config.lr = 1e30;
    config.warmup = 0;
    config.save_every = 1;
    let message = error_of(&config);
    assert!(message.contains("training diverged at step") && message.contains("not applied"), "{message}");
    let last = checkpoint::locate(&dir.join("run")).unwrap();
    assert!(message.contains(&last.display().to_string()), "{message}");
    checkpoint::read_state(&last).unwrap();
}

#[test]
fn damaged_checkpoints_are_reported() {
    let dir = TempDir::new("damaged");
    write_corpus(&dir);
    let config = tiny_config(&dir, "cola-tiny", "run", 2);
    trained(&config);
    let ckpt = checkpoint::locate(&dir.join("run")).unwrap();
    let mut resume = config.clone();
    resume.resume = Some(ckpt.clone());
    resume.steps = 4;

    let model = ckpt.join("model.safetensors");
    let original = std::fs::read(&model).unwrap();
    std::fs::write(&model, &original[..original.len() / 2]).unwrap();
    assert!(error_of(&resume).contains("truncated or damaged"));
    let mut flipped = original.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 0x40;
    std::fs::write(&model, &flipped).unwrap();
    assert!(error_of(&resume).contains("corrupt: its checksum does not match"));
    std::fs::write(&model, &original).unwrap();

    let state = ckpt.join("state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, &text[..text.len() / 2]).unwrap();
    assert!(error_of(&resume).contains("state.json: truncated or corrupt"));
    std::fs::write(&state, &text).unwrap();
    assert_eq!(trained(&resume).steps, 4, "the repaired checkpoint resumes");

    let options = Options { resume: Some(dir.join("run")), batch_size: Some(16), ..Options::default() };
    let conflict = train::resolve(&options).unwrap_err().to_string();
    assert!(conflict.contains("--batch-size 16 differs from the checkpoint's 8"), "{conflict}");
}

#[test]
fn metrics_have_their_fields_and_eval_only_repeats_the_validation_loss() {
    let dir = TempDir::new("metrics");
    write_corpus(&dir);
    let mut config = tiny_config(&dir, "cola-tiny", "run", 6);
    config.eval_every = 3;
    config.eval_tokens = 1 << 20; // the whole validation split
    config.micro_batch = 4;
    let summary = trained(&config);
    let (steps, evals) = read_metrics(&dir.join("run"));
    assert_eq!(steps.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 6]);
    assert!(dir.join("run/loss.png").is_file() && dir.join("run/tokenizer.json").is_file());
    let during = summary.last_eval.unwrap();
    assert_eq!(during.loss.to_bits(), evals[1].1.to_bits());

    let options = Options {
        resume: Some(dir.join("run")),
        eval_only: true,
        cache_dir: Some(dir.join("cache")),
        ..Options::default()
    };
    let (eval_config, _) = train::resolve(&options).unwrap();
    let RunOutcome::Evaluated(evaluated) = train::run(&eval_config).unwrap() else {
        panic!("expected an evaluation")
    };
    let result = evaluated.result.unwrap();
    assert_eq!((evaluated.step, result.sequences, result.targets), (6, during.sequences, during.targets));
    assert_eq!(result.loss.to_bits(), during.loss.to_bits(), "{} vs {}", result.loss, during.loss);
    assert!((result.perplexity - result.loss.exp()).abs() < 1e-9);
}

#[test]
fn command_line_defaults_follow_the_recipe_scaled_to_the_cpu() {
    let options = Options { steps: Some(600), out: Some("x".into()), ..Options::default() };
    let (config, notes) = train::resolve(&options).unwrap();
    assert_eq!(config.model.name(), "cola-350m");
    assert_eq!(
        (config.lr, config.steps, config.warmup),
        (3e-3, 600, 60),
        "warmup 6000 of 60000 scaled to 600"
    );
    assert_eq!((config.batch_size, config.micro_batch, config.seq_len), (8, 4, 256));
    assert!(notes.iter().any(|n| n.contains("6000 -> 60 steps")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("512-sequence batch")), "{notes:?}");

    let options = Options { model: Some("full-60m".parse().unwrap()), warmup: Some(7), ..Options::default() };
    let (config, notes) = train::resolve(&options).unwrap();
    assert_eq!((config.lr, config.steps, config.warmup, config.micro_batch), (6e-3, 10000, 7, 8));
    assert!(config.out.starts_with("runs") && config.out.to_string_lossy().contains("full-60m-"));
    assert!(!notes.iter().any(|n| n.contains("warmup is scaled")));
    assert!(train::resolve(&Options { eval_only: true, ..Options::default() }).is_err());
}

//! Generation with the KV cache on cola-tiny and full-tiny: cached decoding against the tape model's full
//! forward at every position (f32, 1e-5), rows of different lengths and rows joining later, determinism
//! of greedy and seeded sampling, stop reasons, and every bad input as an error value: prompts, sampling
//! settings, devices, missing, damaged or unrecognised checkpoints, and mismatched tokenizers. Checkpoints
//! come from a few-step training run of cola-tiny on a small text (well under a second).
use crate::common;

use cola::data::{DataConfig, Dataset, Tokenizer};
use cola::generate::{self, GenerateError, LoadOptions, TextStream};
use cola::train::{self, checkpoint, RunOutcome, TrainConfig};
use cola_autograd::Tape;
use cola_nn::{
    generate as generate_ids, GenerateOptions, Llama, LlamaConfig, SamplingConfig, Session, StopReason,
};
use cola_tensor::{Device, Rng};
use common::TempDir;
use std::path::{Path, PathBuf};

/// Logits agree with the tape's to this absolute tolerance: both run the same f32 kernels; only the
/// GEMM row count and the attention query count differ, which at most reorders a few roundings of
/// values of order 1.
const TOLERANCE: f64 = 1e-5;

fn tiny(preset: &str, seed: u64) -> Llama {
    Llama::new(LlamaConfig::preset(preset).unwrap(), &mut Rng::new(seed)).unwrap()
}

/// `rows` sequences of `max_seq_len` pseudo-random ids.
fn random_ids(model: &Llama, rows: usize, seed: u64) -> Vec<Vec<u32>> {
    let (vocab, seq) = (model.config().vocab_size as u64, model.config().max_seq_len);
    let mut rng = Rng::new(seed);
    (0..rows).map(|_| (0..seq).map(|_| rng.below(vocab) as u32).collect()).collect()
}

/// The tape model's logits of `row` at every position, `[seq][vocab]`.
fn tape_logits(model: &Llama, row: &[u32]) -> Vec<Vec<f64>> {
    let mut tape = Tape::new();
    let logits = model.forward(&mut tape, row, 1, row.len()).unwrap();
    let values = tape.value(logits).unwrap().to_vec_f64();
    values.chunks(model.config().vocab_size).map(<[f64]>::to_vec).collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err <= TOLERANCE, "{what}: max abs error {err}");
}

/// Prefills `rows[i][..prompt_lens[i]]` (joining the session at `join[i]` decode steps), then decodes
/// every row to the end of the context, checking each row's logits at every position.
fn check_cached_decoding(preset: &str, prompt_lens: &[usize], join: &[usize]) {
    let model = tiny(preset, 3);
    let seq = model.config().max_seq_len;
    let rows = random_ids(&model, prompt_lens.len(), 11);
    let expected: Vec<Vec<Vec<f64>>> = rows.iter().map(|row| tape_logits(&model, row)).collect();
    let mut session = Session::new(&model);
    // Prompt index of each session row, and how many of its tokens the session has seen.
    let (mut members, mut seen): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    let mut checked = 0;
    for step in 0.. {
        let joining: Vec<usize> = (0..rows.len()).filter(|&i| join[i] == step).collect();
        let mut logits: Vec<Vec<f64>> = Vec::new();
        if !members.is_empty() {
            let next: Vec<u32> = members.iter().zip(&seen).map(|(&i, &n)| rows[i][n]).collect();
            let out = session.decode(&next).unwrap().to_vec_f64();
            logits.extend(out.chunks(model.config().vocab_size).map(<[f64]>::to_vec));
            seen.iter_mut().for_each(|n| *n += 1);
        }
        if !joining.is_empty() {
            let prompts: Vec<&[u32]> = joining.iter().map(|&i| &rows[i][..prompt_lens[i]]).collect();
            let out = session.prefill(&prompts).unwrap().to_vec_f64();
            logits.extend(out.chunks(model.config().vocab_size).map(<[f64]>::to_vec));
            members.extend(&joining);
            seen.extend(joining.iter().map(|&i| prompt_lens[i]));
        }
        assert_eq!(session.lengths(), seen);
        for ((&i, &n), got) in members.iter().zip(&seen).zip(&logits) {
            assert_close(got, &expected[i][n - 1], &format!("{preset} row {i} position {}", n - 1));
            checked += 1;
        }
        let keep: Vec<bool> = seen.iter().map(|&n| n < seq).collect();
        session.retain(&keep);
        let mut flags = keep.iter();
        members.retain(|_| *flags.next().unwrap());
        seen.retain(|&n| n < seq);
        if members.is_empty() && join.iter().all(|&j| j <= step) {
            break;
        }
    }
    let positions: usize = prompt_lens.iter().map(|&p| seq - p + 1).sum();
    assert_eq!(checked, positions);
    assert_eq!(session.cache_bytes(), 0, "finished rows free their cache");
}

#[test]
fn cached_decoding_matches_the_full_forward_at_every_position() {
    for preset in ["cola-tiny", "full-tiny"] {
        check_cached_decoding(preset, &[1, 1], &[0, 0]);
        check_cached_decoding(preset, &[5, 5, 5], &[0, 0, 0]);
    }
}

#[test]
fn rows_of_different_lengths_and_rows_joining_later_decode_exactly() {
    for preset in ["cola-tiny", "full-tiny"] {
        check_cached_decoding(preset, &[1, 4, 7, 4], &[0, 0, 0, 0]);
        check_cached_decoding(preset, &[3, 5, 16, 2], &[0, 2, 2, 6]);
    }
}

#[test]
fn the_cache_holds_keys_and_values_of_every_layer_and_position() {
    let model = tiny("cola-tiny", 1);
    let c = model.config().clone();
    let mut session = Session::new(&model);
    session.prefill(&[&[3, 4, 5], &[6]]).unwrap();
    session.decode(&[7, 8]).unwrap();
    assert_eq!(session.lengths(), vec![4, 2]);
    // Allocated bytes: each row's key and value buffers start with room for 16 positions, rounded up to
    // 32 (whole tiles of the CPU attention kernel, which reads them in place): f32 keys `32 * d_model`
    // per layer, values `32 * n_heads * 32` (each head's rows, 8 wide here, padded to a tile).
    let per_layer = 32 * c.d_model + 32 * c.n_heads * 32;
    assert_eq!(session.cache_bytes(), 2 * c.n_layers * per_layer * 4);
    drop(session);
}

fn greedy(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_new_tokens, ..GenerateOptions::default() }
}

fn sampled(temperature: f64, top_k: usize, top_p: f64, seed: u64) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 12,
        sampling: SamplingConfig { temperature, top_k, top_p },
        seed,
        stop_token: None,
    }
}

#[test]
fn greedy_generation_is_deterministic_and_independent_of_the_batch() {
    for preset in ["cola-tiny", "full-tiny"] {
        let model = tiny(preset, 4);
        let prompts: [&[u32]; 3] = [&[5, 9, 2], &[17], &[40, 41, 42, 43, 44]];
        let batched = generate_ids(&model, &prompts, &greedy(10), |_, _| {}).unwrap();
        assert_eq!(batched, generate_ids(&model, &prompts, &greedy(10), |_, _| {}).unwrap());
        for (i, prompt) in prompts.iter().enumerate() {
            let alone = generate_ids(&model, &[*prompt], &greedy(10), |_, _| {}).unwrap();
            assert_eq!(alone.tokens[0], batched.tokens[i], "{preset} prompt {i}");
        }
        // The cached greedy tokens are the argmax of the tape's logits over the growing sequence.
        let mut sequence = prompts[0].to_vec();
        for &token in &batched.tokens[0] {
            let logits = tape_logits(&model, &sequence);
            let last = logits.last().unwrap();
            let best = (0..last.len()).max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a))).unwrap();
            assert_eq!(token as usize, best);
            sequence.push(token);
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_top_k_one_is_greedy() {
    let model = tiny("cola-tiny", 6);
    let prompts: [&[u32]; 2] = [&[1, 2, 3], &[9, 8]];
    let run = |options: &GenerateOptions| generate_ids(&model, &prompts, options, |_, _| {}).unwrap();
    let first = run(&sampled(1.0, 0, 1.0, 7));
    assert_eq!(first, run(&sampled(1.0, 0, 1.0, 7)));
    assert_ne!(first.tokens, run(&sampled(1.0, 0, 1.0, 8)).tokens, "another seed, other tokens");
    assert_eq!(run(&sampled(1.0, 1, 1.0, 7)).tokens, run(&greedy(12)).tokens);
    assert_eq!(run(&sampled(0.7, 5, 0.9, 3)), run(&sampled(0.7, 5, 0.9, 3)));
    let mut streamed = vec![Vec::new(); 2];
    let collected =
        generate_ids(&model, &prompts, &sampled(1.0, 0, 1.0, 7), |row, t| streamed[row].push(t)).unwrap();
    assert_eq!(streamed, collected.tokens);
}

#[test]
fn rows_stop_at_the_limit_the_stop_token_or_the_end_of_the_context() {
    let model = tiny("full-tiny", 2);
    let long: Vec<u32> = (1..15).collect(); // 14 of the 16 positions
    let out = generate_ids(&model, &[&long, &[3]], &greedy(10), |_, _| {}).unwrap();
    assert_eq!(out.stops, vec![StopReason::ContextFull, StopReason::MaxTokens]);
    assert_eq!((out.tokens[0].len(), out.tokens[1].len()), (3, 10));
    let first = out.tokens[1][0];
    let options = GenerateOptions { stop_token: Some(first), ..greedy(10) };
    let stopped = generate_ids(&model, &[&[3]], &options, |_, _| {}).unwrap();
    assert_eq!((stopped.tokens[0].len(), stopped.stops[0]), (0, StopReason::StopToken));
    assert_eq!(generate_ids(&model, &[&[3]], &greedy(0), |_, _| {}).unwrap().tokens, vec![Vec::<u32>::new()]);
}

#[test]
fn bad_prompts_and_settings_are_errors() {
    let model = tiny("cola-tiny", 1);
    let message = |prompts: &[&[u32]], options: &GenerateOptions| {
        generate_ids(&model, prompts, options, |_, _| {}).unwrap_err().to_string()
    };
    let too_long: Vec<u32> = vec![1; 17];
    assert!(message(&[&too_long], &greedy(4)).contains("longer than the model's context of 16"));
    assert!(message(&[&[1], &[]], &greedy(4)).contains("prompt 1: empty prompt"));
    assert!(message(&[&[64]], &greedy(4)).contains("not below vocab_size 64"));
    assert!(message(&[], &greedy(4)).contains("no prompt"));
    assert!(message(&[&[1]], &sampled(-1.0, 0, 1.0, 0)).contains("temperature"));
    assert!(message(&[&[1]], &sampled(1.0, 0, 0.0, 0)).contains("top_p"));
    let mut session = Session::new(&model);
    assert!(session.decode(&[1]).is_err(), "decode before any prefill");
    session.prefill(&[&[1, 2]]).unwrap();
    assert!(session.decode(&[1, 2]).is_err(), "one token per row");
    assert!(session.prefill(&[&too_long]).is_err());
    assert_eq!(session.lengths(), vec![2], "a failed prefill adds no row");
}

const VOCAB: usize = 300;

/// Trains cola-tiny with a 300-entry BPE for `steps` steps into `dir/run` (evaluating at the end, which
/// prints a sample), returning the run directory.
fn trained_run(dir: &TempDir, steps: u64) -> (PathBuf, TrainConfig) {
    let sentences = ["the cat sat on the mat.", "a dog ran to the red house.", "birds sing in the tree."];
    let mut rng = Rng::new(7);
    let text: Vec<&str> = (0..300).map(|_| sentences[rng.below(3) as usize]).collect();
    std::fs::write(dir.join("corpus.txt"), text.join(" ")).unwrap();
    let mut config = TrainConfig::new("cola-tiny".parse().unwrap(), dir.join("run"));
    config.vocab_size = Some(VOCAB);
    config.data = Some(dir.join("corpus.txt"));
    config.cache_dir = Some(dir.join("cache"));
    config.seq_len = 16;
    config.batch_size = 8;
    config.micro_batch = 8;
    config.steps = steps;
    config.warmup = 1;
    config.lr = 1e-2;
    config.eval_every = steps;
    config.eval_tokens = 64;
    config.save_every = 0;
    match train::run(&config).unwrap() {
        RunOutcome::Trained(summary) => assert_eq!(summary.steps, steps),
        other => panic!("expected a training run, got {other:?}"),
    }
    (dir.join("run"), config)
}

fn options(checkpoint: &Path) -> LoadOptions {
    LoadOptions { checkpoint: checkpoint.to_path_buf(), model: None, tokenizer: None, device: Device::Cpu }
}

fn load_error(options: &LoadOptions) -> String {
    match generate::load(options) {
        Ok(_) => panic!("loading {} should fail", options.checkpoint.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn checkpoints_load_from_a_run_a_checkpoint_folder_or_the_weights_alone() {
    let dir = TempDir::new("load");
    let (run, config) = trained_run(&dir, 4);
    let ckpt = checkpoint::locate(&run).unwrap();
    let prompts = vec!["the cat".to_string(), "a dog ran".to_string()];
    let from_run = generate::load(&options(&run)).unwrap();
    assert!(from_run.config_source.contains("state.json"), "{}", from_run.config_source);
    let (out, texts) = generate::generate_text(&from_run, &prompts, &greedy(6), |_, _| {}).unwrap();
    assert_eq!(texts.len(), 2);
    assert!(out.tokens.iter().all(|t| t.len() == 6));

    // The same weights from the checkpoint folder, from the weights file alone (config inferred from the
    // shapes, tokenizer from the run directory), and with an explicit --model.
    let alone = dir.join("weights");
    std::fs::create_dir_all(&alone).unwrap();
    std::fs::copy(ckpt.join("model.safetensors"), alone.join("model.safetensors")).unwrap();
    let tokenizer = Some(run.join("tokenizer.json"));
    for loaded in [
        generate::load(&options(&ckpt)).unwrap(),
        generate::load(&LoadOptions {
            tokenizer: tokenizer.clone(),
            ..options(&alone.join("model.safetensors"))
        })
        .unwrap(),
        generate::load(&LoadOptions { model: Some("cola-tiny".into()), tokenizer, ..options(&alone) })
            .unwrap(),
    ] {
        assert_eq!(loaded.model.config().vocab_size, VOCAB);
        let (again, _) = generate::generate_text(&loaded, &prompts, &greedy(6), |_, _| {}).unwrap();
        assert_eq!(again, out, "{}", loaded.config_source);
    }

    // The evaluation sample of the run is the same greedy generation, printable on one line.
    let data = DataConfig {
        data: config.data.clone(),
        tokenizer: Some(run.join("tokenizer.json")),
        vocab_size: VOCAB,
        seq_len: 16,
        cache_dir: config.cache_dir.clone(),
        ..DataConfig::default()
    };
    let dataset = Dataset::prepare(&data).unwrap();
    let line = train::sample::sample_line(&from_run.model, &dataset);
    assert!(line.starts_with("sample: \"") && !line.contains('\n'), "{line}");
    assert_eq!(line, train::sample::sample_line(&from_run.model, &dataset));
}

#[test]
fn missing_damaged_or_unrecognised_checkpoints_are_errors() {
    let dir = TempDir::new("errors");
    let (run, _) = trained_run(&dir, 2);
    let ckpt = checkpoint::locate(&run).unwrap();
    assert!(load_error(&options(&dir.join("nowhere"))).contains("does not exist"));
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    assert!(load_error(&options(&dir.join("empty"))).contains("no checkpoint here"));
    let cuda = LoadOptions { device: Device::Cuda(0), ..options(&run) };
    let message = load_error(&cuda);
    assert!(message.contains("--device cuda:0"), "{message}");

    // Flipped bytes in the weights: the checksum in state.json names the file.
    let weights = ckpt.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    std::fs::write(&weights, &bytes).unwrap();
    assert!(load_error(&options(&run)).contains("truncated or damaged"));

    // Garbage without a state.json: the safetensors header is refused.
    let garbage = dir.join("garbage");
    std::fs::create_dir_all(&garbage).unwrap();
    std::fs::write(garbage.join("model.safetensors"), b"not a checkpoint at all").unwrap();
    std::fs::copy(run.join("tokenizer.json"), garbage.join("tokenizer.json")).unwrap();
    assert!(load_error(&options(&garbage)).contains("not a valid safetensors file"));
    std::fs::write(garbage.join("model.safetensors"), b"").unwrap();
    assert!(load_error(&options(&garbage)).contains("not a valid safetensors file"));

    // A model of shapes no preset has needs --model (or a config.json).
    let odd = dir.join("odd");
    let config = LlamaConfig {
        d_model: 48,
        n_heads: 4,
        vocab_size: VOCAB,
        ..LlamaConfig::preset("cola-tiny").unwrap()
    };
    let model = Llama::new(config, &mut Rng::new(1)).unwrap();
    std::fs::create_dir_all(&odd).unwrap();
    model.save_safetensors(&odd.join("model.safetensors")).unwrap();
    std::fs::copy(run.join("tokenizer.json"), odd.join("tokenizer.json")).unwrap();
    assert!(load_error(&options(&odd)).contains("pass --model"));
    std::fs::write(odd.join("config.json"), r#"{"num_attention_heads": 4, "only_lr_act": false}"#).unwrap();
    let loaded = generate::load(&options(&odd)).unwrap();
    assert_eq!((loaded.model.config().n_heads, loaded.model.config().d_model), (4, 48));
    let wrong = LoadOptions { model: Some("full-tiny".into()), ..options(&odd) };
    assert!(load_error(&wrong).contains("does not match the model"));
    std::fs::remove_file(odd.join("tokenizer.json")).unwrap();
    assert!(load_error(&options(&odd)).contains("--tokenizer"));

    // The run's tokenizer (about 300 entries) for a 64-entry model: a larger tokenizer loads (as T5's
    // 32100 entries do for a 32000-row model), and a prompt with an id the model lacks is refused.
    let small = dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    tiny("cola-tiny", 1).save_safetensors(&small.join("model.safetensors")).unwrap();
    let mismatch = LoadOptions { tokenizer: Some(run.join("tokenizer.json")), ..options(&small) };
    let loaded = generate::load(&mismatch).unwrap();
    let prompt = vec!["What light through yonder window breaks?".to_string()];
    let message =
        generate::encode_prompts(&loaded.model, &loaded.tokenizer, &prompt).unwrap_err().to_string();
    assert!(message.contains("which the model's vocabulary of 64 lacks"), "{message}");
}

#[test]
fn prompts_are_checked_and_text_streams_whole_characters() {
    let dir = TempDir::new("text");
    let (run, _) = trained_run(&dir, 1);
    let loaded = generate::load(&options(&run)).unwrap();
    let long = "the cat sat on the mat. ".repeat(20);
    let err = generate::generate_text(&loaded, &[long], &greedy(2), |_, _| {}).unwrap_err();
    assert!(matches!(err, GenerateError::Prompt(_)) && err.to_string().contains("context"), "{err}");
    let err = generate::generate_text(&loaded, &[String::new()], &greedy(2), |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("empty prompt"), "{err}");
    assert!(generate::generate_text(&loaded, &[], &greedy(2), |_, _| {}).is_err());

    // A two-byte character split over two byte-level tokens comes out whole.
    let tokenizer = Tokenizer::load(&run.join("tokenizer.json")).unwrap();
    let ids = tokenizer.encode("é!").unwrap();
    let mut stream = TextStream::new();
    let pieces: Vec<String> = ids.iter().map(|&id| stream.push(&tokenizer, id).unwrap()).collect();
    assert_eq!(pieces.concat() + &stream.finish(&tokenizer).unwrap(), "é!");
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
}

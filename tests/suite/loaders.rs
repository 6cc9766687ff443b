//! Loaders never panic: every file the programs read, damaged, is an error value or, where the damage
//! happens to leave a valid file, a successful load; never a panic, an abort or an allocation sized by a
//! damaged number. Each property starts from a valid file the program wrote itself (a checkpoint of a
//! cola-tiny or full-tiny run of 2 steps, its trained 300-entry BPE, a small corpus) and truncates it,
//! flips bits, overwrites or splices bytes, replaces it with random bytes, or puts a hostile value
//! (2^64 - 1, -1, 1e300, a wrong type or dtype name) in place of any JSON value of a header or
//! `state.json`. Token shards: a damaged manifest is rebuilt to the same ids; a damaged `.ids` / `.ends`
//! file is an error naming it unless the damage kept its size and invariants.
//!
//! "A valid file" is decided without the loader: a safetensors file whose tensor entries are the
//! original's (only data bytes changed), JSON that parses, a gzip stream that still holds the same
//! documents. At the checkpoint level every changed byte of a digested file must be an error: the
//! 64-bit checksum step is a bijection of the running state for each word and injective in the word, so
//! a single changed word always changes it (several words collide with probability 2^-64).
//!
//! 64 cases per property (96 for the cheap ones) keep the file at a few seconds in release; a panic
//! saves its input under `target/tmp/loader-failures/`. Adding a file kind is one more property: write a valid file, mutate it, call `run_loader`, state when `Ok` is allowed.
use crate::common;

use cola::data::{prepare_shards, CorpusSource, ShardSet, Tokenizer};
use cola::generate::{self, LoadOptions};
use cola::train::{
    self, checkpoint, RunOutcome, TrainConfig, HF_CONFIG_FILE, OPTIMIZER_FILE, STATE_FILE, TOKENIZER_FILE,
};
use cola_nn::{Init, Llama, WEIGHTS_FILE};
use cola_optim::{AdamW, AdamWConfig};
use cola_tensor::{DType, Device};
use common::mutation::{byte_mutation, json_edit, run_loader, JsonEdit, Mutation, SafetensorsFile};
use common::TempDir;
use proptest::prelude::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A finished run of `model`: its folder (kept alive) and its checkpoint.
struct Run {
    _dir: TempDir,
    checkpoint: PathBuf,
}

fn trained(name: &str, model: &str) -> Run {
    let dir = TempDir::new(name);
    let sentences = ["the cat sat on the mat.", "a dog ran to the red house.", "we bake bread."];
    let text: Vec<&str> = (0..400).map(|i| sentences[i * 7 % 3]).collect();
    std::fs::write(dir.join("corpus.txt"), text.join(" ")).unwrap();
    let mut config = TrainConfig::new(model.parse().unwrap(), dir.join("run"));
    config.vocab_size = Some(300);
    config.data = Some(dir.join("corpus.txt"));
    config.cache_dir = Some(dir.join("cache"));
    (config.seq_len, config.batch_size, config.micro_batch) = (16, 8, 8);
    (config.steps, config.warmup, config.lr, config.eval_every, config.save_every) = (2, 1, 1e-2, 0, 0);
    assert!(matches!(train::run(&config).unwrap(), RunOutcome::Trained(_)));
    let checkpoint = checkpoint::locate(&dir.join("run")).unwrap();
    Run { _dir: dir, checkpoint }
}

/// A copy of checkpoint `from` in `scratch/name`, to damage.
fn copy_checkpoint(from: &Path, scratch: &TempDir, name: &str) -> PathBuf {
    let to = scratch.join(name);
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    for file in [WEIGHTS_FILE, OPTIMIZER_FILE, TOKENIZER_FILE, STATE_FILE, HF_CONFIG_FILE] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    to
}

/// The tensor entries of a safetensors header, `None` unless its `__metadata__` is absent, null or a map
/// of strings (the only rule on it).
fn tensor_entries(header: &Value) -> Option<Vec<(&String, &Value)>> {
    let metadata_ok = header.get("__metadata__").is_none_or(|m| {
        m.is_null() || m.as_object().is_some_and(|fields| fields.values().all(Value::is_string))
    });
    let entries = header.as_object()?.iter().filter(|(name, _)| *name != "__metadata__");
    metadata_ok.then(|| entries.collect())
}

/// Whether `damaged` is a valid safetensors file with the tensors of `original` (only data changed).
fn same_tensors(original: &[u8], damaged: &[u8]) -> bool {
    match (SafetensorsFile::split(original), SafetensorsFile::split(damaged)) {
        (Some(a), Some(b)) => {
            let entries = tensor_entries(&b.header);
            a.data.len() == b.data.len() && entries.is_some() && tensor_entries(&a.header) == entries
        }
        _ => false,
    }
}

/// The damage of one property: raw bytes, or a JSON edit of the file's JSON (its header for safetensors).
#[derive(Clone, Debug)]
enum Damage {
    Bytes(Mutation),
    Json(JsonEdit),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![byte_mutation().prop_map(Damage::Bytes), json_edit().prop_map(Damage::Json)]
}

impl Damage {
    fn to_safetensors(&self, original: &[u8]) -> Vec<u8> {
        match self {
            Damage::Bytes(m) => m.apply(original),
            Damage::Json(edit) => {
                let mut file = SafetensorsFile::split(original).unwrap();
                file.header = edit.apply(&file.header);
                file.join()
            }
        }
    }

    fn to_json(&self, original: &[u8]) -> Vec<u8> {
        match self {
            Damage::Bytes(m) => m.apply(original),
            Damage::Json(edit) => {
                serde_json::to_vec_pretty(&edit.apply(&serde_json::from_slice(original).unwrap())).unwrap()
            }
        }
    }
}

fn model_of(checkpoint: &Path) -> Llama {
    let state = checkpoint::read_state(checkpoint).unwrap();
    Llama::build(state.config.model_config(), DType::F32, &mut Init::Zeros).unwrap()
}

fn options(checkpoint: PathBuf, tokenizer: Option<PathBuf>) -> LoadOptions {
    LoadOptions { checkpoint, model: None, tokenizer, device: Device::Cpu }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// model.safetensors alone, as the weights of a model, as shapes, and through generation's loader.
    #[test]
    fn damaged_weights_are_errors(cola in any::<bool>(), damage in damage()) {
        let run = WEIGHTS_RUNS.with(|runs| runs[usize::from(cola)].checkpoint.clone());
        let original = std::fs::read(run.join(WEIGHTS_FILE)).unwrap();
        let bytes = damage.to_safetensors(&original);
        let valid = same_tensors(&original, &bytes);
        let scratch = TempDir::new(&format!("weights-{cola}"));
        let file = scratch.join(WEIGHTS_FILE);
        let mut model = model_of(&run);
        let loaded = run_loader("weights", &file, &bytes, || model.load_safetensors(&file))?;
        prop_assert_eq!(loaded.is_ok(), valid, "load of a {} file: {:?}", if valid { "valid" } else { "damaged" }, loaded);
        let shapes = run_loader("shapes", &file, &bytes, || generate::read_shapes(&file))?;
        prop_assert!(shapes.is_ok() || !valid, "shapes of a valid file: {:?}", shapes);
        if let Ok(shapes) = shapes {
            run_loader("infer-config", &file, &bytes, || generate::infer_config(&file, &shapes, None))?.ok();
        }
        let tokenizer = Some(run.join(TOKENIZER_FILE));
        let generated = run_loader("generate-weights", &file, &bytes, || generate::load(&options(file.clone(), tokenizer)))?;
        prop_assert_eq!(generated.is_ok(), valid, "generation's load: {:?}", generated.err());
    }

    /// optimizer.safetensors of a checkpoint loaded into AdamW (its digest skipped: `load` alone).
    #[test]
    fn damaged_optimizer_states_are_errors(damage in damage()) {
        let run = WEIGHTS_RUNS.with(|runs| runs[1].checkpoint.clone());
        let state = checkpoint::read_state(&run).unwrap();
        let original = std::fs::read(run.join(OPTIMIZER_FILE)).unwrap();
        let bytes = damage.to_safetensors(&original);
        let scratch = TempDir::new("optimizer");
        let dir = copy_checkpoint(&run, &scratch, "checkpoint");
        let (mut model, mut optimizer) = (model_of(&run), AdamW::new(AdamWConfig::default()));
        let loaded = run_loader("optimizer", &dir.join(OPTIMIZER_FILE), &bytes, || {
            checkpoint::load(&dir, &state, &mut model, &mut optimizer)
        })?;
        prop_assert_eq!(loaded.is_ok(), same_tensors(&original, &bytes), "{:?}", loaded);
    }

    /// Any change to a digested file of a checkpoint is caught by `read_state`.
    #[test]
    fn damaged_checkpoint_files_fail_their_digest(which in 0usize..3, mutation in byte_mutation()) {
        let run = WEIGHTS_RUNS.with(|runs| runs[1].checkpoint.clone());
        let name = [WEIGHTS_FILE, OPTIMIZER_FILE, TOKENIZER_FILE][which];
        let original = std::fs::read(run.join(name)).unwrap();
        let bytes = mutation.apply(&original);
        let scratch = TempDir::new("digest");
        let dir = copy_checkpoint(&run, &scratch, "checkpoint");
        let state = run_loader("digest", &dir.join(name), &bytes, || checkpoint::read_state(&dir))?;
        prop_assert_eq!(state.is_ok(), bytes == original, "{}: {:?}", name, state.err());
    }

    /// state.json: `read_state`, then what resuming and generation do with what it accepts.
    #[test]
    fn damaged_states_are_errors_or_describe_the_same_model(damage in damage()) {
        let run = WEIGHTS_RUNS.with(|runs| runs[1].checkpoint.clone());
        let original = std::fs::read(run.join(STATE_FILE)).unwrap();
        let bytes = damage.to_json(&original);
        let scratch = TempDir::new("state");
        let dir = copy_checkpoint(&run, &scratch, "checkpoint");
        let state = run_loader("state", &dir.join(STATE_FILE), &bytes, || checkpoint::read_state(&dir))?;
        if let Ok(state) = state {
            let shapes = |state: &train::RunState| state.config.model_config().parameter_shapes();
            prop_assert_eq!(shapes(&state), shapes(&checkpoint::read_state(&run).unwrap()));
            let (mut model, mut optimizer) = (model_of(&run), AdamW::new(AdamWConfig::default()));
            run_loader("state-load", &dir.join(STATE_FILE), &bytes, || {
                checkpoint::load(&dir, &state, &mut model, &mut optimizer)
            })?.ok();
        }
        run_loader("generate-state", &dir.join(STATE_FILE), &bytes, || generate::load(&options(dir.clone(), None)))?.ok();
    }

    /// tokenizer.json, read by `Tokenizer::load` and, when it loads, used once.
    #[test]
    fn damaged_tokenizers_are_errors_or_valid_json(damage in damage()) {
        let run = WEIGHTS_RUNS.with(|runs| runs[1].checkpoint.clone());
        let original = std::fs::read(run.join(TOKENIZER_FILE)).unwrap();
        let bytes = damage.to_json(&original);
        let scratch = TempDir::new("tokenizer");
        let file = scratch.join(TOKENIZER_FILE);
        let used = run_loader("tokenizer", &file, &bytes, || {
            let tokenizer = Tokenizer::load(&file)?;
            let ids = tokenizer.encode("the cat sat")?;
            tokenizer.decode(&ids)
        })?;
        let is_json = serde_json::from_slice::<Value>(&bytes).is_ok();
        prop_assert!(used.is_err() || is_json, "a tokenizer loaded from bytes that are not JSON");
        if let Damage::Bytes(Mutation::Truncate(_)) = damage {
            prop_assert!(used.is_err(), "a truncated tokenizer.json loaded");
        }
    }
}

thread_local! {
    /// A full-tiny and a cola-tiny run (trained once per test thread; a run is well under a second).
    static WEIGHTS_RUNS: [Run; 2] = [trained(&format!("full-{:?}", std::thread::current().id()), "full-tiny"),
        trained(&format!("cola-{:?}", std::thread::current().id()), "cola-tiny")];
}

const LINES: [&str; 3] =
    [r#"{"text": "first document"}"#, r#"{"text": "second", "id": 2}"#, r#"{"text": "third"}"#];

fn documents(path: &Path, strict: bool) -> Result<(Vec<String>, u64), cola::data::DataError> {
    let (documents, report) = CorpusSource::open(path)?.read_documents(strict)?;
    Ok((documents, report.malformed_lines))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// A .txt corpus of any bytes is one document: its text with invalid UTF-8 replaced.
    #[test]
    fn any_text_file_reads_as_its_lossy_text(mutation in byte_mutation()) {
        let bytes = mutation.apply("a small text corpus, one document.\n".as_bytes());
        let scratch = TempDir::new("txt");
        let file = scratch.join("corpus.txt");
        let read = run_loader("txt", &file, &bytes, || documents(&file, true))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let expected = if text.is_empty() { vec![] } else { vec![text] };
        prop_assert_eq!(read, Ok((expected, 0)));
    }

    /// JSON lines: damaged lines are skipped and counted, or named with `strict`.
    #[test]
    fn damaged_json_lines_are_counted_or_named(mutation in byte_mutation()) {
        let bytes = mutation.apply(LINES.join("\n").as_bytes());
        let scratch = TempDir::new("jsonl");
        let file = scratch.join("corpus.jsonl");
        let lenient = run_loader("jsonl", &file, &bytes, || documents(&file, false))?;
        let (delivered, malformed) = lenient.map_err(TestCaseError::fail)?;
        let lines = bytes.split(|&b| b == b'\n').count() as u64;
        prop_assert!(delivered.len() as u64 + malformed <= lines);
        let strict = run_loader("jsonl-strict", &file, &bytes, || documents(&file, true))?;
        prop_assert_eq!(strict.is_ok(), malformed == 0, "{:?}", strict);
    }

    /// Gzipped JSON lines: damage is an error unless the stream still holds the same documents.
    #[test]
    fn damaged_gzip_is_an_error_or_the_same_documents(mutation in byte_mutation()) {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(LINES.join("\n").as_bytes()).unwrap();
        let original = encoder.finish().unwrap();
        let bytes = mutation.apply(&original);
        let scratch = TempDir::new("gz");
        let file = scratch.join("corpus.json.gz");
        let read = run_loader("gzip", &file, &bytes, || documents(&file, false))?;
        let expected: Vec<String> = ["first document", "second", "third"].map(String::from).to_vec();
        match read {
            Ok((found, _)) => prop_assert!(found == expected || (bytes.is_empty() && found.is_empty()), "{:?}", found),
            Err(e) => prop_assert!(bytes != original, "the valid file failed: {}", e),
        }
    }

    /// A .bin token stream: an odd length is an error, any even length its little-endian u16 ids.
    #[test]
    fn bin_streams_of_odd_length_are_errors(mutation in byte_mutation()) {
        let bytes = mutation.apply(&[1, 0, 2, 0, 255, 255, 7, 1]);
        let scratch = TempDir::new("bin");
        let file = scratch.join("corpus.bin");
        let read = run_loader("bin", &file, &bytes, || CorpusSource::open(&file)?.read_token_ids())?;
        if bytes.len() % 2 == 1 {
            prop_assert!(read.as_ref().is_err_and(|e| e.contains("odd")), "{:?}", read);
        } else {
            let ids: Vec<u32> = bytes.chunks(2).map(|p| u32::from(u16::from_le_bytes([p[0], p[1]]))).collect();
            prop_assert_eq!(read, Ok(ids));
        }
    }
}

/// The edits of `state.json` and of a weights header that once sized a model from a damaged number: a
/// vocabulary of 2^60 (a model of 2^65 f32 weights), and a tensor name of layer 999999 (a model of a
/// million layers inferred from the names alone).
#[test]
fn numbers_that_would_size_a_model_are_checked_against_the_weights() {
    let run = WEIGHTS_RUNS.with(|runs| runs[1].checkpoint.clone());
    let scratch = TempDir::new("sizes");
    let dir = copy_checkpoint(&run, &scratch, "checkpoint");
    let mut state: Value = serde_json::from_slice(&std::fs::read(run.join(STATE_FILE)).unwrap()).unwrap();
    state["config"]["vocab_size"] = Value::from(1u64 << 60);
    std::fs::write(dir.join(STATE_FILE), serde_json::to_vec(&state).unwrap()).unwrap();
    let error = checkpoint::read_state(&dir).unwrap_err().to_string();
    assert!(
        error.contains("model.embed_tokens.weight expected [1152921504606846976, 32] got [300, 32]"),
        "{error}"
    );
    let error = generate::load(&options(dir.clone(), None)).err().unwrap().to_string();
    assert!(error.contains("vocab_size: 300 vs 1152921504606846976"), "config.json disagrees: {error}");
    // Without config.json to disagree, the weights' header refuses the size before any model is built.
    std::fs::remove_file(dir.join(HF_CONFIG_FILE)).unwrap();
    let error = generate::load(&options(dir.clone(), None)).err().unwrap().to_string();
    assert!(error.contains("does not match the model"), "{error}");

    let mut weights = SafetensorsFile::split(&std::fs::read(run.join(WEIGHTS_FILE)).unwrap()).unwrap();
    let entries = weights.header.as_object_mut().unwrap();
    let norm = entries.remove("model.norm.weight").unwrap();
    entries.insert("model.layers.999999.input_layernorm.weight".into(), norm);
    let file = scratch.join("renamed.safetensors");
    std::fs::write(&file, weights.join()).unwrap();
    let error = generate::load(&options(file, Some(run.join(TOKENIZER_FILE)))).err().unwrap().to_string();
    assert!(error.contains("match no preset"), "{error}");
}

/// A two-file corpus tokenized into shards in `scratch`, with its tokenizer and its ids.
fn shard_fixture(scratch: &TempDir) -> (CorpusSource, Tokenizer, PathBuf, ShardSet, Vec<u32>) {
    scratch.write("corpus/a.jsonl", LINES.join("\n").as_bytes());
    scratch.write("corpus/b.txt", "a text file, one more document".as_bytes());
    let tokenizer = Tokenizer::train_bpe(LINES.iter(), 300, false).unwrap();
    let source = CorpusSource::open(&scratch.join("corpus")).unwrap();
    let dir = scratch.join("shards");
    let set = prepare_shards(&source, &tokenizer, &dir, false, false).unwrap();
    let ids = set.stream().unwrap().to_vec();
    (source, tokenizer, dir, set, ids)
}

/// Every id and every document range of the shards, read through the mapped stream.
fn read_shards(set: &ShardSet) -> Result<Vec<u32>, cola::data::DataError> {
    let stream = set.stream()?;
    let mut all = Vec::new();
    for index in 0..stream.num_documents().unwrap_or(0) {
        let range = stream.document(index);
        stream.extend(range.start, range.end - range.start, &mut all);
    }
    assert_eq!(all.len() as u64, stream.num_tokens(), "documents tile the stream");
    Ok(stream.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// A damaged shard manifest is never trusted blindly: preparing again reuses what still fits and
    /// tokenizes the rest, so the ids come out the same.
    #[test]
    fn damaged_manifests_are_rebuilt_to_the_same_ids(mutation in byte_mutation(), edit in json_edit()) {
        let scratch = TempDir::new("manifest");
        let (source, tokenizer, dir, _, ids) = shard_fixture(&scratch);
        let file = dir.join(cola::data::shards::MANIFEST_FILE);
        let original = std::fs::read(&file).unwrap();
        let edited = serde_json::to_vec(&edit.apply(&serde_json::from_slice(&original).unwrap())).unwrap();
        for (case, bytes) in [("manifest-bytes", mutation.apply(&original)), ("manifest-json", edited)] {
            let again = run_loader(case, &file, &bytes, || {
                prepare_shards(&source, &tokenizer, &dir, false, false).and_then(|set| read_shards(&set))
            })?;
            prop_assert_eq!(&again, &Ok(ids.clone()), "{}", case);
        }
    }

    /// A damaged shard file is an error naming it, unless the damage keeps its size (ids) or its
    /// invariants (document ends rising to the id count): then every read stays inside the files.
    #[test]
    fn damaged_shard_files_are_errors_or_stay_in_bounds(ends in any::<bool>(), mutation in byte_mutation()) {
        let scratch = TempDir::new("shard");
        let (_, _, dir, set, ids) = shard_fixture(&scratch);
        let file = dir.join(format!("{}.{}", set.manifest.shards[0].name, if ends { "ends" } else { "ids" }));
        let original = std::fs::read(&file).unwrap();
        let bytes = mutation.apply(&original);
        match run_loader("shard", &file, &bytes, || read_shards(&set))? {
            Ok(read) => {
                prop_assert_eq!(bytes.len(), original.len());
                prop_assert_eq!(read.len(), ids.len());
                if ends {
                    prop_assert_eq!(read, ids, "the ends changed, not the ids");
                }
            }
            Err(error) => {
                prop_assert!(bytes != original, "the valid shard failed: {}", error);
                prop_assert!(error.contains(&*file.to_string_lossy()), "{}", error);
            }
        }
    }
}

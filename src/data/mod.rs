//! The data pipeline: corpus files -> tokenizer -> token ids -> `[batch, seq_len]` batches.
//!
//! [`Dataset::prepare`] does the whole job from a [`DataConfig`] (the command line's `--data`,
//! `--val-data`, `--tokenizer`, ...):
//! - the corpus is read from `.txt` files, JSON lines (`.jsonl`, `.json.gz`: C4's format), folders or glob
//!   patterns of those, or a pre-tokenized `.bin`; with no path, Shakespeare's works are fetched once into
//!   the cache;
//! - the tokenizer is `--tokenizer tokenizer.json` (the paper used T5's) or a byte-level BPE trained on
//!   the corpus once and cached as `<corpus cache>/tokenizer-<vocab>-<corpus fingerprint>.json`
//!   (`tokenizer-<vocab>.json` for the default corpus; pad 0, eos 1, unk 2);
//! - the corpus is tokenized in parallel into memory-mapped shards, one per file, in
//!   `<corpus cache>/shards-<tokenizer hash>/` (`shards.rs`); a later run reuses the shards of unchanged
//!   files, and training reads its windows from the mapped files, so memory does not grow with the corpus;
//! - sequences are formed per document (the paper's C4 setting, the default for JSON lines) or packed
//!   (the default for text and `.bin`), a seeded 1% is held out for validation unless a validation corpus
//!   is given, and training batches come in a seeded per-epoch shuffle whose position ([`DataState`]) a
//!   checkpoint stores.
//!
//! Caches live under `$COLA_CACHE`, or `local/cache` of the current directory (git-ignored).
pub mod batching;
pub mod corpus;
pub mod error;
pub mod permutation;
mod sequences;
pub mod shakespeare;
pub mod shards;
pub mod stream;
pub mod tokenizer;
pub mod tokens;

pub use batching::{Batch, BatchConfig, BatchMode, DataSplits, DataState, TrainBatches, ValBatches};
pub use corpus::{CorpusFormat, CorpusSource, ReadReport};
pub use error::{DataError, Result};
pub use shards::{prepare_shards, ShardSet};
pub use stream::{IdWidth, TokenStream};
pub use tokenizer::{check_vocab, Tokenizer, EOS_ID, PAD_ID};
pub use tokens::TokenizedCorpus;

use error::io_error;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The tokenizer is trained on at most this much text, taken from the corpus's first documents.
pub const TOKENIZER_TRAINING_BYTES: u64 = 256 << 20;

/// Everything the pipeline needs to know; [`DataConfig::default`] is Shakespeare, a 32000-entry BPE,
/// packed 256-token sequences, seed 0, shuffled, 1% held out.
#[derive(Clone, Debug, PartialEq)]
pub struct DataConfig {
    /// The training corpus; `None` is the default Shakespeare corpus.
    pub data: Option<PathBuf>,
    /// A separate validation corpus; `None` holds out `val_fraction` of the training corpus.
    pub val_data: Option<PathBuf>,
    /// A Hugging Face `tokenizer.json`; `None` trains (once) a byte-level BPE of `vocab_size` entries.
    pub tokenizer: Option<PathBuf>,
    pub vocab_size: usize,
    pub seq_len: usize,
    /// `None` picks per corpus: document for JSON lines (the paper's C4 setting), packed otherwise.
    pub mode: Option<BatchMode>,
    pub seed: u64,
    /// Seeds the validation split instead of `seed` (`None`: `seed`).
    pub split_seed: Option<u64>,
    pub shuffle: bool,
    pub val_fraction: f64,
    /// Makes a malformed JSON line an error instead of a skipped, counted line.
    pub strict: bool,
    /// The cache root; `None` is `$COLA_CACHE` or `local/cache`.
    pub cache_dir: Option<PathBuf>,
    /// Prints what the pipeline does (downloads, training, tokenizing) and shows progress on stderr.
    pub verbose: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            data: None,
            val_data: None,
            tokenizer: None,
            vocab_size: 32000,
            seq_len: 256,
            mode: None,
            seed: 0,
            split_seed: None,
            shuffle: true,
            val_fraction: 0.01,
            strict: false,
            cache_dir: None,
            verbose: true,
        }
    }
}

/// `$COLA_CACHE` when set, else `local/cache` (relative to the current directory).
pub fn cache_root() -> PathBuf {
    std::env::var_os("COLA_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("local/cache"))
}

/// What [`Dataset::prepare`] read and made.
#[derive(Clone, Debug, PartialEq)]
pub struct DataReport {
    pub train_path: PathBuf,
    pub val_path: Option<PathBuf>,
    pub train_read: ReadReport,
    pub val_read: Option<ReadReport>,
    pub train_tokens: u64,
    pub val_tokens: Option<u64>,
    pub train_sequences: u64,
    pub val_sequences: u64,
    pub mode: BatchMode,
    /// Where the tokenizer came from (the given file or its cache), `None` for a `.bin` without one.
    pub tokenizer_path: Option<PathBuf>,
    pub cache_dir: PathBuf,
}

impl std::fmt::Display for DataReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} files, {} documents, {} tokens -> {} training and {} validation sequences ({})",
            self.train_path.display(),
            self.train_read.files,
            self.train_read.documents,
            self.train_tokens,
            self.train_sequences,
            self.val_sequences,
            self.mode
        )?;
        if let Some(val) = &self.val_path {
            write!(f, ", validation corpus {}", val.display())?;
        }
        let malformed =
            self.train_read.malformed_lines + self.val_read.as_ref().map_or(0, |r| r.malformed_lines);
        if malformed > 0 {
            write!(f, "; skipped {malformed} malformed JSON lines")?;
            if let Some(first) = &self.train_read.first_malformed {
                write!(f, " (first: {first})")?;
            }
        }
        Ok(())
    }
}

/// One corpus as tokens: its mapped stream and what reading it found.
#[derive(Debug)]
pub struct CorpusTokens {
    pub source: CorpusSource,
    pub stream: TokenStream,
    pub read: ReadReport,
    /// The largest id in the stream, `None` when it is empty.
    pub max_id: Option<u32>,
    /// The shards the stream maps; `None` for `.bin` files, which are mapped as they are.
    pub shards: Option<ShardSet>,
}

/// The tokenizer and the tokenized corpora a [`DataConfig`] names, before they are cut into sequences:
/// what `prepare_data` makes and training reads.
#[derive(Debug)]
pub struct TokenizedData {
    pub tokenizer: Option<Tokenizer>,
    /// Where the tokenizer came from (the given file or its cache), `None` for a `.bin` without one.
    pub tokenizer_path: Option<PathBuf>,
    pub train: CorpusTokens,
    pub val: Option<CorpusTokens>,
    /// The training corpus's cache folder.
    pub cache_dir: PathBuf,
}

/// Opens the corpora of `config`, obtains the tokenizer (given, cached or trained) and tokenizes both
/// corpora into shards (reusing the shards of unchanged files).
pub fn tokenize_corpora(config: &DataConfig) -> Result<TokenizedData> {
    let root = config.cache_dir.clone().unwrap_or_else(cache_root);
    let (train_source, cache_dir) = match &config.data {
        Some(path) => {
            let source = CorpusSource::open(path)?;
            let dir = corpus_cache_dir(&root, &source)?;
            (source, dir)
        }
        None => {
            let texts = shakespeare::shakespeare_texts(&root, config.verbose)?;
            (CorpusSource::open(&texts)?, shakespeare::shakespeare_dir(&root))
        }
    };
    let val_source = config.val_data.as_deref().map(CorpusSource::open).transpose()?;
    let (tokenizer, tokenizer_path) = match &config.tokenizer {
        Some(path) => (Some(Tokenizer::load(path)?), Some(path.clone())),
        None if train_source.is_token_ids() => (None, None),
        None => {
            // A user's corpus may change, and the tokenizer trained on it with it (the fingerprint covers
            // every file's size and time); the default corpus is a fixed release.
            let name = match &config.data {
                Some(_) => {
                    format!("tokenizer-{}-{:016x}.json", config.vocab_size, train_source.fingerprint()?)
                }
                None => format!("tokenizer-{}.json", config.vocab_size),
            };
            let path = cache_dir.join(name);
            let tokenizer = trained_tokenizer(&train_source, &path, config)?;
            (Some(tokenizer), Some(path))
        }
    };
    let train = corpus_tokens(train_source, tokenizer.as_ref(), &cache_dir, config)?;
    let val = match val_source {
        Some(source) => {
            let dir = corpus_cache_dir(&root, &source)?;
            Some(corpus_tokens(source, tokenizer.as_ref(), &dir, config)?)
        }
        None => None,
    };
    Ok(TokenizedData { tokenizer, tokenizer_path, train, val, cache_dir })
}

/// A prepared corpus: its tokenizer, its train/validation sequences, and a report of what was read.
#[derive(Debug)]
pub struct Dataset {
    tokenizer: Option<Tokenizer>,
    splits: DataSplits,
    report: DataReport,
    vocab_size: usize,
    /// The largest id of the training and validation corpora (eos included), `None` when both are empty.
    max_id: Option<u32>,
    verbose: bool,
}

impl Dataset {
    /// Reads, tokenizes (through the caches) and splits the corpus `config` names.
    pub fn prepare(config: &DataConfig) -> Result<Dataset> {
        let data = tokenize_corpora(config)?;
        let TokenizedData { tokenizer, tokenizer_path, train, val, cache_dir } = data;
        let mode = config.mode.unwrap_or(if train.source.is_json_lines() {
            BatchMode::Document
        } else {
            BatchMode::Packed
        });
        let max_id = train.max_id.max(val.as_ref().and_then(|v| v.max_id));
        let vocab_size = match &tokenizer {
            Some(tokenizer) => tokenizer.vocab_size(),
            None => max_id.map_or(0, |id| id as usize + 1),
        };
        let (train_tokens, val_tokens) =
            (train.stream.num_tokens(), val.as_ref().map(|v| v.stream.num_tokens()));
        let batch_config = BatchConfig {
            seq_len: config.seq_len,
            mode,
            seed: config.seed,
            split_seed: config.split_seed.unwrap_or(config.seed),
            shuffle: config.shuffle,
            val_fraction: config.val_fraction,
            pad_id: tokenizer.as_ref().map_or(PAD_ID, Tokenizer::pad_id),
            eos_id: tokenizer.as_ref().map_or(EOS_ID, Tokenizer::eos_id),
        };
        let train_path = train.source.path.clone();
        let val_path = val.as_ref().map(|v| v.source.path.clone());
        let (train_read, val_read) = (train.read.clone(), val.as_ref().map(|v| v.read.clone()));
        let splits = DataSplits::from_streams(train.stream, val.map(|v| v.stream), batch_config)?;
        let report = DataReport {
            train_path,
            val_path,
            train_read,
            val_read,
            train_tokens,
            val_tokens,
            train_sequences: splits.train_len(),
            val_sequences: splits.val_len(),
            mode,
            tokenizer_path,
            cache_dir,
        };
        if report.train_read.malformed_lines > 0 && config.verbose {
            eprintln!("data: warning: {report}");
        }
        Ok(Dataset { tokenizer, splits, report, vocab_size, max_id, verbose: config.verbose })
    }

    /// The tokenizer; `None` for a `.bin` corpus given without `--tokenizer`.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    pub fn splits(&self) -> &DataSplits {
        &self.splits
    }

    pub fn report(&self) -> &DataReport {
        &self.report
    }

    /// The tokenizer's vocabulary size, or for a `.bin` without tokenizer the largest id + 1.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn pad_id(&self) -> u32 {
        self.splits.config().pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.splits.config().eos_id
    }

    /// Checks that every id the model will see has a row in its embedding of `model_vocab` rows. A
    /// tokenizer larger than the model (T5's 32100 entries against the presets' 32000) is accepted when no
    /// id of the corpus (nor the pad id) reaches `model_vocab`; otherwise the error names the first
    /// offending id and where it is.
    pub fn check_model_vocab(&self, model_vocab: usize) -> Result<()> {
        if check_vocab(self.vocab_size, model_vocab).is_ok() {
            return Ok(());
        }
        let bound = u32::try_from(model_vocab).unwrap_or(u32::MAX);
        let largest = self.max_id.unwrap_or(0);
        if largest >= bound {
            // The manifest's largest id says there is a culprit; the streams, read in order, name the first.
            let first = self.splits.streams().find_map(|stream| stream.first_id_at_least(bound));
            if let Some((path, position, id)) = first {
                return Err(DataError::IdBeyondVocab {
                    path,
                    position,
                    id,
                    model_vocab,
                    tokenizer_vocab: self.vocab_size,
                });
            }
        }
        if self.pad_id() >= bound {
            return Err(DataError::VocabTooLarge { tokenizer_vocab: self.vocab_size, model_vocab });
        }
        if self.verbose {
            eprintln!(
                "data: the tokenizer has {} entries, the model {model_vocab}; no id of the corpus reaches \
                 {model_vocab} (the largest is {largest}), so the model's vocabulary suffices",
                self.vocab_size
            );
        }
        Ok(())
    }

    /// See [`DataSplits::train_batches`].
    pub fn train_batches(&self, batch_size: usize) -> Result<TrainBatches> {
        self.splits.train_batches(batch_size)
    }

    /// See [`DataSplits::train_batches_from`].
    pub fn train_batches_from(&self, batch_size: usize, state: DataState) -> Result<TrainBatches> {
        self.splits.train_batches_from(batch_size, state)
    }

    /// See [`DataSplits::val_batches`].
    pub fn val_batches(&self, batch_size: usize) -> Result<ValBatches<'_>> {
        self.splits.val_batches(batch_size)
    }

    /// Saves the tokenizer as `run_dir/tokenizer.json`; `None` when there is no tokenizer.
    pub fn save_tokenizer(&self, run_dir: &Path) -> Result<Option<PathBuf>> {
        self.tokenizer.as_ref().map(|t| t.save_into_dir(run_dir)).transpose()
    }
}

/// `root/corpora/<name>-<hash of the corpus's absolute path>`: the caches derived from one corpus (its
/// trained tokenizer, its shards), which track changes to its files themselves.
pub fn corpus_cache_dir(root: &Path, source: &CorpusSource) -> Result<PathBuf> {
    let name: String = source
        .path
        .file_name()
        .map(|n| {
            n.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
        })
        .unwrap_or_else(|| "corpus".into());
    Ok(root.join("corpora").join(format!("{name}-{:016x}", source.location_hash()?)))
}

/// The BPE cached at `path`, or one trained on the first [`TOKENIZER_TRAINING_BYTES`] of `source` and
/// saved there.
fn trained_tokenizer(source: &CorpusSource, path: &Path, config: &DataConfig) -> Result<Tokenizer> {
    if path.is_file() {
        if config.verbose {
            eprintln!("data: using the cached tokenizer {}", path.display());
        }
        return Tokenizer::load(path);
    }
    let mut texts = Vec::new();
    let mut bytes = 0u64;
    source.for_each_document(config.strict, &mut |text| {
        bytes += text.len() as u64;
        texts.push(text);
        Ok(bytes < TOKENIZER_TRAINING_BYTES)
    })?;
    if texts.is_empty() {
        return Err(DataError::EmptyCorpus { path: source.path.clone(), reason: "it has no text".into() });
    }
    if config.verbose {
        eprintln!(
            "data: training a {}-entry byte-level BPE on {} documents ({bytes} bytes) of {}",
            config.vocab_size,
            texts.len(),
            source.path.display()
        );
    }
    let start = Instant::now();
    let tokenizer = Tokenizer::train_bpe(texts.iter(), config.vocab_size, config.verbose)?;
    tokenizer.save(path)?;
    if config.verbose {
        eprintln!(
            "data: trained the tokenizer in {:.1} s; saved it to {}",
            start.elapsed().as_secs_f64(),
            path.display()
        );
    }
    Ok(tokenizer)
}

/// The tokens of `source`: `.bin` files mapped as they are (ids checked against the tokenizer, if any),
/// text tokenized into the shards of `cache_dir/shards-<tokenizer hash>`.
fn corpus_tokens(
    source: CorpusSource,
    tokenizer: Option<&Tokenizer>,
    cache_dir: &Path,
    config: &DataConfig,
) -> Result<CorpusTokens> {
    if source.is_token_ids() {
        let paths: Vec<PathBuf> = source.files.iter().map(|(path, _)| path.clone()).collect();
        let stream = TokenStream::map_bins(&paths)?;
        if stream.num_tokens() == 0 {
            return Err(DataError::EmptyCorpus {
                path: source.path.clone(),
                reason: "the .bin holds no token ids".into(),
            });
        }
        let mut max_id = None;
        for path in &paths {
            max_id = max_id.max(corpus::bin_max_id(path)?);
        }
        if let (Some(tokenizer), Some(id)) = (tokenizer, max_id) {
            if id as usize >= tokenizer.vocab_size() {
                return Err(DataError::TokenOutOfRange {
                    path: source.path.clone(),
                    id,
                    vocab: tokenizer.vocab_size(),
                });
            }
        }
        let read = ReadReport { files: source.files.len(), documents: 1, ..ReadReport::default() };
        return Ok(CorpusTokens { source, stream, read, max_id, shards: None });
    }
    let tokenizer = tokenizer.ok_or_else(|| DataError::InvalidConfig {
        reason: format!(
            "{} is text but there is no tokenizer (the training corpus is a .bin); pass --tokenizer",
            source.path.display()
        ),
    })?;
    let dir = cache_dir.join(format!("shards-{:016x}", tokenizer.hash()));
    let shards = prepare_shards(&source, tokenizer, &dir, config.strict, config.verbose)?;
    let read = shards.read_report();
    if config.verbose && shards.tokenized == 0 {
        eprintln!(
            "data: {} tokens of {} from the shards in {}",
            shards.tokens(),
            source.path.display(),
            dir.display()
        );
    }
    if shards.documents() == 0 {
        let reason = match read.malformed_lines {
            0 => format!("{} files without any non-empty document", read.files),
            n => format!(
                "no valid documents; {n} malformed JSON lines skipped (first: {:?})",
                read.first_malformed
            ),
        };
        return Err(DataError::EmptyCorpus { path: source.path.clone(), reason });
    }
    let (stream, shards) = match shards.stream() {
        Ok(stream) => (stream, shards),
        // A shard damaged since it was written: delete the file, and the next preparation finds the
        // shard missing and tokenizes its source file again (alone).
        Err(DataError::BadCache { path, reason }) => {
            eprintln!("data: {}: {reason}; tokenizing its file again", path.display());
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            let shards = prepare_shards(&source, tokenizer, &dir, config.strict, config.verbose)?;
            (shards.stream()?, shards)
        }
        Err(err) => return Err(err),
    };
    Ok(CorpusTokens { source, stream, read, max_id: shards.max_id(), shards: Some(shards) })
}

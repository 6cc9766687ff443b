//! Tokenized corpora: documents as one id buffer plus offsets, tokenized in parallel chunks and cached on
//! disk (keyed by the tokenizer's hash) so that a rerun starts at once.
use super::corpus::{CorpusSource, ReadReport};
use super::error::{io_error, DataError, Result};
use super::tokenizer::{write_atomically, Tokenizer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::Path;
use std::time::Instant;

/// A corpus as token ids: document `i` is `tokens[doc_offsets[i]..doc_offsets[i + 1]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedCorpus {
    pub tokens: Vec<u32>,
    pub doc_offsets: Vec<usize>,
    /// Whether documents are separate texts that the batcher ends with eos (false for a pre-tokenized
    /// `.bin` stream, which is taken as is).
    pub documents_end_with_eos: bool,
}

impl TokenizedCorpus {
    /// Separate documents; the batcher appends eos to each.
    pub fn from_documents<D: AsRef<[u32]>>(documents: &[D]) -> TokenizedCorpus {
        let mut corpus = TokenizedCorpus::empty();
        for document in documents {
            corpus.push(document.as_ref());
        }
        corpus
    }

    /// One pre-tokenized stream (a `.bin`), taken as is: no eos is added.
    pub fn from_stream(tokens: Vec<u32>) -> TokenizedCorpus {
        let doc_offsets = vec![0, tokens.len()];
        TokenizedCorpus { tokens, doc_offsets, documents_end_with_eos: false }
    }

    fn empty() -> TokenizedCorpus {
        TokenizedCorpus { tokens: Vec::new(), doc_offsets: vec![0], documents_end_with_eos: true }
    }

    fn push(&mut self, document: &[u32]) {
        self.tokens.extend_from_slice(document);
        self.doc_offsets.push(self.tokens.len());
    }

    pub fn num_documents(&self) -> usize {
        self.doc_offsets.len().saturating_sub(1)
    }

    pub fn document(&self, index: usize) -> &[u32] {
        &self.tokens[self.doc_offsets[index]..self.doc_offsets[index + 1]]
    }

    /// The largest id present, `None` when there are no tokens.
    pub fn max_token_id(&self) -> Option<u32> {
        self.tokens.iter().copied().max()
    }
}

/// Cache file layout: magic, id width in bytes (2 or 4), document count, token count, length of the JSON
/// read report, the report, `documents + 1` u64 offsets, then the ids, all little-endian.
const MAGIC: &[u8; 8] = b"COLATOK1";

/// Tokenizes every document of `source`, or loads the result from `cache` when a previous run left it
/// there (a strict run with malformed lines on record rereads the corpus to name the line).
pub fn tokenize_cached(
    source: &CorpusSource,
    tokenizer: &Tokenizer,
    cache: &Path,
    strict: bool,
    verbose: bool,
) -> Result<(TokenizedCorpus, ReadReport)> {
    if cache.exists() {
        match load_cache(cache) {
            Ok((corpus, report)) if !(strict && report.malformed_lines > 0) => {
                if verbose {
                    eprintln!(
                        "data: {} tokens of {} from cache {}",
                        corpus.tokens.len(),
                        source.path.display(),
                        cache.display()
                    );
                }
                return Ok((corpus, report));
            }
            Ok(_) => {}
            Err(err) => eprintln!("data: ignoring unreadable token cache ({err}); tokenizing again"),
        }
    }
    let (corpus, report) = tokenize(source, tokenizer, strict, verbose)?;
    if let Some(parent) = cache.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    save_cache(cache, &corpus, &report)?;
    if verbose {
        eprintln!("data: cached the tokenized corpus at {}", cache.display());
    }
    Ok((corpus, report))
}

/// Tokenizes every document of `source` in parallel chunks of about 8 MB of text.
pub fn tokenize(
    source: &CorpusSource,
    tokenizer: &Tokenizer,
    strict: bool,
    verbose: bool,
) -> Result<(TokenizedCorpus, ReadReport)> {
    const CHUNK_BYTES: usize = 8 << 20;
    let start = Instant::now();
    let progress = spinner(verbose, format!("tokenizing {}", source.path.display()));
    let mut corpus = TokenizedCorpus::empty();
    let mut chunk: Vec<String> = Vec::new();
    let mut chunk_bytes = 0usize;
    let flush = |chunk: &mut Vec<String>, corpus: &mut TokenizedCorpus| -> Result<()> {
        for ids in tokenizer.encode_batch(chunk)? {
            corpus.push(&ids);
        }
        chunk.clear();
        progress.set_message(format!("{} documents, {} tokens", corpus.num_documents(), corpus.tokens.len()));
        Ok(())
    };
    let report = source.for_each_document(strict, &mut |text| {
        chunk_bytes += text.len();
        chunk.push(text);
        if chunk_bytes >= CHUNK_BYTES {
            flush(&mut chunk, &mut corpus)?;
            chunk_bytes = 0;
        }
        Ok(true)
    })?;
    flush(&mut chunk, &mut corpus)?;
    progress.finish_and_clear();
    if verbose {
        eprintln!(
            "data: tokenized {} documents ({} bytes) of {} into {} tokens in {:.1} s",
            report.documents,
            report.text_bytes,
            source.path.display(),
            corpus.tokens.len(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok((corpus, report))
}

/// A spinner on stderr showing `message` (hidden unless `verbose` and stderr is a terminal).
pub(crate) fn spinner(verbose: bool, message: String) -> ProgressBar {
    if !verbose {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new_spinner().with_prefix(message);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Writes `corpus` and `report` in the cache layout (ids as u16 when they all fit).
pub fn save_cache(path: &Path, corpus: &TokenizedCorpus, report: &ReadReport) -> Result<()> {
    let wide = corpus.max_token_id().is_some_and(|id| id > u16::MAX as u32);
    let width: u64 = if wide { 4 } else { 2 };
    let report_json = serde_json::to_vec(report)
        .map_err(|err| DataError::BadCache { path: path.to_path_buf(), reason: err.to_string() })?;
    let mut bytes =
        Vec::with_capacity(64 + report_json.len() + corpus.doc_offsets.len() * 8 + corpus.tokens.len() * 4);
    bytes.extend_from_slice(MAGIC);
    for value in [width, corpus.num_documents() as u64, corpus.tokens.len() as u64, report_json.len() as u64]
    {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes.extend_from_slice(&report_json);
    for &offset in &corpus.doc_offsets {
        bytes.extend_from_slice(&(offset as u64).to_le_bytes());
    }
    for &token in &corpus.tokens {
        if wide {
            bytes.extend_from_slice(&token.to_le_bytes());
        } else {
            bytes.extend_from_slice(&(token as u16).to_le_bytes());
        }
    }
    write_atomically(path, &bytes)
}

/// Reads a file [`save_cache`] wrote, checking every size against the file's length.
pub fn load_cache(path: &Path) -> Result<(TokenizedCorpus, ReadReport)> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let bad = |reason: String| DataError::BadCache { path: path.to_path_buf(), reason };
    if bytes.len() < 40 || &bytes[..8] != MAGIC {
        return Err(bad(format!("not a token cache (size {} bytes, wrong magic)", bytes.len())));
    }
    let header: Vec<u64> =
        bytes[8..40].chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect();
    let (width, documents, tokens, report_len) = (header[0], header[1], header[2], header[3]);
    if width != 2 && width != 4 {
        return Err(bad(format!("id width {width} is neither 2 nor 4")));
    }
    let offsets_len = documents.checked_add(1).and_then(|d| d.checked_mul(8));
    let expected = [Some(report_len), offsets_len, tokens.checked_mul(width)]
        .iter()
        .try_fold(40u64, |total, part| total.checked_add((*part)?));
    if expected != Some(bytes.len() as u64) {
        return Err(bad(format!(
            "{} bytes, but the header promises {documents} documents and {tokens} tokens",
            bytes.len()
        )));
    }
    let mut at = 40usize;
    let report: ReadReport = serde_json::from_slice(&bytes[at..at + report_len as usize])
        .map_err(|err| bad(format!("read report: {err}")))?;
    at += report_len as usize;
    let doc_offsets: Vec<usize> = bytes[at..at + (documents as usize + 1) * 8]
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
        .collect();
    at += (documents as usize + 1) * 8;
    let ids = &bytes[at..];
    let tokens: Vec<u32> = if width == 2 {
        ids.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect()
    } else {
        ids.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    let monotone = doc_offsets.first() == Some(&0)
        && doc_offsets.windows(2).all(|w| w[0] <= w[1])
        && doc_offsets.last() == Some(&tokens.len());
    if !monotone {
        return Err(bad("document offsets are not increasing from 0 to the token count".into()));
    }
    Ok((TokenizedCorpus { tokens, doc_offsets, documents_end_with_eos: true }, report))
}

//! Corpus readers: plain text files (one document each), JSON lines with a `"text"` field (optionally
//! gzipped: the published C4 shards), folders of those, and pre-tokenized `.bin` streams of little-endian
//! u16 token ids.
use super::error::{io_error, DataError, Result};
use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How one corpus file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorpusFormat {
    /// A `.txt` file: the whole file is one document (invalid UTF-8 is replaced by U+FFFD).
    Text,
    /// `.jsonl` / `.json` (or either with `.gz`): one JSON object per line, its `"text"` field a document.
    JsonLines { gzip: bool },
    /// `.bin`: one stream of little-endian u16 token ids, already tokenized.
    TokenIds,
}

impl CorpusFormat {
    /// The format a file name implies, `None` for anything else.
    pub fn of_path(path: &Path) -> Option<CorpusFormat> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let (stem, gzip) = match name.strip_suffix(".gz") {
            Some(stem) => (stem, true),
            None => (name.as_str(), false),
        };
        if stem.ends_with(".jsonl") || stem.ends_with(".json") {
            Some(CorpusFormat::JsonLines { gzip })
        } else if gzip {
            None
        } else if stem.ends_with(".txt") {
            Some(CorpusFormat::Text)
        } else if stem.ends_with(".bin") {
            Some(CorpusFormat::TokenIds)
        } else {
            None
        }
    }
}

/// What reading a corpus found; JSON lines that failed to parse are skipped and counted here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReport {
    pub files: usize,
    /// Non-empty documents delivered.
    pub documents: u64,
    /// Bytes of document text delivered (characters, for ASCII text).
    pub text_bytes: u64,
    /// Documents skipped because their text was empty.
    pub empty_documents: u64,
    /// JSON lines skipped because they did not parse or had no string `"text"` field.
    pub malformed_lines: u64,
    /// `file:line: reason` of the first malformed line, to quote in a warning.
    pub first_malformed: Option<String>,
}

impl ReadReport {
    /// Adds the counts of a later part of the corpus (the first malformed line stays the earliest).
    pub fn merge(&mut self, later: ReadReport) {
        self.files += later.files;
        self.documents += later.documents;
        self.text_bytes += later.text_bytes;
        self.empty_documents += later.empty_documents;
        self.malformed_lines += later.malformed_lines;
        if self.first_malformed.is_none() {
            self.first_malformed = later.first_malformed;
        }
    }
}

/// A corpus on disk: one file, or a folder whose text and JSON-lines files are read in sorted path order.
#[derive(Clone, Debug)]
pub struct CorpusSource {
    pub path: PathBuf,
    pub files: Vec<(PathBuf, CorpusFormat)>,
}

impl CorpusSource {
    /// Lists the corpus at `path`: a file, a folder (read recursively), or a glob pattern of files such as
    /// `c4/c4-train.*-of-01024.json.gz`. A missing path, an unknown file type, or a folder or pattern
    /// without readable files is an error.
    pub fn open(path: &Path) -> Result<CorpusSource> {
        if !path.exists() && is_pattern(path) {
            return Self::open_pattern(path);
        }
        let metadata = std::fs::metadata(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DataError::MissingPath { path: path.to_path_buf() },
            _ => DataError::Io { path: path.to_path_buf(), source },
        })?;
        let files = if metadata.is_dir() {
            let mut found = Vec::new();
            list_files(path, &mut found)?;
            found.sort();
            let files = text_files(found);
            if files.is_empty() {
                return Err(DataError::EmptyCorpus {
                    path: path.to_path_buf(),
                    reason: "the folder holds no .txt, .jsonl, .json or .json.gz files (pass a .bin corpus \
                             as a file, not a folder)"
                        .into(),
                });
            }
            files
        } else {
            let format = CorpusFormat::of_path(path)
                .ok_or_else(|| DataError::UnknownFormat { path: path.to_path_buf() })?;
            vec![(path.to_path_buf(), format)]
        };
        Ok(CorpusSource { path: path.to_path_buf(), files })
    }

    /// The text and JSON-lines files a glob pattern matches, in sorted order.
    fn open_pattern(pattern: &Path) -> Result<CorpusSource> {
        let invalid = |reason: String| DataError::InvalidConfig {
            reason: format!("--data {}: {reason}", pattern.display()),
        };
        let text = pattern.to_str().ok_or_else(|| invalid("the pattern is not valid UTF-8".into()))?;
        let mut found = Vec::new();
        for entry in glob::glob(text).map_err(|err| invalid(format!("not a valid glob pattern: {err}")))? {
            let file = entry.map_err(|err| invalid(err.to_string()))?;
            if file.is_file() {
                found.push(file);
            }
        }
        found.sort();
        let files = text_files(found);
        if files.is_empty() {
            return Err(DataError::EmptyCorpus {
                path: pattern.to_path_buf(),
                reason: "the pattern matches no .txt, .jsonl, .json or .json.gz file".into(),
            });
        }
        Ok(CorpusSource { path: pattern.to_path_buf(), files })
    }

    /// Whether the corpus is a pre-tokenized `.bin` stream (which needs no tokenizer).
    pub fn is_token_ids(&self) -> bool {
        self.files.iter().any(|(_, format)| *format == CorpusFormat::TokenIds)
    }

    /// Whether every file is JSON lines (the C4 layout, whose default batching is per document).
    pub fn is_json_lines(&self) -> bool {
        self.files.iter().all(|(_, format)| matches!(format, CorpusFormat::JsonLines { .. }))
    }

    /// A hash of the file list with each file's size and modification time: caches derived from the
    /// corpus are keyed by it, so editing a file invalidates them without rereading the corpus.
    pub fn fingerprint(&self) -> Result<u64> {
        let mut hash = Fnv::new();
        let root = std::fs::canonicalize(&self.path).map_err(io_error(&self.path))?;
        hash.write(root.to_string_lossy().as_bytes());
        for (file, _) in &self.files {
            let metadata = std::fs::metadata(file).map_err(io_error(file))?;
            let modified = modified_ns(&metadata);
            hash.write(file.to_string_lossy().as_bytes());
            hash.write(&metadata.len().to_le_bytes());
            hash.write(&modified.to_le_bytes());
        }
        Ok(hash.finish())
    }

    /// A hash of where the corpus is (its absolute path, or pattern in an absolute folder): the key of
    /// its cache folder, which stays the same when files change.
    pub fn location_hash(&self) -> Result<u64> {
        let absolute = match std::fs::canonicalize(&self.path) {
            Ok(path) => path,
            Err(_) => {
                // A glob pattern: the folder part exists, the pattern itself does not.
                let parent =
                    self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let parent = std::fs::canonicalize(parent).map_err(io_error(parent))?;
                parent.join(self.path.file_name().unwrap_or_default())
            }
        };
        let mut hash = Fnv::new();
        hash.write(absolute.to_string_lossy().as_bytes());
        Ok(hash.finish())
    }

    /// Calls `visit` with each non-empty document in order until it returns `false`. With `strict`, a
    /// malformed JSON line is an error naming its file and line; otherwise it is skipped and counted.
    pub fn for_each_document(
        &self,
        strict: bool,
        visit: &mut dyn FnMut(String) -> Result<bool>,
    ) -> Result<ReadReport> {
        let mut report = ReadReport::default();
        for index in 0..self.files.len() {
            let (file_report, keep_going) = self.read_file(index, strict, None, visit)?;
            report.merge(file_report);
            if !keep_going {
                break;
            }
        }
        Ok(report)
    }

    /// Calls `visit` with each non-empty document of file `index` until it returns `false`; returns the
    /// file's report and whether `visit` wanted more. `consumed` counts the file's bytes as they are read
    /// from disk (before decompression), for a progress bar.
    pub fn read_file(
        &self,
        index: usize,
        strict: bool,
        consumed: Option<&AtomicU64>,
        visit: &mut dyn FnMut(String) -> Result<bool>,
    ) -> Result<(ReadReport, bool)> {
        let (path, format) = &self.files[index];
        let mut report = ReadReport { files: 1, ..ReadReport::default() };
        let mut deliver = |text: String, report: &mut ReadReport| -> Result<bool> {
            if text.is_empty() {
                report.empty_documents += 1;
                return Ok(true);
            }
            report.documents += 1;
            report.text_bytes += text.len() as u64;
            visit(text)
        };
        let keep_going = match format {
            CorpusFormat::Text => {
                let bytes = std::fs::read(path).map_err(io_error(path))?;
                if let Some(counter) = consumed {
                    counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                let text = match String::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
                };
                deliver(text, &mut report)?
            }
            CorpusFormat::JsonLines { gzip } => {
                let file = CountingReader { inner: File::open(path).map_err(io_error(path))?, consumed };
                let reader: Box<dyn Read + '_> =
                    if *gzip { Box::new(MultiGzDecoder::new(file)) } else { Box::new(file) };
                read_json_lines(
                    path,
                    BufReader::with_capacity(1 << 20, reader),
                    strict,
                    &mut report,
                    &mut deliver,
                )?
            }
            CorpusFormat::TokenIds => {
                return Err(DataError::InvalidConfig {
                    reason: format!("{} holds token ids, not text", path.display()),
                })
            }
        };
        Ok((report, keep_going))
    }

    /// Every non-empty document, in order (convenient for small corpora and tests).
    pub fn read_documents(&self, strict: bool) -> Result<(Vec<String>, ReadReport)> {
        let mut documents = Vec::new();
        let report = self.for_each_document(strict, &mut |text| {
            documents.push(text);
            Ok(true)
        })?;
        Ok((documents, report))
    }

    /// The token ids of a `.bin` corpus.
    pub fn read_token_ids(&self) -> Result<Vec<u32>> {
        let mut tokens = Vec::new();
        for (path, format) in &self.files {
            if *format != CorpusFormat::TokenIds {
                return Err(DataError::InvalidConfig {
                    reason: format!("{} is text, not a .bin of token ids", path.display()),
                });
            }
            tokens.extend(read_u16_bin(path)?);
        }
        Ok(tokens)
    }
}

/// Reads a `.bin` of little-endian u16 token ids.
pub fn read_u16_bin(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    if bytes.len() % 2 != 0 {
        return Err(DataError::OddBinLength { path: path.to_path_buf(), bytes: bytes.len() as u64 });
    }
    Ok(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect())
}

/// The largest id of a `.bin` of little-endian u16 ids, read through a buffer (not mapped, so the scan
/// leaves no pages resident); `None` for an empty file.
pub fn bin_max_id(path: &Path) -> Result<Option<u32>> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let len = file.metadata().map_err(io_error(path))?.len();
    if !len.is_multiple_of(2) {
        return Err(DataError::OddBinLength { path: path.to_path_buf(), bytes: len });
    }
    let mut block = vec![0u8; 1 << 20];
    let (mut left, mut max) = (len, None);
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        file.read_exact(&mut block[..take]).map_err(io_error(path))?;
        max = max.max(block[..take].chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).max());
        left -= take as u64;
    }
    Ok(max)
}

/// Writes token ids as a `.bin` of little-endian u16 (the format [`read_u16_bin`] reads); ids above
/// 65535 are an error.
pub fn write_u16_bin(path: &Path, tokens: &[u32]) -> Result<()> {
    let mut bytes = Vec::with_capacity(tokens.len() * 2);
    for &token in tokens {
        let narrow = u16::try_from(token).map_err(|_| DataError::TokenOutOfRange {
            path: path.to_path_buf(),
            id: token,
            vocab: 1 << 16,
        })?;
        bytes.extend_from_slice(&narrow.to_le_bytes());
    }
    std::fs::write(path, bytes).map_err(io_error(path))
}

#[derive(Deserialize)]
struct TextLine {
    text: String,
}

fn read_json_lines(
    path: &Path,
    mut reader: impl BufRead,
    strict: bool,
    report: &mut ReadReport,
    deliver: &mut dyn FnMut(String, &mut ReadReport) -> Result<bool>,
) -> Result<bool> {
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io_error(path))? == 0 {
            return Ok(true);
        }
        number += 1;
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        match serde_json::from_slice::<TextLine>(trimmed) {
            Ok(parsed) => {
                if !deliver(parsed.text, report)? {
                    return Ok(false);
                }
            }
            Err(err) => {
                if strict {
                    return Err(DataError::MalformedLine {
                        path: path.to_path_buf(),
                        line: number,
                        reason: err.to_string(),
                    });
                }
                report.malformed_lines += 1;
                if report.first_malformed.is_none() {
                    report.first_malformed = Some(format!("{}:{number}: {err}", path.display()));
                }
            }
        }
    }
}

/// A file's modification time in nanoseconds since the Unix epoch (0 where the platform has none): with
/// its size, what says a corpus file changed.
pub(crate) fn modified_ns(metadata: &std::fs::Metadata) -> u64 {
    metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Whether a `--data` path is a glob pattern rather than a file name.
fn is_pattern(path: &Path) -> bool {
    path.to_string_lossy().contains(['*', '?', '['])
}

/// The text and JSON-lines files among `found` (`.bin` streams are only read when named alone).
fn text_files(found: Vec<PathBuf>) -> Vec<(PathBuf, CorpusFormat)> {
    found
        .into_iter()
        .filter_map(|f| match CorpusFormat::of_path(&f) {
            Some(CorpusFormat::TokenIds) | None => None,
            Some(format) => Some((f, format)),
        })
        .collect()
}

/// A reader that adds the bytes it reads to a shared counter.
struct CountingReader<'a, R> {
    inner: R,
    consumed: Option<&'a AtomicU64>,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        if let Some(counter) = self.consumed {
            counter.fetch_add(read as u64, Ordering::Relaxed);
        }
        Ok(read)
    }
}

/// Every file below `dir`, skipping hidden entries (names starting with '.').
fn list_files(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            list_files(&path, found)?;
        } else {
            found.push(path);
        }
    }
    Ok(())
}

/// 64-bit FNV-1a: a stable, dependency-free hash for cache keys (std's hasher may change between
/// Rust releases).
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xCBF2_9CE4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
        }
        // A separator so that ("ab", "c") and ("a", "bc") differ.
        self.0 = (self.0 ^ 0xFF).wrapping_mul(0x0000_0100_0000_01B3);
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

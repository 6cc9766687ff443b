//! Token shards: a tokenized corpus on disk, one shard per corpus file, memory-mapped for training.
//!
//! A shard is two files in the shard folder: `<name>.ids`, every document's ids followed by the eos id as
//! little-endian u16 (when the tokenizer's ids fit) or u32, and `<name>.ends`, where each document ends
//! (exclusive, u64, in ids of the shard). `manifest.json` lists the shards in corpus order with the source
//! file's size and modification time, the counts and the read report, and names the tokenizer by its hash.
//! A later run reuses every shard whose source is unchanged and re-tokenizes only the others; the manifest
//! is rewritten after each finished file, so an interrupted preparation keeps what it had done.
//!
//! Tokenization runs on the rayon pool: files in parallel, and inside each file the documents of a batch
//! in parallel (the `tokenizers` crate's batch encoding). Memory holds one batch of text per busy file,
//! never the corpus.
use super::corpus::{modified_ns, CorpusSource, Fnv, ReadReport};
use super::error::{io_error, DataError, Result};
use super::stream::{IdWidth, ShardFiles, TokenStream};
use super::tokenizer::{write_atomically, Tokenizer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

pub const MANIFEST_FILE: &str = "manifest.json";
const FORMAT: &str = "cola-token-shards/1";
/// Text per encoding batch: large enough to keep every core busy, small enough that the batch and its
/// encodings (tens of bytes per token) stay a few tens of MB per busy file.
const BATCH_BYTES: usize = 1 << 20;

/// The shard folder's table of contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// [`Tokenizer::hash`] in hex: shards of another tokenizer are never reused.
    pub tokenizer_hash: String,
    pub vocab_size: usize,
    pub eos_id: u32,
    pub width: IdWidth,
    /// In corpus order.
    pub shards: Vec<ShardEntry>,
}

/// One corpus file's shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The corpus file, as an absolute path.
    pub source: PathBuf,
    /// The corpus file's size and modification time when it was tokenized.
    pub size: u64,
    pub modified_ns: u64,
    /// The shard's files are `<name>.ids` and `<name>.ends`.
    pub name: String,
    pub documents: u64,
    /// Ids in the shard, one eos per document included.
    pub tokens: u64,
    /// The largest id in the shard, `None` when it is empty.
    pub max_id: Option<u32>,
    pub read: ReadReport,
}

/// The shards of a corpus, ready to map; what [`prepare_shards`] did to get them.
#[derive(Clone, Debug)]
pub struct ShardSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Files tokenized by this call, and files whose shards were reused.
    pub tokenized: usize,
    pub reused: usize,
    /// Of the files tokenized by this call: bytes on disk, bytes of document text, ids made; and the
    /// seconds the call took.
    pub tokenized_bytes: u64,
    pub tokenized_text_bytes: u64,
    pub tokenized_tokens: u64,
    pub seconds: f64,
}

impl ShardSet {
    /// The corpus as one mapped stream.
    pub fn stream(&self) -> Result<TokenStream> {
        let files: Vec<ShardFiles> = self
            .manifest
            .shards
            .iter()
            .map(|entry| ShardFiles {
                source: entry.source.clone(),
                ids: shard_file(&self.dir, &entry.name, IDS),
                ends: shard_file(&self.dir, &entry.name, ENDS),
                width: self.manifest.width,
                tokens: entry.tokens,
                documents: entry.documents,
            })
            .collect();
        TokenStream::map_shards(&files)
    }

    /// The read reports of all files, merged.
    pub fn read_report(&self) -> ReadReport {
        let mut report = ReadReport::default();
        for entry in &self.manifest.shards {
            report.merge(entry.read.clone());
        }
        report
    }

    /// The largest id of the corpus (eos included), `None` when it is empty.
    pub fn max_id(&self) -> Option<u32> {
        self.manifest.shards.iter().filter_map(|entry| entry.max_id).max()
    }

    pub fn tokens(&self) -> u64 {
        self.manifest.shards.iter().map(|entry| entry.tokens).sum()
    }

    pub fn documents(&self) -> u64 {
        self.manifest.shards.iter().map(|entry| entry.documents).sum()
    }
}

/// Reads `dir/manifest.json`.
pub fn load_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(io_error(&path))?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|err| DataError::BadCache {
        path: path.clone(),
        reason: format!("not a shard manifest: {err}"),
    })?;
    if manifest.format != FORMAT {
        return Err(DataError::BadCache {
            path,
            reason: format!("format {:?}, expected {FORMAT:?}", manifest.format),
        });
    }
    Ok(manifest)
}

/// The shards of `source` tokenized by `tokenizer` in `dir`: reused where the manifest there lists a shard
/// of an unchanged file, tokenized (in parallel, with a progress bar when `verbose`) otherwise. With
/// `strict`, a file with malformed JSON lines on record is read again so that the error names the line.
pub fn prepare_shards(
    source: &CorpusSource,
    tokenizer: &Tokenizer,
    dir: &Path,
    strict: bool,
    verbose: bool,
) -> Result<ShardSet> {
    let start = Instant::now();
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let fresh = Manifest {
        format: FORMAT.into(),
        tokenizer_hash: format!("{:016x}", tokenizer.hash()),
        vocab_size: tokenizer.vocab_size(),
        eos_id: tokenizer.eos_id(),
        width: IdWidth::for_vocab(tokenizer.vocab_size()),
        shards: Vec::new(),
    };
    let previous = match load_manifest(dir) {
        Ok(old) if Manifest { shards: Vec::new(), ..old.clone() } == fresh => old.shards,
        Ok(_) => Vec::new(),
        Err(DataError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => {
            eprintln!("data: ignoring the unreadable shard manifest ({err}); tokenizing again");
            Vec::new()
        }
    };
    let identities = source.files.iter().map(|(path, _)| identify(path)).collect::<Result<Vec<_>>>()?;
    let mut slots: Vec<Option<ShardEntry>> = identities
        .iter()
        .map(|identity| {
            previous
                .iter()
                .find(|entry| identity.matches(entry) && shard_files_fit(dir, entry, fresh.width))
                .filter(|entry| !(strict && entry.read.malformed_lines > 0))
                .cloned()
        })
        .collect();
    let reused = slots.iter().flatten().count();
    let mut todo: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_none()).collect();
    // Largest first, so the pool is not left waiting on one big file at the end.
    todo.sort_by_key(|&i| std::cmp::Reverse(identities[i].size));
    let tokenized_bytes = todo.iter().map(|&i| identities[i].size).sum();
    if verbose && reused > 0 {
        eprintln!("data: reusing {reused} of {} token shards in {}", slots.len(), dir.display());
    }
    let progress = Progress::new(verbose && !todo.is_empty(), tokenized_bytes, source);
    let state = Mutex::new((std::mem::take(&mut slots), fresh.clone()));
    let result = todo.par_iter().try_for_each(|&index| {
        let entry =
            tokenize_file(source, index, &identities[index], tokenizer, dir, fresh.width, strict, &progress)?;
        let mut guard =
            state.lock().map_err(|_| DataError::InvalidConfig { reason: "poisoned lock".into() })?;
        let (slots, manifest) = &mut *guard;
        slots[index] = Some(entry);
        manifest.shards = slots.iter().flatten().cloned().collect();
        save_manifest(dir, manifest)
    });
    progress.finish();
    result?;
    let (slots, mut manifest) =
        state.into_inner().map_err(|_| DataError::InvalidConfig { reason: "poisoned lock".into() })?;
    manifest.shards = slots.into_iter().flatten().collect();
    save_manifest(dir, &manifest)?;
    remove_unlisted_shards(dir, &manifest);
    let fresh_entries = || todo.iter().map(|&i| &manifest.shards[i]);
    let tokenized_text_bytes = fresh_entries().map(|entry| entry.read.text_bytes).sum();
    let tokenized_tokens = fresh_entries().map(|entry| entry.tokens).sum();
    let set = ShardSet {
        dir: dir.to_path_buf(),
        tokenized: todo.len(),
        reused,
        tokenized_bytes,
        tokenized_text_bytes,
        tokenized_tokens,
        seconds: start.elapsed().as_secs_f64(),
        manifest,
    };
    if verbose && !todo.is_empty() {
        let read = set.read_report();
        eprintln!(
            "data: tokenized {} files ({} documents, {} MB of text) of {} into {} tokens in {:.1} s; shards in {}",
            set.tokenized,
            read.documents,
            read.text_bytes >> 20,
            source.path.display(),
            set.tokens(),
            set.seconds,
            dir.display()
        );
    }
    Ok(set)
}

/// A corpus file as the manifest identifies it.
struct Identity {
    path: PathBuf,
    size: u64,
    modified_ns: u64,
}

impl Identity {
    fn matches(&self, entry: &ShardEntry) -> bool {
        entry.source == self.path && entry.size == self.size && entry.modified_ns == self.modified_ns
    }
}

fn identify(path: &Path) -> Result<Identity> {
    let metadata = std::fs::metadata(path).map_err(io_error(path))?;
    let path = std::fs::canonicalize(path).map_err(io_error(path))?;
    Ok(Identity { path, size: metadata.len(), modified_ns: modified_ns(&metadata) })
}

/// Whether the entry's shard files are there with the sizes it promises (their contents are checked
/// when mapped).
fn shard_files_fit(dir: &Path, entry: &ShardEntry, width: IdWidth) -> bool {
    let size = |suffix| std::fs::metadata(shard_file(dir, &entry.name, suffix)).map(|m| m.len()).ok();
    size(IDS) == entry.tokens.checked_mul(width.bytes()) && size(ENDS) == entry.documents.checked_mul(8)
}

/// The suffixes of a shard's two files.
const IDS: &str = "ids";
const ENDS: &str = "ends";

/// The file `<name>.<suffix>` of a shard in `dir`.
fn shard_file(dir: &Path, name: &str, suffix: &str) -> PathBuf {
    dir.join(format!("{name}.{suffix}"))
}

/// The shard name of a corpus file: its file name made safe, and a hash of its full path.
fn shard_name(path: &Path) -> String {
    let name: String = path
        .file_name()
        .map(|n| {
            n.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
        })
        .unwrap_or_default();
    let mut hash = Fnv::new();
    hash.write(path.to_string_lossy().as_bytes());
    format!("{name}-{:016x}", hash.finish())
}

/// Tokenizes file `index` of `source` into its shard: written under temporary names, synced, renamed.
#[allow(clippy::too_many_arguments)]
fn tokenize_file(
    source: &CorpusSource,
    index: usize,
    identity: &Identity,
    tokenizer: &Tokenizer,
    dir: &Path,
    width: IdWidth,
    strict: bool,
    progress: &Progress,
) -> Result<ShardEntry> {
    let name = shard_name(&identity.path);
    let temp_path = |suffix| shard_file(dir, &name, &format!("{suffix}.tmp{}", std::process::id()));
    let mut writer = ShardWriter::create(&temp_path(IDS), &temp_path(ENDS), width)?;
    let eos = tokenizer.eos_id();
    let mut batch: Vec<String> = Vec::new();
    let mut batch_bytes = 0;
    let flush = |batch: &mut Vec<String>, writer: &mut ShardWriter| -> Result<()> {
        let documents = batch.len() as u64;
        let before = writer.tokens;
        for ids in tokenizer.encode_batch(batch)? {
            writer.document(&ids, eos)?;
        }
        batch.clear();
        progress.advance(documents, writer.tokens - before);
        Ok(())
    };
    let (read, _) = source.read_file(index, strict, Some(&progress.bytes), &mut |text| {
        batch_bytes += text.len();
        batch.push(text);
        if batch_bytes >= BATCH_BYTES {
            flush(&mut batch, &mut writer)?;
            batch_bytes = 0;
        }
        Ok(true)
    })?;
    flush(&mut batch, &mut writer)?;
    let (documents, tokens, max_id) = (writer.documents, writer.tokens, writer.max_id);
    writer.finish()?;
    for suffix in [IDS, ENDS] {
        let path = shard_file(dir, &name, suffix);
        std::fs::rename(temp_path(suffix), &path).map_err(io_error(&path))?;
    }
    Ok(ShardEntry {
        source: identity.path.clone(),
        size: identity.size,
        modified_ns: identity.modified_ns,
        name,
        documents,
        tokens,
        max_id,
        read,
    })
}

/// Streams one shard's two files.
struct ShardWriter {
    ids: BufWriter<File>,
    ends: BufWriter<File>,
    ids_path: PathBuf,
    width: IdWidth,
    documents: u64,
    tokens: u64,
    max_id: Option<u32>,
}

impl ShardWriter {
    fn create(ids_path: &Path, ends_path: &Path, width: IdWidth) -> Result<ShardWriter> {
        let open = |path: &Path| {
            File::create(path).map(|f| BufWriter::with_capacity(1 << 20, f)).map_err(io_error(path))
        };
        Ok(ShardWriter {
            ids: open(ids_path)?,
            ends: open(ends_path)?,
            ids_path: ids_path.to_path_buf(),
            width,
            documents: 0,
            tokens: 0,
            max_id: None,
        })
    }

    /// Appends a document's ids and `eos`, and its end.
    fn document(&mut self, ids: &[u32], eos: u32) -> Result<()> {
        for &id in ids.iter().chain([&eos]) {
            match self.width {
                IdWidth::U16 => {
                    let narrow = u16::try_from(id).map_err(|_| DataError::TokenOutOfRange {
                        path: self.ids_path.clone(),
                        id,
                        vocab: 1 << 16,
                    })?;
                    self.ids.write_all(&narrow.to_le_bytes())
                }
                IdWidth::U32 => self.ids.write_all(&id.to_le_bytes()),
            }
            .map_err(io_error(&self.ids_path))?;
            self.max_id = self.max_id.max(Some(id));
        }
        self.tokens += ids.len() as u64 + 1;
        self.documents += 1;
        self.ends.write_all(&self.tokens.to_le_bytes()).map_err(io_error(&self.ids_path))
    }

    /// Flushes and syncs both files, so the rename that follows publishes complete files.
    fn finish(self) -> Result<()> {
        let path = self.ids_path;
        for writer in [self.ids, self.ends] {
            let file = writer
                .into_inner()
                .map_err(|err| DataError::Io { path: path.clone(), source: err.into_error() })?;
            file.sync_all().map_err(io_error(&path))?;
        }
        Ok(())
    }
}

fn save_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|err| DataError::BadCache { path: path.clone(), reason: err.to_string() })?;
    write_atomically(&path, &json)
}

/// Deletes `.ids` / `.ends` files the manifest no longer lists (shards of files that left the corpus or
/// were tokenized again under the same name are replaced, not listed twice). Failures are ignored: a
/// leftover file only costs disk space.
fn remove_unlisted_shards(dir: &Path, manifest: &Manifest) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = [IDS, ENDS].iter().find_map(|suffix| file.strip_suffix(&format!(".{suffix}")[..]))
        else {
            continue;
        };
        if !manifest.shards.iter().any(|shard| shard.name == stem) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The progress bar of a preparation: bytes of the files read so far against their total, documents,
/// tokens and tokens per second.
struct Progress {
    bar: ProgressBar,
    bytes: AtomicU64,
    documents: AtomicU64,
    tokens: AtomicU64,
    start: Instant,
}

impl Progress {
    fn new(visible: bool, total_bytes: u64, source: &CorpusSource) -> Progress {
        let bar = if visible {
            let bar =
                ProgressBar::new(total_bytes).with_prefix(format!("tokenizing {}", source.path.display()));
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix}: [{bar:30}] {binary_bytes}/{binary_total_bytes}, {msg}, ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        } else {
            ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::hidden())
        };
        Progress {
            bar,
            bytes: AtomicU64::new(0),
            documents: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    fn advance(&self, documents: u64, tokens: u64) {
        let documents = self.documents.fetch_add(documents, Ordering::Relaxed) + documents;
        let tokens = self.tokens.fetch_add(tokens, Ordering::Relaxed) + tokens;
        let rate = tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_position(self.bytes.load(Ordering::Relaxed));
        self.bar.set_message(format!("{documents} documents, {tokens} tokens, {:.0}k tokens/s", rate / 1e3));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

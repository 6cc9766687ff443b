//! A corpus as one stream of token ids, read in place: memory-mapped token shards (or `.bin` files), or
//! a buffer in memory for small corpora and tests.
//!
//! The stream is the concatenation of its segments (one per source file). Tokenized text stores every
//! document followed by its eos id, and an index of where each document ends, so a packed window and a
//! document are both plain ranges of the stream and nothing is copied or held per document. A `.bin`
//! stream is taken as is and has no documents. Only the pages of the windows a batch reads are touched,
//! so resident memory does not grow with the corpus.
use super::error::{io_error, DataError, Result};
use memmap2::Mmap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Ids stored as little-endian integers of one width.
#[derive(Debug)]
enum Ids {
    U16(Bytes),
    U32(Bytes),
    Memory(Vec<u32>),
}

/// File bytes, mapped (an empty file cannot be mapped and has no bytes anyway).
#[derive(Debug)]
enum Bytes {
    Mapped(Mmap),
    Empty,
}

impl Bytes {
    fn map(path: &Path) -> Result<Bytes> {
        let file = File::open(path).map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        if len == 0 {
            return Ok(Bytes::Empty);
        }
        // SAFETY: the map is read-only, and shard files are only ever replaced by rename, never written in
        // place, so the mapped pages do not change under us.
        let map = unsafe { Mmap::map(&file) }.map_err(io_error(path))?;
        Ok(Bytes::Mapped(map))
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Empty => &[],
        }
    }
}

impl Ids {
    fn len(&self) -> u64 {
        match self {
            Ids::U16(bytes) => bytes.as_slice().len() as u64 / 2,
            Ids::U32(bytes) => bytes.as_slice().len() as u64 / 4,
            Ids::Memory(ids) => ids.len() as u64,
        }
    }

    /// Appends ids `range` to `out`.
    fn extend(&self, range: Range<usize>, out: &mut Vec<u32>) {
        match self {
            Ids::U16(bytes) => out.extend(
                bytes.as_slice()[range.start * 2..range.end * 2]
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32),
            ),
            Ids::U32(bytes) => out.extend(
                bytes.as_slice()[range.start * 4..range.end * 4]
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Ids::Memory(ids) => out.extend_from_slice(&ids[range]),
        }
    }
}

/// Where each document of a segment ends (exclusive, in the segment's ids), ascending.
#[derive(Debug)]
enum Ends {
    Mapped(Bytes),
    Memory(Vec<u64>),
}

impl Ends {
    fn len(&self) -> u64 {
        match self {
            Ends::Mapped(bytes) => bytes.as_slice().len() as u64 / 8,
            Ends::Memory(ends) => ends.len() as u64,
        }
    }

    fn get(&self, index: u64) -> u64 {
        match self {
            Ends::Mapped(bytes) => {
                let at = index as usize * 8;
                let mut word = [0u8; 8];
                word.copy_from_slice(&bytes.as_slice()[at..at + 8]);
                u64::from_le_bytes(word)
            }
            Ends::Memory(ends) => ends[index as usize],
        }
    }
}

/// One source file's ids, and its document index unless it is a raw `.bin` stream.
#[derive(Debug)]
struct Segment {
    ids: Ids,
    ends: Option<Ends>,
    /// The file the segment was read from (or derived from), for messages.
    source: PathBuf,
}

/// Id width of a shard file: 2 bytes when every id of the tokenizer fits in u16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdWidth {
    U16,
    U32,
}

impl IdWidth {
    /// The narrowest width that holds every id below `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> IdWidth {
        if vocab_size <= 1 << 16 {
            IdWidth::U16
        } else {
            IdWidth::U32
        }
    }

    pub fn bytes(self) -> u64 {
        match self {
            IdWidth::U16 => 2,
            IdWidth::U32 => 4,
        }
    }
}

/// The files of one tokenized shard and what its manifest promises about them.
#[derive(Clone, Debug)]
pub(crate) struct ShardFiles {
    /// The corpus file the shard was tokenized from.
    pub source: PathBuf,
    pub ids: PathBuf,
    pub ends: PathBuf,
    pub width: IdWidth,
    pub tokens: u64,
    pub documents: u64,
}

fn map_shard(shard: &ShardFiles) -> Result<Segment> {
    let bytes = Bytes::map(&shard.ids)?;
    let len = bytes.as_slice().len() as u64;
    if Some(len) != shard.tokens.checked_mul(shard.width.bytes()) {
        return Err(DataError::BadCache {
            path: shard.ids.clone(),
            reason: format!("{len} bytes, but the manifest promises {} {:?} ids", shard.tokens, shard.width),
        });
    }
    let ids = match shard.width {
        IdWidth::U16 => Ids::U16(bytes),
        IdWidth::U32 => Ids::U32(bytes),
    };
    check_ends(&shard.ends, shard.tokens, shard.documents)?;
    let ends = Ends::Mapped(Bytes::map(&shard.ends)?);
    Ok(Segment { ids, ends: Some(ends), source: shard.source.clone() })
}

/// The token stream of a corpus; see the module documentation.
#[derive(Debug)]
pub struct TokenStream {
    segments: Vec<Segment>,
    /// `token_starts[s]` is the stream position of segment `s`'s first id; one more entry, the total.
    token_starts: Vec<u64>,
    /// `doc_starts[s]` is the index of segment `s`'s first document; one more entry, the total.
    doc_starts: Vec<u64>,
}

impl TokenStream {
    /// Documents in memory, each followed by `eos_id` in the stream.
    pub fn from_documents<D: AsRef<[u32]>>(documents: &[D], eos_id: u32) -> TokenStream {
        let mut ids = Vec::new();
        let mut ends = Vec::with_capacity(documents.len());
        for document in documents {
            ids.extend_from_slice(document.as_ref());
            ids.push(eos_id);
            ends.push(ids.len() as u64);
        }
        let segment =
            Segment { ids: Ids::Memory(ids), ends: Some(Ends::Memory(ends)), source: "memory".into() };
        TokenStream::new(vec![segment])
    }

    /// One stream in memory, without documents (the form of a `.bin`).
    pub fn from_ids(ids: Vec<u32>) -> TokenStream {
        TokenStream::new(vec![Segment { ids: Ids::Memory(ids), ends: None, source: "memory".into() }])
    }

    /// `.bin` files of little-endian u16 ids, mapped and concatenated; no documents.
    pub fn map_bins(paths: &[PathBuf]) -> Result<TokenStream> {
        let mut segments = Vec::with_capacity(paths.len());
        for path in paths {
            let bytes = Bytes::map(path)?;
            let len = bytes.as_slice().len() as u64;
            if !len.is_multiple_of(2) {
                return Err(DataError::OddBinLength { path: path.clone(), bytes: len });
            }
            segments.push(Segment { ids: Ids::U16(bytes), ends: None, source: path.clone() });
        }
        Ok(TokenStream::new(segments))
    }

    /// Tokenized shards, mapped in order; each is checked to hold the ids and documents it promises,
    /// with document ends rising to its id count, so that no later read can leave a file.
    pub(crate) fn map_shards(shards: &[ShardFiles]) -> Result<TokenStream> {
        let segments = shards.iter().map(map_shard).collect::<Result<Vec<_>>>()?;
        Ok(TokenStream::new(segments))
    }

    fn new(segments: Vec<Segment>) -> TokenStream {
        let mut token_starts = vec![0];
        let mut doc_starts = vec![0];
        for segment in &segments {
            token_starts.push(token_starts.last().copied().unwrap_or(0) + segment.ids.len());
            let documents = segment.ends.as_ref().map_or(0, Ends::len);
            doc_starts.push(doc_starts.last().copied().unwrap_or(0) + documents);
        }
        TokenStream { segments, token_starts, doc_starts }
    }

    pub fn num_tokens(&self) -> u64 {
        self.token_starts.last().copied().unwrap_or(0)
    }

    /// Documents in the stream; `None` for a raw stream (a `.bin`), which has no boundaries.
    pub fn num_documents(&self) -> Option<u64> {
        let raw = self.segments.iter().any(|segment| segment.ends.is_none());
        (!raw).then(|| self.doc_starts.last().copied().unwrap_or(0))
    }

    /// Appends the `len` ids at stream position `start` (which must lie in the stream) to `out`.
    pub fn extend(&self, start: u64, len: u64, out: &mut Vec<u32>) {
        let (mut at, end) = (start, start + len);
        while at < end {
            let segment = self.token_starts.partition_point(|&s| s <= at) - 1;
            let base = self.token_starts[segment];
            let stop = end.min(self.token_starts[segment + 1]);
            self.segments[segment].ids.extend((at - base) as usize..(stop - base) as usize, out);
            at = stop;
        }
    }

    /// The stream positions of document `index` (its eos included).
    pub fn document(&self, index: u64) -> Range<u64> {
        let segment = self.doc_starts.partition_point(|&s| s <= index) - 1;
        let local = index - self.doc_starts[segment];
        let ends = self.segments[segment].ends.as_ref().expect("documents exist only in indexed segments");
        let start = if local == 0 { 0 } else { ends.get(local - 1) };
        let base = self.token_starts[segment];
        base + start..base + ends.get(local)
    }

    /// Every id, in order (for tests and small corpora).
    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.num_tokens() as usize);
        self.extend(0, self.num_tokens(), &mut out);
        out
    }

    /// The first id `>= bound`, with the file it came from and its position in that file's ids: read in
    /// blocks, to name the culprit when a vocabulary check fails.
    pub fn first_id_at_least(&self, bound: u32) -> Option<(PathBuf, u64, u32)> {
        const BLOCK: u64 = 1 << 20;
        let mut block = Vec::with_capacity(BLOCK as usize);
        for (segment, data) in self.segments.iter().enumerate() {
            let (base, len) = (self.token_starts[segment], data.ids.len());
            for offset in (0..len).step_by(BLOCK as usize) {
                block.clear();
                self.extend(base + offset, BLOCK.min(len - offset), &mut block);
                if let Some(at) = block.iter().position(|&id| id >= bound) {
                    return Some((data.source.clone(), offset + at as u64, block[at]));
                }
            }
        }
        None
    }
}

/// Checks that the document index `path` holds `documents` u64 ends that rise strictly (every document
/// holds at least its eos) to `tokens`, reading it through a buffer rather than the map so that the check
/// leaves no pages resident.
fn check_ends(path: &Path, tokens: u64, documents: u64) -> Result<()> {
    use std::io::Read;
    let bad = |reason: String| DataError::BadCache { path: path.to_path_buf(), reason };
    let len = std::fs::metadata(path).map_err(io_error(path))?.len();
    if Some(len) != documents.checked_mul(8) {
        return Err(bad(format!("{len} bytes, but the manifest promises {documents} document ends")));
    }
    let mut reader = std::io::BufReader::with_capacity(1 << 20, File::open(path).map_err(io_error(path))?);
    let (mut previous, mut word) = (0u64, [0u8; 8]);
    for index in 0..documents {
        reader.read_exact(&mut word).map_err(io_error(path))?;
        let end = u64::from_le_bytes(word);
        if end <= previous || end > tokens {
            return Err(bad(format!(
                "document {index} ends at {end}, after {previous}: the index is damaged"
            )));
        }
        previous = end;
    }
    if previous != tokens {
        return Err(bad(format!("the documents end at {previous}, the ids at {tokens}")));
    }
    Ok(())
}

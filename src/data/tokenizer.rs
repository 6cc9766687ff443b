//! Tokenizers through the Hugging Face `tokenizers` crate (pure-Rust features only): any `tokenizer.json`
//! loads, and a byte-level BPE can be trained on a corpus with the T5 layout of special ids (docs/METHOD.md
//! sections 3 and 6: pad 0, eos 1).
use super::corpus::Fnv;
use super::error::{io_error, DataError, Result};
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, TokenizerBuilder};

/// The padding token of a trained tokenizer; its id is [`PAD_ID`].
pub const PAD_TOKEN: &str = "<pad>";
/// The end-of-document token of a trained tokenizer; its id is [`EOS_ID`].
pub const EOS_TOKEN: &str = "</s>";
/// The unknown token of a trained tokenizer (id 2); byte-level BPE never emits it, it only keeps the T5
/// layout of ids.
pub const UNK_TOKEN: &str = "<unk>";
pub const PAD_ID: u32 = 0;
pub const EOS_ID: u32 = 1;
/// The smallest byte-level BPE: 256 byte symbols plus the three special tokens.
pub const MIN_BPE_VOCAB: usize = 259;

/// Names an end-of-document token goes by in published tokenizers, tried in order.
const EOS_NAMES: [&str; 5] = ["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[SEP]"];
/// Names a padding token goes by, tried in order; without one, padding reuses the eos id.
const PAD_NAMES: [&str; 4] = ["<pad>", "[PAD]", "<|pad|>", "<|padding|>"];

/// A tokenizer with the ids the pipeline needs: `pad_id` right-pads documents (and carries no loss),
/// `eos_id` ends every document.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
    eos_id: u32,
    hash: u64,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pad_id", &self.pad_id)
            .field("eos_id", &self.eos_id)
            .field("hash", &format_args!("{:016x}", self.hash))
            .finish()
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json` (T5's, GPT-2's, one this module trained, ...). Truncation and
    /// padding stored in the file are switched off: the batcher does both.
    pub fn load(path: &Path) -> Result<Tokenizer> {
        let json = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DataError::MissingPath { path: path.to_path_buf() },
            _ => DataError::Io { path: path.to_path_buf(), source },
        })?;
        Self::from_json(&json).map_err(|err| {
            let reason = match err {
                DataError::Tokenizer { reason } => reason,
                other => other.to_string(),
            };
            DataError::TokenizerLoad { path: path.to_path_buf(), reason }
        })
    }

    /// Parses the JSON text of a `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Tokenizer> {
        let mut inner: tokenizers::Tokenizer = json
            .parse()
            .map_err(|err| DataError::Tokenizer { reason: format!("not a tokenizer.json: {err}") })?;
        inner.with_truncation(None).map_err(tokenizer_error)?;
        inner.with_padding(None);
        Self::wrap(inner)
    }

    /// Trains a byte-level BPE of `vocab_size` entries on `texts`. Ids 0, 1, 2 are `<pad>`, `</s>`,
    /// `<unk>`; every byte has a symbol, so any text encodes and decodes back exactly.
    pub fn train_bpe<I, S>(texts: I, vocab_size: usize, show_progress: bool) -> Result<Tokenizer>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        if vocab_size < MIN_BPE_VOCAB {
            return Err(DataError::InvalidConfig {
                reason: format!(
                    "a byte-level BPE needs at least {MIN_BPE_VOCAB} entries (256 bytes + 3 special \
                     tokens), asked for {vocab_size}"
                ),
            });
        }
        let specials = [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN].map(|t| AddedToken::from(t, true)).to_vec();
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(show_progress)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        // No prefix space: decode(encode(text)) == text for every string.
        let byte_level = ByteLevel::new(false, true, true);
        let mut tokenizer =
            TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, PostProcessorWrapper, ByteLevel>::new()
                .with_model(BPE::default())
                .with_pre_tokenizer(Some(byte_level))
                .with_decoder(Some(byte_level))
                .build()
                .map_err(tokenizer_error)?;
        tokenizer.train(&mut trainer, texts).map_err(tokenizer_error)?;
        let trained = Self::wrap(tokenizers::Tokenizer::from(tokenizer))?;
        if trained.pad_id != PAD_ID || trained.eos_id != EOS_ID {
            return Err(DataError::Tokenizer {
                reason: format!(
                    "trained BPE put pad at {} and eos at {}, expected {PAD_ID} and {EOS_ID}",
                    trained.pad_id, trained.eos_id
                ),
            });
        }
        Ok(trained)
    }

    fn wrap(inner: tokenizers::Tokenizer) -> Result<Tokenizer> {
        let find = |names: &[&str]| names.iter().find_map(|name| inner.token_to_id(name));
        let eos_id = find(&EOS_NAMES).ok_or_else(|| DataError::Tokenizer {
            reason: format!("no end-of-document token: the tokenizer has none of {}", EOS_NAMES.join(", ")),
        })?;
        let pad_id = find(&PAD_NAMES).unwrap_or(eos_id);
        let json = inner.to_string(false).map_err(tokenizer_error)?;
        let mut hash = Fnv::new();
        hash.write(json.as_bytes());
        Ok(Tokenizer { inner, pad_id, eos_id, hash: hash.finish() })
    }

    /// The ids of `text`, without special tokens (the batcher appends `eos_id` itself).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(tokenizer_error)?.get_ids().to_vec())
    }

    /// [`Tokenizer::encode`] of many texts, in parallel on the rayon pool (without the character offsets,
    /// which the pipeline does not use; the ids are the same).
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self.inner.encode_batch_fast(inputs, false).map_err(tokenizer_error)?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// The text of `ids`, skipping special tokens (pad, eos).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tokenizer_error)
    }

    /// Number of ids, special tokens included: the model's vocabulary must be at least this large.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// FNV-1a of the serialised tokenizer: caches of tokenized corpora are keyed by it.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The serialised `tokenizer.json`.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tokenizer_error)
    }

    /// Writes `tokenizer.json` text to `path` (through a temporary file, so a crash leaves no half file).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        write_atomically(path, self.to_json()?.as_bytes())
    }

    /// Saves the tokenizer as `dir/tokenizer.json` (a run directory keeps the tokenizer it was trained
    /// with) and returns that path.
    pub fn save_into_dir(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("tokenizer.json");
        self.save(&path)?;
        Ok(path)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Checks that every id a tokenizer of `tokenizer_vocab` entries emits has a row in a model embedding of
/// `model_vocab` rows.
pub fn check_vocab(tokenizer_vocab: usize, model_vocab: usize) -> Result<()> {
    if tokenizer_vocab > model_vocab {
        return Err(DataError::VocabTooLarge { tokenizer_vocab, model_vocab });
    }
    Ok(())
}

/// Writes `bytes` to `path.tmp<pid>` and renames it over `path`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let temporary = path.with_file_name(name);
    std::fs::write(&temporary, bytes).map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error(path))
}

fn tokenizer_error(err: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer { reason: err.to_string() }
}

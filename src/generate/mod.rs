//! Generating text from a checkpoint: load the model and its tokenizer ([`load()`]), encode prompts,
//! generate with the KV-cached inference of `cola_nn` (batched across prompts), and decode tokens to
//! text as they come ([`TextStream`]). `examples/generate.rs` is the command line over this module.
pub mod load;

pub use load::{check_device, find_tokenizer, infer_config, load, locate, read_shapes, CheckpointFiles};
pub use load::{LoadOptions, Loaded};

use crate::data::{DataError, Tokenizer};
use crate::train::TrainError;
use cola_nn::{check_prompt, GenerateOptions, Generated, Llama, NnError};
use cola_tensor::{Device, TensorError};
use std::path::PathBuf;

/// The errors of loading and generating; each names the file, setting or prompt at fault.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("checkpoint {}: {reason}", .path.display())]
    Checkpoint { path: PathBuf, reason: String },
    #[error("--device {device}: {reason}")]
    Device { device: Device, reason: String },
    #[error("{0}")]
    Prompt(String),
    #[error(transparent)]
    Nn(#[from] NnError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

pub type Result<T> = std::result::Result<T, GenerateError>;

/// The token ids of each prompt, checked against the model (non-empty, within its context).
pub fn encode_prompts(model: &Llama, tokenizer: &Tokenizer, prompts: &[String]) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() {
        return Err(GenerateError::Prompt("no prompt: pass --prompt TEXT (several for a batch)".into()));
    }
    let mut encoded = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let ids = tokenizer.encode(prompt)?;
        let vocab = model.config().vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::Prompt(format!(
                "prompt {} ({:?}) encodes to token id {id}, which the model's vocabulary of {vocab} lacks (the \
                 tokenizer has {} entries)",
                i + 1,
                shorten(prompt),
                tokenizer.vocab_size()
            )));
        }
        check_prompt(model, &ids).map_err(|e| {
            let reason = match e {
                NnError::InvalidInput { reason } => reason,
                other => other.to_string(),
            };
            GenerateError::Prompt(format!("prompt {} ({:?}): {reason}", i + 1, shorten(prompt)))
        })?;
        encoded.push(ids);
    }
    Ok(encoded)
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// Turns a stream of token ids into a stream of text: each [`TextStream::push`] returns the text the
/// new token adds. Byte-level tokens can end inside a UTF-8 character; such a tail is held back until
/// the character is complete.
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    pub fn new() -> TextStream {
        TextStream::default()
    }

    /// Adds `id` and returns the newly completed text (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids)?;
        let complete = text.trim_end_matches('\u{FFFD}');
        if complete.len() < self.emitted || !complete.is_char_boundary(self.emitted) {
            return Ok(String::new());
        }
        let new = complete[self.emitted..].to_string();
        self.emitted = complete.len();
        Ok(new)
    }

    /// What is left (a held-back incomplete character, as the tokenizer decodes it).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let text = tokenizer.decode(&self.ids)?;
        let rest = text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = text.len();
        Ok(rest)
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// Generates from each prompt (batched); `on_text(prompt_index, fragment)` receives the text of every
/// token as soon as it is picked. Returns the token ids and the full continuation of each prompt.
pub fn generate_text(
    loaded: &Loaded,
    prompts: &[String],
    options: &GenerateOptions,
    mut on_text: impl FnMut(usize, &str),
) -> Result<(Generated, Vec<String>)> {
    let encoded = encode_prompts(&loaded.model, &loaded.tokenizer, prompts)?;
    let views: Vec<&[u32]> = encoded.iter().map(Vec::as_slice).collect();
    let mut streams = vec![TextStream::new(); prompts.len()];
    let mut failure = None;
    let generated = cola_nn::generate(&loaded.model, &views, options, |row, id| {
        match streams[row].push(&loaded.tokenizer, id) {
            Ok(text) if !text.is_empty() => on_text(row, &text),
            Ok(_) => {}
            Err(e) => failure = failure.take().or(Some(e)),
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let mut texts = Vec::with_capacity(prompts.len());
    for (row, stream) in streams.iter_mut().enumerate() {
        let rest = stream.finish(&loaded.tokenizer)?;
        if !rest.is_empty() {
            on_text(row, &rest);
        }
        texts.push(loaded.tokenizer.decode(stream.ids())?);
    }
    Ok((generated, texts))
}

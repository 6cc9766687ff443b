//! A short sample at each evaluation, as nanoGPT prints one: the first tokens of the first validation
//! sequence, continued greedily by the model with the KV-cached inference of `cola_nn`. Always the same
//! prompt, so samples of successive evaluations compare; a few dozen decode steps, cheap next to the
//! evaluation itself.
use super::Result;
use crate::data::Dataset;
use cola_nn::{generate, GenerateOptions, Llama};

/// Tokens of the validation set the sample starts from.
pub const SAMPLE_PROMPT_TOKENS: usize = 8;
/// Tokens generated after them.
pub const SAMPLE_NEW_TOKENS: usize = 32;

/// The prompt (the first non-pad tokens of the first validation sequence) and the greedy continuation
/// of `model`, as text when the data has a tokenizer and as ids otherwise; `None` without validation
/// tokens.
pub fn sample(model: &Llama, dataset: &Dataset) -> Result<Option<(String, String)>> {
    let Some(batch) = dataset.val_batches(1)?.next() else { return Ok(None) };
    let limit = SAMPLE_PROMPT_TOKENS.min(model.config().max_seq_len);
    let prompt: Vec<u32> =
        batch.row(0).iter().copied().filter(|&id| id != dataset.pad_id()).take(limit).collect();
    if prompt.is_empty() {
        return Ok(None);
    }
    let options = GenerateOptions {
        max_new_tokens: SAMPLE_NEW_TOKENS,
        stop_token: Some(dataset.eos_id()),
        ..GenerateOptions::default()
    };
    let generated = generate(model, &[&prompt], &options, |_, _| {})?;
    let continuation = &generated.tokens[0];
    Ok(Some(match dataset.tokenizer() {
        Some(tokenizer) => (tokenizer.decode(&prompt)?, tokenizer.decode(continuation)?),
        None => (format!("{prompt:?}"), format!("{continuation:?}")),
    }))
}

/// One line for the progress output: `sample: "<prompt>" -> "<continuation>"`, control characters
/// escaped so the line stays one line. A failure is reported in the line, never stops training.
pub fn sample_line(model: &Llama, dataset: &Dataset) -> String {
    match sample(model, dataset) {
        Ok(Some((prompt, continuation))) => format!("sample: {prompt:?} -> {continuation:?}"),
        Ok(None) => "sample: no validation tokens to start from".into(),
        Err(error) => format!("sample: failed: {error}"),
    }
}

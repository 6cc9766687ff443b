//! Text generation from token ids: prefill the prompts, then pick and decode one token per row per step
//! until each row reaches `max_new_tokens`, emits the stop token, or fills the model's context.
//! Rows that stop leave the batch (their cache is freed); the others go on decoding together.
use crate::error::{NnError, Result};
use crate::inference::{check_tokens, Session};
use crate::model::Llama;
use crate::sampling::{Sampler, SamplingConfig};

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenerateOptions {
    /// New tokens per row at most.
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Seeds the sampler (unused when greedy).
    pub seed: u64,
    /// A row stops when it picks this token (end of document); the token is not part of the output.
    pub stop_token: Option<u32>,
}

impl Default for GenerateOptions {
    fn default() -> GenerateOptions {
        GenerateOptions { max_new_tokens: 64, sampling: SamplingConfig::greedy(), seed: 0, stop_token: None }
    }
}

/// Why a row stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// It produced `max_new_tokens` tokens.
    MaxTokens,
    /// It picked the stop token.
    StopToken,
    /// Prompt plus output filled the model's context (`max_seq_len`); the last token is still output.
    ContextFull,
}

/// The new tokens of every row (prompts not included) and why each row stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub tokens: Vec<Vec<u32>>,
    pub stops: Vec<StopReason>,
}

/// Checks a prompt can be run by `model`: non-empty, at most `max_seq_len` tokens, ids below
/// `vocab_size`.
pub fn check_prompt(model: &Llama, prompt: &[u32]) -> Result<()> {
    check_tokens(model.config(), prompt, 0)
}

/// Generates from each prompt, all rows batched; `on_token(row, token)` sees every new token as soon as
/// it is picked (for streaming).
pub fn generate(
    model: &Llama,
    prompts: &[&[u32]],
    options: &GenerateOptions,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Generated> {
    if prompts.is_empty() {
        return Err(NnError::InvalidInput { reason: "no prompt to generate from".into() });
    }
    for (i, prompt) in prompts.iter().enumerate() {
        check_prompt(model, prompt).map_err(|e| match e {
            NnError::InvalidInput { reason } => {
                NnError::InvalidInput { reason: format!("prompt {i}: {reason}") }
            }
            other => other,
        })?;
    }
    let mut sampler = Sampler::new(options.sampling, options.seed)?;
    let mut generated = Generated {
        tokens: vec![Vec::new(); prompts.len()],
        stops: vec![StopReason::MaxTokens; prompts.len()],
    };
    if options.max_new_tokens == 0 {
        return Ok(generated);
    }
    let (vocab, context) = (model.config().vocab_size, model.config().max_seq_len);
    let mut session = Session::new(model);
    let mut logits = session.prefill(prompts)?;
    // `active[j]` is the prompt index of the session's row j.
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    loop {
        let values: Vec<f32> = logits.to_vec_f64().into_iter().map(|x| x as f32).collect();
        let lengths = session.lengths();
        let (mut keep, mut next) = (vec![true; active.len()], Vec::with_capacity(active.len()));
        for (j, &row) in active.iter().enumerate() {
            let token = sampler.sample(&values[j * vocab..(j + 1) * vocab]);
            let stop = if Some(token) == options.stop_token {
                Some(StopReason::StopToken)
            } else {
                generated.tokens[row].push(token);
                on_token(row, token);
                if generated.tokens[row].len() >= options.max_new_tokens {
                    Some(StopReason::MaxTokens)
                } else if lengths[j] >= context {
                    Some(StopReason::ContextFull)
                } else {
                    None
                }
            };
            match stop {
                Some(reason) => {
                    generated.stops[row] = reason;
                    keep[j] = false;
                }
                None => next.push(token),
            }
        }
        session.retain(&keep);
        let mut flags = keep.iter();
        active.retain(|_| flags.next().copied().unwrap_or(false));
        if active.is_empty() {
            return Ok(generated);
        }
        logits = session.decode(&next)?;
    }
}

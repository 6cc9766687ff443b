//! Inference without a tape: the model's own forward ([`Llama::hidden_states`], written once against
//! [`Graph`]) run by an eager executor bound to a [`KvCache`], so that a prompt is run once
//! ([`Session::prefill`]) and each generated token costs one position ([`Session::decode`]).
//!
//! The executor ([`CachedGraph`]) computes every op like [`cola_autograd::Eager`] does, except two:
//! RoPE shifts each row's positions by the tokens that row has already seen, and attention appends the
//! new keys (after RoPE, so a cached key never changes) and values to the row's cache and attends to the
//! whole cache (the fused attention's `q_len <= kv_len` causal offset: query `i` of a call sits at
//! position `len + i`). The head runs on the last position of each row only.
//!
//! Rows are independent sequences of any lengths: prefill groups the new prompts by length and runs each
//! group as one batch; decode runs every row's next token in one batch (the projections, norms and head
//! see `[rows, 1, d_model]`), with RoPE positions per row and attention per row against its own cache.
//! Everything runs on the device of the model's weights; new tensors come only from ops on them.
//!
//! bf16 weights (`Llama::to_device(.., DType::BF16)`) make every activation bf16; each op takes bf16 on
//! the CPU (the matmuls on the bf16 GEMM, whose few-row path reads the weights in place; the rest in f32
//! on upcast copies of their inputs), except two that run here: the embedding lookup gathers its rows
//! (the op itself would upcast the whole `[vocab, d]` table at every step), and attention keeps an f32
//! cache (`CachedGraph::cached_attention`; on a GPU the cache is bf16).
//!
//! [`Session::set_profiling`] times every op of the forward by name (the head apart), for finding where
//! a decode step's time goes (`bench_inference --profile`).
use crate::config::LlamaConfig;
use crate::error::{NnError, Result};
use crate::kv_cache::KvCache;
use crate::model::Llama;
use cola_autograd::op::{Attention, Embedding, Rope};
use cola_autograd::{AutogradError, Eager, Graph, Op, Parameter};
use cola_tensor::{DType, Device, Tensor, TensorError};
use std::time::Instant;

/// Calls and seconds per op name over a session's forwards since profiling was turned on, in order of
/// first use; the LM head's product is listed as `head`.
pub type OpTimes = Vec<(&'static str, usize, f64)>;

/// A batch of sequences being generated from one model: the model's weights and the cache of every row.
/// Dropping the session frees the cache.
pub struct Session<'m> {
    model: &'m Llama,
    cache: KvCache,
    profile: Option<OpTimes>,
}

impl<'m> Session<'m> {
    /// An empty session (no rows).
    pub fn new(model: &'m Llama) -> Session<'m> {
        Session { model, cache: KvCache::new(model.config().n_layers), profile: None }
    }

    /// Starts timing every op from now on (clearing earlier times), or stops. Each timed op waits for
    /// nothing but itself on the CPU; on a GPU the times are launch times.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(Vec::new);
    }

    /// The op times since [`Session::set_profiling`] turned profiling on (empty when it is off).
    pub fn op_times(&self) -> &[(&'static str, usize, f64)] {
        self.profile.as_deref().unwrap_or(&[])
    }

    pub fn model(&self) -> &'m Llama {
        self.model
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Number of rows (sequences).
    pub fn rows(&self) -> usize {
        self.cache.rows()
    }

    /// Tokens seen per row.
    pub fn lengths(&self) -> Vec<usize> {
        self.cache.lengths()
    }

    /// Bytes of the KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Keeps the rows whose flag is true, in order, freeing the others' caches.
    pub fn retain(&mut self, keep: &[bool]) {
        self.cache.retain(keep);
    }

    /// Adds one row per prompt (after the existing rows) and runs the prompts; returns the logits of
    /// each prompt's last position, `[prompts, vocab_size]`. Prompts of equal length run as one batch.
    /// Each prompt must be non-empty, at most `max_seq_len` long, with ids below `vocab_size`.
    pub fn prefill(&mut self, prompts: &[&[u32]]) -> Result<Tensor> {
        if prompts.is_empty() {
            return invalid("prefill needs at least one prompt".into());
        }
        for (i, prompt) in prompts.iter().enumerate() {
            check_tokens(self.model.config(), prompt, 0)
                .map_err(|e| with_context(e, &format!("prompt {i}")))?;
        }
        let first_row = self.cache.add_rows(prompts.len());
        let result = self.prefill_rows(prompts, first_row);
        if result.is_err() {
            self.cache.truncate(first_row);
        }
        result
    }

    /// [`Session::prefill`] into the new rows `first_row..`.
    fn prefill_rows(&mut self, prompts: &[&[u32]], first_row: usize) -> Result<Tensor> {
        let mut lengths: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let mut logits: Vec<Option<Tensor>> = vec![None; prompts.len()];
        for len in lengths {
            let members: Vec<usize> = (0..prompts.len()).filter(|&i| prompts[i].len() == len).collect();
            let ids: Vec<u32> = members.iter().flat_map(|&i| prompts[i].iter().copied()).collect();
            let rows: Vec<usize> = members.iter().map(|&i| first_row + i).collect();
            let group = self.forward(&rows, &ids, len)?;
            for (j, &i) in members.iter().enumerate() {
                logits[i] = Some(group.narrow(0, j, 1)?);
            }
        }
        let logits: Vec<Tensor> = logits.into_iter().flatten().collect();
        Ok(Tensor::concat(&logits, 0)?)
    }

    /// Runs one token per row (`tokens.len() == rows()`), each at its row's next position; returns the
    /// logits for the position after it, `[rows, vocab_size]`.
    pub fn decode(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let lengths = self.cache.lengths();
        if tokens.len() != lengths.len() || tokens.is_empty() {
            return invalid(format!("decode got {} tokens for {} rows", tokens.len(), lengths.len()));
        }
        for (row, (&token, &len)) in tokens.iter().zip(&lengths).enumerate() {
            check_tokens(self.model.config(), &[token], len)
                .map_err(|e| with_context(e, &format!("row {row}")))?;
        }
        let rows: Vec<usize> = (0..lengths.len()).collect();
        let result = self.forward(&rows, tokens, 1);
        if result.is_err() {
            // A failure inside the layers (not a bad input: those are checked above) may leave some
            // layers extended and others not; an empty session is better than an inconsistent one.
            self.cache.clear();
        }
        result
    }

    /// Runs `seq` new tokens for each of `rows` (`ids` row-major `[rows, seq]`) through every layer,
    /// appending to the cache, and returns the logits of each row's last new position, `[rows, vocab]`.
    /// With `seq > 1` every row must have the same cached length (prefill of a group).
    fn forward(&mut self, rows: &[usize], ids: &[u32], seq: usize) -> Result<Tensor> {
        let model = self.model;
        let all = self.cache.lengths();
        let lengths: Vec<usize> = rows.iter().map(|&r| all[r]).collect();
        let profile = self.profile.as_mut();
        let mut graph =
            CachedGraph { cache: &mut self.cache, rows, lengths: &lengths, layer: 0, profile, head: false };
        let hidden = model.hidden_states(&mut graph, ids, rows.len(), seq)?;
        let d_model = model.config().d_model;
        let last = hidden.narrow(1, seq - 1, 1)?.contiguous()?.reshape(&[rows.len(), d_model])?;
        graph.head = true;
        model.head(&mut graph, &last)
    }
}

/// The eager executor of a [`Session`]'s forward: the rows being run, the tokens each has seen, the
/// decoder layer running now (set by [`Graph::layer`]), the op times when profiling, and whether the
/// head runs now.
struct CachedGraph<'a> {
    cache: &'a mut KvCache,
    rows: &'a [usize],
    lengths: &'a [usize],
    layer: usize,
    profile: Option<&'a mut OpTimes>,
    head: bool,
}

impl Graph for CachedGraph<'_> {
    type Value = Tensor;

    fn apply(&mut self, op: Op, inputs: &[&Tensor]) -> cola_autograd::Result<Tensor> {
        let name = if self.head { "head" } else { op.name() };
        let began = self.profile.is_some().then(Instant::now);
        let result = match op {
            Op::Rope(Rope { positions, theta }) => self.shifted_rope(inputs[0], &positions, theta),
            Op::Attention(Attention { scale }) => {
                self.cached_attention(inputs[0], inputs[1], inputs[2], scale)
            }
            Op::Embedding(Embedding { ids, ids_shape, .. })
                if inputs[0].dtype() == DType::BF16 && inputs[0].device() == Device::Cpu =>
            {
                gather_rows(inputs[0], &ids, &ids_shape)
            }
            op => Ok(Eager.apply(op, inputs)?),
        };
        if let (Some(times), Some(began)) = (self.profile.as_deref_mut(), began) {
            let seconds = began.elapsed().as_secs_f64();
            match times.iter_mut().find(|(n, ..)| *n == name) {
                Some(entry) => (entry.1, entry.2) = (entry.1 + 1, entry.2 + seconds),
                None => times.push((name, 1, seconds)),
            }
        }
        result.map_err(|e| match e {
            NnError::Autograd(e) => e,
            NnError::Tensor(e) => AutogradError::Tensor(e),
            other => AutogradError::Tensor(TensorError::InvalidArgument {
                op: "kv-cached forward",
                reason: other.to_string(),
            }),
        })
    }

    fn param(&mut self, param: &Parameter) -> Tensor {
        Eager.param(param)
    }

    fn shape(&self, value: &Tensor) -> cola_autograd::Result<Vec<usize>> {
        Eager.shape(value)
    }

    fn layer<R>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        self.layer = index;
        f(self)
    }
}

impl CachedGraph<'_> {
    /// RoPE of `x: [rows, seq, heads, head_dim]` at `positions` (`0..seq`) shifted by each row's cached
    /// length. One token per row runs as a single call (rows become the sequence axis, each with its own
    /// position); otherwise the rows must share their start.
    fn shifted_rope(&self, x: &Tensor, positions: &[u32], theta: f64) -> Result<Tensor> {
        let &[batch, seq, heads, head_dim] = x.shape() else {
            return invalid(format!("rope input must be [rows, seq, heads, head_dim], got {:?}", x.shape()));
        };
        if seq == 1 {
            let shifted: Vec<u32> = self.lengths.iter().map(|&len| len as u32 + positions[0]).collect();
            let rotated = x.reshape(&[1, batch, heads, head_dim])?.rope(&shifted, theta)?;
            return Ok(rotated.reshape(&[batch, 1, heads, head_dim])?);
        }
        let start = self.lengths.first().copied().unwrap_or(0);
        if self.lengths.iter().any(|&len| len != start) {
            return invalid(format!(
                "rows of one multi-token call must have equal lengths, got {:?}",
                self.lengths
            ));
        }
        let shifted: Vec<u32> = positions.iter().map(|&p| start as u32 + p).collect();
        Ok(x.rope(&shifted, theta)?)
    }

    /// Attention of `q, k, v: [rows, seq, heads, head_dim]` against each row's cache, which it extends.
    ///
    /// bf16 inputs on the CPU attend in f32 against an f32 cache, and the output is rounded back to bf16:
    /// the CPU attention computes in f32 anyway, and a bf16 cache would be widened whole at every step
    /// (most of a bf16 decode step's attention time), where this widens only the new positions; the
    /// price is the f32 cache's size. On the CPU the cache is in the layout the attention kernel reads
    /// in place (`nn/src/kv_cache.rs`), so a decode step's attention copies none of it.
    fn cached_attention(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        if q.dtype() == DType::BF16 && q.device() == Device::Cpu {
            let [q, k, v] = [q, k, v].map(|t| t.to_dtype(DType::F32));
            return Ok(self.cached_attention(&q?, &k?, &v?, scale)?.to_dtype(DType::BF16)?);
        }
        let layer = self.layer;
        for (j, &row) in self.rows.iter().enumerate() {
            self.cache.append(row, layer, k.narrow(0, j, 1)?, v.narrow(0, j, 1)?)?;
        }
        if self.lengths.iter().all(|&len| len == 0) {
            // A fresh group: the new keys are the whole cache, so the batch attends in one call.
            return Ok(Tensor::attention(q, k, v, scale)?);
        }
        let mut outputs = Vec::with_capacity(self.rows.len());
        for (j, &row) in self.rows.iter().enumerate() {
            outputs.push(self.cache.attention(row, layer, &q.narrow(0, j, 1)?, scale)?);
        }
        Ok(Tensor::concat(&outputs, 0)?)
    }
}

/// The embedding lookup as a copy of the table's rows (`[vocab, dim]` -> `ids_shape + [dim]`), in the
/// table's dtype; the ids were checked against the vocabulary before the forward.
fn gather_rows(table: &Tensor, ids: &[u32], ids_shape: &[usize]) -> Result<Tensor> {
    let rows: Vec<Tensor> =
        ids.iter().map(|&id| table.narrow(0, id as usize, 1)).collect::<std::result::Result<_, _>>()?;
    let mut shape = ids_shape.to_vec();
    shape.push(table.shape()[1]);
    Ok(Tensor::concat(&rows, 0)?.reshape(&shape)?)
}

/// Checks `tokens` can follow `cached` tokens of a sequence: at least one token, ids below
/// `vocab_size`, the total within `max_seq_len`.
pub fn check_tokens(config: &LlamaConfig, tokens: &[u32], cached: usize) -> Result<()> {
    if tokens.is_empty() {
        return invalid("empty prompt: at least one token is needed".into());
    }
    if cached + tokens.len() > config.max_seq_len {
        let what = match cached {
            0 => format!("the prompt has {} tokens, longer than", tokens.len()),
            _ => format!("{} tokens after {cached} exceed", tokens.len()),
        };
        return invalid(format!("{what} the model's context of {} tokens", config.max_seq_len));
    }
    if let Some((i, id)) = tokens.iter().enumerate().find(|(_, &id)| id as usize >= config.vocab_size) {
        return invalid(format!("token id {id} at {i} is not below vocab_size {}", config.vocab_size));
    }
    Ok(())
}

fn invalid<T>(reason: String) -> Result<T> {
    Err(NnError::InvalidInput { reason })
}

/// Prefixes an input error's reason with `what` (which prompt or row it concerns).
fn with_context(error: NnError, what: &str) -> NnError {
    match error {
        NnError::InvalidInput { reason } => NnError::InvalidInput { reason: format!("{what}: {reason}") },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cola_autograd::Tape;
    use cola_tensor::Rng;

    /// The tape model's logits `[batch, seq, vocab]` of `ids`, as f64.
    fn full_forward(model: &Llama, ids: &[u32], batch: usize, seq: usize) -> Vec<f64> {
        let mut tape = Tape::new();
        let logits = model.forward(&mut tape, ids, batch, seq).unwrap();
        tape.value(logits).unwrap().to_vec_f64()
    }

    #[test]
    fn prefill_then_decode_matches_the_tape_forward() {
        for preset in ["cola-tiny", "full-tiny"] {
            let model = Llama::new(LlamaConfig::preset(preset).unwrap(), &mut Rng::new(5)).unwrap();
            let (vocab, seq) = (model.config().vocab_size, model.config().max_seq_len);
            let ids: Vec<u32> = (0..2 * seq).map(|i| ((i * 37 + 11) % vocab) as u32).collect();
            let expected = full_forward(&model, &ids, 2, seq);
            let mut session = Session::new(&model);
            let prompts: Vec<&[u32]> = vec![&ids[..3], &ids[seq..seq + 3]];
            let mut logits = session.prefill(&prompts).unwrap();
            for t in 2..seq {
                let got = logits.to_vec_f64();
                for row in 0..2 {
                    let want = &expected[(row * seq + t) * vocab..][..vocab];
                    let max_err = got[row * vocab..][..vocab].iter().zip(want).map(|(a, b)| (a - b).abs());
                    let max_err = max_err.fold(0.0, f64::max);
                    assert!(max_err < 1e-5, "{preset} row {row} position {t}: {max_err}");
                }
                if t + 1 < seq {
                    logits = session.decode(&[ids[t + 1], ids[seq + t + 1]]).unwrap();
                }
            }
            assert_eq!(session.lengths(), vec![seq, seq]);
            assert!(session.decode(&[1, 1]).is_err(), "the context is full");
        }
    }
}

//! Inference without a tape: the forward pass of [`Llama`] on plain tensor ops, with a [`KvCache`] so
//! that a prompt is run once ([`Session::prefill`]) and each generated token costs one position
//! ([`Session::decode`]).
//!
//! The formulas are those of the tape layers (`block.rs`, `attention.rs`, `mlp.rs`, `linear.rs`):
//! `h = x + o(attn(rope(q(n)), rope(k(n)), v(n)))` with `n = rmsnorm(x)`, `y = h + mlp(rmsnorm(h))`,
//! CoLA projections `silu(x @ A) @ B`. Keys are cached after RoPE, so a cached key never changes. Query
//! `i` of a call sits at position `len + i` of its row and attends to the row's whole cache (the fused
//! attention's `q_len <= kv_len` causal offset). The head runs on the last position of each row only.
//!
//! Rows are independent sequences of any lengths: prefill groups the new prompts by length and runs each
//! group as one batch; decode runs every row's next token in one batch (the projections, norms and head
//! see `[rows, 1, d_model]`), with RoPE positions per row and attention per row against its own cache.
//! Everything runs on the device of the model's weights; new tensors come only from ops on them.
use crate::attention::Attention;
use crate::block::Block;
use crate::config::LlamaConfig;
use crate::error::{NnError, Result};
use crate::kv_cache::KvCache;
use crate::linear::Projection;
use crate::mlp::Mlp;
use crate::model::Llama;
use cola_tensor::Tensor;

/// `[..., in] -> [..., out]`: `x @ W` (dense) or `silu(x @ A) @ B` (CoLA).
pub fn project(projection: &Projection, x: &Tensor) -> Result<Tensor> {
    Ok(match projection {
        Projection::Dense(p) => x.matmul(p.weight().value())?,
        Projection::Cola(p) => x.matmul(p.a().value())?.silu()?.matmul(p.b().value())?,
    })
}

/// The gated MLP, `down(silu(gate(x)) * up(x))` or `down(gate(x) * up(x))`.
pub fn mlp(mlp: &Mlp, x: &Tensor) -> Result<Tensor> {
    let [gate_proj, up_proj, down_proj] = mlp.projections();
    let mut gate = project(gate_proj, x)?;
    if mlp.gate_silu() {
        gate = gate.silu()?;
    }
    project(down_proj, &gate.mul(&project(up_proj, x)?)?)
}

/// A batch of sequences being generated from one model: the model's weights and the cache of every row.
/// Dropping the session frees the cache.
pub struct Session<'m> {
    model: &'m Llama,
    cache: KvCache,
}

impl<'m> Session<'m> {
    /// An empty session (no rows).
    pub fn new(model: &'m Llama) -> Session<'m> {
        Session { model, cache: KvCache::new(model.layers().len()) }
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
        let mut x = Tensor::embedding(model.embedding().table().value(), ids, &[rows.len(), seq])?;
        for (layer, block) in model.layers().iter().enumerate() {
            x = self.block(block, layer, rows, &lengths, &x)?;
        }
        // The norm of the last positions' strided view is contiguous, so the head runs as one GEMM.
        let norm = model.final_norm();
        let hidden = x.narrow(1, seq - 1, 1)?.rms_norm(norm.weight().value(), norm.eps())?;
        let logits = hidden.matmul(model.lm_head().weight().value())?;
        Ok(logits.reshape(&[rows.len(), model.config().vocab_size])?)
    }

    /// One decoder layer on `x: [rows, seq, d_model]`.
    fn block(
        &mut self,
        block: &Block,
        layer: usize,
        rows: &[usize],
        lengths: &[usize],
        x: &Tensor,
    ) -> Result<Tensor> {
        let [input_norm, post_norm] = block.norms();
        let normed = x.rms_norm(input_norm.weight().value(), input_norm.eps())?;
        let h = x.add(&self.attention(block.attention(), layer, rows, lengths, &normed)?)?;
        let normed = h.rms_norm(post_norm.weight().value(), post_norm.eps())?;
        Ok(h.add(&mlp(block.mlp(), &normed)?)?)
    }

    /// Self-attention of `x: [rows, seq, d_model]` against each row's cache, which it extends.
    fn attention(
        &mut self,
        attention: &Attention,
        layer: usize,
        rows: &[usize],
        lengths: &[usize],
        x: &Tensor,
    ) -> Result<Tensor> {
        let &[batch, seq, d_model] = x.shape() else {
            return invalid(format!("attention input must be [rows, seq, d_model], got {:?}", x.shape()));
        };
        let (heads, theta) = (attention.n_heads(), attention.rope_theta());
        let shape = [batch, seq, heads, d_model / heads];
        let [q_proj, k_proj, v_proj, o_proj] = attention.projections();
        let q = rope(&project(q_proj, x)?.reshape(&shape)?, lengths, theta)?;
        let k = rope(&project(k_proj, x)?.reshape(&shape)?, lengths, theta)?;
        let v = project(v_proj, x)?.reshape(&shape)?;
        let scale = 1.0 / ((d_model / heads) as f64).sqrt();
        let mixed = if lengths.iter().all(|&len| len == 0) {
            // A fresh group: the new keys are the whole cache, so the batch attends in one call.
            for (j, &row) in rows.iter().enumerate() {
                self.cache.append(row, layer, k.narrow(0, j, 1)?, v.narrow(0, j, 1)?)?;
            }
            Tensor::attention(&q, &k, &v, scale)?
        } else {
            let mut outputs = Vec::with_capacity(batch);
            for (j, &row) in rows.iter().enumerate() {
                self.cache.append(row, layer, k.narrow(0, j, 1)?, v.narrow(0, j, 1)?)?;
                let (keys, values) = self.cache.get(row, layer).ok_or_else(|| NnError::InvalidInput {
                    reason: format!("kv cache: row {row} has no layer {layer}"),
                })?;
                outputs.push(Tensor::attention(&q.narrow(0, j, 1)?, keys, values, scale)?);
            }
            Tensor::concat(&outputs, 0)?
        };
        project(o_proj, &mixed.reshape(&[batch, seq, d_model])?)
    }
}

/// RoPE of `x: [rows, seq, heads, head_dim]` whose row `j` starts at position `lengths[j]`. One token per
/// row runs as a single call (rows become the sequence axis, each with its own position); otherwise the
/// rows must share their start.
fn rope(x: &Tensor, lengths: &[usize], theta: f64) -> Result<Tensor> {
    let &[batch, seq, heads, head_dim] = x.shape() else {
        return invalid(format!("rope input must be [rows, seq, heads, head_dim], got {:?}", x.shape()));
    };
    if seq == 1 {
        let positions: Vec<u32> = lengths.iter().map(|&len| len as u32).collect();
        let rotated = x.reshape(&[1, batch, heads, head_dim])?.rope(&positions, theta)?;
        return Ok(rotated.reshape(&[batch, 1, heads, head_dim])?);
    }
    let start = lengths.first().copied().unwrap_or(0);
    if lengths.iter().any(|&len| len != start) {
        return invalid(format!("rows of one multi-token call must have equal lengths, got {lengths:?}"));
    }
    let positions: Vec<u32> = (start..start + seq).map(|p| p as u32).collect();
    Ok(x.rope(&positions, theta)?)
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

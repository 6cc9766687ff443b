//! The LLaMA(-CoLA) language model: embedding, decoder blocks, final RMSNorm, untied LM head, and the
//! next-token loss.
use crate::block::Block;
use crate::config::LlamaConfig;
use crate::embedding::Embedding;
use crate::error::{NnError, Result};
use crate::init::Init;
use crate::linear::Linear;
use crate::module::{Module, ParamCounts, ParamKind};
use crate::norm::RmsNorm;
use cola_autograd::{Graph, Parameter};
use cola_tensor::{DType, Device, Rng};

#[derive(Clone, Debug)]
pub struct Llama {
    config: LlamaConfig,
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
}

impl Llama {
    /// An f32 model initialised from `rng` (docs/METHOD.md section 5); the same seed gives the same weights.
    pub fn new(config: LlamaConfig, rng: &mut Rng) -> Result<Self> {
        Llama::with_dtype(config, DType::F32, rng)
    }

    /// A model whose parameters are stored as `dtype`. Parameters are drawn in [`Llama::parameters`]
    /// order: embedding, then per layer q, k, v, o, gate, up, down (A before B), then the head.
    pub fn with_dtype(config: LlamaConfig, dtype: DType, rng: &mut Rng) -> Result<Self> {
        Llama::build(config, dtype, &mut Init::Random(rng))
    }

    /// A model whose parameters come from `init`, stored as `dtype`.
    pub fn build(config: LlamaConfig, dtype: DType, init: &mut Init) -> Result<Self> {
        config.validate()?;
        let (d, v) = (config.d_model, config.vocab_size);
        let embed_tokens = Embedding::new("model.embed_tokens", v, d, config.pad_id, dtype, init)?;
        let layers = (0..config.n_layers).map(|i| Block::new(i, &config, dtype, init)).collect();
        let norm = RmsNorm::new("model.norm", d, config.norm_eps, dtype);
        let lm_head = Linear::new("lm_head", d, v, dtype, init);
        Ok(Llama { config, embed_tokens, layers, norm, lm_head })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Moves every parameter to `device` and converts it to `dtype` (bf16 for mixed-precision GPU training).
    pub fn to_device(&mut self, device: Device, dtype: DType) -> Result<()> {
        for p in self.parameters_mut() {
            let moved = p.value().to_dtype(dtype)?.to_device(device)?;
            p.set_value(moved);
        }
        Ok(())
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.table().value().device()
    }

    /// The dtype the parameters are stored in.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.table().value().dtype()
    }

    pub fn embedding(&self) -> &Embedding {
        &self.embed_tokens
    }

    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    /// Every parameter in a fixed order (the checkpoint order of [`LlamaConfig::parameter_shapes`]).
    pub fn parameters(&self) -> Vec<&Parameter> {
        Module::parameters(self)
    }

    pub fn parameters_mut(&mut self) -> Vec<&mut Parameter> {
        Module::parameters_mut(self)
    }

    /// Counts of the allocated parameters (equal to [`LlamaConfig::param_counts`]).
    pub fn param_counts(&self) -> ParamCounts {
        Module::param_counts(self)
    }

    /// Checks token ids against the model: `ids.len() == batch * seq`, `1 <= seq <= max_seq_len`,
    /// `batch >= 1`, every id below `vocab_size`.
    fn check_ids(&self, ids: &[u32], batch: usize, seq: usize) -> Result<()> {
        let invalid = |reason: String| Err(NnError::InvalidInput { reason });
        if batch == 0 || seq == 0 {
            return invalid(format!("batch {batch} and seq {seq} must be positive"));
        }
        if seq > self.config.max_seq_len {
            return invalid(format!("seq {seq} exceeds max_seq_len {}", self.config.max_seq_len));
        }
        if ids.len() != batch * seq {
            return invalid(format!("{} token ids for batch {batch} x seq {seq}", ids.len()));
        }
        let vocab = self.config.vocab_size;
        if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            return invalid(format!(
                "token id {id} at [{}, {}] is not below vocab_size {vocab}",
                i / seq,
                i % seq
            ));
        }
        Ok(())
    }

    /// The final-normed hidden states `[batch, seq, d_model]` of `ids` (row-major `[batch, seq]`). Each
    /// row's positions are `0..seq`; a KV-cached graph shifts them by what its rows have seen.
    pub fn hidden_states<G: Graph>(
        &self,
        g: &mut G,
        ids: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<G::Value> {
        self.check_ids(ids, batch, seq)?;
        let positions: Vec<u32> = (0..seq as u32).collect();
        let mut x = self.embed_tokens.forward(g, ids, &[batch, seq])?;
        for block in &self.layers {
            x = block.forward(g, &x, &positions)?;
        }
        self.norm.forward(g, &x)
    }

    /// The LM head: logits `[..., vocab_size]` of hidden states `[..., d_model]`.
    pub fn head<G: Graph>(&self, g: &mut G, hidden: &G::Value) -> Result<G::Value> {
        self.lm_head.forward(g, hidden)
    }

    /// Logits `[batch, seq, vocab_size]` of `ids` (row-major `[batch, seq]`); position t sees ids `0..=t`.
    pub fn forward<G: Graph>(&self, g: &mut G, ids: &[u32], batch: usize, seq: usize) -> Result<G::Value> {
        let hidden = self.hidden_states(g, ids, batch, seq)?;
        self.head(g, &hidden)
    }

    /// Next-token cross-entropy, a scalar: the logits at positions `0..seq-1` predict `ids[1..seq]` of the
    /// same row, averaged over targets that are not `pad_id` (`mean_t -log softmax(logits_t)[ids_{t+1}]`).
    /// The head runs only on the `seq - 1` positions that have a target, fused with the loss so its
    /// `[tokens, vocab]` logits are never saved for backward (`Tensor::head_cross_entropy`); the value is
    /// that of [`Llama::head`] then cross-entropy. Needs `seq >= 2`.
    pub fn loss<G: Graph>(&self, g: &mut G, ids: &[u32], batch: usize, seq: usize) -> Result<G::Value> {
        if seq < 2 {
            return Err(NnError::InvalidInput {
                reason: format!("the next-token loss needs seq >= 2, got {seq}"),
            });
        }
        let hidden = self.hidden_states(g, ids, batch, seq)?;
        let predicting = g.narrow(&hidden, 1, 0, seq - 1)?;
        let head_weight = g.param(self.lm_head.weight());
        let targets = next_token_targets(ids, batch, seq);
        Ok(g.head_cross_entropy(&predicting, &head_weight, &targets, Some(self.config.pad_id))?)
    }
}

/// `ids[b, 1..seq]` for every full row b of `ids` (row-major `[batch, seq]`), flattened: the targets of
/// positions `0..seq-1`.
pub fn next_token_targets(ids: &[u32], batch: usize, seq: usize) -> Vec<u32> {
    if seq == 0 {
        return Vec::new();
    }
    ids.chunks_exact(seq).take(batch).flat_map(|row| row[1..].iter().copied()).collect()
}

impl Module for Llama {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind)) {
        self.embed_tokens.visit(f);
        for block in &self.layers {
            block.visit(f);
        }
        self.norm.visit(f);
        self.lm_head.visit(f);
    }

    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind)) {
        self.embed_tokens.visit_mut(f);
        for block in &mut self.layers {
            block.visit_mut(f);
        }
        self.norm.visit_mut(f);
        self.lm_head.visit_mut(f);
    }
}

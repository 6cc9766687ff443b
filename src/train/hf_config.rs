//! `config.json` beside every checkpoint's `model.safetensors`: the model config in the Hugging Face
//! form, so that other tools can load a checkpoint without this program.
//!
//! The weights already use the reference's names and layouts (`nn/src/checkpoint.rs`), and the backbone
//! is LLaMA's (docs/METHOD.md section 3): pre-norm blocks, RMSNorm in fp32, rotate-half RoPE over pairs
//! `(i, i + head_dim/2)` (what `transformers` calls `rotate_half`), plain multi-head causal attention, no
//! bias, an untied head. A full-rank (`full-*`) checkpoint is therefore a `LlamaForCausalLM` as it is.
//! A CoLA checkpoint is not (its projections are `cola_a` / `cola_b` pairs with a SiLU between,
//! docs/METHOD.md sections 1 and 2): it names the reference's CoLA class and model type, which
//! `transformers` does not have, so that it refuses the file instead of loading random weights for the
//! missing dense ones, and it adds the CoLA fields in the reference's names.
use super::{Result, TrainError};
use cola_nn::LlamaConfig;
use cola_tensor::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The file name Hugging Face tools look for.
pub const HF_CONFIG_FILE: &str = "config.json";

/// The contents of `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HfConfig {
    /// `["LlamaForCausalLM"]`, or the reference's `["ColaForCausalLM"]` for a CoLA model.
    pub architectures: Vec<String>,
    /// `llama`, or the reference's `cola`.
    pub model_type: String,
    /// `d_model`.
    pub hidden_size: usize,
    /// `ffn_dim`.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Equal to the heads: no grouped-query sharing.
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// The context the model was built for (the preset's, or the run's longer `--seq-len`).
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub vocab_size: usize,
    pub pad_token_id: u32,
    /// Written as `null`: the data pipeline prepends no begin-of-sequence token, and an absent field
    /// would make `transformers` assume id 1 (which is end-of-sequence here).
    pub bos_token_id: Option<u32>,
    /// The tokenizer's end-of-sequence id; `null` for a run on token ids without a tokenizer.
    pub eos_token_id: Option<u32>,
    /// `silu`: the MLP's gate activation (and, for CoLA, that of the low-rank codes).
    pub hidden_act: String,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// The dtype of the stored weights (`float32`).
    pub torch_dtype: String,
    /// The CoLA fields; absent for a full-rank model.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub cola: Option<ColaFields>,
}

/// What makes a model CoLA, in the reference's field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColaFields {
    /// Width `r` of every low-rank bottleneck.
    pub cola_rank: usize,
    /// The activation inside each low-rank layer, `σ(x @ A) @ B`, by transformers' `ACT2FN` name
    /// (`silu`, `gelu_pytorch_tanh`, `relu`; `linear` for none).
    pub lr_act_type: String,
    /// Whether the MLP's own gate SiLU is dropped (docs/METHOD.md section 2).
    pub only_lr_act: bool,
}

/// The `torch_dtype` name of a stored dtype.
fn torch_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::BF16 => "bfloat16",
    }
}

impl HfConfig {
    /// The config of a model of `config` whose weights are stored as `stored`, trained with a tokenizer
    /// whose end-of-sequence id is `eos_token_id`.
    pub fn of(config: &LlamaConfig, stored: DType, eos_token_id: Option<u32>) -> HfConfig {
        let cola = config.rank.map(|rank| ColaFields {
            cola_rank: rank,
            lr_act_type: config.lowrank_act.hf_name().into(),
            only_lr_act: !config.mlp_gate_silu,
        });
        let (architecture, model_type) =
            if cola.is_some() { ("ColaForCausalLM", "cola") } else { ("LlamaForCausalLM", "llama") };
        HfConfig {
            architectures: vec![architecture.into()],
            model_type: model_type.into(),
            hidden_size: config.d_model,
            intermediate_size: config.ffn_dim,
            num_hidden_layers: config.n_layers,
            num_attention_heads: config.n_heads,
            num_key_value_heads: config.n_heads,
            head_dim: config.head_dim(),
            max_position_embeddings: config.max_seq_len,
            rms_norm_eps: config.norm_eps,
            rope_theta: config.rope_theta,
            vocab_size: config.vocab_size,
            pad_token_id: config.pad_id,
            bos_token_id: None,
            eos_token_id,
            hidden_act: "silu".into(),
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            torch_dtype: torch_name(stored).into(),
            cola,
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
        std::fs::write(path, json).map_err(TrainError::io(path))
    }

    pub fn read(path: &Path) -> Result<HfConfig> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
        serde_json::from_str(&text)
            .map_err(|e| TrainError::checkpoint(path, format!("not a config.json this program wrote ({e})")))
    }

    /// The fields that describe the model's shapes and maths (not its dtype or token ids) where `self`
    /// differs from a model of `config`, as `field: self's value vs config's value`.
    pub fn differences(&self, config: &LlamaConfig) -> Vec<String> {
        let expected = HfConfig::of(config, DType::F32, self.eos_token_id);
        let fields = |c: &HfConfig| -> BTreeMap<String, serde_json::Value> {
            let mut value = serde_json::to_value(c).unwrap_or_default();
            let map = value.as_object_mut().map(std::mem::take).unwrap_or_default();
            map.into_iter()
                .filter(|(name, _)| !matches!(name.as_str(), "torch_dtype" | "pad_token_id" | "eos_token_id"))
                .collect()
        };
        let (found, wanted) = (fields(self), fields(&expected));
        let names: std::collections::BTreeSet<&String> = found.keys().chain(wanted.keys()).collect();
        names
            .into_iter()
            .filter(|name| found.get(*name) != wanted.get(*name))
            .map(|name| {
                let show = |v: Option<&serde_json::Value>| v.map_or("absent".to_string(), |v| v.to_string());
                format!("{name}: {} vs {}", show(found.get(name)), show(wanted.get(name)))
            })
            .collect()
    }
}

//! Finding a checkpoint, its model config and its tokenizer, and loading the weights.
//!
//! A checkpoint is a `checkpoint-<step>/` folder of a run (weights, `state.json`, `tokenizer.json`), a
//! run directory (its latest checkpoint), a folder with a `model.safetensors` in the reference's names
//! and layouts (optionally with a Hugging Face style `config.json`), or such a `.safetensors` file.
//! The model config comes from, in order: `--model` (a preset; the vocabulary from the weights' shapes),
//! `state.json` (the run's config, cross-checked with the `config.json` the same save wrote),
//! `config.json` plus the weights' shapes (any Hugging Face style file, so read field by field), or the
//! shapes alone matched against the presets.
use super::{GenerateError, Result};
use crate::data::Tokenizer;
use crate::train::checkpoint::{self, RunState, STATE_FILE, TOKENIZER_FILE};
use crate::train::hf_config::{HfConfig, HF_CONFIG_FILE};
use cola_nn::{
    read_safetensors_shapes, Init, Llama, LlamaConfig, LowRankActivation, PRESET_NAMES, WEIGHTS_FILE,
};
use cola_tensor::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// A checkpoint folder, a run directory, a folder with `model.safetensors`, or a `.safetensors` file.
    pub checkpoint: PathBuf,
    /// A preset overriding the config found with the checkpoint.
    pub model: Option<String>,
    /// A `tokenizer.json`; by default the checkpoint's, or its run directory's.
    pub tokenizer: Option<PathBuf>,
    pub device: Device,
}

/// A model ready to generate, with its tokenizer.
pub struct Loaded {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// The weights file read.
    pub weights: PathBuf,
    pub tokenizer_path: PathBuf,
    /// Where the config came from (for the user).
    pub config_source: String,
}

/// The files of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointFiles {
    pub weights: PathBuf,
    /// `state.json` of a checkpoint written by the training program.
    pub state: Option<PathBuf>,
}

fn bad(path: &Path, reason: impl Into<String>) -> GenerateError {
    GenerateError::Checkpoint { path: path.to_path_buf(), reason: reason.into() }
}

/// The weights (and state) `path` names; a run directory gives its latest checkpoint.
pub fn locate(path: &Path) -> Result<CheckpointFiles> {
    if path.is_file() {
        return Ok(CheckpointFiles { weights: path.to_path_buf(), state: None });
    }
    if !path.exists() {
        return Err(bad(path, "does not exist"));
    }
    let dir = if path.join(STATE_FILE).is_file() || path.join(WEIGHTS_FILE).is_file() {
        path.to_path_buf()
    } else {
        checkpoint::list(path).pop().map(|(_, dir)| dir).ok_or_else(|| {
            bad(
                path,
                format!(
                    "no checkpoint here: expected {WEIGHTS_FILE} (and {STATE_FILE}) in it or in a \
                     checkpoint-<step> folder of it"
                ),
            )
        })?
    };
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(bad(&dir, format!("{WEIGHTS_FILE} is missing")));
    }
    let state = Some(dir.join(STATE_FILE)).filter(|p| p.is_file());
    Ok(CheckpointFiles { weights, state })
}

/// Name and shape of every tensor of a safetensors file, from its header alone (checked against the
/// file's size: see [`cola_nn::read_safetensors_shapes`]).
pub fn read_shapes(weights: &Path) -> Result<BTreeMap<String, Vec<usize>>> {
    Ok(read_safetensors_shapes(weights)?)
}

/// The `(vocab_size, d_model)` of the embedding in `shapes`.
fn embedding_shape(weights: &Path, shapes: &BTreeMap<String, Vec<usize>>) -> Result<(usize, usize)> {
    match shapes.get("model.embed_tokens.weight").map(Vec::as_slice) {
        Some(&[vocab, d_model]) => Ok((vocab, d_model)),
        _ => Err(bad(
            weights,
            "no 2-D model.embed_tokens.weight: not a LLaMA checkpoint in the reference's names",
        )),
    }
}

/// The model config the tensor shapes describe, matched against the presets (which fix what shapes
/// cannot say: the number of heads and whether the MLP keeps its gate SiLU). `hf_config`, a parsed
/// `config.json`, supplies those instead when it has them.
pub fn infer_config(
    weights: &Path,
    shapes: &BTreeMap<String, Vec<usize>>,
    hf_config: Option<&serde_json::Value>,
) -> Result<LlamaConfig> {
    let (vocab, d_model) = embedding_shape(weights, shapes)?;
    let layer_of = |name: &str| name.strip_prefix("model.layers.")?.split('.').next()?.parse::<usize>().ok();
    let n_layers = shapes.keys().filter_map(|n| layer_of(n)).max().map_or(0, |l| l + 1);
    let shape = |name: &str| shapes.get(&format!("model.layers.0.{name}")).cloned().unwrap_or_default();
    let rank = shape("self_attn.q_proj.cola_a").get(1).copied();
    let ffn = match rank {
        Some(_) => shape("mlp.gate_proj.cola_b").get(1).copied(),
        None => shape("mlp.gate_proj.weight").first().copied(),
    };
    let (Some(ffn), true) = (ffn, n_layers > 0) else {
        return Err(bad(
            weights,
            "no decoder layers with CoLA (cola_a, cola_b) or dense (weight) projections",
        ));
    };
    let field = |key: &str| hf_config.and_then(|c| c.get(key));
    let described = format!(
        "d_model {d_model}, ffn_dim {ffn}, {n_layers} layers, {}",
        rank.map_or("dense".to_string(), |r| format!("rank {r}"))
    );
    let preset = PRESET_NAMES
        .iter()
        .filter_map(|name| LlamaConfig::preset(name).ok())
        .find(|p| (p.d_model, p.ffn_dim, p.n_layers, p.rank) == (d_model, ffn, n_layers, rank));
    let mut config = match (preset, field("num_attention_heads").and_then(|v| v.as_u64())) {
        (Some(preset), _) => preset,
        (None, Some(heads)) => LlamaConfig {
            d_model,
            ffn_dim: ffn,
            n_layers,
            n_heads: heads as usize,
            rank,
            ..LlamaConfig::preset("cola-60m").map_err(GenerateError::Nn)?
        },
        (None, None) => {
            return Err(bad(
                weights,
                format!(
                    "the shapes ({described}) match no preset and there is no config.json with \
                     num_attention_heads; pass --model PRESET"
                ),
            ))
        }
    };
    config.vocab_size = vocab;
    if let Some(heads) = field("num_attention_heads").and_then(|v| v.as_u64()) {
        config.n_heads = heads as usize;
    }
    if let Some(eps) = field("rms_norm_eps").and_then(|v| v.as_f64()) {
        config.norm_eps = eps;
    }
    if let Some(theta) = field("rope_theta").and_then(|v| v.as_f64()) {
        config.rope_theta = theta;
    }
    if let Some(context) = field("max_position_embeddings").and_then(|v| v.as_u64()) {
        config.max_seq_len = context as usize;
    }
    if let Some(only_lr_act) = field("only_lr_act").and_then(|v| v.as_bool()) {
        config.mlp_gate_silu = !only_lr_act;
    }
    if let Some(name) = field("lr_act_type").and_then(|v| v.as_str()) {
        config.lowrank_act = LowRankActivation::from_hf_name(name).ok_or_else(|| {
            bad(
                weights,
                format!(
                    "config.json's lr_act_type {name:?} is none of silu, gelu_pytorch_tanh, relu, linear"
                ),
            )
        })?;
    }
    Ok(config)
}

/// Reads `state.json` and checks the size and checksum it records for the weights and the tokenizer.
fn read_state(path: &Path) -> Result<RunState> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
    let state: RunState =
        serde_json::from_str(&text).map_err(|e| bad(path, format!("truncated or corrupt ({e})")))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for name in [WEIGHTS_FILE, TOKENIZER_FILE] {
        let (Some(expected), file) = (state.files.get(name), dir.join(name)) else { continue };
        if !file.is_file() {
            return Err(bad(dir, format!("{name} is missing")));
        }
        if checkpoint::digest(&file)? != *expected {
            return Err(bad(&file, "truncated or damaged: its size or checksum differs from state.json's"));
        }
    }
    Ok(state)
}

/// The model config of the run that wrote `state` (as the training program builds it).
fn config_of_run(state: &RunState) -> Result<LlamaConfig> {
    Ok(state.config.model_config())
}

/// Cross-checks the `config.json` beside `weights`, if there is one, with the run's `config`: both are
/// written by the same save, so a difference means files of two checkpoints were mixed.
fn check_hf_config(weights: &Path, config: &LlamaConfig) -> Result<()> {
    let path = weights.with_file_name(HF_CONFIG_FILE);
    if !path.is_file() {
        return Ok(()); // written before checkpoints had one
    }
    let differences = HfConfig::read(&path)?.differences(config);
    if differences.is_empty() {
        return Ok(());
    }
    Err(bad(
        &path,
        format!(
            "disagrees with {STATE_FILE} beside it ({}); the folder mixes files of different checkpoints",
            differences.join(", ")
        ),
    ))
}

/// The tokenizer to use: `explicit`, else `tokenizer.json` beside the weights or in the folder above.
pub fn find_tokenizer(weights: &Path, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let dir = weights.parent().unwrap_or(Path::new("."));
    [dir.join(TOKENIZER_FILE), dir.join("..").join(TOKENIZER_FILE)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            bad(dir, format!("no {TOKENIZER_FILE} here or in the folder above; pass --tokenizer FILE"))
        })
}

/// Fails unless tensors can live on `device` in this build.
pub fn check_device(device: Device) -> Result<()> {
    Tensor::zeros(&[1], DType::F32)
        .to_device(device)
        .map(drop)
        .map_err(|e| GenerateError::Device { device, reason: e.to_string() })
}

/// Loads the model and tokenizer `options` name (see the module docs).
pub fn load(options: &LoadOptions) -> Result<Loaded> {
    check_device(options.device)?;
    let files = locate(&options.checkpoint)?;
    let shapes = read_shapes(&files.weights)?;
    let state = files.state.as_deref().map(read_state).transpose()?;
    let (mut config, config_source) = match (&options.model, &state) {
        (Some(preset), _) => {
            let mut config = LlamaConfig::preset(preset)?;
            config.vocab_size = embedding_shape(&files.weights, &shapes)?.0;
            (config, format!("--model {preset}"))
        }
        (None, Some(state)) => {
            let config = config_of_run(state)?;
            check_hf_config(&files.weights, &config)?;
            (config, format!("{STATE_FILE} ({})", state.config.model))
        }
        (None, None) => {
            let dir = files.weights.parent().unwrap_or(Path::new("."));
            let hf_path = dir.join(HF_CONFIG_FILE);
            let hf = match std::fs::read_to_string(&hf_path) {
                Ok(text) => Some(
                    serde_json::from_str::<serde_json::Value>(&text)
                        .map_err(|e| bad(&hf_path, format!("not valid JSON ({e})")))?,
                ),
                Err(_) => None,
            };
            let source = if hf.is_some() { "config.json and tensor shapes" } else { "tensor shapes" };
            (infer_config(&files.weights, &shapes, hf.as_ref())?, source.to_string())
        }
    };
    let tokenizer_path = find_tokenizer(&files.weights, options.tokenizer.as_deref())?;
    let tokenizer = Tokenizer::load(&tokenizer_path)?;
    // A tokenizer larger than the model (T5's 32100 entries against 32000) is accepted, as in training:
    // the prompts are checked id by id (`encode_prompts`), and generated ids are the model's own.
    config.pad_id = Some(tokenizer.pad_id()).filter(|&id| (id as usize) < config.vocab_size).unwrap_or(0);
    config.check_weights(&files.weights, &shapes)?;
    let mut model = Llama::build(config, DType::F32, &mut Init::Zeros)?;
    model.load_safetensors(&files.weights)?;
    model.to_device(options.device, DType::F32)?;
    Ok(Loaded { model, tokenizer, weights: files.weights, tokenizer_path, config_source })
}

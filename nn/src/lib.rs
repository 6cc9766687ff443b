//! Layers of LLaMA-CoLA, written once against `cola_autograd::Graph` (the tape records them for training,
//! the eager executor runs them for evaluation and generation): CoLA's low-rank projection
//! `y = silu(x @ A) @ B` (or another activation, or none: [`Variant`]) and the dense baseline, RMSNorm, embedding, rotary causal attention, the gated
//! MLP, the pre-norm decoder block and the model with its next-token loss; the paper's presets;
//! safetensors checkpoints in the reference's layout; KV-cached inference, sampling and generation.
pub mod attention;
pub mod block;
pub mod checkpoint;
pub mod config;
pub mod embedding;
pub mod error;
pub mod generation;
pub mod inference;
pub mod init;
pub mod kv_cache;
pub mod linear;
pub mod mlp;
pub mod model;
pub mod module;
pub mod norm;
pub mod preset;
pub mod sampling;
pub mod variant;

pub use attention::Attention;
pub use block::Block;
pub use checkpoint::{
    load_safetensors, read_safetensors_shapes, save_safetensors, save_safetensors_as, WEIGHTS_FILE,
};
pub use config::{LlamaConfig, PRESET_NAMES};
pub use embedding::Embedding;
pub use error::{NnError, Result};
pub use generation::{check_prompt, generate, GenerateOptions, Generated, StopReason};
pub use inference::Session;
pub use init::Init;
pub use kv_cache::KvCache;
pub use linear::{cola_init_std, ColaLinear, Linear, Projection, DENSE_INIT_STD};
pub use mlp::Mlp;
pub use model::{next_token_targets, Llama};
pub use module::{Module, ParamCounts, ParamKind};
pub use norm::RmsNorm;
pub use preset::{Family, Preset, Recipe, Size, SizeSpec, SIZES};
pub use sampling::{argmax, Sampler, SamplingConfig};
pub use variant::{LowRankActivation, Variant};

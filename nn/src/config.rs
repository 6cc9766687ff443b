//! Model hyper-parameters; the presets' values live in [`crate::preset`].
use crate::error::{NnError, Result};
use crate::module::{ParamCounts, ParamKind};
use crate::preset::Preset;
use crate::variant::LowRankActivation;
use cola_autograd::Policy;

/// Shapes and constants of a LLaMA(-CoLA) model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub ffn_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Width `r` of every CoLA bottleneck; `None` gives dense projections (the full-rank baseline).
    pub rank: Option<usize>,
    /// `σ` of every CoLA layer `σ(x @ A) @ B` (SiLU in the presets; unused by dense models).
    pub lowrank_act: LowRankActivation,
    /// Whether the MLP applies its own SiLU to the gate: `down(silu(gate(x)) * up(x))`, otherwise
    /// `down(gate(x) * up(x))` (the reference's `only_lr_act = !mlp_gate_silu`).
    pub mlp_gate_silu: bool,
    pub rope_theta: f64,
    pub norm_eps: f64,
    pub max_seq_len: usize,
    pub pad_id: u32,
}

/// Preset names accepted by [`LlamaConfig::preset`] (those of [`Preset::ALL`]).
pub const PRESET_NAMES: [&str; 12] = Preset::NAMES;

impl LlamaConfig {
    /// A preset by name (see [`Preset`]): `cola-{tiny,60m,130m,350m,1b,7b}` and the dense `full-*`
    /// baselines of the same shapes. An unknown name is [`NnError::UnknownPreset`].
    pub fn preset(name: &str) -> Result<LlamaConfig> {
        Ok(name.parse::<Preset>()?.config())
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    pub fn is_cola(&self) -> bool {
        self.rank.is_some()
    }

    /// The retention policies that apply to this model: `none` and `block` always, `cola-m` (which keeps
    /// the rank-r bottleneck values, docs/METHOD.md section 7) only with CoLA projections. `all` is a test of the
    /// replay mechanism, not a training setting, so it is not listed.
    pub fn policies(&self) -> Vec<Policy> {
        let mut out = vec![Policy::KeepAll, Policy::Block];
        if self.is_cola() {
            out.push(Policy::ColaM);
        }
        out
    }

    /// Checks the shapes can build a model: positive sizes, `d_model` divisible by `n_heads` into an even
    /// `head_dim` (RoPE rotates pairs), `rank > 0`, `pad_id < vocab_size`.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(NnError::InvalidConfig { reason });
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("ffn_dim", self.ffn_dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("max_seq_len", self.max_seq_len),
        ];
        if let Some((field, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return invalid(format!("{field} must be positive"));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return invalid(format!("d_model {} is not divisible by n_heads {}", self.d_model, self.n_heads));
        }
        if !self.head_dim().is_multiple_of(2) {
            return invalid(format!(
                "head_dim {} (d_model {} / n_heads {}) must be even for RoPE",
                self.head_dim(),
                self.d_model,
                self.n_heads
            ));
        }
        if self.rank == Some(0) {
            return invalid("rank must be positive (use None for dense projections)".into());
        }

        if self.pad_id as usize >= self.vocab_size {
            return invalid(format!("pad_id {} is not below vocab_size {}", self.pad_id, self.vocab_size));
        }
        if !(self.norm_eps > 0.0 && self.rope_theta > 0.0) {
            return invalid(format!(
                "norm_eps {} and rope_theta {} must be positive",
                self.norm_eps, self.rope_theta
            ));
        }
        Ok(())
    }

    /// Every parameter of the model as `(checkpoint name, in-memory shape, role)`, in the model's
    /// parameter order, computed from the config alone (no allocation of the tensors).
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>, ParamKind)> {
        let (d, f, v) = (self.d_model, self.ffn_dim, self.vocab_size);
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d], ParamKind::Table)];
        let projection = |out: &mut Vec<_>, name: String, fan_in: usize, fan_out: usize| match self.rank {
            Some(r) => {
                out.push((format!("{name}.cola_a"), vec![fan_in, r], ParamKind::LowRank));
                out.push((format!("{name}.cola_b"), vec![r, fan_out], ParamKind::LowRank));
            }
            None => out.push((format!("{name}.weight"), vec![fan_in, fan_out], ParamKind::Dense)),
        };
        for i in 0..self.n_layers {
            let layer = format!("model.layers.{i}");
            out.push((format!("{layer}.input_layernorm.weight"), vec![d], ParamKind::Vector));
            for p in ["q", "k", "v", "o"] {
                projection(&mut out, format!("{layer}.self_attn.{p}_proj"), d, d);
            }
            out.push((format!("{layer}.post_attention_layernorm.weight"), vec![d], ParamKind::Vector));
            projection(&mut out, format!("{layer}.mlp.gate_proj"), d, f);
            projection(&mut out, format!("{layer}.mlp.up_proj"), d, f);
            projection(&mut out, format!("{layer}.mlp.down_proj"), f, d);
        }
        out.push(("model.norm.weight".to_string(), vec![d], ParamKind::Vector));
        out.push(("lm_head.weight".to_string(), vec![d, v], ParamKind::Dense));
        out
    }

    /// Parameter counts from the shapes alone (usable for presets too large to allocate).
    pub fn param_counts(&self) -> ParamCounts {
        let mut counts = ParamCounts::default();
        for (_, shape, kind) in self.parameter_shapes() {
            counts.add(kind, shape.iter().product());
        }
        counts
    }
}

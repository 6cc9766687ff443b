//! What a preset costs: parameter counts, FLOPs per token (docs/METHOD.md section 8) and measured activation
//! memory under each retention policy. Used by `llama_cola_350m --audit` and `examples/bench_memory.rs`.
//!
//! Memory is measured, not modelled: one micro-batch goes through the tape under the policy and the tape's
//! accounting reports the bytes of activation buffers it holds (see `cola_autograd::MemoryStats`).
//!
//! `formulas.rs` holds the closed forms of all three, `checks.rs` and `probes.rs` what the code gives to
//! compare them with (small recorded models), and `document.rs` writes `docs/AUDIT.md` from both.
pub mod checks;
pub mod cluster;
pub mod document;
pub mod formulas;
pub mod probes;

use cola_autograd::{GradStore, MemoryStats, Policy, Tape};
use cola_nn::{Init, Llama, LlamaConfig, NnError, Preset, Variant};
use cola_tensor::{DType, Rng};
use std::time::Instant;

/// Forward and training (forward + backward = 3x forward) FLOPs per token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlopsPerToken {
    pub forward: f64,
    pub training: f64,
}

/// How attention is counted: every query against all n keys (docs/METHOD.md section 8, what `--audit`
/// prints and MFU uses), or against the `(n + 1) / 2` keys a causal query sees on average (what the kernels
/// do and the profiler counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionCount {
    AllKeys,
    Causal,
}

/// docs/METHOD.md section 8: per layer full `2 (4 d^2 + 3 d f)`, CoLA `2 (8 r d + 3 r (d + f))`, attention
/// `4 n d` for sequence length n; the head `2 d V`.
pub fn flops_per_token(config: &LlamaConfig, seq_len: usize) -> FlopsPerToken {
    flops_per_token_counting(config, seq_len, AttentionCount::AllKeys)
}

/// [`flops_per_token`] with attention counted as `count` says: `4 n d` per layer, or `2 (n + 1) d` causal.
pub fn flops_per_token_counting(
    config: &LlamaConfig,
    seq_len: usize,
    count: AttentionCount,
) -> FlopsPerToken {
    let (d, f, v) = (config.d_model as f64, config.ffn_dim as f64, config.vocab_size as f64);
    let projections = match config.rank {
        Some(r) => 2.0 * (8.0 * r as f64 * d + 3.0 * r as f64 * (d + f)),
        None => 2.0 * (4.0 * d * d + 3.0 * d * f),
    };
    let n = seq_len as f64;
    let attention = match count {
        AttentionCount::AllKeys => 4.0 * n * d,
        AttentionCount::Causal => 2.0 * (n + 1.0) * d,
    };
    let forward = config.n_layers as f64 * (projections + attention) + 2.0 * d * v;
    FlopsPerToken { forward, training: 3.0 * forward }
}

/// One training micro-batch measured under one policy (f32 on the CPU).
#[derive(Clone, Debug, PartialEq)]
pub struct StepMemory {
    pub policy: Policy,
    pub tokens: usize,
    pub activations: MemoryStats,
    pub param_bytes: usize,
    /// Parameter gradients (one f32 per parameter).
    pub grad_bytes: usize,
    /// AdamW's two moments.
    pub optimizer_bytes: usize,
    pub step_seconds: f64,
}

impl StepMemory {
    pub fn saved_bytes_per_token(&self) -> f64 {
        self.activations.saved_bytes as f64 / self.tokens as f64
    }

    /// Peak of a step: parameters, gradients and optimizer state stay resident; on top, the larger of the
    /// forward and backward activation peaks (the backward one includes gradients in flight).
    pub fn peak_step_bytes(&self) -> usize {
        let resident = self.param_bytes + self.grad_bytes + self.optimizer_bytes;
        resident + self.activations.forward_peak_bytes.max(self.activations.backward_peak_bytes)
    }
}

/// Runs forward and backward of `ids` (`[batch, seq]`) under `policy` and reports memory and time.
pub fn measure_step(
    model: &Llama,
    policy: Policy,
    ids: &[u32],
    batch: usize,
    seq: usize,
) -> Result<StepMemory, NnError> {
    let start = Instant::now();
    let mut tape = Tape::with_policy(policy);
    let loss = model.loss(&mut tape, ids, batch, seq)?;
    let grads = tape.backward(loss)?;
    let mut store = GradStore::new();
    store.accumulate(&grads)?;
    let step_seconds = start.elapsed().as_secs_f64();
    let param_bytes: usize = model.parameters().iter().map(|p| p.value().size_in_bytes()).sum();
    let grad_bytes: usize = store.iter().map(|(_, g)| g.size_in_bytes()).sum();
    Ok(StepMemory {
        policy,
        tokens: batch * seq,
        activations: tape.memory_stats(),
        param_bytes,
        grad_bytes,
        optimizer_bytes: crate::dist::zero::optimizer_bytes_per_rank(model.param_counts().total, 1, false),
        step_seconds,
    })
}

/// Token ids for a synthetic micro-batch: uniform over `1..vocab`, no padding.
pub fn synthetic_ids(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| 1 + rng.below(vocab as u64 - 1) as u32).collect()
}

/// Saved activation bytes per token split into one decoder layer's share and the rest, measured on
/// zero-initialised copies of `config` with one and two layers (values do not change memory).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerTokenBytes {
    pub per_layer: f64,
    pub non_layer: f64,
}

impl PerTokenBytes {
    /// Saved activation bytes of a micro-batch of `tokens` for a model of `layers` layers.
    pub fn saved_bytes(&self, layers: usize, tokens: usize) -> f64 {
        (self.per_layer * layers as f64 + self.non_layer) * tokens as f64
    }
}

/// Measures [`PerTokenBytes`] for `config` under `policy` with a `batch x seq` micro-batch.
pub fn per_token_bytes(
    config: &LlamaConfig,
    policy: Policy,
    batch: usize,
    seq: usize,
) -> Result<PerTokenBytes, NnError> {
    let ids = synthetic_ids(config.vocab_size, batch * seq, 1);
    let mut saved = [0.0; 2];
    for (i, layers) in [1, 2].into_iter().enumerate() {
        let small = LlamaConfig { n_layers: layers, ..config.clone() };
        let model = Llama::build(small, DType::F32, &mut Init::Zeros)?;
        saved[i] = measure_step(&model, policy, &ids, batch, seq)?.activations.saved_bytes as f64;
    }
    let tokens = (batch * seq) as f64;
    let per_layer = (saved[1] - saved[0]) / tokens;
    Ok(PerTokenBytes { per_layer, non_layer: saved[0] / tokens - per_layer })
}

/// Bytes as a short human string (MiB / GiB).
pub fn human_bytes(bytes: f64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    if bytes >= GIB {
        format!("{:.2} GiB", bytes / GIB)
    } else {
        format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
    }
}

/// The `--audit` report of one preset: sizes, FLOPs and one measured micro-batch per applicable policy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Audit {
    pub preset: String,
    /// Rows of the embedding and the head: the vocabulary a run of the preset would use.
    pub vocab_size: usize,
    pub params_total: usize,
    pub params_low_rank: usize,
    pub params_other: usize,
    pub forward_flops_per_token: f64,
    pub training_flops_per_token: f64,
    pub micro_batch: usize,
    pub seq_len: usize,
    /// Empty in the report of [`sizes`], which builds no model.
    pub policies: Vec<AuditRow>,
    /// The ranks of the run ([`Audit::per_rank`]; 1 in one process).
    pub ranks: usize,
    /// Whether the optimizer state is sharded over the ranks (`--zero 1`).
    pub zero: bool,
    /// AdamW's two f32 moments held by each rank: the whole, or one shard under ZeRO-1.
    pub optimizer_bytes_per_rank: usize,
}

/// One policy's measurement in an [`Audit`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditRow {
    pub policy: String,
    pub saved_bytes_per_token: f64,
    pub saved_bytes: usize,
    pub forward_peak_bytes: usize,
    pub backward_peak_bytes: usize,
    pub peak_step_bytes: usize,
    pub step_seconds: f64,
}

/// The model an audit describes: `preset` as `variant` changes it (checked), with `vocab_size` rows of
/// embedding and head.
fn audited_config(preset: Preset, variant: &Variant, vocab_size: usize) -> Result<LlamaConfig, NnError> {
    variant.apply(&LlamaConfig { vocab_size, ..preset.config() })
}

/// The part of [`audit`] that follows from the shapes alone: parameter counts and FLOPs of `preset` as
/// `variant` changes it, with `vocab_size` rows of embedding and head, and no policy rows. Nothing is
/// allocated, so it answers at once for every preset, 7b included.
pub fn sizes(
    preset: Preset,
    variant: &Variant,
    vocab_size: usize,
    micro_batch: usize,
    seq_len: usize,
) -> Result<Audit, NnError> {
    let config = audited_config(preset, variant, vocab_size)?;
    let counts = config.param_counts();
    let flops = flops_per_token(&config, seq_len);
    Ok(Audit {
        preset: format!("{preset} {}", variant.flags()).trim_end().to_string(),
        vocab_size,
        params_total: counts.total,
        params_low_rank: counts.low_rank,
        params_other: counts.other,
        forward_flops_per_token: flops.forward,
        training_flops_per_token: flops.training,
        micro_batch,
        seq_len,
        policies: Vec::new(),
        ranks: 1,
        zero: false,
        optimizer_bytes_per_rank: crate::dist::zero::optimizer_bytes_per_rank(counts.total, 1, false),
    })
}

/// [`sizes`], then one `micro_batch x seq_len` micro-batch per policy that applies to the preset
/// ([`LlamaConfig::policies`]) through a model with `vocab_size` rows of embedding and head. The weights are
/// zeros (memory and time do not depend on values), so even large presets start at once.
pub fn audit(
    preset: Preset,
    variant: &Variant,
    vocab_size: usize,
    micro_batch: usize,
    seq_len: usize,
) -> Result<Audit, NnError> {
    let mut report = sizes(preset, variant, vocab_size, micro_batch, seq_len)?;
    let config = audited_config(preset, variant, vocab_size)?;
    let model = Llama::build(config.clone(), DType::F32, &mut Init::Zeros)?;
    let ids = synthetic_ids(vocab_size, micro_batch * seq_len, 1);
    for policy in config.policies() {
        let m = measure_step(&model, policy, &ids, micro_batch, seq_len)?;
        report.policies.push(AuditRow {
            policy: policy.name().to_string(),
            saved_bytes_per_token: m.saved_bytes_per_token(),
            saved_bytes: m.activations.saved_bytes,
            forward_peak_bytes: m.activations.forward_peak_bytes,
            backward_peak_bytes: m.activations.backward_peak_bytes,
            peak_step_bytes: m.peak_step_bytes(),
            step_seconds: m.step_seconds,
        });
    }
    Ok(report)
}

impl Audit {
    /// The report for one of `ranks` ranks, with the optimizer sharded when `zero` (ZeRO-1): its
    /// optimizer bytes, and each policy's step peak with this rank's optimizer state in place of the
    /// whole.
    pub fn per_rank(mut self, ranks: usize, zero: bool) -> Audit {
        let whole = self.optimizer_bytes_per_rank;
        let mine = crate::dist::zero::optimizer_bytes_per_rank(self.params_total, ranks, zero);
        for row in &mut self.policies {
            row.peak_step_bytes = row.peak_step_bytes - whole + mine;
        }
        Audit { ranks: ranks.max(1), zero, optimizer_bytes_per_rank: mine, ..self }
    }
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "audit of {} (f32, CPU)", self.preset)?;
        writeln!(
            f,
            "parameters: {} total, {} low-rank, {} other (vocabulary {})",
            self.params_total, self.params_low_rank, self.params_other, self.vocab_size
        )?;
        writeln!(
            f,
            "FLOPs per token: forward {:.3} G, training {:.3} G (seq_len {})",
            self.forward_flops_per_token / 1e9,
            self.training_flops_per_token / 1e9,
            self.seq_len
        )?;
        writeln!(
            f,
            "optimizer: {} of AdamW moments per rank ({})",
            human_bytes(self.optimizer_bytes_per_rank as f64),
            match (self.zero, self.ranks) {
                (true, ranks) => format!("ZeRO-1: one shard of {ranks}"),
                (false, 1) => "one process".to_string(),
                (false, ranks) => format!("whole on each of {ranks} ranks"),
            }
        )?;
        if self.policies.is_empty() {
            return Ok(());
        }
        writeln!(f, "one micro-batch of {} x {} tokens through the tape:", self.micro_batch, self.seq_len)?;
        writeln!(
            f,
            "{:<8} {:>14} {:>12} {:>12} {:>12} {:>12} {:>8}",
            "policy", "saved B/token", "saved", "fwd peak", "bwd peak", "step peak", "step s"
        )?;
        for row in &self.policies {
            writeln!(
                f,
                "{:<8} {:>14.0} {:>12} {:>12} {:>12} {:>12} {:>8.2}",
                row.policy,
                row.saved_bytes_per_token,
                human_bytes(row.saved_bytes as f64),
                human_bytes(row.forward_peak_bytes as f64),
                human_bytes(row.backward_peak_bytes as f64),
                human_bytes(row.peak_step_bytes as f64),
                row.step_seconds
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The optimizer bytes per rank are arithmetic on the parameter count, so they are checked exactly.
    use super::*;

    #[test]
    fn zero_one_divides_the_optimizer_bytes_among_the_ranks() {
        let preset: Preset = "cola-60m".parse().unwrap();
        let one = sizes(preset, &Variant::default(), 32000, 1, 16).unwrap();
        let whole = 2 * 4 * one.params_total;
        assert_eq!(one.optimizer_bytes_per_rank, whole);
        let plain = sizes(preset, &Variant::default(), 32000, 1, 16).unwrap().per_rank(2, false);
        assert_eq!(plain.optimizer_bytes_per_rank, whole);
        let zero = sizes(preset, &Variant::default(), 32000, 1, 16).unwrap().per_rank(3, true);
        assert_eq!(zero.optimizer_bytes_per_rank, 2 * 4 * one.params_total.div_ceil(3));
        assert!(zero.to_string().contains("per rank (ZeRO-1: one shard of 3)"), "{zero}");
    }
}

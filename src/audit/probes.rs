//! The small models `docs/AUDIT.md` checks its FLOP and byte formulas on: a preset's widths (d, f, r,
//! heads, gate SiLU) with a 64-entry vocabulary, `b = 2` sequences of `n = 16` tokens, one and two layers
//! (two points separate the per-layer bytes from the rest), recorded in f32 and, with two layers, in bf16.
//! Every figure is compared with its closed form as it is recorded; the tables print what the code gave.
use super::checks::{agree, counted_or_error, record_step, AuditError, RecordedStep};
use super::document::grouped;
use super::formulas::{saved_bytes, Batch, Dims};
use cola_autograd::Policy;
use cola_nn::{LlamaConfig, Preset, Size};
use cola_tensor::DType;
use std::fmt::Write as _;

/// Sizes whose widths are probed: tiny, 60m (MLP gate SiLU kept) and 350m (dropped; the README's figures).
/// A two-layer model of 350m's widths with the small vocabulary records in a fraction of a second.
const SIZES: [Size; 3] = [Size::Tiny, Size::M60, Size::M350];
const VOCAB: usize = 64;
const BATCH: Batch = Batch { b: 2, n: 16 };

/// The policies of a model: `none`, `cola-m` (CoLA only), `block`.
pub fn policies(config: &LlamaConfig) -> Vec<Policy> {
    let mut out = vec![Policy::KeepAll];
    if config.is_cola() {
        out.push(Policy::ColaM);
    }
    out.push(Policy::Block);
    out
}

/// One probe model under one policy.
pub struct Probe {
    pub name: String,
    pub policy: Policy,
    pub f32_one_layer: RecordedStep,
    pub f32_two_layers: RecordedStep,
    pub bf16_two_layers: RecordedStep,
}

/// Every probe, recorded and checked.
pub struct Probes(Vec<Probe>);

impl Probes {
    /// Records each probe model under each of its policies and compares the profiler's FLOPs (two
    /// layers) and the tape's saved bytes (every recording) with [`counted`] and [`saved_bytes`].
    pub fn record() -> Result<Probes, AuditError> {
        let mut out = Vec::new();
        for preset in SIZES.iter().flat_map(|&s| Preset::ALL.into_iter().filter(move |p| p.size == s)) {
            let name = format!("{preset} widths");
            let with_layers = |n_layers| LlamaConfig { vocab_size: VOCAB, n_layers, ..preset.config() };
            let (one, two) = (with_layers(1), with_layers(2));
            for policy in policies(&one) {
                let bytes = |config: &LlamaConfig, dtype: DType, elem: u64| -> Result<_, AuditError> {
                    let step = record_step(config, dtype, policy, BATCH)?;
                    let formula = saved_bytes(&Dims::of(config), BATCH, policy, elem);
                    let what = || {
                        format!("{name}, L = {}, {} {dtype:?}: saved bytes", config.n_layers, policy.name())
                    };
                    agree(what, formula, step.saved_bytes)?;
                    Ok(step)
                };
                let probe = Probe {
                    name: name.clone(),
                    policy,
                    f32_one_layer: bytes(&one, DType::F32, 4)?,
                    f32_two_layers: bytes(&two, DType::F32, 4)?,
                    bf16_two_layers: bytes(&two, DType::BF16, 2)?,
                };
                let formula = counted_or_error(&Dims::of(&two), BATCH, policy)?;
                let step = probe.f32_two_layers;
                let what = |dir: &str| format!("{name}, L = 2, {}: {dir} FLOPs", policy.name());
                agree(|| what("forward"), formula.forward_rows(), step.forward)?;
                agree(|| what("backward"), formula.backward, step.backward)?;
                agree(|| what("recompute"), formula.recompute, step.recompute)?;
                out.push(probe);
            }
        }
        Ok(Probes(out))
    }

    /// The profiler's FLOPs of the two-layer probes.
    pub fn flops_table(&self) -> String {
        let mut out = format!(
            "\nThe closed forms against the profiler: one recorded step (`loss`, `backward`) of the \
             widths below with V = {VOCAB}, L = 2, b = {}, n = {}, FLOPs over the micro-batch, each \
             equal to its closed form (the trainer adds 3 FLOPs per micro-batch when it weights several: \
             the loss scaling):\n\n\
             | model | policy | forward rows | backward | recompute |\n|---|---|---|---|---|\n",
            BATCH.b, BATCH.n
        );
        for probe in &self.0 {
            let step = probe.f32_two_layers;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                probe.name,
                probe.policy.name(),
                grouped(step.forward),
                grouped(step.backward),
                grouped(step.recompute)
            );
        }
        out
    }

    /// The tape's saved bytes of every probe.
    pub fn memory_table(&self) -> String {
        let mut out = format!(
            "The closed form against the tape: saved bytes of one recorded step of the widths below \
             with V = {VOCAB}, b = {}, n = {}, each equal to `saved_bytes` (bf16 as CPU storage):\n\n\
             | model | policy | f32, L = 1 | f32, L = 2 | bf16, L = 2 |\n|---|---|---|---|---|\n",
            BATCH.b, BATCH.n
        );
        for probe in &self.0 {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                probe.name,
                probe.policy.name(),
                grouped(probe.f32_one_layer.saved_bytes),
                grouped(probe.f32_two_layers.saved_bytes),
                grouped(probe.bf16_two_layers.saved_bytes)
            );
        }
        out
    }
}

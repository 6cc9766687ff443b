//! `docs/AUDIT.md`: parameters, FLOPs and saved activation bytes of every preset, each closed form of
//! `formulas.rs` printed with its value and compared with what the code gives (`checks.rs`): the model's
//! shapes and allocated tensors, the profiler's counts and the tape's saved bytes on small models.
//! `examples/audit_doc.rs` prints it; `tests/suite/audit_doc.rs` fails when the committed file differs.
use super::checks::{agree, allocated_params, counted_or_error, AuditError};
use super::formulas::{
    self, layer_slots, params, params_text, reconcile, saved_bytes, Batch, Dims, COUNTED_TEXT,
    SAVED_OUTSIDE_TEXT,
};
use super::probes::{policies, Probes};
use super::{flops_per_token, flops_per_token_counting, AttentionCount};
use cola_autograd::{Policy, Retention};
use cola_nn::{Family, LlamaConfig, Preset, Size};
use std::fmt::Write as _;

/// The command that rewrites the document.
pub const COMMAND: &str = "cargo run --release --example audit_doc > docs/AUDIT.md";

/// Presets whose allocated model is counted (zeros; at most 60m).
const ALLOCATED_SIZES: [Size; 2] = [Size::Tiny, Size::M60];

/// `1234567` as `1,234,567`.
pub fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `total / tokens`, grouped when whole, else with two decimals.
fn per_token(total: u64, tokens: u64) -> String {
    if total.is_multiple_of(tokens) {
        grouped(total / tokens)
    } else {
        format!("{:.2}", total as f64 / tokens as f64)
    }
}

/// A signed `total / tokens`, as [`per_token`] prints it.
fn signed_per_token(total: i128, tokens: u64) -> String {
    let magnitude = per_token(total.unsigned_abs() as u64, tokens);
    if total < 0 {
        format!("-{magnitude}")
    } else {
        magnitude
    }
}

fn mflop(total: u64, tokens: u64) -> String {
    format!("{:.3}", total as f64 / tokens as f64 / 1e6)
}

/// A preset's own micro-batch for per-token figures: one sequence of its context length.
fn batch_of(config: &LlamaConfig) -> Batch {
    Batch { b: 1, n: config.max_seq_len as u64 }
}

/// The whole document.
pub fn render() -> Result<String, AuditError> {
    let mut out = String::new();
    header(&mut out);
    parameters(&mut out)?;
    let probes = Probes::record()?;
    flops(&mut out, &probes)?;
    memory(&mut out, &probes)?;
    super::cluster::section(&mut out)?;
    Ok(out)
}

fn header(out: &mut String) {
    let _ = write!(
        out,
        "# Audit: parameters, FLOPs and saved activations of every preset\n\n\
         Written by `{COMMAND}`; `tests/suite/audit_doc.rs` writes it again and fails when this file differs.\n\n\
         Each formula below is evaluated by `src/audit/formulas.rs`, written apart from the code it \
         describes, and compared with what that code gives: parameter counts with \
         `LlamaConfig::param_counts` (the shapes the model is built with, what `--audit` prints) for all 12 \
         presets and with allocated models up to 60m; FLOPs with `cola::audit::flops_per_token` (what \
         `--audit` prints) and with the profiler of `--profile`; saved bytes with the tape's retention \
         policies and memory accounting. The profiler and the tape run on recorded steps of small models \
         with the widths of the tiny, 60m and 350m presets, a 64-entry vocabulary and one or two layers \
         (the last table of sections 2 and 3); the other figures are the closed forms those steps confirm. Any difference stops the program, so no formula here \
         can drift from the code.\n\n\
         Symbols: `d` hidden width, `f` MLP width, `r` rank (CoLA), `L` layers, `V` vocabulary, `h` heads; \
         a micro-batch is `b` sequences of `n` tokens, `T = b n`. Per-token figures use one sequence of \
         the preset's context (`n = 256`, 16 for the tiny presets); the method is `docs/METHOD.md`. \
         Section 4 prices data parallelism at 8 ranks from these counts and formulas \
         (`src/audit/cluster.rs`).\n\n"
    );
}

fn parameters(out: &mut String) -> Result<(), AuditError> {
    let (cola_low, cola_dense) = params_text(true);
    let (_, full_dense) = params_text(false);
    let _ = write!(
        out,
        "## 1. Parameters\n\n\
         CoLA: low-rank `{cola_low}`, dense `{cola_dense}` (embedding, untied head, `2 L + 1` RMSNorm \
         weights). Full rank: dense `{full_dense}`. Per layer the seven projections hold `r (in + out)` \
         weights each (q, k, v, o `d -> d`; gate, up `d -> f`; down `f -> d`) or `in out` dense.\n\n\
         The counts are `LlamaConfig::param_counts`, from the shapes the model is built with (what \
         `--audit` prints); each equals its formula.\n\n\
         | preset | d | f | L | h | r | V | total | low-rank | = formula | dense | = formula |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for preset in Preset::ALL {
        let config = preset.config();
        let dims = Dims::of(&config);
        let counts = config.param_counts();
        let formula = params(&dims);
        let what = |part: &str| format!("{preset}: {part} parameters");
        agree(|| what("total"), formula.total, counts.total as u64)?;
        agree(|| what("low-rank"), formula.low_rank, counts.low_rank as u64)?;
        agree(|| what("dense"), formula.dense, counts.other as u64)?;
        let _ = writeln!(
            out,
            "| {preset} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            dims.d,
            dims.f,
            dims.layers,
            dims.heads,
            dims.r.map_or("-".to_string(), |r| r.to_string()),
            dims.vocab,
            grouped(counts.total as u64),
            grouped(counts.low_rank as u64),
            grouped(formula.low_rank),
            grouped(counts.other as u64),
            grouped(formula.dense),
        );
    }
    out.push_str("\nThe allocated models (zeros) count the same, `Llama::param_counts` over their tensors:");
    for size in ALLOCATED_SIZES {
        for preset in Preset::ALL.into_iter().filter(|p| p.size == size) {
            let counts = allocated_params(&preset.config())?;
            let formula = params(&Dims::of(&preset.config()));
            agree(|| format!("{preset}: allocated parameters"), formula.total, counts.total as u64)?;
            agree(|| format!("{preset}: allocated low-rank"), formula.low_rank, counts.low_rank as u64)?;
            let _ = write!(out, " {preset} {},", grouped(counts.total as u64));
        }
    }
    out.pop();
    out.push_str(".\n\n");
    Ok(())
}

fn flops(out: &mut String, probes: &Probes) -> Result<(), AuditError> {
    out.push_str(
        "## 2. FLOPs per token\n\n\
         A multiply-add is 2 FLOPs. Two counts exist, on purpose:\n\n\
         - `--audit` prints `cola::audit::flops_per_token`, docs/METHOD.md section 8: per layer the \
         projections `P` (CoLA `2 r (11 d + 3 f)`, dense `2 (4 d^2 + 3 d f)`) and attention `4 n d` \
         (every query against all n keys), plus the head `2 d V`; training is 3x forward. This is the \
         paper's convention, and the one MFU uses (`examples/bench_gpu.rs`: tokens/s x training FLOPs \
         per token / peak) and `--profile` prints as the model's GFLOP/s. Counting attention causally \
         (`2 (n + 1) d`, the `(n + 1) / 2` keys a query sees on average) gives the second column.\n\
         - `--profile` counts what each op does (`cola_autograd::profile::flops`, one formula per op and \
         direction): causal attention, the head on the `n - 1` positions that predict, the loss, norms, \
         RoPE, SiLUs, the gated product, adds; backward as its own products (2x a product, 2.5x \
         attention) and the sums of a value's gradients from several readers; the fused head forms its gradients in forward (3 products in all, as the 3x rule \
         assumes); replays of released values under `cola-m` and `block` in a recompute row.\n\n\
         The closed forms of the profiler's counts (`formulas::counted`; `Q` the products that form q, k, \
         v, gate and up, CoLA `2 r (3 d + 2 f)`, dense `2 (3 d^2 + 2 d f)`; `D` down's output product, \
         CoLA `2 r d`, dense `2 d f`; `s = 28 r` the seven SiLUs, 0 dense; `g = 5` with the gate SiLU, \
         else 1; `g' = 11` or 2; `A = 2 d n (n + 1)`):\n\n",
    );
    for (what, text) in COUNTED_TEXT {
        let _ = writeln!(out, "- {what}: `{text}`");
    }
    out.push_str(
        "\nMFLOP per token. `--audit`'s forward and training, with attention over all keys and causal:\n\n\
         | preset | n | forward (audit, MFU) | forward, causal | training (audit, MFU) | training, causal |\n\
         |---|---|---|---|---|---|\n",
    );
    for preset in Preset::ALL {
        let config = preset.config();
        let n = config.max_seq_len;
        let all = flops_per_token(&config, n);
        let causal = flops_per_token_counting(&config, n, AttentionCount::Causal);
        let _ = writeln!(
            out,
            "| {preset} | {n} | {:.3} | {:.3} | {:.3} | {:.3} |",
            all.forward / 1e6,
            causal.forward / 1e6,
            all.training / 1e6,
            causal.training / 1e6
        );
    }
    out.push_str(
        "\nFrom `--audit`'s forward to the profiler's model forward (FLOPs per token; each row sums \
         exactly, checked in integers over the micro-batch): causal attention, the head on `n - 1` of `n` \
         positions, the loss `4 V` per predicting position, and the ops the formula leaves out \
         (`L (16 d + s + g f) + 4 d`: norms, RoPE, adds, SiLUs, the gated product, the final norm):\n\n\
         | preset | audit forward | attention causal | head rows | loss | other ops | = model forward |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for preset in Preset::ALL {
        let config = preset.config();
        let (dims, batch) = (Dims::of(&config), batch_of(&config));
        let t = batch.tokens();
        let audit = (flops_per_token(&config, batch.n as usize).forward * t as f64).round() as i128;
        let parts = reconcile(&dims, batch);
        let model = counted_or_error(&dims, batch, Policy::KeepAll)?.model_forward;
        let sum = u64::try_from(audit + parts.sum()).unwrap_or(0);
        agree(|| format!("{preset}: audit forward reconciled with the profiler's"), model, sum)?;
        let m = |v: i128| signed_per_token(v, t);
        let _ = writeln!(
            out,
            "| {preset} | {} | {} | {} | {} | {} | {} |",
            m(audit),
            m(parts.attention),
            m(parts.head_rows),
            m(parts.loss),
            m(parts.other_ops),
            per_token(model, t)
        );
    }
    out.push_str(
        "\nWhat `--profile` counts per step, MFLOP per token: its forward rows (model forward and the head's \
         gradients), backward, recompute, and the training total per policy against `--audit`'s training \
         (the last column: the ratio for `none`):\n\n\
         | preset | forward rows | backward | recompute cola-m | recompute block | training none | \
         cola-m | block | none / audit |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for preset in Preset::ALL {
        let config = preset.config();
        let (dims, batch) = (Dims::of(&config), batch_of(&config));
        let t = batch.tokens();
        let none = counted_or_error(&dims, batch, Policy::KeepAll)?;
        let colam =
            if config.is_cola() { Some(counted_or_error(&dims, batch, Policy::ColaM)?) } else { None };
        let block = counted_or_error(&dims, batch, Policy::Block)?;
        let audit = flops_per_token(&config, batch.n as usize).training;
        let dash = || "-".to_string();
        let _ = writeln!(
            out,
            "| {preset} | {} | {} | {} | {} | {} | {} | {} | {:.3} |",
            mflop(none.forward_rows(), t),
            mflop(none.backward, t),
            colam.map_or_else(dash, |c| mflop(c.recompute, t)),
            mflop(block.recompute, t),
            mflop(none.training(), t),
            colam.map_or_else(dash, |c| mflop(c.training(), t)),
            mflop(block.training(), t),
            none.training() as f64 / t as f64 / audit
        );
    }
    out.push_str(&probes.flops_table());
    Ok(())
}

fn memory(out: &mut String, probes: &Probes) -> Result<(), AuditError> {
    out.push_str(
        "\n## 3. Saved activation bytes per token\n\n\
         What the tape holds when backward starts (`MemoryStats::saved_bytes`: distinct buffers of \
         non-leaf values some backward reads, after the policy's releases). A decoder layer holds, per \
         token, by the kind the model marks (`SlotKind`) and as each policy's `Policy::retention` decides \
         inside a layer:\n\n\
         | slot kind | values per token | what | none | cola-m | block |\n|---|---|---|---|---|---|\n",
    );
    let cola = Dims::of(&Preset::new(Family::Cola, Size::M350).config());
    for term in layer_slots(&cola) {
        let keep = |policy: Policy| match policy.retention(term.kind, true) {
            Retention::Keep => "kept",
            Retention::Recompute => "recomputed",
        };
        let _ = writeln!(
            out,
            "| {:?} | `{}` | {} | {} | {} | {} |",
            term.kind,
            term.text,
            term.what,
            keep(Policy::KeepAll),
            keep(Policy::ColaM),
            keep(Policy::Block)
        );
    }
    let _ = write!(
        out,
        "\nA layer's input is the previous layer's output (one buffer, counted once). Full rank has no \
         `7 r` terms. Outside the layers every policy keeps `{SAVED_OUTSIDE_TEXT}` values: the last \
         layer's output (the final norm's backward reads it) and the gradient the fused head formed in \
         forward for its `b (n - 1)` predicting rows (the logits are never saved). With `e` bytes per \
         value (4 in f32, 2 in bf16) a micro-batch saves `e (L T layer + {SAVED_OUTSIDE_TEXT})`, so per \
         token `e (L layer + d (2 n - 1) / n)`: none `8 d + 3 f + 14 r`, cola-m `2 d + 7 r`, block `d` \
         per layer. On a GPU, flash attention (head_dim 64 or 128) also keeps one f32 log-sum-exp per \
         head and token under `none`, `4 h L` bytes per token (the last column, from the formula alone: this program runs on the CPU, \
         whose kernel keeps none).\n\n\
         | preset | policy | per layer | f32 B/token | bf16 B/token | bf16 on a GPU |\n\
         |---|---|---|---|---|---|\n"
    );
    for preset in Preset::ALL {
        let config = preset.config();
        let (dims, batch) = (Dims::of(&config), batch_of(&config));
        let t = batch.tokens();
        let flash = matches!(config.head_dim(), 64 | 128);
        for policy in policies(&config) {
            let bf16 = saved_bytes(&dims, batch, policy, 2);
            let gpu = formulas::gpu_saved_bytes(&dims, batch, policy, flash);
            let _ = writeln!(
                out,
                "| {preset} | {} | {} | {} | {} | {} |",
                policy.name(),
                grouped(formulas::saved_layer_values(&dims, policy)),
                per_token(saved_bytes(&dims, batch, policy, 4), t),
                per_token(bf16, t),
                per_token(gpu, t)
            );
        }
    }
    explain_350m(out);
    out.push_str(&probes.memory_table());
    Ok(())
}

/// The 350m figures in words, each computed.
fn explain_350m(out: &mut String) {
    let (cola, full) =
        (Preset::new(Family::Cola, Size::M350).config(), Preset::new(Family::Full, Size::M350).config());
    let (c, fl, batch) = (Dims::of(&cola), Dims::of(&full), batch_of(&cola));
    let t = batch.tokens();
    let bytes = |dims: &Dims, policy| saved_bytes(dims, batch, policy, 4) / t;
    let r = c.r.unwrap_or(0);
    let layer_m = formulas::saved_layer_values(&c, Policy::ColaM);
    let outside = 4 * formulas::saved_outside_values(&c, batch) / t;
    let extra = bytes(&c, Policy::KeepAll) - bytes(&fl, Policy::KeepAll);
    let _ = write!(
        out,
        "\nAt 350m (d = {d}, f = {f}, r = {r}, L = {l}, n = {n}) CoLA-M saves {} B per token: {l} layers x \
         (2 x {d} + 7 x {r} = {layer_m} values) x 4 B = {} B, plus {} B outside the layers \
         ({d} x 4 for the last layer's output and {d} x 4 x {}/{n} for the head's gradient). Without \
         recomputation CoLA keeps {} B against full rank's {} B: the same `8 d + 3 f` per layer, and on \
         top the seven `x @ A` and the seven codes, `14 r` values, which a dense projection does not have \
         ({l} x 14 x {r} x 4 = {} B). CoLA's saving is in parameters and FLOPs; in memory it comes \
         with CoLA-M.\n\n",
        grouped(bytes(&c, Policy::ColaM)),
        grouped(c.layers * layer_m * 4),
        grouped(outside),
        batch.n - 1,
        grouped(bytes(&c, Policy::KeepAll)),
        grouped(bytes(&fl, Policy::KeepAll)),
        grouped(extra),
        d = c.d,
        f = c.f,
        l = c.layers,
        n = batch.n,
    );
}

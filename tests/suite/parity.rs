//! Parity with an independent PyTorch implementation of LLaMA-CoLA (`scripts/reference/parity.py`).
//!
//! The property tests prove every op against its own finite differences; they cannot see a model that is
//! consistently wrong (a misplaced norm, the wrong RoPE pairs, the wrong loss mask, a schedule off by one
//! step). Here the fixtures of `tests/fixtures/parity/` (see `tests/fixtures/README.md`) hold weights and
//! token batches exported from this stack and what PyTorch computes from them: logits, the loss, every
//! gradient, and ten training updates (AdamW, global-norm clipping, warmup + cosine). Each is compared in
//! f64 and in f32, under every retention policy, and the training runs through [`Trainer`] itself, with two
//! micro-batches per update. In bf16 (pure bf16: weights, activations and gradients stored in bf16) the
//! logits, loss and every gradient are compared under every retention policy, beside the gap between
//! PyTorch's bf16 and f32 results, the noise floor that bf16 rounding alone makes.
//!
//! Error measure, per tensor: `max |ours - reference| / max(max |reference|, 1e-30)`, the largest
//! absolute difference relative to the tensor's scale. Run with `-- --nocapture` to see the largest
//! relative error of every compared quantity.
use cola::autograd::Policy;
use cola::data::Batch;
use cola::nn::{load_safetensors, Llama, LlamaConfig, Module, ParamKind, Preset, PRESET_NAMES, WEIGHTS_FILE};
use cola::optim::{AdamW, AdamWConfig, CosineSchedule};
use cola::train::Trainer;
use cola::{DType, Parameter, Tape, Tensor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Tolerances (relative, as defined above).
///
/// f64: both sides compute the same functions in double precision with different operation orders
/// (blocked GEMM vs PyTorch's, fused vs composed softmax and norms); rounding differences are ~1e-16
/// per operation and grow to ~1e-14 through two layers, ten AdamW updates and `m / sqrt(v)`, so 1e-10
/// leaves a wide margin while a semantic difference (an eps, a scale, a schedule step, the clipping
/// threshold) shows up at 1e-7 or more.
const F64_TOL: f64 = 1e-10;
/// f32 logits and loss: f32 epsilon is 1.2e-7; sums of up to 48 products, two layers and the softmax
/// accumulate a few 1e-7 relative to the tensor's scale.
const F32_FORWARD_TOL: f64 = 1e-5;
/// f32 gradients: backward through the same chain, with cancellations in the sums over positions.
const F32_GRAD_TOL: f64 = 1e-4;
/// f32 trajectory (ten losses, gradient norms and final weights): AdamW's `m / (sqrt(v) + eps)` turns a
/// gradient's relative error into the same relative error of its update, so weights drift by about
/// `lr * gradient error` per step: up to ~1e-5 of the weights' scale here, while a wrong schedule,
/// weight decay or clipping threshold moves the final weights by 3e-4 or more.
const F32_TRAJECTORY_TOL: f64 = 1e-4;
/// bf16 (pure bf16: the f32 fixture's weights rounded to bf16, every activation and gradient stored in
/// bf16, computed in f32 inside each op; the loss in f32). Each stored bf16 result carries a relative
/// rounding error of at most u = 2^-9 = 1.95e-3, and the two sides round at different places: PyTorch
/// rounds after every elementary op (RMSNorm twice: the normalised value, then its product with the
/// weight; RoPE four times: cos/sin, the two products, their sum; the attention scores twice, the
/// probabilities and their product with v once each; a CoLA projection three times; the gate product and
/// each residual sum once), about 59 roundings on the longest path from the embeddings to a logit of
/// cola-tiny. This stack rounds once per fused op (RMSNorm, RoPE, attention, gated product), 40 roundings
/// on the same path. The first-order worst case, n * u = 99 * u = 0.19, is larger than the error of some
/// semantic mistakes and would prove nothing; rounding errors are zero-mean and independent, so they add
/// like a random walk, sqrt(n) * u = 2.0e-2 for the logits, which is what is measured (1.7e-2 at most
/// against the bf16 reference; the bf16 reference is itself 2.0e-2 from the f32 one). The logits'
/// tolerance is 2.5 times that estimate.
const BF16_LOGITS_TOL: f64 = 5e-2;
/// The bf16 loss is computed in f32 on both sides, from the f32 GEMM accumulator here and from logits
/// rounded to bf16 in PyTorch. At initialisation the softmax is nearly uniform, so a target's
/// cross-entropy moves by about the error of its own logit, ~2e-2 of the logits' spread (0.13) = 2.6e-3;
/// the mean over the ~40 targets of independent errors divides that by sqrt(40): 4e-4, or 1e-4 of the
/// loss (4.2). Measured: 7.7e-5 at most. The tolerance is 5 times the estimate.
const BF16_LOSS_TOL: f64 = 5e-4;
/// bf16 gradients: the backward runs the chain again in reverse, rounding every op's gradient on both
/// sides (PyTorch also rounds each sum of fan-out gradients: q, k, v reading one normalised input, the
/// two residual branches), about three times the forward's roundings before a weight gradient: n ~ 300,
/// sqrt(n) * u = 3.4e-2. Measured: 6.7e-2 at most (the CoLA factors' gradients, the longest chains), and
/// the bf16 reference is up to 9.0e-2 from the f32 one. The tolerance is 4.4 times the estimate.
///
/// What the bf16 tolerances catch, measured by running these tests against bf16 references made with one
/// mistake each (the largest error of the compared quantities, in the variant where it is smallest):
/// RoPE theta 5e5 instead of 1e4, 0.24; the MLP gate's SiLU flipped, 0.59; RMSNorm centred like
/// LayerNorm, 0.64; the MLP reading the block input instead of the attention's residual sum, 0.87; the
/// causal mask letting a position see the next one, 0.89; RoPE pairs (2i, 2i+1) instead of (i, i + d/2),
/// 0.98 (full-tiny shows it in its dense projections' gradients only: at initialisation its attention is
/// nearly uniform, its logits move by 8e-3); RMSNorm without its weight, 1.06; pad targets counted in the
/// loss, 1.23; RoPE rotation sign flipped, 1.23; GELU instead of SiLU on the low-rank code, 1.58 (CoLA
/// variants); attention scale 1/d_head instead of 1/sqrt(d_head), 1.87. A mistake below bf16's resolution
/// is left to the f32 and f64 tests: RMSNorm eps 1e-5 instead of 1e-6 is caught in full-tiny (its dense
/// projections' gradients move by 0.41) but moves cola-tiny's outputs by 7e-2 at most, within the noise.
const BF16_GRAD_TOL: f64 = 1.5e-1;
/// Learning rates are computed in f64 on both sides from the same formula.
const LR_TOL: f64 = 1e-12;

const POLICIES: [&str; 4] = ["none", "cola-m", "block", "all"];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

/// `max |a - b| / max(max |b|, 1e-30)`; `b` is the reference.
fn rel_err(ours: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "element counts differ");
    let scale = reference.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    let diff = ours.iter().zip(reference).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    if diff.is_nan() || ours.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    diff / scale
}

/// A set of named tensors of known shapes, read from a safetensors file through the checkpoint loader
/// (which checks that the file holds exactly these names and shapes). Values are widened to f64.
struct Named(Vec<Parameter>);

impl Module for Named {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind)) {
        self.0.iter().for_each(|p| f(p, ParamKind::LowRank));
    }

    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind)) {
        self.0.iter_mut().for_each(|p| f(p, ParamKind::LowRank));
    }
}

fn read_tensors(path: &Path, entries: &[(String, Vec<usize>)]) -> BTreeMap<String, Vec<f64>> {
    let params =
        entries.iter().map(|(name, shape)| Parameter::new(name.clone(), Tensor::zeros(shape, DType::F64)));
    let mut named = Named(params.collect());
    load_safetensors(&mut named, path)
        .unwrap_or_else(|e| panic!("{}: {e} (regenerate with scripts/reference/run.sh)", path.display()));
    named.0.iter().map(|p| (p.name().to_string(), p.value().to_vec_f64())).collect()
}

/// A parameter's value in the on-disk layout of the reference (dense weights `[out, in]`).
fn disk_values(tensor: &Tensor, kind: ParamKind) -> Vec<f64> {
    if kind.transposed_on_disk() {
        tensor.t().unwrap().to_vec_f64()
    } else {
        tensor.to_vec_f64()
    }
}

/// The group a parameter's gradient is reported under.
fn grad_group(name: &str, kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Table => "grad embedding",
        ParamKind::Vector => "grad norms",
        ParamKind::LowRank => "grad cola factors",
        ParamKind::Dense if name == "lm_head.weight" => "grad head",
        ParamKind::Dense => "grad dense projections",
    }
}

/// One variant folder: its description (`batch.json`) and its config.
struct Variant {
    dir: PathBuf,
    spec: Value,
    config: LlamaConfig,
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("an unsigned integer") as usize
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().expect("a number")
}

fn tokens_of(v: &Value) -> Vec<u32> {
    v.as_array().expect("a token list").iter().map(|t| usize_of(t) as u32).collect()
}

impl Variant {
    fn load(name: &str) -> Variant {
        let dir = fixture_dir().join(name);
        let path = dir.join("batch.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let spec: Value = serde_json::from_str(&text).unwrap();
        let c = &spec["config"];
        let mut config = LlamaConfig::preset(spec["preset"].as_str().unwrap()).unwrap();
        config.mlp_gate_silu = c["mlp_gate_silu"].as_bool().unwrap();
        let exported = LlamaConfig {
            vocab_size: usize_of(&c["vocab_size"]),
            d_model: usize_of(&c["d_model"]),
            ffn_dim: usize_of(&c["ffn_dim"]),
            n_layers: usize_of(&c["n_layers"]),
            n_heads: usize_of(&c["n_heads"]),
            rank: c["rank"].as_u64().map(|r| r as usize),
            lowrank_act: cola::nn::LowRankActivation::Silu,
            mlp_gate_silu: config.mlp_gate_silu,
            rope_theta: f64_of(&c["rope_theta"]),
            norm_eps: f64_of(&c["norm_eps"]),
            max_seq_len: usize_of(&c["max_seq_len"]),
            pad_id: usize_of(&c["pad_id"]) as u32,
        };
        assert_eq!(
            config, exported,
            "{name}: the preset changed since the fixtures were made; regenerate them"
        );
        Variant { dir, spec, config }
    }

    fn rows(&self) -> usize {
        usize_of(&self.spec["rows"])
    }

    fn seq(&self) -> usize {
        usize_of(&self.spec["seq_len"])
    }

    fn train(&self) -> &Value {
        &self.spec["train"]
    }

    fn model(&self, dtype: DType) -> Llama {
        Llama::from_safetensors(self.config.clone(), &self.dir.join(WEIGHTS_FILE), dtype).unwrap()
    }

    /// The reference outputs for `dtype` (`reference-<dtype>.safetensors`). The bf16 file holds the
    /// logits, loss and gradients only (no training trajectory; see `scripts/reference/parity.py`).
    fn reference(&self, dtype: DType, model: &Llama) -> BTreeMap<String, Vec<f64>> {
        let (rows, seq, vocab) = (self.rows(), self.seq(), self.config.vocab_size);
        let steps = self.train()["batches"].as_array().unwrap().len();
        let trajectory = dtype != DType::BF16;
        let mut entries = vec![("logits".to_string(), vec![rows, seq, vocab]), ("loss".to_string(), vec![1])];
        if trajectory {
            for name in ["train.loss", "train.grad_norm", "train.lr"] {
                entries.push((name.to_string(), vec![steps]));
            }
        }
        model.visit(&mut |p, kind| {
            let shape = p.value().shape();
            let disk: Vec<usize> = if kind.transposed_on_disk() {
                shape.iter().rev().copied().collect()
            } else {
                shape.to_vec()
            };
            entries.push((format!("grad.{}", p.name()), disk.clone()));
            if trajectory {
                entries.push((format!("final.{}", p.name()), disk));
            }
        });
        read_tensors(&self.dir.join(format!("reference-{}.safetensors", dtype.name())), &entries)
    }
}

/// Largest relative errors by quantity, for the report and the assertions.
#[derive(Default)]
struct Errors(BTreeMap<&'static str, f64>);

impl Errors {
    fn record(&mut self, what: &'static str, err: f64) {
        let e = self.0.entry(what).or_insert(0.0);
        *e = e.max(err);
    }

    fn check(&self, context: &str, tolerance: impl Fn(&str) -> f64) {
        for (what, &err) in &self.0 {
            let tol = tolerance(what);
            assert!(err <= tol, "{context}: {what} relative error {err:.3e} exceeds {tol:.0e}");
        }
    }

    fn line(&self) -> String {
        self.0.iter().map(|(what, err)| format!("{what} {err:.2e}")).collect::<Vec<_>>().join(", ")
    }
}

/// Logits, loss and every gradient of the token batch under `policy`.
fn check_forward_backward(
    v: &Variant,
    model: &Llama,
    reference: &BTreeMap<String, Vec<f64>>,
    policy: Policy,
) -> Errors {
    let (rows, seq) = (v.rows(), v.seq());
    let ids = tokens_of(&v.spec["tokens"]);
    let mut errors = Errors::default();

    let mut tape = Tape::with_policy(policy);
    let logits = model.forward(&mut tape, &ids, rows, seq).unwrap();
    errors.record("logits", rel_err(&tape.value(logits).unwrap().to_vec_f64(), &reference["logits"]));

    let mut tape = Tape::with_policy(policy);
    let loss = model.loss(&mut tape, &ids, rows, seq).unwrap();
    errors.record("loss", rel_err(&[tape.value(loss).unwrap().to_scalar().unwrap()], &reference["loss"]));
    let grads = tape.backward(loss).unwrap();
    model.visit(&mut |p, kind| {
        let ours = grads.param(p.id()).unwrap_or_else(|| panic!("no gradient for {}", p.name()));
        let err = rel_err(&disk_values(ours, kind), &reference[&format!("grad.{}", p.name())]);
        errors.record(grad_group(p.name(), kind), err);
    });
    errors
}

/// Ten updates through [`Trainer`]: losses, gradient norms, learning rates and the final weights.
fn check_trajectory(
    v: &Variant,
    model: &Llama,
    reference: &BTreeMap<String, Vec<f64>>,
    policy: Policy,
) -> Errors {
    let train = v.train();
    let (rows, seq) = (v.rows(), v.seq());
    let optimizer =
        AdamW::new(AdamWConfig { weight_decay: f64_of(&train["weight_decay"]), ..AdamWConfig::default() });
    let schedule = CosineSchedule::new(
        f64_of(&train["peak_lr"]),
        train["warmup_steps"].as_u64().unwrap(),
        train["total_steps"].as_u64().unwrap(),
    )
    .unwrap();
    let micro_batch = usize_of(&train["micro_batch"]);
    let mut trainer =
        Trainer::new(model.clone(), optimizer, schedule, micro_batch, f64_of(&train["clip_norm"]));
    trainer.policy = policy;
    let (mut losses, mut norms, mut lrs) = (Vec::new(), Vec::new(), Vec::new());
    for tokens in train["batches"].as_array().unwrap() {
        let batch = Batch { tokens: tokens_of(tokens), rows, seq_len: seq, epoch: 0 };
        let Ok(stats) = trainer.train_step(&batch) else { panic!("training step {} failed", trainer.step) };
        losses.push(stats.loss);
        norms.push(stats.grad_norm);
        lrs.push(stats.lr);
    }
    let mut errors = Errors::default();
    errors.record("train loss", rel_err(&losses, &reference["train.loss"]));
    errors.record("train grad norm", rel_err(&norms, &reference["train.grad_norm"]));
    errors.record("train lr", rel_err(&lrs, &reference["train.lr"]));
    trainer.model.visit(&mut |p, kind| {
        let err = rel_err(&disk_values(p.value(), kind), &reference[&format!("final.{}", p.name())]);
        errors.record("final weights", err);
    });
    errors
}

fn tolerance(dtype: DType, what: &str) -> f64 {
    match (dtype, what) {
        (_, "train lr") => LR_TOL,
        (DType::F64, _) => F64_TOL,
        (_, "logits" | "loss") => F32_FORWARD_TOL,
        (_, w) if w.starts_with("grad") => F32_GRAD_TOL,
        _ => F32_TRAJECTORY_TOL,
    }
}

fn bf16_tolerance(what: &str) -> f64 {
    match what {
        "logits" => BF16_LOGITS_TOL,
        "loss" => BF16_LOSS_TOL,
        _ => BF16_GRAD_TOL,
    }
}

fn check_variant(name: &str) {
    let v = Variant::load(name);
    let clip = f64_of(&v.train()["clip_norm"]);
    let mut report = format!("parity {name} (largest relative error per quantity):\n");
    for dtype in [DType::F64, DType::F32] {
        let model = v.model(dtype);
        let reference = v.reference(dtype, &model);
        assert!(
            reference["train.grad_norm"].iter().any(|&n| n > clip),
            "{name}: the reference trajectory never clips, so clipping would go untested"
        );
        for policy_name in POLICIES {
            let policy = Policy::parse(policy_name).unwrap();
            let context = format!("{name} {dtype:?} policy {policy_name}");
            let mut errors = check_forward_backward(&v, &model, &reference, policy);
            errors.0.extend(check_trajectory(&v, &model, &reference, policy).0);
            report.push_str(&format!("  {dtype:?} {policy_name:>6}: {}\n", errors.line()));
            errors.check(&context, |what| tolerance(dtype, what));
        }
    }
    eprint!("{report}");
}

/// The bf16 reference against the f32 one, grouped as [`check_forward_backward`] groups: what rounding
/// every stored result to bf16 alone changes.
fn reference_gap(
    model: &Llama,
    bf16: &BTreeMap<String, Vec<f64>>,
    f32: &BTreeMap<String, Vec<f64>>,
) -> Errors {
    let mut errors = Errors::default();
    errors.record("logits", rel_err(&bf16["logits"], &f32["logits"]));
    errors.record("loss", rel_err(&bf16["loss"], &f32["loss"]));
    model.visit(&mut |p, kind| {
        let name = format!("grad.{}", p.name());
        errors.record(grad_group(p.name(), kind), rel_err(&bf16[&name], &f32[&name]));
    });
    errors
}

fn check_variant_bf16(name: &str) {
    let v = Variant::load(name);
    let model = v.model(DType::BF16);
    assert_eq!(model.dtype(), DType::BF16);
    let reference = v.reference(DType::BF16, &model);
    let f32_reference = v.reference(DType::F32, &v.model(DType::F32));
    let mut report = format!("parity {name} in bf16 (largest relative error per quantity):\n");
    let gap = reference_gap(&model, &reference, &f32_reference);
    report.push_str(&format!("  reference bf16 vs reference f32: {}\n", gap.line()));
    let ours_vs_f32 = check_forward_backward(&v, &model, &f32_reference, Policy::KeepAll);
    report.push_str(&format!("  ours bf16 vs reference f32: {}\n", ours_vs_f32.line()));
    let mut checks = Vec::new();
    for policy_name in POLICIES {
        let errors = check_forward_backward(&v, &model, &reference, Policy::parse(policy_name).unwrap());
        report.push_str(&format!(
            "  ours bf16 vs reference bf16, policy {policy_name:>6}: {}\n",
            errors.line()
        ));
        checks.push((format!("{name} bf16 policy {policy_name}"), errors));
    }
    // Printed before the checks, so that a failure shows every quantity.
    eprint!("{report}");
    for (context, errors) in checks {
        errors.check(&context, bf16_tolerance);
    }
    // The tolerances must also hold for the reference's own bf16 rounding, and bf16 must have run.
    gap.check(&format!("{name} reference bf16 vs reference f32"), bf16_tolerance);
    assert!(gap.0["logits"] > 0.0, "{name}: the bf16 reference equals the f32 one");
}

#[test]
fn cola_tiny_matches_pytorch_in_bf16() {
    check_variant_bf16("cola-tiny");
}

#[test]
fn full_tiny_matches_pytorch_in_bf16() {
    check_variant_bf16("full-tiny");
}

#[test]
fn cola_tiny_without_mlp_gate_silu_matches_pytorch_in_bf16() {
    check_variant_bf16("cola-tiny-only-lr-act");
}

#[test]
fn cola_tiny_matches_pytorch() {
    check_variant("cola-tiny");
}

#[test]
fn full_tiny_matches_pytorch() {
    check_variant("full-tiny");
}

#[test]
fn cola_tiny_without_mlp_gate_silu_matches_pytorch() {
    check_variant("cola-tiny-only-lr-act");
}

#[test]
fn parameter_counts_match_pytorch() {
    let path = fixture_dir().join("param_counts.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let counts: BTreeMap<String, BTreeMap<String, usize>> = serde_json::from_str(&text).unwrap();
    let mut names: Vec<&str> = counts.keys().map(String::as_str).collect();
    let mut ours = PRESET_NAMES.to_vec();
    names.sort_unstable();
    ours.sort_unstable();
    assert_eq!(names, ours, "the reference counted other presets than PRESET_NAMES");
    let mut report = String::from("parameter counts (ours = PyTorch's):\n");
    for name in PRESET_NAMES {
        let c = LlamaConfig::preset(name).unwrap().param_counts();
        let reference = &counts[name];
        assert_eq!(
            (c.total, c.low_rank, c.other),
            (reference["total"], reference["low_rank"], reference["other"]),
            "{name}: (total, low-rank, other)"
        );
        report.push_str(&format!(
            "  {name:<10} total {:>13} low-rank {:>13} other {:>13}\n",
            c.total, c.low_rank, c.other
        ));
    }
    eprint!("{report}");
}

/// The reference builds its presets from `presets.json` (written by `examples/parity_export.rs`), so the
/// committed file must be the table as it is now: every preset, in order, with every shape and constant
/// exactly (integers, and the two float constants as the same decimal literals).
#[test]
fn the_exported_preset_table_is_the_current_one() {
    let path = fixture_dir().join("presets.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let entries: Vec<Value> = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e["preset"].as_str().unwrap()).collect();
    assert_eq!(names, Preset::NAMES, "{}: rerun examples/parity_export.rs", path.display());
    for (entry, preset) in entries.iter().zip(Preset::ALL) {
        let c = &entry["config"];
        let config = preset.config();
        let size = |key: &str| c[key].as_u64().unwrap_or_else(|| panic!("{preset}: {key}")) as usize;
        let got = LlamaConfig {
            vocab_size: size("vocab_size"),
            d_model: size("d_model"),
            ffn_dim: size("ffn_dim"),
            n_layers: size("n_layers"),
            n_heads: size("n_heads"),
            rank: c["rank"].as_u64().map(|r| r as usize),
            lowrank_act: cola::nn::LowRankActivation::Silu,
            mlp_gate_silu: c["mlp_gate_silu"].as_bool().unwrap(),
            rope_theta: f64_of(&c["rope_theta"]),
            norm_eps: f64_of(&c["norm_eps"]),
            max_seq_len: size("max_seq_len"),
            pad_id: size("pad_id") as u32,
        };
        assert_eq!(got, config, "{preset} in {}: rerun examples/parity_export.rs", path.display());
    }
}

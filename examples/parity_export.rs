//! Exports the inputs of the PyTorch parity fixtures: seeded weights of the tiny models and fixed token
//! batches, which `scripts/reference/parity.py` turns into reference logits, losses, gradients and
//! training trajectories (and `tests/suite/parity.rs` compares against them).
//!
//! Usage: `cargo run --release --example parity_export -- OUT_DIR` (normally through
//! `scripts/reference/run.sh`). For each variant it writes `OUT_DIR/<variant>/model.safetensors` (every
//! parameter in f64 under the reference's names and layouts; the f32 fixtures use these values rounded to
//! f32) and `OUT_DIR/<variant>/batch.json` (the config, the token batches and the training settings),
//! and `OUT_DIR/presets.json`: the config of every preset of the one table, from which the reference
//! builds its presets. The output depends only on the seeds below: rerunning gives the same bytes.
use cola::data::{EOS_ID, PAD_ID};
use cola::nn::{save_safetensors_as, Llama, LlamaConfig, Preset, WEIGHTS_FILE};
use cola::tensor::{DType, Rng, Tensor};
use serde_json::json;
use std::path::{Path, PathBuf};

/// `(variant, preset, CoLA MLP gate SiLU kept, seed)`. The third variant is cola-tiny with the MLP's own
/// SiLU dropped (the reference's `only_lr_act`, as in the 350m+ presets).
const VARIANTS: [(&str, &str, bool, u64); 3] = [
    ("cola-tiny", "cola-tiny", true, 101),
    ("full-tiny", "full-tiny", true, 202),
    ("cola-tiny-only-lr-act", "cola-tiny", false, 303),
];

/// Rows and sequence length of every batch (the tiny presets' `max_seq_len`).
const ROWS: usize = 4;
const SEQ: usize = 16;
/// Training batches, one per update.
const TRAIN_STEPS: usize = 10;
/// Sequences per forward/backward pass in training: two micro-batches per update whose numbers of
/// non-pad targets differ, so the trajectory also checks the accumulation's token weighting.
const MICRO_BATCH: usize = 2;
/// The schedule of the trajectory: the tiny recipe's peak rate with a warmup and a cosine phase inside
/// the ten updates.
const PEAK_LR: f64 = 6e-3;
const WARMUP: u64 = 3;
const CLIP_NORM: f64 = 0.5;
const WEIGHT_DECAY: f64 = 0.01;

fn fail(message: &str) -> ! {
    eprintln!("parity_export: {message}");
    std::process::exit(1);
}

/// An ordinary token (neither pad nor eos).
fn word(rng: &mut Rng, vocab: usize) -> u32 {
    2 + rng.below(vocab as u64 - 2) as u32
}

/// A document of `len` ordinary tokens and eos, right-padded to `SEQ`.
fn padded_document(rng: &mut Rng, vocab: usize, len: usize) -> Vec<u32> {
    let mut row: Vec<u32> = (0..len).map(|_| word(rng, vocab)).collect();
    row.push(EOS_ID);
    row.resize(SEQ, PAD_ID);
    row
}

/// `[ROWS, SEQ]` row-major: a full row; a document right-padded after 6 to 13 tokens; a short document
/// (1 to 3 tokens, so most targets are pad); a full row with pad ids in its middle (their positions see a
/// zero embedding, and the positions before them have ignored targets).
fn batch(rng: &mut Rng, vocab: usize) -> Vec<u32> {
    let mut tokens: Vec<u32> = (0..SEQ).map(|_| word(rng, vocab)).collect();
    let long = 6 + rng.below(8) as usize;
    tokens.extend(padded_document(rng, vocab, long));
    let short = 1 + rng.below(3) as usize;
    tokens.extend(padded_document(rng, vocab, short));
    let mut last: Vec<u32> = (0..SEQ).map(|_| word(rng, vocab)).collect();
    for _ in 0..2 {
        last[1 + rng.below(SEQ as u64 - 2) as usize] = PAD_ID;
    }
    tokens.extend(last);
    tokens
}

fn config_json(config: &LlamaConfig) -> serde_json::Value {
    json!({
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "ffn_dim": config.ffn_dim,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "rank": config.rank,
        "mlp_gate_silu": config.mlp_gate_silu,
        "rope_theta": config.rope_theta,
        "norm_eps": config.norm_eps,
        "max_seq_len": config.max_seq_len,
        "pad_id": config.pad_id,
    })
}

fn export(dir: &Path, variant: &str, preset: &str, gate_silu: bool, seed: u64) -> Result<(), String> {
    let mut config = LlamaConfig::preset(preset).map_err(|e| e.to_string())?;
    config.mlp_gate_silu = gate_silu;
    if config.pad_id != PAD_ID || config.max_seq_len != SEQ {
        return Err(format!("{preset}: expected pad id {PAD_ID} and max_seq_len {SEQ}"));
    }
    let mut rng = Rng::new(seed);
    let mut model = Llama::with_dtype(config.clone(), DType::F64, &mut rng).map_err(|e| e.to_string())?;
    // Norm weights start at 1; random ones make the comparison see whether each norm applies its weight.
    for param in model.parameters_mut() {
        if param.name().ends_with("norm.weight") {
            let shape = param.value().shape().to_vec();
            param.set_value(Tensor::randn(&shape, 1.0, 0.2, DType::F64, &mut rng));
        }
    }
    let vocab = config.vocab_size;
    let eval_batch = batch(&mut rng, vocab);
    let train_batches: Vec<Vec<u32>> = (0..TRAIN_STEPS).map(|_| batch(&mut rng, vocab)).collect();

    let out = dir.join(variant);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    save_safetensors_as(&model, &out.join(WEIGHTS_FILE), DType::F64).map_err(|e| e.to_string())?;
    let description = json!({
        "variant": variant,
        "preset": preset,
        "config": config_json(&config),
        "rows": ROWS,
        "seq_len": SEQ,
        "eos_id": EOS_ID,
        "tokens": eval_batch,
        "train": {
            "batches": train_batches,
            "micro_batch": MICRO_BATCH,
            "peak_lr": PEAK_LR,
            "warmup_steps": WARMUP,
            "total_steps": TRAIN_STEPS,
            "clip_norm": CLIP_NORM,
            "weight_decay": WEIGHT_DECAY,
        },
    });
    let text = serde_json::to_string_pretty(&description).map_err(|e| e.to_string())? + "\n";
    let path = out.join("batch.json");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `[{"preset": name, "config": {...}}, ...]` in [`Preset::ALL`]'s order (an array keeps the order).
fn export_presets(dir: &Path) -> Result<PathBuf, String> {
    let presets: Vec<serde_json::Value> = Preset::ALL
        .into_iter()
        .map(|preset| json!({ "preset": preset.name(), "config": config_json(&preset.config()) }))
        .collect();
    let text = serde_json::to_string_pretty(&presets).map_err(|e| e.to_string())? + "\n";
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("presets.json");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else { fail("usage: parity_export OUT_DIR") };
    let dir = PathBuf::from(dir);
    let presets = export_presets(&dir).unwrap_or_else(|e| fail(&format!("presets: {e}")));
    println!("parity_export: wrote {}", presets.display());
    for (variant, preset, gate_silu, seed) in VARIANTS {
        export(&dir, variant, preset, gate_silu, seed).unwrap_or_else(|e| fail(&format!("{variant}: {e}")));
        println!("parity_export: wrote {}", dir.join(variant).display());
    }
}

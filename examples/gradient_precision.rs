//! How exact this stack's gradients are in f32 and in pure bf16: the loss gradient of every parameter of a
//! model (its initial weights, or a checkpoint's) on one batch of 8 x 256 tokens, computed in f64, f32 and
//! bf16 (`Llama::to_device(.., DType::BF16)`: weights and activations in bf16, each op computing in f32
//! and rounding once), and each one's error against f64: `||g - g64|| / ||g64||` per parameter and over
//! all parameters together. `scripts/reference/attention_probe.py --gradients` measures the same for the
//! independent PyTorch model, so the two stacks' bf16 errors can be set side by side (docs/EXPERIMENTS.md,
//! section "precision").
//!
//! The batch is the first 2048 ids of a token-shard file (`*.ids`, little-endian u16, as the training
//! program's cache writes them for a vocabulary below 65536); the tape keeps everything (no recompute).
//!
//! Usage: `cargo run --release --example gradient_precision -- IDS_FILE [--checkpoint DIR] [--model P]`
use clap::Parser;
use cola::data::TokenStream;
use cola::nn::module::Module;
use cola::nn::{load_safetensors, Llama, Preset, WEIGHTS_FILE};
use cola::{DType, Device, Rng, Tape};
use std::path::PathBuf;
use std::time::Instant;

const ROWS: usize = 8;
const SEQ: usize = 256;

#[derive(Parser)]
#[command(about = "Gradients in f32 and bf16 against f64, per parameter, on one batch")]
struct Args {
    /// A token-shard file (`*.ids`, little-endian u16) whose first 2048 ids make the batch.
    ids: PathBuf,
    /// A checkpoint folder (its model.safetensors); default: the preset's initial weights for --seed.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Model preset (shapes).
    #[arg(long, default_value = "cola-60m")]
    model: Preset,
    /// Seed of the initial weights (without --checkpoint).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print every parameter's error, not only the summary and the worst five.
    #[arg(long)]
    all: bool,
}

/// Loss and every parameter's gradient (by name, as f64) of `model` converted to `dtype`.
fn gradients(model: &Llama, dtype: DType, ids: &[u32]) -> (f64, Vec<(String, Vec<f64>)>) {
    let mut model = model.clone();
    model.to_device(Device::Cpu, dtype).expect("convert the model");
    let started = Instant::now();
    let mut tape = Tape::new();
    let loss = model.loss(&mut tape, ids, ROWS, SEQ).expect("forward");
    let value = tape.value(loss).expect("loss value").to_scalar().expect("scalar loss");
    let grads = tape.backward(loss).expect("backward");
    let mut out = Vec::new();
    model.visit(&mut |p, _| {
        let g = grads.param(p.id()).unwrap_or_else(|| panic!("no gradient for {}", p.name()));
        out.push((p.name().to_string(), g.to_vec_f64()));
    });
    eprintln!("{dtype:?}: forward and backward in {:.1} s", started.elapsed().as_secs_f64());
    (value, out)
}

fn main() {
    let args = Args::parse();
    let config = args.model.config();
    // A u16 shard file is laid out as a `.bin` corpus: read it the way the training program reads those.
    let stream = TokenStream::map_bins(std::slice::from_ref(&args.ids)).expect("map the token file");
    let wanted = (ROWS * SEQ) as u64;
    assert!(stream.num_tokens() >= wanted, "{}: fewer than {wanted} token ids", args.ids.display());
    let mut ids = Vec::new();
    stream.extend(0, wanted, &mut ids);
    if let Some(id) = ids.iter().find(|&&id| id as usize >= config.vocab_size) {
        panic!("token id {id} is outside the vocabulary of {} ({})", args.model, config.vocab_size);
    }
    let mut model = Llama::with_dtype(config, DType::F32, &mut Rng::new(args.seed)).expect("build the model");
    if let Some(dir) = &args.checkpoint {
        load_safetensors(&mut model, &dir.join(WEIGHTS_FILE)).expect("load the checkpoint");
    }
    let (loss64, g64) = gradients(&model, DType::F64, &ids);
    for dtype in [DType::F32, DType::BF16] {
        let (loss, g) = gradients(&model, dtype, &ids);
        let (mut err2, mut norm2) = (0.0, 0.0);
        let mut per: Vec<(f64, &str)> = Vec::new();
        for ((name, ours), (_, exact)) in g.iter().zip(&g64) {
            let e: f64 = ours.iter().zip(exact).map(|(a, b)| (a - b) * (a - b)).sum();
            let n: f64 = exact.iter().map(|b| b * b).sum();
            err2 += e;
            norm2 += n;
            per.push(((e / n).sqrt(), name));
        }
        println!(
            "{dtype:?}: loss {loss:.6} (f64 {loss64:.6}); gradient error: global {:.3e}",
            (err2 / norm2).sqrt()
        );
        if !args.all {
            per.sort_by(|a, b| b.0.total_cmp(&a.0));
            per.truncate(5);
        }
        for (rel, name) in per {
            println!("  {name}: {rel:.3e}");
        }
    }
}

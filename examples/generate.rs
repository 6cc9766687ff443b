//! Generates text from a checkpoint with a KV cache: the prompts run once (prefill), then one token per
//! step per prompt, all prompts batched.
//!
//!     cargo run --release --example generate -- --checkpoint runs/cola-60m-... --prompt "ROMEO:"
//!     cargo run --release --example generate -- --checkpoint DIR --prompt "A" --prompt "B" --temperature 0
//!
//! `--checkpoint` takes a run directory (its latest checkpoint), a `checkpoint-<step>` folder, a folder
//! with a `model.safetensors` in the reference's names and layouts, or such a file. With one prompt the
//! text streams as it is generated; with several, each prompt's text is printed when all are done.
//! `--precision bf16` converts the weights to bf16 once they are loaded (half the bytes each decode
//! step reads; activations and the KV cache follow in bf16); the default keeps f32.
use clap::{Parser, ValueEnum};
use cola::generate::{self, GenerateError, LoadOptions};
use cola::nn::{GenerateOptions, SamplingConfig, StopReason};
use cola::tensor::{DType, Device};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Generate text from a CoLA (or full-rank) LLaMA checkpoint.
#[derive(Parser, Debug)]
#[command(name = "generate", version)]
struct Args {
    /// Run directory, checkpoint-<step> folder, folder with model.safetensors, or a .safetensors file
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to continue; repeat for a batch
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// New tokens per prompt at most (fewer when the end-of-document token or the context's end comes)
    #[arg(long, default_value_t = 100)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample from the k most likely tokens only; 0 is all, 1 is greedy
    #[arg(long, default_value_t = 200)]
    top_k: usize,
    /// Sample from the smallest set of tokens whose probability reaches p (nucleus); 1 is all
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler: the same seed gives the same text
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// A tokenizer.json [default: the checkpoint's, or its run directory's]
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Model preset, overriding the checkpoint's state.json or the preset inferred from tensor shapes
    #[arg(long)]
    model: Option<String>,
    /// Keep going after the end-of-document token
    #[arg(long)]
    ignore_eos: bool,
    /// Threads of the compute pool [default: one per core]
    #[arg(long)]
    threads: Option<usize>,
    /// Weights (and so activations and KV cache) in f32, or converted to bf16 at load
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
}

/// The dtype the weights are converted to at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Precision {
    F32,
    Bf16,
}

fn parse_device(text: &str) -> Result<Device, String> {
    text.parse::<Device>()
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), GenerateError> {
    if let Some(threads) = args.threads {
        cola::train::set_threads(threads)?;
    }
    let began = Instant::now();
    let mut loaded = generate::load(&LoadOptions {
        checkpoint: args.checkpoint.clone(),
        model: args.model.clone(),
        tokenizer: args.tokenizer.clone(),
        device: args.device,
    })?;
    if args.precision == Precision::Bf16 {
        loaded.model.to_device(args.device, DType::BF16)?;
    }
    let config = loaded.model.config();
    eprintln!(
        "loaded {} ({}; config from {}) in {:.1}s; tokenizer {}",
        loaded.weights.display(),
        describe(&loaded.model),
        loaded.config_source,
        began.elapsed().as_secs_f64(),
        loaded.tokenizer_path.display()
    );
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingConfig { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p },
        seed: args.seed,
        stop_token: (!args.ignore_eos).then(|| loaded.tokenizer.eos_id()),
    };
    let single = args.prompt.len() == 1;
    let mut stdout = std::io::stdout().lock();
    if single {
        let _ = write!(stdout, "{}", args.prompt[0]);
        let _ = stdout.flush();
    }
    let started = Instant::now();
    let (generated, texts) = generate::generate_text(&loaded, &args.prompt, &options, |_, text| {
        if single {
            let _ = write!(stdout, "{text}");
            let _ = stdout.flush();
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();
    if single {
        let _ = writeln!(stdout);
    } else {
        for (i, (prompt, text)) in args.prompt.iter().zip(&texts).enumerate() {
            let _ = writeln!(stdout, "--- prompt {} ---\n{prompt}{text}", i + 1);
        }
    }
    let tokens: usize = generated.tokens.iter().map(Vec::len).sum();
    let stops: Vec<&str> = generated
        .stops
        .iter()
        .map(|s| match s {
            StopReason::MaxTokens => "max tokens",
            StopReason::StopToken => "end of document",
            StopReason::ContextFull => "context full",
        })
        .collect();
    eprintln!(
        "{tokens} tokens in {seconds:.2}s ({:.1} tokens/s, {} prompt(s), context {}); stopped: {}",
        tokens as f64 / seconds.max(1e-9),
        args.prompt.len(),
        config.max_seq_len,
        stops.join(", ")
    );
    Ok(())
}

fn describe(model: &cola::nn::Llama) -> String {
    let config = model.config();
    format!(
        "{:.1}M parameters in {}, d_model {}, {} layers, {}",
        model.param_counts().total as f64 / 1e6,
        model.dtype(),
        config.d_model,
        config.n_layers,
        config.rank.map_or("full rank".to_string(), |r| format!("rank {r}"))
    )
}

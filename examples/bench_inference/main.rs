//! Inference speed and memory of CoLA against full rank on the CPU, with the KV-cached generation path:
//! prefill tokens/s (`1 x 256` and `8 x 256`), decode tokens/s (batch 1 and 8: a 128-token prompt, then
//! 128 new tokens, one greedy step at a time, logits read back and argmax'd as generation does), weight
//! bytes, KV-cache bytes at the end of decoding, and peak memory.
//!
//!     cargo run --release --example bench_inference                      # cola-350m vs full-350m
//!     cargo run --release --example bench_inference -- --quick           # smaller counts, 1 repeat
//!     cargo run --release --example bench_inference -- --size 60m --repeats 5 --threads 2
//!     cargo run --release --example bench_inference -- --threads 2 --hf-python local/reference-venv/bin/python
//!     cargo run --release --example bench_inference -- --precision bf16 --torch-python local/venv/bin/python
//!     cargo run --release --example bench_inference -- --models cola-350m --profile --repeats 1
//!
//! `--precision bf16` converts the weights to bf16 after they are drawn (activations and the KV cache
//! follow), as `generate --precision bf16` does at load; the default is f32.
//!
//! With `--torch-python PYTHON` (a Python with torch and safetensors, e.g. `local/venv`), every repeat
//! also times the independent PyTorch model (`scripts/reference/parity.py`) decoding with a KV cache in
//! the same precision, for every model of the run, CoLA included (`scripts/reference/bench_torch_decode.py`),
//! and a table puts ours next to it; the weight-read bandwidth lines then show both sides.
//!
//! `--profile` adds, per repeat and model, where one batch-1 decode step's time goes: calls and
//! milliseconds per step of every op (the LM head apart), and the rest of the step (reading the logits
//! back, argmax, the session's own work).
//!
//! With `--hf-python PYTHON` (a Python with torch and transformers, e.g. the reference venv of
//! `scripts/reference/run.sh` plus `pip install transformers`), every repeat also times Hugging Face's
//! `LlamaForCausalLM.generate` on each full-rank model of the run (`scripts/reference/bench_hf_decode.py`:
//! same shapes from the preset table, same threads, prompt and new tokens), and a second table puts our
//! decode next to it. The weight bytes a decode step reads per second are printed next to the machine's
//! copy bandwidth, measured in the same run.
//!
//! Each measurement runs in a child process of its own (this program re-run with `--worker`), so that one
//! model's freed memory cannot hide in the other's numbers, and the repeats alternate between the
//! models, so that the machine's changing load hits both alike. Weights are random (the paper's init,
//! drawn anew in each child: timings do not depend on the values). Every number is the median over
//! `--repeats`; the CoLA/full column is the median of the ratios of the two models' measurements in
//! the same repeat. Peak memory is the peak resident set size (`VmHWM` of `/proc/self/status`, reset
//! through `/proc/self/clear_refs` after the model is built) over the child's measurements: weights,
//! activations, logits and caches, as the operating system sees them.
mod reference;

use cola::nn::{argmax, Family, Llama, LlamaConfig, Module, Preset, Session};
use cola::tensor::{DType, Device, Rng};
use reference::Rates;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

/// What one run measures; `--quick` shrinks it.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    prefill_len: usize,
    pub decode_prompt: usize,
    pub new_tokens: usize,
    repeats: usize,
}

/// The dtype of the weights (and so of activations and cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    fn parse(text: &str) -> Result<Precision, String> {
        match text {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("--precision takes f32 or bf16, got {other:?}")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The measurements of one model (medians), as the worker prints them: `name value` lines.
const KEYS: [(&str, &str); 8] = [
    ("prefill_1", "prefill 1 x {P} tokens/s"),
    ("prefill_8", "prefill 8 x {P} tokens/s"),
    ("decode_1", "decode batch 1 tokens/s"),
    ("decode_8", "decode batch 8 tokens/s"),
    ("weights_mib", "weights MiB"),
    ("kv_1", "KV cache batch 1 MiB"),
    ("kv_8", "KV cache batch 8 MiB"),
    ("peak_rss", "peak RSS MiB"),
];

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn number(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match flag(args, name) {
        Some(v) => v.parse().map_err(|_| format!("{name} needs a number, got {v:?}")),
        None => Ok(default),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench_inference: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "bench_inference [--size 350m] [--models cola-350m,full-350m] [--quick] [--repeats N] \
             [--threads N] [--prefill-len N] [--decode-prompt N] [--new-tokens N] [--precision f32|bf16] \
             [--hf-python PYTHON] [--torch-python PYTHON] [--profile]"
        );
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let defaults = if quick { (64, 32, 16, 1) } else { (256, 128, 128, 3) };
    let plan = Plan {
        prefill_len: number(args, "--prefill-len", defaults.0)?,
        decode_prompt: number(args, "--decode-prompt", defaults.1)?,
        new_tokens: number(args, "--new-tokens", defaults.2)?,
        repeats: number(args, "--repeats", defaults.3)?.max(1),
    };
    let precision = Precision::parse(&flag(args, "--precision").unwrap_or_else(|| "f32".into()))?;
    let profile = args.iter().any(|a| a == "--profile");
    let threads = number(args, "--threads", 0)?;
    if threads > 0 {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().map_err(|e| e.to_string())?;
    }
    if let Some(model) = flag(args, "--worker") {
        return worker(&model, plan, number(args, "--seed", 0)? as u64, precision, profile);
    }
    let size = flag(args, "--size").unwrap_or_else(|| "350m".into());
    let models = flag(args, "--models").unwrap_or(format!("cola-{size},full-{size}"));
    let models: Vec<Preset> = models
        .split(',')
        .map(|m| m.parse::<Preset>().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    println!(
        "inference on the CPU, {}, {} threads; prefill {} tokens per row; decode {} new tokens after a \
         {}-token prompt; medians of {} repeats",
        precision.name(),
        rayon::current_num_threads(),
        plan.prefill_len,
        plan.new_tokens,
        plan.decode_prompt,
        plan.repeats
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // values[model][key] = one value per repeat. Repeats alternate between the models, so that a change
    // in the machine's load during the run hits both alike.
    let mut values = vec![vec![Vec::new(); KEYS.len()]; models.len()];
    let hf_python = flag(args, "--hf-python");
    let torch_python = flag(args, "--torch-python");
    // hf[model] = (decode batch 1, decode batch 8) per repeat, for the full-rank models; torch[model]
    // the same of the reference model, for every model.
    let mut hf: Vec<Vec<Rates>> = vec![Vec::new(); models.len()];
    let mut torch: Vec<Vec<Rates>> = vec![Vec::new(); models.len()];
    for repeat in 0..plan.repeats {
        for (m, model) in models.iter().enumerate() {
            eprintln!("repeat {} of {}: {model} ...", repeat + 1, plan.repeats);
            let mut child = Command::new(&exe);
            child.args(args).args(["--worker", model.name(), "--seed", &repeat.to_string()]);
            if threads == 0 {
                child.args(["--threads", &rayon::current_num_threads().to_string()]);
            }
            let output = child
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("running the {model} worker: {e}"))?;
            if !output.status.success() {
                return Err(format!("the {model} worker failed ({})", output.status));
            }
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            for (k, (key, _)) in KEYS.iter().enumerate() {
                let value = text
                    .lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<f64>().ok()))
                    .ok_or_else(|| format!("{model}: no {key} in the worker's output"))?;
                values[m][k].push(value);
            }
            if let (Some(python), Family::Full) = (&hf_python, model.family) {
                eprintln!("repeat {} of {}: transformers {model} (f32) ...", repeat + 1, plan.repeats);
                hf[m].push(reference::hf_decode(python, *model, plan)?);
            }
            if let Some(python) = &torch_python {
                eprintln!("repeat {} of {}: PyTorch reference {model} ...", repeat + 1, plan.repeats);
                torch[m].push(reference::torch_decode(python, *model, plan, precision)?);
            }
        }
    }
    // The ratio column is the median of the per-repeat ratios: each repeat measures both models close
    // together in time, so their ratio is steadier than the ratio of medians on a loaded machine.
    let ratios: Option<Vec<f64>> = (models.len() == 2).then(|| {
        (0..KEYS.len())
            .map(|k| median(values[0][k].iter().zip(&values[1][k]).map(|(a, b)| a / b).collect()))
            .collect()
    });
    let columns: Vec<Vec<f64>> =
        values.into_iter().map(|model| model.into_iter().map(median).collect()).collect();
    print_table(&models, &columns, ratios.as_deref(), plan);
    reference::print_bandwidth(&models, &columns, &torch);
    if torch_python.is_some() {
        reference::print_torch_table(&models, &columns, &torch, precision);
    }
    if hf_python.is_some() {
        reference::print_hf_table(&models, &columns, &hf);
    }
    Ok(())
}

/// Column of a key in [`KEYS`].
pub fn key(name: &str) -> usize {
    KEYS.iter().position(|(k, _)| *k == name).unwrap_or(0)
}

fn print_table(models: &[Preset], columns: &[Vec<f64>], ratios: Option<&[f64]>, plan: Plan) {
    print!("| {:<28} |", "measure");
    for model in models {
        print!(" {model:>10} |");
    }
    match ratios {
        Some(_) => {
            println!(" {:>9} |", format!("{}/{}", models[0].family.prefix(), models[1].family.prefix()))
        }
        None => println!(),
    }
    let ratio_rule = if ratios.is_some() { "-----------|" } else { "" };
    println!("|{}|{}{ratio_rule}", "-".repeat(30), "------------|".repeat(models.len()));
    for (row, (_, label)) in KEYS.iter().enumerate() {
        print!("| {:<28} |", label.replace("{P}", &plan.prefill_len.to_string()));
        for column in columns {
            print!(" {:>10.1} |", column[row]);
        }
        if let Some(ratios) = ratios {
            print!(" {:>9.2} |", ratios[row]);
        }
        println!();
    }
}

/// A `[prompt_len]` prompt per row of pseudo-random ids.
fn prompts(vocab: usize, rows: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    (0..rows).map(|_| (0..len).map(|_| 3 + rng.below(vocab as u64 - 3) as u32).collect()).collect()
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seconds to prefill `rows x len` tokens (the last positions' logits included).
fn time_prefill(model: &Llama, rows: usize, len: usize, seed: u64) -> Result<f64, String> {
    let prompts = prompts(model.config().vocab_size, rows, len, seed);
    let views: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let began = Instant::now();
    let mut session = Session::new(model);
    let logits = session.prefill(&views).map_err(|e| e.to_string())?;
    let _ = logits.to_vec_f64();
    Ok(began.elapsed().as_secs_f64())
}

/// Seconds for `new` greedy decode steps of `rows` rows after a `prompt`-token prefill (not timed), and
/// the KV-cache bytes at the end; with `profile`, the ops' times are printed per step.
fn time_decode(
    model: &Llama,
    rows: usize,
    prompt: usize,
    new: usize,
    seed: u64,
    profile: bool,
) -> Result<(f64, usize), String> {
    let prompts = prompts(model.config().vocab_size, rows, prompt, seed);
    let views: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut session = Session::new(model);
    let vocab = model.config().vocab_size;
    let mut logits = session.prefill(&views).map_err(|e| e.to_string())?;
    session.set_profiling(profile);
    let began = Instant::now();
    for _ in 0..new {
        let values: Vec<f32> = logits.to_vec_f64().into_iter().map(|x| x as f32).collect();
        let next: Vec<u32> = values.chunks(vocab).map(argmax).collect();
        logits = session.decode(&next).map_err(|e| e.to_string())?;
    }
    let _ = logits.to_vec_f64();
    let seconds = began.elapsed().as_secs_f64();
    if profile {
        print_profile(session.op_times(), rows, new, seconds);
    }
    Ok((seconds, session.cache_bytes()))
}

/// Milliseconds per decode step of each op and of the rest of the step, largest first (to stderr).
fn print_profile(times: &[(&'static str, usize, f64)], rows: usize, steps: usize, seconds: f64) {
    let per_step = |s: f64| 1e3 * s / steps as f64;
    let timed: f64 = times.iter().map(|t| t.2).sum();
    let mut rows_sorted = times.to_vec();
    rows_sorted.sort_by(|a, b| b.2.total_cmp(&a.2));
    eprintln!("  decode batch {rows}: {:.2} ms per step; per step:", per_step(seconds));
    for (name, calls, s) in rows_sorted {
        eprintln!(
            "    {name:<12} {:>5} calls {:>8.3} ms {:>5.1}%",
            calls / steps,
            per_step(s),
            100.0 * s / seconds
        );
    }
    let rest = seconds - timed;
    eprintln!("    {:<12} {:>11} {:>8.3} ms {:>5.1}%", "rest", "", per_step(rest), 100.0 * rest / seconds);
}

/// `VmHWM` or `VmRSS` of this process, bytes.
fn status_bytes(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Measures one model once and prints `key value` lines.
fn worker(name: &str, plan: Plan, seed: u64, precision: Precision, profile: bool) -> Result<(), String> {
    let mut config = LlamaConfig::preset(name).map_err(|e| e.to_string())?;
    config.max_seq_len = config.max_seq_len.max(plan.prefill_len).max(plan.decode_prompt + plan.new_tokens);
    let built = Instant::now();
    let mut model = Llama::new(config, &mut Rng::new(seed)).map_err(|e| e.to_string())?;
    if precision == Precision::Bf16 {
        model.to_device(Device::Cpu, DType::BF16).map_err(|e| e.to_string())?;
    }
    let weight_bytes: usize = Module::parameters(&model).iter().map(|p| p.value().size_in_bytes()).sum();
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let mib = |bytes: f64| bytes / (1 << 20) as f64;
    let mut line = format!("  {name}: built in {:.1}s", built.elapsed().as_secs_f64());
    for rows in [1, 8] {
        let seconds = time_prefill(&model, rows, plan.prefill_len, seed)?;
        let tokens_per_s = (rows * plan.prefill_len) as f64 / seconds;
        println!("prefill_{rows} {tokens_per_s}");
        line += &format!(", prefill {rows}: {tokens_per_s:.1} tokens/s");
    }
    for rows in [1, 8] {
        let (seconds, bytes) =
            time_decode(&model, rows, plan.decode_prompt, plan.new_tokens, seed, profile && rows == 1)?;
        let tokens_per_s = (rows * plan.new_tokens) as f64 / seconds;
        println!("decode_{rows} {tokens_per_s}");
        println!("kv_{rows} {}", mib(bytes as f64));
        line += &format!(", decode {rows}: {tokens_per_s:.2} tokens/s");
    }
    let peak = if peak_reset { status_bytes("VmHWM").unwrap_or(f64::NAN) } else { f64::NAN };
    println!("weights_mib {}", mib(weight_bytes as f64));
    println!("peak_rss {}", mib(peak));
    eprintln!("{line}");
    Ok(())
}

//! Inference speed and memory of CoLA against full rank on the CPU, with the KV-cached generation path:
//! prefill tokens/s (`1 x 256` and `8 x 256`), decode tokens/s (batch 1 and 8: a 128-token prompt, then
//! 128 new tokens, one greedy step at a time, logits read back and argmax'd as generation does), weight
//! bytes, KV-cache bytes at the end of decoding, and peak memory.
//!
//!     cargo run --release --example bench_inference                      # cola-350m vs full-350m
//!     cargo run --release --example bench_inference -- --quick           # smaller counts, 1 repeat
//!     cargo run --release --example bench_inference -- --size 60m --repeats 5 --threads 2
//!     cargo run --release --example bench_inference -- --threads 2 --hf-python local/reference-venv/bin/python
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
use cola::nn::{argmax, Family, Llama, LlamaConfig, Module, Preset, Session};
use cola::tensor::Rng;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

/// What one run measures; `--quick` shrinks it.
#[derive(Clone, Copy, Debug)]
struct Plan {
    prefill_len: usize,
    decode_prompt: usize,
    new_tokens: usize,
    repeats: usize,
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
             [--threads N] [--prefill-len N] [--decode-prompt N] [--new-tokens N] [--hf-python PYTHON]"
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
    let threads = number(args, "--threads", 0)?;
    if threads > 0 {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().map_err(|e| e.to_string())?;
    }
    if let Some(model) = flag(args, "--worker") {
        return worker(&model, plan, number(args, "--seed", 0)? as u64);
    }
    let size = flag(args, "--size").unwrap_or_else(|| "350m".into());
    let models = flag(args, "--models").unwrap_or(format!("cola-{size},full-{size}"));
    let models: Vec<Preset> = models
        .split(',')
        .map(|m| m.parse::<Preset>().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    println!(
        "inference on the CPU, f32, {} threads; prefill {} tokens per row; decode {} new tokens after a \
         {}-token prompt; medians of {} repeats",
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
    // hf[model] = (decode batch 1, decode batch 8) per repeat, for the full-rank models.
    let mut hf: Vec<Vec<(f64, f64)>> = vec![Vec::new(); models.len()];
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
                eprintln!("repeat {} of {}: transformers {model} ...", repeat + 1, plan.repeats);
                hf[m].push(hf_decode(python, *model, plan)?);
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
    print_bandwidth(&models, &columns);
    if hf_python.is_some() {
        print_hf_table(&models, &columns, &hf);
    }
    Ok(())
}

/// Column of a key in [`KEYS`].
fn key(name: &str) -> usize {
    KEYS.iter().position(|(k, _)| *k == name).unwrap_or(0)
}

/// Decode at batch 1 reads every weight once per token: weight bytes x tokens/s, next to a plain copy.
fn print_bandwidth(models: &[Preset], columns: &[Vec<f64>]) {
    const MIB: f64 = 1024.0 * 1024.0;
    let copy = copy_bandwidth();
    for (model, column) in models.iter().zip(columns) {
        let read = column[key("weights_mib")] * MIB * column[key("decode_1")] / 1e9;
        println!("{model}: decode batch 1 reads its weights at {read:.1} GB/s");
    }
    println!(
        "copy bandwidth of this machine: {:.1} GB/s read + {:.1} GB/s written (a 512 MiB copy_from_slice, best \
         of 5)",
        copy, copy
    );
}

/// GB/s read by the best of 5 copies of 512 MiB (the same amount is written).
fn copy_bandwidth() -> f64 {
    let len = 512 << 20;
    let source = vec![1u8; len];
    let mut target = vec![0u8; len];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let began = Instant::now();
        target.copy_from_slice(&source);
        best = best.min(began.elapsed().as_secs_f64());
    }
    std::hint::black_box(&target);
    len as f64 / best / 1e9
}

/// One repeat of `scripts/reference/bench_hf_decode.py`: Hugging Face's decode tokens/s at batch 1 and 8.
fn hf_decode(python: &str, model: Preset, plan: Plan) -> Result<(f64, f64), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(python)
        .arg(root.join("scripts/reference/bench_hf_decode.py"))
        .arg(root.join("tests/fixtures/parity/presets.json"))
        .arg(model.name())
        .args(["--threads", &rayon::current_num_threads().to_string()])
        .args(["--prompt", &plan.decode_prompt.to_string(), "--new", &plan.new_tokens.to_string()])
        .args(["--repeats", "1"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {python} for the transformers reference: {e}"))?;
    if !output.status.success() {
        return Err(format!("the transformers reference failed ({})", output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<f64>().ok()))
            .ok_or_else(|| format!("no {key} in the transformers reference's output: {text}"))
    };
    Ok((value("decode_1")?, value("decode_8")?))
}

/// Our decode next to transformers' on the same full-rank shapes; CoLA's decode next to the same
/// reference. Ratios are of the medians.
fn print_hf_table(models: &[Preset], columns: &[Vec<f64>], hf: &[Vec<(f64, f64)>]) {
    let Some(full) = models.iter().position(|m| m.family == Family::Full).filter(|&f| !hf[f].is_empty())
    else {
        println!("no full-rank model in --models: nothing to compare with transformers");
        return;
    };
    println!();
    println!(
        "| decode tokens/s | transformers {} | ours {} | ours/transformers |",
        models[full], models[full]
    );
    println!("|---|---|---|---|");
    for (batch, pick) in [(1, 0), (8, 1)] {
        let reference = median(hf[full].iter().map(|v| if pick == 0 { v.0 } else { v.1 }).collect());
        let ours = columns[full][key(if pick == 0 { "decode_1" } else { "decode_8" })];
        println!("| batch {batch} | {reference:.1} | {ours:.1} | {:.2} |", ours / reference);
    }
    for (model, column) in models.iter().zip(columns).filter(|(m, _)| m.family != Family::Full) {
        let reference = median(hf[full].iter().map(|v| v.0).collect());
        println!(
            "{model} decode batch 1: {:.1} tokens/s, {:.2}x transformers {}",
            column[key("decode_1")],
            column[key("decode_1")] / reference,
            models[full]
        );
    }
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

fn median(mut values: Vec<f64>) -> f64 {
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
/// the KV-cache bytes at the end.
fn time_decode(
    model: &Llama,
    rows: usize,
    prompt: usize,
    new: usize,
    seed: u64,
) -> Result<(f64, usize), String> {
    let prompts = prompts(model.config().vocab_size, rows, prompt, seed);
    let views: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut session = Session::new(model);
    let vocab = model.config().vocab_size;
    let mut logits = session.prefill(&views).map_err(|e| e.to_string())?;
    let began = Instant::now();
    for _ in 0..new {
        let values: Vec<f32> = logits.to_vec_f64().into_iter().map(|x| x as f32).collect();
        let next: Vec<u32> = values.chunks(vocab).map(argmax).collect();
        logits = session.decode(&next).map_err(|e| e.to_string())?;
    }
    let _ = logits.to_vec_f64();
    Ok((began.elapsed().as_secs_f64(), session.cache_bytes()))
}

/// `VmHWM` or `VmRSS` of this process, bytes.
fn status_bytes(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Measures one model once and prints `key value` lines.
fn worker(name: &str, plan: Plan, seed: u64) -> Result<(), String> {
    let mut config = LlamaConfig::preset(name).map_err(|e| e.to_string())?;
    config.max_seq_len = config.max_seq_len.max(plan.prefill_len).max(plan.decode_prompt + plan.new_tokens);
    let built = Instant::now();
    let model = Llama::new(config, &mut Rng::new(seed)).map_err(|e| e.to_string())?;
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
        let (seconds, bytes) = time_decode(&model, rows, plan.decode_prompt, plan.new_tokens, seed)?;
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

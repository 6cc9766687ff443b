//! The PyTorch side of `bench_inference`: decode timings from the Python scripts (the independent
//! reference model with a KV cache, `scripts/reference/bench_torch_decode.py`, for every preset and
//! precision; Hugging Face's `LlamaForCausalLM.generate`, `bench_hf_decode.py`, for full-rank ones in
//! f32), the tables that put ours next to them, and the weight-read rate of decode at batch 1 against
//! the machine's copy bandwidth (`copy_bandwidth`).
use crate::{key, median, Plan, Precision};
use cola::kernels::cpu::gemm::copy_bandwidth;
use cola::nn::{Family, Preset};
use std::path::Path;
use std::process::{Command, Stdio};

/// Decode tokens/s at batch 1 and 8 of one run of a reference script.
pub type Rates = (f64, f64);

/// Runs `script` (in `scripts/reference/`) on the preset table and `model` with `extra` arguments;
/// returns its `decode_1` and `decode_8` lines.
fn run_script(
    python: &str,
    script: &str,
    model: Preset,
    plan: Plan,
    extra: &[&str],
) -> Result<Rates, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(python)
        .arg(root.join("scripts/reference").join(script))
        .arg(root.join("tests/fixtures/parity/presets.json"))
        .arg(model.name())
        .args(["--threads", &rayon::current_num_threads().to_string()])
        .args(["--prompt", &plan.decode_prompt.to_string(), "--new", &plan.new_tokens.to_string()])
        .args(["--repeats", "1"])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {python} {script}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{script} failed ({})", output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<f64>().ok()))
            .ok_or_else(|| format!("no {key} in the output of {script}: {text}"))
    };
    Ok((value("decode_1")?, value("decode_8")?))
}

/// One repeat of Hugging Face's decode (f32) on a full-rank preset.
pub fn hf_decode(python: &str, model: Preset, plan: Plan) -> Result<Rates, String> {
    run_script(python, "bench_hf_decode.py", model, plan, &[])
}

/// One repeat of the reference model's cached decode in `precision`.
pub fn torch_decode(python: &str, model: Preset, plan: Plan, precision: Precision) -> Result<Rates, String> {
    run_script(python, "bench_torch_decode.py", model, plan, &["--precision", precision.name()])
}

fn pick(rates: &[Rates], batch: usize) -> f64 {
    median(rates.iter().map(|r| if batch == 1 { r.0 } else { r.1 }).collect())
}

/// Decode at batch 1 reads every weight once per token: weight bytes x tokens/s for ours and (where
/// measured) the reference model's, as a share of a plain copy's read bandwidth.
pub fn print_bandwidth(models: &[Preset], columns: &[Vec<f64>], torch: &[Vec<Rates>]) {
    const MIB: f64 = 1024.0 * 1024.0;
    let copy = copy_bandwidth(5);
    for ((model, column), torch) in models.iter().zip(columns).zip(torch) {
        let bytes = column[key("weights_mib")] * MIB;
        let read = bytes * column[key("decode_1")] / 1e9;
        print!(
            "{model}: decode batch 1 reads its weights at {read:.1} GB/s ({:.0}% of copy)",
            100.0 * read / copy
        );
        if !torch.is_empty() {
            let theirs = bytes * pick(torch, 1) / 1e9;
            print!("; the PyTorch reference at {theirs:.1} GB/s ({:.0}%)", 100.0 * theirs / copy);
        }
        println!();
    }
    println!(
        "copy bandwidth of this machine: {copy:.1} GB/s read + {copy:.1} GB/s written (a 512 MiB copy split among \
         {} threads, median of 5)",
        rayon::current_num_threads()
    );
}

/// Our decode next to the reference model's in the same precision, per model and batch.
pub fn print_torch_table(
    models: &[Preset],
    columns: &[Vec<f64>],
    torch: &[Vec<Rates>],
    precision: Precision,
) {
    println!();
    println!(
        "| decode tokens/s, {} | ours | PyTorch reference (parity.py, KV cache) | ours / PyTorch |",
        precision.name()
    );
    println!("|---|---|---|---|");
    for ((model, column), rates) in models.iter().zip(columns).zip(torch) {
        for batch in [1, 8] {
            let theirs = pick(rates, batch);
            let ours = column[key(if batch == 1 { "decode_1" } else { "decode_8" })];
            println!("| {model} batch {batch} | {ours:.1} | {theirs:.1} | {:.2} |", ours / theirs);
        }
    }
}

/// Our decode next to transformers' on the same full-rank shapes; CoLA's decode next to the same
/// reference. Ratios are of the medians.
pub fn print_hf_table(models: &[Preset], columns: &[Vec<f64>], hf: &[Vec<Rates>]) {
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
    for batch in [1, 8] {
        let reference = pick(&hf[full], batch);
        let ours = columns[full][key(if batch == 1 { "decode_1" } else { "decode_8" })];
        println!("| batch {batch} | {reference:.1} | {ours:.1} | {:.2} |", ours / reference);
    }
    for (model, column) in models.iter().zip(columns).filter(|(m, _)| m.family != Family::Full) {
        let reference = pick(&hf[full], 1);
        println!(
            "{model} decode batch 1: {:.1} tokens/s, {:.2}x transformers {}",
            column[key("decode_1")],
            column[key("decode_1")] / reference,
            models[full]
        );
    }
}

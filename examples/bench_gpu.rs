//! Training throughput, model FLOPs utilisation and peak GPU memory of full-rank and CoLA models on one GPU.
//!
//! Per row: a model built with zero-initialised weights (values do not change the time of any kernel),
//! moved to the GPU in the chosen precision, then `--warmup` untimed and `--steps` timed optimizer steps
//! of one micro-batch of random token ids each (forward, backward, clipping, AdamW). tokens/s counts input
//! tokens; MFU = tokens/s x training FLOPs per token (docs/METHOD.md section 8: 3 x forward, no recomputation
//! counted) / the device's peak dense bf16 rate (`--peak-tflops`, 989 for an H200). Peak memory is the
//! caching allocator's high-water mark of live buffers during the timed steps. When a micro-batch does not
//! fit, the row is retried with half of it.
//!
//! `--json FILE` also writes the settings and rows as JSON, the schema `scripts/reference/bench_torch_gpu.py`
//! writes for PyTorch, which `scripts/bench_gpu_table.py` joins by row name. `--device cpu` runs the same
//! loop on the CPU in f32 (no peak memory: the CPU has no allocator statistics), a check of the program and
//! its JSON on a machine without a GPU, not a benchmark.
//!
//! Usage: `cargo run --release --example bench_gpu -- [--rows full-350m,cola-350m,cola-350m:cola-m,...]
//! [--steps 5] [--warmup 2] [--seq 256] [--precision bf16-mixed] [--peak-tflops 989] [--device cuda:0]
//! [--micro-batch N] [--json FILE]`.
use cola::audit::{flops_per_token, synthetic_ids};
use cola::autograd::Policy;
use cola::data::Batch;
use cola::nn::{Init, Llama, Preset};
use cola::optim::{AdamW, AdamWConfig, CosineSchedule};
use cola::tensor::{DType, Device};
use cola::train::{Precision, Trainer};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn fail(message: &str) -> ! {
    eprintln!("bench_gpu: {message}");
    std::process::exit(1)
}

/// One measured row; `row` is its `--rows` entry (`cola-350m:cola-m`), the key the table joins on.
#[derive(serde::Serialize)]
struct Row {
    row: String,
    name: String,
    micro_batch: usize,
    tokens_per_s: f64,
    flops_per_token: f64,
    mfu: f64,
    /// `None` on the CPU.
    peak_bytes: Option<usize>,
    step_s: f64,
    loss: f64,
}

/// A row that did not run, with the reason.
#[derive(serde::Serialize)]
struct Failed {
    row: String,
    error: String,
}

/// What `--json` writes, rewritten after every row so that an interrupted run leaves the rows it measured.
#[derive(serde::Serialize)]
struct Report {
    program: &'static str,
    device: String,
    precision: String,
    seq: usize,
    steps: usize,
    warmup: usize,
    peak_tflops: f64,
    rows: Vec<Row>,
    failed: Vec<Failed>,
}

impl Report {
    fn write(&self, path: &str) {
        let text = serde_json::to_string_pretty(self).unwrap_or_else(|e| fail(&e.to_string()));
        std::fs::write(path, text + "\n").unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    }
}

fn run_row(
    spec: &str,
    preset: Preset,
    policy: Policy,
    micro_batch: usize,
    args: &Settings,
) -> Result<Row, Box<dyn std::error::Error>> {
    let mut config = preset.config();
    config.max_seq_len = config.max_seq_len.max(args.seq);
    let mut model = Llama::build(config.clone(), DType::F32, &mut Init::Zeros)?;
    model.to_device(args.device, args.precision.param_dtype())?;
    let optimizer = AdamW::new(AdamWConfig {
        master_weights: args.precision != Precision::PureBf16,
        ..AdamWConfig::default()
    });
    let schedule = CosineSchedule::new(1e-3, 1, 1000)?;
    let mut trainer = Trainer::new(model, optimizer, schedule, micro_batch, 0.5);
    trainer.policy = policy;
    let synchronize = || match args.device {
        Device::Cuda(n) => cola::tensor::cuda::cuda_synchronize(n),
        Device::Cpu => Ok(()),
    };
    let batch = |step: usize| Batch {
        tokens: synthetic_ids(config.vocab_size, micro_batch * args.seq, step as u64 + 1),
        rows: micro_batch,
        seq_len: args.seq,
        epoch: 0,
    };
    let mut loss = 0.0;
    for step in 0..args.warmup {
        loss = trainer.train_step(&batch(step)).map_err(|e| e.to_string())?.loss;
    }
    synchronize()?;
    if let Device::Cuda(n) = args.device {
        cola::tensor::cuda::cuda_reset_peak(n)?;
    }
    let start = Instant::now();
    for step in 0..args.steps {
        loss = trainer.train_step(&batch(args.warmup + step)).map_err(|e| e.to_string())?.loss;
    }
    synchronize()?;
    let elapsed = start.elapsed().as_secs_f64();
    let peak_bytes = match args.device {
        Device::Cuda(n) => Some(cola::tensor::cuda::cuda_memory_stats(n)?.peak),
        Device::Cpu => None,
    };
    let tokens = (micro_batch * args.seq * args.steps) as f64;
    let tokens_per_s = tokens / elapsed;
    let flops = flops_per_token(&config, args.seq).training;
    let name = format!(
        "{preset}{}",
        if policy == Policy::KeepAll { String::new() } else { format!(" +{}", policy.name()) }
    );
    Ok(Row {
        row: spec.to_string(),
        name,
        micro_batch,
        tokens_per_s,
        flops_per_token: flops,
        mfu: tokens_per_s * flops / (args.peak_tflops * 1e12),
        peak_bytes,
        step_s: elapsed / args.steps as f64,
        loss,
    })
}

struct Settings {
    device: Device,
    precision: Precision,
    seq: usize,
    steps: usize,
    warmup: usize,
    peak_tflops: f64,
}

/// With `COLA_CUDA_PROFILE=1`: the kernels of the row just measured (warmup included), by total time.
fn print_profile() {
    let rows = cola::kernels::cuda::profile::take();
    let total: f64 = rows.iter().map(|r| r.2).sum();
    for (name, calls, seconds) in rows.iter().take(25) {
        println!(
            "    {name:<44} {calls:>7} calls {:>9.2} ms {:>5.1}%",
            seconds * 1e3,
            100.0 * seconds / total
        );
    }
}

/// `--gemm`: TFLOP/s of single bf16 products of the 1b model's shapes through the engine's matmul (plain,
/// transposed-left as in weight gradients, transposed-right as in input gradients), medians of 20.
fn gemm_table(device: Device) {
    use cola::tensor::Rng;
    let Device::Cuda(ordinal) = device else { fail("--gemm needs a CUDA device") };
    println!("{:<34} {:>10} {:>10}", "bf16 GEMM [m, k] @ [k, n]", "ms", "TFLOP/s");
    for (m, k, n) in
        [(8192, 2048, 2048), (8192, 2048, 5461), (8192, 5461, 2048), (16384, 1024, 1024), (16384, 1024, 256)]
    {
        for (name, ta, tb) in
            [("NN", false, false), ("TN (weight grad)", true, false), ("NT (input grad)", false, true)]
        {
            let make = |rows: usize, cols: usize, t: bool, seed: u64| {
                let shape = if t { [cols, rows] } else { [rows, cols] };
                let x = cola::Tensor::randn(&shape, 0.0, 1.0, DType::F32, &mut Rng::new(seed));
                let x = x
                    .to_dtype(DType::BF16)
                    .and_then(|x| x.to_device(device))
                    .unwrap_or_else(|e| fail(&e.to_string()));
                if t {
                    x.t().unwrap_or_else(|e| fail(&e.to_string()))
                } else {
                    x
                }
            };
            let (a, b) = (make(m, k, ta, 1), make(k, n, tb, 2));
            let mut times = Vec::new();
            for _ in 0..22 {
                let _ = cola::tensor::cuda::cuda_synchronize(ordinal);
                let start = Instant::now();
                let c = a.matmul(&b).unwrap_or_else(|e| fail(&e.to_string()));
                let _ = cola::tensor::cuda::cuda_synchronize(ordinal);
                times.push(start.elapsed().as_secs_f64());
                drop(c);
            }
            times.sort_by(f64::total_cmp);
            let t = times[times.len() / 2];
            println!(
                "{:<34} {:>10.3} {:>10.1}",
                format!("[{m}, {k}] @ [{k}, {n}] {name}"),
                t * 1e3,
                2.0 * (m * k * n) as f64 / t / 1e12
            );
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--gemm") {
        let device: Device =
            arg("--device").unwrap_or_else(|| "cuda:0".into()).parse().unwrap_or_else(|e: String| fail(&e));
        gemm_table(device);
        return;
    }
    let device: Device =
        arg("--device").unwrap_or_else(|| "cuda:0".into()).parse().unwrap_or_else(|e: String| fail(&e));
    // The CPU computes in f32 only.
    let default_precision = if device == Device::Cpu { "f32" } else { "bf16-mixed" };
    let precision_name = arg("--precision").unwrap_or_else(|| default_precision.into());
    let precision: Precision =
        precision_name.parse().unwrap_or_else(|e: cola::train::TrainError| fail(&e.to_string()));
    let number = |name: &str, default: f64| {
        arg(name).map_or(default, |v| v.parse().unwrap_or_else(|_| fail(&format!("{name} {v}"))))
    };
    let settings = Settings {
        device,
        precision,
        seq: number("--seq", 256.0) as usize,
        steps: number("--steps", 5.0) as usize,
        warmup: number("--warmup", 2.0) as usize,
        peak_tflops: number("--peak-tflops", 989.0),
    };
    let rows = arg("--rows")
        .unwrap_or_else(|| "full-350m,cola-350m,cola-350m:cola-m,full-1b,cola-1b,cola-1b:cola-m".into());
    println!(
        "Training throughput ({device}, {precision_name}, seq {}, {} timed steps after {} warmup; MFU against {} TFLOP/s)",
        settings.seq,
        settings.steps,
        settings.warmup,
        settings.peak_tflops
    );
    println!(
        "{:<22} {:>6} {:>12} {:>7} {:>11} {:>8} {:>8}",
        "model", "micro", "tokens/s", "MFU", "peak mem", "step s", "loss"
    );
    let json = arg("--json");
    let mut report = Report {
        program: "bench_gpu",
        device: device.to_string(),
        precision: precision_name,
        seq: settings.seq,
        steps: settings.steps,
        warmup: settings.warmup,
        peak_tflops: settings.peak_tflops,
        rows: Vec::new(),
        failed: Vec::new(),
    };
    for spec in rows.split(',') {
        let (name, policy) = match spec.split_once(':') {
            Some((p, policy)) => {
                (p, Policy::parse(policy).unwrap_or_else(|| fail(&format!("unknown policy {policy}"))))
            }
            None => (spec, Policy::KeepAll),
        };
        let preset: Preset = name.parse().unwrap_or_else(|e: cola::nn::NnError| fail(&e.to_string()));
        let mut micro =
            arg("--micro-batch").and_then(|v| v.parse().ok()).unwrap_or_else(|| preset.gpu_micro_batch());
        loop {
            match run_row(spec, preset, policy, micro, &settings) {
                Ok(row) => {
                    println!(
                        "{:<22} {:>6} {:>12.0} {:>6.1}% {:>12} {:>8.3} {:>8.4}",
                        row.name,
                        row.micro_batch,
                        row.tokens_per_s,
                        100.0 * row.mfu,
                        row.peak_bytes
                            .map_or("-".into(), |b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)),
                        row.step_s,
                        row.loss
                    );
                    report.rows.push(row);
                    print_profile();
                    break;
                }
                Err(e) if e.to_string().contains("out of GPU memory") && micro > 1 => {
                    println!("{spec}: micro-batch {micro} does not fit ({e}); retrying with {}", micro / 2);
                    micro /= 2;
                }
                Err(e) => {
                    println!("{spec}: failed: {e}");
                    report.failed.push(Failed { row: spec.to_string(), error: e.to_string() });
                    break;
                }
            }
            if let Device::Cuda(n) = device {
                let _ = cola::tensor::cuda::cuda_release_cached(n);
            }
        }
        if let Device::Cuda(n) = device {
            let _ = cola::tensor::cuda::cuda_release_cached(n);
        }
        if let Some(path) = &json {
            report.write(path);
        }
    }
    let find = |name: &str| report.rows.iter().find(|r| r.name == name);
    for (a, b, what) in [("cola-350m", "full-350m", "tokens/s"), ("cola-1b", "full-1b", "tokens/s")] {
        if let (Some(x), Some(y)) = (find(a), find(b)) {
            println!("{a} / {b} {what}: {:.2}x", x.tokens_per_s / y.tokens_per_s);
        }
    }
    for (a, b) in [("cola-1b +cola-m", "cola-1b"), ("cola-350m +cola-m", "cola-350m")] {
        if let (Some(Some(x)), Some(Some(y))) = (find(a).map(|r| r.peak_bytes), find(b).map(|r| r.peak_bytes))
        {
            println!("{a} / {b} peak memory: {:.2}x", x as f64 / y as f64);
        }
    }
    if !report.failed.is_empty() || report.rows.is_empty() {
        std::process::exit(1);
    }
}

//! Activation memory and step time of the retention policies, measured on the CPU.
//!
//! For 350m at a micro-batch that fits (default 2 x 256), per mode (full, full+block, cola, cola+block,
//! cola-m): saved activation bytes per token, activation peaks, peak step memory (parameters, gradients,
//! AdamW state and activations, all f32), step time and tokens/s. Then the same rows extrapolated to 1b and
//! 7b at the paper's micro-batch, from per-token bytes measured on one- and two-layer copies of those
//! models. Usage: `cargo run --release --example bench_memory -- [--batch B] [--seq S] [--repeats N]`.
use cola::audit::{human_bytes, measure_step, per_token_bytes, synthetic_ids, StepMemory};
use cola::autograd::Policy;
use cola::nn::{Family, Llama, Preset, Size};
use cola::tensor::Rng;

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The row name of `policy` on a model of `family`: `full`, `full+block`, `cola`, `cola+block`, `cola-m`.
fn mode(family: Family, policy: Policy) -> String {
    match policy {
        Policy::KeepAll => family.prefix().to_string(),
        Policy::ColaM => policy.name().to_string(),
        other => format!("{}+{}", family.prefix(), other.name()),
    }
}

fn median_step(
    model: &Llama,
    policy: Policy,
    ids: &[u32],
    batch: usize,
    seq: usize,
    repeats: usize,
) -> StepMemory {
    let mut runs: Vec<StepMemory> = (0..repeats.max(1))
        .map(|_| measure_step(model, policy, ids, batch, seq).unwrap_or_else(|e| fail(&e.to_string())))
        .collect();
    runs.sort_by(|a, b| a.step_seconds.total_cmp(&b.step_seconds));
    runs.swap_remove(runs.len() / 2)
}

fn fail(message: &str) -> ! {
    eprintln!("bench_memory: {message}");
    std::process::exit(1)
}

fn main() {
    let (batch, seq, repeats) = (flag("--batch", 2), flag("--seq", 256), flag("--repeats", 1));
    println!("350m, micro-batch {batch} x {seq} tokens, f32, {} threads", rayon::current_num_threads());
    println!(
        "{:<11} {:>12} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9}",
        "mode", "saved/token", "saved", "fwd peak", "bwd peak", "step peak", "step s", "tokens/s"
    );
    let ids = synthetic_ids(32000, batch * seq, 1);
    for family in [Family::Full, Family::Cola] {
        let config = Preset::new(family, Size::M350).config();
        let policies = config.policies();
        let model = Llama::new(config, &mut Rng::new(0)).unwrap_or_else(|e| fail(&e.to_string()));
        let mut baseline_seconds = f64::NAN;
        let name = family.prefix();
        for policy in policies {
            let m = median_step(&model, policy, &ids, batch, seq, repeats);
            if policy == Policy::KeepAll {
                baseline_seconds = m.step_seconds;
            }
            let overhead = 100.0 * (m.step_seconds / baseline_seconds - 1.0);
            println!(
                "{:<11} {:>12} {:>11} {:>11} {:>11} {:>11} {:>9.2} {:>9.1}   time vs {name}: {overhead:+.1}%",
                mode(family, policy),
                format!("{:.0} B", m.saved_bytes_per_token()),
                human_bytes(m.activations.saved_bytes as f64),
                human_bytes(m.activations.forward_peak_bytes as f64),
                human_bytes(m.activations.backward_peak_bytes as f64),
                human_bytes(m.peak_step_bytes() as f64),
                m.step_seconds,
                m.tokens as f64 / m.step_seconds,
            );
        }
    }

    // The paper's micro-batches: 1b at 32 sequences; 7b assumed at 16 (both x 256 tokens).
    println!("\nextrapolated from per-token bytes measured on 1- and 2-layer copies (f32; bf16 halves activations)");
    println!(
        "{:<6} {:<11} {:>6} {:>14} {:>16} {:>14} {:>18}",
        "size", "mode", "batch", "layer B/token", "other B/token", "saved", "resident+saved"
    );
    for (size, size_name, micro_batch) in [(Size::B1, "1b", 32usize), (Size::B7, "7b", 16)] {
        let rows = [Family::Full, Family::Cola].into_iter().flat_map(|family| {
            let config = Preset::new(family, size).config();
            config.policies().into_iter().map(move |policy| (family, policy, config.clone()))
        });
        for (family, policy, config) in rows {
            let bytes = per_token_bytes(&config, policy, 1, 32).unwrap_or_else(|e| fail(&e.to_string()));
            let tokens = micro_batch * 256;
            let saved = bytes.saved_bytes(config.n_layers, tokens);
            // Parameters, gradients and the two AdamW moments, f32.
            let resident = 16.0 * config.param_counts().total as f64;
            println!(
                "{:<6} {:<11} {:>6} {:>14.0} {:>16.0} {:>14} {:>18}",
                size_name,
                mode(family, policy),
                micro_batch,
                bytes.per_layer,
                bytes.non_layer,
                human_bytes(saved),
                human_bytes(resident + saved)
            );
        }
    }
}

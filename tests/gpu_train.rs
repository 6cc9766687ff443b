//! A tiny model trained for 20 steps on the GPU tracks the CPU's loss curve: within 1e-3 relative in f32
//! (different summation orders) and 3e-2 in bf16-mixed (bf16 activations carry 8 significant bits).
//! Also checks that every retention policy gives the GPU the same losses. Needs a CUDA device; without one
//! it prints `skipped: no CUDA device`.
#![cfg(feature = "cuda")]
use cola::autograd::Policy;
use cola::data::Batch;
use cola::nn::{Llama, LlamaConfig};
use cola::optim::{AdamW, AdamWConfig, CosineSchedule};
use cola::train::{Precision, Trainer};
use cola::{Device, Rng};

mod common;

const STEPS: usize = 20;

/// Rows that count up by 3 from a per-row start: the next token is predictable, so the loss falls.
fn learnable_ids(vocab: usize, rows: usize, seq: usize, step: usize) -> Vec<u32> {
    (0..rows * seq).map(|i| ((step * 7 + (i / seq) * 5 + (i % seq) * 3) % vocab) as u32).collect()
}

fn losses(preset: &str, device: Device, precision: Precision, policy: Policy) -> Vec<f64> {
    let config = LlamaConfig::preset(preset).unwrap();
    let mut model = Llama::new(config.clone(), &mut Rng::new(7)).unwrap();
    model.to_device(device, precision.param_dtype()).unwrap();
    let optimizer = AdamW::new(AdamWConfig::default());
    let schedule = CosineSchedule::new(3e-3, 4, STEPS as u64).unwrap();
    let mut trainer = Trainer::new(model, optimizer, schedule, 4, 0.5);
    trainer.policy = policy;
    (0..STEPS)
        .map(|step| {
            let seq = config.max_seq_len;
            let batch = Batch {
                tokens: learnable_ids(config.vocab_size, 8, seq, step),
                rows: 8,
                seq_len: seq,
                epoch: 0,
            };
            trainer
                .train_step(&batch)
                .unwrap_or_else(|e| panic!("{preset} on {device} step {step}: {e}"))
                .loss
        })
        .collect()
}

fn worst(got: &[f64], want: &[f64]) -> f64 {
    got.iter().zip(want).map(|(a, b)| (a - b).abs() / b.abs().max(1e-6)).fold(0.0, f64::max)
}

#[test]
fn tiny_models_track_the_cpu_loss_curve() {
    if !common::gpu::have_gpu() {
        return;
    }
    for preset in ["cola-tiny", "full-tiny"] {
        let cpu = losses(preset, Device::Cpu, Precision::F32, Policy::KeepAll);
        let gpu = losses(preset, Device::Cuda(0), Precision::F32, Policy::KeepAll);
        let mixed = losses(preset, Device::Cuda(0), Precision::Bf16Mixed, Policy::KeepAll);
        let (e32, e16) = (worst(&gpu, &cpu), worst(&mixed, &cpu));
        eprintln!("{preset}: cpu {:?}", &cpu);
        eprintln!("{preset}: gpu f32 {:?} (worst rel {e32:.2e})", &gpu);
        eprintln!("{preset}: gpu bf16-mixed {:?} (worst rel {e16:.2e})", &mixed);
        assert!(e32 <= 1e-3, "{preset}: GPU f32 losses drift from the CPU's: {e32}");
        assert!(e16 <= 3e-2, "{preset}: GPU bf16-mixed losses drift from the CPU's: {e16}");
        assert!(cpu[STEPS - 1] < cpu[0], "{preset}: the loss must fall");
        let policy =
            if LlamaConfig::preset(preset).unwrap().is_cola() { Policy::ColaM } else { Policy::Block };
        let recomputed = losses(preset, Device::Cuda(0), Precision::F32, policy);
        let e = worst(&recomputed, &gpu);
        eprintln!("{preset}: gpu f32 with {} recomputation: worst rel vs keep-all {e:.2e}", policy.name());
        assert!(e <= 1e-5, "{preset}: recomputation changed GPU losses by {e}");
    }
}

//! The multi-tensor AdamW step with device-side global-norm clipping (`AdamW::clip_and_step` on a GPU)
//! against the CPU optimizer (`clip_grad_norm`, then `AdamW::step`) over a model-like parameter set:
//! matrices, vectors, odd sizes and sizes that straddle the kernels' 8192-element chunks, two parameters
//! spared from weight decay; f32, bf16 with f32 masters, and pure bf16; clipping active and inactive; six
//! steps. Also: a non-finite norm leaves everything untouched, a resumed optimizer (new buffers, so new
//! device tables) continues to the bit, and a step is exactly three kernel launches. The step in two
//! halves for a norm summed over several ranks (`AdamW::squared_norm`, then `AdamW::step_clipped` with its
//! square root) and ZeRO-1's sharded update at one rank (`dist::Zero` through a one-rank collective that
//! sums on the device, as NCCL's path at world size 1 does) equal the fused step to the bit: the same
//! partial sums in the same order, the root and the clip factor in the same correctly rounded f64
//! operations, the same update kernel.
//!
//! Tolerances. Both devices evaluate the same f32 formula with the same f32 constants and correctly
//! rounded operations (the per-tensor GPU step already agrees with the CPU to the bit), and the gradients
//! are the same values, so without clipping the parameters, masters and moments are equal to the bit. The
//! norm is summed in f64 on both sides in different orders: 1e-12 relative. With clipping, the factor
//! `max_norm / (norm + 1e-6)` inherits that difference and its f32 rounding may differ by one ulp, which
//! moves an f32 result by a few ulps: 1e-5 relative to `|x| + mean |x|` (the mean keeps values that pass
//! near zero from dividing by nothing); a bf16 value may then round the other way: 1.6e-2 (two bf16 ulps
//! of 2^-8 relative, twice for margin). Pure bf16 is compared with a CPU emulation that rounds param, m
//! and v to bf16 after every f32 step, which is what the GPU kernel stores, so the same bounds hold.
//! Needs a CUDA device; without one each test prints `skipped: no CUDA device`.
#![cfg(feature = "cuda")]
use cola::kernels::cuda::profile;
use cola::optim::{AdamW, AdamWConfig};
use cola::{DType, Device, GradStore, Parameter, Rng, Tensor};
use std::collections::BTreeMap;
use std::sync::Mutex;

mod common;
use common::gpu::{have_gpu, GPU};

/// The tests count kernel launches through the process-wide launch profile, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Sizes of a small model: a projection, its norm weight, a matrix and a vector over chunk boundaries,
/// odd shapes.
const SHAPES: &[&[usize]] = &[&[96, 64], &[64], &[3, 8193], &[8192], &[17], &[5, 7, 3], &[2 * 8192 + 1]];
/// Indices of the parameters without weight decay (a norm weight and a small vector).
const NO_DECAY: [usize; 2] = [1, 4];
const STEPS: u64 = 6;
const LR: f64 = 1e-2;

fn gpu_or_skip() -> Option<std::sync::MutexGuard<'static, ()>> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Safe here: the guard keeps the other tests of this binary from running meanwhile.
    std::env::set_var("COLA_CUDA_PROFILE", "1");
    have_gpu().then_some(guard)
}

fn name(i: usize) -> String {
    format!("layers.{i}.weight")
}

/// `x` rounded to `dtype` and stored as f32 on the CPU (the CPU side of a bf16 comparison).
fn rounded(x: &Tensor, dtype: DType) -> Tensor {
    x.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
}

/// The parameters with values in `dtype` on `device` (f32 on the CPU).
fn params(device: Device, dtype: DType) -> Vec<Parameter> {
    let mut rng = Rng::new(11);
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let x = rounded(&Tensor::randn(shape, 0.0, 0.5, DType::F32, &mut rng), dtype);
            let value =
                if device == Device::Cpu { x } else { x.to_dtype(dtype).unwrap().to_device(device).unwrap() };
            Parameter::new(name(i), value)
        })
        .collect()
}

/// The gradients of step `step` (values of `dtype`) for `params`.
fn grads(params: &[Parameter], step: u64, dtype: DType, nan: bool) -> GradStore {
    let mut rng = Rng::new(1000 + step);
    let mut store = GradStore::new();
    for (i, p) in params.iter().enumerate() {
        let mut g =
            rounded(&Tensor::randn(p.value().shape(), 0.0, 1.0 + i as f64, DType::F32, &mut rng), dtype);
        if nan && i == 2 {
            let mut values = g.to_vec::<f32>().unwrap();
            values[8192] = f32::NAN;
            g = Tensor::from_vec(values, g.shape()).unwrap();
        }
        let g = if p.value().device() == Device::Cpu {
            g
        } else {
            g.to_dtype(dtype).unwrap().to_device(GPU).unwrap()
        };
        store.set(p.id(), g);
    }
    store
}

fn optimizer(master_weights: bool) -> AdamW {
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.1, master_weights, ..AdamWConfig::default() });
    opt.exempt_from_decay(NO_DECAY.map(name));
    opt
}

/// One update with the gradients of step `s` (uploads only: no kernel runs before `clip_and_step`).
fn step(opt: &mut AdamW, params: &mut [Parameter], s: u64, dtype: DType, nan: bool, max_norm: f64) -> f64 {
    let mut store = grads(params, s, dtype, nan);
    let mut refs: Vec<&mut Parameter> = params.iter_mut().collect();
    opt.clip_and_step(&mut refs, &mut store, LR, max_norm).unwrap()
}

/// Rounds the CPU parameters and state to bf16 (stored as f32): what pure bf16 keeps after a step.
fn round_to_bf16(opt: &mut AdamW, params: &mut [Parameter]) {
    for p in params.iter_mut() {
        p.set_value(rounded(p.value(), DType::BF16));
    }
    let state: BTreeMap<String, Tensor> =
        opt.state_tensors().into_iter().map(|(k, t)| (k, rounded(&t, DType::BF16))).collect();
    let refs: Vec<&Parameter> = params.iter().collect();
    let count = opt.step_count();
    opt.load_state(&refs, &state, count).unwrap();
}

/// Fails unless `got` and `want` agree: to the bit when `tol` is 0, else within `tol * (|w| + mean |w|)`.
fn assert_agree(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let (g, w) = (got.to_vec_f64(), want.to_vec_f64());
    assert_eq!(g.len(), w.len(), "{what}: lengths");
    if tol == 0.0 {
        let bad = g.iter().zip(&w).position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(
            bad.is_none(),
            "{what}: element {bad:?} differs: {:?} vs {:?}",
            bad.map(|i| g[i]),
            bad.map(|i| w[i])
        );
        return;
    }
    let mean = w.iter().map(|x| x.abs()).sum::<f64>() / w.len().max(1) as f64;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= tol * (b.abs() + mean), "{what}: element {i}: {a} vs {b} (tol {tol})");
    }
}

fn state(opt: &AdamW) -> BTreeMap<String, Tensor> {
    opt.state_tensors().into_iter().collect()
}

#[test]
fn multi_tensor_steps_match_the_cpu_optimizer() {
    let Some(_serial) = gpu_or_skip() else { return };
    // (mode, param dtype, master weights)
    for (mode, dtype, master) in
        [("f32", DType::F32, true), ("mixed", DType::BF16, true), ("pure", DType::BF16, false)]
    {
        for (clipping, max_norm) in [("clipped", 1.0), ("unclipped", 1e9)] {
            let what = format!("{mode} {clipping}");
            let (mut cpu, mut gpu) = (params(Device::Cpu, dtype), params(GPU, dtype));
            let (mut cpu_opt, mut gpu_opt) = (optimizer(master), optimizer(master));
            for s in 0..STEPS {
                let cpu_norm = step(&mut cpu_opt, &mut cpu, s, dtype, false, max_norm);
                let gpu_norm = step(&mut gpu_opt, &mut gpu, s, dtype, false, max_norm);
                assert!(
                    (gpu_norm - cpu_norm).abs() <= 1e-12 * cpu_norm,
                    "{what} step {s}: norm {gpu_norm} vs {cpu_norm}"
                );
                assert_eq!(clipping == "clipped", cpu_norm > max_norm, "{what}: the case does what it says");
                if mode == "pure" {
                    round_to_bf16(&mut cpu_opt, &mut cpu);
                }
            }
            assert_eq!(gpu_opt.step_count(), STEPS);
            let (f32_tol, bf16_tol) = if clipping == "clipped" { (1e-5, 1.6e-2) } else { (0.0, 0.0) };
            let (cpu_state, gpu_state) = (state(&cpu_opt), state(&gpu_opt));
            for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
                let value = g.value().to_dtype(DType::F32).unwrap();
                let tol = if dtype == DType::F32 { f32_tol } else { bf16_tol };
                assert_agree(&format!("{what} param {i}"), &value, &rounded(c.value(), dtype), tol);
                for moment in ["exp_avg", "exp_avg_sq"] {
                    let key = format!("{}.{moment}", name(i));
                    let tol = if mode == "pure" { bf16_tol } else { f32_tol };
                    assert_agree(&format!("{what} {key}"), &gpu_state[&key], &cpu_state[&key], tol);
                }
                if mode == "mixed" {
                    let master = &gpu_state[&format!("{}.master", name(i))];
                    assert_agree(&format!("{what} master {i}"), master, c.value(), f32_tol);
                }
            }
        }
    }
}

#[test]
fn a_non_finite_norm_changes_nothing() {
    let Some(_serial) = gpu_or_skip() else { return };
    let (mut gpu, mut twin) = (params(GPU, DType::BF16), params(GPU, DType::BF16));
    let (mut opt, mut twin_opt) = (optimizer(true), optimizer(true));
    step(&mut opt, &mut gpu, 0, DType::BF16, false, 1.0);
    step(&mut twin_opt, &mut twin, 0, DType::BF16, false, 1.0);
    let before: Vec<Vec<f64>> = gpu.iter().map(|p| p.value().to_vec_f64()).collect();
    let state_before: Vec<Vec<f64>> = opt.state_tensors().iter().map(|(_, t)| t.to_vec_f64()).collect();
    let norm = step(&mut opt, &mut gpu, 1, DType::BF16, true, 1.0);
    assert!(norm.is_nan(), "a NaN gradient gives a NaN norm, got {norm}");
    assert_eq!(opt.step_count(), 1, "the refused update is not counted");
    let after: Vec<Vec<f64>> = gpu.iter().map(|p| p.value().to_vec_f64()).collect();
    let state_after: Vec<Vec<f64>> = opt.state_tensors().iter().map(|(_, t)| t.to_vec_f64()).collect();
    let same = |a: &[Vec<f64>], b: &[Vec<f64>]| {
        a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    assert!(same(&after, &before), "parameters moved");
    assert!(same(&state_after, &state_before), "optimizer state moved");
    // The next finite step is the one an optimizer that never saw the refused step takes.
    step(&mut opt, &mut gpu, 2, DType::BF16, false, 1.0);
    step(&mut twin_opt, &mut twin, 2, DType::BF16, false, 1.0);
    for (a, b) in gpu.iter().zip(&twin) {
        assert_agree(a.name(), a.value(), b.value(), 0.0);
    }
}

#[test]
fn a_resumed_optimizer_continues_to_the_bit_in_three_launches_a_step() {
    let Some(_serial) = gpu_or_skip() else { return };
    let (mut straight, mut resumed) = (params(GPU, DType::BF16), params(GPU, DType::BF16));
    let (mut straight_opt, mut first_opt) = (optimizer(true), optimizer(true));
    for s in 0..2 {
        step(&mut straight_opt, &mut straight, s, DType::BF16, false, 1.0);
        step(&mut first_opt, &mut resumed, s, DType::BF16, false, 1.0);
    }
    // A fresh optimizer from the saved state: every state buffer is new, so its device tables are too.
    let saved: BTreeMap<String, Tensor> =
        state(&first_opt).into_iter().map(|(k, t)| (k, t.to_device(Device::Cpu).unwrap())).collect();
    let mut resumed_opt = optimizer(true);
    let refs: Vec<&Parameter> = resumed.iter().collect();
    resumed_opt.load_state(&refs, &saved, first_opt.step_count()).unwrap();
    drop(first_opt);
    for s in 2..STEPS {
        profile::take();
        step(&mut straight_opt, &mut straight, s, DType::BF16, false, 1.0);
        let launches = profile::take();
        let names: Vec<&str> = launches.iter().map(|(n, _, _)| n.as_str()).collect();
        let calls: u64 = launches.iter().map(|(_, c, _)| c).sum();
        assert_eq!(calls, 3, "step {s}: launches {launches:?}");
        for kernel in ["multi_tensor_norm_partials", "multi_tensor_clip_factor", "multi_tensor_adamw"] {
            assert!(names.contains(&kernel), "step {s}: {kernel} missing from {names:?}");
        }
        step(&mut resumed_opt, &mut resumed, s, DType::BF16, false, 1.0);
    }
    let (a, b) = (state(&straight_opt), state(&resumed_opt));
    for (key, t) in &a {
        assert_agree(key, &b[key], t, 0.0);
    }
    for (x, y) in straight.iter().zip(&resumed) {
        assert_agree(x.name(), y.value(), x.value(), 0.0);
    }
}

/// The step of `opt` in two halves ([`AdamW::squared_norm`], then [`AdamW::step_clipped`] with its root).
fn split_step(opt: &mut AdamW, params: &mut [Parameter], s: u64, dtype: DType, max_norm: f64) -> f64 {
    let mut store = grads(params, s, dtype, false);
    let mut refs: Vec<&mut Parameter> = params.iter_mut().collect();
    let norm = opt.squared_norm(&mut refs, &store).unwrap().sqrt();
    opt.step_clipped(&mut refs, &mut store, LR, norm, max_norm).unwrap();
    norm
}

/// One rank whose gradient sums are on the device and are the identity (NCCL's path at world size 1,
/// without NCCL).
#[derive(Debug)]
struct OneDevice;

impl cola::dist::Collective for OneDevice {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buffer: &mut [f32]) -> cola::dist::Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> cola::dist::Result<()> {
        Ok(())
    }
    fn sums_on_device(&self) -> bool {
        true
    }
    fn all_reduce_sum_on_device(&self, _buffer: &mut Tensor) -> cola::dist::Result<()> {
        Ok(())
    }
    fn broadcast(&self, _buffer: &mut [u8], _root: usize) -> cola::dist::Result<()> {
        Ok(())
    }
    fn barrier(&self) -> cola::dist::Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

#[test]
fn the_step_in_two_halves_and_zero_one_at_one_rank_are_the_fused_step_to_the_bit() {
    let Some(_serial) = gpu_or_skip() else { return };
    for (mode, dtype, master) in
        [("f32", DType::F32, true), ("mixed", DType::BF16, true), ("pure", DType::BF16, false)]
    {
        for (clipping, max_norm) in [("clipped", 1.0), ("unclipped", 1e9)] {
            let what = format!("{mode} {clipping}");
            let [mut fused, mut split, mut sharded] = [0; 3].map(|_| params(GPU, dtype));
            let [mut fused_opt, mut split_opt, mut sharded_opt] = [0; 3].map(|_| optimizer(master));
            let refs: Vec<&Parameter> = sharded.iter().collect();
            let mut zero = cola::dist::Zero::new(&refs, 0, 1).unwrap();
            for s in 0..STEPS {
                let norm = step(&mut fused_opt, &mut fused, s, dtype, false, max_norm);
                let split_norm = split_step(&mut split_opt, &mut split, s, dtype, max_norm);
                // Buckets of 8192 f32 elements: parameters straddle buckets and a bucket holds several.
                let store = grads(&sharded, s, dtype, false);
                let refs: Vec<&Parameter> = sharded.iter().collect();
                let mine = zero.reduce_after_backward(&OneDevice, &refs, &store, 8192 * 4).unwrap();
                let mut params: Vec<&mut Parameter> = sharded.iter_mut().collect();
                let zero_norm =
                    zero.step(&OneDevice, &mut sharded_opt, &mut params, mine, LR, max_norm).unwrap();
                assert_eq!(split_norm.to_bits(), norm.to_bits(), "{what} step {s}: split norm");
                assert_eq!(zero_norm.to_bits(), norm.to_bits(), "{what} step {s}: ZeRO-1 norm");
            }
            let want = state(&fused_opt);
            for (other, opt, params) in [("split", &split_opt, &split), ("ZeRO-1", &sharded_opt, &sharded)] {
                assert_eq!(opt.step_count(), STEPS, "{what} {other}");
                for (x, y) in fused.iter().zip(params) {
                    assert_eq!(y.value().dtype(), dtype, "{what} {other} {}", x.name());
                    assert_agree(&format!("{what} {other} {}", x.name()), y.value(), x.value(), 0.0);
                }
                let got = state(opt);
                assert_eq!(got.len(), want.len(), "{what} {other}: state tensors");
                for (key, t) in &want {
                    assert_agree(&format!("{what} {other} {key}"), &got[key], t, 0.0);
                }
            }
        }
    }
}

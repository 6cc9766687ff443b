//! Schedule values, AdamW against hand-computed steps, clipping.
use cola_autograd::Graph;
use cola_autograd::{GradStore, Parameter, Tape};
use cola_optim::{clip_grad_norm, AdamW, AdamWConfig, CosineSchedule};
use cola_tensor::{DType, Tensor};
use std::collections::BTreeMap;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

#[test]
fn schedule_matches_the_paper_formula_at_chosen_steps() {
    // 350m recipe: peak 3e-3, warmup 6000, total 60000.
    let s = CosineSchedule::new(3e-3, 6000, 60000).unwrap();
    assert_eq!(s.lr(0), 0.0);
    assert!(close(s.lr(3000), 1.5e-3, 1e-15));
    assert!(close(s.lr(5999), 3e-3 * 5999.0 / 6000.0, 1e-15));
    assert!(close(s.lr(6000), 3e-3, 1e-15));
    // Halfway through the decay the cosine term is 0.5: 0.1 + 0.9 * 0.5 = 0.55 of peak.
    assert!(close(s.lr(33000), 0.55 * 3e-3, 1e-12));
    assert!(close(s.lr(60000), 0.1 * 3e-3, 1e-12));
    assert!(close(s.lr(90000), 0.1 * 3e-3, 1e-12));
    // Monotone decay after warmup.
    let mut prev = s.lr(6000);
    for step in (6001..60000).step_by(997) {
        let lr = s.lr(step);
        assert!(lr <= prev);
        prev = lr;
    }
    assert!(CosineSchedule::new(1e-3, 10, 5).is_err());
    assert!(CosineSchedule::new(f64::NAN, 1, 5).is_err());
}

fn param(name: &str, values: Vec<f64>) -> Parameter {
    let n = values.len();
    Parameter::new(name, Tensor::from_vec(values, &[n]).unwrap())
}

/// Gradients of `sum(w * c)` are `c`: a simple way to set a known gradient.
fn grads_of(params: &[&Parameter], coefficients: &[Vec<f64>]) -> GradStore {
    let mut tape = Tape::new();
    let mut total = None;
    for (p, c) in params.iter().zip(coefficients) {
        let w = tape.param(p);
        let c = tape.constant(Tensor::from_vec(c.clone(), &[c.len()]).unwrap());
        let prod = tape.mul(&w, &c).unwrap();
        let s = tape.sum(&prod, &[], false).unwrap();
        total = Some(match total {
            None => s,
            Some(t) => tape.add(&t, &s).unwrap(),
        });
    }
    let g = tape.backward(total.unwrap()).unwrap();
    let mut store = GradStore::new();
    store.accumulate(&g).unwrap();
    store
}

/// torch.optim.AdamW's update written out for one scalar.
fn reference_adamw(p: f64, g: &[f64], lr: &[f64], wd: f64) -> f64 {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let (mut p, mut m, mut v) = (p, 0.0, 0.0);
    for (t, (&g, &lr)) in g.iter().zip(lr).enumerate() {
        let t = (t + 1) as i32;
        p *= 1.0 - lr * wd;
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        let m_hat = m / (1.0 - b1.powi(t));
        let v_hat = v / (1.0 - b2.powi(t));
        p -= lr * m_hat / (v_hat.sqrt() + eps);
    }
    p
}

#[test]
fn adamw_matches_hand_computed_steps_with_and_without_exemption() {
    for exempt in [false, true] {
        let mut opt = AdamW::new(AdamWConfig::default());
        if exempt {
            opt.exempt_from_decay(["model.norm.weight"]);
        }
        assert_eq!(opt.decays("model.norm.weight"), !exempt);
        assert!(opt.decays("model.layers.0.mlp.up_proj.cola_a"));
        let mut w = param("model.layers.0.mlp.up_proj.cola_a", vec![0.5, -1.0, 2.0]);
        let mut n = param("model.norm.weight", vec![1.0, 1.5]);
        let steps: Vec<(Vec<f64>, Vec<f64>, f64)> = vec![
            (vec![0.1, -0.2, 0.3], vec![1.0, -1.0], 1e-2),
            (vec![-0.05, 0.4, 0.0], vec![0.5, 0.25], 2e-2),
            (vec![0.2, 0.2, -0.7], vec![-0.3, 2.0], 5e-3),
        ];
        for (gw, gn, lr) in &steps {
            let grads = grads_of(&[&w, &n], &[gw.clone(), gn.clone()]);
            opt.step(&mut [&mut w, &mut n], &grads, *lr).unwrap();
        }
        let lrs: Vec<f64> = steps.iter().map(|s| s.2).collect();
        let got_w = w.value().to_vec::<f64>().unwrap();
        for (i, &start) in [0.5, -1.0, 2.0].iter().enumerate() {
            let g: Vec<f64> = steps.iter().map(|s| s.0[i]).collect();
            assert!(close(got_w[i], reference_adamw(start, &g, &lrs, 0.01), 1e-14), "w[{i}]");
        }
        let got_n = n.value().to_vec::<f64>().unwrap();
        let wd = if exempt { 0.0 } else { 0.01 };
        for (i, &start) in [1.0, 1.5].iter().enumerate() {
            let g: Vec<f64> = steps.iter().map(|s| s.1[i]).collect();
            assert!(close(got_n[i], reference_adamw(start, &g, &lrs, wd), 1e-14), "norm[{i}]");
        }
        assert_eq!(opt.step_count(), 3);
    }
}

#[test]
fn adamw_state_round_trips_through_named_tensors() {
    let mut a = AdamW::new(AdamWConfig::default());
    let mut w = param("w", vec![0.5, -1.0]);
    let grads = grads_of(&[&w], &[vec![0.3, 0.1]]);
    a.step(&mut [&mut w], &grads, 1e-2).unwrap();
    let saved: BTreeMap<String, Tensor> = a.state_tensors().into_iter().collect();
    assert_eq!(saved.keys().cloned().collect::<Vec<_>>(), vec!["w.exp_avg", "w.exp_avg_sq"]);
    let mut b = AdamW::new(AdamWConfig::default());
    b.load_state(&[&w], &saved, a.step_count()).unwrap();
    let mut w2 = w.clone();
    let grads = grads_of(&[&w], &[vec![-0.2, 0.6]]);
    a.step(&mut [&mut w], &grads, 1e-2).unwrap();
    b.step(&mut [&mut w2], &grads, 1e-2).unwrap();
    assert_eq!(w.value().to_vec::<f64>().unwrap(), w2.value().to_vec::<f64>().unwrap());
    // Missing and mis-shaped state are errors.
    let other = param("other", vec![1.0]);
    assert!(b.load_state(&[&other], &saved, 1).is_err());
    let mut bad = saved.clone();
    bad.insert("w.exp_avg".into(), Tensor::zeros(&[3], DType::F64));
    assert!(b.load_state(&[&w], &bad, 1).is_err());
}

#[test]
fn clipping_scales_to_the_max_norm_and_reports_the_norm() {
    let (a, b) = (param("a", vec![0.0; 2]), param("b", vec![0.0; 1]));
    // Gradients (3, 4) and (12): global norm 13.
    let mut grads = grads_of(&[&a, &b], &[vec![3.0, 4.0], vec![12.0]]);
    let norm = clip_grad_norm(&mut grads, 0.5).unwrap();
    assert!(close(norm, 13.0, 1e-15));
    let scale = 0.5 / (13.0 + 1e-6);
    assert_eq!(grads.get(a.id()).unwrap().to_vec::<f64>().unwrap(), vec![3.0 * scale, 4.0 * scale]);
    let mut clipped = 0.0;
    for (_, g) in grads.iter() {
        clipped += g.squared_norm().unwrap();
    }
    assert!(close(clipped.sqrt(), 0.5, 1e-6));
    // Below the threshold nothing changes.
    let mut small = grads_of(&[&a], &[vec![0.1, 0.2]]);
    let norm = clip_grad_norm(&mut small, 0.5).unwrap();
    assert!(close(norm, 0.05f64.sqrt(), 1e-15));
    assert_eq!(small.get(a.id()).unwrap().to_vec::<f64>().unwrap(), vec![0.1, 0.2]);
}

/// On the CPU `clip_and_step` is `clip_grad_norm` then `step`, to the bit (the same calls in the same
/// order, so no tolerance); a non-finite norm updates nothing and does not count the step.
#[test]
fn clip_and_step_on_the_cpu_is_clip_then_step() {
    for max_norm in [0.5, 1e9] {
        let (mut a, mut b) = (param("a", vec![0.3, -0.2]), param("b", vec![1.5]));
        let (mut a2, mut b2) = (a.clone(), b.clone());
        let (mut fused, mut apart) = (AdamW::new(AdamWConfig::default()), AdamW::new(AdamWConfig::default()));
        for step in 0..3 {
            let c = vec![vec![3.0 + step as f64, -4.0], vec![12.0]];
            let mut g = grads_of(&[&a, &b], &c);
            let norm = fused.clip_and_step(&mut [&mut a, &mut b], &mut g, 1e-2, max_norm).unwrap();
            let mut g2 = grads_of(&[&a2, &b2], &c);
            let want = clip_grad_norm(&mut g2, max_norm).unwrap();
            apart.step(&mut [&mut a2, &mut b2], &g2, 1e-2).unwrap();
            assert_eq!(norm.to_bits(), want.to_bits(), "max_norm {max_norm} step {step}");
            for (x, y) in [(&a, &a2), (&b, &b2)] {
                assert_eq!(x.value().to_vec::<f64>().unwrap(), y.value().to_vec::<f64>().unwrap());
            }
        }
        let before = a.value().to_vec::<f64>().unwrap();
        let mut bad = grads_of(&[&a], &[vec![f64::NAN, 1.0]]);
        let norm = fused.clip_and_step(&mut [&mut a], &mut bad, 1e-2, max_norm).unwrap();
        assert!(norm.is_nan());
        assert_eq!(fused.step_count(), 3, "a refused update is not counted");
        assert_eq!(a.value().to_vec::<f64>().unwrap(), before);
    }
}

/// The multi-tensor step checks its tensors on every device and runs only on a GPU: on the CPU a
/// well-formed group is refused with a device error, a malformed one with what is wrong.
#[test]
fn the_multi_tensor_step_is_refused_on_the_cpu_and_checks_its_tensors() {
    use cola_tensor::ops::optim::{AdamWStep, AdamWTensors, MultiTensorPlan};
    let hyper = AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1 };
    let mut plan = MultiTensorPlan::default();
    let zeros = |n: usize, dtype: DType| Tensor::zeros(&[n], dtype);
    let (mut p, g, mut m, mut v) =
        (zeros(4, DType::F32), zeros(4, DType::F32), zeros(4, DType::F32), zeros(4, DType::F32));
    let mut group =
        [AdamWTensors { param: &mut p, grad: &g, m: &mut m, v: &mut v, master: None, decays: true }];
    let err = Tensor::clip_adamw_multi(&mut plan, &mut group, 1.0, hyper).unwrap_err().to_string();
    assert!(err.contains("GPU"), "{err}");
    let (mut p, g) = (zeros(4, DType::BF16), zeros(4, DType::BF16));
    let mut group =
        [AdamWTensors { param: &mut p, grad: &g, m: &mut m, v: &mut v, master: None, decays: true }];
    let err = Tensor::clip_adamw_multi(&mut plan, &mut group, 1.0, hyper).unwrap_err().to_string();
    assert!(err.contains("master None"), "bf16 with f32 moments needs a master: {err}");
    let short = zeros(3, DType::F32);
    let mut p = zeros(4, DType::F32);
    let mut group =
        [AdamWTensors { param: &mut p, grad: &short, m: &mut m, v: &mut v, master: None, decays: true }];
    assert!(
        Tensor::clip_adamw_multi(&mut plan, &mut group, 1.0, hyper).is_err(),
        "a gradient of another shape"
    );
    assert_eq!(Tensor::clip_adamw_multi(&mut plan, &mut [], 1.0, hyper).unwrap(), 0.0, "an empty group");
}

/// Clipping scales each gradient in place: the result is bit-identical to `mul_scalar` (the formula it
/// replaced), for f32 and f64, for a gradient whose storage another tensor shares (that holder keeps its
/// values: the storage is copied before the write) and for a strided view.
#[test]
fn in_place_scaling_equals_mul_scalar_bit_for_bit_and_spares_other_holders() {
    let scale = 0.371_593_212_345_678_9;
    for dtype in [DType::F32, DType::F64] {
        let values: Vec<f64> = (0..300).map(|i| (i as f64 * 0.37).sin() * 3.0 - 0.5).collect();
        let base = Tensor::from_vec(values, &[20, 15]).unwrap().to_dtype(dtype).unwrap();
        for t in [base.clone(), base.t().unwrap()] {
            let expected = t.mul_scalar(scale).unwrap().to_vec_f64();
            let before = t.to_vec_f64();
            let mut scaled = t.clone();
            scaled.affine_in_place(scale, 0.0).unwrap();
            assert_eq!(scaled.shape(), t.shape());
            assert_eq!(scaled.to_vec_f64(), expected, "{dtype}");
            assert_eq!(t.to_vec_f64(), before, "the other holder of the storage changed ({dtype})");
        }
    }
}

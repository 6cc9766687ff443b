//! Whole-graph gradient properties.
//!
//! - A one-layer CoLA decoder (embedding with pad ids, rmsnorm, CoLA q/k/v/o, rope, causal attention,
//!   residuals, gated CoLA MLP, final norm, dense head, cross-entropy with ignored targets): every
//!   parameter's gradient (read by `ParamId`) checked against central finite differences in f64.
//! - Gradient accumulation in a `GradStore` across tapes, and a parameter recorded twice on one tape.
//! - Replay: `Policy::RecomputeAll` gives bit-identical gradients to `Policy::KeepAll` (f32 and f64).
//! - `no_grad` records nothing.
//!
//! Tolerance: `|analytic - numeric| <= 1e-6 * max(1, |numeric|)` (see `common::TOLERANCE`; the loss is a
//! mean cross-entropy of O(1), so the finite differences are as accurate as for the single ops).
use crate::common;
use cola::autograd::Graph;

use cola::autograd::{GradStore, Parameter, Policy, Tape, Var};
use cola::tensor::{DType, Rng, Tensor};
use common::network::{Batch, Config, TinyCola, PAD_ID};
use common::{bits, compare_with_numeric, elementwise_composite, input, Dist, View};
use proptest::prelude::*;

/// The loss of `model` with its parameter values replaced by `values`, computed without recording.
fn loss_at(model: &TinyCola, values: &[Tensor], batch: &Batch) -> f64 {
    let mut params = model.params.clone();
    for (p, v) in params.iter_mut().zip(values) {
        p.set_value(v.clone());
    }
    let moved = TinyCola { config: model.config, params };
    let mut tape = Tape::new();
    let loss = tape.no_grad(|t| moved.loss(t, batch)).expect("forward");
    tape.value(loss).expect("loss value").to_scalar().expect("scalar loss")
}

fn check_network(config: Config, policy: Policy, seed: u64) {
    let mut rng = Rng::new(seed);
    let model = TinyCola::new(config, DType::F64, &mut rng);
    let batch = Batch::random(&config, &mut rng);

    let mut tape = Tape::with_policy(policy);
    let loss = model.loss(&mut tape, &batch).expect("forward");
    let grads = tape.backward(loss).expect("backward");
    assert_eq!(grads.params().count(), model.params.len(), "one gradient per parameter");
    let analytic: Vec<Tensor> = model
        .params
        .iter()
        .map(|p| grads.param(p.id()).expect("every parameter gets a gradient").clone())
        .collect();

    // The pad row of the embedding (parameter 0) gets no gradient by definition, although the forward reads
    // it (pads sit mid-sequence too), so finite differences there are not zero: assert exact zeros instead.
    let d = config.d_model;
    let pad = PAD_ID as usize;
    let embed_grad = analytic[0].to_vec_f64();
    assert!(embed_grad[pad * d..(pad + 1) * d].iter().all(|&g| g.to_bits() == 0), "pad row: {embed_grad:?}");
    let skip = |param: usize, element: usize| param == 0 && element / d == pad;

    let values: Vec<Tensor> = model.params.iter().map(|p| p.value().clone()).collect();
    let what = format!("tiny CoLA network {config:?} {policy:?}");
    compare_with_numeric(&what, &values, &analytic, &skip, &|v| loss_at(&model, v, &batch));

    // Every parameter actually influences the loss (otherwise its check would be vacuous).
    for (p, g) in model.params.iter().zip(&analytic) {
        let largest = g.to_vec_f64().iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(largest > 1e-4, "{}: largest gradient entry {largest:e}", p.name());
    }
}

/// The 350m-style MLP: `down(gate(x) * up(x))` with CoLA gate, up and down.
#[test]
fn cola_network_gradients_match_finite_differences() {
    check_network(Config::tiny(false), Policy::KeepAll, 1);
}

/// The 60m-style MLP with the gate SiLU kept: `down(silu(gate(x)) * up(x))`.
#[test]
fn cola_network_with_gate_silu_gradients_match_finite_differences() {
    check_network(Config::tiny(true), Policy::KeepAll, 2);
}

/// Recomputing every non-leaf value in backward gives the same (correct) gradients.
#[test]
fn cola_network_gradients_under_recompute_all_match_finite_differences() {
    check_network(Config::tiny(false), Policy::RecomputeAll, 3);
}

/// A parameter recorded twice on one tape (a tied weight) gets the sum of both uses' gradients.
#[test]
fn parameter_recorded_twice_gets_the_summed_gradient() {
    let mut rng = Rng::new(5);
    let config = Config::tiny(false);
    let model = TinyCola::new(config, DType::F64, &mut rng);
    let (b1, b2) = (Batch::random(&config, &mut rng), Batch::random(&config, &mut rng));

    let mut tape = Tape::new();
    let l1 = model.loss(&mut tape, &b1).expect("first forward");
    let l2 = model.loss(&mut tape, &b2).expect("second forward, parameters recorded again");
    let total = tape.add(&l1, &l2).expect("add");
    let grads = tape.backward(total).expect("backward");
    assert_eq!(grads.params().count(), model.params.len(), "one gradient per parameter id");

    let mut reference = Tape::new();
    let vars: Vec<_> = model.params.iter().map(|p| reference.param(p)).collect();
    let r1 = model.loss_with(&mut reference, &vars, &b1).expect("forward");
    let r2 = model.loss_with(&mut reference, &vars, &b2).expect("forward");
    let total = reference.add(&r1, &r2).expect("add");
    let expected = reference.backward(total).expect("backward");
    for p in &model.params {
        let (got, want) =
            (grads.param(p.id()).unwrap().to_vec_f64(), expected.param(p.id()).unwrap().to_vec_f64());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "{}: {g} vs {w}", p.name());
        }
    }
}

proptest! {
    // Each case runs three forward and backward passes of the tiny network (a few ms).
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Two backward passes on two tapes, summed in a `GradStore`, equal the gradient of the summed losses
    /// on one tape (the same sums in another order: within 1e-12 relative in f64).
    #[test]
    fn grad_store_accumulates_two_tapes(seed: u64, gate_silu: bool) {
        let mut rng = Rng::new(seed);
        let config = Config::tiny(gate_silu);
        let model = TinyCola::new(config, DType::F64, &mut rng);
        let (b1, b2) = (Batch::random(&config, &mut rng), Batch::random(&config, &mut rng));

        let mut store = GradStore::new();
        for batch in [&b1, &b2] {
            let mut tape = Tape::new();
            let loss = model.loss(&mut tape, batch).unwrap();
            store.accumulate(&tape.backward(loss).unwrap()).unwrap();
        }
        prop_assert_eq!(store.len(), model.params.len());

        let mut tape = Tape::new();
        let vars: Vec<Var> = model.params.iter().map(|p| tape.param(p)).collect();
        let l1 = model.loss_with(&mut tape, &vars, &b1).unwrap();
        let l2 = model.loss_with(&mut tape, &vars, &b2).unwrap();
        let total = tape.add(&l1, &l2).unwrap();
        let grads = tape.backward(total).unwrap();
        for p in &model.params {
            let acc = store.get(p.id()).unwrap().to_vec_f64();
            let joint = grads.param(p.id()).unwrap().to_vec_f64();
            for (a, j) in acc.iter().zip(&joint) {
                prop_assert!((a - j).abs() <= 1e-12 * j.abs().max(1.0), "{}: {a} vs {j}", p.name());
            }
        }
    }
}

/// Losses and gradients of `model` on `batch` under `policy`.
fn network_gradients(model: &TinyCola, batch: &Batch, policy: Policy) -> (f64, Vec<Tensor>) {
    let mut tape = Tape::with_policy(policy);
    let loss = model.loss(&mut tape, batch).unwrap();
    let value = tape.value(loss).unwrap().to_scalar().unwrap();
    let grads = tape.backward(loss).unwrap();
    (value, model.params.iter().map(|p| grads.param(p.id()).unwrap().clone()).collect())
}

/// Recomputing every non-leaf value in backward replays the very same forward ops, so the gradients are
/// bit-identical to keeping them, in f32 and in f64.
#[test]
fn replay_is_bit_identical_on_the_network() {
    for dtype in [DType::F32, DType::F64] {
        for gate_silu in [false, true] {
            let mut rng = Rng::new(7);
            let config = Config::tiny(gate_silu);
            let model = TinyCola::new(config, dtype, &mut rng);
            let batch = Batch::random(&config, &mut rng);
            let (loss_keep, keep) = network_gradients(&model, &batch, Policy::KeepAll);
            let (loss_replay, replay) = network_gradients(&model, &batch, Policy::RecomputeAll);
            assert_eq!(loss_keep.to_bits(), loss_replay.to_bits(), "{dtype:?}: loss");
            for ((p, k), r) in model.params.iter().zip(&keep).zip(&replay) {
                assert_eq!(k.dtype(), dtype);
                assert_eq!(bits(k), bits(r), "{dtype:?} gate_silu={gate_silu}: gradient of {}", p.name());
            }
        }
    }
}

/// The same for a graph of the elementwise, reduction and view ops (with fan-out and two outputs).
#[test]
fn replay_is_bit_identical_on_elementwise_ops() {
    for dtype in [DType::F32, DType::F64] {
        let mut rng = Rng::new(11);
        let x = input(&[3, 4], View::Transposed, Dist::Normal(1.0), &mut rng).to_dtype(dtype).unwrap();
        let y = input(&[3, 4], View::Contiguous, Dist::AwayFromZero, &mut rng).to_dtype(dtype).unwrap();
        let run = |policy| {
            let mut tape = Tape::with_policy(policy);
            let vars = [tape.leaf(x.clone(), true), tape.leaf(y.clone(), true)];
            let outs = elementwise_composite(&mut tape, &vars).unwrap();
            let a = tape.sum(&outs[0], &[], false).unwrap();
            let b = tape.mean(&outs[1], &[0], false).unwrap();
            let b = tape.sum(&b, &[], false).unwrap();
            let loss = tape.add(&a, &b).unwrap();
            let grads = tape.backward(loss).unwrap();
            vars.map(|v| bits(grads.get(v).unwrap()))
        };
        assert_eq!(run(Policy::KeepAll), run(Policy::RecomputeAll), "{dtype:?}");
    }
}

/// Inside `no_grad` ops compute values but add no nodes and need no gradient; recording resumes after.
#[test]
fn no_grad_records_nothing() {
    let mut rng = Rng::new(3);
    let mut tape = Tape::new();
    let w = Parameter::new("w", input(&[3, 2], View::Contiguous, Dist::Normal(1.0), &mut rng));
    let x = tape.leaf(input(&[4, 3], View::Narrowed, Dist::Normal(1.0), &mut rng), true);
    let w = tape.param(&w);
    let before = tape.nodes().len();
    assert!(tape.is_grad_enabled());
    let (y, z) = tape.no_grad(|t| {
        assert!(!t.is_grad_enabled());
        let y = t.matmul(&x, &w).unwrap();
        let y = t.silu(&y).unwrap();
        let z = t.sum(&y, &[], false).unwrap();
        (y, z)
    });
    assert!(tape.is_grad_enabled());
    assert_eq!(tape.nodes().len(), before, "no_grad recorded nodes");
    assert!(!tape.requires_grad(y).unwrap() && !tape.requires_grad(z).unwrap());
    let direct = tape.value(x).unwrap().matmul(tape.value(w).unwrap()).unwrap().silu().unwrap();
    assert_eq!(bits(tape.value(y).unwrap()), bits(&direct), "no_grad computes the same values");
    assert!(tape.backward(z).is_err(), "a no_grad value has no gradient path");

    // Recording resumes: the same ops outside no_grad add nodes and require a gradient.
    let y = tape.matmul(&x, &w).unwrap();
    assert!(tape.requires_grad(y).unwrap());
    assert_eq!(tape.nodes().len(), before + 1);
}

/// Replay reads leaves that no backward rule reads (`x` below only feeds an affine, which needs nothing):
/// backward must keep them until the last replay that needs them.
#[test]
fn replay_reads_leaves_no_rule_needs() {
    let x = input(&[2, 3], View::Narrowed, Dist::Normal(1.0), &mut Rng::new(5));
    let run = |policy| {
        let mut tape = Tape::with_policy(policy);
        let v = tape.leaf(x.clone(), true);
        let shifted = tape.add_scalar(&v, 0.5).unwrap();
        let e = tape.exp(&shifted).unwrap();
        let loss = tape.sum(&e, &[], false).unwrap();
        bits(tape.backward(loss).unwrap().get(v).unwrap())
    };
    assert_eq!(run(Policy::KeepAll), run(Policy::RecomputeAll));
}

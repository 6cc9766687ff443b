//! The step profiler: rows accumulate calls, time and FLOPs per (direction, family); a profiled tape
//! reports each op once per direction it ran in, with the FLOPs of the formulas in `profile.rs`; replays
//! appear as recompute rows only under a policy that releases values; profiling changes no number.
//!
//! Counts and FLOPs are exact integers, so they are compared with `==`. Times are only checked for being
//! summed (a sum of nanoseconds is exact) and for not exceeding the wall time around the whole pass.
use cola_autograd::op::Attention;
use cola_autograd::profile::{flops, Direction, Profiler};
use cola_autograd::Graph;
use cola_autograd::{AutogradError, Op, Parameter, Policy, Tape};
use cola_tensor::{DType, Device, Rng, Tensor, TensorError};
use std::time::Instant;

#[test]
fn rows_accumulate_per_direction_and_family() {
    let mut p = Profiler::new(Device::Cpu);
    p.add(Direction::Forward, "matmul", 10, 100);
    p.add(Direction::Forward, "matmul", 5, 50);
    p.add(Direction::Backward, "matmul", 7, 200);
    let fwd = p.get(Direction::Forward, "matmul").unwrap();
    assert_eq!((fwd.calls, fwd.nanos, fwd.flops), (2, 15, 150));
    let bwd = p.get(Direction::Backward, "matmul").unwrap();
    assert_eq!((bwd.calls, bwd.nanos, bwd.flops), (1, 7, 200));
    assert_eq!(p.get(Direction::Recompute, "matmul"), None);
    assert_eq!(p.total_nanos(), 22);
    assert_eq!(p.entries().count(), 2);

    // A timed call that fails is passed through and not counted; one that succeeds is.
    let failed: Result<(), TensorError> = p.time(Direction::Optimizer, "adamw", 9, || {
        Err(TensorError::InvalidArgument { op: "test", reason: "fails".into() })
    });
    assert!(failed.is_err());
    assert_eq!(p.get(Direction::Optimizer, "adamw"), None);
    let value = p.time(Direction::Optimizer, "adamw", 9, || Ok::<_, TensorError>(3)).unwrap();
    assert_eq!(value, 3);
    let adamw = p.get(Direction::Optimizer, "adamw").unwrap();
    assert_eq!((adamw.calls, adamw.flops), (1, 9));

    p.clear();
    assert_eq!(p.entries().count(), 0);
}

/// `sum(silu(x @ w))` with x `[2, 3, 4]` and a parameter w `[4, 5]`; returns the gradient of w and the
/// profiler when one was given.
fn profiled_pass(policy: Policy, profiler: Option<Profiler>) -> (Vec<f64>, Option<Profiler>) {
    let mut rng = Rng::new(3);
    let x = Tensor::randn(&[2, 3, 4], 0.0, 1.0, DType::F64, &mut rng);
    let w = Parameter::new("w", Tensor::randn(&[4, 5], 0.0, 1.0, DType::F64, &mut rng));
    let mut tape = Tape::with_policy(policy);
    if let Some(p) = profiler {
        tape.set_profiler(p);
    }
    let (x, wv) = (tape.constant(x), tape.param(&w));
    let y = tape.matmul(&x, &wv).unwrap();
    let s = tape.silu(&y).unwrap();
    let loss = tape.sum(&s, &[], false).unwrap();
    let grads = tape.backward(loss).unwrap();
    (grads.param(w.id()).unwrap().to_vec_f64(), tape.take_profiler())
}

#[test]
fn a_profiled_tape_counts_each_op_where_it_runs() {
    let started = Instant::now();
    let (grad, profiler) = profiled_pass(Policy::KeepAll, Some(Profiler::new(Device::Cpu)));
    let wall = started.elapsed().as_nanos() as u64;
    let p = profiler.unwrap();
    let row = |d, f: &str| p.get(d, f).map(|e| (e.calls, e.flops));
    // matmul of 2 x (3 x 4) @ (4 x 5): 2 * 2*3*4*5 forward, twice that backward.
    assert_eq!(row(Direction::Forward, "matmul"), Some((1, 240)));
    assert_eq!(row(Direction::Backward, "matmul"), Some((1, 480)));
    // silu on 30 elements: 4 forward, 9 backward each; the sum adds 30 forward, 0 backward.
    assert_eq!(row(Direction::Forward, "silu"), Some((1, 120)));
    assert_eq!(row(Direction::Backward, "silu"), Some((1, 270)));
    assert_eq!(row(Direction::Forward, "reduce"), Some((1, 30)));
    assert_eq!(row(Direction::Backward, "reduce"), Some((1, 0)));
    assert!(p.entries().all(|(d, _, _)| d != Direction::Recompute), "nothing is released under none");
    assert!(p.total_nanos() <= wall, "timed ops {} ns within the pass's {wall} ns", p.total_nanos());

    // Under recompute-all the matmul output that silu's backward reads is released and replayed once.
    let (recomputed_grad, profiler) = profiled_pass(Policy::RecomputeAll, Some(Profiler::new(Device::Cpu)));
    let p = profiler.unwrap();
    let replay = p.get(Direction::Recompute, "matmul").unwrap();
    assert_eq!((replay.calls, replay.flops), (1, 240));
    assert_eq!(p.get(Direction::Forward, "matmul").unwrap().calls, 1);

    // Profiling and replay change no number.
    let (plain, none) = profiled_pass(Policy::KeepAll, None);
    assert!(none.is_none());
    assert_eq!(grad, plain);
    assert_eq!(recomputed_grad, plain);
}

#[test]
fn attention_counts_the_visible_pairs_and_matmul_broadcasts_batches() {
    // q, k, v [b=1, t=4, h=2, d=3]: 4*5/2 = 10 visible pairs per head.
    let q: &[usize] = &[1, 4, 2, 3];
    let attention = Op::Attention(Attention { scale: 1.0 });
    assert_eq!(flops(&attention, Direction::Forward, &[q, q, q]), 4 * 2 * 3 * 10);
    assert_eq!(flops(&attention, Direction::Backward, &[q, q, q]), 10 * 2 * 3 * 10);
    assert_eq!(flops(&attention, Direction::Recompute, &[q, q, q]), 4 * 2 * 3 * 10);
    // Decoding 1 query against 4 cached keys sees all 4.
    assert_eq!(flops(&attention, Direction::Forward, &[&[1, 1, 2, 3], q, q]), 4 * 2 * 3 * 4);
    // [2, 1, 3, 4] @ [5, 4, 6]: batch dims broadcast to 2 x 5.
    assert_eq!(flops(&Op::Matmul, Direction::Forward, &[&[2, 1, 3, 4], &[5, 4, 6]]), 2 * 10 * 3 * 4 * 6);
    assert_eq!(flops(&Op::Matmul, Direction::Optimizer, &[&[3, 4], &[4, 6]]), 0);
}

#[test]
fn a_profiler_error_is_an_autograd_error() {
    // The tape's timed calls return the tape's error type; a failing op inside one is passed through.
    let mut tape = Tape::new();
    tape.set_profiler(Profiler::new(Device::Cpu));
    let a = tape.leaf(Tensor::zeros(&[2, 3], DType::F32), true);
    let b = tape.leaf(Tensor::zeros(&[4, 5], DType::F32), true);
    assert!(matches!(tape.matmul(&a, &b), Err(AutogradError::Tensor(_))));
    let p = tape.take_profiler().unwrap();
    assert_eq!(p.get(Direction::Forward, "matmul"), None, "a failed op is not counted");
}

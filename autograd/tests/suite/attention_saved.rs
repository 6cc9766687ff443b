//! Attention's backward reads its output (and, on the GPU flash path, the log-sum-exp its forward saved
//! next to it). On the CPU nothing is saved, so these checks prove the plumbing leaves the CPU's numbers
//! alone and accounts memory exactly:
//! - `Op::forward_saving` gives the bits of `Tensor::attention` and no saved tensor;
//! - with `loss = sum(attention(q, k, v))` (sum's backward reads nothing), the tape keeps exactly the
//!   attention output for backward under `KeepAll` and nothing under `RecomputeAll`, which replays it;
//! - both policies give the gradients of a direct `Tensor::attention_backward` call, bit for bit.
//!
//! Every comparison is exact (`to_bits` or `==` on byte counts): the same kernels run on the same values
//! in the same order, so there is no tolerance.
use cola_autograd::op::{Attention, Sum};
use cola_autograd::{Op, Policy, Tape};
use cola_tensor::{DType, Rng, Tensor};

const SCALE: f64 = 0.35;

/// q `[2, 5, 3, 8]`, k and v `[2, 7, 3, 8]`: queries attend a longer prefix (q_len < kv_len).
fn inputs() -> [Tensor; 3] {
    let mut rng = Rng::new(5);
    [5, 7, 7].map(|len| Tensor::randn(&[2, len, 3, 8], 0.0, 1.0, DType::F32, &mut rng))
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_vec_f64().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn cpu_forward_saves_nothing_and_gives_the_bits_of_attention() {
    let [q, k, v] = inputs();
    let op = Op::Attention(Attention { scale: SCALE });
    let (out, saved) = op.forward_saving(&[&q, &k, &v]).unwrap();
    assert!(saved.is_none(), "the CPU kernel saves no log-sum-exp");
    assert_eq!(bits(&out), bits(&Tensor::attention(&q, &k, &v, SCALE).unwrap()));
    assert_eq!(bits(&out), bits(&op.forward(&[&q, &k, &v]).unwrap()));
    assert!(op.needs().output, "attention's backward reads its output");
}

/// Gradients of `sum(attention(q, k, v))` under `policy` and the bytes held when backward starts.
fn run(policy: Policy) -> (Vec<Vec<u64>>, usize, usize) {
    let [q, k, v] = inputs();
    let mut tape = Tape::with_policy(policy);
    let vars = [&q, &k, &v].map(|t| tape.leaf(t.clone(), true));
    let out = tape.record(Op::Attention(Attention { scale: SCALE }), &vars).unwrap();
    let out_bytes = tape.value(out).unwrap().size_in_bytes();
    let loss = tape.record(Op::Sum(Sum { axes: vec![], keepdim: false }), &[out]).unwrap();
    let grads = tape.backward(loss).unwrap();
    let grads = vars.iter().map(|&var| bits(grads.get(var).unwrap())).collect();
    (grads, tape.memory_stats().saved_bytes, out_bytes)
}

#[test]
fn the_output_is_kept_or_replayed_for_backward_and_gradients_do_not_change() {
    let (kept, kept_bytes, out_bytes) = run(Policy::KeepAll);
    let (replayed, replayed_bytes, _) = run(Policy::RecomputeAll);
    assert_eq!(kept_bytes, out_bytes, "KeepAll keeps exactly the attention output for backward");
    assert_eq!(replayed_bytes, 0, "RecomputeAll keeps nothing recorded");
    assert_eq!(kept, replayed, "replaying the output changes no gradient bit");

    let [q, k, v] = inputs();
    let ones = Tensor::full(q.shape(), 1.0, DType::F32);
    let direct = Tensor::attention_backward(&q, &k, &v, &ones, SCALE).unwrap();
    let direct: Vec<Vec<u64>> = direct.iter().map(bits).collect();
    assert_eq!(kept, direct, "the tape's gradients are those of the CPU rule");
}

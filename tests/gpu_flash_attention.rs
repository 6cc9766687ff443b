//! The flash attention kernels (GPU attention for head dims 64 and 128) against the CPU attention on the
//! same inputs: the output, the saved per-row log-sum-exp, the gradients; determinism; replay on the tape.
//!
//! Sizes: odd sequence lengths (1, 17, 200), queries against a longer prefix (q_len < kv_len), batch 2
//! with several heads, head dims 64 and 128; inputs contiguous, as head-major permuted views (read in
//! place), and as views at an odd element offset (copied before the bf16 kernels stage their rows).
//! Error measure: `max_i |gpu_i - cpu_i| / max(1, max_i |cpu_i|)`. Bounds:
//! - f32, everything: 1e-5. Both sides compute in f32 from the same values; the GPU adds in another
//!   order, which moves sums of at most a few hundred terms by a few ulps (6e-8) of their largest terms.
//! - bf16 output: 1e-2. One bf16 ulp is 3.9e-3 to 7.8e-3 of a value; both sides round the result once,
//!   the GPU also rounds the probabilities to bf16 before their product with V (a tensor-core operand).
//! - bf16 gradients: 2e-2. Besides P and dS rounded to bf16 before their products, D = rowsum(dO * O)
//!   reads the bf16-rounded output (as FlashAttention-2 does), and dQ = scale sum_j dS_ij k_j adds terms
//!   whose dS sum to zero over j: the result is small against its terms, so their rounding errors reach
//!   about 1e-2 of the largest gradient at these sizes.
//! - log-sum-exp (f32 in both dtypes): 1e-5. The scores are products of the same values summed in f32.
//!
//! Determinism and replay are compared bit for bit.
//!
//! Without a CUDA device every test prints `skipped: no CUDA device` and returns.
#![cfg(feature = "cuda")]
use cola::autograd::op::{Attention, Sum};
use cola::autograd::{Op, Policy, Tape};
use cola::tensor::{AttentionSaved, BinaryOp, DType, Device, Rng, Tensor};

mod common;
use common::gpu::{have_gpu, GPU};

/// (batch, q_len, kv_len, heads, head_dim).
type Size = (usize, usize, usize, usize, usize);

const SIZES: [Size; 8] = [
    (1, 1, 1, 1, 64),
    (2, 17, 17, 3, 64),
    (2, 200, 200, 2, 64),
    (2, 17, 200, 4, 64),
    (1, 1, 1, 1, 128),
    (2, 17, 17, 3, 128),
    (2, 200, 200, 2, 128),
    (1, 1, 200, 2, 128),
];

/// How the inputs are laid out in memory.
#[derive(Clone, Copy, Debug)]
enum Layout {
    Contiguous,
    /// A `[b, h, len, hd]` tensor permuted to `[b, len, h, hd]`.
    HeadMajor,
    /// A contiguous view starting one element into its buffer.
    Shifted,
}

fn randn(shape: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F32, rng).to_dtype(dtype).expect("cast")
}

/// A CPU tensor `[b, len, h, hd]` and its GPU copy, both in `layout`.
fn input(shape: [usize; 4], dtype: DType, layout: Layout, rng: &mut Rng) -> (Tensor, Tensor) {
    let [b, len, h, hd] = shape;
    match layout {
        Layout::Contiguous => {
            let t = randn(&shape, dtype, rng);
            let g = t.to_device(GPU).expect("upload");
            (t, g)
        }
        Layout::HeadMajor => {
            let base = randn(&[b, h, len, hd], dtype, rng);
            let view = |t: &Tensor| t.permute(&[0, 2, 1, 3]).expect("permute");
            (view(&base), view(&base.to_device(GPU).expect("upload")))
        }
        Layout::Shifted => {
            let n = b * len * h * hd;
            let flat = randn(&[n + 1], dtype, rng);
            let view = |t: &Tensor| t.narrow(0, 1, n).and_then(|t| t.reshape(&shape)).expect("shifted view");
            (view(&flat), view(&flat.to_device(GPU).expect("upload")))
        }
    }
}

fn error(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.device(), GPU, "result is not on the GPU");
    assert_eq!(got.shape(), want.shape());
    let g = got.to_device(Device::Cpu).expect("download").to_vec_f64();
    let w = want.to_vec_f64();
    let scale = w.iter().fold(1f64, |m, &x| m.max(x.abs()));
    g.iter().zip(&w).map(|(a, b)| (a - b).abs() / scale).fold(0.0, |m, e| {
        if e.is_nan() {
            f64::INFINITY
        } else {
            m.max(e)
        }
    })
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, bound: f64) {
    let err = error(got, want);
    assert!(err <= bound, "{what}: max error {err:.3e} > {bound:e}");
    eprintln!("{what}: max error {err:.3e}");
}

/// The CPU reference log-sum-exp `[b, h, q_len]` of `scale q k^T` over the visible keys, in f64.
fn log_sum_exp(q: &Tensor, k: &Tensor, scale: f64) -> Tensor {
    let ([b, sq, h, hd], skv) = ([q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]], k.shape()[1]);
    let (qd, kd) = (q.contiguous().unwrap().to_vec_f64(), k.contiguous().unwrap().to_vec_f64());
    let mut out = Vec::with_capacity(b * h * sq);
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..sq {
                let qi = &qd[((bi * sq + i) * h + hi) * hd..][..hd];
                let scores: Vec<f64> = (0..=i + skv - sq)
                    .map(|j| {
                        scale
                            * qi.iter()
                                .zip(&kd[((bi * skv + j) * h + hi) * hd..])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                    })
                    .collect();
                let m = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
                out.push(m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln());
            }
        }
    }
    Tensor::from_vec(out, &[b, h, sq]).unwrap().to_dtype(DType::F32).unwrap()
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_device(Device::Cpu).expect("download").to_vec_f64().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn flash_attention_matches_cpu_forward_backward_and_log_sum_exp() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(17);
    for dtype in [DType::F32, DType::BF16] {
        let (out_bound, grad_bound) = if dtype == DType::BF16 { (1e-2, 2e-2) } else { (1e-5, 1e-5) };
        for (n, &(b, sq, skv, h, hd)) in SIZES.iter().enumerate() {
            let layout = [Layout::Contiguous, Layout::HeadMajor, Layout::Shifted][n % 3];
            let [(q, qg), (k, kg), (v, vg), (g, gg)] =
                [sq, skv, skv, sq].map(|len| input([b, len, h, hd], dtype, layout, &mut rng));
            let scale = 1.0 / (hd as f64).sqrt();
            let what = format!("{dtype:?} (b, sq, skv, h, hd) = {:?} {layout:?}", (b, sq, skv, h, hd));

            let (out, lse) = Tensor::attention_saving_lse(&qg, &kg, &vg, scale).unwrap();
            let lse = lse.expect("the flash path saves the log-sum-exp");
            assert_close(
                &format!("output {what}"),
                &out,
                &Tensor::attention(&q, &k, &v, scale).unwrap(),
                out_bound,
            );
            assert_close(&format!("lse {what}"), &lse, &log_sum_exp(&q, &k, scale), 1e-5);

            let saved = AttentionSaved { output: &out, lse: &lse };
            let got = Tensor::attention_backward_saved(&qg, &kg, &vg, &gg, Some(saved), scale).unwrap();
            let want = Tensor::attention_backward(&q, &k, &v, &g, scale).unwrap();
            for (name, (a, w)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                assert_close(&format!("{name} {what}"), a, w, grad_bound);
            }
            // Without the saved pair the forward runs again: the same kernels on the same values.
            let recomputed = Tensor::attention_backward(&qg, &kg, &vg, &gg, scale).unwrap();
            for (a, r) in got.iter().zip(&recomputed) {
                assert_eq!(bits(a), bits(r), "{what}: backward from recomputed lse differs");
            }
        }
    }
}

#[test]
fn flash_attention_is_deterministic() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(18);
    for (dtype, hd) in [(DType::BF16, 64), (DType::BF16, 128), (DType::F32, 64)] {
        let [(_, q), (_, k), (_, v), (_, g)] =
            [200, 200, 200, 200].map(|len| input([2, len, 3, hd], dtype, Layout::Contiguous, &mut rng));
        let run = || {
            let (out, lse) = Tensor::attention_saving_lse(&q, &k, &v, 0.125).unwrap();
            let grads = Tensor::attention_backward(&q, &k, &v, &g, 0.125).unwrap();
            [vec![out, lse.unwrap()], grads].concat().iter().map(bits).collect::<Vec<_>>()
        };
        assert_eq!(run(), run(), "{dtype:?} head_dim {hd}: two runs differ");
    }
}

/// Gradients of `sum(attention(q, k, v) * w)` on a tape with `policy`, bit for bit.
fn tape_gradients(policy: Policy, inputs: &[Tensor; 4]) -> Vec<Vec<u64>> {
    let mut tape = Tape::with_policy(policy);
    let qkv = [0, 1, 2].map(|i| tape.leaf(inputs[i].clone(), true));
    let w = tape.constant(inputs[3].clone());
    let out = tape.record(Op::Attention(Attention { scale: 0.125 }), &qkv).unwrap();
    let weighted = tape.record(Op::Binary(BinaryOp::Mul), &[out, w]).unwrap();
    let loss = tape.record(Op::Sum(Sum { axes: vec![], keepdim: false }), &[weighted]).unwrap();
    let grads = tape.backward(loss).unwrap();
    qkv.iter().map(|&var| bits(grads.get(var).expect("a gradient"))).collect()
}

#[test]
fn replay_under_recompute_all_equals_the_kept_run_bit_for_bit() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(19);
    for (dtype, hd) in [(DType::BF16, 64), (DType::BF16, 128), (DType::F32, 128)] {
        let inputs =
            [17, 40, 40, 17].map(|len| input([2, len, 2, hd], dtype, Layout::Contiguous, &mut rng).1);
        let kept = tape_gradients(Policy::KeepAll, &inputs);
        assert_eq!(kept, tape_gradients(Policy::RecomputeAll, &inputs), "{dtype:?} head_dim {hd}");
    }
}

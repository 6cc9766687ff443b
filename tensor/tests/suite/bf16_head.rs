//! The LM head fused with its loss on bf16 operands against the same head in f32 on the same (bf16-exact)
//! values. On the CPU the bf16 head keeps its logits and both gradient sums in f32 (the bf16 GEMM's f32
//! accumulator, never rounded) and rounds only the logits' gradient `G`, an operand of the two gradient
//! products, to bf16. So:
//! - the loss differs from f32's only by the order of the f32 sums forming the logits: relative 1e-5;
//! - each gradient element `sum_k g_k w_k` differs by at most `2^-9 sum_k |g_k w_k|` from rounding each
//!   `g_k` (relative `2^-9`, round to nearest bf16), plus both sides' f32 accumulation error, at most
//!   `K 2^-24 sum_k |g_k w_k|` each (K = 2500 here: 1.5e-4, against 2^-9 = 2.0e-3): the test allows
//!   `2^-8 sum_k |g_k w_k|`, which also covers the logits' f32 differences seen through the softmax.
//!
//! Blocks of 16 rows with an ignored target, so the weight gradient is summed over three blocks in f32.
use cola_tensor::{DType, Rng, Tensor};

#[test]
fn bf16_head_matches_f32_within_the_gradient_rounding() {
    let mut rng = Rng::new(29);
    let (rows, d, vocab) = (40, 48, 2500);
    let hidden = Tensor::randn(&[rows, d], 0.0, 1.0, DType::BF16, &mut rng);
    let weight = Tensor::randn(&[d, vocab], 0.0, 0.3, DType::BF16, &mut rng);
    let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 613) % vocab as u32).collect();
    let ignore = Some(targets[3]);
    let run = |h: &Tensor, w: &Tensor| {
        h.head_cross_entropy_with_grads_chunked(w, &targets, ignore, true, true, 16).unwrap()
    };
    let low = run(&hidden, &weight);
    let (h32, w32) = (hidden.to_dtype(DType::F32).unwrap(), weight.to_dtype(DType::F32).unwrap());
    let high = run(&h32, &w32);

    let (loss_low, loss_high) = (low.loss.to_scalar().unwrap(), high.loss.to_scalar().unwrap());
    assert!(loss_high > 1.0 && (loss_low - loss_high).abs() <= 1e-5 * loss_high, "{loss_low} vs {loss_high}");

    // The f32 logits' gradient G, for the bounds: |G| @ |W|^T and |H|^T @ |G|.
    let logits = h32.matmul(&w32).unwrap();
    let g = Tensor::cross_entropy_backward(&logits, &targets, ignore, 1.0).unwrap().to_vec_f64();
    let (h, w) = (h32.to_vec_f64(), w32.to_vec_f64());
    let mut bound_h = vec![0.0f64; rows * d];
    let mut bound_w = vec![0.0f64; d * vocab];
    for r in 0..rows {
        for j in 0..d {
            for v in 0..vocab {
                let gw = (g[r * vocab + v] * w[j * vocab + v]).abs();
                bound_h[r * d + j] += gw;
                bound_w[j * vocab + v] += (h[r * d + j] * g[r * vocab + v]).abs();
            }
        }
    }
    let check = |what: &str, got: &Tensor, want: &Tensor, bound: &[f64]| {
        assert_eq!(got.dtype(), DType::F32, "{what}: the bf16 head's gradients are f32");
        let (got, want) = (got.to_vec_f64(), want.to_vec_f64());
        let mut worst = 0.0f64;
        for (i, ((x, y), b)) in got.iter().zip(&want).zip(bound).enumerate() {
            let allowed = b / 256.0;
            assert!((x - y).abs() <= allowed, "{what}[{i}]: {x} vs {y}, allowed {allowed}");
            worst = worst.max((x - y).abs() / allowed.max(f64::MIN_POSITIVE));
        }
        // The bf16 side is not the f32 side in disguise: some element shows the rounding of G.
        assert!(worst > 0.0, "{what}: no difference at all");
    };
    check("grad hidden", low.grad_hidden.as_ref().unwrap(), high.grad_hidden.as_ref().unwrap(), &bound_h);
    check("grad weight", low.grad_weight.as_ref().unwrap(), high.grad_weight.as_ref().unwrap(), &bound_w);
}

//! Cached decoding with bf16 weights on the CPU (what `generate --precision bf16` runs) against the same
//! model in f32: every decode op takes bf16 (embedding gather, norms, CoLA projections on the bf16 few-row
//! path, RoPE, attention against its f32 cache, the head), and greedy decoding agrees with f32's.
//!
//! Two rows of different prompt lengths decode 24 steps, the bf16 session fed f32's greedy tokens (so a
//! single near-tie cannot make the two sequences part). At every step:
//! - the bf16 logits are within `tol` of the f32 ones, with `tol = 2 sqrt(n) 2^-9 scale`: `scale` is
//!   the largest f32 logit magnitude, and each of the `n` bf16 roundings on the path from the embedding
//!   to a logit (per layer: the two norms' outputs, four attention and three MLP projections with their
//!   rank-r codes, the attention output, the gate product, the two residual sums; then the final norm
//!   and the head: 16 per layer + 3) perturbs its value by at most 2^-9 relative, in a direction
//!   unrelated to the others', a perturbation the layers carry to the logits without amplification at
//!   this init (unit-RMS norms, weights of std below 1/sqrt(fan-in)). Independent errors of at most 2^-9
//!   add up like a random walk, to about `sqrt(n) 2^-9 / sqrt(3)` of the scale (the worst case `n 2^-9`
//!   would be a bound no bf16 bug could exceed); twice `sqrt(n) 2^-9` is 3.5 of those standard
//!   deviations, and the run is deterministic (seeded weights and prompts), so it cannot be flaky. The
//!   measured error is printed (1.2e-2 of the scale against a tolerance of 2.3e-2 at cola-tiny's 2
//!   layers);
//! - bf16's own greedy choice is f32's wherever f32's top-two margin exceeds `2 tol` (a margin that no
//!   error within `tol` can flip), and such steps are most of them (checked, so the check has teeth).
//!
//! About a second in release.
use cola_nn::{argmax, Llama, LlamaConfig, Session};
use cola_tensor::{DType, Device, Rng};

fn model(dtype: DType) -> Llama {
    let mut config = LlamaConfig::preset("cola-tiny").unwrap();
    config.max_seq_len = 64; // room for the prompts and 24 new tokens
    let mut model = Llama::new(config, &mut Rng::new(5)).unwrap();
    if dtype != DType::F32 {
        model.to_device(Device::Cpu, dtype).unwrap();
    }
    model
}

fn rows_of(logits: &cola_tensor::Tensor, vocab: usize) -> Vec<Vec<f32>> {
    let values: Vec<f32> = logits.to_vec_f64().into_iter().map(|x| x as f32).collect();
    values.chunks(vocab).map(<[f32]>::to_vec).collect()
}

/// The gap between the largest and the second largest value.
fn margin(row: &[f32]) -> f32 {
    let best = argmax(row) as usize;
    let second = row.iter().enumerate().filter(|&(i, _)| i != best).map(|(_, &x)| x).fold(f32::MIN, f32::max);
    row[best] - second
}

#[test]
fn bf16_greedy_decode_agrees_with_f32() {
    let (f32_model, bf16_model) = (model(DType::F32), model(DType::BF16));
    assert_eq!(bf16_model.dtype(), DType::BF16);
    let config = f32_model.config().clone();
    let vocab = config.vocab_size;
    let roundings = 16 * config.n_layers + 3;
    let prompts: [&[u32]; 2] = [&[5, 17, 3], &[9, 40, 2, 57, 31]];
    let (mut exact, mut low) = (Session::new(&f32_model), Session::new(&bf16_model));
    let (mut want, mut got) = (exact.prefill(&prompts).unwrap(), low.prefill(&prompts).unwrap());
    assert_eq!(got.dtype(), DType::BF16);
    let (mut worst, mut decisive, mut steps) = (0.0f32, 0, 0);
    for step in 0..24 {
        let (want_rows, got_rows) = (rows_of(&want, vocab), rows_of(&got, vocab));
        let mut next = Vec::new();
        for (row, (w, g)) in want_rows.iter().zip(&got_rows).enumerate() {
            let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let tol = 2.0 * (roundings as f32).sqrt() * 2f32.powi(-9) * scale;
            let error = w.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(error <= tol, "step {step} row {row}: logits differ by {error} > {tol}");
            worst = worst.max(error / scale);
            if margin(w) > 2.0 * tol {
                assert_eq!(argmax(g), argmax(w), "step {step} row {row}: greedy choice differs");
                decisive += 1;
            }
            steps += 1;
            next.push(argmax(w));
        }
        want = exact.decode(&next).unwrap();
        got = low.decode(&next).unwrap();
    }
    println!("largest bf16 logit error {worst:.2e} of the logit scale; {decisive} of {steps} steps decisive");
    assert!(decisive * 2 > steps, "only {decisive} of {steps} steps had a margin above 2 tol");
}

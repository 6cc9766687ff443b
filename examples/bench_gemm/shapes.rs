//! The 350m sizes (docs/METHOD.md section 4) the fused-kernel benchmarks run at, and their input data;
//! shared by `examples/bench_gemm/fused.rs` and the criterion bench `benches/fused.rs`.
use rayon::prelude::*;

/// Tokens of a 350m micro-batch: 16 sequences of `SEQ`.
pub const TOKENS: usize = 4096;
/// The 350m row of the preset table.
const SIZE: &cola::nn::SizeSpec = cola::nn::Size::M350.spec();
pub const SEQ: usize = SIZE.max_seq_len;
pub const D_MODEL: usize = SIZE.d_model;
pub const FFN: usize = SIZE.ffn_dim;
pub const HEADS: usize = SIZE.n_heads;
pub const HEAD_DIM: usize = D_MODEL / HEADS;
pub const VOCAB: usize = SIZE.vocab_size;
/// Cross-entropy rows: a micro-batch of 2 sequences (65 MB of logits, already far beyond the caches).
pub const CE_TOKENS: usize = 512;

/// Pseudo-random values in `[-scale, scale)`, filled in parallel.
pub fn filled(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    out.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        for (i, v) in chunk.iter_mut().enumerate() {
            let mut z = (seed << 40) ^ ((c << 16) + i) as u64;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            *v = ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale;
        }
    });
    out
}

//! Bandwidth of the fused memory-bound kernels against a plain copy of the same bytes.
//!
//! Every case runs in f32 at the 350m sizes of docs/METHOD.md section 4 (T = 4096 tokens = batch 16 x seq
//! 256, d = 1024, f = 2736, 16 heads of 64) on a rayon pool of 2 threads. `bytes` counts the minimal traffic: every input
//! read once and every output written once (small per-row vectors such as the norm weight are left out).
//! The reference is `copy_from_slice` of `bytes / 2` bytes (so the same number of bytes read plus written),
//! split over the same pool. Kernel and copy are timed alternately, each call after reading a buffer twice
//! the size of the last-level cache, so both start from memory and see the same machine conditions;
//! times are medians.
//!
//! Prints `fused <name> bytes=<n> ms=<t> gbps=<x> copy_gbps=<y> ratio=<x/y>` per memory-bound kernel and
//! `fused <name> flops=<n> ms=<t> gflops=<x>` for attention, which is compute-bound. Attention FLOPs count
//! the multiply-adds of the causal half of each product (2 per multiply-add): `n(n+1)/2 * head_dim` per
//! product and (batch, head), two products forward, five backward (scores recomputed, dP, dQ, dK, dV).
use cola::kernels::cpu::adamw::{adamw_step, AdamWStep};
use cola::kernels::cpu::attention::{attention_backward, attention_forward, AttentionDims, AttentionGrads};
use cola::kernels::cpu::elementwise::{silu_backward, silu_forward};
use cola::kernels::cpu::embedding::{embedding_backward, embedding_forward};
use cola::kernels::cpu::gated::{gated_backward, gated_forward, GateActivation};
use cola::kernels::cpu::loss::{cross_entropy_backward, cross_entropy_forward};
use cola::kernels::cpu::norm::{rms_norm_backward, rms_norm_forward};
use cola::kernels::cpu::rope::{rope_backward, rope_forward, RopeDims};
use cola::kernels::cpu::simd;
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

use super::shapes::{filled, CE_TOKENS, D_MODEL, FFN, HEADS, HEAD_DIM, SEQ, TOKENS, VOCAB};

const THREADS: usize = 2;
/// About the size of the 350m CoLA model's largest parameter group.
const ADAMW_PARAMS: usize = 10 << 20;
const F32: usize = std::mem::size_of::<f32>();
/// Twice the 32 MiB last-level cache of the benchmark machines.
const FLUSH_BYTES: usize = 64 << 20;

/// Reads a buffer twice the size of the last-level cache (one value per 64-byte line), so the next call
/// starts from memory and the previous call's dirty lines are written back outside the timing.
fn flush(buffer: &[f32]) {
    let sum: f32 = buffer.par_chunks(1 << 16).map(|c| c.iter().step_by(16).sum::<f32>()).sum();
    black_box(sum);
}

/// Median seconds of `f` after one warm-up call: at least 5 runs, more while under a second.
fn seconds(mut f: impl FnMut()) -> f64 {
    f();
    let (mut times, budget) = (Vec::new(), Instant::now());
    while times.len() < 5 || (budget.elapsed().as_secs_f64() < 1.0 && times.len() < 40) {
        let start = Instant::now();
        f();
        times.push(start.elapsed().as_secs_f64());
    }
    crate::median(times)
}

/// Copy buffers and a cache-flushing buffer shared by all cases.
struct Bench {
    src: Vec<f32>,
    dst: Vec<f32>,
    flush: Vec<f32>,
}

impl Bench {
    fn new() -> Self {
        Self { src: Vec::new(), dst: Vec::new(), flush: filled(FLUSH_BYTES / F32, 98, 1.0) }
    }

    /// Median seconds of `kernel` and of a parallel `copy_from_slice` moving `bytes` (read plus
    /// written), timed alternately from a flushed cache after one warm-up call each.
    fn time(&mut self, bytes: usize, mut kernel: impl FnMut()) -> (f64, f64) {
        let n = bytes / 2 / F32;
        if self.src.len() < n {
            self.src = filled(n, 99, 1.0);
            self.dst = vec![0.0; n];
        }
        let (src, dst) = (&self.src[..n], &mut self.dst[..n]);
        let mut copy = || {
            dst.par_chunks_mut(1 << 15).zip(src.par_chunks(1 << 15)).for_each(|(d, s)| d.copy_from_slice(s));
            black_box(&mut *dst);
        };
        kernel();
        copy();
        let (mut kernel_times, mut copy_times, budget) = (Vec::new(), Vec::new(), Instant::now());
        while kernel_times.len() < 7 || (budget.elapsed().as_secs_f64() < 1.0 && kernel_times.len() < 40) {
            for (f, times) in
                [(&mut copy as &mut dyn FnMut(), &mut copy_times), (&mut kernel, &mut kernel_times)]
            {
                flush(&self.flush);
                let start = Instant::now();
                f();
                times.push(start.elapsed().as_secs_f64());
            }
        }
        (crate::median(kernel_times), crate::median(copy_times))
    }

    /// Times `kernel` against the copy and prints its line; `bytes` is the minimal traffic of one call.
    fn bandwidth(&mut self, name: &str, bytes: usize, kernel: impl FnMut()) {
        let (time, copy_time) = self.time(bytes, kernel);
        let (gbps, copy) = (bytes as f64 / time / 1e9, bytes as f64 / copy_time / 1e9);
        println!(
            "fused {name} bytes={bytes} ms={:.3} gbps={gbps:.1} copy_gbps={copy:.1} ratio={:.2}",
            time * 1e3,
            gbps / copy
        );
    }
}

fn elementwise(b: &mut Bench) {
    let n = TOKENS * FFN;
    let (x, g) = (filled(n, 1, 4.0), filled(n, 2, 1.0));
    let (mut y, mut dx) = (vec![0.0f32; n], vec![0.0f32; n]);
    b.bandwidth("silu_fwd", 2 * n * F32, || silu_forward(&x, &mut y));
    b.bandwidth("silu_bwd", 3 * n * F32, || silu_backward(&x, &g, &mut dx));
    let up = filled(n, 3, 1.0);
    for (act, tag) in [(GateActivation::Silu, "silu"), (GateActivation::Identity, "plain")] {
        b.bandwidth(&format!("gated_{tag}_fwd"), 3 * n * F32, || gated_forward(&x, &up, act, &mut y));
        b.bandwidth(&format!("gated_{tag}_bwd"), 5 * n * F32, || {
            gated_backward(&x, &up, &g, act, &mut dx, &mut y)
        });
    }
}

fn norm_and_rope(b: &mut Bench) {
    let n = TOKENS * D_MODEL;
    let (x, g, w) = (filled(n, 4, 2.0), filled(n, 5, 1.0), filled(D_MODEL, 6, 1.5));
    let (mut y, mut dx, mut dw) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; D_MODEL]);
    b.bandwidth("rmsnorm_fwd", 2 * n * F32, || rms_norm_forward(&x, &w, D_MODEL, 1e-6, &mut y));
    b.bandwidth("rmsnorm_bwd", 3 * n * F32, || {
        rms_norm_backward(&x, &w, &g, D_MODEL, 1e-6, &mut dx, &mut dw)
    });
    let dims = RopeDims { batch: TOKENS / SEQ, seq: SEQ, heads: HEADS, head_dim: HEAD_DIM };
    let positions: Vec<u32> = (0..SEQ as u32).collect();
    b.bandwidth("rope_fwd", 2 * n * F32, || rope_forward(&x, dims, &positions, 10_000.0, &mut y));
    b.bandwidth("rope_bwd", 2 * n * F32, || rope_backward(&g, dims, &positions, 10_000.0, &mut dx));
}

fn loss_and_embedding(b: &mut Bench) {
    let n = CE_TOKENS * VOCAB;
    let logits = filled(n, 7, 4.0);
    let targets: Vec<u32> = (0..CE_TOKENS as u32).map(|i| i * 7919 % VOCAB as u32).collect();
    let mut grad = vec![0.0f32; n];
    b.bandwidth("xent_fwd", n * F32, || {
        black_box(cross_entropy_forward(&logits, VOCAB, &targets, Some(0)));
    });
    b.bandwidth("xent_bwd", 2 * n * F32, || {
        cross_entropy_backward(&logits, VOCAB, &targets, Some(0), 1.0, &mut grad)
    });

    let n = TOKENS * D_MODEL;
    let table = filled(VOCAB * D_MODEL, 8, 0.02);
    let ids: Vec<u32> = (0..TOKENS as u32).map(|i| i * 7919 % VOCAB as u32).collect();
    let (mut out, g) = (vec![0.0f32; n], filled(n, 9, 1.0));
    b.bandwidth("embedding_fwd", 2 * n * F32, || embedding_forward(&table, D_MODEL, &ids, &mut out));
    // Backward reads grad_out and reads and writes the touched rows of the gradient table.
    let mut grad_table = vec![0.0f32; VOCAB * D_MODEL];
    b.bandwidth("embedding_bwd", 3 * n * F32, || {
        embedding_backward(&g, D_MODEL, &ids, Some(0), &mut grad_table)
    });
}

fn adamw(b: &mut Bench) {
    let n = ADAMW_PARAMS;
    let (mut p, g) = (filled(n, 10, 0.1), filled(n, 11, 1e-3));
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let mut step = 0;
    // Reads param, grad, m, v; writes param, m, v.
    b.bandwidth("adamw", 7 * n * F32, || {
        step += 1;
        let hyper = AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step };
        adamw_step(&mut p, &g, &mut m, &mut v, hyper);
    });
}

/// Forward and backward attention at the 350m sizes (batch 8 x seq 256, 16 heads of 64) and at the
/// cola-60m training sizes (batch 8 x seq 256, 8 heads of 64; `attention_fwd_60m`, `attention_bwd_60m`).
fn attention() {
    let m60 = cola::nn::Size::M60.spec();
    for (suffix, heads, head_dim) in [("", HEADS, HEAD_DIM), ("_60m", m60.n_heads, m60.d_model / m60.n_heads)]
    {
        let dims = AttentionDims { batch: 8, heads, q_len: SEQ, kv_len: SEQ, head_dim };
        let n = dims.batch * SEQ * heads * head_dim;
        let [q, k, v, g] = [12, 13, 14, 15].map(|seed| filled(n, seed, 1.0));
        let (mut out, mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let product = (dims.batch * heads * SEQ * (SEQ + 1) / 2 * head_dim * 2) as f64;
        let time = seconds(|| attention_forward(&q, &k, &v, dims, scale, &mut out));
        let line = |name: &str, flops: f64, time: f64| {
            println!(
                "fused {name}{suffix} flops={flops:.0} ms={:.3} gflops={:.1}",
                time * 1e3,
                flops / time / 1e9
            )
        };
        line("attention_fwd", 2.0 * product, time);
        let time = seconds(|| {
            let grads = AttentionGrads { q: &mut dq, k: &mut dk, v: &mut dv };
            attention_backward(&q, &k, &v, &g, dims, scale, grads)
        });
        line("attention_bwd", 5.0 * product, time);
    }
}

/// Runs every fused-kernel case and prints its table.
pub fn run_all(attention_only: bool) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build().expect("rayon pool");
    println!("fused: {THREADS} threads, f32, SIMD level {:?}", simd::Level::active());
    pool.install(|| {
        if !attention_only {
            let mut bench = Bench::new();
            elementwise(&mut bench);
            norm_and_rope(&mut bench);
            loss_and_embedding(&mut bench);
            adamw(&mut bench);
        }
        attention();
    });
}

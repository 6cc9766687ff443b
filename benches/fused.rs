//! Criterion bench of the fused CPU kernels in f32 at the 350m sizes (T = 4096 tokens, d = 1024,
//! f = 2736, 16 heads of 64, vocab 32000 on 512 tokens, AdamW on 10M parameters), with a parallel copy
//! of the same bytes as the reference. Throughput is the minimal traffic (inputs read once, outputs
//! written once); `cargo run --release --example bench_gemm` prints the same table against the copy.
use cola::kernels::cpu::adamw::{adamw_step, AdamWStep};
use cola::kernels::cpu::attention::{attention_backward, attention_forward, AttentionDims, AttentionGrads};
use cola::kernels::cpu::elementwise::{silu_backward, silu_forward};
use cola::kernels::cpu::gated::{gated_backward, gated_forward, GateActivation};
use cola::kernels::cpu::loss::{cross_entropy_backward, cross_entropy_forward};
use cola::kernels::cpu::norm::{rms_norm_backward, rms_norm_forward};
use cola::kernels::cpu::rope::{rope_backward, rope_forward, RopeDims};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Duration;

#[path = "../examples/bench_gemm/shapes.rs"]
mod shapes;
use shapes::{filled, CE_TOKENS, D_MODEL, FFN, HEADS, HEAD_DIM, SEQ, TOKENS, VOCAB};

const F32: u64 = 4;

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn case(group: &mut Group<'_>, name: &str, bytes: u64, mut f: impl FnMut()) {
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(name, |b| b.iter(&mut f));
}

/// A parallel `copy_from_slice` moving `bytes` (read plus written): the reference of the group.
fn copy(group: &mut Group<'_>, bytes: u64) {
    let n = (bytes / 2 / F32) as usize;
    let (src, mut dst) = (filled(n, 99, 1.0), vec![0.0f32; n]);
    case(group, "copy", bytes, || {
        dst.par_chunks_mut(1 << 15).zip(src.par_chunks(1 << 15)).for_each(|(d, s)| d.copy_from_slice(s));
        black_box(&mut dst);
    });
}

fn elementwise(c: &mut Criterion) {
    let n = TOKENS * FFN;
    let (x, u, g) = (filled(n, 1, 4.0), filled(n, 2, 1.0), filled(n, 3, 1.0));
    let (mut y, mut dx) = (vec![0.0f32; n], vec![0.0f32; n]);
    let bytes = |arrays: u64| arrays * n as u64 * F32;
    let mut group = c.benchmark_group("elementwise");
    copy(&mut group, bytes(2));
    case(&mut group, "silu_fwd", bytes(2), || silu_forward(&x, &mut y));
    case(&mut group, "silu_bwd", bytes(3), || silu_backward(&x, &g, &mut dx));
    for (act, tag) in [(GateActivation::Silu, "silu"), (GateActivation::Identity, "plain")] {
        case(&mut group, &format!("gated_{tag}_fwd"), bytes(3), || gated_forward(&x, &u, act, &mut y));
        case(&mut group, &format!("gated_{tag}_bwd"), bytes(5), || {
            gated_backward(&x, &u, &g, act, &mut dx, &mut y)
        });
    }
    group.finish();
}

fn rows(c: &mut Criterion) {
    let n = TOKENS * D_MODEL;
    let (x, g, w) = (filled(n, 4, 2.0), filled(n, 5, 1.0), filled(D_MODEL, 6, 1.5));
    let (mut y, mut dx, mut dw) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; D_MODEL]);
    let bytes = |arrays: u64| arrays * n as u64 * F32;
    let mut group = c.benchmark_group("rows");
    copy(&mut group, bytes(2));
    case(&mut group, "rmsnorm_fwd", bytes(2), || rms_norm_forward(&x, &w, D_MODEL, 1e-6, &mut y));
    case(&mut group, "rmsnorm_bwd", bytes(3), || {
        rms_norm_backward(&x, &w, &g, D_MODEL, 1e-6, &mut dx, &mut dw)
    });
    let dims = RopeDims { batch: TOKENS / SEQ, seq: SEQ, heads: HEADS, head_dim: HEAD_DIM };
    let positions: Vec<u32> = (0..SEQ as u32).collect();
    case(&mut group, "rope_fwd", bytes(2), || rope_forward(&x, dims, &positions, 1e4, &mut y));
    case(&mut group, "rope_bwd", bytes(2), || rope_backward(&g, dims, &positions, 1e4, &mut dx));
    group.finish();

    let n = CE_TOKENS * VOCAB;
    let logits = filled(n, 7, 4.0);
    let targets: Vec<u32> = (0..CE_TOKENS as u32).map(|i| i * 7919 % VOCAB as u32).collect();
    let mut grad = vec![0.0f32; n];
    let mut group = c.benchmark_group("cross_entropy");
    copy(&mut group, 2 * n as u64 * F32);
    case(&mut group, "xent_fwd", n as u64 * F32, || {
        black_box(cross_entropy_forward(&logits, VOCAB, &targets, Some(0)));
    });
    case(&mut group, "xent_bwd", 2 * n as u64 * F32, || {
        cross_entropy_backward(&logits, VOCAB, &targets, Some(0), 1.0, &mut grad)
    });
    group.finish();
}

fn adamw(c: &mut Criterion) {
    let n = 10 << 20;
    let (mut p, g, mut m, mut v) = (filled(n, 8, 0.1), filled(n, 9, 1e-3), vec![0.0f32; n], vec![0.0f32; n]);
    let mut group = c.benchmark_group("adamw");
    copy(&mut group, 7 * n as u64 * F32);
    let mut step = 0;
    case(&mut group, "adamw", 7 * n as u64 * F32, || {
        step += 1;
        let hyper = AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step };
        adamw_step(&mut p, &g, &mut m, &mut v, hyper);
    });
    group.finish();
}

/// Attention reports elements of the output per second; `bench_gemm` prints its GFLOP/s.
fn attention(c: &mut Criterion) {
    let dims = AttentionDims { batch: 8, heads: HEADS, q_len: SEQ, kv_len: SEQ, head_dim: HEAD_DIM };
    let n = dims.batch * SEQ * HEADS * HEAD_DIM;
    let [q, k, v, g] = [12, 13, 14, 15].map(|seed| filled(n, seed, 1.0));
    let (mut out, mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let mut group = c.benchmark_group("attention");
    group.throughput(Throughput::Elements(n as u64));
    group
        .bench_function("attention_fwd", |b| b.iter(|| attention_forward(&q, &k, &v, dims, scale, &mut out)));
    group.bench_function("attention_bwd", |b| {
        b.iter(|| {
            let grads = AttentionGrads { q: &mut dq, k: &mut dk, v: &mut dv };
            attention_backward(&q, &k, &v, &g, dims, scale, grads)
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = fused;
    config = config();
    targets = elementwise, rows, adamw, attention
}
criterion_main!(fused);

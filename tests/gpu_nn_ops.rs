//! GPU rms_norm, rope, causal attention, cross-entropy, the LM head fused with cross-entropy and
//! embedding, forward and backward, against the CPU ops on the same inputs.
//!
//! Inputs are random (`Rng` + `Tensor::randn`) with odd sizes (rows that are not a multiple of a block,
//! sequences of 1, 7, 33 and 257, head dims 32 and 64, vocabularies of 1000 and 50257), in f32 and bf16,
//! and also as non-contiguous views (the GPU tensor is the same view of the uploaded base tensor). Every
//! GPU result must be on the GPU, have the CPU result's shape and dtype, and agree with it in the measure
//!     `err = max_i |gpu_i - cpu_i| / max(1, max_i |cpu_i|)`
//! (an absolute error for results of magnitude below 1, relative to the largest element otherwise):
//! - f32: `err <= 1e-5`. Both sides compute in f32 from the same values; the GPU sums in a different order
//!   (block trees, cuBLAS tiles) and fuses multiply-adds, which moves results by a few ulps (6e-8 each) of
//!   the largest terms; the sums here have at most a few hundred terms of mixed sign.
//! - bf16: `err <= 1e-2`. Both sides compute in f32 from the same bf16 values and round once to bf16 (8
//!   significant bits: one ulp is 2^-8 to 2^-7, 3.9e-3 to 7.8e-3, of the value), so results differ by at
//!   most an ulp; GPU attention also rounds the probabilities and score gradients to bf16 before their
//!   products (bf16 operands of cuBLAS GEMMs or, for head dim 64, of the flash kernels' tensor-core
//!   products), which moves results by less than that (`gpu_flash_attention.rs` covers head dims 64 and
//!   128 with the flash kernels' own bounds).
//!
//! Without a CUDA device every test prints `skipped: no CUDA device` and returns.
#![cfg(feature = "cuda")]
use cola_tensor::{DType, Device, Rng, Tensor};

mod common;
use common::gpu::{have_gpu, tol, GPU};
const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// Random normal values of `shape` in `dtype` (drawn in f32, then rounded).
fn randn(shape: &[usize], std: f64, dtype: DType, rng: &mut Rng) -> Tensor {
    Tensor::randn(shape, 0.0, std, DType::F32, rng).to_dtype(dtype).expect("cast")
}

fn gpu(t: &Tensor) -> Tensor {
    t.to_device(GPU).expect("upload")
}

/// `n` random ids below `below`.
fn random_ids(n: usize, below: u32, rng: &mut Rng) -> Vec<u32> {
    (0..n).map(|_| rng.below(below as u64) as u32).collect()
}

/// Asserts that `got` (GPU) matches `want` (CPU) in the measure of the module doc.
fn check(op: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.device(), GPU, "{op}: result is not on the GPU");
    assert_eq!(got.shape(), want.shape(), "{op}: shape differs from the CPU result");
    assert_eq!(got.dtype(), want.dtype(), "{op}: dtype differs from the CPU result");
    let g = got.to_device(Device::Cpu).expect("download").to_vec_f64();
    let w = want.to_vec_f64();
    assert_eq!(g.len(), w.len(), "{op}: element count differs");
    let scale = w.iter().fold(1f64, |m, &b| m.max(b.abs()));
    let mut worst = (0f64, 0usize);
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let err = (a - b).abs() / scale;
        if err > worst.0 || err.is_nan() {
            worst = (if err.is_nan() { f64::INFINITY } else { err }, i);
        }
    }
    let (err, i) = worst;
    let tol = tol(want.dtype());
    assert!(
        err <= tol,
        "{op}: shape {:?} {:?}: max error {err:.3e} > {tol:e} (scale {scale:.3e}) at element {i}: gpu {} cpu {}",
        want.shape(),
        want.dtype(),
        g.get(i).copied().unwrap_or(f64::NAN),
        w.get(i).copied().unwrap_or(f64::NAN),
    );
    eprintln!("{op}: shape {:?} {:?}: max error {err:.3e}", want.shape(), want.dtype());
}

#[test]
fn rms_norm_forward_and_backward_match_cpu() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(11);
    let eps = 1e-5;
    for dtype in DTYPES {
        for shape in [&[1, 1][..], &[7, 33], &[3, 5, 64], &[1000, 96], &[2, 37, 1000], &[4, 2049]] {
            let d = shape[shape.len() - 1];
            let x = randn(shape, 1.0, dtype, &mut rng);
            let w = Tensor::randn(&[d], 1.0, 0.2, DType::F32, &mut rng).to_dtype(dtype).unwrap();
            let g = randn(shape, 1.0, dtype, &mut rng);
            let op = format!("rms_norm {shape:?}");
            check(&op, &gpu(&x).rms_norm(&gpu(&w), eps).unwrap(), &x.rms_norm(&w, eps).unwrap());
            let want = Tensor::rms_norm_backward(&x, &w, &g, eps).unwrap();
            let got = Tensor::rms_norm_backward(&gpu(&x), &gpu(&w), &gpu(&g), eps).unwrap();
            check(&format!("rms_norm_backward dx {shape:?}"), &got[0], &want[0]);
            check(&format!("rms_norm_backward dweight {shape:?}"), &got[1], &want[1]);
            // The weight gradient is added up by whichever block finishes last, in block order: a second
            // launch (which also finds the device's finish counter reset by the first) repeats it to the bit.
            let again = Tensor::rms_norm_backward(&gpu(&x), &gpu(&w), &gpu(&g), eps).unwrap();
            assert_eq!(
                again[1].to_vec_f64(),
                got[1].to_vec_f64(),
                "rms_norm_backward dweight {shape:?} repeats"
            );
        }
        // Non-contiguous x and grad: a narrowed view (row stride 40, offset 3) of a wider base.
        let (xb, gb) = (randn(&[33, 40], 1.0, dtype, &mut rng), randn(&[33, 40], 1.0, dtype, &mut rng));
        let w = randn(&[31], 1.0, dtype, &mut rng);
        let narrow = |t: &Tensor| t.narrow(-1, 3, 31).unwrap();
        let (x, g) = (narrow(&xb), narrow(&gb));
        let (xg, gg) = (narrow(&gpu(&xb)), narrow(&gpu(&gb)));
        check("rms_norm narrowed", &xg.rms_norm(&gpu(&w), eps).unwrap(), &x.rms_norm(&w, eps).unwrap());
        let want = Tensor::rms_norm_backward(&x, &w, &g, eps).unwrap();
        let got = Tensor::rms_norm_backward(&xg, &gpu(&w), &gg, eps).unwrap();
        check("rms_norm_backward narrowed dx", &got[0], &want[0]);
        check("rms_norm_backward narrowed dweight", &got[1], &want[1]);
    }
}

#[test]
fn rope_forward_and_backward_match_cpu() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(12);
    let theta = 10000.0;
    for dtype in DTYPES {
        for (batch, seq, heads, head_dim) in [(1, 1, 1, 2), (2, 7, 3, 64), (1, 33, 4, 32), (2, 257, 2, 64)] {
            let shape = [batch, seq, heads, head_dim];
            let x = randn(&shape, 1.0, dtype, &mut rng);
            // Consecutive positions from an offset, and random positions up to 4096.
            let offset: Vec<u32> = (0..seq as u32).map(|s| s + 4096 - seq as u32).collect();
            let random = random_ids(seq, 4097, &mut rng);
            for positions in [offset, random] {
                let op = format!("rope {shape:?}");
                check(&op, &gpu(&x).rope(&positions, theta).unwrap(), &x.rope(&positions, theta).unwrap());
                let op = format!("rope_backward {shape:?}");
                let got = Tensor::rope_backward(&gpu(&x), &positions, theta).unwrap();
                check(&op, &got, &Tensor::rope_backward(&x, &positions, theta).unwrap());
            }
        }
        // Non-contiguous: [batch, seq, heads, head_dim] as a permuted view of [batch, heads, seq, head_dim].
        let base = randn(&[2, 3, 33, 32], 1.0, dtype, &mut rng);
        let positions: Vec<u32> = (100..133).collect();
        let x = base.permute(&[0, 2, 1, 3]).unwrap();
        let xg = gpu(&base).permute(&[0, 2, 1, 3]).unwrap();
        check("rope permuted", &xg.rope(&positions, theta).unwrap(), &x.rope(&positions, theta).unwrap());
    }
}

/// q `[b, q_len, h, hd]`, k and v `[b, kv_len, h, hd]`, and grad_out like q; optionally as permuted views
/// of head-major bases.
fn attention_inputs(
    (batch, q_len, kv_len, heads, head_dim): (usize, usize, usize, usize, usize),
    dtype: DType,
    permuted: bool,
    rng: &mut Rng,
) -> [Tensor; 4] {
    let make = |len: usize, rng: &mut Rng| {
        if permuted {
            randn(&[batch, heads, len, head_dim], 1.0, dtype, rng).permute(&[0, 2, 1, 3]).unwrap()
        } else {
            randn(&[batch, len, heads, head_dim], 1.0, dtype, rng)
        }
    };
    [make(q_len, rng), make(kv_len, rng), make(kv_len, rng), make(q_len, rng)]
}

/// The GPU copy of a possibly permuted CPU view: the base is uploaded and viewed the same way.
fn gpu_view(t: &Tensor, permuted: bool) -> Tensor {
    if permuted {
        gpu(&t.permute(&[0, 2, 1, 3]).unwrap().contiguous().unwrap()).permute(&[0, 2, 1, 3]).unwrap()
    } else {
        gpu(t)
    }
}

#[test]
fn attention_forward_and_backward_match_cpu() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(13);
    let sizes = [
        (1, 1, 1, 1, 32),
        (2, 7, 7, 3, 64),
        (1, 33, 33, 2, 32),
        (2, 257, 257, 2, 64),
        (2, 7, 33, 3, 64),
        (1, 1, 257, 2, 32),
        (1, 33, 257, 1, 64),
    ];
    for dtype in DTYPES {
        for (i, &size) in sizes.iter().enumerate() {
            let permuted = i % 2 == 1;
            let [q, k, v, g] = attention_inputs(size, dtype, permuted, &mut rng);
            let scale = 1.0 / (size.4 as f64).sqrt();
            let [qg, kg, vg, gg] = [&q, &k, &v, &g].map(|t| gpu_view(t, permuted));
            let what = format!("(b, q_len, kv_len, h, hd) = {size:?}, permuted {permuted}");
            let want = Tensor::attention(&q, &k, &v, scale).unwrap();
            check(&format!("attention {what}"), &Tensor::attention(&qg, &kg, &vg, scale).unwrap(), &want);
            let want = Tensor::attention_backward(&q, &k, &v, &g, scale).unwrap();
            let got = Tensor::attention_backward(&qg, &kg, &vg, &gg, scale).unwrap();
            for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                check(&format!("attention_backward {name} {what}"), a, b);
            }
        }
    }
}

#[test]
fn cross_entropy_forward_and_backward_match_cpu() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(14);
    for dtype in DTYPES {
        for (shape, ignore_id) in [
            (&[1, 1000][..], None),
            (&[7, 1000], Some(0)),
            (&[3, 11, 1000], Some(999)),
            (&[33, 50257], Some(50256)),
            (&[2, 1, 50257], None),
        ] {
            let vocab = shape[shape.len() - 1];
            let rows = shape.iter().product::<usize>() / vocab;
            let logits = randn(shape, 3.0, dtype, &mut rng);
            let mut targets = random_ids(rows, vocab as u32, &mut rng);
            if let Some(ignore) = ignore_id {
                for t in targets.iter_mut().step_by(3) {
                    *t = ignore;
                }
            }
            let op = format!("cross_entropy {shape:?} ignore {ignore_id:?}");
            let got = gpu(&logits).cross_entropy(&targets, ignore_id).unwrap();
            check(&op, &got, &logits.cross_entropy(&targets, ignore_id).unwrap());
            let op = format!("cross_entropy_backward {shape:?} ignore {ignore_id:?}");
            let got = Tensor::cross_entropy_backward(&gpu(&logits), &targets, ignore_id, 1.7).unwrap();
            check(&op, &got, &Tensor::cross_entropy_backward(&logits, &targets, ignore_id, 1.7).unwrap());
        }
        // Every target ignored: loss and gradient are 0.
        let logits = randn(&[5, 1000], 3.0, dtype, &mut rng);
        let targets = vec![7u32; 5];
        let got = gpu(&logits).cross_entropy(&targets, Some(7)).unwrap();
        check("cross_entropy all ignored", &got, &logits.cross_entropy(&targets, Some(7)).unwrap());
        assert_eq!(got.to_device(Device::Cpu).unwrap().to_scalar().unwrap(), 0.0);
        let got = Tensor::cross_entropy_backward(&gpu(&logits), &targets, Some(7), 1.0).unwrap();
        let want = Tensor::cross_entropy_backward(&logits, &targets, Some(7), 1.0).unwrap();
        check("cross_entropy_backward all ignored", &got, &want);
        // Non-contiguous logits: a narrowed view of a wider base (row stride 1003).
        let base = randn(&[9, 1003], 3.0, dtype, &mut rng);
        let targets = random_ids(9, 1000, &mut rng);
        let (logits, logits_gpu) =
            (base.narrow(-1, 2, 1000).unwrap(), gpu(&base).narrow(-1, 2, 1000).unwrap());
        let op = "cross_entropy narrowed";
        check(
            op,
            &logits_gpu.cross_entropy(&targets, None).unwrap(),
            &logits.cross_entropy(&targets, None).unwrap(),
        );
        let got = Tensor::cross_entropy_backward(&logits_gpu, &targets, None, 1.0).unwrap();
        let want = Tensor::cross_entropy_backward(&logits, &targets, None, 1.0).unwrap();
        check("cross_entropy_backward narrowed", &got, &want);
    }
}

/// The fused head + loss is made of matmul and the cross-entropy kernels, so the GPU runs it with the
/// GPU's pieces; the blocks (of 7 or 64 rows here, to cross block boundaries with a last partial block)
/// are the same on both sides.
#[test]
fn head_cross_entropy_forward_and_backward_match_cpu() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(15);
    for dtype in DTYPES {
        for (rows, d, vocab, chunk_rows, ignore_id) in [
            (1, 64, 1000, 7, None),
            (37, 64, 1000, 7, Some(0)),
            (33, 96, 50257, 7, Some(50256)),
            (300, 128, 32000, 64, Some(31999)),
        ] {
            let hidden = randn(&[rows, d], 1.0, dtype, &mut rng);
            let weight = randn(&[d, vocab], 0.1, dtype, &mut rng);
            let mut targets = random_ids(rows, vocab as u32, &mut rng);
            if let Some(ignore) = ignore_id {
                for t in targets.iter_mut().step_by(3) {
                    *t = ignore;
                }
            }
            let (h, w) = (gpu(&hidden), gpu(&weight));
            let what = format!("head_cross_entropy [{rows}, {d}] @ [{d}, {vocab}] blocks of {chunk_rows}");
            let got = h.head_cross_entropy_chunked(&w, &targets, ignore_id, chunk_rows).unwrap();
            let want = hidden.head_cross_entropy_chunked(&weight, &targets, ignore_id, chunk_rows).unwrap();
            check(&what, &got, &want);
            let backward = |h: &Tensor, w: &Tensor| {
                Tensor::head_cross_entropy_backward_chunked(h, w, &targets, ignore_id, 1.3, chunk_rows)
                    .unwrap()
            };
            let ((gh, gw), (wh, ww)) = (backward(&h, &w), backward(&hidden, &weight));
            check(&format!("{what} d hidden"), &gh, &wh);
            check(&format!("{what} d weight"), &gw, &ww);
        }
        // Every target ignored: loss and gradients are 0.
        let (hidden, weight) =
            (randn(&[9, 32], 1.0, dtype, &mut rng), randn(&[32, 1000], 0.1, dtype, &mut rng));
        let targets = vec![5u32; 9];
        let got = gpu(&hidden).head_cross_entropy_chunked(&gpu(&weight), &targets, Some(5), 4).unwrap();
        assert_eq!(got.to_device(Device::Cpu).unwrap().to_scalar().unwrap(), 0.0);
        let (gh, gw) = Tensor::head_cross_entropy_backward_chunked(
            &gpu(&hidden),
            &gpu(&weight),
            &targets,
            Some(5),
            1.0,
            4,
        )
        .unwrap();
        for g in [gh, gw] {
            assert!(g.to_device(Device::Cpu).unwrap().to_vec_f64().iter().all(|&x| x == 0.0));
        }
    }
}

#[test]
fn embedding_forward_and_backward_match_cpu() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(15);
    for dtype in DTYPES {
        // Small vocabularies repeat ids many times (the backward sums them); the large one barely repeats.
        for (vocab, dim, ids_shape, pad_id) in [
            (1, 1, &[1][..], None),
            (50, 33, &[7, 33][..], Some(3)),
            (1000, 64, &[2, 257][..], None),
            (50257, 96, &[4, 33][..], Some(50256)),
        ] {
            let n: usize = ids_shape.iter().product();
            let weight = randn(&[vocab, dim], 1.0, dtype, &mut rng);
            let mut ids = random_ids(n, vocab as u32, &mut rng);
            if let Some(pad) = pad_id {
                for id in ids.iter_mut().step_by(4) {
                    *id = pad;
                }
            }
            let op = format!("embedding vocab {vocab} dim {dim} ids {ids_shape:?}");
            let got = Tensor::embedding(&gpu(&weight), &ids, ids_shape).unwrap();
            check(&op, &got, &Tensor::embedding(&weight, &ids, ids_shape).unwrap());
            let mut out_shape = ids_shape.to_vec();
            out_shape.push(dim);
            let grad = randn(&out_shape, 1.0, dtype, &mut rng);
            let op = format!("embedding_backward vocab {vocab} dim {dim} ids {ids_shape:?} pad {pad_id:?}");
            let got = Tensor::embedding_backward(&gpu(&grad), &ids, vocab, pad_id).unwrap();
            check(&op, &got, &Tensor::embedding_backward(&grad, &ids, vocab, pad_id).unwrap());
        }
        // Non-contiguous: the table and the output gradient as narrowed views.
        let base = randn(&[50, 40], 1.0, dtype, &mut rng);
        let ids = random_ids(21, 50, &mut rng);
        let (w, wg) = (base.narrow(-1, 5, 32).unwrap(), gpu(&base).narrow(-1, 5, 32).unwrap());
        let got = Tensor::embedding(&wg, &ids, &[3, 7]).unwrap();
        check("embedding narrowed table", &got, &Tensor::embedding(&w, &ids, &[3, 7]).unwrap());
        let gbase = randn(&[3, 7, 40], 1.0, dtype, &mut rng);
        let (g, gg) = (gbase.narrow(-1, 1, 32).unwrap(), gpu(&gbase).narrow(-1, 1, 32).unwrap());
        let got = Tensor::embedding_backward(&gg, &ids, 50, None).unwrap();
        check(
            "embedding_backward narrowed grad",
            &got,
            &Tensor::embedding_backward(&g, &ids, 50, None).unwrap(),
        );
    }
}

#[test]
fn gpu_embedding_gradient_repeats_bit_for_bit() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(16);
    let ids = random_ids(4096, 17, &mut rng);
    let grad = gpu(&randn(&[4096, 64], 1.0, DType::F32, &mut rng));
    let first = Tensor::embedding_backward(&grad, &ids, 17, None).unwrap().to_device(Device::Cpu).unwrap();
    let again = Tensor::embedding_backward(&grad, &ids, 17, None).unwrap().to_device(Device::Cpu).unwrap();
    assert_eq!(first.to_vec::<f32>().unwrap(), again.to_vec::<f32>().unwrap(), "embedding_backward repeats");
}

//! The fused bf16 CPU paths (a chunk at a time: widen, the f32 kernel, round once) against the upcast path
//! (whole tensors widened, the f32 kernel, whole outputs rounded), bit for bit: both promise exactly the
//! same f32 arithmetic and one rounding, so no tolerance. Covered: binary arithmetic (including a
//! transposed, non-contiguous operand and a broadcast one, which takes the upcast path in both runs),
//! every unary op, affine and its in-place form, the activation gradients, the gated product and its
//! gradient, RMSNorm and its backward (rows shorter and longer than a chunk; the backward's row blocks, one
//! and several, with the weight's gradient summed across them), RoPE and its backward (sequences up to and
//! past the parallel grain, positions offset as in decoding), the LM head fused with its cross-entropy,
//! the embedding gather and its gradient; shapes with odd sizes below, at and above the 1024-element chunk and the 32768-element
//! parallel grain. Also bf16 <-> f32 conversion inside the upcast path against `Tensor::to_dtype`.
//! Well under a second.
use cola_tensor::ops::set_fused_bf16;
use cola_tensor::{bf16, DType, GateActivation, Rng, Tensor, UnaryOp};

fn bits(t: &Tensor) -> Vec<u16> {
    assert_eq!(t.dtype(), DType::BF16);
    t.to_vec::<bf16>().unwrap().iter().map(|x| x.to_bits()).collect()
}

/// `f` on the fused path and on the upcast path; the bf16 outputs must be identical.
fn same_both_ways(what: &str, f: impl Fn() -> Vec<Tensor>) {
    set_fused_bf16(false);
    let upcast = f();
    set_fused_bf16(true);
    let fused = f();
    assert_eq!(upcast.len(), fused.len());
    for (i, (u, g)) in upcast.iter().zip(&fused).enumerate() {
        assert_eq!(u.shape(), g.shape(), "{what} output {i}");
        assert_eq!(bits(u), bits(g), "{what} output {i}");
    }
}

const SHAPES: [&[usize]; 4] = [&[3], &[7, 149], &[33, 1025], &[5, 3, 2207]];

#[test]
fn fused_elementwise_ops_give_the_upcast_bits() {
    let mut rng = Rng::new(3);
    for shape in SHAPES {
        let a = Tensor::randn(shape, 0.0, 2.0, DType::BF16, &mut rng);
        let b = Tensor::randn(shape, 0.5, 1.0, DType::BF16, &mut rng);
        let c = Tensor::randn(shape, 0.0, 1.0, DType::BF16, &mut rng);
        let s = format!("{shape:?}");
        same_both_ways(&format!("add {s}"), || vec![a.add(&b).unwrap()]);
        same_both_ways(&format!("sub {s}"), || vec![a.sub(&b).unwrap()]);
        same_both_ways(&format!("mul {s}"), || vec![a.mul(&b).unwrap()]);
        same_both_ways(&format!("div {s}"), || vec![a.div(&b).unwrap()]);
        for op in [UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Log, UnaryOp::Silu, UnaryOp::Gelu, UnaryOp::Relu] {
            same_both_ways(&format!("{op:?} {s}"), || vec![a.unary(op).unwrap()]);
        }
        let w = Tensor::randn(&[shape[shape.len() - 1]], 1.0, 0.3, DType::BF16, &mut rng);
        same_both_ways(&format!("rms_norm {s}"), || vec![a.rms_norm(&w, 1e-6).unwrap()]);
        same_both_ways(&format!("rms_norm_backward {s}"), || {
            Tensor::rms_norm_backward(&a, &w, &c, 1e-6).unwrap()
        });
        same_both_ways(&format!("affine {s}"), || vec![a.affine(0.3, -1.7).unwrap()]);
        same_both_ways(&format!("affine_in_place {s}"), || {
            let mut t = a.clone();
            t.affine_in_place(0.37, 0.0).unwrap();
            vec![t]
        });
        same_both_ways(&format!("silu_backward {s}"), || vec![Tensor::silu_backward(&a, &b).unwrap()]);
        same_both_ways(&format!("gelu_backward {s}"), || vec![Tensor::gelu_backward(&a, &b).unwrap()]);
        same_both_ways(&format!("relu_backward {s}"), || vec![Tensor::relu_backward(&a, &b).unwrap()]);
        for act in [GateActivation::Silu, GateActivation::Identity] {
            same_both_ways(&format!("gated {act:?} {s}"), || vec![a.gated(&b, act).unwrap()]);
            same_both_ways(&format!("gated_backward {act:?} {s}"), || {
                let (g, u) = Tensor::gated_backward(&a, &b, &c, act).unwrap();
                vec![g, u]
            });
        }
    }
}

#[test]
fn views_and_broadcasts_give_the_upcast_bits() {
    let mut rng = Rng::new(5);
    let a = Tensor::randn(&[37, 1031], 0.0, 1.0, DType::BF16, &mut rng);
    let b = Tensor::randn(&[1031, 37], 0.0, 1.0, DType::BF16, &mut rng);
    let row = Tensor::randn(&[1031], 0.0, 1.0, DType::BF16, &mut rng);
    let bt = b.t().unwrap();
    assert!(!bt.is_contiguous());
    same_both_ways("add of a transposed view", || vec![a.add(&bt).unwrap()]);
    same_both_ways("silu of a transposed view", || vec![bt.silu().unwrap()]);
    same_both_ways("broadcast mul", || vec![a.mul(&row).unwrap()]);
}

#[test]
fn upcast_conversions_are_to_dtype_bit_for_bit() {
    let mut rng = Rng::new(9);
    let x = Tensor::randn(&[3, 40_000], 0.0, 1e3, DType::F32, &mut rng);
    // `exp` of f32 overflows to inf for large inputs: the rounding of inf and of huge finite values is
    // covered along with ordinary ones.
    set_fused_bf16(false);
    let y = x.to_dtype(DType::BF16).unwrap().exp().unwrap();
    set_fused_bf16(true);
    let want: Vec<u16> = x
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|&v| bf16::from_f32(bf16::from_f32(v).to_f32().exp()).to_bits())
        .collect();
    assert_eq!(bits(&y), want);
}

/// The LM head fused with its loss on bf16 hidden states and weight: the loss and both gradients (f32,
/// the compute dtype) are the upcast path's bit for bit, with an ignored target, blocks of 16 rows and a
/// vocabulary over the loss kernel's 2048-logit chunk; also the backward-only pass.
#[test]
fn head_cross_entropy_gives_the_upcast_bits() {
    let mut rng = Rng::new(13);
    let (rows, d, vocab) = (37, 24, 2500);
    let hidden = Tensor::randn(&[rows, d], 0.0, 1.0, DType::BF16, &mut rng);
    let weight = Tensor::randn(&[d, vocab], 0.0, 0.5, DType::BF16, &mut rng);
    let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 997) % vocab as u32).collect();
    let ignore = Some(targets[5]);
    let f32_bits = |t: &Tensor| t.to_vec_f64().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let run = || {
        let out =
            hidden.head_cross_entropy_with_grads_chunked(&weight, &targets, ignore, true, true, 16).unwrap();
        let (gh, gw) =
            Tensor::head_cross_entropy_backward_chunked(&hidden, &weight, &targets, ignore, 0.7, 16).unwrap();
        [out.loss, out.grad_hidden.unwrap(), out.grad_weight.unwrap(), gh, gw].map(|t| f32_bits(&t))
    };
    set_fused_bf16(false);
    let upcast = run();
    set_fused_bf16(true);
    let fused = run();
    assert!(f64::from_bits(upcast[0][0]).is_finite() && f64::from_bits(upcast[0][0]) > 0.0);
    for (i, (u, f)) in upcast.iter().zip(&fused).enumerate() {
        assert_eq!(u, f, "output {i}");
    }
}

#[test]
fn rope_gives_the_upcast_bits() {
    let mut rng = Rng::new(17);
    // [batch, seq, heads, head_dim]: one token, a short run, and 2 x 300 tokens of 4 x 64 (past the
    // 32768-element parallel grain, so the fused path splits into token blocks).
    for (shape, first) in [([1, 1, 2, 8], 7u32), ([3, 5, 2, 6], 0), ([2, 300, 4, 64], 40)] {
        let x = Tensor::randn(&shape, 0.0, 1.5, DType::BF16, &mut rng);
        let positions: Vec<u32> = (first..first + shape[1] as u32).collect();
        same_both_ways(&format!("rope {shape:?}"), || {
            vec![
                x.rope(&positions, 10000.0).unwrap(),
                Tensor::rope_backward(&x, &positions, 10000.0).unwrap(),
            ]
        });
    }
}

/// The bf16 embedding gathers rows as they are, and its gradient sums each row's positions in f32 in
/// position order: the upcast path's bits. Odd dim, repeated ids, a pad id, rows no id selects (which
/// must come out zero), and a batch small and large enough (ids x dim past the 32768-element parallel
/// grain) for both of the f32 kernel's orders.
#[test]
fn embedding_gives_the_upcast_bits() {
    let mut rng = Rng::new(17);
    let table = Tensor::randn(&[301, 37], 0.0, 1.0, DType::BF16, &mut rng);
    for (batch, seq) in [(2, 129), (4, 300)] {
        let ids: Vec<u32> = (0..batch * seq).map(|i| (i * 7919 % 97) as u32).collect(); // rows 97.. unused
        let shape = [batch, seq];
        same_both_ways("embedding", || vec![Tensor::embedding(&table, &ids, &shape).unwrap()]);
        let grad = Tensor::randn(&[batch, seq, 37], 0.0, 1.0, DType::BF16, &mut rng);
        for pad in [None, Some(ids[3])] {
            let what = format!("embedding_backward {shape:?} pad {pad:?}");
            same_both_ways(&what, || vec![Tensor::embedding_backward(&grad, &ids, 301, pad).unwrap()]);
        }
        let empty = Tensor::embedding_backward(&grad, &ids, 301, None).unwrap().to_vec::<bf16>().unwrap();
        let unused = (0..301u32).find(|r| !ids.contains(r)).expect("a row no id selects");
        assert!(empty[unused as usize * 37..][..37].iter().all(|x| x.to_bits() == 0), "{shape:?}");
    }
}

/// `to_dtype` between f32 and bf16 takes the vectorised conversion on a contiguous tensor and the
/// element-wise one on a view: both round to nearest even as `half` does, and widen exactly.
#[test]
fn to_dtype_of_contiguous_tensors_and_views_agree() {
    let mut rng = Rng::new(21);
    let x = Tensor::randn(&[37, 1029], 0.0, 3.0, DType::F32, &mut rng);
    let xt = x.t().unwrap();
    assert!(x.is_contiguous() && !xt.is_contiguous());
    let rounded = |t: &Tensor| -> Vec<u16> {
        t.contiguous()
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|&v| bf16::from_f32(v).to_bits())
            .collect()
    };
    assert_eq!(bits(&x.to_dtype(DType::BF16).unwrap()), rounded(&x));
    assert_eq!(bits(&xt.to_dtype(DType::BF16).unwrap().contiguous().unwrap()), rounded(&xt));
    let b = x.to_dtype(DType::BF16).unwrap();
    let widened: Vec<f32> = b.to_vec::<bf16>().unwrap().iter().map(|v| v.to_f32()).collect();
    assert_eq!(b.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(), widened);
    let bt = b.t().unwrap().to_dtype(DType::F32).unwrap().contiguous().unwrap();
    assert_eq!(
        bt.to_vec::<f32>().unwrap(),
        b.t().unwrap().contiguous().unwrap().to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap()
    );
}

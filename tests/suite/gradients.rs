//! Gradient properties of every differentiable op: the backward rules agree with central finite differences
//! of `L = sum(out * R)` (R random, fixed) on random small f64 inputs, contiguous or laid out as views.
//! Whole-graph properties (networks, accumulation, replay, `no_grad`) are in `composite.rs`.
//!
//! Tolerance: `|analytic - numeric| <= 1e-6 * max(1, |numeric|)`, justified at `common::TOLERANCE`.
use crate::common;
use cola::autograd::Graph;

use cola::autograd::{Result, Tape, Var};
use cola::tensor::{BinaryOp, GateActivation, Rng, Tensor};
use common::{
    any_view, broadcastable, check_gradients, check_gradients_skipping, elementwise_composite, input,
    permutation, random_shape_with_numel, Dist, View,
};
use proptest::prelude::*;

/// Cases per property: a case runs 2 forward passes per input element (at most ~200 elements), about 0.1 ms
/// on these shapes, so 256 cases of 30 properties take about a second.
const CASES: u32 = 256;

/// Shapes of rank 0..=3 with dims 1..=4 (at most 64 elements).
fn any_shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=4, 0..=3)
}

fn normal() -> Dist {
    Dist::Normal(1.0)
}

/// Checks one broadcasting binary op of operands derived from `out_shape` (see `common::broadcastable`).
fn check_binary(
    op: BinaryOp,
    out_shape: &[usize],
    (drop_a, ones_a, view_a): (usize, u8, View),
    (drop_b, ones_b, view_b): (usize, u8, View),
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let sa = broadcastable(out_shape, drop_a, ones_a);
    let sb = broadcastable(out_shape, drop_b, ones_b);
    let a = input(&sa, view_a, normal(), &mut rng);
    let denominator = if op == BinaryOp::Div { Dist::AwayFromZero } else { normal() };
    let b = input(&sb, view_b, denominator, &mut rng);
    check_gradients(&format!("{} {sa:?} {sb:?}", op.name()), &[a, b], &move |t, x| {
        Ok(vec![match op {
            BinaryOp::Add => t.add(&x[0], &x[1])?,
            BinaryOp::Sub => t.sub(&x[0], &x[1])?,
            BinaryOp::Mul => t.mul(&x[0], &x[1])?,
            BinaryOp::Div => t.div(&x[0], &x[1])?,
        }])
    });
}

/// Strategy of one binary operand: leading dims to drop, dims to set to 1, layout.
fn operand() -> impl Strategy<Value = (usize, u8, View)> {
    (0usize..=3, any::<u8>(), any_view())
}

/// Checks a one-input graph on a random input of `shape`.
fn check_unary(what: &str, shape: &[usize], view: View, dist: Dist, seed: u64, graph: &common::Graph) {
    let x = input(shape, view, dist, &mut Rng::new(seed));
    check_gradients(&format!("{what} {shape:?} {view:?}"), &[x], graph);
}

fn matmul(t: &mut Tape, x: &[Var]) -> Result<Vec<Var>> {
    Ok(vec![t.matmul(&x[0], &x[1])?])
}

/// Checks `a @ b` for operands of the given logical shapes.
fn check_matmul(sa: &[usize], sb: &[usize], va: View, vb: View, seed: u64) {
    let mut rng = Rng::new(seed);
    let a = input(sa, va, normal(), &mut rng);
    let b = input(sb, vb, normal(), &mut rng);
    check_gradients(&format!("matmul {sa:?} ({va:?}) @ {sb:?} ({vb:?})"), &[a, b], &matmul);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn matmul_2d(
        (m, k, n) in (1usize..=5, 1usize..=5, 1usize..=5),
        (va, vb) in (any_view(), any_view()),
        seed: u64,
    ) {
        check_matmul(&[m, k], &[k, n], va, vb, seed);
    }

    /// Batch dims broadcast: each operand's batch shape drops leading dims and/or has size-1 dims.
    #[test]
    fn matmul_batched_broadcast(
        batch in prop::collection::vec(1usize..=3, 0..=2),
        (m, k, n) in (1usize..=3, 1usize..=4, 1usize..=3),
        (drop_a, ones_a, va) in operand(),
        (drop_b, ones_b, vb) in operand(),
        seed: u64,
    ) {
        let mut sa = broadcastable(&batch, drop_a, ones_a);
        let mut sb = broadcastable(&batch, drop_b, ones_b);
        sa.extend([m, k]);
        sb.extend([k, n]);
        check_matmul(&sa, &sb, va, vb, seed);
    }

    /// Operands transposed inside the graph (a recorded `t`) rather than as leaf views.
    #[test]
    fn matmul_recorded_transpose(
        (m, k, n) in (1usize..=4, 1usize..=4, 1usize..=4),
        batch in 0usize..=2,
        (ta, tb) in (any::<bool>(), any::<bool>()),
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let lead: Vec<usize> = if batch > 0 { vec![batch] } else { vec![] };
        let sa: Vec<usize> = lead.iter().copied().chain(if ta { [k, m] } else { [m, k] }).collect();
        let sb: Vec<usize> = lead.iter().copied().chain(if tb { [n, k] } else { [k, n] }).collect();
        let a = input(&sa, View::Contiguous, normal(), &mut rng);
        let b = input(&sb, View::Contiguous, normal(), &mut rng);
        check_gradients(&format!("matmul t={ta} {sa:?} @ t={tb} {sb:?}"), &[a, b], &move |t, x| {
            let a = if ta { t.t(&x[0])? } else { x[0] };
            let b = if tb { t.t(&x[1])? } else { x[1] };
            Ok(vec![t.matmul(&a, &b)?])
        });
    }

    #[test]
    fn add_broadcast(out in any_shape(), a in operand(), b in operand(), seed: u64) {
        check_binary(BinaryOp::Add, &out, a, b, seed);
    }

    #[test]
    fn sub_broadcast(out in any_shape(), a in operand(), b in operand(), seed: u64) {
        check_binary(BinaryOp::Sub, &out, a, b, seed);
    }

    #[test]
    fn mul_broadcast(out in any_shape(), a in operand(), b in operand(), seed: u64) {
        check_binary(BinaryOp::Mul, &out, a, b, seed);
    }

    /// Denominators have magnitude in (0.5, 2), so `a / b^2` stays O(1) and finite differences are accurate.
    #[test]
    fn div_broadcast(out in any_shape(), a in operand(), b in operand(), seed: u64) {
        check_binary(BinaryOp::Div, &out, a, b, seed);
    }

    #[test]
    fn affine(
        shape in any_shape(),
        view in any_view(),
        (scale, shift) in (-3.0f64..3.0, -3.0f64..3.0),
        seed: u64,
    ) {
        check_unary("affine", &shape, view, normal(), seed, &move |t, x| {
            Ok(vec![t.affine(&x[0], scale, shift)?])
        });
    }

    #[test]
    fn add_scalar(shape in any_shape(), view in any_view(), value in -3.0f64..3.0, seed: u64) {
        check_unary("add_scalar", &shape, view, normal(), seed, &move |t, x| {
            Ok(vec![t.add_scalar(&x[0], value)?])
        });
    }

    #[test]
    fn mul_scalar(shape in any_shape(), view in any_view(), value in -3.0f64..3.0, seed: u64) {
        check_unary("mul_scalar", &shape, view, normal(), seed, &move |t, x| {
            Ok(vec![t.mul_scalar(&x[0], value)?])
        });
    }

    #[test]
    fn neg(shape in any_shape(), view in any_view(), seed: u64) {
        check_unary("neg", &shape, view, normal(), seed, &|t, x| Ok(vec![t.neg(&x[0])?]));
    }

    #[test]
    fn exp(shape in any_shape(), view in any_view(), seed: u64) {
        check_unary("exp", &shape, view, normal(), seed, &|t, x| Ok(vec![t.exp(&x[0])?]));
    }

    /// Inputs in (0.2, 5): away from the pole at 0.
    #[test]
    fn log(shape in any_shape(), view in any_view(), seed: u64) {
        check_unary("log", &shape, view, Dist::Uniform(0.2, 5.0), seed, &|t, x| Ok(vec![t.log(&x[0])?]));
    }

    #[test]
    fn silu(shape in any_shape(), view in any_view(), seed: u64) {
        check_unary("silu", &shape, view, Dist::Normal(3.0), seed, &|t, x| Ok(vec![t.silu(&x[0])?]));
    }

    /// GELU (tanh form), drawn wide as for silu: the curved middle and both tails.
    #[test]
    fn gelu(shape in any_shape(), view in any_view(), seed: u64) {
        check_unary("gelu", &shape, view, Dist::Normal(3.0), seed, &|t, x| Ok(vec![t.gelu(&x[0])?]));
    }

    /// ReLU on both sides of its kink, never across it (a central difference straddling 0 is not its
    /// derivative): `relu(x)` and `relu(-x)` for x in (0.05, 3).
    #[test]
    fn relu(shape in any_shape(), view in any_view(), seed: u64) {
        check_unary("relu", &shape, view, Dist::Uniform(0.05, 3.0), seed, &|t, x| {
            let negated = t.neg(&x[0])?;
            Ok(vec![t.relu(&x[0])?, t.relu(&negated)?])
        });
    }

    /// The fused gated product `act(gate) * up`, both activations, gate and up in independent layouts
    /// (gate drawn wide, as for silu, so the SiLU's curved region and its tails are both visited).
    #[test]
    fn gated(shape in any_shape(), (vg, vu) in (any_view(), any_view()), silu: bool, seed: u64) {
        check_gated(&shape, vg, vu, silu, seed);
    }

    /// Random subsets of axes (empty = all), some given as negative axes, with and without keepdim.
    #[test]
    fn sum(shape in any_shape(), view in any_view(), mask: u8, negative: bool, keepdim: bool, seed: u64) {
        let axes = reduce_axes(shape.len(), mask, negative);
        check_unary(&format!("sum {axes:?} keepdim={keepdim}"), &shape, view, normal(), seed,
            &move |t, x| Ok(vec![t.sum(&x[0], &axes, keepdim)?]));
    }

    #[test]
    fn mean(shape in any_shape(), view in any_view(), mask: u8, negative: bool, keepdim: bool, seed: u64) {
        let axes = reduce_axes(shape.len(), mask, negative);
        check_unary(&format!("mean {axes:?} keepdim={keepdim}"), &shape, view, normal(), seed,
            &move |t, x| Ok(vec![t.mean(&x[0], &axes, keepdim)?]));
    }

    /// Reshape to a random shape of the same size; views of non-contiguous inputs take the copy path.
    #[test]
    fn reshape(shape in any_shape(), view in any_view(), seed: u64) {
        let mut rng = Rng::new(seed ^ 0xA5A5);
        let target = random_shape_with_numel(shape.iter().product(), &mut rng);
        let label = format!("reshape to {target:?}");
        check_unary(&label, &shape, view, normal(), seed, &move |t, x| Ok(vec![t.reshape(&x[0], &target)?]));
    }

    /// A permuted result is a strided view; a following op (here exp) must read it correctly too.
    #[test]
    fn permute(shape in any_shape(), view in any_view(), seed: u64) {
        let perm = permutation(shape.len(), &mut Rng::new(seed ^ 0xA5A5));
        check_unary(&format!("permute {perm:?}"), &shape, view, normal(), seed, &move |t, x| {
            let p = t.permute(&x[0], &perm)?;
            Ok(vec![p, t.exp(&p)?])
        });
    }

    #[test]
    fn transpose(
        shape in prop::collection::vec(1usize..=4, 1..=3),
        view in any_view(),
        (a, b, negative) in (any::<usize>(), any::<usize>(), any::<bool>()),
        seed: u64,
    ) {
        let rank = shape.len() as isize;
        let (a, b) = ((a % shape.len()) as isize, (b % shape.len()) as isize);
        let (a, b) = if negative { (a - rank, b - rank) } else { (a, b) };
        check_unary(&format!("transpose {a} {b}"), &shape, view, normal(), seed, &move |t, x| {
            let p = t.transpose(&x[0], a, b)?;
            Ok(vec![t.silu(&p)?])
        });
    }

    /// Also empty narrows (len 0), whose gradient is all zeros.
    #[test]
    fn narrow(
        shape in prop::collection::vec(1usize..=4, 1..=3),
        view in any_view(),
        (axis, start, len) in (any::<usize>(), any::<usize>(), any::<usize>()),
        seed: u64,
    ) {
        let axis = axis % shape.len();
        let start = start % shape[axis];
        let len = len % (shape[axis] - start + 1);
        check_unary(&format!("narrow axis {axis} {start}+{len}"), &shape, view, normal(), seed,
            &move |t, x| Ok(vec![t.narrow(&x[0], axis as isize, start, len)?]));
    }

    #[test]
    fn broadcast_to(target in any_shape(), (drop, ones, view) in operand(), seed: u64) {
        let shape = broadcastable(&target, drop, ones);
        check_unary(&format!("broadcast_to {target:?}"), &shape, view, normal(), seed,
            &move |t, x| Ok(vec![t.broadcast_to(&x[0], &target)?]));
    }

    #[test]
    fn concat(
        base in prop::collection::vec(1usize..=3, 1..=3),
        sizes in prop::collection::vec(1usize..=3, 1..=3),
        views in prop::collection::vec(any_view(), 3),
        axis: usize,
        negative: bool,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let ax = axis % base.len();
        let inputs: Vec<Tensor> = sizes.iter().zip(&views).map(|(&s, &v)| {
            let mut shape = base.clone();
            shape[ax] = s;
            input(&shape, v, normal(), &mut rng)
        }).collect();
        let axis = if negative { ax as isize - base.len() as isize } else { ax as isize };
        check_gradients(&format!("concat axis {axis} of {sizes:?}"), &inputs, &move |t, x| {
            Ok(vec![t.concat(x, axis)?])
        });
    }

    /// Pieces (some possibly empty) are separate outputs, each weighted by its own R.
    #[test]
    fn split(
        shape in prop::collection::vec(1usize..=4, 1..=3),
        view in any_view(),
        axis: usize,
        cuts in prop::collection::vec(any::<usize>(), 0..=3),
        seed: u64,
    ) {
        let axis = axis % shape.len();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (shape[axis] + 1)).collect();
        points.push(0);
        points.push(shape[axis]);
        points.sort_unstable();
        let sizes: Vec<usize> = points.windows(2).map(|w| w[1] - w[0]).collect();
        check_unary(&format!("split axis {axis} into {sizes:?}"), &shape, view, normal(), seed,
            &move |t, x| t.split(&x[0], &sizes, axis as isize));
    }

    /// Gradients of x (`[..., d]`, any layout) and of the weight.
    #[test]
    fn rms_norm(
        lead in prop::collection::vec(1usize..=3, 0..=2),
        d in 1usize..=6,
        (vx, vw) in (any_view(), any_view()),
        eps in prop_oneof![Just(1e-6), Just(1e-3), Just(0.1)],
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let mut shape = lead.clone();
        shape.push(d);
        let x = input(&shape, vx, normal(), &mut rng);
        let w = input(&[d], vw, normal(), &mut rng).add_scalar(1.0).unwrap();
        check_gradients(&format!("rms_norm {shape:?} eps {eps}"), &[x, w], &move |t, x| {
            Ok(vec![t.rms_norm(&x[0], &x[1], eps)?])
        });
    }

    /// Random (unsorted, repeated, large) positions and theta.
    #[test]
    fn rope(
        (batch, seq, heads, half) in (1usize..=2, 1usize..=3, 1usize..=2, 1usize..=4),
        view in any_view(),
        positions in prop::collection::vec(0u32..5000, 3),
        theta in prop_oneof![Just(10000.0), 2.0f64..20000.0],
        seed: u64,
    ) {
        let shape = [batch, seq, heads, 2 * half];
        let positions = positions[..seq].to_vec();
        check_unary(&format!("rope {positions:?} theta {theta}"), &shape, view, normal(), seed,
            &move |t, x| Ok(vec![t.rope(&x[0], &positions, theta)?]));
    }

    /// Causal attention with `q_len <= kv_len` (queries at the end of the key sequence).
    #[test]
    fn attention(
        (batch, heads, head_dim, kv_len) in (1usize..=2, 1usize..=2, 1usize..=4, 1usize..=4),
        q_len in 1usize..=4,
        views in prop::collection::vec(any_view(), 3),
        scale in 0.2f64..1.5,
        seed: u64,
    ) {
        let q_len = q_len.min(kv_len);
        let mut rng = Rng::new(seed);
        let q = input(&[batch, q_len, heads, head_dim], views[0], normal(), &mut rng);
        let k = input(&[batch, kv_len, heads, head_dim], views[1], normal(), &mut rng);
        let v = input(&[batch, kv_len, heads, head_dim], views[2], normal(), &mut rng);
        let what = format!("attention q {:?} kv {:?} scale {scale}", q.shape(), k.shape());
        check_gradients(&what, &[q, k, v], &move |t, x| Ok(vec![t.attention(&x[0], &x[1], &x[2], scale)?]));
    }

    /// With a pad id present in the ids, the pad row's gradient is exactly zero (and is left out of the
    /// finite-difference comparison, since the forward does read that row).
    #[test]
    fn embedding(
        (vocab, dim) in (1usize..=6, 1usize..=4),
        ids_shape in prop::collection::vec(1usize..=3, 1..=2),
        view in any_view(),
        with_pad: bool,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let n: usize = ids_shape.iter().product();
        let mut ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u64) as u32).collect();
        let pad = with_pad.then(|| rng.below(vocab as u64) as u32);
        if let Some(p) = pad {
            ids[0] = p;
        }
        let table = input(&[vocab, dim], view, normal(), &mut rng);
        let what = format!("embedding ids {ids:?} pad {pad:?}");
        let pad_row = pad.map(|p| p as usize);
        let ids2 = ids.clone();
        let grads = check_gradients_skipping(&what, &[table], &|_, j| Some(j / dim) == pad_row, &move |t, x| {
            Ok(vec![t.embedding(&x[0], &ids2, &ids_shape, pad)?])
        });
        if let Some(p) = pad_row {
            let g = grads[0].to_vec_f64();
            let row = &g[p * dim..(p + 1) * dim];
            prop_assert!(row.iter().all(|&x| x.to_bits() == 0), "pad row gradient {g:?}");
        }
    }

    /// Ignored targets: `None`, an id inside the vocabulary, or one outside it (like -100). Rows whose
    /// target is ignored get exactly zero gradient.
    #[test]
    fn cross_entropy(
        lead in prop::collection::vec(1usize..=3, 0..=2),
        vocab in 1usize..=6,
        ignore_kind in 0u8..3,
        view in any_view(),
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let rows: usize = lead.iter().product();
        let ignore_id = match ignore_kind {
            0 => None,
            1 => Some(rng.below(vocab as u64) as u32),
            _ => Some(vocab as u32 + 3),
        };
        let targets: Vec<u32> = (0..rows).map(|_| match ignore_id {
            Some(id) if rng.below(3) == 0 => id,
            _ => rng.below(vocab as u64) as u32,
        }).collect();
        let mut shape = lead.clone();
        shape.push(vocab);
        let logits = input(&shape, view, Dist::Normal(2.0), &mut rng);
        let what = format!("cross_entropy {shape:?} targets {targets:?} ignore {ignore_id:?}");
        let t2 = targets.clone();
        let grads = check_gradients(&what, &[logits], &move |t, x| {
            Ok(vec![t.cross_entropy(&x[0], &t2, ignore_id)?])
        });
        let g = grads[0].to_vec_f64();
        for (row, &target) in targets.iter().enumerate() {
            if Some(target) == ignore_id {
                let row_grad = &g[row * vocab..(row + 1) * vocab];
                prop_assert!(row_grad.iter().all(|&x| x.to_bits() == 0), "ignored row {row}: {row_grad:?}");
            }
        }
    }

    /// The fused head + loss on the tape (one block at these sizes), hidden and weight as any view. Its
    /// value must equal `matmul` then `cross_entropy` within 1e-12: both sum the same f64 row losses of the
    /// same f64 logits, in groupings that differ by a few f64 roundings (1e-16 relative each).
    #[test]
    fn head_cross_entropy(
        lead in prop::collection::vec(1usize..=3, 1..=2),
        d in 1usize..=4,
        vocab in 1usize..=6,
        ignore_kind in 0u8..4,
        (view_h, view_w) in (any_view(), any_view()),
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let rows: usize = lead.iter().product();
        let (targets, ignore_id) = head_targets(rows, vocab, ignore_kind, &mut rng);
        let mut shape = lead.clone();
        shape.push(d);
        let hidden = input(&shape, view_h, normal(), &mut rng);
        let weight = input(&[d, vocab], view_w, Dist::Normal(2.0), &mut rng);
        let fused = hidden.head_cross_entropy(&weight, &targets, ignore_id).unwrap().to_scalar().unwrap();
        let unfused = hidden.matmul(&weight).unwrap().cross_entropy(&targets, ignore_id).unwrap();
        let unfused = unfused.to_scalar().unwrap();
        prop_assert!((fused - unfused).abs() <= 1e-12 * unfused.abs().max(1.0), "{fused} vs {unfused}");
        let what = format!("head_cross_entropy {shape:?} @ [{d}, {vocab}] targets {targets:?} ignore {ignore_id:?}");
        let t2 = targets.clone();
        let grads = check_gradients(&what, &[hidden, weight], &move |t, x| {
            Ok(vec![t.head_cross_entropy(&x[0], &x[1], &t2, ignore_id)?])
        });
        assert_ignored_rows_zero(&grads[0], d, &targets, ignore_id);
    }

    /// The fused head + loss in blocks of 1..=4 rows over 1..=11 rows (so the last block is usually
    /// partial, and blocks with every target ignored occur): the blocked backward agrees with central
    /// differences of the blocked forward (tolerance of `common::TOLERANCE`), and the blocked values and
    /// gradients equal the single-block ones within 1e-12 (the same f64 terms, grouped per block).
    #[test]
    fn head_cross_entropy_chunked(
        rows in 1usize..=11,
        chunk_rows in 1usize..=4,
        d in 1usize..=3,
        vocab in 1usize..=5,
        ignore_kind in 0u8..4,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let (targets, ignore_id) = head_targets(rows, vocab, ignore_kind, &mut rng);
        let hidden = input(&[rows, d], View::Contiguous, normal(), &mut rng);
        let weight = input(&[d, vocab], View::Contiguous, Dist::Normal(2.0), &mut rng);
        let loss = |x: &[Tensor], chunk: usize| {
            x[0].head_cross_entropy_chunked(&x[1], &targets, ignore_id, chunk).unwrap().to_scalar().unwrap()
        };
        let inputs = [hidden.clone(), weight.clone()];
        let (gh, gw) =
            Tensor::head_cross_entropy_backward_chunked(&hidden, &weight, &targets, ignore_id, 1.0, chunk_rows)
                .unwrap();
        let what = format!("head_cross_entropy [{rows}, {d}] @ [{d}, {vocab}] blocks of {chunk_rows}, targets {targets:?} ignore {ignore_id:?}");
        common::compare_with_numeric(&what, &inputs, &[gh.clone(), gw.clone()], &|_, _| false, &|x| loss(x, chunk_rows));
        let (blocked, single) = (loss(&inputs, chunk_rows), loss(&inputs, rows));
        prop_assert!((blocked - single).abs() <= 1e-12 * single.abs().max(1.0), "{what}: {blocked} vs {single}");
        let (gh1, gw1) =
            Tensor::head_cross_entropy_backward_chunked(&hidden, &weight, &targets, ignore_id, 1.0, rows).unwrap();
        for (got, want) in [(&gh, &gh1), (&gw, &gw1)] {
            for (a, b) in got.to_vec_f64().iter().zip(want.to_vec_f64()) {
                prop_assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{what}: gradient {a} vs {b}");
            }
        }
        assert_ignored_rows_zero(&gh, d, &targets, ignore_id);
        if ignore_kind == 3 {
            prop_assert_eq!(blocked.to_bits(), 0, "all ignored: loss {}", blocked);
            prop_assert!(gw.to_vec_f64().iter().all(|&x| x.to_bits() == 0), "all ignored: weight gradient");
        }
    }

    /// One var feeding several ops (gradients summed at the fan-out), a chain of mixed ops, two outputs.
    #[test]
    fn fan_out_composite(shape in prop::collection::vec(1usize..=4, 1..=3), view in any_view(), seed: u64) {
        let mut rng = Rng::new(seed);
        let x = input(&shape, view, normal(), &mut rng);
        let y = input(&shape, View::Contiguous, Dist::AwayFromZero, &mut rng);
        check_gradients(&format!("fan-out {shape:?}"), &[x, y], &elementwise_composite);
    }
}

/// Checks `gated(gate, up)` on random inputs of `shape` in layouts `vg` and `vu`.
fn check_gated(shape: &[usize], vg: View, vu: View, silu: bool, seed: u64) {
    let activation = if silu { GateActivation::Silu } else { GateActivation::Identity };
    let mut rng = Rng::new(seed);
    let gate = input(shape, vg, Dist::Normal(3.0), &mut rng);
    let up = input(shape, vu, normal(), &mut rng);
    check_gradients(&format!("gated {activation:?} {shape:?} {vg:?} {vu:?}"), &[gate, up], &move |t, x| {
        Ok(vec![t.gated(&x[0], &x[1], activation)?])
    });
}

/// Odd sizes beyond the property's 1..=4 dims (primes, a row longer than any SIMD width).
#[test]
fn gated_odd_shapes() {
    let shapes: [&[usize]; 4] = [&[1], &[37], &[3, 5, 7], &[2, 67]];
    for (i, shape) in shapes.into_iter().enumerate() {
        for silu in [true, false] {
            check_gated(shape, View::Contiguous, View::Narrowed, silu, i as u64);
            check_gated(shape, View::Transposed, View::Broadcast, silu, 100 + i as u64);
        }
    }
}

/// Targets for `rows` rows below `vocab` and the id they ignore: `ignore_kind` 0 ignores nothing, 1 an id
/// inside the vocabulary, 2 one outside it (like -100), 3 ignores every row (the loss and its gradients
/// are then exactly 0). Otherwise about a third of the rows are ignored.
fn head_targets(rows: usize, vocab: usize, ignore_kind: u8, rng: &mut Rng) -> (Vec<u32>, Option<u32>) {
    let ignore_id = match ignore_kind {
        0 => None,
        1 => Some(rng.below(vocab as u64) as u32),
        _ => Some(vocab as u32 + 3),
    };
    let targets = (0..rows)
        .map(|_| match ignore_id {
            Some(id) if ignore_kind == 3 || rng.below(3) == 0 => id,
            _ => rng.below(vocab as u64) as u32,
        })
        .collect();
    (targets, ignore_id)
}

/// Asserts that the gradient rows of `grad_hidden` (rows `d` long) whose target is ignored are exactly 0.
fn assert_ignored_rows_zero(grad_hidden: &Tensor, d: usize, targets: &[u32], ignore_id: Option<u32>) {
    let g = grad_hidden.to_vec_f64();
    for (row, &target) in targets.iter().enumerate() {
        if Some(target) == ignore_id {
            let row_grad = &g[row * d..(row + 1) * d];
            assert!(row_grad.iter().all(|&x| x.to_bits() == 0), "ignored row {row}: {row_grad:?}");
        }
    }
}

/// Axes from a bit mask (empty = all axes), optionally as negative indices.
fn reduce_axes(rank: usize, mask: u8, negative: bool) -> Vec<isize> {
    (0..rank)
        .filter(|d| mask >> d & 1 == 1)
        .map(|d| if negative { d as isize - rank as isize } else { d as isize })
        .collect()
}

#[test]
fn matmul_fixed_broadcast_shapes() {
    let cases: [(&[usize], &[usize]); 5] = [
        (&[2, 3, 4], &[4, 5]),
        (&[1, 3, 4], &[2, 4, 5]),
        (&[3, 4], &[2, 4, 5]),
        (&[2, 1, 3, 4], &[3, 4, 2]),
        (&[2, 3, 1, 4], &[1, 4, 3]),
    ];
    for (i, (sa, sb)) in cases.into_iter().enumerate() {
        check_matmul(sa, sb, View::Contiguous, View::Contiguous, i as u64);
        check_matmul(sa, sb, View::Transposed, View::Narrowed, 100 + i as u64);
    }
}

/// The head-loss cases: 37 f32 rows of width 48 against a 1000-entry vocabulary, every fourth target the
/// ignored id 7. Returns hidden, weight, targets, the ignored id and the row count.
fn head_loss_case(seed: u64) -> (Tensor, Tensor, Vec<u32>, Option<u32>, usize) {
    let mut rng = Rng::new(seed);
    let (rows, d, vocab) = (37, 48, 1000);
    let hidden = Tensor::randn(&[rows, d], 0.0, 1.0, cola::tensor::DType::F32, &mut rng);
    let weight = Tensor::randn(&[d, vocab], 0.0, 0.3, cola::tensor::DType::F32, &mut rng);
    let mut targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
    targets.iter_mut().step_by(4).for_each(|t| *t = 7);
    (hidden, weight, targets, Some(7), rows)
}

/// The fused head + loss against `matmul` then `cross_entropy` in f32 at a realistic vocabulary, 37 rows in
/// blocks of 8 (and one block): one block is the unfused computation itself, so it must match bit for bit;
/// in blocks, each block's GEMM may take a different path for its few rows (different rounding of the
/// logits by a few f32 ulps, 6e-8 relative each), so the loss agrees within 1e-6 relative and the
/// gradients within 1e-6 of their largest entry.
#[test]
fn head_cross_entropy_f32_matches_unfused() {
    let (hidden, weight, targets, ignore_id, rows) = head_loss_case(21);
    let logits = hidden.matmul(&weight).unwrap();
    let want = logits.cross_entropy(&targets, ignore_id).unwrap().to_scalar().unwrap();
    let grad_logits = Tensor::cross_entropy_backward(&logits, &targets, ignore_id, 1.0).unwrap();
    let want_gh = grad_logits.matmul(&weight.t().unwrap()).unwrap().to_vec_f64();
    let want_gw = hidden.t().unwrap().matmul(&grad_logits).unwrap().to_vec_f64();
    for chunk_rows in [rows, 8] {
        let got = hidden.head_cross_entropy_chunked(&weight, &targets, ignore_id, chunk_rows).unwrap();
        let got = got.to_scalar().unwrap();
        let (gh, gw) = Tensor::head_cross_entropy_backward_chunked(
            &hidden, &weight, &targets, ignore_id, 1.0, chunk_rows,
        )
        .unwrap();
        if chunk_rows == rows {
            assert_eq!(got.to_bits(), want.to_bits(), "one block: loss {got} vs {want}");
            assert_eq!(gh.to_vec_f64(), want_gh, "one block: d hidden");
            assert_eq!(gw.to_vec_f64(), want_gw, "one block: d weight");
            continue;
        }
        assert!((got - want).abs() <= 1e-6 * want.abs(), "blocks of {chunk_rows}: loss {got} vs {want}");
        for (what, got, want) in
            [("d hidden", gh.to_vec_f64(), &want_gh), ("d weight", gw.to_vec_f64(), &want_gw)]
        {
            let scale = want.iter().fold(0f64, |m, &x| m.max(x.abs()));
            let err = got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-6 * scale, "blocks of {chunk_rows}: {what} error {err:e} (scale {scale:e})");
        }
    }
}

/// The gradients the fused head + loss forms in its forward (what a tape records) against its separate
/// backward, in f32: the same kernels on the same logits in the same order, so with a loss gradient of 1
/// the loss and both gradients match bit for bit, in one block and in blocks of 8 (with an ignored target
/// in every fourth row), and an unwanted gradient is not formed. Through the tape under an upstream
/// scale of 0.37 the recorded gradients are the unit ones times 0.37, once rounded, against the backward
/// that folds 0.37 into the logits' gradient: each logit gradient then differs by up to 1 f32 ulp (6e-8
/// relative), and a gradient entry sums 1000 (d hidden) or 28 (d weight) such products with
/// cancellation, so the difference is bounded relative to the sum of the terms' magnitudes, not to the
/// entry: `<= 2e-6` of the largest entry (8e-7 measured).
#[test]
fn head_cross_entropy_with_grads_matches_its_backward() {
    let (hidden, weight, targets, ignore_id, rows) = head_loss_case(22);
    for chunk_rows in [rows, 8] {
        let want = hidden.head_cross_entropy_chunked(&weight, &targets, ignore_id, chunk_rows).unwrap();
        let (want_gh, want_gw) = Tensor::head_cross_entropy_backward_chunked(
            &hidden, &weight, &targets, ignore_id, 1.0, chunk_rows,
        )
        .unwrap();
        let got = hidden
            .head_cross_entropy_with_grads_chunked(&weight, &targets, ignore_id, true, true, chunk_rows)
            .unwrap();
        let bits = |t: &Tensor| t.to_scalar().unwrap().to_bits();
        assert_eq!(bits(&got.loss), bits(&want), "blocks of {chunk_rows}: loss");
        assert_eq!(got.grad_hidden.unwrap().to_vec_f64(), want_gh.to_vec_f64(), "blocks of {chunk_rows}");
        assert_eq!(got.grad_weight.unwrap().to_vec_f64(), want_gw.to_vec_f64(), "blocks of {chunk_rows}");
        let only_weight = hidden
            .head_cross_entropy_with_grads_chunked(&weight, &targets, ignore_id, false, true, chunk_rows)
            .unwrap();
        assert!(only_weight.grad_hidden.is_none());
        assert_eq!(only_weight.grad_weight.unwrap().to_vec_f64(), want_gw.to_vec_f64());
    }

    let scale = 0.37;
    let mut tape = Tape::new();
    let (h, w) = (tape.leaf(hidden.clone(), true), tape.leaf(weight.clone(), true));
    let loss = tape.head_cross_entropy(&h, &w, &targets, ignore_id).unwrap();
    let scaled = tape.mul_scalar(&loss, scale).unwrap();
    let grads = tape.backward(scaled).unwrap();
    let (want_gh, want_gw) =
        Tensor::head_cross_entropy_backward(&hidden, &weight, &targets, ignore_id, scale).unwrap();
    for (what, got, want) in [("d hidden", grads.get(h), want_gh), ("d weight", grads.get(w), want_gw)] {
        let (got, want) = (got.unwrap().to_vec_f64(), want.to_vec_f64());
        let largest = want.iter().fold(0f64, |m, &x| m.max(x.abs()));
        let err = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 2e-6 * largest, "tape, scale {scale}: {what} error {err:e} (largest {largest:e})");
    }
}

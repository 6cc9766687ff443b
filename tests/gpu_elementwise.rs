//! GPU elementwise, reduction, optimizer and concat ops against the CPU ops on the same inputs.
//!
//! Inputs are random (`Rng` + `Tensor::randn`) with sizes 1, 7, 33, 1000 and odd shapes, and come in four
//! forms: contiguous, transposed, narrowed and broadcast views (the GPU tensor is the same view of the
//! uploaded base tensor). Every GPU result must be on the GPU, have the CPU result's shape and dtype, and
//! agree elementwise: `|gpu - cpu| <= tol * mag`.
//! - `mag` is `max(1, |cpu|)` (a relative error above 1, an absolute one below) except for sums, where it is
//!   `max(1, sum of |terms|)`: the classic bound `|fl(sum) - sum| <= k u sum|terms|`. The GPU sums in f32
//!   (each thread a strided chain of at most `cols / 32` terms, then a 256-way tree: k <= 40 here) while
//!   the CPU sums in f64.
//! - f32: `tol = 1e-5`. The elementwise kernels round like the CPU kernels (no fused multiply-adds), so
//!   +, -, *, /, the AdamW step and the identity-gated product agree to the bit; exp and log (and so silu
//!   and the SiLU-gated product) differ by a few ulps (u = 6e-8); sums stay within 40 u = 2.4e-6.
//! - bf16: `tol = 1e-2`. Both sides compute in f32 from the same bf16 values and round once to bf16
//!   (8 significant bits: one ulp is 2^-8 = 3.9e-3 relative), so results differ by at most an ulp.
//! - squared norm (a sum of positive terms): relative `1e-5` against the CPU's f64 value.
//!
//! Without a CUDA device every test prints `skipped: no CUDA device` and returns.
#![cfg(feature = "cuda")]
use cola_tensor::ops::optim::AdamWStep;
use cola_tensor::{BinaryOp, DType, GateActivation, Rng, Tensor, UnaryOp};

mod common;
use common::gpu::{have_gpu, tol, GPU};

/// Asserts that `got` (GPU) matches `want` (CPU): `|got - want| <= tol * mag`, with `mag` given per
/// element or `max(1, |want|)`.
fn check(what: &str, got: &Tensor, want: &Tensor, tol: f64, mag: Option<&[f64]>) {
    assert_eq!(got.device(), GPU, "{what}: result is not on the GPU");
    assert_eq!(got.shape(), want.shape(), "{what}: shape differs from the CPU result");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype differs from the CPU result");
    let (g, w) = (got.to_vec_f64(), want.to_vec_f64());
    assert_eq!(g.len(), w.len(), "{what}: element count differs (download failed?)");
    let mut worst = (0.0f64, 0usize);
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let m = mag.map_or(1f64.max(b.abs()), |m| m[i].max(1.0));
        let err = if a.is_nan() && b.is_nan() { 0.0 } else { (a - b).abs() / m };
        if err > worst.0 || err.is_nan() {
            worst = (if err.is_nan() { f64::INFINITY } else { err }, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= tol,
        "{what}: shape {:?} {:?}: max scaled error {:.3e} > {tol:e} at element {i}: gpu {} cpu {}",
        got.shape(),
        got.dtype(),
        worst.0,
        g.get(i).copied().unwrap_or(f64::NAN),
        w.get(i).copied().unwrap_or(f64::NAN),
    );
}

/// The form of an input tensor.
#[derive(Clone, Copy, Debug)]
enum View {
    Contiguous,
    /// The last two dims of a contiguous base swapped (rank >= 2).
    Transposed,
    /// Elements 2.. of a base whose last dim is 5 longer.
    Narrowed,
    /// A base with first dim 1 broadcast to the shape.
    Broadcast,
}

/// How input values are drawn.
#[derive(Clone, Copy, Debug)]
enum Values {
    Normal,
    /// Normal with standard deviation 30 (exercises saturation of exp-based functions).
    Wide,
    /// Uniform in (0.1, 4) (logarithm inputs).
    Positive,
    /// Uniform in (0.5, 2) (divisors).
    Divisor,
}

/// The same tensor of `shape`, in the form `view`, on the CPU and on the GPU.
fn input(shape: &[usize], view: View, values: Values, dtype: DType, rng: &mut Rng) -> (Tensor, Tensor) {
    let rank = shape.len();
    let mut base_shape = shape.to_vec();
    match view {
        View::Contiguous => {}
        View::Transposed => base_shape.swap(rank - 2, rank - 1),
        View::Narrowed => base_shape[rank - 1] += 5,
        View::Broadcast => base_shape[0] = 1,
    }
    let base = match values {
        Values::Normal => Tensor::randn(&base_shape, 0.0, 1.0, dtype, rng),
        Values::Wide => Tensor::randn(&base_shape, 0.0, 30.0, dtype, rng),
        Values::Positive => Tensor::rand_uniform(&base_shape, 0.1, 4.0, dtype, rng),
        Values::Divisor => Tensor::rand_uniform(&base_shape, 0.5, 2.0, dtype, rng),
    };
    let form = |t: &Tensor| -> Tensor {
        match view {
            View::Contiguous => t.clone(),
            View::Transposed => t.transpose(-2, -1).unwrap(),
            View::Narrowed => t.narrow(-1, 2, shape[rank - 1]).unwrap(),
            View::Broadcast => t.broadcast_to(shape).unwrap(),
        }
    };
    let gpu_base = base.to_device(GPU).unwrap_or_else(|e| panic!("upload of {base_shape:?}: {e}"));
    let (cpu, gpu) = (form(&base), form(&gpu_base));
    assert_eq!(cpu.shape(), shape);
    (cpu, gpu)
}

/// `max(1, sum of |x|)` over the elements each output of `reduce` sums (`reduce` run on `|x|` on the CPU).
fn sum_magnitude(x: &Tensor, reduce: impl Fn(&Tensor) -> Tensor) -> Vec<f64> {
    let abs: Vec<f64> = x.to_vec_f64().iter().map(|v| v.abs()).collect();
    reduce(&Tensor::from_vec(abs, x.shape()).unwrap()).to_vec_f64()
}

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

#[test]
fn binary_ops_broadcast_over_views() {
    if !have_gpu() {
        return;
    }
    use View::*;
    let cases: &[(&[usize], View, &[usize], View)] = &[
        (&[1], Contiguous, &[1], Contiguous),
        (&[7], Contiguous, &[7], Contiguous),
        (&[1000], Contiguous, &[1], Contiguous),
        (&[], Contiguous, &[7, 33], Contiguous),
        (&[33, 7], Transposed, &[7], Contiguous),
        (&[33, 7], Narrowed, &[33, 1], Contiguous),
        (&[33, 1], Contiguous, &[1, 7], Contiguous),
        (&[4, 33, 7], Broadcast, &[4, 33, 7], Transposed),
        (&[3, 1, 33], Contiguous, &[5, 1], Contiguous),
        (&[33, 1000], Contiguous, &[1000], Narrowed),
        (&[7, 33, 1000], Transposed, &[7, 33, 1000], Contiguous),
    ];
    let mut rng = Rng::new(11);
    for dtype in DTYPES {
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            for &(sa, va, sb, vb) in cases {
                let rhs_values = if op == BinaryOp::Div { Values::Divisor } else { Values::Normal };
                let (a, ga) = input(sa, va, Values::Normal, dtype, &mut rng);
                let (b, gb) = input(sb, vb, rhs_values, dtype, &mut rng);
                let what = format!("{} {sa:?} {va:?} with {sb:?} {vb:?}", op.name());
                let got = ga.binary(op, &gb).unwrap_or_else(|e| panic!("{what}: {e}"));
                check(&what, &got, &a.binary(op, &b).unwrap(), tol(dtype), None);
            }
        }
    }
}

#[test]
fn binary_ops_refuse_mixed_devices() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(12);
    let (a, ga) = input(&[7], View::Contiguous, Values::Normal, DType::F32, &mut rng);
    assert!(ga.add(&a).is_err(), "GPU + CPU must be an error");
    assert!(ga.add(&ga.to_dtype(DType::BF16).unwrap()).is_err(), "f32 + bf16 must be an error");
}

const UNARY_CASES: &[(&[usize], View)] = &[
    (&[1], View::Contiguous),
    (&[7], View::Contiguous),
    (&[], View::Contiguous),
    (&[1000], View::Contiguous),
    (&[33, 7], View::Transposed),
    (&[33, 1000], View::Narrowed),
    (&[4, 33, 7], View::Broadcast),
    (&[7, 33, 1000], View::Transposed),
];

#[test]
fn unary_ops_match_cpu() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(21);
    let ops = [
        (UnaryOp::Neg, Values::Normal),
        (UnaryOp::Exp, Values::Normal),
        (UnaryOp::Log, Values::Positive),
        (UnaryOp::Silu, Values::Normal),
        (UnaryOp::Silu, Values::Wide),
    ];
    for dtype in DTYPES {
        for (op, values) in ops {
            for &(shape, view) in UNARY_CASES {
                let (x, gx) = input(shape, view, values, dtype, &mut rng);
                let what = format!("{} {shape:?} {view:?} {values:?}", op.name());
                let got = gx.unary(op).unwrap_or_else(|e| panic!("{what}: {e}"));
                check(&what, &got, &x.unary(op).unwrap(), tol(dtype), None);
            }
        }
    }
}

#[test]
fn affine_matches_cpu() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(31);
    for dtype in DTYPES {
        for (scale, shift) in [(0.37, -1.25), (1.0, 0.0), (-3.0, 0.5)] {
            for &(shape, view) in UNARY_CASES {
                let (x, gx) = input(shape, view, Values::Normal, dtype, &mut rng);
                let what = format!("affine({scale}, {shift}) {shape:?} {view:?}");
                let got = gx.affine(scale, shift).unwrap_or_else(|e| panic!("{what}: {e}"));
                check(&what, &got, &x.affine(scale, shift).unwrap(), tol(dtype), None);
            }
        }
    }
}

#[test]
fn silu_backward_matches_cpu() {
    if !have_gpu() {
        return;
    }
    use View::*;
    let cases: &[(&[usize], View, View)] = &[
        (&[1], Contiguous, Contiguous),
        (&[7], Contiguous, Narrowed),
        (&[1000], Contiguous, Contiguous),
        (&[33, 7], Transposed, Contiguous),
        (&[33, 1000], Narrowed, Transposed),
        (&[4, 33, 7], Broadcast, Contiguous),
    ];
    let mut rng = Rng::new(41);
    for dtype in DTYPES {
        for values in [Values::Normal, Values::Wide] {
            for &(shape, vx, vg) in cases {
                let (x, gx) = input(shape, vx, values, dtype, &mut rng);
                let (g, gg) = input(shape, vg, Values::Normal, dtype, &mut rng);
                let what = format!("silu_backward {shape:?} x {vx:?} {values:?}, grad {vg:?}");
                let got = Tensor::silu_backward(&gx, &gg).unwrap_or_else(|e| panic!("{what}: {e}"));
                check(&what, &got, &Tensor::silu_backward(&x, &g).unwrap(), tol(dtype), None);
            }
        }
    }
}

/// The fused gated product `act(gate) * up` and its one-pass backward, both activations; the GPU kernels
/// use the CPU kernel's order of operations, so f32 differs only through `exp` (a few ulps).
#[test]
fn gated_matches_cpu() {
    if !have_gpu() {
        return;
    }
    use View::*;
    let cases: &[(&[usize], View, View, View)] = &[
        (&[1], Contiguous, Contiguous, Contiguous),
        (&[7], Contiguous, Narrowed, Contiguous),
        (&[1000], Contiguous, Contiguous, Contiguous),
        (&[33, 7], Transposed, Contiguous, Narrowed),
        (&[33, 1000], Narrowed, Transposed, Contiguous),
        (&[4, 33, 7], Broadcast, Contiguous, Transposed),
        (&[3, 5, 1001], Contiguous, Contiguous, Contiguous),
    ];
    let mut rng = Rng::new(45);
    for dtype in DTYPES {
        for activation in [GateActivation::Silu, GateActivation::Identity] {
            for values in [Values::Normal, Values::Wide] {
                for &(shape, vg, vu, vd) in cases {
                    let (gate, g_gate) = input(shape, vg, values, dtype, &mut rng);
                    let (up, g_up) = input(shape, vu, Values::Normal, dtype, &mut rng);
                    let (grad, g_grad) = input(shape, vd, Values::Normal, dtype, &mut rng);
                    let what = format!("gated {activation:?} {shape:?} gate {vg:?} {values:?}, up {vu:?}");
                    let got = g_gate.gated(&g_up, activation).unwrap_or_else(|e| panic!("{what}: {e}"));
                    check(&what, &got, &gate.gated(&up, activation).unwrap(), tol(dtype), None);
                    let (got_gate, got_up) = Tensor::gated_backward(&g_gate, &g_up, &g_grad, activation)
                        .unwrap_or_else(|e| panic!("{what} backward: {e}"));
                    let (want_gate, want_up) = Tensor::gated_backward(&gate, &up, &grad, activation).unwrap();
                    check(&format!("{what} grad_gate, grad {vd:?}"), &got_gate, &want_gate, tol(dtype), None);
                    check(&format!("{what} grad_up, grad {vd:?}"), &got_up, &want_up, tol(dtype), None);
                }
            }
        }
    }
    let (gate, up) =
        (input(&[7], Contiguous, Values::Normal, DType::F32, &mut rng).1, Tensor::zeros(&[7], DType::F32));
    assert!(gate.gated(&up, GateActivation::Silu).is_err(), "GPU gate with a CPU up must be an error");
}

#[test]
fn sum_and_mean_match_cpu() {
    if !have_gpu() {
        return;
    }
    use View::*;
    let cases: &[(&[usize], View, &[isize])] = &[
        (&[1], Contiguous, &[]),
        (&[7], Contiguous, &[]),
        (&[7], Contiguous, &[0]),
        (&[], Contiguous, &[]),
        (&[33, 1000], Contiguous, &[1]),
        (&[33, 1000], Contiguous, &[0]),
        (&[33, 1000], Narrowed, &[]),
        (&[4, 7, 33], Contiguous, &[0, 2]),
        (&[4, 7, 33], Transposed, &[1]),
        (&[4, 7, 33], Broadcast, &[-1]),
        (&[4, 7, 33], Contiguous, &[0]),
        (&[33, 7], Transposed, &[0]),
        (&[33, 7], Transposed, &[1]),
        (&[2, 3, 4, 5], Contiguous, &[1, 3]),
        (&[70000, 3], Contiguous, &[-1]),
        (&[3, 4000], Contiguous, &[-1]),
    ];
    let mut rng = Rng::new(51);
    for dtype in DTYPES {
        for &(shape, view, axes) in cases {
            for keepdim in [false, true] {
                let (x, gx) = input(shape, view, Values::Normal, dtype, &mut rng);
                let what = format!("sum {shape:?} {view:?} axes {axes:?} keepdim {keepdim}");
                let got = gx.sum(axes, keepdim).unwrap_or_else(|e| panic!("{what}: {e}"));
                let mag = sum_magnitude(&x, |t| t.sum(axes, keepdim).unwrap());
                check(&what, &got, &x.sum(axes, keepdim).unwrap(), tol(dtype), Some(&mag));

                let what = format!("mean {shape:?} {view:?} axes {axes:?} keepdim {keepdim}");
                let got = gx.mean(axes, keepdim).unwrap_or_else(|e| panic!("{what}: {e}"));
                let mag = sum_magnitude(&x, |t| t.mean(axes, keepdim).unwrap());
                check(&what, &got, &x.mean(axes, keepdim).unwrap(), tol(dtype), Some(&mag));
            }
        }
    }
}

#[test]
fn sum_of_empty_axes_is_zero() {
    if !have_gpu() {
        return;
    }
    let x = Tensor::zeros(&[0, 7], DType::F32);
    let got = x.to_device(GPU).unwrap().sum(&[0], false).unwrap();
    check("sum [0, 7] axes [0]", &got, &x.sum(&[0], false).unwrap(), 0.0, None);
}

#[test]
fn sum_to_shape_matches_cpu() {
    if !have_gpu() {
        return;
    }
    use View::*;
    let cases: &[(&[usize], View, &[usize])] = &[
        (&[33, 7], Contiguous, &[7]),
        (&[33, 7], Transposed, &[1, 7]),
        (&[33, 7], Contiguous, &[33, 1]),
        (&[33, 7], Contiguous, &[33, 7]),
        (&[4, 7, 33], Narrowed, &[7, 1]),
        (&[4, 7, 33], Contiguous, &[1, 1, 1]),
        (&[4, 7, 33], Broadcast, &[33]),
        (&[2, 3, 4, 5], Contiguous, &[3, 1, 5]),
        (&[8, 1000], Contiguous, &[1000]),
    ];
    let mut rng = Rng::new(61);
    for dtype in DTYPES {
        for &(shape, view, target) in cases {
            let (x, gx) = input(shape, view, Values::Normal, dtype, &mut rng);
            let what = format!("sum_to_shape {shape:?} {view:?} -> {target:?}");
            let got = gx.sum_to_shape(target).unwrap_or_else(|e| panic!("{what}: {e}"));
            let mag = sum_magnitude(&x, |t| t.sum_to_shape(target).unwrap());
            check(&what, &got, &x.sum_to_shape(target).unwrap(), tol(dtype), Some(&mag));
        }
    }
}

fn hyper(step: u64) -> AdamWStep {
    AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step }
}

const ADAMW_CASES: &[(&[usize], View)] = &[
    (&[1], View::Contiguous),
    (&[7], View::Contiguous),
    (&[33, 7], View::Contiguous),
    (&[33, 7], View::Transposed),
    (&[33, 1000], View::Narrowed),
    (&[1000], View::Contiguous),
];

#[test]
fn adamw_f32_steps_match_cpu() {
    if !have_gpu() {
        return;
    }
    let mut rng = Rng::new(71);
    for &(shape, view) in ADAMW_CASES {
        let (mut p, mut gp) = input(shape, view, Values::Normal, DType::F32, &mut rng);
        let initial = p.to_vec_f64();
        // A second handle on the GPU parameter's storage: the step must not change it.
        let alias = gp.clone();
        let mut m = Tensor::zeros(shape, DType::F32);
        let mut v = Tensor::zeros(shape, DType::F32);
        let (mut gm, mut gv) = (m.to_device(GPU).unwrap(), v.to_device(GPU).unwrap());
        for step in 1..=5 {
            let (g, gg) = input(shape, view, Values::Normal, DType::F32, &mut rng);
            let what = format!("adamw_step f32 {shape:?} {view:?} step {step}");
            Tensor::adamw_step(&mut gp, &gg, &mut gm, &mut gv, hyper(step))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            Tensor::adamw_step(&mut p, &g, &mut m, &mut v, hyper(step)).unwrap();
            check(&format!("{what} param"), &gp, &p, tol(DType::F32), None);
            check(&format!("{what} m"), &gm, &m, tol(DType::F32), None);
            check(&format!("{what} v"), &gv, &v, tol(DType::F32), None);
        }
        assert_eq!(
            alias.to_vec_f64(),
            initial,
            "adamw_step {shape:?} {view:?} changed a tensor sharing the param"
        );
    }
}

#[test]
fn adamw_pure_bf16_steps_match_cpu_rounding_each_step() {
    if !have_gpu() {
        return;
    }
    // The CPU refuses bf16 parameters, so the reference runs the f32 step on the bf16 values and rounds
    // param, m and v to bf16 after each step: exactly what the GPU kernel does (f32 math, one rounding).
    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    let mut rng = Rng::new(81);
    for &(shape, view) in ADAMW_CASES {
        let (p, mut gp) = input(shape, view, Values::Normal, DType::BF16, &mut rng);
        let mut p = p.to_dtype(DType::F32).unwrap();
        let mut m = Tensor::zeros(shape, DType::F32);
        let mut v = Tensor::zeros(shape, DType::F32);
        let mut gm = Tensor::zeros(shape, DType::BF16).to_device(GPU).unwrap();
        let mut gv = Tensor::zeros(shape, DType::BF16).to_device(GPU).unwrap();
        for step in 1..=5 {
            let (g, gg) = input(shape, view, Values::Normal, DType::BF16, &mut rng);
            let what = format!("adamw_step bf16 {shape:?} {view:?} step {step}");
            Tensor::adamw_step(&mut gp, &gg, &mut gm, &mut gv, hyper(step))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            Tensor::adamw_step(&mut p, &g.to_dtype(DType::F32).unwrap(), &mut m, &mut v, hyper(step))
                .unwrap();
            (p, m, v) = (round(&p), round(&m), round(&v));
            let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
            check(&format!("{what} param"), &gp, &bf(&p), tol(DType::BF16), None);
            check(&format!("{what} m"), &gm, &bf(&m), tol(DType::BF16), None);
            check(&format!("{what} v"), &gv, &bf(&v), tol(DType::BF16), None);
        }
    }
}

#[test]
fn squared_norm_matches_cpu() {
    if !have_gpu() {
        return;
    }
    use View::*;
    let cases: &[(&[usize], View)] = &[
        (&[1], Contiguous),
        (&[7], Contiguous),
        (&[1000], Contiguous),
        (&[33, 7], Transposed),
        (&[33, 1000], Narrowed),
        (&[300_000], Contiguous),
        (&[4, 33, 7], Broadcast),
    ];
    let mut rng = Rng::new(91);
    for dtype in DTYPES {
        for &(shape, view) in cases {
            let (x, gx) = input(shape, view, Values::Normal, dtype, &mut rng);
            let what = format!("squared_norm {shape:?} {view:?} {dtype:?}");
            let got = gx.squared_norm().unwrap_or_else(|e| panic!("{what}: {e}"));
            let want = x.squared_norm().unwrap();
            let err = (got - want).abs() / want;
            assert!(err <= 1e-5, "{what}: gpu {got} cpu {want}: relative error {err:.3e} > 1e-5");
        }
    }
}

/// One input of a concatenation: its shape and form.
type Part = (&'static [usize], View);

#[test]
fn concat_matches_cpu() {
    if !have_gpu() {
        return;
    }
    use View::*;
    let cases: &[(&[Part], isize)] = &[
        (&[(&[3, 7], Contiguous), (&[5, 7], Transposed), (&[1, 7], Contiguous)], 0),
        (&[(&[4, 3], Narrowed), (&[4, 1], Contiguous), (&[4, 33], Broadcast)], -1),
        (&[(&[2, 3, 4], Contiguous), (&[2, 5, 4], Transposed), (&[2, 0, 4], Contiguous)], 1),
        (&[(&[1000], Contiguous), (&[7], Narrowed)], 0),
    ];
    let mut rng = Rng::new(101);
    for dtype in DTYPES {
        for &(parts, axis) in cases {
            let (cpu, gpu): (Vec<Tensor>, Vec<Tensor>) = parts
                .iter()
                .map(|&(shape, view)| input(shape, view, Values::Normal, dtype, &mut rng))
                .unzip();
            let what = format!("concat axis {axis} of {parts:?}");
            let got = Tensor::concat(&gpu, axis).unwrap_or_else(|e| panic!("{what}: {e}"));
            check(&what, &got, &Tensor::concat(&cpu, axis).unwrap(), 0.0, None);
        }
    }
}

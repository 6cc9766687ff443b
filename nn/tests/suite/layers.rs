//! Each layer against its equation computed with plain tensor ops, and the whole model's gradient against
//! f64 central differences.
use cola_autograd::{Parameter, Tape};
use cola_nn::{ColaLinear, Init, Linear, Llama, LlamaConfig, Mlp, Module, RmsNorm};
use cola_tensor::{DType, Rng, Tensor};

fn input(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F64, &mut Rng::new(seed))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.to_vec_f64().iter().zip(b.to_vec_f64()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn run(
    x: &Tensor,
    f: impl FnOnce(&mut Tape, cola_autograd::Var) -> cola_nn::Result<cola_autograd::Var>,
) -> Tensor {
    let mut tape = Tape::new();
    let x = tape.constant(x.clone());
    let y = f(&mut tape, x).unwrap();
    tape.value(y).unwrap().clone()
}

#[test]
fn cola_linear_is_silu_of_x_a_times_b() {
    let mut rng = Rng::new(1);
    let layer = ColaLinear::new("p", 12, 20, 4, DType::F64, &mut Init::Random(&mut rng));
    assert_eq!((layer.in_features(), layer.rank(), layer.out_features()), (12, 4, 20));
    assert_eq!((layer.a().name(), layer.b().name()), ("p.cola_a", "p.cola_b"));
    let x = input(&[2, 3, 12], 2);
    let y = run(&x, |tape, x| layer.forward(tape, &x));
    let expected = x.matmul(layer.a().value()).unwrap().silu().unwrap().matmul(layer.b().value()).unwrap();
    assert_eq!(y.shape(), &[2, 3, 20]);
    assert!(max_abs_diff(&y, &expected) < 1e-12);
}

#[test]
fn linear_is_x_w() {
    let layer = Linear::new("p", 6, 9, DType::F64, &mut Init::Random(&mut Rng::new(3)));
    assert_eq!(layer.weight().value().shape(), &[6, 9]);
    let x = input(&[4, 6], 4);
    let y = run(&x, |tape, x| layer.forward(tape, &x));
    assert!(max_abs_diff(&y, &x.matmul(layer.weight().value()).unwrap()) < 1e-12);
}

#[test]
fn rms_norm_scales_rows_to_unit_rms() {
    let norm = RmsNorm::new("n", 8, 1e-6, DType::F64);
    let x = input(&[3, 8], 5).mul_scalar(7.0).unwrap();
    let y = run(&x, |tape, x| norm.forward(tape, &x)).to_vec_f64();
    for row in y.chunks(8) {
        let rms = (row.iter().map(|v| v * v).sum::<f64>() / 8.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6, "{rms}");
    }
}

#[test]
fn mlp_follows_the_gate_silu_flag() {
    for gate_silu in [true, false] {
        let config = LlamaConfig { mlp_gate_silu: gate_silu, ..LlamaConfig::preset("cola-tiny").unwrap() };
        let mlp = Mlp::new("mlp", &config, DType::F64, &mut Init::Random(&mut Rng::new(6)));
        let p: Vec<&Parameter> = mlp.parameters();
        let cola = |x: &Tensor, a: &Parameter, b: &Parameter| {
            x.matmul(a.value()).unwrap().silu().unwrap().matmul(b.value()).unwrap()
        };
        let x = input(&[2, 5, 32], 7);
        let mut gate = cola(&x, p[0], p[1]);
        if gate_silu {
            gate = gate.silu().unwrap();
        }
        let expected = cola(&gate.mul(&cola(&x, p[2], p[3])).unwrap(), p[4], p[5]);
        let y = run(&x, |tape, x| mlp.forward(tape, &x));
        assert!(max_abs_diff(&y, &expected) < 1e-12, "gate_silu {gate_silu}");
    }
}

#[test]
fn zero_init_draws_nothing() {
    let config = LlamaConfig::preset("cola-tiny").unwrap();
    let model = Llama::build(config, DType::F32, &mut Init::Zeros).unwrap();
    for p in model.parameters() {
        let expected = if p.name().contains("norm") { 1.0 } else { 0.0 };
        assert!(p.value().to_vec_f64().iter().all(|&v| v == expected), "{}", p.name());
    }
}

/// Central differences with step 1e-5 on an f64 model: truncation error ~ h^2 |f'''| ~ 1e-10, rounding
/// ~ 1e-16 / 1e-5 ~ 1e-11, so an agreement to 1e-6 (absolute plus relative) checks every backward rule the
/// model uses.
#[test]
fn model_gradient_matches_finite_differences() {
    for name in ["cola-tiny", "full-tiny"] {
        let config = LlamaConfig { pad_id: 3, ..LlamaConfig::preset(name).unwrap() };
        let mut model = Llama::with_dtype(config, DType::F64, &mut Rng::new(8)).unwrap();
        let ids: Vec<u32> = vec![5, 9, 3, 17, 60, 3, 3, 3, 1, 3, 2, 40, 41, 42, 3, 7];
        let (batch, seq) = (2, 8);
        let loss_of = |model: &Llama| {
            let mut tape = Tape::new();
            let loss = model.loss(&mut tape, &ids, batch, seq).unwrap();
            tape.value(loss).unwrap().to_scalar().unwrap()
        };
        let mut tape = Tape::new();
        let loss = model.loss(&mut tape, &ids, batch, seq).unwrap();
        let grads = tape.backward(loss).unwrap();
        let analytic: Vec<Vec<f64>> =
            model.parameters().iter().map(|p| grads.param(p.id()).unwrap().to_vec_f64()).collect();
        let h = 1e-5;
        for (index, grad) in analytic.iter().enumerate() {
            let numel = model.parameters()[index].value().numel();
            for k in [0, numel / 3, numel - 1] {
                let perturbed = |model: &mut Llama, delta: f64| {
                    let p = &mut model.parameters_mut()[index];
                    let mut v = p.value().to_vec::<f64>().unwrap();
                    v[k] += delta;
                    let value = Tensor::from_vec(v, p.value().shape()).unwrap();
                    p.set_value(value);
                };
                perturbed(&mut model, h);
                let up = loss_of(&model);
                perturbed(&mut model, -2.0 * h);
                let down = loss_of(&model);
                perturbed(&mut model, h);
                let numeric = (up - down) / (2.0 * h);
                let got = grad[k];
                let name = model.parameters()[index].name().to_string();
                assert!(
                    (got - numeric).abs() < 1e-6 * (1.0 + numeric.abs()),
                    "{name}[{k}]: {got} vs {numeric}"
                );
            }
        }
        // Row 3 of the table is the pad row: its gradient is exactly zero even though it is looked up.
        assert!(analytic[0][3 * 32..4 * 32].iter().all(|&v| v == 0.0));
        assert!(analytic[0][5 * 32..6 * 32].iter().any(|&v| v != 0.0));
    }
}

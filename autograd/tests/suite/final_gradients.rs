//! The backward hook ([`Tape::backward_with`]) hands each parameter's gradient over once, as soon as no
//! later step of backward adds to it: parameters read only by late nodes come first, a tied parameter
//! (recorded twice) once after its earliest reader with the sum over both leaves, and a parameter that
//! no path from the loss reaches never. What it hands over is the returned gradient bit for bit (the
//! same additions in the same order), so the comparisons are exact. An error of the hook stops backward
//! and comes back as the caller's error. Runs in well under a second.
use cola_autograd::{AutogradError, Graph, ParamId, Parameter, Tape};
use cola_tensor::{DType, Rng, Tensor, TensorError};

struct Model {
    w1: Parameter,
    w2: Parameter,
    tied: Parameter,
    unused: Parameter,
}

fn model() -> Model {
    let mut rng = Rng::new(11);
    let mut p = |name: &str, shape: &[usize]| {
        Parameter::new(name, Tensor::randn(shape, 0.0, 1.0, DType::F64, &mut rng))
    };
    Model { w1: p("w1", &[4, 4]), w2: p("w2", &[4, 3]), tied: p("tied", &[3, 3]), unused: p("unused", &[2]) }
}

/// `sum(((silu(x w1) w2) tied) tied)`: node 0 reads w1, node 2 w2, nodes 3 and 4 the two leaves of
/// `tied`; `unused` is recorded and read by nothing.
fn record(tape: &mut Tape, m: &Model) -> cola_autograd::Var {
    let x = tape.constant(Tensor::randn(&[2, 4], 0.0, 1.0, DType::F64, &mut Rng::new(5)));
    let w1 = tape.param(&m.w1);
    let a = tape.matmul(&x, &w1).unwrap();
    let b = tape.silu(&a).unwrap();
    let w2 = tape.param(&m.w2);
    let c = tape.matmul(&b, &w2).unwrap();
    let t1 = tape.param(&m.tied);
    let d = tape.matmul(&c, &t1).unwrap();
    let _ = tape.param(&m.unused);
    let t2 = tape.param(&m.tied);
    let e = tape.matmul(&d, &t2).unwrap();
    tape.sum(&e, &[], false).unwrap()
}

#[derive(Debug)]
enum HookError {
    /// Read through `Debug` when an `unwrap` fails.
    #[allow(dead_code)]
    Autograd(AutogradError),
    Stop(ParamId),
}

impl From<AutogradError> for HookError {
    fn from(e: AutogradError) -> Self {
        HookError::Autograd(e)
    }
}

impl From<TensorError> for HookError {
    fn from(e: TensorError) -> Self {
        HookError::Autograd(e.into())
    }
}

#[test]
fn each_parameter_is_handed_over_once_when_final_with_its_returned_gradient() {
    let m = model();
    let mut tape = Tape::new();
    let loss = record(&mut tape, &m);
    let mut handed: Vec<(ParamId, Vec<f64>)> = Vec::new();
    let grads = tape
        .backward_with(loss, |id, g| {
            handed.push((id, g.to_vec_f64()));
            Ok::<(), HookError>(())
        })
        .unwrap();
    let order: Vec<ParamId> = handed.iter().map(|(id, _)| *id).collect();
    assert_eq!(order, [m.tied.id(), m.w2.id(), m.w1.id()], "latest readers first, each once");
    for (id, g) in &handed {
        assert_eq!(&grads.param(*id).unwrap().to_vec_f64(), g);
    }
    assert!(grads.param(m.unused.id()).is_none());

    let mut plain_tape = Tape::new();
    let loss = record(&mut plain_tape, &m);
    let plain = plain_tape.backward(loss).unwrap();
    for p in [&m.w1, &m.w2, &m.tied] {
        assert_eq!(plain.param(p.id()).unwrap().to_vec_f64(), grads.param(p.id()).unwrap().to_vec_f64());
    }
}

#[test]
fn an_error_of_the_hook_stops_backward() {
    let m = model();
    let mut tape = Tape::new();
    let loss = record(&mut tape, &m);
    let mut calls = 0;
    let result = tape.backward_with(loss, |id, _| {
        calls += 1;
        Err(HookError::Stop(id))
    });
    assert!(matches!(result, Err(HookError::Stop(id)) if id == m.tied.id()));
    assert_eq!(calls, 1);
}

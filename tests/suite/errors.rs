//! Bad input is an error value of the right variant, never a panic: shapes, dtypes, axes, ids, element
//! counts, devices, and misuse of the tape.
use cola::autograd::Graph;
use cola::autograd::{AutogradError, Tape};
use cola::tensor::{DType, Device, Tensor, TensorError};
use proptest::prelude::*;

fn t64(shape: &[usize]) -> Tensor {
    Tensor::ones(shape, DType::F64)
}

fn t32(shape: &[usize]) -> Tensor {
    Tensor::ones(shape, DType::F32)
}

// ---------------------------------------------------------------------------------------------------
// Shapes.
// ---------------------------------------------------------------------------------------------------

#[test]
fn binary_ops_reject_shapes_that_do_not_broadcast() {
    let (a, b) = (t32(&[2, 3]), t32(&[4]));
    for result in [a.add(&b), a.sub(&b), a.mul(&b), a.div(&b), b.add(&a)] {
        assert!(matches!(result, Err(TensorError::ShapeMismatch { .. })), "{result:?}");
    }
    let r = t32(&[2, 3, 4]).mul(&t32(&[3, 1, 4]));
    assert!(matches!(r, Err(TensorError::ShapeMismatch { op: "mul", .. })), "{r:?}");
    let r = t32(&[3, 1]).broadcast_to(&[3, 2, 2]);
    assert!(matches!(r, Err(TensorError::ShapeMismatch { op: "broadcast_to", .. })), "{r:?}");
    let r = t32(&[2, 3]).broadcast_to(&[3]);
    assert!(matches!(r, Err(TensorError::ShapeMismatch { .. })), "{r:?}");
}

#[test]
fn matmul_rejects_bad_shapes() {
    let inner = t32(&[2, 3]).matmul(&t32(&[4, 5]));
    assert!(matches!(inner, Err(TensorError::ShapeMismatch { op: "matmul", .. })), "{inner:?}");
    for (a, b) in [(&[3][..], &[3, 2][..]), (&[2, 3], &[3]), (&[], &[1, 1])] {
        let r = t32(a).matmul(&t32(b));
        assert!(matches!(r, Err(TensorError::ShapeMismatch { op: "matmul", .. })), "{a:?} @ {b:?}: {r:?}");
    }
    let batch = t32(&[2, 3, 4]).matmul(&t32(&[3, 4, 5]));
    assert!(matches!(batch, Err(TensorError::ShapeMismatch { op: "matmul", .. })), "{batch:?}");
    // The message names the shapes.
    let message = inner.unwrap_err().to_string();
    assert!(message.contains("[2, 3]") && message.contains("[4, 5]"), "{message}");
}

#[test]
fn rms_norm_rejects_a_weight_of_the_wrong_shape() {
    let x = t32(&[2, 4]);
    for w in [&[3][..], &[5], &[1, 4], &[]] {
        let r = x.rms_norm(&t32(w), 1e-5);
        assert!(matches!(r, Err(TensorError::ShapeMismatch { op: "rms_norm", .. })), "weight {w:?}: {r:?}");
    }
    let r = t32(&[]).rms_norm(&t32(&[1]), 1e-5);
    assert!(matches!(r, Err(TensorError::ShapeMismatch { .. })), "{r:?}");
}

#[test]
fn attention_rejects_mismatched_q_k_v() {
    let q = t32(&[1, 3, 2, 4]);
    let kv = t32(&[1, 3, 2, 4]);
    let mismatch = |q: &Tensor, k: &Tensor, v: &Tensor| {
        let r = Tensor::attention(q, k, v, 0.5);
        assert!(
            matches!(r, Err(TensorError::ShapeMismatch { op: "attention", .. })),
            "{:?} {:?} {:?}: {r:?}",
            q.shape(),
            k.shape(),
            v.shape()
        );
    };
    mismatch(&q, &kv, &t32(&[1, 3, 2, 5])); // v differs from k
    mismatch(&q, &t32(&[1, 3, 2, 5]), &t32(&[1, 3, 2, 5])); // head_dim
    mismatch(&q, &t32(&[1, 3, 1, 4]), &t32(&[1, 3, 1, 4])); // heads
    mismatch(&q, &t32(&[2, 3, 2, 4]), &t32(&[2, 3, 2, 4])); // batch
    mismatch(&t32(&[1, 4, 2, 4]), &kv, &kv); // q longer than the keys
    let rank3 = Tensor::attention(&t32(&[3, 2, 4]), &kv, &kv, 0.5);
    assert!(matches!(rank3, Err(TensorError::InvalidArgument { op: "attention", .. })), "{rank3:?}");
}

#[test]
fn concat_rejects_mismatched_parts() {
    let r = Tensor::concat(&[t32(&[2, 3]), t32(&[2, 4])], 0);
    assert!(matches!(r, Err(TensorError::ShapeMismatch { op: "concat", .. })), "{r:?}");
    let r = Tensor::concat(&[t32(&[2, 3]), t32(&[2, 3, 1])], 1);
    assert!(matches!(r, Err(TensorError::ShapeMismatch { op: "concat", .. })), "{r:?}");
    let r = Tensor::concat(&[], 0);
    assert!(matches!(r, Err(TensorError::InvalidArgument { op: "concat", .. })), "{r:?}");
}

#[test]
fn rope_rejects_bad_shapes_and_positions() {
    let cases = [
        (t32(&[1, 2, 1, 3]), vec![0, 1]), // odd head_dim
        (t32(&[1, 2, 1, 4]), vec![0]),    // one position for two steps
        (t32(&[2, 1, 4]), vec![0, 1]),    // rank 3
    ];
    for (x, positions) in cases {
        let r = x.rope(&positions, 10_000.0);
        assert!(matches!(r, Err(TensorError::InvalidArgument { op: "rope", .. })), "{:?}: {r:?}", x.shape());
    }
}

// ---------------------------------------------------------------------------------------------------
// Dtypes and devices.
// ---------------------------------------------------------------------------------------------------

#[test]
fn mixing_dtypes_is_an_error() {
    let (a, b) = (t32(&[2, 2]), t64(&[2, 2]));
    let bf = Tensor::ones(&[2, 2], DType::BF16);
    let dtype_error = |r: cola::tensor::Result<Tensor>| {
        assert!(matches!(r, Err(TensorError::DTypeMismatch { .. })), "{r:?}");
    };
    dtype_error(a.add(&b));
    dtype_error(b.div(&a));
    dtype_error(a.mul(&bf));
    dtype_error(a.matmul(&b));
    dtype_error(Tensor::concat(&[a.clone(), b.clone()], 0));
    dtype_error(a.rms_norm(&t64(&[2]), 1e-5));
    let (q, q64) = (t32(&[1, 2, 1, 2]), t64(&[1, 2, 1, 2]));
    dtype_error(Tensor::attention(&q, &q64, &q64, 1.0));
    dtype_error(Tensor::attention(&q, &q, &q64, 1.0));
    // Reading elements as the wrong type.
    assert!(matches!(a.to_vec::<f64>(), Err(TensorError::DTypeMismatch { .. })));
    assert!(matches!(b.to_vec::<f32>(), Err(TensorError::DTypeMismatch { .. })));
    assert!(matches!(bf.contiguous_data::<f32>(), Err(TensorError::DTypeMismatch { .. })));
}

#[test]
fn requesting_cuda_is_an_unsupported_device_error() {
    for device in [Device::Cuda(0), Device::Cuda(3)] {
        let r = t32(&[2]).to_device(device);
        assert!(
            matches!(r, Err(TensorError::UnsupportedDevice { op: "to_device", device: d, .. }) if d == device)
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Axes and indices.
// ---------------------------------------------------------------------------------------------------

#[test]
fn out_of_range_axes() {
    let x = t32(&[2, 3]);
    let axis_error = |r: cola::tensor::Result<Tensor>, bad: isize| {
        assert!(matches!(r, Err(TensorError::AxisOutOfRange { axis, rank: _, .. }) if axis == bad), "{r:?}");
    };
    axis_error(x.sum(&[2], false), 2);
    axis_error(x.sum(&[0, -3], true), -3);
    axis_error(x.mean(&[5], false), 5);
    axis_error(x.transpose(0, 2), 2);
    axis_error(x.transpose(-3, 1), -3);
    axis_error(x.narrow(2, 0, 1), 2);
    axis_error(Tensor::concat(&[x.clone(), x.clone()], 2), 2);
    axis_error(Tensor::concat(&[x.clone(), x.clone()], -3), -3);
    axis_error(x.unsqueeze(3), 3); // valid: 0..=2 and -3..=-1
    axis_error(x.unsqueeze(-4), -4);
    axis_error(x.squeeze(2), 2);
    axis_error(t32(&[]).squeeze(0), 0);
    let split = x.split(&[1, 2], 2);
    assert!(matches!(split, Err(TensorError::AxisOutOfRange { axis: 2, .. })), "{split:?}");
    assert!(matches!(x.dim(-3), Err(TensorError::AxisOutOfRange { axis: -3, rank: 2, .. })));
    // Valid extremes still work.
    assert_eq!(x.unsqueeze(2).unwrap().shape(), &[2, 3, 1]);
    assert_eq!(x.unsqueeze(-3).unwrap().shape(), &[1, 2, 3]);
}

#[test]
fn other_bad_view_arguments() {
    let x = t32(&[2, 3]);
    let index = |r: cola::tensor::Result<Tensor>| {
        assert!(matches!(r, Err(TensorError::IndexOutOfRange { op: "narrow", size: 3, .. })), "{r:?}");
    };
    index(x.narrow(1, 2, 2));
    index(x.narrow(-1, 4, 0));
    index(x.narrow(1, usize::MAX, 2)); // start + len overflows
    let invalid = |r: cola::tensor::Result<Tensor>| {
        assert!(matches!(r, Err(TensorError::InvalidArgument { .. })), "{r:?}");
    };
    invalid(x.squeeze(1)); // dim of size 3
    invalid(x.sum(&[1, -1], false)); // the same axis twice
    invalid(x.permute(&[0, 0]));
    invalid(x.permute(&[1]));
    invalid(x.permute(&[0, 2]));
    invalid(t32(&[3]).t());
    for sizes in [&[1, 1][..], &[2, 2], &[]] {
        let r = x.split(sizes, 1);
        assert!(matches!(r, Err(TensorError::InvalidArgument { op: "split", .. })), "{sizes:?}: {r:?}");
    }
}

#[test]
fn out_of_range_ids_and_targets() {
    let table = t32(&[5, 3]);
    let r = Tensor::embedding(&table, &[0, 5], &[2]);
    assert!(matches!(r, Err(TensorError::IndexOutOfRange { index: 5, size: 5, .. })), "{r:?}");
    let r = Tensor::embedding(&table, &[u32::MAX], &[1]);
    assert!(matches!(r, Err(TensorError::IndexOutOfRange { size: 5, .. })), "{r:?}");
    let r = Tensor::embedding(&t32(&[15]), &[0], &[1]);
    assert!(matches!(r, Err(TensorError::InvalidArgument { op: "embedding", .. })), "{r:?}");

    let logits = t32(&[2, 4]);
    let r = logits.cross_entropy(&[1, 4], None);
    assert!(matches!(r, Err(TensorError::IndexOutOfRange { index: 4, size: 4, .. })), "{r:?}");
    // An out-of-vocabulary target that is not the ignore id is still an error...
    let r = logits.cross_entropy(&[9, 7], Some(7));
    assert!(matches!(r, Err(TensorError::IndexOutOfRange { index: 9, .. })), "{r:?}");
    // ... while the ignore id itself may be anything.
    assert!(logits.cross_entropy(&[u32::MAX, 2], Some(u32::MAX)).is_ok());
    assert_eq!(logits.cross_entropy(&[100, 100], Some(100)).unwrap().to_scalar().unwrap(), 0.0);
    // One target per row.
    let r = logits.cross_entropy(&[0, 1, 2], None);
    assert!(matches!(r, Err(TensorError::InvalidArgument { op: "cross_entropy", .. })), "{r:?}");
    for empty in [t32(&[]), t32(&[2, 0])] {
        let r = empty.cross_entropy(&[], None);
        assert!(matches!(r, Err(TensorError::InvalidArgument { .. })), "{r:?}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Element counts.
// ---------------------------------------------------------------------------------------------------

#[test]
fn wrong_element_counts() {
    let r = Tensor::from_vec(vec![1.0f32; 5], &[2, 3]);
    assert!(matches!(r, Err(TensorError::ElementCount { expected: 6, got: 5, .. })), "{r:?}");
    let r = Tensor::from_vec(Vec::<f64>::new(), &[]);
    assert!(matches!(r, Err(TensorError::ElementCount { expected: 1, got: 0, .. })), "{r:?}");

    let x = t32(&[2, 3]);
    for shape in [&[7][..], &[2, 2], &[], &[6, 0]] {
        let r = x.reshape(shape);
        assert!(matches!(r, Err(TensorError::ShapeMismatch { op: "reshape", .. })), "{shape:?}: {r:?}");
    }
    // Also for a view that would need a copy.
    let r = x.t().unwrap().reshape(&[5]);
    assert!(matches!(r, Err(TensorError::ShapeMismatch { op: "reshape", .. })), "{r:?}");

    let r = Tensor::embedding(&t32(&[4, 2]), &[0, 1, 2], &[2, 2]);
    assert!(matches!(r, Err(TensorError::ElementCount { expected: 4, got: 3, .. })), "{r:?}");

    let r = x.to_scalar();
    assert!(matches!(r, Err(TensorError::ElementCount { expected: 1, got: 6, .. })), "{r:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// For arbitrary shape pairs a binary op and a matmul either succeed with the numpy result shape or
    /// return `ShapeMismatch`; they never panic.
    #[test]
    fn shape_checks_agree_with_numpy_rules(
        a in prop::collection::vec(0usize..4, 0..4), b in prop::collection::vec(0usize..4, 0..4),
    ) {
        let rank = a.len().max(b.len());
        let dim = |s: &[usize], d: usize| if d + s.len() >= rank { s[d + s.len() - rank] } else { 1 };
        let broadcast: Option<Vec<usize>> = (0..rank)
            .map(|d| match (dim(&a, d), dim(&b, d)) {
                (x, y) if x == y || y == 1 => Some(x),
                (1, y) => Some(y),
                _ => None,
            })
            .collect();
        let r = t32(&a).add(&t32(&b));
        match &broadcast {
            Some(shape) => prop_assert_eq!(r.unwrap().shape().to_vec(), shape.clone()),
            None => prop_assert!(matches!(r, Err(TensorError::ShapeMismatch { .. })), "{:?}", r),
        }

        let r = t64(&a).matmul(&t64(&b));
        let valid = a.len() >= 2 && b.len() >= 2 && a[a.len() - 1] == b[b.len() - 2] && {
            let (ba, bb) = (&a[..a.len() - 2], &b[..b.len() - 2]);
            let rank = ba.len().max(bb.len());
            let dim = |s: &[usize], d: usize| if d + s.len() >= rank { s[d + s.len() - rank] } else { 1 };
            (0..rank).all(|d| dim(ba, d) == dim(bb, d) || dim(ba, d) == 1 || dim(bb, d) == 1)
        };
        prop_assert_eq!(r.is_ok(), valid, "{:?} @ {:?}: {:?}", a, b, r);
        if let Err(e) = r {
            prop_assert!(matches!(e, TensorError::ShapeMismatch { .. }), "{:?}", e);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The tape.
// ---------------------------------------------------------------------------------------------------

#[test]
fn backward_needs_a_scalar_loss() {
    let mut tape = Tape::new();
    let x = tape.leaf(t64(&[2, 3]), true);
    let y = tape.mul_scalar(&x, 2.0).unwrap();
    let r = tape.backward(y);
    assert!(matches!(r, Err(AutogradError::NotScalar { ref shape }) if shape == &[2, 3]), "{r:?}");
    // A failed check does not use up the tape.
    let loss = tape.sum(&y, &[], false).unwrap();
    let grads = tape.backward(loss).unwrap();
    assert_eq!(grads.get(x).unwrap().to_vec_f64(), vec![2.0; 6]);
    // A [1, 1] value counts as a scalar.
    let mut tape = Tape::new();
    let x = tape.leaf(t64(&[1, 1]), true);
    assert!(tape.backward(x).is_ok());
}

#[test]
fn backward_runs_once() {
    let mut tape = Tape::new();
    let x = tape.leaf(t64(&[3]), true);
    let loss = tape.sum(&x, &[], false).unwrap();
    tape.backward(loss).unwrap();
    let r = tape.backward(loss);
    assert!(matches!(r, Err(AutogradError::BackwardTwice)), "{r:?}");
}

#[test]
fn values_released_by_backward_are_an_error_to_read() {
    let mut tape = Tape::new();
    let x = tape.leaf(t64(&[2, 2]), true);
    let w = tape.leaf(t64(&[2, 2]), true);
    let h = tape.matmul(&x, &w).unwrap();
    let e = tape.exp(&h).unwrap();
    let loss = tape.mean(&e, &[], false).unwrap();
    assert!(tape.value(h).is_ok() && tape.value(loss).is_ok(), "values are readable before backward");
    tape.backward(loss).unwrap();
    for var in [h, e, loss] {
        let r = tape.value(var);
        assert!(matches!(r, Err(AutogradError::ValueReleased { var: v }) if v == var.index()), "{r:?}");
    }
    // Shapes outlive the values.
    assert_eq!(tape.shape(h).unwrap(), &[2, 2]);
    // Recording on a released value is an error too, not a panic.
    let r = tape.neg(&h);
    assert!(matches!(r, Err(AutogradError::ValueReleased { .. })), "{r:?}");
}

#[test]
fn vars_of_another_tape_are_rejected() {
    let mut big = Tape::new();
    let vars: Vec<_> = (0..4).map(|_| big.leaf(t64(&[1]), true)).collect();
    let foreign = vars[3];
    let mut small = Tape::new();
    let own = small.leaf(t64(&[1]), true);
    let unknown = |r: Result<(), AutogradError>| {
        assert!(matches!(r, Err(AutogradError::UnknownVar { var: 3, slots: 1 })), "{r:?}");
    };
    unknown(small.value(foreign).map(drop));
    unknown(small.shape(foreign).map(drop));
    unknown(small.add(&own, &foreign).map(drop));
    unknown(small.exp(&foreign).map(drop));
    unknown(small.backward(foreign).map(drop));
    assert_eq!(small.nodes().len(), 0, "a rejected op records nothing");
}

#[test]
fn backward_without_a_gradient_path() {
    let mut tape = Tape::new();
    let data = tape.constant(t64(&[2]));
    let loss = tape.sum(&data, &[], false).unwrap();
    let r = tape.backward(loss);
    assert!(matches!(r, Err(AutogradError::NoGradPath { var }) if var == loss.index()), "{r:?}");
    // Computed under no_grad from a leaf that wants a gradient: still no path.
    let mut tape = Tape::new();
    let x = tape.leaf(t64(&[2]), true);
    let loss = tape.no_grad(|t| t.sum(&x, &[], false)).unwrap();
    assert!(matches!(tape.backward(loss), Err(AutogradError::NoGradPath { .. })));
}

#[test]
fn tensor_errors_pass_through_the_tape_and_record_nothing() {
    let mut tape = Tape::new();
    let a = tape.leaf(t32(&[2, 3]), true);
    let b = tape.leaf(t32(&[4, 5]), true);
    let c = tape.leaf(t64(&[2, 3]), true);
    let nodes = tape.nodes().len();
    let tensor_error = |r: Result<cola::autograd::Var, AutogradError>| match r {
        Err(AutogradError::Tensor(e)) => e,
        other => panic!("expected a tensor error, got {other:?}"),
    };
    assert!(matches!(tensor_error(tape.matmul(&a, &b)), TensorError::ShapeMismatch { .. }));
    assert!(matches!(tensor_error(tape.add(&a, &b)), TensorError::ShapeMismatch { .. }));
    assert!(matches!(tensor_error(tape.add(&a, &c)), TensorError::DTypeMismatch { .. }));
    assert!(matches!(tensor_error(tape.sum(&a, &[2], false)), TensorError::AxisOutOfRange { .. }));
    assert!(matches!(tensor_error(tape.transpose(&a, 0, 3)), TensorError::AxisOutOfRange { .. }));
    assert!(matches!(tensor_error(tape.narrow(&a, 1, 2, 5)), TensorError::IndexOutOfRange { .. }));
    assert!(matches!(tensor_error(tape.reshape(&a, &[4])), TensorError::ShapeMismatch { .. }));
    assert!(matches!(
        tensor_error(tape.embedding(&a, &[7], &[1], None)),
        TensorError::IndexOutOfRange { .. }
    ));
    assert!(matches!(
        tensor_error(tape.cross_entropy(&a, &[0, 3], None)),
        TensorError::IndexOutOfRange { .. }
    ));
    assert!(matches!(tensor_error(tape.concat(&[a, b], 0)), TensorError::ShapeMismatch { .. }));
    match tape.split(&a, &[1, 1], 1) {
        Err(AutogradError::Tensor(TensorError::InvalidArgument { op: "split", .. })) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(tape.nodes().len(), nodes, "failed ops leave the tape unchanged");
    // The tape still works afterwards.
    let loss = tape.sum(&a, &[], false).unwrap();
    assert!(tape.backward(loss).unwrap().get(a).is_some());
}

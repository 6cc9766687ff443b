//! `Tensor::write_slice`, the in-place write of a preallocated buffer: equal to concatenating the slices
//! (exact: a write only copies values), for every axis, dtypes f32/f64/bf16 and strided sources;
//! copy-on-write (a clone or view of the buffer never sees the write); the shape, axis, range, dtype and
//! device errors as values; on a CUDA device, the same writes as on the CPU (skipped without one).
use cola::{DType, Rng, Tensor};

use crate::common;

fn randn(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, dtype, &mut Rng::new(seed))
}

/// Writes the pieces of `whole` (split along `axis` at `cuts`) one after another into zeros and checks
/// the result equals `whole` exactly.
fn check_pieces(whole: &Tensor, axis: isize, cuts: &[usize]) {
    let mut buffer = Tensor::zeros_on(whole.shape(), whole.dtype(), whole.device()).unwrap();
    let mut start = 0;
    for &end in cuts.iter().chain([&whole.dim(axis).unwrap()]) {
        let piece = whole.narrow(axis, start, end - start).unwrap();
        buffer.write_slice(axis, start, &piece).unwrap();
        start = end;
    }
    assert_eq!(buffer.to_vec_f64(), whole.to_vec_f64(), "axis {axis} cuts {cuts:?} {:?}", whole.dtype());
}

#[test]
fn writes_rebuild_the_tensor_along_every_axis() {
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        let whole = randn(&[3, 5, 4, 2], 1, dtype);
        check_pieces(&whole, 0, &[1, 2]);
        check_pieces(&whole, 1, &[0, 2, 3]);
        check_pieces(&whole, 2, &[3]);
        check_pieces(&whole, -1, &[1]);
    }
}

#[test]
fn a_strided_source_is_written_by_value() {
    // A transposed source: its values land in row-major order of its logical shape.
    let src = randn(&[4, 3], 2, DType::F32).transpose(0, 1).unwrap();
    assert!(!src.is_contiguous());
    let mut buffer = Tensor::zeros(&[3, 6], DType::F32);
    buffer.write_slice(1, 1, &src).unwrap();
    let (got, want) = (buffer.to_vec_f64(), src.to_vec_f64());
    for i in 0..3 {
        assert_eq!(got[i * 6], 0.0);
        assert_eq!(&got[i * 6 + 1..i * 6 + 5], &want[i * 4..i * 4 + 4]);
        assert_eq!(got[i * 6 + 5], 0.0);
    }
}

#[test]
fn a_shared_buffer_is_copied_before_the_write() {
    let mut buffer = Tensor::zeros(&[1, 8, 2], DType::F32);
    let clone = buffer.clone();
    let prefix = buffer.narrow(1, 0, 4).unwrap();
    buffer.write_slice(1, 2, &Tensor::ones(&[1, 3, 2], DType::F32)).unwrap();
    assert!(clone.to_vec_f64().iter().all(|&v| v == 0.0));
    assert!(prefix.to_vec_f64().iter().all(|&v| v == 0.0));
    assert!(!buffer.shares_storage(&clone));
    assert_eq!(buffer.to_vec_f64().iter().sum::<f64>(), 6.0);
    // Held alone, the buffer keeps its storage: the write is in place.
    let key = buffer.storage_key();
    buffer.write_slice(1, 7, &Tensor::ones(&[1, 1, 2], DType::F32)).unwrap();
    assert_eq!(buffer.storage_key(), key);
    assert_eq!(buffer.to_vec_f64().iter().sum::<f64>(), 8.0);
}

#[test]
fn bad_writes_are_errors() {
    let mut buffer = Tensor::zeros(&[2, 4, 3], DType::F32);
    let before = buffer.to_vec_f64();
    let piece = Tensor::ones(&[2, 2, 3], DType::F32);
    let errors = [
        buffer.write_slice(1, 3, &piece).expect_err("past the end").to_string(),
        buffer.write_slice(1, usize::MAX, &piece).expect_err("overflowing start").to_string(),
        buffer.write_slice(3, 0, &piece).expect_err("axis").to_string(),
        buffer.write_slice(0, 0, &piece).expect_err("other dims differ").to_string(),
        buffer.write_slice(1, 0, &Tensor::ones(&[2, 2], DType::F32)).expect_err("rank").to_string(),
        buffer.write_slice(1, 0, &Tensor::ones(&[2, 2, 3], DType::F64)).expect_err("dtype").to_string(),
    ];
    for (error, needle) in errors.iter().zip(["exceed", "exceed", "axis", "match", "match", "dtypes"]) {
        assert!(error.contains(needle), "{error}");
    }
    assert_eq!(buffer.to_vec_f64(), before, "a failed write changes nothing");
}

#[cfg(feature = "cuda")]
#[test]
fn gpu_writes_match_the_cpu() {
    use common::gpu::{have_gpu, GPU};
    if !have_gpu() {
        return;
    }
    for dtype in [DType::F32, DType::BF16] {
        let whole = randn(&[2, 9, 3, 4], 5, dtype);
        check_pieces(&whole.to_device(GPU).unwrap(), 1, &[1, 5, 8]);
        // The KV-cache pattern: a buffer, a shared view of it during the write, a write from a view.
        let mut buffer = Tensor::zeros_on(&[1, 9, 3, 4], dtype, GPU).unwrap();
        let view = buffer.narrow(1, 0, 2).unwrap();
        let row = whole.narrow(0, 1, 1).unwrap().to_device(GPU).unwrap();
        buffer.write_slice(1, 0, &row).unwrap();
        assert!(view.to_vec_f64().iter().all(|&v| v == 0.0), "the earlier view is unchanged");
        assert_eq!(buffer.to_vec_f64(), row.to_vec_f64());
        let cpu = Tensor::zeros(&[1, 9, 3, 4], dtype);
        let err = buffer.clone().write_slice(1, 0, &cpu).expect_err("devices differ").to_string();
        assert!(err.contains("cuda") || err.contains("cpu"), "{err}");
    }
}

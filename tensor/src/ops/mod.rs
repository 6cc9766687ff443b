//! Forward ops on tensors. Each op validates its inputs (shapes, dtypes, devices), runs the CPU kernel of
//! `cola_kernels` in the compute dtype and returns a new contiguous tensor. Backward kernels that the
//! autograd rules need are exposed here too.
//!
//! bf16 on the CPU takes one of two paths, with the same bits: element-wise ops (arithmetic, activations
//! and their gradients, the gated product) run *fused* ([`fused_elementwise`]: a chunk of a few thousand
//! elements at a time is widened, fed to the f32 kernel and rounded once on store, so no f32 copy of a
//! tensor is ever made), and so, each in its own way, do RMSNorm and its backward, RoPE, the embedding
//! and its gradient and the LM head with its loss; the others (attention, reductions, views) run through
//! [`in_compute_dtype`], the *upcast* path (whole inputs widened to f32, the f32 kernel, whole outputs
//! rounded). [`set_fused_bf16`] turns the fused paths off on the calling thread, so tests compare the two
//! bit for bit (`tensor/tests/suite/bf16_fused.rs`).
use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::storage::Element;
use crate::{DType, Device, Tensor};
use cola_kernels::cpu::bf16::map_chunks_par;
use half::bf16;
use std::cell::Cell;

pub mod attention;
pub mod attention_cache;
pub mod concat;
pub mod elementwise;
pub mod embedding;
pub mod gated;
pub mod head_loss;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod rope;
pub mod view;
pub mod write;

/// Evaluates `$body` with `$T` bound to the Rust type of a compute dtype (f32 or f64).
macro_rules! match_float {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            dtype => Err($crate::TensorError::UnsupportedDType {
                op: $op,
                dtype,
                reason: "bf16 is computed in f32; upcast first",
            }),
        }
    };
}
pub(crate) use match_float;

/// Fails unless every tensor has the dtype and device of the first.
pub(crate) fn check_same(op: &'static str, tensors: &[&Tensor]) -> Result<()> {
    let Some(first) = tensors.first() else { return Ok(()) };
    for t in &tensors[1..] {
        if t.dtype() != first.dtype() {
            return Err(TensorError::DTypeMismatch { op, lhs: first.dtype(), rhs: t.dtype() });
        }
        if t.device() != first.device() {
            return Err(TensorError::DeviceMismatch { op, lhs: first.device(), rhs: t.device() });
        }
    }
    crate::tensor::check_device(op, first.device())
}

thread_local! {
    static FUSED_BF16: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops called from this thread take the fused bf16 paths (the default) or the upcast path for
/// every op. Both give the same bits; the switch exists so that tests can compare them.
pub fn set_fused_bf16(on: bool) {
    FUSED_BF16.with(|f| f.set(on));
}

/// Whether the fused bf16 paths are on for this thread ([`set_fused_bf16`]).
pub(crate) fn fused_bf16() -> bool {
    FUSED_BF16.with(Cell::get)
}

/// Runs an element-wise f32 `kernel` over bf16 CPU `inputs` chunk by chunk, rounding its `M` outputs once
/// (`cola_kernels::cpu::bf16::map_chunks_par`), each output of `shape` (the inputs' common element count,
/// read in row-major order). `None` when the fused path does not apply: inputs not bf16 on the CPU, or the
/// fused paths turned off ([`set_fused_bf16`]); the caller then takes the upcast path. `kernel` must
/// compute element `i` of each output from element `i` of the inputs alone, which makes the result the
/// upcast path's, bit for bit.
pub(crate) fn fused_elementwise<const N: usize, const M: usize>(
    op: &'static str,
    inputs: [&Tensor; N],
    shape: &[usize],
    kernel: impl Fn([&[f32]; N], [&mut [f32]; M]) + Sync,
) -> Result<Option<[Tensor; M]>> {
    let applies =
        fused_bf16() && inputs.iter().all(|t| t.dtype() == DType::BF16 && t.device() == Device::Cpu);
    if !applies {
        return Ok(None);
    }
    check_same(op, &inputs)?;
    let n: usize = shape.iter().product();
    if let Some(t) = inputs.iter().find(|t| t.numel() != n) {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: shape.to_vec(),
            rhs: t.shape().to_vec(),
            reason: "element-wise inputs must have the output's element count",
        });
    }
    let data: Vec<_> = inputs.iter().map(|t| t.contiguous_data::<bf16>()).collect::<Result<_>>()?;
    let views: [&[bf16]; N] = std::array::from_fn(|i| &*data[i]);
    // Every output is written whole.
    let mut outs: [Vec<bf16>; M] = std::array::from_fn(|_| crate::pool::take_for_overwrite::<bf16>(n));
    {
        let mut rest: &mut [Vec<bf16>] = &mut outs;
        let slices: [&mut [bf16]; M] = std::array::from_fn(|_| {
            let (first, tail) = std::mem::take(&mut rest).split_first_mut().expect("M outputs");
            rest = tail;
            first.as_mut_slice()
        });
        map_chunks_par(views, slices, kernel);
    }
    Ok(Some(outs.map(|o| Tensor::from_storage(bf16::into_storage(o), Layout::contiguous(shape)))))
}

/// Runs `f` on the inputs in their compute dtype: bf16 inputs are upcast to f32 and every output is cast
/// back to bf16. Checks that the inputs agree in dtype and device first.
pub(crate) fn in_compute_dtype<const N: usize>(
    op: &'static str,
    inputs: [&Tensor; N],
    f: impl FnOnce([Tensor; N]) -> Result<Vec<Tensor>>,
) -> Result<Vec<Tensor>> {
    check_same(op, &inputs)?;
    let stored = inputs.first().map_or(DType::F32, |t| t.dtype());
    let compute = stored.compute_dtype();
    let converted: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(compute)).collect::<Result<_>>()?;
    let converted: [Tensor; N] = converted.try_into().map_err(|_| TensorError::InvalidArgument {
        op,
        reason: "input count changed during conversion".into(),
    })?;
    let outputs = f(converted)?;
    outputs.into_iter().map(|t| t.to_dtype(stored)).collect()
}

/// [`in_compute_dtype`] for ops with one output.
pub(crate) fn in_compute_dtype1<const N: usize>(
    op: &'static str,
    inputs: [&Tensor; N],
    f: impl FnOnce([Tensor; N]) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut out = in_compute_dtype(op, inputs, |t| f(t).map(|o| vec![o]))?;
    out.pop().ok_or(TensorError::InvalidArgument { op, reason: "op produced no output".into() })
}

/// Fails unless `t` has exactly `rank` dims.
pub(crate) fn check_rank(op: &'static str, t: &Tensor, rank: usize, what: &'static str) -> Result<()> {
    if t.rank() != rank {
        return Err(TensorError::InvalidArgument {
            op,
            reason: format!("{what} must have rank {rank}, got shape {:?}", t.shape()),
        });
    }
    Ok(())
}

/// Fails unless both tensors have the same shape.
pub(crate) fn check_same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: a.shape().to_vec(),
            rhs: b.shape().to_vec(),
            reason: "shapes must be equal",
        });
    }
    Ok(())
}

//! In-place updates for optimizers: the fused AdamW step, the squared norm used by gradient clipping, and
//! the multi-tensor step that clips and updates every parameter at once on the GPU.
use super::{check_same, check_same_shape, match_float};
use crate::error::{Result, TensorError};
pub use crate::multi_tensor::{AdamWTensors, MultiTensorPlan, StateKind};
use crate::storage::CpuFloat;
use crate::{DType, Device, Tensor};
pub use cola_kernels::cpu::adamw::AdamWStep;
use cola_kernels::cpu::adamw::{adamw_step, adamw_step_bf16, adamw_step_mixed, MixedState};
use half::bf16;

const MULTI_OP: &str = "clip_adamw_multi";

/// The device of a multi-tensor group (its first param's) and what each member holds, checked as
/// [`multi_tensor_kind`] does; `None` for an empty group.
pub(crate) fn multi_tensor_kinds(group: &[AdamWTensors]) -> Result<Option<(Device, Vec<StateKind>)>> {
    let Some(first) = group.first() else { return Ok(None) };
    let device = first.param.device();
    let kinds = group.iter().map(|t| multi_tensor_kind(t, device)).collect::<Result<_>>()?;
    Ok(Some((device, kinds)))
}

/// What one parameter's tensors of a multi-tensor step hold, after checking them against the param
/// (shapes, gradient dtype, `device`).
pub(crate) fn multi_tensor_kind(t: &AdamWTensors, device: Device) -> Result<StateKind> {
    let mut others: Vec<&Tensor> = vec![t.grad, &*t.m, &*t.v];
    others.extend(t.master.as_deref());
    for other in others.into_iter().chain([&*t.param]) {
        check_same_shape(MULTI_OP, t.param, other)?;
        if other.device() != device {
            return Err(TensorError::DeviceMismatch { op: MULTI_OP, lhs: device, rhs: other.device() });
        }
    }
    if t.grad.dtype() != t.param.dtype() {
        return Err(TensorError::DTypeMismatch { op: MULTI_OP, lhs: t.param.dtype(), rhs: t.grad.dtype() });
    }
    let master = t.master.as_deref().map(Tensor::dtype);
    match (t.param.dtype(), t.m.dtype(), t.v.dtype(), master) {
        (DType::F32, DType::F32, DType::F32, None) => Ok(StateKind::F32),
        (DType::BF16, DType::F32, DType::F32, Some(DType::F32)) => Ok(StateKind::MixedBf16),
        (DType::BF16, DType::BF16, DType::BF16, None) => Ok(StateKind::PureBf16),
        (param, m, v, master) => Err(TensorError::InvalidArgument {
            op: MULTI_OP,
            reason: format!(
                "param {param}, moments {m}/{v}, master {master:?}: expected f32/f32/f32 without a master, \
                 bf16 with f32 moments and an f32 master, or bf16/bf16/bf16 without a master"
            ),
        }),
    }
}

fn adamw_t<T: CpuFloat>(
    param: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    hyper: AdamWStep,
) -> Result<()> {
    let g = grad.contiguous_data::<T>()?;
    adamw_step(param.data_mut::<T>()?, &g, m.data_mut::<T>()?, v.data_mut::<T>()?, hyper);
    Ok(())
}

/// Sum of squares of a contiguous buffer, each element read as f64 by `to_f64`, deterministic: in
/// fixed-size chunks added in order, each chunk summed in [`LANES`] interleaved partial sums (element `i`
/// into sum `i % LANES`: independent chains the compiler keeps in vector registers, where one chain waits
/// on each addition's latency) that are then added in order.
fn squared_sum<T: Copy + Sync>(data: &[T], to_f64: impl Fn(T) -> f64 + Sync) -> f64 {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    const LANES: usize = 8;
    let chunk_sum = |chunk: &[T]| {
        let mut lanes = [0.0f64; LANES];
        let groups = chunk.chunks_exact(LANES);
        let tail = groups.remainder();
        for group in groups {
            for (lane, &x) in lanes.iter_mut().zip(group) {
                *lane += to_f64(x) * to_f64(x);
            }
        }
        for (lane, &x) in lanes.iter_mut().zip(tail) {
            *lane += to_f64(x) * to_f64(x);
        }
        lanes.iter().sum::<f64>()
    };
    let partials: Vec<f64> = data.par_chunks(CHUNK).map(chunk_sum).collect();
    partials.iter().sum()
}

fn squared_norm_t<T: CpuFloat>(t: &Tensor) -> Result<f64> {
    Ok(squared_sum(&t.contiguous_data::<T>()?, |x: T| x.to_f64()))
}

/// bf16 values read directly: widening is exact, so the bits of upcasting the tensor first, without the
/// f32 copy.
fn squared_norm_bf16(t: &Tensor) -> Result<f64> {
    Ok(squared_sum(&t.contiguous_data::<bf16>()?, |x: bf16| f64::from(x.to_f32())))
}

impl Tensor {
    /// One AdamW step in place: `param`, `m` and `v` (same shape and dtype as `grad`) are updated; their
    /// storage is made unshared first. f32, f64 or bf16 (the pure-bf16 mode: bf16 moments, the update
    /// computed in f32 and each result rounded once to bf16).
    pub fn adamw_step(
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        hyper: AdamWStep,
    ) -> Result<()> {
        check_same("adamw_step", &[param, grad, m, v])?;
        for t in [&*m, &*v, grad] {
            check_same_shape("adamw_step", param, t)?;
        }
        #[cfg(feature = "cuda")]
        if param.is_cuda() {
            return crate::cuda::optim::adamw_step(param, grad, m, v, hyper);
        }
        if param.dtype() == DType::BF16 {
            let g = grad.contiguous_data::<bf16>()?;
            let (m, v) = (m.data_mut::<bf16>()?, v.data_mut::<bf16>()?);
            adamw_step_bf16(param.data_mut::<bf16>()?, &g, m, v, hyper);
            return Ok(());
        }
        match_float!("adamw_step", param.dtype(), T => adamw_t::<T>(param, grad, m, v, hyper))
    }

    /// One AdamW step of a bf16 parameter under mixed precision: the f32 `master`, `m` and `v` are updated
    /// from the bf16 `grad` (widened as it is read) and `param` becomes the master's bf16 rounding. The same
    /// bits as upcasting `grad`, [`Tensor::adamw_step`] on the master and rounding it into `param`, in one
    /// pass (CPU; on a GPU it runs as those three steps).
    pub fn adamw_step_mixed(
        master: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        param: &mut Tensor,
        hyper: AdamWStep,
    ) -> Result<()> {
        const OP: &str = "adamw_step_mixed";
        check_same(OP, &[master, m, v])?;
        check_same(OP, &[param, grad])?;
        for t in [&*m, &*v, grad, &*param] {
            check_same_shape(OP, master, t)?;
        }
        if master.device() != param.device() {
            return Err(TensorError::DeviceMismatch { op: OP, lhs: master.device(), rhs: param.device() });
        }
        if (master.dtype(), param.dtype()) != (DType::F32, DType::BF16) {
            return Err(TensorError::InvalidArgument {
                op: OP,
                reason: format!(
                    "master, m, v must be f32 and param, grad bf16; got {} and {}",
                    master.dtype(),
                    param.dtype()
                ),
            });
        }
        if master.device() != Device::Cpu {
            Tensor::adamw_step(master, &grad.to_dtype(DType::F32)?, m, v, hyper)?;
            *param = master.to_dtype(DType::BF16)?;
            return Ok(());
        }
        let g = grad.contiguous_data::<bf16>()?;
        let state = MixedState {
            master: master.data_mut::<f32>()?,
            m: m.data_mut::<f32>()?,
            v: v.data_mut::<f32>()?,
            param: param.data_mut::<bf16>()?,
        };
        adamw_step_mixed(state, &g, hyper);
        Ok(())
    }

    /// `sum(x^2)` accumulated in f64.
    pub fn squared_norm(&self) -> Result<f64> {
        crate::tensor::check_device("squared_norm", self.device())?;
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return crate::cuda::optim::squared_norm(self);
        }
        match self.dtype() {
            DType::BF16 => squared_norm_bf16(self),
            dtype => match_float!("squared_norm", dtype, T => squared_norm_t::<T>(self)),
        }
    }
}

impl Tensor {
    /// Clips the gradients of `group` by their global L2 norm and applies one AdamW step to every tensor,
    /// GPU only, in three launches whatever the number of tensors, and with one host read (the norm): the
    /// norm and the factor `min(1, max_norm / (norm + 1e-6))` are computed on the device and every gradient
    /// is multiplied by it as the update reads it (`clip_grad_norm` followed by `adamw_step`, without
    /// rewriting the gradients). `hyper.weight_decay` applies to the tensors that decay.
    ///
    /// Returns the norm before clipping. When it is not finite nothing was written: the caller refuses
    /// the update. Each tensor's param, m, v and master must be stored as f32/f32/f32/none,
    /// bf16/f32/f32/f32 or bf16/bf16/bf16/none, with a gradient of the param's dtype and shape.
    pub fn clip_adamw_multi(
        plan: &mut MultiTensorPlan,
        group: &mut [AdamWTensors],
        max_norm: f64,
        hyper: AdamWStep,
    ) -> Result<f64> {
        let Some((device, kinds)) = multi_tensor_kinds(group)? else { return Ok(0.0) };
        #[cfg(feature = "cuda")]
        if matches!(device, Device::Cuda(_)) {
            return crate::cuda::multi_tensor::clip_adamw(&mut plan.tables, group, &kinds, max_norm, hyper);
        }
        let _ = (plan, kinds, max_norm, hyper);
        Err(TensorError::UnsupportedDevice {
            op: MULTI_OP,
            device,
            reason: "the multi-tensor step runs on a GPU; on the CPU use adamw_step per tensor".into(),
        })
    }
}

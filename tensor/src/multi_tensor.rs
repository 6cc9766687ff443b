//! The arguments of the multi-tensor AdamW step ([`Tensor::clip_adamw_multi`]), shared by the CPU-side
//! checks (`ops/optim.rs`) and the GPU implementation (`cuda/multi_tensor.rs`), so that neither device
//! path imports the other.
use crate::ops::optim::{multi_tensor_kinds, AdamWStep};
use crate::{Device, Result, Tensor, TensorError};

/// One parameter of a multi-tensor AdamW step ([`Tensor::clip_adamw_multi`]): the four tensors of
/// [`Tensor::adamw_step`], an f32 master copy of a bf16 parameter under mixed precision (the update runs
/// on it and `param` receives its bf16 rounding), and whether the parameter gets weight decay.
pub struct AdamWTensors<'a> {
    pub param: &'a mut Tensor,
    pub grad: &'a Tensor,
    pub m: &'a mut Tensor,
    pub v: &'a mut Tensor,
    pub master: Option<&'a mut Tensor>,
    pub decays: bool,
}

/// The device tables of a multi-tensor step (where each tensor lives, how the group is cut into chunks),
/// kept between steps and uploaded again only when a parameter or state buffer moved. Cloning shares the
/// tables; a step that finds other buffers builds its own.
#[derive(Clone, Debug, Default)]
pub struct MultiTensorPlan {
    #[cfg(feature = "cuda")]
    pub(crate) tables: Option<std::sync::Arc<crate::cuda::multi_tensor::Tables>>,
}

/// What the tensors of one parameter hold; the numbering is that of the `KIND_*` constants of
/// `kernels/cuda/adamw.cu`, which read it from the tensor table.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// param, grad, m and v in f32.
    F32 = 0,
    /// param and grad bf16; m, v and an f32 master copy that the update runs on (mixed precision).
    MixedBf16 = 1,
    /// param, grad, m and v bf16 (pure bf16).
    PureBf16 = 2,
}

impl Tensor {
    /// The sum of the squares of `group`'s gradients, in f64: the squared global norm that
    /// [`Tensor::clip_adamw_multi`] takes the square root of, from the same partial sums added in the same
    /// order (so the same bits). A caller whose gradients are spread over several ranks (ZeRO-1's shards)
    /// sums these over the ranks and hands the norm to [`Tensor::adamw_multi_scaled`]. GPU only, one
    /// launch pair and one host read; the group's tensors are checked as for [`Tensor::clip_adamw_multi`].
    pub fn multi_tensor_squares(plan: &mut MultiTensorPlan, group: &mut [AdamWTensors]) -> Result<f64> {
        let Some((device, kinds)) = multi_tensor_kinds(group)? else { return Ok(0.0) };
        #[cfg(feature = "cuda")]
        if matches!(device, Device::Cuda(_)) {
            return crate::cuda::multi_tensor::squares(&mut plan.tables, group, &kinds);
        }
        let _ = (plan, kinds);
        Err(gpu_only(device))
    }

    /// The update of [`Tensor::clip_adamw_multi`] with the global norm `norm` and the clip factor `factor`
    /// given by the caller (computed from a norm over several ranks) instead of computed from `group`'s
    /// gradients: every gradient is multiplied by `factor` as it is read when `factor < 1`, and nothing is
    /// written when `norm` is not finite. GPU only, one launch.
    pub fn adamw_multi_scaled(
        plan: &mut MultiTensorPlan,
        group: &mut [AdamWTensors],
        norm: f64,
        factor: f64,
        hyper: AdamWStep,
    ) -> Result<()> {
        let Some((device, kinds)) = multi_tensor_kinds(group)? else { return Ok(()) };
        #[cfg(feature = "cuda")]
        if matches!(device, Device::Cuda(_)) {
            return crate::cuda::multi_tensor::adamw_scaled(
                &mut plan.tables,
                group,
                &kinds,
                norm,
                factor,
                hyper,
            );
        }
        let _ = (plan, kinds, norm, factor, hyper);
        Err(gpu_only(device))
    }
}

/// The refusal of a multi-tensor step off the GPU.
fn gpu_only(device: Device) -> TensorError {
    TensorError::UnsupportedDevice {
        op: "clip_adamw_multi",
        device,
        reason: "the multi-tensor step runs on a GPU; on the CPU use adamw_step per tensor".into(),
    }
}

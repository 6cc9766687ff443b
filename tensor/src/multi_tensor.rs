//! The arguments of the multi-tensor AdamW step ([`Tensor::clip_adamw_multi`]), shared by the CPU-side
//! checks (`ops/optim.rs`) and the GPU implementation (`cuda/multi_tensor.rs`), so that neither device
//! path imports the other.
use crate::Tensor;

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

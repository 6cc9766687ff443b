//! Launchers of `kernels/cuda/adamw.cu`.
use super::{grid_1d, launch, BLOCK};
use crate::cpu::adamw::AdamWStep;
use crate::cuda::{CudaDevice, GpuDType, Kernel, Result};
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

/// Device addresses of the four same-length buffers of an AdamW step.
#[derive(Clone, Copy, Debug)]
pub struct AdamWBuffers {
    pub param: u64,
    pub grad: u64,
    pub m: u64,
    pub v: u64,
}

/// Per-step constants, computed in f64 and rounded to f32 exactly as the CPU kernel
/// (`cpu::adamw`) rounds them to its element type, so f32 steps agree with the CPU. Passed by value with
/// the layout of `struct AdamWConstants` in adamw.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct Constants {
    decay: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,
    sqrt_c2: f32,
    eps: f32,
}

// SAFETY: plain-old-data with the C layout of `struct AdamWConstants` in adamw.cu.
unsafe impl DeviceRepr for Constants {}

impl Constants {
    fn new(h: &AdamWStep) -> Self {
        let t = h.step.max(1).min(i32::MAX as u64) as i32;
        let c1 = 1.0 - h.beta1.powi(t);
        let c2 = 1.0 - h.beta2.powi(t);
        Constants {
            decay: (1.0 - h.lr * h.weight_decay) as f32,
            one_minus_beta1: (1.0 - h.beta1) as f32,
            beta2: h.beta2 as f32,
            one_minus_beta2: (1.0 - h.beta2) as f32,
            step_size: (h.lr / c1) as f32,
            sqrt_c2: c2.sqrt() as f32,
            eps: h.eps as f32,
        }
    }
}

/// One AdamW step in place on `n` contiguous elements of `param`, `m`, `v` from `grad` (all `dtype`).
///
/// # Safety
/// Each buffer must hold `n` elements of `dtype` on this device; `param`, `m` and `v` must not overlap.
pub unsafe fn adamw_step(
    device: &CudaDevice,
    buffers: &AdamWBuffers,
    dtype: GpuDType,
    n: usize,
    hyper: &AdamWStep,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let c = Constants::new(hyper);
    let AdamWBuffers { param, grad, m, v } = *buffers;
    let n = n as i64;
    let kernel = match dtype {
        GpuDType::F32 => Kernel::AdamwStepF32,
        GpuDType::BF16 => Kernel::AdamwStepBf16,
    };
    // SAFETY: argument list matches `adamw_step_T(T*, const T*, T*, T*, i64, AdamWConstants)`.
    unsafe { launch!(device, kernel, grid_1d(n as usize); &param, &grad, &m, &v, &n, &c) }
}

/// Elements per partial sum of [`squared_norm_partials`].
pub const NORM_CHUNK: usize = 8192;

/// Number of partial sums [`squared_norm_partials`] writes for `n` elements.
pub fn norm_partial_count(n: usize) -> usize {
    n.div_ceil(NORM_CHUNK)
}

/// `partials[b] = sum of x[i]^2` over chunk `b` of [`NORM_CHUNK`] elements, in f32 (fixed order).
///
/// # Safety
/// `x` must hold `n` elements of `dtype` and `partials` [`norm_partial_count`]`(n)` f32 values.
pub unsafe fn squared_norm_partials(
    device: &CudaDevice,
    x: u64,
    dtype: GpuDType,
    partials: u64,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let blocks = norm_partial_count(n).min(1 << 20) as u32;
    let config = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    let (n, chunk) = (n as i64, NORM_CHUNK as i64);
    let kernel = match dtype {
        GpuDType::F32 => Kernel::SquaredNormPartialsF32,
        GpuDType::BF16 => Kernel::SquaredNormPartialsBf16,
    };
    // SAFETY: argument list matches `squared_norm_partials_T(const T*, float*, i64, i64)`.
    unsafe { launch!(device, kernel, config; &x, &partials, &n, &chunk) }
}

/// Elements per chunk of the multi-tensor kernels: the unit one block works on (32 elements per thread
/// of a 256-thread block) and the unit of one partial sum of the gradient norm.
pub const MULTI_TENSOR_CHUNK: usize = 8192;

/// Most blocks of a multi-tensor launch; blocks step over the remaining chunks. Eight per SM of an H200
/// (132 SMs) keep every SM busy with room to spare, and the count does not change the result.
const MULTI_TENSOR_BLOCKS: usize = 1056;

/// One tensor of a multi-tensor group as the kernels read it (`struct TensorEntry` in adamw.cu); the
/// gradient addresses travel in a separate table because they change every step.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    pub param: u64,
    pub m: u64,
    pub v: u64,
    /// 0 unless the kind is `KIND_MIXED`.
    pub master: u64,
    pub n: i64,
    /// Index of the tensor's first chunk in the group's chunk layout.
    pub first_chunk: i64,
    /// One of the `KIND_*` constants of adamw.cu: which dtypes param, grad, m, v and master hold.
    pub kind: i32,
    /// 1 when the tensor gets weight decay, else 0.
    pub decays: i32,
}

// SAFETY: plain-old-data with the C layout of `struct TensorEntry` in adamw.cu.
unsafe impl DeviceRepr for TensorEntry {}

/// The chunks of tensors of `sizes` elements: the first chunk of each tensor, and the tensor of every
/// chunk. Empty tensors have no chunk.
pub fn chunk_layout(sizes: &[usize]) -> (Vec<i64>, Vec<i32>) {
    let mut first = Vec::with_capacity(sizes.len());
    let mut owner = Vec::new();
    for (t, &n) in sizes.iter().enumerate() {
        first.push(owner.len() as i64);
        owner.extend(std::iter::repeat_n(t as i32, n.div_ceil(MULTI_TENSOR_CHUNK)));
    }
    (first, owner)
}

/// Device addresses of a multi-tensor group: its [`TensorEntry`] table, the gradient of each entry (u64
/// each), and the owner of each of its `chunks` chunks (i32 each, from [`chunk_layout`]).
#[derive(Clone, Copy, Debug)]
pub struct MultiTensorGroup {
    pub tensors: u64,
    pub grads: u64,
    pub chunk_tensor: u64,
    pub chunks: usize,
}

impl MultiTensorGroup {
    fn config(&self) -> LaunchConfig {
        let blocks = self.chunks.clamp(1, MULTI_TENSOR_BLOCKS) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }
}

/// Writes the global gradient norm of the group into `status[0]` and the clip factor
/// `min(1, max_norm / (norm + 1e-6))` into `status[1]` (two f64), on the device: one launch for per-chunk
/// partial sums (f64, into `partials`), one for their sum in a fixed order.
///
/// # Safety
/// The group's tables must describe live buffers of this device as [`TensorEntry`] documents;
/// `partials` must hold `group.chunks` f64 and `status` two.
pub unsafe fn multi_tensor_clip_factor(
    device: &CudaDevice,
    group: &MultiTensorGroup,
    partials: u64,
    max_norm: f64,
    status: u64,
) -> Result<()> {
    // SAFETY: as this function's contract.
    unsafe { multi_tensor_norm_partials(device, group, partials)? };
    let chunks = group.chunks as i64;
    // SAFETY: matches `multi_tensor_clip_factor(const double*, i64, double, double*)`.
    unsafe {
        launch!(device, Kernel::MultiTensorClipFactor, ONE_BLOCK; &partials, &chunks, &max_norm, &status)
    }
}

/// Writes the sum of the squares of the group's gradients into `squares` (one f64), on the device: the
/// partial sums and their fixed-order sum of [`multi_tensor_clip_factor`], bit for bit, without the square
/// root (a rank's share of a global norm that several ranks sum).
///
/// # Safety
/// As [`multi_tensor_clip_factor`], with `squares` holding one f64.
pub unsafe fn multi_tensor_squares(
    device: &CudaDevice,
    group: &MultiTensorGroup,
    partials: u64,
    squares: u64,
) -> Result<()> {
    // SAFETY: as this function's contract.
    unsafe { multi_tensor_norm_partials(device, group, partials)? };
    let chunks = group.chunks as i64;
    // SAFETY: matches `multi_tensor_squares(const double*, i64, double*)`.
    unsafe { launch!(device, Kernel::MultiTensorSquares, ONE_BLOCK; &partials, &chunks, &squares) }
}

/// The block of the kernels that add the per-chunk partials (`partials_total` in adamw.cu).
const ONE_BLOCK: LaunchConfig =
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };

/// One f64 partial sum of squares per chunk of the group's gradients, into `partials`.
///
/// # Safety
/// As [`multi_tensor_clip_factor`].
unsafe fn multi_tensor_norm_partials(
    device: &CudaDevice,
    group: &MultiTensorGroup,
    partials: u64,
) -> Result<()> {
    let (chunks, chunk) = (group.chunks as i64, MULTI_TENSOR_CHUNK as i64);
    let MultiTensorGroup { tensors, grads, chunk_tensor, .. } = *group;
    // SAFETY: matches `multi_tensor_norm_partials(const TensorEntry*, const u64*, const int*, i64, i64,
    // double*)`; every chunk index is below `chunks`.
    unsafe {
        launch!(device, Kernel::MultiTensorNormPartials, group.config();
            &tensors, &grads, &chunk_tensor, &chunks, &chunk, &partials)
    }
}

/// One AdamW step of every tensor of the group with its gradient scaled by `status[1]`, skipped on the
/// device when the norm `status[0]` is not finite. `hyper.weight_decay` applies to the entries that decay.
///
/// # Safety
/// As [`multi_tensor_clip_factor`]; no two entries' param, m, v or master buffers may overlap.
pub unsafe fn multi_tensor_adamw(
    device: &CudaDevice,
    group: &MultiTensorGroup,
    status: u64,
    hyper: &AdamWStep,
) -> Result<()> {
    if group.chunks == 0 {
        return Ok(());
    }
    let c = Constants::new(hyper);
    let (chunks, chunk) = (group.chunks as i64, MULTI_TENSOR_CHUNK as i64);
    let MultiTensorGroup { tensors, grads, chunk_tensor, .. } = *group;
    // SAFETY: matches `multi_tensor_adamw(const TensorEntry*, const u64*, const int*, i64, i64,
    // const double*, AdamWConstants)`.
    unsafe {
        launch!(device, Kernel::MultiTensorAdamw, group.config();
            &tensors, &grads, &chunk_tensor, &chunks, &chunk, &status, &c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunk ownership is exact integer bookkeeping: every element of every tensor is in exactly one
    /// chunk of its own tensor, and empty tensors own none.
    #[test]
    fn chunks_cover_every_tensor_once() {
        let c = MULTI_TENSOR_CHUNK;
        let (first, owner) = chunk_layout(&[0, 1, c, c + 1, 5, 2 * c]);
        assert_eq!(first, vec![0, 0, 1, 2, 4, 5]);
        assert_eq!(owner, vec![1, 2, 3, 3, 4, 5, 5]);
        assert_eq!(chunk_layout(&[]), (vec![], vec![]));
    }
}

//! Launchers of `kernels/cuda/flash_attention.cu` and `flash_attention_backward.cu`: causal attention
//! that never materialises the `[q_len, kv_len]` scores, for head dims 64 and 128.
//!
//! Operands are `[batch, len, heads, head_dim]` rows read in place (any row strides, contiguous
//! head_dim); results are written contiguous in that layout, the log-sum-exp as f32 `[batch, heads,
//! q_len]`.
use super::launch;
use crate::cuda::{CudaDevice, CudaError, GpuDType, Kernel, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// The head dims the kernels are instantiated for.
pub const FLASH_HEAD_DIMS: [usize; 2] = [64, 128];

/// Threads of a tensor-core block (4 warps of 16 rows each; fixed by the kernels).
const MMA_THREADS: u32 = 128;
/// Query rows (forward, dQ) and keys (dK, dV) per tensor-core block.
const MMA_TILE: usize = 64;

/// Element strides of one `[batch, len, heads, head_dim]` operand whose head_dim is contiguous; the C
/// layout of `struct AttentionRows` in `common.cuh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionRows {
    pub batch: i64,
    pub row: i64,
    pub head: i64,
}

// SAFETY: plain-old-data with the C layout of `struct AttentionRows`.
unsafe impl cudarc::driver::DeviceRepr for AttentionRows {}

/// A device operand: the address of element `[0, 0, 0, 0]` and its row strides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    pub ptr: u64,
    pub rows: AttentionRows,
}

impl Operand {
    /// Whether the bf16 kernels can stage this operand's rows in 16-byte chunks: an aligned address and
    /// strides that are whole chunks. f32 operands are read element by element and always qualify.
    pub fn is_staging_aligned(&self, dtype: GpuDType) -> bool {
        let chunk = (16 / dtype.size_in_bytes()) as i64;
        dtype == GpuDType::F32
            || (self.ptr.is_multiple_of(16)
                && [self.rows.batch, self.rows.row, self.rows.head].iter().all(|s| s % chunk == 0))
    }
}

/// Sizes of one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashDims {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// The C layout of `struct FlashShape` in `common.cuh`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct FlashShape {
    batch: i64,
    heads: i64,
    q_len: i64,
    kv_len: i64,
    head_dim: i32,
    scale: f32,
}

// SAFETY: plain-old-data with the C layout of `struct FlashShape`.
unsafe impl cudarc::driver::DeviceRepr for FlashShape {}

/// The kernel-side shape, or `None` when there is nothing to compute.
fn checked(dims: FlashDims) -> Result<Option<FlashShape>> {
    let invalid = |what: String| Err(CudaError::Invalid(format!("flash attention: {what}")));
    if !FLASH_HEAD_DIMS.contains(&dims.head_dim) {
        return invalid(format!("head_dim {} is not one of {FLASH_HEAD_DIMS:?}", dims.head_dim));
    }
    if dims.q_len > dims.kv_len {
        return invalid(format!("q_len {} exceeds kv_len {}", dims.q_len, dims.kv_len));
    }
    // Heads and batch are grid dims y and z.
    if dims.heads > 65535 || dims.batch > 65535 {
        return invalid(format!("{} heads x batch {} exceeds the grid (65535 each)", dims.heads, dims.batch));
    }
    if dims.batch * dims.heads * dims.q_len == 0 {
        return Ok(None);
    }
    Ok(Some(FlashShape {
        batch: dims.batch as i64,
        heads: dims.heads as i64,
        q_len: dims.q_len as i64,
        kv_len: dims.kv_len as i64,
        head_dim: dims.head_dim as i32,
        scale: dims.scale,
    }))
}

/// A tensor-core launch: one block per (64-row tile of `len`, head, batch).
fn tiles(len: usize, dims: FlashDims) -> LaunchConfig {
    let grid = (len.div_ceil(MMA_TILE) as u32, dims.heads as u32, dims.batch as u32);
    LaunchConfig { grid_dim: grid, block_dim: (MMA_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One warp per row of `rows`, eight per 256-thread block (grid capped; the kernels loop over the rest).
fn warp_rows(rows: usize) -> LaunchConfig {
    let blocks = rows.div_ceil(8).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn check_aligned(dtype: GpuDType, operands: &[Operand]) -> Result<()> {
    if operands.iter().all(|o| o.is_staging_aligned(dtype)) {
        return Ok(());
    }
    Err(CudaError::Invalid("flash attention: bf16 operands need 16-byte aligned rows".into()))
}

/// `out = softmax(scale q k^T + causal mask) v` (contiguous, like q) and the per-row log-sum-exp `lse`
/// (f32 `[batch, heads, q_len]`).
///
/// # Safety
/// `q` must address `[batch, q_len, heads, head_dim]` and `k`, `v` `[batch, kv_len, heads, head_dim]`
/// elements of `dtype` at their strides; `out` must hold `batch * q_len * heads * head_dim` elements of
/// `dtype` and `lse` `batch * heads * q_len` f32, all on this device.
pub unsafe fn flash_attention_forward(
    device: &CudaDevice,
    dtype: GpuDType,
    dims: FlashDims,
    [q, k, v]: [Operand; 3],
    out: u64,
    lse: u64,
) -> Result<()> {
    let Some(shape) = checked(dims)? else { return Ok(()) };
    check_aligned(dtype, &[q, k, v])?;
    let (kernel, config) = match dtype {
        GpuDType::F32 => (Kernel::FlashAttentionForwardF32, warp_rows(dims.batch * dims.heads * dims.q_len)),
        GpuDType::BF16 => (Kernel::FlashAttentionForwardBf16, tiles(dims.q_len, dims)),
    };
    // SAFETY: matches `flash_attention_forward_T(q, qs, k, ks, v, vs, o, lse, shape)`; sizes per contract.
    unsafe {
        launch!(device, kernel, config;
            &q.ptr, &q.rows, &k.ptr, &k.rows, &v.ptr, &v.rows, &out, &lse, &shape)
    }
}

/// What backward reads: the forward's inputs, its output and log-sum-exp, and the output's gradient.
#[derive(Clone, Copy, Debug)]
pub struct BackwardInputs {
    pub q: Operand,
    pub k: Operand,
    pub v: Operand,
    pub out: Operand,
    pub grad_out: Operand,
    /// f32 `[batch, heads, q_len]`, as written by [`flash_attention_forward`].
    pub lse: u64,
}

/// Where backward writes: the gradients (contiguous, shaped like q, k, v) and an f32 `[batch, heads,
/// q_len]` scratch buffer for `D = rowsum(dO * O)`.
#[derive(Clone, Copy, Debug)]
pub struct BackwardOutputs {
    pub grad_q: u64,
    pub grad_k: u64,
    pub grad_v: u64,
    pub row_dot: u64,
}

/// Gradients of [`flash_attention_forward`]: `D`, then dK and dV over key tiles, then dQ over query tiles
/// (a second pass, so that nothing is summed by atomics).
///
/// # Safety
/// The operands as for [`flash_attention_forward`] (`out` and `grad_out` shaped like q); every output
/// buffer sized as documented on [`BackwardOutputs`], all on this device.
pub unsafe fn flash_attention_backward(
    device: &CudaDevice,
    dtype: GpuDType,
    dims: FlashDims,
    inputs: BackwardInputs,
    outputs: BackwardOutputs,
) -> Result<()> {
    let Some(shape) = checked(dims)? else { return Ok(()) };
    let BackwardInputs { q, k, v, out, grad_out, lse } = inputs;
    check_aligned(dtype, &[q, k, v, grad_out])?;
    let (dot, kv, dq) = match dtype {
        GpuDType::F32 => (
            Kernel::FlashAttentionBackwardDotF32,
            Kernel::FlashAttentionBackwardF32,
            Kernel::FlashAttentionBackwardDqF32,
        ),
        GpuDType::BF16 => (
            Kernel::FlashAttentionBackwardDotBf16,
            Kernel::FlashAttentionBackwardBf16,
            Kernel::FlashAttentionBackwardDqBf16,
        ),
    };
    let (kv_config, dq_config) = match dtype {
        GpuDType::F32 => (
            warp_rows(dims.batch * dims.heads * dims.kv_len),
            warp_rows(dims.batch * dims.heads * dims.q_len),
        ),
        GpuDType::BF16 => (tiles(dims.kv_len, dims), tiles(dims.q_len, dims)),
    };
    let row_dot = outputs.row_dot;
    // SAFETY (all three): the argument lists match the kernels' (`BACKWARD_ARGS` then the outputs);
    // sizes per the contract.
    unsafe {
        launch!(device, dot, warp_rows(dims.batch * dims.heads * dims.q_len);
            &out.ptr, &out.rows, &grad_out.ptr, &grad_out.rows, &row_dot, &shape)?;
        launch!(device, kv, kv_config;
            &q.ptr, &q.rows, &k.ptr, &k.rows, &v.ptr, &v.rows, &grad_out.ptr, &grad_out.rows, &lse, &row_dot,
            &shape, &outputs.grad_k, &outputs.grad_v)?;
        launch!(device, dq, dq_config;
            &q.ptr, &q.rows, &k.ptr, &k.rows, &v.ptr, &v.rows, &grad_out.ptr, &grad_out.rows, &lse, &row_dot,
            &shape, &outputs.grad_q)
    }
}

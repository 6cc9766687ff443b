//! GPU causal attention through the flash kernels (head dims 64 and 128; `attention.rs` keeps the
//! materialised-scores path for the others). The `[q_len, kv_len]` scores never exist in memory: forward
//! writes the output and the per-row log-sum-exp (f32 `[batch, heads, q_len]`), backward recomputes the
//! probabilities tile by tile from it. Inputs are read in their `[batch, seq, heads, head_dim]` layout,
//! views included; only a view whose head_dim is strided, or whose rows the bf16 kernels cannot stage in
//! aligned 16-byte chunks, is copied first.
use super::cuda_error;
use crate::error::Result;
use crate::{DType, Tensor};
use cola_kernels::cuda::ops::flash_attention::{self as kernels, AttentionRows, FlashDims, Operand};

/// Whether the flash kernels handle this head dim.
pub(crate) fn supports(head_dim: usize) -> bool {
    kernels::FLASH_HEAD_DIMS.contains(&head_dim)
}

/// The sizes of validated q `[b, sq, h, hd]` and k `[b, skv, h, hd]`.
fn dims(q: &Tensor, k: &Tensor, scale: f64) -> FlashDims {
    let (qs, ks) = (q.shape(), k.shape());
    FlashDims {
        batch: qs[0],
        heads: qs[2],
        q_len: qs[1],
        kv_len: ks[1],
        head_dim: qs[3],
        scale: scale as f32,
    }
}

/// `t` as a kernel operand, with the tensor that owns its rows (`t` itself, or a contiguous copy when the
/// kernels cannot read `t` in place). A dim of size 1 gets stride 0: its stride is never multiplied by
/// anything but 0, so it should not decide alignment.
fn operand(op: &'static str, t: &Tensor) -> Result<(Tensor, Operand)> {
    let dtype = t.gpu_dtype(op)?;
    let view = |t: &Tensor| -> Result<Operand> {
        let (shape, strides) = (t.shape(), t.layout().strides());
        let stride = |d: usize| if shape[d] == 1 { 0 } else { strides[d] as i64 };
        let rows = AttentionRows { batch: stride(0), row: stride(1), head: stride(2) };
        Ok(Operand { ptr: t.gpu_ptr(op)?, rows })
    };
    if t.layout().strides()[3] == 1 {
        let operand = view(t)?;
        if operand.is_staging_aligned(dtype) {
            return Ok((t.clone(), operand));
        }
    }
    let copy = t.gpu_copy(t.dtype())?;
    let operand = view(&copy)?;
    Ok((copy, operand))
}

/// Causal attention of validated q `[b, sq, h, hd]`, k and v `[b, skv, h, hd]` (same dtype and device,
/// `hd` supported): the output, contiguous like q, and the per-row log-sum-exp.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention";
    let (device, dtype) = (q.gpu_device(OP)?, q.gpu_dtype(OP)?);
    let dims = dims(q, k, scale);
    let out = Tensor::gpu_empty(&device, q.shape(), q.dtype())?;
    let lse = Tensor::gpu_empty(&device, &[dims.batch, dims.heads, dims.q_len], DType::F32)?;
    if dims.kv_len == 0 {
        // No key to attend (q_len is then 0 too): nothing to compute.
        return Ok((out, lse));
    }
    let ((_q, qo), (_k, ko), (_v, vo)) = (operand(OP, q)?, operand(OP, k)?, operand(OP, v)?);
    // SAFETY: the operands address validated shapes of `dtype` on this device (copies live until the end
    // of the function, after the launch is queued; later kernels on the stream see them freed only after
    // it ran); `out` and `lse` were allocated with the sizes the kernel writes.
    unsafe {
        kernels::flash_attention_forward(
            &device,
            dtype,
            dims,
            [qo, ko, vo],
            out.gpu_ptr(OP)?,
            lse.gpu_ptr(OP)?,
        )
    }
    .map_err(cuda_error(OP))?;
    Ok((out, lse))
}

/// `[grad_q, grad_k, grad_v]` from the forward's output `out` and log-sum-exp `lse` (inputs validated by
/// the caller, `hd` supported; `out` shaped like q, `lse` contiguous f32 `[b, h, sq]`).
pub(crate) fn attention_backward(
    qkv: [&Tensor; 3],
    out: &Tensor,
    lse: &Tensor,
    grad_out: &Tensor,
    scale: f64,
) -> Result<Vec<Tensor>> {
    const OP: &str = "attention_backward";
    let [q, k, v] = qkv;
    let (device, dtype) = (q.gpu_device(OP)?, q.gpu_dtype(OP)?);
    let dims = dims(q, k, scale);
    if dims.kv_len == 0 || dims.q_len == 0 {
        return qkv.iter().map(|t| Tensor::gpu_zeros(&device, t.shape(), t.dtype())).collect();
    }
    // Every row of every gradient is written.
    let grads: Vec<Tensor> =
        qkv.iter().map(|t| Tensor::gpu_empty(&device, t.shape(), t.dtype())).collect::<Result<_>>()?;
    let (_q, qo) = operand(OP, q)?;
    let (_k, ko) = operand(OP, k)?;
    let (_v, vo) = operand(OP, v)?;
    let (_o, oo) = operand(OP, out)?;
    let (_g, go) = operand(OP, grad_out)?;
    let row_dot = Tensor::gpu_empty(&device, lse.shape(), DType::F32)?;
    let inputs =
        kernels::BackwardInputs { q: qo, k: ko, v: vo, out: oo, grad_out: go, lse: lse.gpu_ptr(OP)? };
    let outputs = kernels::BackwardOutputs {
        grad_q: grads[0].gpu_ptr(OP)?,
        grad_k: grads[1].gpu_ptr(OP)?,
        grad_v: grads[2].gpu_ptr(OP)?,
        row_dot: row_dot.gpu_ptr(OP)?,
    };
    // SAFETY: operands as in `attention`; the gradients are contiguous and shaped like q, k, v, and
    // `row_dot` like `lse`.
    unsafe { kernels::flash_attention_backward(&device, dtype, dims, inputs, outputs) }
        .map_err(cuda_error(OP))?;
    Ok(grads)
}

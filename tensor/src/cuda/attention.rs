//! GPU attention for head dims the flash kernels do not cover (`flash_attention.rs` takes 64 and 128; see
//! `ops/attention.rs` for the CPU path and the shape rules): the scores are materialised.
//!
//! q, k, v are copied head-major (`[batch * heads, len, head_dim]`, contiguous) so that every product is one
//! strided-batched cuBLAS GEMM with f32 accumulation:
//!     `S = scale Q K^T` (f32 scores),  `P = causal softmax(S)` (in the input dtype),  `O = P V`;
//! backward recomputes S and P (nothing is saved) and applies
//!     `dV = P^T dO`,  `dP = dO V^T` (f32),  `dS = P * (dP - rowsum(P * dP))` (P in f32 from S),
//!     `dQ = scale dS K`,  `dK = scale dS^T Q`.
//! Masked probabilities and score gradients are exact zeros, so the GEMMs run over whole rows.
use super::cuda_error;
use crate::error::Result;
use crate::{DType, Tensor};
use cola_kernels::cuda::blas::{gemm, GemmDims, Operand};
use cola_kernels::cuda::ops::attention::{self as kernels, ScoreRows};
use cola_kernels::cuda::{CudaDevice, GpuDType};
use std::sync::Arc;

/// `[batch, len, heads, head_dim]` as a contiguous head-major `[batch, heads, len, head_dim]` copy.
fn heads_first(t: &Tensor) -> Result<Tensor> {
    t.permute(&[0, 2, 1, 3])?.gpu_contiguous()
}

/// The inverse of [`heads_first`]: a contiguous `[batch, len, heads, head_dim]` copy.
fn heads_last(t: &Tensor) -> Result<Tensor> {
    t.permute(&[0, 2, 1, 3])?.gpu_contiguous()
}

/// Sizes of one attention call: `pairs = batch * heads` independent products.
#[derive(Clone, Copy)]
struct Sizes {
    pairs: usize,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
}

impl Sizes {
    fn of(q: &Tensor, k: &Tensor) -> Sizes {
        let (qs, ks) = (q.shape(), k.shape());
        Sizes { pairs: qs[0] * qs[2], q_len: qs[1], kv_len: ks[1], head_dim: qs[3] }
    }

    fn score_rows(&self) -> ScoreRows {
        ScoreRows { rows: self.pairs * self.q_len, q_len: self.q_len, kv_len: self.kv_len }
    }

    fn dims(&self, m: usize, n: usize, k: usize) -> GemmDims {
        GemmDims { m, n, k, batch: self.pairs }
    }
}

/// Each pair's `[rows, cols]` matrix of a contiguous `[pairs, rows, cols]` tensor at `ptr`.
fn matrix(ptr: u64, rows: usize, cols: usize) -> Operand {
    Operand { ptr, row_stride: cols, col_stride: 1, batch_stride: rows * cols }
}

/// The transpose (`[cols, rows]`) of each pair's `[rows, cols]` matrix, as a view.
fn transposed(ptr: u64, rows: usize, cols: usize) -> Operand {
    Operand { ptr, row_stride: 1, col_stride: cols, batch_stride: rows * cols }
}

/// Head-major inputs and the f32 scores `S = scale Q K^T`.
struct Scores {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s: Tensor,
}

fn scores(
    op: &'static str,
    device: &Arc<CudaDevice>,
    z: Sizes,
    qkv: [&Tensor; 3],
    scale: f32,
) -> Result<Scores> {
    let [q, k, v] = qkv;
    let dtype = q.gpu_dtype(op)?;
    let (q, k, v) = (heads_first(q)?, heads_first(k)?, heads_first(v)?);
    let s = Tensor::gpu_empty(device, &[z.pairs, z.q_len, z.kv_len], DType::F32)?;
    gemm(
        device,
        z.dims(z.q_len, z.kv_len, z.head_dim),
        dtype,
        matrix(q.gpu_ptr(op)?, z.q_len, z.head_dim),
        transposed(k.gpu_ptr(op)?, z.kv_len, z.head_dim),
        GpuDType::F32,
        s.gpu_ptr(op)?,
        scale,
        0.0,
    )
    .map_err(cuda_error(op))?;
    Ok(Scores { q, k, v, s })
}

/// Causal attention of validated q `[b, sq, h, hd]`, k and v `[b, skv, h, hd]` (same dtype and device).
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    const OP: &str = "attention";
    let (device, dtype) = (q.gpu_device(OP)?, q.gpu_dtype(OP)?);
    if q.numel() == 0 || k.numel() == 0 {
        return Tensor::gpu_zeros(&device, q.shape(), q.dtype());
    }
    let z = Sizes::of(q, k);
    let Scores { v, s, .. } = scores(OP, &device, z, [q, k, v], scale as f32)?;
    // f32 probabilities overwrite the scores; bf16 ones get their own buffer.
    let p =
        if dtype == GpuDType::F32 { s.clone() } else { Tensor::gpu_empty(&device, s.shape(), q.dtype())? };
    // SAFETY: `s` holds the f32 score rows and `p` as many elements of `dtype` (or is `s` itself, f32).
    unsafe { kernels::causal_softmax(&device, dtype, s.gpu_ptr(OP)?, p.gpu_ptr(OP)?, z.score_rows()) }
        .map_err(cuda_error(OP))?;
    let out = Tensor::gpu_empty(&device, &[q.shape()[0], q.shape()[2], z.q_len, z.head_dim], q.dtype())?;
    gemm(
        &device,
        z.dims(z.q_len, z.head_dim, z.kv_len),
        dtype,
        matrix(p.gpu_ptr(OP)?, z.q_len, z.kv_len),
        matrix(v.gpu_ptr(OP)?, z.kv_len, z.head_dim),
        dtype,
        out.gpu_ptr(OP)?,
        1.0,
        0.0,
    )
    .map_err(cuda_error(OP))?;
    heads_last(&out)
}

/// `[grad_q, grad_k, grad_v]` of causal attention (inputs validated by the caller).
pub(crate) fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    grad_out: &Tensor,
    scale: f64,
) -> Result<Vec<Tensor>> {
    const OP: &str = "attention_backward";
    let (device, dtype) = (q.gpu_device(OP)?, q.gpu_dtype(OP)?);
    if q.numel() == 0 || k.numel() == 0 {
        return [q, k, v].iter().map(|t| Tensor::gpu_zeros(&device, t.shape(), t.dtype())).collect();
    }
    let z = Sizes::of(q, k);
    let (batch, heads) = (q.shape()[0], q.shape()[2]);
    let scale = scale as f32;
    let Scores { q: qh, k: kh, v: vh, s } = scores(OP, &device, z, [q, k, v], scale)?;
    let grad_out = heads_first(grad_out)?;
    let p = Tensor::gpu_empty(&device, s.shape(), q.dtype())?;
    // SAFETY: `s` holds the f32 score rows, `p` as many elements of `dtype`.
    unsafe { kernels::causal_softmax(&device, dtype, s.gpu_ptr(OP)?, p.gpu_ptr(OP)?, z.score_rows()) }
        .map_err(cuda_error(OP))?;
    let (q_ptr, k_ptr, v_ptr) = (qh.gpu_ptr(OP)?, kh.gpu_ptr(OP)?, vh.gpu_ptr(OP)?);
    let (p_ptr, do_ptr) = (p.gpu_ptr(OP)?, grad_out.gpu_ptr(OP)?);
    let err = cuda_error(OP);

    // dV = P^T dO.
    let grad_v = Tensor::gpu_empty(&device, &[batch, heads, z.kv_len, z.head_dim], q.dtype())?;
    let dims = z.dims(z.kv_len, z.head_dim, z.q_len);
    let p_t = transposed(p_ptr, z.q_len, z.kv_len);
    let d_o = matrix(do_ptr, z.q_len, z.head_dim);
    gemm(&device, dims, dtype, p_t, d_o, dtype, grad_v.gpu_ptr(OP)?, 1.0, 0.0).map_err(&err)?;

    // dP = dO V^T in f32, then dS in the input dtype (in place when that is f32).
    let dp = Tensor::gpu_empty(&device, s.shape(), DType::F32)?;
    let v_t = transposed(v_ptr, z.kv_len, z.head_dim);
    let dims = z.dims(z.q_len, z.kv_len, z.head_dim);
    gemm(&device, dims, dtype, d_o, v_t, GpuDType::F32, dp.gpu_ptr(OP)?, 1.0, 0.0).map_err(&err)?;
    drop(p);
    let ds =
        if dtype == GpuDType::F32 { dp.clone() } else { Tensor::gpu_empty(&device, s.shape(), q.dtype())? };
    // SAFETY: `s` and `dp` hold the f32 score rows, `ds` as many elements of `dtype` (or is `dp`, f32).
    unsafe {
        kernels::causal_softmax_backward(
            &device,
            dtype,
            s.gpu_ptr(OP)?,
            dp.gpu_ptr(OP)?,
            ds.gpu_ptr(OP)?,
            z.score_rows(),
        )
    }
    .map_err(&err)?;
    let ds_ptr = ds.gpu_ptr(OP)?;

    // dQ = scale dS K.
    let grad_q = Tensor::gpu_empty(&device, &[batch, heads, z.q_len, z.head_dim], q.dtype())?;
    let dims = z.dims(z.q_len, z.head_dim, z.kv_len);
    let (ds_m, k_m) = (matrix(ds_ptr, z.q_len, z.kv_len), matrix(k_ptr, z.kv_len, z.head_dim));
    gemm(&device, dims, dtype, ds_m, k_m, dtype, grad_q.gpu_ptr(OP)?, scale, 0.0).map_err(&err)?;

    // dK = scale dS^T Q.
    let grad_k = Tensor::gpu_empty(&device, &[batch, heads, z.kv_len, z.head_dim], q.dtype())?;
    let dims = z.dims(z.kv_len, z.head_dim, z.q_len);
    let (ds_t, q_m) = (transposed(ds_ptr, z.q_len, z.kv_len), matrix(q_ptr, z.q_len, z.head_dim));
    gemm(&device, dims, dtype, ds_t, q_m, dtype, grad_k.gpu_ptr(OP)?, scale, 0.0).map_err(&err)?;

    Ok(vec![heads_last(&grad_q)?, heads_last(&grad_k)?, heads_last(&grad_v)?])
}

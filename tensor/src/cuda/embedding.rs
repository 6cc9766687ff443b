//! GPU implementation of the embedding ops (see `ops/embedding.rs` for the CPU path and the shape rules).
//!
//! The backward groups positions by id on the host (a stable sort, so each group keeps ascending
//! positions, the order the CPU kernel adds them in); the device then gives each distinct id one block
//! that sums its group's gradient rows in that order. No atomics: the gradient is bit-for-bit repeatable.
use super::cuda_error;
use crate::error::Result;
use crate::layout::Shape;
use crate::Tensor;
use cola_kernels::cuda::ops::embedding::{self as kernels, IdGroups};

/// `weight[ids]` for a validated `[vocab, dim]` table; the result is `ids_shape + [dim]`.
pub(crate) fn embedding(weight: &Tensor, ids: &[u32], ids_shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "embedding";
    let (device, dtype) = (weight.gpu_device(OP)?, weight.gpu_dtype(OP)?);
    let dim = weight.shape()[1];
    let mut shape: Shape = ids_shape.into();
    shape.push(dim);
    let out = Tensor::gpu_empty(&device, &shape, weight.dtype())?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let weight = weight.gpu_contiguous()?;
    let id_buf = device.upload(ids).map_err(cuda_error(OP))?;
    // SAFETY: weight is a contiguous `[vocab, dim]` table and every id `< vocab` (checked by the caller);
    // `out` holds `ids.len() * dim` elements; the id buffer outlives the launch in stream order.
    unsafe {
        kernels::embedding_forward(
            &device,
            dtype,
            weight.gpu_ptr(OP)?,
            id_buf.ptr(),
            out.gpu_ptr(OP)?,
            ids.len(),
            dim,
        )
    }
    .map_err(cuda_error(OP))?;
    Ok(out)
}

/// `(distinct ids, group starts, positions)` of the positions whose id is not `pad_id`, grouped by id in
/// ascending id order, positions ascending within a group.
fn group_by_id(ids: &[u32], pad_id: Option<u32>) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut positions: Vec<u32> =
        (0..ids.len() as u32).filter(|&i| Some(ids[i as usize]) != pad_id).collect();
    positions.sort_by_key(|&i| ids[i as usize]);
    let (mut rows, mut starts) = (Vec::new(), Vec::new());
    for (k, &i) in positions.iter().enumerate() {
        let id = ids[i as usize];
        if rows.last() != Some(&id) {
            rows.push(id);
            starts.push(k as u32);
        }
    }
    starts.push(positions.len() as u32);
    (rows, starts, positions)
}

/// Gradient `[vocab, dim]` of the table given `grad_out: [..ids.., dim]` (validated by the caller).
pub(crate) fn embedding_backward(
    grad_out: &Tensor,
    ids: &[u32],
    vocab: usize,
    pad_id: Option<u32>,
) -> Result<Tensor> {
    const OP: &str = "embedding_backward";
    let (device, dtype) = (grad_out.gpu_device(OP)?, grad_out.gpu_dtype(OP)?);
    let dim = grad_out.shape().last().copied().unwrap_or(0);
    let grad_weight = Tensor::gpu_zeros(&device, &[vocab, dim], grad_out.dtype())?;
    if grad_weight.numel() == 0 || ids.is_empty() {
        return Ok(grad_weight);
    }
    if ids.len() > u32::MAX as usize {
        return Err(crate::TensorError::InvalidArgument {
            op: OP,
            reason: format!("{} ids exceed the u32 positions of the GPU kernel", ids.len()),
        });
    }
    let grad_out = grad_out.gpu_contiguous()?;
    let (rows, starts, positions) = group_by_id(ids, pad_id);
    let upload = |v: &[u32]| device.upload(v).map_err(cuda_error(OP));
    let (rows_buf, starts_buf, positions_buf) = (upload(&rows)?, upload(&starts)?, upload(&positions)?);
    let groups = IdGroups {
        rows: rows_buf.ptr(),
        starts: starts_buf.ptr(),
        positions: positions_buf.ptr(),
        n_rows: rows.len(),
    };
    // SAFETY: grad_out is contiguous with a row of `dim` per position, grad_weight a zeroed `[vocab, dim]`
    // with every grouped id `< vocab` (checked by the caller); the group buffers hold `n_rows`,
    // `n_rows + 1` and `starts[n_rows]` u32 values and outlive the launch in stream order.
    unsafe {
        kernels::embedding_backward(
            &device,
            dtype,
            grad_out.gpu_ptr(OP)?,
            groups,
            grad_weight.gpu_ptr(OP)?,
            dim,
        )
    }
    .map_err(cuda_error(OP))?;
    Ok(grad_weight)
}

//! GPU implementation of the multi-tensor AdamW step with global-norm clipping (see `ops/optim.rs` for
//! the contract). The tensor table and the chunk layout are uploaded once and reused while no parameter
//! or state buffer moves; the gradients' addresses change every step and travel in a table of their own.
//! Per step: one upload, two launches for the norm and the clip factor, one for the update, one read of
//! the norm.
use super::cuda_error;
use crate::error::Result;
use crate::multi_tensor::{AdamWTensors, StateKind};
use cola_kernels::cpu::adamw::AdamWStep;
use cola_kernels::cuda::ops::adamw::{self as kernels, MultiTensorGroup, TensorEntry};
use cola_kernels::cuda::{CudaDevice, DeviceBuffer};
use std::sync::Arc;

const OP: &str = "clip_adamw_multi";

/// The device tables of one group and the host entries they were built from.
pub(crate) struct Tables {
    entries: Vec<TensorEntry>,
    device_entries: DeviceBuffer,
    chunk_tensor: DeviceBuffer,
    chunks: usize,
    /// One f64 partial sum of squares per chunk.
    partials: DeviceBuffer,
    /// The norm and the clip factor (two f64).
    status: DeviceBuffer,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tables({} tensors, {} chunks)", self.entries.len(), self.chunks)
    }
}

impl Tables {
    fn build(device: &Arc<CudaDevice>, entries: Vec<TensorEntry>, owners: &[i32]) -> Result<Tables> {
        let error = cuda_error(OP);
        Ok(Tables {
            device_entries: device.upload(&entries).map_err(&error)?,
            chunk_tensor: device.upload(owners).map_err(&error)?,
            chunks: owners.len(),
            partials: device.alloc(owners.len() * 8).map_err(&error)?,
            status: device.alloc(2 * 8).map_err(&error)?,
            entries,
        })
    }
}

/// A group ready to launch: its device tables, the table of this step's gradient addresses, and the
/// contiguous gradients those addresses point into (alive until the launches are queued).
struct Prepared {
    device: Arc<CudaDevice>,
    tables: Arc<Tables>,
    _grad_table: DeviceBuffer,
    _grads: Vec<crate::Tensor>,
    launch: MultiTensorGroup,
}

/// Checks out `group`'s buffers for in-place kernels and builds (or reuses from `cached`, the plan's
/// tables, replaced when a buffer moved) the tables the kernels read; `None` for an empty group.
fn prepare(
    cached: &mut Option<Arc<Tables>>,
    group: &mut [AdamWTensors],
    kinds: &[StateKind],
) -> Result<Option<Prepared>> {
    let Some(first) = group.first() else { return Ok(None) };
    let device = first.param.gpu_device(OP)?;
    let mut entries = Vec::with_capacity(group.len());
    // The contiguous gradients stay alive until their kernels are queued (stream order does the rest).
    let mut grads = Vec::with_capacity(group.len());
    for (t, &kind) in group.iter_mut().zip(kinds) {
        // In-place kernels: each buffer written must belong to its tensor alone.
        for written in [&mut *t.param, &mut *t.m, &mut *t.v].into_iter().chain(t.master.as_deref_mut()) {
            written.make_unique_gpu()?;
        }
        let grad = t.grad.gpu_contiguous()?;
        entries.push(TensorEntry {
            param: t.param.gpu_ptr(OP)?,
            m: t.m.gpu_ptr(OP)?,
            v: t.v.gpu_ptr(OP)?,
            master: t.master.as_deref().map_or(Ok(0), |master| master.gpu_ptr(OP))?,
            n: t.param.numel() as i64,
            first_chunk: 0,
            kind: kind as i32,
            decays: i32::from(t.decays),
        });
        grads.push(grad);
    }
    let sizes: Vec<usize> = group.iter().map(|t| t.param.numel()).collect();
    let (first_chunks, owners) = kernels::chunk_layout(&sizes);
    for (entry, first_chunk) in entries.iter_mut().zip(first_chunks) {
        entry.first_chunk = first_chunk;
    }
    let tables = match cached {
        Some(t) if t.entries == entries && Arc::ptr_eq(t.status.device(), &device) => t.clone(),
        _ => {
            let built = Arc::new(Tables::build(&device, entries, &owners)?);
            *cached = Some(built.clone());
            built
        }
    };
    let grad_ptrs: Vec<u64> = grads.iter().map(|g| g.gpu_ptr(OP)).collect::<Result<_>>()?;
    let grad_table = device.upload(&grad_ptrs).map_err(cuda_error(OP))?;
    let launch = MultiTensorGroup {
        tensors: tables.device_entries.ptr(),
        grads: grad_table.ptr(),
        chunk_tensor: tables.chunk_tensor.ptr(),
        chunks: tables.chunks,
    };
    Ok(Some(Prepared { device, tables, _grad_table: grad_table, _grads: grads, launch }))
}

/// The step of [`crate::Tensor::clip_adamw_multi`] on `group`, whose tensors (of `kinds`) the caller
/// checked (shapes, dtypes, one device); `cached` is the plan's tables, replaced when a buffer moved.
pub(crate) fn clip_adamw(
    cached: &mut Option<Arc<Tables>>,
    group: &mut [AdamWTensors],
    kinds: &[StateKind],
    max_norm: f64,
    hyper: AdamWStep,
) -> Result<f64> {
    // Bound whole: the gradients and their table must outlive the launches below.
    let Some(prepared) = prepare(cached, group, kinds)? else { return Ok(0.0) };
    let Prepared { device, tables, launch, .. } = &prepared;
    let status = tables.status.ptr();
    // SAFETY: the tables describe the group's tensors (contiguous, `n` elements of their kind's dtypes as
    // the caller checked; param, m, v and master each made the sole owner of its storage by `prepare`);
    // partials holds one f64 per chunk and status two.
    unsafe {
        kernels::multi_tensor_clip_factor(device, launch, tables.partials.ptr(), max_norm, status)
            .map_err(cuda_error(OP))?;
        kernels::multi_tensor_adamw(device, launch, status, &hyper).map_err(cuda_error(OP))?;
    }
    let mut read = [0.0f64; 2];
    device.download(&tables.status, 0, &mut read).map_err(cuda_error(OP))?;
    Ok(read[0])
}

/// [`crate::Tensor::multi_tensor_squares`]: the sum of the squares of `group`'s gradients, by the
/// partial sums of [`clip_adamw`] (the same bits as the square of the norm it computes, before the root).
pub(crate) fn squares(
    cached: &mut Option<Arc<Tables>>,
    group: &mut [AdamWTensors],
    kinds: &[StateKind],
) -> Result<f64> {
    // Bound whole: the gradients and their table must outlive the launches below.
    let Some(prepared) = prepare(cached, group, kinds)? else { return Ok(0.0) };
    let Prepared { device, tables, launch, .. } = &prepared;
    // SAFETY: as in `clip_adamw`; status holds two f64, of which the first receives the sum.
    unsafe {
        kernels::multi_tensor_squares(device, launch, tables.partials.ptr(), tables.status.ptr())
            .map_err(cuda_error(OP))?;
    }
    let mut read = [0.0f64; 1];
    device.download(&tables.status, 0, &mut read).map_err(cuda_error(OP))?;
    Ok(read[0])
}

/// [`crate::Tensor::adamw_multi_scaled`]: the update of [`clip_adamw`] with the norm and clip factor given
/// (computed by the caller from a global norm) rather than computed from `group`'s gradients.
pub(crate) fn adamw_scaled(
    cached: &mut Option<Arc<Tables>>,
    group: &mut [AdamWTensors],
    kinds: &[StateKind],
    norm: f64,
    factor: f64,
    hyper: AdamWStep,
) -> Result<()> {
    // Bound whole: the gradients and their table must outlive the launches below.
    let Some(prepared) = prepare(cached, group, kinds)? else { return Ok(()) };
    let Prepared { device, launch, .. } = &prepared;
    let status = device.upload(&[norm, factor]).map_err(cuda_error(OP))?;
    // SAFETY: as in `clip_adamw`, with `status` holding the norm and the factor.
    unsafe { kernels::multi_tensor_adamw(device, launch, status.ptr(), &hyper).map_err(cuda_error(OP))? };
    Ok(())
}

//! GPU tensors: storage in device memory of the CUDA backend, host transfers, and the helpers every GPU op
//! uses (output allocation, device addresses, strided kernel arguments, dtype mapping).
//!
//! GPU tensors are f32 or bf16; bf16 kernels load 16-bit values, compute in f32 and round once on store.
//! f64 stays on the CPU (it exists for gradient tests).
use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Device, Tensor};
use cola_kernels::cpu::strided::coalesce;
use cola_kernels::cuda::{self as cu, CudaDevice, CudaError, DeviceBuffer, GpuDType, StridedArg};
use half::bf16;
use std::sync::Arc;

pub use cola_kernels::cuda::MemoryStats;

// GPU implementations of the ops, one file per family; `ops/*.rs` dispatch here for GPU tensors after
// validating shapes, dtypes and devices. The dependency is one-way: these files import nothing from
// `ops/`; what both paths need (op kinds, batch offsets) lives in `op_kinds.rs` and `batch.rs`.
pub(crate) mod attention;
pub(crate) mod elementwise;
pub(crate) mod embedding;
pub(crate) mod flash_attention;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod multi_tensor;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod reduce;
pub(crate) mod rope;

/// Elements of one GPU tensor storage.
pub struct CudaStorage {
    pub(crate) buffer: DeviceBuffer,
    pub(crate) dtype: DType,
    /// Number of elements.
    pub(crate) len: usize,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({} x {}, {:?})", self.len, self.dtype, self.buffer)
    }
}

/// Maps a backend error to a tensor error naming the op.
pub(crate) fn cuda_error(op: &'static str) -> impl Fn(CudaError) -> TensorError {
    move |e| TensorError::Cuda { op, message: e.to_string() }
}

/// The kernel dtype of a GPU tensor dtype (f64 has none).
pub(crate) fn gpu_dtype(op: &'static str, dtype: DType) -> Result<GpuDType> {
    match dtype {
        DType::F32 => Ok(GpuDType::F32),
        DType::BF16 => Ok(GpuDType::BF16),
        DType::F64 => Err(TensorError::UnsupportedDType {
            op,
            dtype,
            reason: "GPU tensors are f32 or bf16; f64 runs on the CPU",
        }),
    }
}

/// The handle of CUDA device `ordinal`, or an error saying why there is none.
pub fn cuda_device(op: &'static str, ordinal: usize) -> Result<Arc<CudaDevice>> {
    cu::device(ordinal).map_err(|e| TensorError::UnsupportedDevice {
        op,
        device: Device::Cuda(ordinal),
        reason: e.to_string(),
    })
}

/// Number of usable CUDA devices (0 without a driver).
pub fn cuda_device_count() -> usize {
    cu::device_count().unwrap_or(0)
}

/// Allocator counters of CUDA device `ordinal`.
pub fn cuda_memory_stats(ordinal: usize) -> Result<MemoryStats> {
    Ok(cuda_device("memory_stats", ordinal)?.memory_stats())
}

/// Resets the allocator's peak counter of CUDA device `ordinal` to what is in use now.
pub fn cuda_reset_peak(ordinal: usize) -> Result<()> {
    cuda_device("reset_peak", ordinal)?.reset_peak();
    Ok(())
}

/// Returns the cached free buffers of CUDA device `ordinal` to the driver.
pub fn cuda_release_cached(ordinal: usize) -> Result<()> {
    cuda_device("release_cached", ordinal)?.release_cached().map_err(cuda_error("release_cached"))
}

/// Waits for all queued work of CUDA device `ordinal` (for timing).
pub fn cuda_synchronize(ordinal: usize) -> Result<()> {
    cuda_device("synchronize", ordinal)?.synchronize().map_err(cuda_error("synchronize"))
}

/// Opt-in TF32 math for f32 GEMMs on CUDA device `ordinal`.
pub fn cuda_set_tf32(ordinal: usize, on: bool) -> Result<()> {
    cuda_device("set_tf32", ordinal)?.set_tf32(on);
    Ok(())
}

/// Strided kernel arguments of several same-shaped views, with their dims merged where every view allows.
pub(crate) fn strided_args(op: &'static str, shape: &[usize], views: &[&Layout]) -> Result<Vec<StridedArg>> {
    let strides: Vec<&[usize]> = views.iter().map(|l| l.strides()).collect();
    let (merged, merged_strides) = coalesce(shape, &strides);
    views
        .iter()
        .zip(&merged_strides)
        .map(|(l, s)| StridedArg::new(&merged, s, l.offset()).map_err(cuda_error(op)))
        .collect()
}

impl Tensor {
    /// The GPU storage, when the tensor lives on a GPU.
    pub(crate) fn cuda_storage(&self) -> Option<&CudaStorage> {
        match self.storage() {
            Storage::Cuda(s) => Some(s),
            Storage::Cpu(_) => None,
        }
    }

    pub(crate) fn is_cuda(&self) -> bool {
        self.cuda_storage().is_some()
    }

    fn expect_cuda(&self, op: &'static str) -> Result<&CudaStorage> {
        self.cuda_storage().ok_or(TensorError::DeviceMismatch { op, lhs: Device::Cuda(0), rhs: Device::Cpu })
    }

    /// The device handle of a GPU tensor.
    pub(crate) fn gpu_device(&self, op: &'static str) -> Result<Arc<CudaDevice>> {
        Ok(self.expect_cuda(op)?.buffer.device().clone())
    }

    /// The kernel dtype of a GPU tensor.
    pub(crate) fn gpu_dtype(&self, op: &'static str) -> Result<GpuDType> {
        gpu_dtype(op, self.dtype())
    }

    /// Device address of the storage's first element (not of the view's offset).
    pub(crate) fn gpu_base(&self, op: &'static str) -> Result<u64> {
        Ok(self.expect_cuda(op)?.buffer.ptr())
    }

    /// Device address of the view's first element (offset applied): what a kernel on a contiguous tensor
    /// receives.
    pub(crate) fn gpu_ptr(&self, op: &'static str) -> Result<u64> {
        Ok(self.gpu_base(op)? + (self.layout().offset() * self.dtype().size_in_bytes()) as u64)
    }

    /// An uninitialised contiguous GPU tensor.
    pub(crate) fn gpu_empty(device: &Arc<CudaDevice>, shape: &[usize], dtype: DType) -> Result<Tensor> {
        gpu_dtype("alloc", dtype)?;
        let len: usize = shape.iter().product();
        let buffer = device.alloc(len * dtype.size_in_bytes()).map_err(cuda_error("alloc"))?;
        Ok(Tensor::from_any_storage(
            Storage::Cuda(CudaStorage { buffer, dtype, len }),
            Layout::contiguous(shape),
        ))
    }

    /// A contiguous GPU tensor of zeros.
    pub(crate) fn gpu_zeros(device: &Arc<CudaDevice>, shape: &[usize], dtype: DType) -> Result<Tensor> {
        gpu_dtype("zeros", dtype)?;
        let len: usize = shape.iter().product();
        let buffer = device.alloc_zeroed(len * dtype.size_in_bytes()).map_err(cuda_error("zeros"))?;
        Ok(Tensor::from_any_storage(
            Storage::Cuda(CudaStorage { buffer, dtype, len }),
            Layout::contiguous(shape),
        ))
    }

    /// A contiguous GPU tensor filled with `value`.
    pub(crate) fn gpu_full(
        device: &Arc<CudaDevice>,
        shape: &[usize],
        value: f64,
        dtype: DType,
    ) -> Result<Tensor> {
        if value == 0.0 {
            return Tensor::gpu_zeros(device, shape, dtype);
        }
        let out = Tensor::gpu_empty(device, shape, dtype)?;
        let (ptr, n) = (out.gpu_ptr("full")?, out.numel());
        // SAFETY: `out` holds `n` elements of its dtype.
        unsafe { cu::ops::elementwise::fill(device, ptr, value as f32, gpu_dtype("full", dtype)?, n) }
            .map_err(cuda_error("full"))?;
        Ok(out)
    }

    /// The device address of this GPU tensor's elements, for a library that writes them in place on the
    /// device's stream (NCCL summing a gradient bucket). A tensor that shares its storage or is a view
    /// first gets a contiguous storage of its own (copy on write, as in `write_slice`), so no other
    /// tensor sees the write.
    pub fn cuda_elements_mut(&mut self) -> Result<u64> {
        const OP: &str = "cuda_elements_mut";
        self.expect_cuda(OP)?;
        if !self.storage_is_unique() || !self.is_contiguous() {
            *self = self.gpu_copy(self.dtype())?;
        }
        self.gpu_ptr(OP)
    }

    /// Copies this view into a new contiguous GPU tensor of `dtype` (a cast when the dtypes differ).
    pub(crate) fn gpu_copy(&self, dtype: DType) -> Result<Tensor> {
        let out = Tensor::gpu_empty(&self.gpu_device("copy")?, self.shape(), dtype)?;
        out.gpu_copy_into(self)?;
        Ok(out)
    }

    /// Writes `src` (same shape) into the view `self` of a GPU buffer, converting the dtype.
    pub(crate) fn gpu_copy_into(&self, src: &Tensor) -> Result<()> {
        const OP: &str = "copy";
        if src.shape() != self.shape() {
            return Err(TensorError::ShapeMismatch {
                op: OP,
                lhs: self.shape().to_vec(),
                rhs: src.shape().to_vec(),
                reason: "a copy needs equal shapes",
            });
        }
        let device = self.gpu_device(OP)?;
        let args = strided_args(OP, src.shape(), &[src.layout(), self.layout()])?;
        // SAFETY: both views lie inside their buffers.
        unsafe {
            cu::ops::elementwise::copy_strided(
                &device,
                &args[0],
                src.gpu_base(OP)?,
                src.gpu_dtype(OP)?,
                &args[1],
                self.gpu_base(OP)?,
                self.gpu_dtype(OP)?,
                src.numel(),
            )
        }
        .map_err(cuda_error(OP))
    }

    /// This GPU tensor as a contiguous view (itself when it already is one).
    pub(crate) fn gpu_contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        self.gpu_copy(self.dtype())
    }

    /// A copy of a CPU tensor on CUDA device `ordinal` (contiguous; f64 is refused).
    pub(crate) fn upload(&self, ordinal: usize) -> Result<Tensor> {
        const OP: &str = "to_device";
        gpu_dtype(OP, self.dtype())?;
        let device = cuda_device(OP, ordinal)?;
        let host = self.contiguous()?;
        let buffer = match host.dtype() {
            DType::F32 => device.upload(&host.contiguous_data::<f32>()?),
            DType::BF16 => device.upload(&host.contiguous_data::<bf16>()?),
            DType::F64 => unreachable!("refused above"),
        }
        .map_err(cuda_error(OP))?;
        let storage = CudaStorage { buffer, dtype: self.dtype(), len: self.numel() };
        Ok(Tensor::from_any_storage(Storage::Cuda(storage), Layout::contiguous(self.shape())))
    }

    /// A contiguous CPU copy of a GPU tensor (waits for the queued work that produces it).
    pub(crate) fn download(&self) -> Result<Tensor> {
        const OP: &str = "to_device";
        let t = self.gpu_contiguous()?;
        let s = t.expect_cuda(OP)?;
        let (offset, n) = (t.layout().offset() * t.dtype().size_in_bytes(), t.numel());
        let device = s.buffer.device();
        let storage = match t.dtype() {
            DType::F32 => {
                let mut v = vec![0f32; n];
                device.download(&s.buffer, offset, &mut v).map_err(cuda_error(OP))?;
                CpuStorage::F32(v)
            }
            DType::BF16 => {
                let mut v = vec![bf16::ZERO; n];
                device.download(&s.buffer, offset, &mut v).map_err(cuda_error(OP))?;
                CpuStorage::BF16(v)
            }
            DType::F64 => return Err(gpu_dtype(OP, DType::F64).unwrap_err()),
        };
        Ok(Tensor::from_storage(storage, Layout::contiguous(self.shape())))
    }
}

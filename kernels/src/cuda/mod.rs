//! The CUDA backend's raw layer: device handles, the caching allocator, NVRTC compilation of the kernel
//! sources in `kernels/cuda/*.cu`, typed handles of their kernels ([`Kernel`]), cuBLAS GEMM, and one
//! launch wrapper per kernel family.
//!
//! Everything works on raw device pointers (`u64`) owned by [`DeviceBuffer`]s; the tensor crate keeps
//! shapes, strides and dtypes. All work of a device runs on its one stream, so buffers freed by the host
//! can be reused by the next kernel without synchronisation (stream order guarantees the old readers are
//! done). The driver, NVRTC and cuBLAS libraries are opened at first use; their absence is an error value,
//! never a panic: every entry point checks `is_culib_present` before touching cudarc.
mod alloc;
pub mod blas;
pub mod compile;
pub mod kernel;
pub mod ops;
pub mod profile;
mod runtime;

pub use alloc::{DeviceBuffer, MemoryStats};
pub use kernel::{Kernel, Module};
pub use runtime::{device, device_count, driver_available, CudaDevice};

/// What can go wrong on the GPU side; every variant says what was attempted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver library could be loaded (is an NVIDIA driver installed?)")]
    NoDriver,
    #[error("CUDA device {ordinal} does not exist ({count} device(s) present)")]
    NoDevice { ordinal: usize, count: usize },
    #[error("the NVRTC library (libnvrtc.so) could not be loaded; install the NVIDIA CUDA runtime compiler")]
    NoNvrtc,
    #[error("the cuBLAS library (libcublas.so) could not be loaded")]
    NoCublas,
    #[error("kernel source {source_name}.cu does not compile for {arch}:\n{log}")]
    Compile { source_name: &'static str, arch: String, log: String },
    #[error("CUDA driver call failed in {what}: {message}")]
    Driver { what: &'static str, message: String },
    #[error("cuBLAS call failed in {what}: {message}")]
    Blas { what: &'static str, message: String },
    #[error("out of GPU memory allocating {bytes} bytes ({in_use} bytes in use)")]
    OutOfMemory { bytes: usize, in_use: usize },
    #[error("invalid CUDA call: {0}")]
    Invalid(String),
}

impl CudaError {
    pub(crate) fn driver(what: &'static str, e: impl std::fmt::Debug) -> CudaError {
        CudaError::Driver { what, message: format!("{e:?}") }
    }
}

pub type Result<T> = std::result::Result<T, CudaError>;

/// Element types of GPU tensors: f32, and bf16 (stored as 16-bit, computed in f32 inside kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GpuDType {
    F32,
    BF16,
}

impl GpuDType {
    /// The suffix of the kernel symbols instantiated for this type (`fill_f32`, `fill_bf16`).
    pub fn suffix(self) -> &'static str {
        match self {
            GpuDType::F32 => "f32",
            GpuDType::BF16 => "bf16",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            GpuDType::F32 => 4,
            GpuDType::BF16 => 2,
        }
    }
}

/// Most dims a strided kernel argument describes.
pub const MAX_RANK: usize = 8;

/// A strided view for kernels: element `i` (row-major over `shape`) lives at
/// `offset + sum_d index_d * strides[d]` (strides in elements, 0 for broadcast dims). Passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StridedArg {
    pub rank: i32,
    pub pad: i32,
    pub offset: i64,
    pub shape: [i64; MAX_RANK],
    pub strides: [i64; MAX_RANK],
}

// SAFETY: plain-old-data with the C layout of `struct Strided` in common.cuh.
unsafe impl cudarc::driver::DeviceRepr for StridedArg {}

impl StridedArg {
    /// Fails when the view has more than [`MAX_RANK`] dims (the caller coalesces dims first).
    pub fn new(shape: &[usize], strides: &[usize], offset: usize) -> Result<StridedArg> {
        if shape.len() > MAX_RANK {
            return Err(CudaError::Invalid(format!("rank {} exceeds {MAX_RANK}", shape.len())));
        }
        let mut arg = StridedArg { rank: shape.len() as i32, offset: offset as i64, ..Default::default() };
        for (d, (&n, &s)) in shape.iter().zip(strides).enumerate() {
            arg.shape[d] = n as i64;
            arg.strides[d] = s as i64;
        }
        Ok(arg)
    }
}

//! Owned element buffers. A tensor shares its storage through an `Arc`; views share, ops allocate. A host
//! buffer goes back to the [`crate::pool`] when its last tensor is dropped.
use crate::{DType, Device};
use half::bf16;

/// Host memory, one variant per dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
}

/// Where the elements live.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaStorage),
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Storage {
    /// Host storage, counted as live by the [`crate::pool`] until dropped.
    pub(crate) fn cpu(storage: CpuStorage) -> Storage {
        crate::pool::on_create(storage.len() * storage.dtype().size_in_bytes());
        Storage::Cpu(storage)
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.dtype,
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => Device::Cuda(s.buffer.device().ordinal()),
        }
    }

    pub fn size_in_bytes(&self) -> usize {
        self.len() * self.dtype().size_in_bytes()
    }

    /// Number of elements in the buffer.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Storage {
    // Without the `cuda` feature `Storage` has only its CPU variant, so the pattern cannot fail.
    #[allow(irrefutable_let_patterns)]
    fn drop(&mut self) {
        if let Storage::Cpu(storage) = self {
            let bytes = storage.len() * storage.dtype().size_in_bytes();
            let taken = std::mem::replace(storage, CpuStorage::F32(Vec::new()));
            crate::pool::on_drop(taken, bytes);
        }
    }
}

/// A type that can be stored in a tensor (f32, f64, bf16).
pub trait Element: Copy + Send + Sync + std::fmt::Debug + 'static {
    const DTYPE: DType;
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]>;
    fn into_storage(data: Vec<Self>) -> CpuStorage;
    /// The buffer of `storage` when it holds `Self`.
    fn storage_into_vec(storage: CpuStorage) -> Option<Vec<Self>>;
    fn into_f64(self) -> f64;
    fn of_f64(x: f64) -> Self;
}

macro_rules! impl_element {
    ($t:ty, $variant:ident, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn slice(storage: &CpuStorage) -> Option<&[Self]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_storage(data: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(data)
            }
            fn storage_into_vec(storage: CpuStorage) -> Option<Vec<Self>> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_f64(self) -> f64 {
                $to(self)
            }
            fn of_f64(x: f64) -> Self {
                $from(x)
            }
        }
    };
}

impl_element!(f32, F32, |x: f32| x as f64, |x: f64| x as f32);
impl_element!(f64, F64, |x: f64| x, |x: f64| x);
// Through f32: `bf16::from_f64` rounds values just above a tie down, `from_f32` rounds to nearest even like
// the GPU kernels (an f32 converted through f64 is unchanged; an f64 is rounded twice).
impl_element!(bf16, BF16, |x: bf16| x.to_f64(), |x: f64| bf16::from_f32(x as f32));

/// An element type the CPU computes in: the kernels' [`cola_kernels::Float`] plus storage access.
pub trait CpuFloat: Element + cola_kernels::Float {}
impl CpuFloat for f32 {}
impl CpuFloat for f64 {}

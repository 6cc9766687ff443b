//! The tensor: shared storage plus a layout. Cloning is cheap (an `Arc` and a small layout).
use crate::error::{Result, TensorError};
use crate::layout::{Layout, Shape};
use crate::rng::{normal_at, uniform_at, Rng};
use crate::storage::{CpuFloat, CpuStorage, Element, Storage};
use crate::{DType, Device};
use cola_kernels::cpu::strided::{copy_strided, unary_map, Strided};
use half::bf16;
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::Arc;

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
}

/// Fails unless `device` can hold tensors in this build and on this machine.
pub(crate) fn check_device(op: &'static str, device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => crate::cuda::cuda_device(op, ordinal).map(|_| ()),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(TensorError::UnsupportedDevice {
            op,
            device,
            reason: "this build has no CUDA backend (build with the `cuda` feature)".into(),
        }),
    }
}

/// Fills a fresh buffer of `n` values with `f(i)` in parallel; `f` must be pure in `i`.
fn fill_with(n: usize, f: impl Fn(u64) -> f64 + Sync, dtype: DType) -> CpuStorage {
    fn make<T: Element>(n: usize, f: &(impl Fn(u64) -> f64 + Sync)) -> CpuStorage {
        let v: Vec<T> = (0..n).into_par_iter().map(|i| T::of_f64(f(i as u64))).collect();
        T::into_storage(v)
    }
    match dtype {
        DType::F32 => make::<f32>(n, &f),
        DType::F64 => make::<f64>(n, &f),
        DType::BF16 => make::<bf16>(n, &f),
    }
}

impl Tensor {
    pub(crate) fn from_storage(storage: CpuStorage, layout: Layout) -> Tensor {
        Tensor { storage: Arc::new(Storage::cpu(storage)), layout }
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn from_any_storage(storage: Storage, layout: Layout) -> Tensor {
        Tensor { storage: Arc::new(storage), layout }
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// True when no other tensor shares this one's storage (in-place updates need it).
    #[cfg(feature = "cuda")]
    pub(crate) fn storage_is_unique(&mut self) -> bool {
        Arc::get_mut(&mut self.storage).is_some()
    }

    /// A new tensor sharing this one's storage under another layout (a view).
    pub(crate) fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor { storage: self.storage.clone(), layout }
    }

    /// A contiguous tensor from a buffer of `T`; the length must match the shape.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let expected: usize = shape.iter().product();
        if data.len() != expected {
            return Err(TensorError::ElementCount {
                op: "from_vec",
                shape: shape.to_vec(),
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor::from_storage(T::into_storage(data), Layout::contiguous(shape)))
    }

    /// A rank-0 tensor.
    pub fn scalar<T: Element>(value: T) -> Tensor {
        Tensor::from_storage(T::into_storage(vec![value]), Layout::contiguous(&[]))
    }

    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_storage(fill_with(n, |_| value, dtype), Layout::contiguous(shape))
    }

    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 0.0, dtype)
    }

    /// [`Tensor::full`] on `device`.
    pub fn full_on(shape: &[usize], value: f64, dtype: DType, device: Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Ok(Tensor::full(shape, value, dtype)),
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => {
                Tensor::gpu_full(&crate::cuda::cuda_device("full", ordinal)?, shape, value, dtype)
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => check_device("full", device).map(|_| Tensor::full(shape, value, dtype)),
        }
    }

    /// Zeros on `device`.
    pub fn zeros_on(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full_on(shape, 0.0, dtype, device)
    }

    /// Zeros with the shape, dtype and device of `self`.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros_on(self.shape(), self.dtype(), self.device())
    }

    pub fn ones(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 1.0, dtype)
    }

    /// `[0, 1, ..., n-1]`.
    pub fn arange(n: usize, dtype: DType) -> Tensor {
        Tensor::from_storage(fill_with(n, |i| i as f64, dtype), Layout::contiguous(&[n]))
    }

    /// Normal(mean, std^2) values drawn from `rng` (advances it by one value per element).
    pub fn randn(shape: &[usize], mean: f64, std: f64, dtype: DType, rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        let (seed, start) = (rng.seed, rng.take(n));
        let storage = fill_with(n, |i| mean + std * normal_at(seed, start + i), dtype);
        Tensor::from_storage(storage, Layout::contiguous(shape))
    }

    /// Uniform values in (low, high) drawn from `rng`.
    pub fn rand_uniform(shape: &[usize], low: f64, high: f64, dtype: DType, rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        let (seed, start) = (rng.seed, rng.take(n));
        let storage = fill_with(n, |i| low + (high - low) * uniform_at(seed, start + i), dtype);
        Tensor::from_storage(storage, Layout::contiguous(shape))
    }

    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }

    pub fn rank(&self) -> usize {
        self.layout.rank()
    }

    pub fn numel(&self) -> usize {
        self.layout.numel()
    }

    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    pub fn device(&self) -> Device {
        self.storage.device()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// Bytes of the logical elements (not of a shared storage buffer).
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype().size_in_bytes()
    }

    /// Size of dimension `axis` (negative counts from the end).
    pub fn dim(&self, axis: isize) -> Result<usize> {
        Ok(self.shape()[crate::layout::resolve_axis("dim", axis, self.rank())?])
    }

    /// The host storage; fails for a GPU tensor (ops dispatch GPU tensors before reaching CPU code).
    pub(crate) fn cpu_storage(&self) -> Result<&CpuStorage> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(s),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => {
                Err(TensorError::DeviceMismatch { op: "host access", lhs: self.device(), rhs: Device::Cpu })
            }
        }
    }

    /// The elements as a mutable row-major slice, for in-place updates (optimizer steps). Makes the storage
    /// contiguous and unshared first, so no other tensor observes the change.
    pub(crate) fn data_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        if T::DTYPE != self.dtype() {
            return Err(TensorError::DTypeMismatch { op: "data_mut", lhs: self.dtype(), rhs: T::DTYPE });
        }
        self.cpu_storage()?;
        let whole = self.layout.offset() == 0 && self.numel() == self.storage.len();
        if !self.is_contiguous() || !whole || Arc::get_mut(&mut self.storage).is_none() {
            *self = self.copy_contiguous()?;
        }
        let dtype = self.dtype();
        match Arc::get_mut(&mut self.storage) {
            Some(Storage::Cpu(storage)) => T::slice_mut(storage),
            _ => None,
        }
        .ok_or(TensorError::DTypeMismatch { op: "data_mut", lhs: dtype, rhs: T::DTYPE })
    }

    /// The raw storage slice and layout as a strided view (fails if `T` is not the dtype).
    pub(crate) fn strided<T: Element>(&self) -> Result<Strided<'_, T>> {
        let data = T::slice(self.cpu_storage()?).ok_or(TensorError::DTypeMismatch {
            op: "strided access",
            lhs: self.dtype(),
            rhs: T::DTYPE,
        })?;
        Ok(Strided { data, offset: self.layout.offset(), strides: self.layout.strides() })
    }

    /// The elements in row-major order: borrowed when contiguous, copied otherwise.
    pub fn contiguous_data<T: Element>(&self) -> Result<Cow<'_, [T]>> {
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return Ok(Cow::Owned(self.download()?.to_vec::<T>()?));
        }
        let view = self.strided::<T>()?;
        let n = self.numel();
        if n == 0 {
            // An empty view may sit on an empty buffer with any strides: there is nothing to read.
            return Ok(Cow::Owned(Vec::new()));
        }
        if self.is_contiguous() {
            let start = self.layout.offset();
            return Ok(Cow::Borrowed(&view.data[start..start + n]));
        }
        // `copy_strided` writes every element.
        let mut out = crate::pool::take_for_overwrite::<T>(n);
        copy_strided(view, self.shape(), &mut out);
        Ok(Cow::Owned(out))
    }

    /// The elements as a `Vec<T>` in row-major order; `T` must be the tensor's dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        Ok(self.contiguous_data::<T>()?.into_owned())
    }

    /// The elements converted to f64, whatever the dtype (for tests and printing).
    pub fn to_vec_f64(&self) -> Vec<f64> {
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return self.download().map(|t| t.to_vec_f64()).unwrap_or_default();
        }
        match self.dtype() {
            DType::F32 => self.map_to_f64::<f32>(),
            DType::F64 => self.map_to_f64::<f64>(),
            DType::BF16 => self.map_to_f64::<bf16>(),
        }
    }

    fn map_to_f64<T: Element>(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.numel()];
        if let (Ok(view), false) = (self.strided::<T>(), out.is_empty()) {
            unary_map(view, self.shape(), &mut out, |x: T| x.into_f64());
        }
        out
    }

    /// The single value of a one-element tensor, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(TensorError::ElementCount {
                op: "to_scalar",
                shape: self.shape().to_vec(),
                expected: 1,
                got: self.numel(),
            });
        }
        Ok(self.to_vec_f64()[0])
    }

    /// A contiguous copy (or this tensor itself when it already is contiguous).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        self.copy_contiguous()
    }

    /// A fresh contiguous copy with storage of its own.
    fn copy_contiguous(&self) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return self.gpu_copy(self.dtype());
        }
        fn copy<T: Element>(t: &Tensor) -> CpuStorage {
            // The dtype matches by construction, so `contiguous_data` cannot fail here.
            T::into_storage(t.contiguous_data::<T>().map(Cow::into_owned).unwrap_or_default())
        }
        let storage = match self.dtype() {
            DType::F32 => copy::<f32>(self),
            DType::F64 => copy::<f64>(self),
            DType::BF16 => copy::<bf16>(self),
        };
        Ok(Tensor::from_storage(storage, Layout::contiguous(self.shape())))
    }

    /// A copy converted to `dtype` (this tensor itself when the dtype already matches).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return self.gpu_copy(dtype);
        }
        // bf16 <-> f32: the vectorised, multi-threaded conversion kernels (`cola_kernels::cpu::bf16`), on
        // the tensor's values in order (a view is gathered first). Widening is exact and rounding is to
        // nearest even, as the element-wise path below gives (tested in tensor/tests/suite/bf16_fused.rs).
        match (self.dtype(), dtype) {
            (DType::BF16, DType::F32) => {
                let src = self.contiguous_data::<bf16>()?;
                let mut out = crate::pool::take_for_overwrite::<f32>(src.len()); // written whole
                cola_kernels::cpu::bf16::widen_par(&src, &mut out);
                return Ok(Tensor::from_storage(f32::into_storage(out), Layout::contiguous(self.shape())));
            }
            (DType::F32, DType::BF16) => {
                let src = self.contiguous_data::<f32>()?;
                let mut out = crate::pool::take_for_overwrite::<bf16>(src.len()); // written whole
                cola_kernels::cpu::bf16::round_par(&src, &mut out);
                return Ok(Tensor::from_storage(bf16::into_storage(out), Layout::contiguous(self.shape())));
            }
            _ => {}
        }
        fn convert<S: Element, D: Element>(t: &Tensor) -> CpuStorage {
            // `unary_map` writes every element (the view has the tensor's dtype `S` by construction).
            let mut out = crate::pool::take_for_overwrite::<D>(t.numel());
            if let (Ok(view), false) = (t.strided::<S>(), out.is_empty()) {
                unary_map(view, t.shape(), &mut out, |x: S| D::of_f64(x.into_f64()));
            }
            D::into_storage(out)
        }
        fn to<D: Element>(t: &Tensor) -> CpuStorage {
            match t.dtype() {
                DType::F32 => convert::<f32, D>(t),
                DType::F64 => convert::<f64, D>(t),
                DType::BF16 => convert::<bf16, D>(t),
            }
        }
        let storage = match dtype {
            DType::F32 => to::<f32>(self),
            DType::F64 => to::<f64>(self),
            DType::BF16 => to::<bf16>(self),
        };
        Ok(Tensor::from_storage(storage, Layout::contiguous(self.shape())))
    }

    /// A copy on `device` (this tensor itself when it is already there). Copies are contiguous.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        check_device("to_device", device)?;
        #[cfg(feature = "cuda")]
        {
            let on_cpu = if self.is_cuda() { self.download()? } else { self.clone() };
            match device {
                Device::Cpu => Ok(on_cpu),
                Device::Cuda(ordinal) => on_cpu.upload(ordinal),
            }
        }
        #[cfg(not(feature = "cuda"))]
        Ok(self.clone())
    }

    /// Identity of the storage buffer (equal for tensors that share it), for memory accounting.
    pub fn storage_key(&self) -> usize {
        Arc::as_ptr(&self.storage) as usize
    }

    /// Bytes of the whole storage buffer this tensor views.
    pub fn storage_bytes(&self) -> usize {
        self.storage.size_in_bytes()
    }

    /// True when both tensors view the same storage buffer.
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// Builds a contiguous tensor of `shape` from a compute-type buffer.
    pub(crate) fn from_compute<T: CpuFloat>(data: Vec<T>, shape: &[usize]) -> Tensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Tensor::from_storage(T::into_storage(data), Layout::contiguous(shape))
    }

    pub(crate) fn shape_vec(&self) -> Shape {
        self.layout.shape().into()
    }
}

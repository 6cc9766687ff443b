//! One handle per CUDA device: context, stream, cuBLAS handle, loaded kernels and the memory pool.
//! Handles are created once per process and shared (`device(ordinal)`).
use super::alloc::{DeviceBuffer, MemoryStats, Pool};
use super::compile::compile_cubin;
use super::kernel::{Kernel, Module};
use super::{CudaError, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{result as driver, CudaContext, CudaFunction, CudaStream, DeviceRepr};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub struct CudaDevice {
    ordinal: usize,
    name: String,
    /// `sm_XY` of the device: kernels are compiled for exactly this architecture.
    arch: String,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: Mutex<CudaBlas>,
    /// One slot per kernel, indexed by [`Kernel::index`]; every slot of a module is filled together when
    /// the module is first used, and never changes afterwards.
    functions: [OnceLock<CudaFunction>; Kernel::COUNT],
    /// Held while a module is compiled and loaded, so each source is compiled once even under races.
    loading: Mutex<()>,
    pool: Mutex<Pool>,
    tf32: AtomicBool,
}

/// True when the CUDA driver library can be loaded.
pub fn driver_available() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Number of CUDA devices (0 when there is no driver).
pub fn device_count() -> Result<usize> {
    if !driver_available() {
        return Ok(0);
    }
    driver::init().map_err(|e| CudaError::driver("cuInit", e))?;
    let n = CudaContext::device_count().map_err(|e| CudaError::driver("cuDeviceGetCount", e))?;
    Ok(n.max(0) as usize)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The shared handle of device `ordinal`, created on first use.
pub fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let mut devices = lock(DEVICES.get_or_init(Default::default));
    if let Some(d) = devices.get(&ordinal) {
        return Ok(d.clone());
    }
    if !driver_available() {
        return Err(CudaError::NoDriver);
    }
    let count = device_count()?;
    if ordinal >= count {
        return Err(CudaError::NoDevice { ordinal, count });
    }
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(CudaError::NoCublas);
    }
    let context = CudaContext::new(ordinal).map_err(|e| CudaError::driver("cuCtxCreate", e))?;
    let (major, minor) =
        context.compute_capability().map_err(|e| CudaError::driver("compute capability", e))?;
    let name = context.name().unwrap_or_else(|_| "unknown GPU".into());
    let stream = context.default_stream();
    let blas = CudaBlas::new(stream.clone())
        .map_err(|e| CudaError::Blas { what: "create", message: format!("{e:?}") })?;
    let device = Arc::new(CudaDevice {
        ordinal,
        name,
        arch: format!("sm_{major}{minor}"),
        context,
        stream,
        blas: Mutex::new(blas),
        functions: std::array::from_fn(|_| OnceLock::new()),
        loading: Mutex::new(()),
        pool: Mutex::default(),
        tf32: AtomicBool::new(false),
    });
    devices.insert(ordinal, device.clone());
    Ok(device)
}

impl CudaDevice {
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Makes this device's context current on the calling thread (needed before raw driver calls).
    pub fn bind(&self) -> Result<()> {
        self.context.bind_to_thread().map_err(|e| CudaError::driver("cuCtxSetCurrent", e))
    }

    /// The loaded function of `kernel`. The first use of a module compiles its source and loads all its
    /// kernels; afterwards this is one atomic load of the kernel's slot (no lock, no name lookup).
    pub fn function(&self, kernel: Kernel) -> Result<&CudaFunction> {
        let slot = &self.functions[kernel.index()];
        if let Some(f) = slot.get() {
            return Ok(f);
        }
        self.load_module(kernel.module())?;
        slot.get().ok_or_else(|| {
            CudaError::Invalid(format!(
                "kernel {} of {}.cu was not loaded",
                kernel.symbol(),
                kernel.module().name()
            ))
        })
    }

    /// Compiles `module` for this device and fills the slots of all its kernels (nothing when another
    /// thread already did). Slots are filled only once every kernel was found, so a failure leaves none.
    fn load_module(&self, module: Module) -> Result<()> {
        let _loading = lock(&self.loading);
        if module.kernels().all(|k| self.functions[k.index()].get().is_some()) {
            return Ok(());
        }
        let cubin = compile_cubin(module.source(), &self.arch)?;
        self.bind()?;
        let loaded = self
            .context
            .load_module(Ptx::from_binary(cubin))
            .map_err(|e| CudaError::driver("cuModuleLoadData", e))?;
        let functions = module
            .kernels()
            .map(|k| {
                let f = loaded.load_function(k.symbol()).map_err(|e| {
                    CudaError::Invalid(format!(
                        "kernel {} not found in {}.cu: {e:?}",
                        k.symbol(),
                        module.name()
                    ))
                })?;
                Ok((k, f))
            })
            .collect::<Result<Vec<_>>>()?;
        for (k, f) in functions {
            // A filled slot holds the same function (filled under the same lock), so a refusal is harmless.
            let _ = self.functions[k.index()].set(f);
        }
        Ok(())
    }

    /// Runs `f` on the memory pool with the context current.
    pub(crate) fn with_pool<R>(&self, f: impl FnOnce(&mut Pool) -> Result<R>) -> Result<R> {
        self.bind()?;
        f(&mut lock(&self.pool))
    }

    /// An uninitialised buffer of `bytes` bytes.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        DeviceBuffer::new(self.clone(), bytes)
    }

    /// A buffer of `bytes` zero bytes.
    pub fn alloc_zeroed(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        let buf = self.alloc(bytes)?;
        if bytes > 0 {
            // SAFETY: `buf` holds at least `bytes` bytes; the memset is ordered on this device's stream.
            unsafe { driver::memset_d8_async(buf.ptr(), 0, bytes, self.stream.cu_stream()) }
                .map_err(|e| CudaError::driver("cuMemsetD8Async", e))?;
        }
        Ok(buf)
    }

    /// A new buffer holding a copy of `host`.
    pub fn upload<T: DeviceRepr>(self: &Arc<Self>, host: &[T]) -> Result<DeviceBuffer> {
        let buf = self.alloc(std::mem::size_of_val(host))?;
        if !host.is_empty() {
            // SAFETY: `buf` has room for `host`; a pageable-memory copy returns only after `host` was read.
            unsafe { driver::memcpy_htod_async(buf.ptr(), host, self.stream.cu_stream()) }
                .map_err(|e| CudaError::driver("cuMemcpyHtoDAsync", e))?;
        }
        Ok(buf)
    }

    /// Copies `out.len()` elements starting at byte `offset` of `buf` into `out`, waiting for them.
    pub fn download<T: DeviceRepr>(&self, buf: &DeviceBuffer, offset: usize, out: &mut [T]) -> Result<()> {
        let bytes = std::mem::size_of_val(out);
        if offset + bytes > buf.len() {
            return Err(CudaError::Invalid(format!(
                "download of {bytes} bytes at {offset} from a buffer of {} bytes",
                buf.len()
            )));
        }
        if out.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the range was checked above; the stream is synchronised before `out` is read.
        unsafe { driver::memcpy_dtoh_async(out, buf.ptr() + offset as u64, self.stream.cu_stream()) }
            .map_err(|e| CudaError::driver("cuMemcpyDtoHAsync", e))?;
        self.synchronize()
    }

    /// Waits for all queued work; reports asynchronous kernel failures.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| CudaError::driver("cuStreamSynchronize", e))
    }

    pub fn memory_stats(&self) -> MemoryStats {
        lock(&self.pool).stats()
    }

    pub fn reset_peak(&self) {
        lock(&self.pool).reset_peak()
    }

    /// Returns cached free buffers to the driver.
    pub fn release_cached(&self) -> Result<()> {
        self.with_pool(|pool| pool.release_cached())
    }

    /// Opt-in TF32 tensor-core math for f32 GEMMs (10-bit mantissa inputs, f32 accumulation).
    pub fn set_tf32(&self, on: bool) {
        self.tf32.store(on, Ordering::Relaxed)
    }

    pub fn tf32(&self) -> bool {
        self.tf32.load(Ordering::Relaxed)
    }

    pub(crate) fn blas(&self) -> MutexGuard<'_, CudaBlas> {
        lock(&self.blas)
    }
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice(cuda:{}, {}, {})", self.ordinal, self.name, self.arch)
    }
}

//! Launch wrappers, one file per kernel source. Each wrapper takes device pointers, sizes and a
//! [`GpuDType`](super::GpuDType), picks the [`Kernel`](super::Kernel) instantiated for that dtype with a
//! `match` and queues it on the device's stream.
use cudarc::driver::LaunchConfig;

pub mod adamw;
pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod flash_attention;
pub mod loss;
pub mod norm;
pub mod reduce;
pub mod rope;

/// Threads per block of the 1-D (elementwise) kernels.
pub const BLOCK: u32 = 256;

/// A 1-D launch covering `n` elements with grid-stride loops (grid capped; kernels loop for the rest).
pub fn grid_1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Launches `$kernel` (a [`Kernel`](crate::cuda::Kernel)) with the listed arguments (each a reference to a
/// `DeviceRepr` value: device addresses are passed as `&u64`). Must be used inside `unsafe`: the arguments
/// must match the kernel's parameter list in type and order, and every address must lie in a live buffer of
/// the device large enough for what the kernel touches.
macro_rules! launch {
    ($device:expr, $kernel:expr, $config:expr; $($arg:expr),* $(,)?) => {{
        let kernel: $crate::cuda::Kernel = $kernel;
        let f = $device.function(kernel)?;
        let mut builder = $device.stream().launch_builder(f);
        $( builder.arg($arg); )*
        let profiling = $crate::cuda::profile::enabled();
        if profiling {
            $device.synchronize()?;
        }
        let start = std::time::Instant::now();
        let launched = builder.launch($config).map(|_| ()).map_err(|e| {
            let what = format!("{}::{}: {e:?}", kernel.module().name(), kernel.symbol());
            $crate::cuda::CudaError::driver("kernel launch", what)
        });
        if profiling && launched.is_ok() {
            $device.synchronize()?;
            $crate::cuda::profile::record(kernel.symbol(), start);
        }
        launched
    }};
}
pub(crate) use launch;

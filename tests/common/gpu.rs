//! Shared by the GPU tests: the device they use, the visible skip on machines without one, and the
//! GPU-against-CPU tolerances.
use cola::tensor::{DType, Device};

pub const GPU: Device = Device::Cuda(0);

/// True when a CUDA device is present; otherwise prints `skipped: no CUDA device`, so that a machine
/// without a GPU never counts as a silent pass.
pub fn have_gpu() -> bool {
    if cola::tensor::cuda::cuda_device_count() == 0 {
        eprintln!("skipped: no CUDA device");
        return false;
    }
    true
}

/// `|gpu - cpu| <= tol * max(1, |cpu|)`: 1e-5 in f32 (different summation orders), 1e-2 in bf16 (both
/// sides compute in f32 and round once; one bf16 ulp is 2^-8 = 3.9e-3 relative).
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 1e-2,
        _ => 1e-5,
    }
}

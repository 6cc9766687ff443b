//! The kernel sources, embedded in the binary, and their NVRTC compilation to real device code (CUBIN).
//!
//! Each source is compiled as `common.cuh` followed by the family's `.cu` file; no CUDA headers are needed
//! (bf16 is handled as raw 16-bit values in `common.cuh`), so compilation works wherever libnvrtc loads.
use super::{CudaError, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::{c_char, CStr, CString};

/// One kernel family's source file.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// The file stem under `kernels/cuda/`.
    pub name: &'static str,
    pub code: &'static str,
}

/// Definitions shared by every source: bf16 conversion, the strided-index helper, block reductions.
pub const COMMON: &str = include_str!("../../cuda/common.cuh");

/// One constant per kernel family; [`crate::cuda::Module::source`] maps each module to its constant.
pub const ELEMENTWISE: KernelSource =
    KernelSource { name: "elementwise", code: include_str!("../../cuda/elementwise.cu") };
pub const REDUCE: KernelSource = KernelSource { name: "reduce", code: include_str!("../../cuda/reduce.cu") };
pub const NORM: KernelSource = KernelSource { name: "norm", code: include_str!("../../cuda/norm.cu") };
pub const ROPE: KernelSource = KernelSource { name: "rope", code: include_str!("../../cuda/rope.cu") };
pub const ATTENTION: KernelSource =
    KernelSource { name: "attention", code: include_str!("../../cuda/attention.cu") };
pub const FLASH_ATTENTION: KernelSource =
    KernelSource { name: "flash_attention", code: include_str!("../../cuda/flash_attention.cu") };
pub const FLASH_ATTENTION_BACKWARD: KernelSource = KernelSource {
    name: "flash_attention_backward",
    code: include_str!("../../cuda/flash_attention_backward.cu"),
};
pub const LOSS: KernelSource = KernelSource { name: "loss", code: include_str!("../../cuda/loss.cu") };
pub const EMBEDDING: KernelSource =
    KernelSource { name: "embedding", code: include_str!("../../cuda/embedding.cu") };
pub const ADAMW: KernelSource = KernelSource { name: "adamw", code: include_str!("../../cuda/adamw.cu") };

/// Every kernel family.
pub const SOURCES: &[KernelSource] = &[
    ELEMENTWISE,
    REDUCE,
    NORM,
    ROPE,
    ATTENTION,
    FLASH_ATTENTION,
    FLASH_ATTENTION_BACKWARD,
    LOSS,
    EMBEDDING,
    ADAMW,
];

/// True when libnvrtc can be loaded (it is opened by name, so `LD_LIBRARY_PATH` decides).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the shared library; no NVRTC function is called.
    unsafe { sys::is_culib_present() }
}

/// Compiles `src` to CUBIN for `arch` (e.g. `sm_90`): real machine code, so the driver never JIT-compiles
/// PTX (a newer NVRTC's PTX may be too new for an older driver).
pub fn compile_cubin(src: &KernelSource, arch: &str) -> Result<Vec<u8>> {
    if !nvrtc_available() {
        return Err(CudaError::NoNvrtc);
    }
    let code = CString::new(format!("{COMMON}\n{}", src.code))
        .map_err(|_| CudaError::Invalid(format!("{}.cu contains a NUL byte", src.name)))?;
    let name = CString::new(format!("{}.cu", src.name)).unwrap_or_default();
    let prog =
        result::create_program(&code, Some(&name)).map_err(|e| CudaError::driver("nvrtcCreateProgram", e))?;
    let options = [format!("--gpu-architecture={arch}"), "--std=c++17".to_string()];
    // SAFETY: `prog` was just created and is destroyed exactly once below.
    let outcome = unsafe {
        match result::compile_program(prog, &options) {
            Ok(()) => read_cubin(prog),
            Err(_) => {
                let log = result::get_program_log(prog).map(|l| log_text(&l)).unwrap_or_default();
                Err(CudaError::Compile { source_name: src.name, arch: arch.to_string(), log })
            }
        }
    };
    // SAFETY: `prog` is valid and not used afterwards.
    let _ = unsafe { result::destroy_program(prog) };
    outcome
}

/// # Safety
/// `prog` must be a successfully compiled program.
unsafe fn read_cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>> {
    let mut size = 0usize;
    // SAFETY: per the function contract.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| CudaError::driver("nvrtcGetCUBINSize", e))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has the size NVRTC reported.
    unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(|e| CudaError::driver("nvrtcGetCUBIN", e))?;
    Ok(cubin)
}

fn log_text(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    CString::new(bytes)
        .ok()
        .and_then(|c| CStr::to_str(&c).ok().map(str::to_string))
        .unwrap_or_else(|| "<unreadable log>".into())
}

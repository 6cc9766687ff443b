//! Raw compute of the cola stack: kernels on slices and device pointers, no tensor type.
//!
//! Every CPU kernel (`cpu`) takes plain slices (plus explicit strides where a view can be absorbed) and
//! writes into a caller-provided output. CPU kernels are generic over [`Float`] (f32, f64); bf16 storage is
//! computed in f32: `cpu::bf16` converts slices and runs an f32 kernel on widened chunks with one rounding
//! on store (the tensor layer's fused bf16 paths), AdamW and the cross-entropy have bf16 entry points built
//! on it, and the GEMM takes bf16 operands directly (`cpu::gemm::gemm_bf16`: f32 accumulation, f32 or bf16
//! output). The CUDA side (`cuda`, feature `cuda`) launches the
//! kernels of `kernels/cuda/*.cu` and cuBLAS on raw device addresses, f32 or bf16. Shapes are checked by the
//! caller (the tensor crate): kernels assume consistent lengths and document what they assume.
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod float;

pub use float::Float;

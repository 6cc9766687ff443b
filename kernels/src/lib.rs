//! Raw compute of the cola stack: kernels on slices, no tensor type.
//!
//! Every kernel here takes plain slices (plus explicit strides where a view can be absorbed) and writes into
//! a caller-provided output. Kernels are generic over [`Float`] (f32, f64); bf16 storage is converted by the
//! tensor layer, which computes in f32. Shapes are checked by the caller (the tensor crate): kernels assume
//! consistent lengths and document what they assume.
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod float;

pub use float::Float;

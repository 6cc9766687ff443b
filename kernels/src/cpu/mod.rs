//! CPU kernels, one file per op family.
pub mod adamw;
pub mod attention;
pub mod bf16;
pub mod elementwise;
pub mod embedding;
pub mod gated;
pub mod gemm;
pub mod loss;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod simd;
pub mod strided;

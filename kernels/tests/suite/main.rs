//! The kernels' integration tests, one binary: each file of this folder is the module of one group of
//! tests (its header says what they prove). One binary instantiates the generic kernels (GEMM, few-row
//! path, fused kernels) for the tests once, where one binary per file compiled them again in each. One
//! file's tests: `cargo test --release -p cola-kernels --test suite gemm::`.
//!
//! The SIMD level cap (`simd::set_max_level`) is process-wide: the tests that set it hold
//! `common::level_lock()` while they do.
#[path = "../common/mod.rs"]
mod common;

mod bf16_cpu;
mod fused;
mod gemm;
mod gemm_bf16;
mod gemv;
mod gemv_bf16;
mod kernel_handles;
mod nvrtc;

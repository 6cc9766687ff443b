//! The tensor crate's integration tests, one binary: each file of this folder is the module of one group
//! of tests (its header says what they prove), so the crate graph is compiled and linked for them once.
//! One file's tests: `cargo test --release -p cola-tensor --test suite matmul_bf16::`.
//!
//! `tests/pool.rs` keeps its own binary: it turns the process-wide host buffer pool off and on and checks
//! its exact hit counts, which the ops of tests running beside it would change.
mod attention_cache;
mod bf16_fused;
mod bf16_head;
mod device;
mod matmul_bf16;

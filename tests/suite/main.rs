//! The root crate's integration tests, one binary: each file of this folder is the module of one group of
//! tests (its header says what they prove), so that `cargo test` compiles and links the crate graph once
//! for all of them rather than once per file. One file's tests:
//! `cargo test --release -p cola --test suite forward::` (the module name filters the test names).
//!
//! Kept in their own binaries under `tests/`, because they cannot share a process with tests that run
//! beside them:
//! - `gpu_*.rs`: `scripts/gpu_bundle.sh` ships, and `scripts/gpu_check.sh` runs, one binary per file;
//! - `dist.rs`: built with `--features mpi` and run under `mpirun` (`.ci/run`);
//! - `pool.rs`: turns the process-wide host buffer pool off and on and counts the pool's hits;
//! - `profile.rs`: checks the pool's process-wide hit and byte counts over its measured steps, which
//!   other tests' ops would add to.
//!
//! Temporary folders are numbered within the process (`common::TempDir`), so modules may pick the same
//! names.
#[path = "../common/mod.rs"]
mod common;

mod audit_doc;
mod bf16_training;
mod checkpoints;
mod composite;
mod config;
mod data;
mod docs_commands;
mod errors;
mod experiments;
mod forward;
mod generate;
mod gradients;
mod loaders;
mod parity;
mod presets_run;
mod recompute;
mod shards;
mod signals;
mod tensor_core;
mod tour;
mod train;
mod variants;
mod write_slice;

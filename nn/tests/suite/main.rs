//! The nn crate's integration tests, one binary: each file of this folder is the module of one group of
//! tests (its header says what they prove), so the crate graph is compiled and linked for them once. One
//! file's tests: `cargo test --release -p cola-nn --test suite recompute::`.
mod bf16_decode;
mod checkpoint;
mod eager;
mod init;
mod layers;
mod model;
mod presets;
mod recompute;
mod variants;

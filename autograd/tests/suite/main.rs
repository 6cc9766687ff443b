//! The autograd crate's integration tests, one binary: each file of this folder is the module of one group
//! of tests (its header says what they prove), so the crate graph is compiled and linked for them once.
//! One file's tests: `cargo test --release -p cola-autograd --test suite profile::`.
mod attention_saved;
mod final_gradients;
mod profile;

//! cola: a from-scratch deep-learning stack for pre-training LLaMA language models with CoLA low-rank
//! activations.
//!
//! This facade re-exports the engine crates in their dependency order:
//! [`kernels`] (raw compute) <- [`tensor`] (tensors and forward ops) <- [`autograd`] (the tape) <-
//! [`nn`] (layers) and [`optim`] (optimizers).
pub use cola_autograd as autograd;
pub use cola_kernels as kernels;
pub use cola_nn as nn;
pub use cola_optim as optim;
pub use cola_tensor as tensor;

pub mod audit;
pub mod data;
pub mod dist;
pub mod experiments;
pub mod generate;
pub mod tour;
pub mod train;

pub use cola_autograd::{GradStore, Parameter, Tape, Var};
pub use cola_tensor::{DType, Device, Rng, Tensor};

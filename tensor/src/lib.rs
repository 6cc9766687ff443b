//! Tensors of the cola stack: element types, devices, strided layouts with zero-copy views, shared
//! storage (host memory or, with the `cuda` feature, GPU memory), and the forward ops (each a thin, checked
//! wrapper over a `cola_kernels` kernel: CPU, or CUDA for GPU tensors).
mod batch;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod display;
pub mod dtype;
pub mod error;
pub mod layout;
pub mod multi_tensor;
pub mod op_kinds;
pub mod ops;
pub mod pool;
pub mod rng;
pub mod storage;
pub mod tensor;

pub use cola_kernels::cpu::gated::GateActivation;
pub use device::{synchronize, Device};
pub use dtype::DType;
pub use error::{Result, TensorError};
pub use half::bf16;
pub use layout::{Layout, Shape};
pub use op_kinds::{BinaryOp, UnaryOp};
pub use ops::attention::AttentionSaved;
pub use ops::attention_cache::AttentionCache;
pub use ops::head_loss::HeadLossWithGrads;
pub use rng::Rng;
pub use storage::{CpuFloat, Element};
pub use tensor::Tensor;

//! Optimizers of the cola stack: AdamW with decoupled weight decay, the paper's warmup + cosine schedule,
//! and global-norm gradient clipping.
pub mod adamw;
pub mod clip;
pub mod error;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use clip::{clip_factor, clip_grad_norm, clip_to, squared_norm};
pub use error::{OptimError, Result};
pub use schedule::CosineSchedule;

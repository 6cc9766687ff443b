//! The tape-based autograd of the cola stack.
//!
//! A [`Tape`] records one forward pass as nodes (an [`Op`] with its attributes, input vars, output var).
//! [`Tape::backward`] walks them in reverse, applying each op's backward rule. An op family lives in one
//! file, `op/<family>.rs`: its attributes and its [`Rule`] (forward, what backward reads, backward,
//! FLOPs). Parameters are leaves whose gradients are reported by id and summed across passes in a
//! [`GradStore`]. Because every node can
//! replay its forward from its inputs, a value can be released after forward and rebuilt in backward: the
//! [`Policy`] decides which. Layers are written once against [`Graph`], which the tape implements by
//! recording and [`Eager`] by computing at once (evaluation, generation).
//! An opt-in [`Profiler`] on the tape times every op where it runs (forward, backward, replay).
pub mod backward;
pub mod error;
pub mod graph;
pub mod memory;
pub mod op;
pub mod param;
pub mod policy;
pub mod profile;
pub mod tape;

pub use error::{AutogradError, Result};
pub use graph::{Eager, Graph};
pub use memory::MemoryStats;
pub use op::{Needs, Op, Rule};
pub use param::{GradStore, ParamId, Parameter};
pub use policy::{Policy, Retention, SlotKind};
pub use profile::{Direction, ProfileEntry, Profiler};
pub use tape::{Gradients, Node, Tape, Var};

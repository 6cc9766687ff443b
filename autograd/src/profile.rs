//! An opt-in step profiler: calls, wall time and FLOPs per (direction, op family).
//!
//! The tape times each op where it runs: its forward in `record`, its backward rule in the backward walk,
//! its replay when a released value is rebuilt (the recompute direction of `Policy`). The trainer adds the
//! optimizer's phases (gradient accumulation, clipping, AdamW) through [`Profiler::time`]. A tape without
//! a profiler pays one branch per op and reads no clock.
//!
//! Each timed call is bracketed by two device synchronisations ([`cola_tensor::synchronize`]): on a GPU the
//! host clock then measures the op's own kernels, at the price of serialising host and device (a profiled
//! GPU step is slower than a plain one); on the CPU they are no-ops.
//!
//! FLOPs are counted from shapes, never measured: one formula per op family and direction, written next
//! to the family's backward rule (`op/<family>.rs`); [`flops`] picks the op's.
use crate::op::Op;
use cola_tensor::{Device, TensorError};
use std::collections::BTreeMap;
use std::time::Instant;

/// Where in a training step an op ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// The op's forward while the model records the loss.
    Forward,
    /// The op's backward rule.
    Backward,
    /// A replay of the op's forward that rebuilds a value the retention policy released.
    Recompute,
    /// Gradient accumulation, clipping and the optimizer update (timed by the trainer).
    Optimizer,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
            Direction::Recompute => "recompute",
            Direction::Optimizer => "optimizer",
        }
    }
}

/// What one (direction, family) row accumulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileEntry {
    pub calls: u64,
    pub nanos: u64,
    pub flops: u64,
}

/// Accumulated timings of the ops run on one device, keyed by (direction, family).
#[derive(Clone, Debug)]
pub struct Profiler {
    device: Device,
    entries: BTreeMap<(Direction, &'static str), ProfileEntry>,
}

impl Profiler {
    /// A profiler for ops on `device` (the device it synchronises around each timed call).
    pub fn new(device: Device) -> Self {
        Profiler { device, entries: BTreeMap::new() }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Adds one call of `family` in `direction` that took `nanos` and did `flops`.
    pub fn add(&mut self, direction: Direction, family: &'static str, nanos: u64, flops: u64) {
        let entry = self.entries.entry((direction, family)).or_default();
        entry.calls += 1;
        entry.nanos += nanos;
        entry.flops += flops;
    }

    /// Runs `f` between two synchronisations of the device and adds it as one call of `family` in
    /// `direction` with `flops`. A call that fails is not counted.
    pub fn time<T, E: From<TensorError>>(
        &mut self,
        direction: Direction,
        family: &'static str,
        flops: u64,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        cola_tensor::synchronize(self.device)?;
        let start = Instant::now();
        let out = f()?;
        cola_tensor::synchronize(self.device)?;
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.add(direction, family, nanos, flops);
        Ok(out)
    }

    /// The rows, ordered by direction then family name.
    pub fn entries(&self) -> impl Iterator<Item = (Direction, &'static str, ProfileEntry)> + '_ {
        self.entries.iter().map(|(&(direction, family), &entry)| (direction, family, entry))
    }

    pub fn get(&self, direction: Direction, family: &str) -> Option<ProfileEntry> {
        self.entries().find(|(d, f, _)| *d == direction && *f == family).map(|(_, _, e)| e)
    }

    /// Nanoseconds of every timed call together.
    pub fn total_nanos(&self) -> u64 {
        self.entries.values().map(|e| e.nanos).sum()
    }

    /// Forgets every row (keeps the device).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Runs `f`, timed as `family` in `direction` when `profiler` is set; `flops` is only evaluated then.
pub fn timed<T, E: From<TensorError>>(
    profiler: &mut Option<Profiler>,
    direction: Direction,
    family: &'static str,
    flops: impl FnOnce() -> u64,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    match profiler {
        None => f(),
        Some(p) => p.time(direction, family, flops(), f),
    }
}

/// [`timed`] for one recorded op: family and FLOPs from the op and the shapes of its inputs (evaluated
/// only when profiling).
pub(crate) fn timed_op<'a, T>(
    profiler: &mut Option<Profiler>,
    direction: Direction,
    op: &Op,
    input_shapes: impl FnOnce() -> Vec<&'a [usize]>,
    f: impl FnOnce() -> crate::Result<T>,
) -> crate::Result<T> {
    timed(profiler, direction, family(op), || flops(op, direction, &input_shapes()), f)
}

/// The row an op's time goes to ([`Rule::family`](crate::op::Rule::family)): ops that do the same
/// kind of work share a family.
pub fn family(op: &Op) -> &'static str {
    op.rule().family()
}

/// `forward` or `backward` by direction: the two counts of a per-element formula.
pub(crate) fn pick(backward: bool, forward: u64, backward_count: u64) -> u64 {
    if backward {
        backward_count
    } else {
        forward
    }
}

/// Elements of a shape.
pub(crate) fn numel(shape: &[usize]) -> u64 {
    shape.iter().map(|&d| d as u64).product()
}

/// Elements of the broadcast of `shapes` (aligned at the last axis; each axis is 1 or the common size).
pub(crate) fn broadcast_numel(shapes: &[&[usize]]) -> u64 {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    (0..rank)
        .map(|axis| {
            let size = |s: &&[usize]| (axis + s.len()).checked_sub(rank).map_or(1, |i| s[i]);
            shapes.iter().map(size).max().unwrap_or(1) as u64
        })
        .product()
}

/// FLOPs (a multiply-add is 2) of one call of `op` in `direction`, from its input shapes. A replay
/// (`Recompute`) costs its forward; the optimizer's phases are counted by the trainer (0 here). Each
/// family's formula is its [`Rule::flops`](crate::op::Rule::flops), documented in `op/<family>.rs`;
/// causal attention counts only the key/query pairs a query sees.
pub fn flops(op: &Op, direction: Direction, inputs: &[&[usize]]) -> u64 {
    match direction {
        Direction::Forward | Direction::Recompute => op.rule().flops(false, inputs),
        Direction::Backward => op.rule().flops(true, inputs),
        Direction::Optimizer => 0,
    }
}

/// FLOPs of one recorded forward ([`Op::forward_with_grads`]): the op's forward plus, for an op that
/// forms its input gradients there (the fused head and loss), those gradients
/// ([`Rule::recorded_forward_flops`](crate::op::Rule::recorded_forward_flops)).
pub fn recorded_forward_flops(op: &Op, inputs: &[&[usize]], wants: &[bool]) -> u64 {
    op.rule().recorded_forward_flops(inputs, wants)
}

/// `(rows, cols)` of the matrices of a `[..., rows, cols]` operand (a vector is one row).
pub(crate) fn last_two(shape: &[usize]) -> (u64, u64) {
    match shape {
        [] => (1, 1),
        [cols] => (1, *cols as u64),
        [.., rows, cols] => (*rows as u64, *cols as u64),
    }
}

pub(crate) fn batch_dims(shape: &[usize]) -> &[usize] {
    &shape[..shape.len().saturating_sub(2)]
}

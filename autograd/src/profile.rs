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
//! FLOPs are counted from shapes, never measured: [`flops`] holds one formula per op and direction.
use crate::op::Op;
use cola_tensor::{Device, GateActivation, TensorError, UnaryOp};
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

/// The row an op's time goes to: ops that do the same kind of work share a family.
pub fn family(op: &Op) -> &'static str {
    match op {
        Op::Matmul => "matmul",
        Op::Attention { .. } => "attention",
        Op::RmsNorm { .. } => "rms_norm",
        Op::Rope { .. } => "rope",
        Op::Unary(UnaryOp::Silu) => "silu",
        Op::Unary(UnaryOp::Gelu) => "gelu",
        Op::Unary(UnaryOp::Relu) => "relu",
        Op::Binary(_) | Op::Unary(_) | Op::Affine { .. } => "elementwise",
        Op::Embedding { .. } => "embedding",
        Op::CrossEntropy { .. } => "cross_entropy",
        Op::HeadCrossEntropy { .. } => "head_cross_entropy",
        Op::Reshape { .. } | Op::Permute { .. } | Op::Narrow { .. } | Op::BroadcastTo { .. } => "view",
        Op::Sum { .. } | Op::Mean { .. } => "reduce",
        Op::Concat { .. } => "concat",
        Op::Gated { .. } => "gated",
    }
}

fn numel(shape: &[usize]) -> u64 {
    shape.iter().map(|&d| d as u64).product()
}

/// Elements of the broadcast of `shapes` (aligned at the last axis; each axis is 1 or the common size).
fn broadcast_numel(shapes: &[&[usize]]) -> u64 {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    (0..rank)
        .map(|axis| {
            let size = |s: &&[usize]| (axis + s.len()).checked_sub(rank).map_or(1, |i| s[i]);
            shapes.iter().map(size).max().unwrap_or(1) as u64
        })
        .product()
}

/// FLOPs (a multiply-add is 2) of one call of `op` in `direction`, from its input shapes. A replay
/// (`Recompute`) costs its forward; the optimizer's phases are counted by the trainer (0 here).
///
/// - matmul `[..., m, k] @ [..., k, n]` over `batch` broadcast matrices: forward `2 batch m k n`;
///   backward `4 batch m k n`, the two products `g @ b^T` and `a^T @ g` (every matmul of the model wants
///   both operand gradients, so both are counted).
/// - attention, q `[b, t, h, d]` against k, v `[b, s, h, d]`: the kernels visit only the keys a query
///   sees (`kernels/src/cpu/attention.rs`: masked keys are never visited), `pairs = t (t + 1) / 2 +
///   t (s - t)` per head. Forward: the two products `q k^T` and `p v`, `4 b h d pairs` (half the
///   unmasked `2 * 2 b h t s d`). Backward recomputes the scores and forms `dV = P^T dO`, `dP = dO V^T`,
///   `dQ = dS K`, `dK = dS^T Q`: five products, `10 b h d pairs`, 2.5x forward. The softmax's per-score
///   exp and sums (a few per pair, not per pair and head dim) are not counted.
/// - per element of the output, forward / backward: rms_norm 4 / 9 (`x^2`, the sum, two scalings; the
///   backward's `w g`, `x w g`, its row sum, two scalings, a subtraction and the weight gradient's
///   three), rope 3 / 3 (a 2x2 rotation per pair), silu 4 / 9 (`exp`, `+1`, divide, multiply; backward
///   recomputes the sigmoid and forms `g s (1 + x (1 - s))`), elementwise 1 / 1 per input (affine 2 /
///   1: a multiply and an add), cross_entropy 4 / 5 per logit (max, shift, exp, sum; backward re-forms
///   the softmax, subtracts the target and scales).
/// - gated `act(gate) * up`, per element forward / backward: SiLU 5 / 11 (silu's 4 and the product;
///   backward recomputes the sigmoid (3), forms `dh (g s)` (2) and `(dh u) s (1 + g (1 - s))` (6): the
///   9 + 2 the unfused silu and multiply backward count), identity 1 / 2 (`dh u` and `dh g`).
/// - head_cross_entropy, hidden `[..., d]` (`rows` rows) by weight `[d, vocab]`: forward is the head's
///   product and cross_entropy's forward, `2 rows d vocab + 4 rows vocab` (a recorded forward also forms
///   the gradients: [`recorded_forward_flops`]); backward only scales those gradients by the loss
///   gradient, nothing when it is 1 (the scaling, 1 per gradient element otherwise, is not counted): 0.
/// - reduce: 1 per input element forward; its backward is a broadcast view (0).
/// - views and concat: 0 (they move or alias data); the backward of a broadcast sums back, 1 per element
///   of the broadcast shape.
/// - embedding: a gather forward (0); backward scatter-adds 1 per element of the output.
pub fn flops(op: &Op, direction: Direction, inputs: &[&[usize]]) -> u64 {
    let backward = match direction {
        Direction::Forward | Direction::Recompute => false,
        Direction::Backward => true,
        Direction::Optimizer => return 0,
    };
    let pick = |forward: u64, backward_count: u64| if backward { backward_count } else { forward };
    let first = inputs.first().copied().unwrap_or(&[]);
    match op {
        Op::Matmul => {
            let b = inputs.get(1).copied().unwrap_or(&[]);
            let (m, k) = last_two(first);
            let (_, n) = last_two(b);
            let batch = broadcast_numel(&[batch_dims(first), batch_dims(b)]);
            pick(2, 4) * batch * m * k * n
        }
        Op::Attention { .. } => {
            let k_shape = inputs.get(1).copied().unwrap_or(first);
            let &[b, t, h, d] = first else { return 0 };
            let s = k_shape.get(1).copied().unwrap_or(t).max(t);
            let (b, t, h, d, s) = (b as u64, t as u64, h as u64, d as u64, s as u64);
            let pairs = t * (t + 1) / 2 + t * (s - t);
            pick(4, 10) * b * h * d * pairs
        }
        Op::RmsNorm { .. } => pick(4, 9) * numel(first),
        Op::Rope { .. } => 3 * numel(first),
        Op::Unary(UnaryOp::Silu) => pick(4, 9) * numel(first),
        // x * sigmoid(2u) with a cubic u; the slope adds the cubic's derivative.
        Op::Unary(UnaryOp::Gelu) => pick(8, 16) * numel(first),
        Op::Unary(UnaryOp::Relu) => pick(1, 1) * numel(first),
        Op::Binary(_) => pick(1, inputs.len() as u64) * broadcast_numel(inputs),
        Op::Unary(_) => numel(first),
        Op::Affine { .. } => pick(2, 1) * numel(first),
        Op::CrossEntropy { .. } => pick(4, 5) * numel(first),
        Op::Gated { activation: GateActivation::Silu } => pick(5, 11) * numel(first),
        Op::Gated { activation: GateActivation::Identity } => pick(1, 2) * numel(first),
        Op::HeadCrossEntropy { .. } => {
            let (d, vocab) = last_two(inputs.get(1).copied().unwrap_or(&[]));
            let rows = numel(first).checked_div(d).unwrap_or(0);
            pick(2 * rows * d * vocab + 4 * rows * vocab, 0)
        }
        Op::Sum { .. } | Op::Mean { .. } => pick(numel(first), 0),
        Op::BroadcastTo { shape } => pick(0, numel(shape)),
        Op::Reshape { .. } | Op::Permute { .. } | Op::Narrow { .. } | Op::Concat { .. } => 0,
        Op::Embedding { ids_shape, .. } => {
            let dim = first.last().copied().unwrap_or(0) as u64;
            pick(0, numel(ids_shape) * dim)
        }
    }
}

/// FLOPs of one recorded forward ([`Op::forward_with_grads`]): the op's forward plus, for the fused head
/// and loss, the gradients it forms there: the cross-entropy gradient (`5 rows vocab`) and per wanted
/// input one product, `d logits @ weight^T` or `hidden^T @ d logits` (`2 rows d vocab` each).
pub fn recorded_forward_flops(op: &Op, inputs: &[&[usize]], wants: &[bool]) -> u64 {
    let forward = flops(op, Direction::Forward, inputs);
    match op {
        Op::HeadCrossEntropy { .. } => {
            let (d, vocab) = last_two(inputs.get(1).copied().unwrap_or(&[]));
            let rows = numel(inputs.first().copied().unwrap_or(&[])).checked_div(d).unwrap_or(0);
            let products = wants.iter().filter(|&&w| w).count() as u64;
            forward + 5 * rows * vocab + products * 2 * rows * d * vocab
        }
        _ => forward,
    }
}

/// `(rows, cols)` of the matrices of a `[..., rows, cols]` operand (a vector is one row).
fn last_two(shape: &[usize]) -> (u64, u64) {
    match shape {
        [] => (1, 1),
        [cols] => (1, *cols as u64),
        [.., rows, cols] => (*rows as u64, *cols as u64),
    }
}

fn batch_dims(shape: &[usize]) -> &[usize] {
    &shape[..shape.len().saturating_sub(2)]
}

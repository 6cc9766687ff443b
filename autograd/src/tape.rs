//! The tape: slots hold values, nodes record how each non-leaf value was made.
//!
//! Forward ops run eagerly and append a node (op, input vars, output var). Values the retention policy
//! marks `Recompute` are released when the decoder layer that made them ends ([`Tape::layer`]); before
//! backward starts, so is every value no backward rule reads. Whoever needs a released value (a backward
//! rule, or a later forward op) gets it back by replaying the recorded forward ops from the values still
//! held; rebuilt values are cached until their last use. Backward walks the nodes in reverse and releases
//! every value after its last use.
//!
//! With a [`Profiler`] set, each op is timed where it runs: its forward in `record`, its replay in
//! `rematerialize`, its backward rule (and the sums of gradients that meet at a value) in `backward`.
use crate::backward::{backward, Context};
use crate::error::{AutogradError, Result};
use crate::memory::{MemoryMeter, MemoryStats};
use crate::op::{Op, OutputAndSaved, UnitGrads};
use crate::param::{ParamId, Parameter};
use crate::policy::{Policy, Retention, SlotKind};
use crate::profile::{self, Direction, Profiler};
use cola_tensor::{Shape, Tensor};
use smallvec::SmallVec;
use std::collections::BTreeMap;

/// Handle of a value on a tape (an index into its slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Var(pub(crate) usize);

impl Var {
    pub fn index(self) -> usize {
        self.0
    }
}

struct Slot {
    value: Option<Tensor>,
    /// What the producer's forward saved next to the value for its backward ([`Op::forward_saving`]):
    /// present exactly when `value` is and the op saves one; released and replayed with it.
    saved: Option<Tensor>,
    shape: Shape,
    producer: Option<usize>,
    kind: SlotKind,
    requires_grad: bool,
    /// Recorded inside a decoder layer ([`Tape::layer`]).
    in_layer: bool,
    /// A retention set for this value alone, overriding the policy ([`Tape::set_retention`]).
    retention: Option<Retention>,
}

impl Slot {
    /// True for a recorded value the policy releases after its layer (rebuilt by replay when needed).
    fn is_recomputed(&self, policy: Policy) -> bool {
        let retention = self.retention.unwrap_or_else(|| policy.retention(self.kind, self.in_layer));
        self.producer.is_some() && retention == Retention::Recompute
    }
}

/// One recorded op application.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: SmallVec<[Var; 3]>,
    pub output: Var,
    /// Gradients of the inputs for an output gradient of 1, formed in forward by an op that does so
    /// ([`Op::forward_with_grads`]); its backward scales them. Held until that backward runs.
    pub unit_grads: Option<UnitGrads>,
}

/// Gradients from one backward pass: of leaf vars that require a gradient, and of the parameters among them.
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    leaves: BTreeMap<Var, Tensor>,
    params: Vec<(ParamId, Tensor)>,
}

impl Gradients {
    /// Gradient of a leaf var (`None` when no path from the loss reaches it).
    pub fn get(&self, var: Var) -> Option<&Tensor> {
        self.leaves.get(&var)
    }

    /// Gradients of the parameters recorded on the tape, in recording order; one per parameter, summed over
    /// its leaves when it was recorded more than once.
    pub fn params(&self) -> impl Iterator<Item = (&ParamId, &Tensor)> {
        self.params.iter().map(|(id, t)| (id, t))
    }

    pub fn param(&self, id: ParamId) -> Option<&Tensor> {
        self.params.iter().find(|(p, _)| *p == id).map(|(_, t)| t)
    }
}

/// A recording of one forward pass.
#[derive(Default)]
pub struct Tape {
    nodes: Vec<Node>,
    slots: Vec<Slot>,
    grad_disabled: bool,
    policy: Policy,
    backward_done: bool,
    layer_depth: usize,
    meter: MemoryMeter,
    stats: MemoryStats,
    /// When set, every op run (forward, backward rule, replay) is timed into it.
    profiler: Option<Profiler>,
}

impl Tape {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_policy(policy: Policy) -> Self {
        Tape { policy, ..Self::default() }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Times every op this tape runs from now on, per direction and op family (`profile.rs`).
    pub fn set_profiler(&mut self, profiler: Profiler) {
        self.profiler = Some(profiler);
    }

    /// The profiler with what it measured; the tape runs unprofiled afterwards.
    pub fn take_profiler(&mut self) -> Option<Profiler> {
        self.profiler.take()
    }

    fn push_slot(
        &mut self,
        (value, saved): OutputAndSaved,
        producer: Option<usize>,
        kind: SlotKind,
        requires_grad: bool,
    ) -> Var {
        let shape = value.shape().into();
        if producer.is_none() && matches!(kind, SlotKind::Input | SlotKind::Parameter(_)) {
            self.meter.add_leaf(&value);
        }
        self.meter.hold(&value);
        if let Some(saved) = &saved {
            self.meter.hold(saved);
        }
        let in_layer = self.layer_depth > 0;
        self.slots.push(Slot {
            value: Some(value),
            saved,
            shape,
            producer,
            kind,
            requires_grad,
            in_layer,
            retention: None,
        });
        Var(self.slots.len() - 1)
    }

    /// Stores a (re)computed value, and what its forward saved with it, in its slot.
    fn put(&mut self, var: Var, (value, saved): OutputAndSaved) {
        for t in std::iter::once(&value).chain(&saved) {
            self.meter.hold(t);
        }
        let slot = &mut self.slots[var.0];
        slot.value = Some(value);
        slot.saved = saved;
    }

    /// Drops a slot's value and what was saved with it (rebuilt by replay when the slot was recorded).
    fn release(&mut self, var: Var) {
        let slot = &mut self.slots[var.0];
        let (value, saved) = (slot.value.take(), slot.saved.take());
        for t in value.iter().chain(&saved) {
            self.meter.release(t);
        }
    }

    /// A leaf; with `requires_grad` backward reports its gradient.
    pub fn leaf(&mut self, value: Tensor, requires_grad: bool) -> Var {
        self.push_slot((value, None), None, SlotKind::Input, requires_grad)
    }

    /// A leaf that needs no gradient (data).
    pub fn constant(&mut self, value: Tensor) -> Var {
        self.leaf(value, false)
    }

    /// A parameter as a leaf that requires a gradient; its gradient is reported under its id.
    pub fn param(&mut self, param: &Parameter) -> Var {
        self.push_slot((param.value().clone(), None), None, SlotKind::Parameter(param.id()), true)
    }

    /// Marks what a value is (for retention policies). Leaves keep their kind.
    pub fn mark(&mut self, var: Var, kind: SlotKind) -> Result<()> {
        let slot = self.slot_mut(var)?;
        if slot.producer.is_some() {
            slot.kind = kind;
        }
        Ok(())
    }

    /// Sets the retention of one value, overriding the policy; takes effect at the end of its layer or when
    /// backward starts. Leaves and unrecorded values are always kept.
    pub fn set_retention(&mut self, var: Var, retention: Retention) -> Result<()> {
        self.slot_mut(var)?.retention = Some(retention);
        Ok(())
    }

    /// Number of slots (values) on the tape; `Var`s are indices below it.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every var of the tape, in recording order.
    pub fn vars(&self) -> impl Iterator<Item = Var> {
        (0..self.slots.len()).map(Var)
    }

    /// Runs `f` with recording off: ops compute values but add no nodes, and their outputs need no gradient.
    pub fn no_grad<R>(&mut self, f: impl FnOnce(&mut Tape) -> R) -> R {
        let before = std::mem::replace(&mut self.grad_disabled, true);
        let out = f(self);
        self.grad_disabled = before;
        out
    }

    /// Records the ops of one decoder layer. When `f` returns, the values it recorded that the policy marks
    /// `Recompute` are released, so forward holds at most one layer's intermediates beyond what is kept.
    pub fn layer<R>(&mut self, f: impl FnOnce(&mut Tape) -> R) -> R {
        let first = self.slots.len();
        self.layer_depth += 1;
        let out = f(self);
        self.layer_depth -= 1;
        for s in first..self.slots.len() {
            if self.slots[s].is_recomputed(self.policy) {
                self.release(Var(s));
            }
        }
        out
    }

    /// Activation memory of this tape so far (complete once backward has run).
    pub fn memory_stats(&self) -> MemoryStats {
        let mut stats = self.stats;
        if !self.backward_done {
            stats.forward_peak_bytes = self.meter.peak;
        }
        stats
    }

    /// Activation bytes held right now.
    pub fn held_bytes(&self) -> usize {
        self.meter.current
    }

    pub fn is_grad_enabled(&self) -> bool {
        !self.grad_disabled
    }

    fn slot(&self, var: Var) -> Result<&Slot> {
        self.slots.get(var.0).ok_or(AutogradError::UnknownVar { var: var.0, slots: self.slots.len() })
    }

    fn slot_mut(&mut self, var: Var) -> Result<&mut Slot> {
        let slots = self.slots.len();
        self.slots.get_mut(var.0).ok_or(AutogradError::UnknownVar { var: var.0, slots })
    }

    /// The value of a var (an error once backward has released it).
    pub fn value(&self, var: Var) -> Result<&Tensor> {
        value_in(&self.slots, var)
    }

    pub fn shape(&self, var: Var) -> Result<&[usize]> {
        Ok(&self.slot(var)?.shape)
    }

    pub fn requires_grad(&self, var: Var) -> Result<bool> {
        Ok(self.slot(var)?.requires_grad)
    }

    pub fn kind(&self, var: Var) -> Result<SlotKind> {
        Ok(self.slot(var)?.kind)
    }

    /// The recorded nodes, in forward order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Runs `op` on the values of `inputs` and records it when a gradient can flow through it.
    pub fn record(&mut self, op: Op, inputs: &[Var]) -> Result<Var> {
        if !self.backward_done {
            // A value released at the end of its layer is rebuilt when a later forward op reads it.
            let mut rebuilt = Vec::new();
            for &v in inputs {
                self.slot(v)?;
                self.rematerialize(v, &mut rebuilt)?;
            }
        }
        let wants: Vec<bool> =
            inputs.iter().map(|&v| Ok(self.slot(v)?.requires_grad)).collect::<Result<_>>()?;
        if self.grad_disabled || !wants.contains(&true) {
            let out = self.run_forward(&op, inputs, Direction::Forward)?;
            // No backward reads this value, so nothing saved for one is kept.
            return Ok(self.push_slot((out.0, None), None, SlotKind::Other, false));
        }
        let (out, unit_grads) = self.run_forward_with_grads(&op, inputs, &wants)?;
        for (&input, grad) in inputs.iter().zip(unit_grads.iter().flatten()) {
            let Some(grad) = grad else { continue };
            if self.slots[input.0].producer.is_some() {
                // The gradient of a recorded value: activation memory in flight, like the values it replaces.
                self.meter.hold(grad);
            } else {
                self.stats.forward_gradient_bytes += grad.size_in_bytes();
            }
        }
        let node = self.nodes.len();
        let output = self.push_slot(out, Some(node), SlotKind::Other, true);
        self.nodes.push(Node { op, inputs: inputs.into(), output, unit_grads });
        Ok(output)
    }

    /// [`Op::forward_with_grads`] on the values of `inputs`, timed as the op's forward (with the FLOPs of
    /// the gradients it forms).
    fn run_forward_with_grads(
        &mut self,
        op: &Op,
        inputs: &[Var],
        wants: &[bool],
    ) -> Result<(OutputAndSaved, Option<UnitGrads>)> {
        let slots = &self.slots;
        let values: Vec<&Tensor> = inputs.iter().map(|&v| value_in(slots, v)).collect::<Result<_>>()?;
        let shapes: Vec<&[usize]> = inputs.iter().map(|v| &slots[v.0].shape[..]).collect();
        let flops = || profile::recorded_forward_flops(op, &shapes, wants);
        profile::timed(&mut self.profiler, Direction::Forward, profile::family(op), flops, || {
            Ok(op.forward_with_grads(&values, wants)?)
        })
    }

    /// Runs `op`'s forward on the values of `inputs` (timed under `direction` when profiling): the value
    /// and what the op saves with it for backward.
    fn run_forward(&mut self, op: &Op, inputs: &[Var], direction: Direction) -> Result<OutputAndSaved> {
        let slots = &self.slots;
        let values: Vec<&Tensor> = inputs.iter().map(|&v| value_in(slots, v)).collect::<Result<_>>()?;
        let shapes = || inputs.iter().map(|v| &slots[v.0].shape[..]).collect();
        profile::timed_op(&mut self.profiler, direction, op, shapes, || Ok(op.forward_saving(&values)?))
    }

    /// Recomputes a released value by replaying its producer (and, recursively, whatever it needs).
    /// Returns the vars it rebuilt, so the caller can release them after their last use.
    fn rematerialize(&mut self, var: Var, rebuilt: &mut Vec<Var>) -> Result<()> {
        if self.slot(var)?.value.is_some() {
            return Ok(());
        }
        let node = self.slot(var)?.producer.ok_or(AutogradError::ValueReleased { var: var.0 })?;
        let (op, inputs) = (self.nodes[node].op.clone(), self.nodes[node].inputs.clone());
        for &input in &inputs {
            self.rematerialize(input, rebuilt)?;
        }
        let value = self.run_forward(&op, &inputs, Direction::Recompute)?;
        self.put(var, value);
        rebuilt.push(var);
        Ok(())
    }

    /// For each slot, the earliest node whose backward reads its value (`None`: no backward reads it),
    /// either directly or to replay a released value that the node's backward reads.
    fn last_uses(&self) -> Vec<Option<usize>> {
        let mut last = vec![None; self.slots.len()];
        for (n, node) in self.nodes.iter().enumerate() {
            let needs = node.op.needs();
            let read = node.inputs.iter().enumerate().filter(|(i, _)| needs.input(*i)).map(|(_, v)| *v);
            for v in read.chain(needs.output.then_some(node.output)) {
                last[v.0].get_or_insert(n);
            }
        }
        // Replaying a released value reads its producer's inputs at the same node. Walking the nodes in
        // reverse visits every consumer of a value before its producer, so needs propagate transitively.
        for node in self.nodes.iter().rev() {
            let Some(n) = last[node.output.0] else { continue };
            if self.slots[node.output.0].is_recomputed(self.policy) {
                for &input in &node.inputs {
                    let earliest = &mut last[input.0];
                    *earliest = Some(earliest.map_or(n, |u: usize| u.min(n)));
                }
            }
        }
        last
    }

    /// Back-propagates from the scalar `loss`: returns the gradients of the leaves that require one.
    /// Releases every recorded value on the way; a tape runs backward once.
    pub fn backward(&mut self, loss: Var) -> Result<Gradients> {
        self.backward_with(loss, |_, _| Ok(()))
    }

    /// [`Tape::backward`] that also hands each parameter's gradient to `on_final` as soon as it is
    /// final: once the earliest recorded node that reads the parameter has run its backward rule, no
    /// later step adds to it. Data-parallel training starts summing a bucket of gradients over the ranks
    /// while backward goes on through the earlier layers. A parameter recorded more than once (a tied
    /// weight) is handed over once, summed over its leaves as in the returned [`Gradients`]; one that no
    /// path from the loss reaches is not handed over. An error of `on_final` stops backward.
    pub fn backward_with<E: From<AutogradError> + From<cola_tensor::TensorError>>(
        &mut self,
        loss: Var,
        mut on_final: impl FnMut(ParamId, &Tensor) -> std::result::Result<(), E>,
    ) -> std::result::Result<Gradients, E> {
        if self.backward_done {
            return Err(AutogradError::BackwardTwice.into());
        }
        let loss_slot = self.slot(loss)?;
        if loss_slot.shape.iter().product::<usize>() != 1 {
            return Err(AutogradError::NotScalar { shape: loss_slot.shape.to_vec() }.into());
        }
        if !loss_slot.requires_grad {
            return Err(AutogradError::NoGradPath { var: loss.0 }.into());
        }
        let loss_value = self.value(loss)?;
        let seed = Tensor::full_on(&loss_slot.shape, 1.0, loss_value.dtype(), loss_value.device())?;
        self.backward_done = true;

        let last_use = self.last_uses();
        let final_after = self.parameters_final_after();
        self.stats.forward_peak_bytes = self.meter.peak;
        for (s, last) in last_use.iter().enumerate() {
            if last.is_none() || self.slots[s].is_recomputed(self.policy) {
                self.release(Var(s));
            }
        }
        self.stats.saved_bytes = self.meter.current;
        self.meter.reset_peak();
        let mut grad_bytes = 0usize;
        let mut backward_peak = self.meter.current;

        let mut grads: Vec<Option<Tensor>> = vec![None; self.slots.len()];
        grads[loss.0] = Some(seed);
        let mut rebuilt: Vec<Var> = Vec::new();
        for n in (0..self.nodes.len()).rev() {
            // Parameters whose earliest reader is node n are final once its rule has run (or skipped).
            let hand_over =
                |grads: &[Option<Tensor>],
                 on_final: &mut dyn FnMut(ParamId, &Tensor) -> std::result::Result<(), E>| {
                    for (id, leaves) in final_after.get(&n).into_iter().flatten() {
                        if let Some(g) = sum_leaves(grads, leaves)? {
                            on_final(*id, &g)?;
                        }
                    }
                    std::result::Result::<(), E>::Ok(())
                };
            let unit_grads = self.nodes[n].unit_grads.take();
            let node = self.nodes[n].clone();
            let Some(grad) = grads[node.output.0].take() else {
                hand_over(&grads, &mut on_final)?;
                continue;
            };
            let needs = node.op.needs();
            for (i, &input) in node.inputs.iter().enumerate() {
                if needs.input(i) {
                    self.rematerialize(input, &mut rebuilt)?;
                }
            }
            if needs.output {
                self.rematerialize(node.output, &mut rebuilt)?;
            }
            let input_grads = {
                let slots = &self.slots;
                let ctx = Context {
                    inputs: node
                        .inputs
                        .iter()
                        .enumerate()
                        .map(|(i, v)| if needs.input(i) { slots[v.0].value.as_ref() } else { None })
                        .collect(),
                    input_shapes: node.inputs.iter().map(|v| &slots[v.0].shape[..]).collect(),
                    output: if needs.output { slots[node.output.0].value.as_ref() } else { None },
                    saved: if needs.output { slots[node.output.0].saved.as_ref() } else { None },
                    grad: &grad,
                    wants: node.inputs.iter().map(|v| slots[v.0].requires_grad).collect(),
                    unit_grads: unit_grads.as_deref(),
                };
                let shapes = || ctx.input_shapes.clone();
                profile::timed_op(&mut self.profiler, Direction::Backward, &node.op, shapes, || {
                    backward(&node.op, &ctx)
                })?
            };
            grad_bytes -= grad.size_in_bytes().min(grad_bytes);
            for (&input, unit) in node.inputs.iter().zip(unit_grads.iter().flatten()) {
                if let (Some(unit), true) = (unit, self.slots[input.0].producer.is_some()) {
                    self.meter.release(unit);
                }
            }
            for (&input, g) in node.inputs.iter().zip(input_grads) {
                let Some(g) = g else { continue };
                let acc = &mut grads[input.0];
                *acc = Some(match acc.take() {
                    Some(prev) => {
                        let numel = || g.numel() as u64;
                        let sum = || prev.add(&g).map_err(AutogradError::from);
                        profile::timed(&mut self.profiler, Direction::Backward, "gradient_sum", numel, sum)?
                    }
                    None => {
                        // Gradients of leaves are the step's result (counted by the caller), not working set.
                        if self.slots[input.0].producer.is_some() {
                            grad_bytes += g.size_in_bytes();
                        }
                        g
                    }
                });
            }
            backward_peak = backward_peak.max(self.meter.peak + grad_bytes);
            self.meter.reset_peak();
            // Release what no earlier node's backward reads.
            for &input in node.inputs.iter().chain(std::iter::once(&node.output)) {
                if last_use[input.0].is_none_or(|u| u >= n) {
                    self.release(input);
                }
            }
            let (done, pending): (Vec<Var>, Vec<Var>) =
                rebuilt.iter().partition(|v| last_use[v.0].is_none_or(|u| u >= n));
            for v in done {
                self.release(v);
            }
            rebuilt = pending;
            hand_over(&grads, &mut on_final)?;
        }
        self.stats.backward_peak_bytes = backward_peak;

        let mut out = Gradients::default();
        for (id, leaves) in self.parameter_leaves() {
            if let Some(g) = sum_leaves(&grads, &leaves)? {
                out.params.push((id, g));
            }
        }
        for (s, slot) in self.slots.iter().enumerate() {
            if slot.producer.is_some() || !slot.requires_grad {
                continue;
            }
            if let Some(g) = grads[s].take() {
                out.leaves.insert(Var(s), g);
            }
        }
        Ok(out)
    }

    /// Every parameter on the tape with its leaf slots, in order of first recording.
    fn parameter_leaves(&self) -> Vec<(ParamId, Vec<usize>)> {
        let mut params: Vec<(ParamId, Vec<usize>)> = Vec::new();
        for (s, slot) in self.slots.iter().enumerate() {
            let SlotKind::Parameter(id) = slot.kind else { continue };
            if slot.producer.is_some() || !slot.requires_grad {
                continue;
            }
            match params.iter_mut().find(|(p, _)| *p == id) {
                Some((_, leaves)) => leaves.push(s),
                None => params.push((id, vec![s])),
            }
        }
        params
    }

    /// The parameters keyed by the node after whose backward rule their gradient is final: the earliest
    /// node that takes any of their leaves as an input (backward visits nodes in reverse).
    fn parameters_final_after(&self) -> BTreeMap<usize, Vec<(ParamId, Vec<usize>)>> {
        let mut earliest: Vec<Option<usize>> = vec![None; self.slots.len()];
        for (n, node) in self.nodes.iter().enumerate() {
            for input in &node.inputs {
                earliest[input.0].get_or_insert(n);
            }
        }
        let mut by_node: BTreeMap<usize, Vec<(ParamId, Vec<usize>)>> = BTreeMap::new();
        for (id, leaves) in self.parameter_leaves() {
            if let Some(n) = leaves.iter().filter_map(|&s| earliest[s]).min() {
                by_node.entry(n).or_default().push((id, leaves));
            }
        }
        by_node
    }
}

/// A parameter's gradient: the sum over its leaf slots in slot order (a tied weight is recorded more than
/// once), `None` when no path from the loss reached any of them.
fn sum_leaves(grads: &[Option<Tensor>], leaves: &[usize]) -> Result<Option<Tensor>> {
    let mut sum: Option<Tensor> = None;
    for g in leaves.iter().filter_map(|&s| grads[s].as_ref()) {
        sum = Some(match sum {
            Some(prev) => prev.add(g)?,
            None => g.clone(),
        });
    }
    Ok(sum)
}

/// The value of `var` among `slots` (an error for an unknown or released var).
fn value_in(slots: &[Slot], var: Var) -> Result<&Tensor> {
    let slot = slots.get(var.0).ok_or(AutogradError::UnknownVar { var: var.0, slots: slots.len() })?;
    slot.value.as_ref().ok_or(AutogradError::ValueReleased { var: var.0 })
}

//! Trainable parameters and the gradient store that accumulates their gradients across backward calls.
use crate::error::Result;
use crate::tape::Gradients;
use cola_tensor::Tensor;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Identity of a parameter, unique within the process. Ordered by creation, so maps keyed by it iterate
/// in a fixed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParamId(u64);

static NEXT_PARAM_ID: AtomicU64 = AtomicU64::new(0);

/// A named trainable tensor. The tape reads it as a leaf; the optimizer replaces its value.
#[derive(Clone, Debug)]
pub struct Parameter {
    id: ParamId,
    name: String,
    value: Tensor,
}

impl Parameter {
    pub fn new(name: impl Into<String>, value: Tensor) -> Self {
        let id = ParamId(NEXT_PARAM_ID.fetch_add(1, Ordering::Relaxed));
        Parameter { id, name: name.into(), value }
    }

    pub fn id(&self) -> ParamId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// Replaces the value (an optimizer step); the shape and dtype should stay those of the old value.
    pub fn set_value(&mut self, value: Tensor) {
        self.value = value;
    }
}

/// Gradients of parameters, summed over every backward pass since the last `clear` (gradient accumulation
/// over micro-batches). Iterates in parameter creation order.
#[derive(Clone, Debug, Default)]
pub struct GradStore {
    grads: BTreeMap<ParamId, Tensor>,
}

impl GradStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the parameter gradients of one backward pass.
    pub fn accumulate(&mut self, grads: &Gradients) -> Result<()> {
        for (id, g) in grads.params() {
            self.accumulate_one(*id, g)?;
        }
        Ok(())
    }

    /// Adds one parameter's gradient of a backward pass: what [`GradStore::accumulate`] does for each,
    /// for a gradient handed over by [`crate::Tape::backward_with`] as soon as it is final.
    pub fn accumulate_one(&mut self, id: ParamId, g: &Tensor) -> Result<()> {
        let summed = match self.grads.get(&id) {
            Some(prev) => prev.add(g)?,
            None => g.contiguous()?,
        };
        self.grads.insert(id, summed);
        Ok(())
    }

    pub fn get(&self, id: ParamId) -> Option<&Tensor> {
        self.grads.get(&id)
    }

    /// The gradient of a parameter, to change in place (clipping, scaling).
    pub fn get_mut(&mut self, id: ParamId) -> Option<&mut Tensor> {
        self.grads.get_mut(&id)
    }

    /// Replaces the gradient of a parameter.
    pub fn set(&mut self, id: ParamId, grad: Tensor) {
        self.grads.insert(id, grad);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ParamId, &Tensor)> {
        self.grads.iter()
    }

    pub fn len(&self) -> usize {
        self.grads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Forgets every gradient (the optimizer's zero_grad).
    pub fn clear(&mut self) {
        self.grads.clear();
    }
}

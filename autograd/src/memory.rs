//! Accounting of the activation memory a tape holds: bytes of distinct storage buffers referenced by held
//! non-leaf values (views of one buffer count once; buffers of parameters and inputs never count).
use cola_tensor::Tensor;
use std::collections::{HashMap, HashSet};

/// Activation bytes at the points that matter for a training step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Highest activation bytes held during forward.
    pub forward_peak_bytes: usize,
    /// Bytes held when backward starts, after the policy's releases: what survives forward.
    pub saved_bytes: usize,
    /// Highest activation bytes plus bytes of gradients of non-leaf values in flight during backward
    /// (gradients of leaves and parameters are the result of the step, not part of this).
    pub backward_peak_bytes: usize,
    /// Bytes of gradients of leaves (the LM head's weight) formed during forward by an op that forms its
    /// gradients with its output (`Op::forward_with_grads`) and held until backward returns them. They are
    /// the step's parameter gradients, only made earlier, so they are not activations; gradients it forms
    /// for recorded values are activations and count in the three figures above.
    pub forward_gradient_bytes: usize,
}

#[derive(Default)]
pub(crate) struct MemoryMeter {
    /// Storage key -> (number of held values viewing it, its bytes).
    held: HashMap<usize, (usize, usize)>,
    leaf_storages: HashSet<usize>,
    pub(crate) current: usize,
    pub(crate) peak: usize,
}

impl MemoryMeter {
    pub(crate) fn add_leaf(&mut self, t: &Tensor) {
        self.leaf_storages.insert(t.storage_key());
    }

    pub(crate) fn hold(&mut self, t: &Tensor) {
        let key = t.storage_key();
        if self.leaf_storages.contains(&key) {
            return;
        }
        let entry = self.held.entry(key).or_insert((0, t.storage_bytes()));
        if entry.0 == 0 {
            self.current += entry.1;
            self.peak = self.peak.max(self.current);
        }
        entry.0 += 1;
    }

    pub(crate) fn release(&mut self, t: &Tensor) {
        let key = t.storage_key();
        if let Some(entry) = self.held.get_mut(&key) {
            entry.0 -= 1;
            if entry.0 == 0 {
                self.current -= entry.1;
                self.held.remove(&key);
            }
        }
    }

    /// Starts a new peak measurement from the current level.
    pub(crate) fn reset_peak(&mut self) {
        self.peak = self.current;
    }
}

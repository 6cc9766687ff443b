//! What every layer exposes: its parameters in checkpoint order, each with the role that decides its
//! on-disk layout and whether it counts as low-rank.
use cola_autograd::Parameter;

/// The role of a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A dense projection weight, `[in, out]` in memory for `x @ W`, `[out, in]` on disk (PyTorch's
    /// `nn.Linear` layout).
    Dense,
    /// A CoLA factor: `cola_a` `[in, r]` or `cola_b` `[r, out]`, the same layout in memory and on disk.
    LowRank,
    /// The token embedding table `[vocab, d_model]`.
    Table,
    /// An RMSNorm weight `[d_model]`.
    Vector,
}

impl ParamKind {
    /// Whether the checkpoint stores the transpose of the in-memory tensor.
    pub fn transposed_on_disk(self) -> bool {
        self == ParamKind::Dense
    }
}

/// Parameter counts: `total = low_rank + other`, `low_rank` being the CoLA `A` and `B` entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: usize,
    pub low_rank: usize,
    pub other: usize,
}

impl ParamCounts {
    /// Adds `numel` entries of a parameter of role `kind`.
    pub fn add(&mut self, kind: ParamKind, numel: usize) {
        self.total += numel;
        if kind == ParamKind::LowRank {
            self.low_rank += numel;
        } else {
            self.other += numel;
        }
    }
}

/// A layer (or model) that owns parameters.
pub trait Module {
    /// Calls `f` on every parameter in a fixed order (the checkpoint and optimizer order).
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind));

    /// [`Module::visit`] with mutable access, in the same order.
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind));

    fn parameters(&self) -> Vec<&Parameter> {
        let mut out = Vec::new();
        self.visit(&mut |p, _| out.push(p));
        out
    }

    fn parameters_mut(&mut self) -> Vec<&mut Parameter> {
        let mut out = Vec::new();
        self.visit_mut(&mut |p, _| out.push(p));
        out
    }

    /// Counts of the allocated parameters.
    fn param_counts(&self) -> ParamCounts {
        let mut counts = ParamCounts::default();
        self.visit(&mut |p, kind| counts.add(kind, p.value().numel()));
        counts
    }
}

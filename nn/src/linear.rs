//! Projections of a decoder block: the dense `Linear` of the full-rank baseline and CoLA's low-rank
//! auto-encoder `ColaLinear` (docs/METHOD.md sections 1 and 5).
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::init::Init;
use crate::module::{Module, ParamKind};
use crate::variant::LowRankActivation;
use cola_autograd::{Graph, Parameter, SlotKind};
use cola_tensor::DType;

/// Standard deviation of the dense and embedding initialisation.
pub const DENSE_INIT_STD: f64 = 0.02;

/// `y = x @ W`, no bias. `x: [..., in]`, `W: [in, out]`, `y: [..., out]`. Stored on disk as `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Parameter,
}

impl Linear {
    /// A weight named `{name}.weight`, entries i.i.d. Normal(0, 0.02^2) under [`Init::Random`].
    pub fn new(name: &str, in_features: usize, out_features: usize, dtype: DType, init: &mut Init) -> Self {
        let value = init.normal(&[in_features, out_features], DENSE_INIT_STD, dtype);
        Linear { weight: Parameter::new(format!("{name}.weight"), value) }
    }

    pub fn weight(&self) -> &Parameter {
        &self.weight
    }

    pub fn in_features(&self) -> usize {
        self.weight.value().shape()[0]
    }

    pub fn out_features(&self) -> usize {
        self.weight.value().shape()[1]
    }

    /// `[..., in] -> [..., out]`.
    pub fn forward<G: Graph>(&self, g: &mut G, x: &G::Value) -> Result<G::Value> {
        let w = g.param(&self.weight);
        Ok(g.matmul(x, &w)?)
    }
}

impl Module for Linear {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind)) {
        f(&self.weight, ParamKind::Dense);
    }

    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind)) {
        f(&mut self.weight, ParamKind::Dense);
    }
}

/// Init std of both CoLA factors: `s = (r (in + out))^(-1/4)`, so that `A B` has entry std
/// `1 / sqrt(in + out)`.
pub fn cola_init_std(rank: usize, in_features: usize, out_features: usize) -> f64 {
    ((rank * (in_features + out_features)) as f64).powf(-0.25)
}

/// CoLA's low-rank projection `y = σ(x @ A) @ B` (`σ` = SiLU unless a [`crate::Variant`] says otherwise):
/// `x: [..., in]`, `A: [in, r]`, `B: [r, out]`, `y: [..., out]`. The rank-r code `σ(x @ A)` is marked
/// [`SlotKind::LowRankCode`] and its pre-activation `x @ A` [`SlotKind::LowRankPreActivation`]: the
/// pre-activation is what CoLA-M keeps for backward. With the identity the pre-activation is the code
/// itself and no activation op is recorded.
#[derive(Clone, Debug)]
pub struct ColaLinear {
    a: Parameter,
    b: Parameter,
    activation: LowRankActivation,
}

impl ColaLinear {
    /// Factors named `{name}.cola_a` and `{name}.cola_b`, entries i.i.d. Normal(0, s^2) with
    /// `s = cola_init_std(rank, in, out)`; A is drawn first.
    pub fn new(
        name: &str,
        in_features: usize,
        out_features: usize,
        rank: usize,
        dtype: DType,
        init: &mut Init,
    ) -> Self {
        let std = cola_init_std(rank, in_features, out_features);
        let a = init.normal(&[in_features, rank], std, dtype);
        let b = init.normal(&[rank, out_features], std, dtype);
        ColaLinear {
            a: Parameter::new(format!("{name}.cola_a"), a),
            b: Parameter::new(format!("{name}.cola_b"), b),
            activation: LowRankActivation::Silu,
        }
    }

    /// The same layer with `σ = activation`.
    pub fn with_activation(self, activation: LowRankActivation) -> Self {
        ColaLinear { activation, ..self }
    }

    pub fn activation(&self) -> LowRankActivation {
        self.activation
    }

    /// `A: [in, r]`.
    pub fn a(&self) -> &Parameter {
        &self.a
    }

    /// `B: [r, out]`.
    pub fn b(&self) -> &Parameter {
        &self.b
    }

    pub fn rank(&self) -> usize {
        self.a.value().shape()[1]
    }

    pub fn in_features(&self) -> usize {
        self.a.value().shape()[0]
    }

    pub fn out_features(&self) -> usize {
        self.b.value().shape()[1]
    }

    /// `[..., in] -> [..., out]`.
    pub fn forward<G: Graph>(&self, g: &mut G, x: &G::Value) -> Result<G::Value> {
        let a = g.param(&self.a);
        let pre = g.matmul(x, &a)?;
        g.mark(&pre, SlotKind::LowRankPreActivation)?;
        let code = match self.activation.apply(g, &pre)? {
            Some(code) => {
                g.mark(&code, SlotKind::LowRankCode)?;
                code
            }
            None => pre,
        };
        let b = g.param(&self.b);
        Ok(g.matmul(&code, &b)?)
    }
}

impl Module for ColaLinear {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind)) {
        f(&self.a, ParamKind::LowRank);
        f(&self.b, ParamKind::LowRank);
    }

    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind)) {
        f(&mut self.a, ParamKind::LowRank);
        f(&mut self.b, ParamKind::LowRank);
    }
}

/// One projection of a decoder block: dense (full-rank baseline) or CoLA, as the config's `rank` says.
#[derive(Clone, Debug)]
pub enum Projection {
    Dense(Linear),
    Cola(ColaLinear),
}

impl Projection {
    /// `ColaLinear` with `config`'s activation when `config.rank` is `Some(r)`, `Linear` when `None`.
    pub fn new(
        name: &str,
        in_features: usize,
        out_features: usize,
        config: &LlamaConfig,
        dtype: DType,
        init: &mut Init,
    ) -> Self {
        match config.rank {
            Some(r) => Projection::Cola(
                ColaLinear::new(name, in_features, out_features, r, dtype, init)
                    .with_activation(config.lowrank_act),
            ),
            None => Projection::Dense(Linear::new(name, in_features, out_features, dtype, init)),
        }
    }

    /// `[..., in] -> [..., out]`.
    pub fn forward<G: Graph>(&self, g: &mut G, x: &G::Value) -> Result<G::Value> {
        match self {
            Projection::Dense(p) => p.forward(g, x),
            Projection::Cola(p) => p.forward(g, x),
        }
    }

    pub fn in_features(&self) -> usize {
        match self {
            Projection::Dense(p) => p.in_features(),
            Projection::Cola(p) => p.in_features(),
        }
    }

    pub fn out_features(&self) -> usize {
        match self {
            Projection::Dense(p) => p.out_features(),
            Projection::Cola(p) => p.out_features(),
        }
    }
}

impl Module for Projection {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind)) {
        match self {
            Projection::Dense(p) => p.visit(f),
            Projection::Cola(p) => p.visit(f),
        }
    }

    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind)) {
        match self {
            Projection::Dense(p) => p.visit_mut(f),
            Projection::Cola(p) => p.visit_mut(f),
        }
    }
}

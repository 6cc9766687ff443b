//! The gated MLP: `down(silu(gate(x)) * up(x))`, or `down(gate(x) * up(x))` when the CoLA layers' own
//! SiLUs supply the non-linearity (docs/METHOD.md section 2, `only_lr_act`).
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::init::Init;
use crate::linear::Projection;
use crate::module::{Module, ParamKind};
use cola_autograd::{Graph, Parameter};
use cola_tensor::{DType, GateActivation};

#[derive(Clone, Debug)]
pub struct Mlp {
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
    gate_silu: bool,
}

impl Mlp {
    /// Projections `{name}.gate_proj`, `{name}.up_proj` (`d_model -> ffn_dim`) and `{name}.down_proj`
    /// (`ffn_dim -> d_model`), created in that order.
    pub fn new(name: &str, config: &LlamaConfig, dtype: DType, init: &mut Init) -> Self {
        let (d, f) = (config.d_model, config.ffn_dim);
        let gate_proj = Projection::new(&format!("{name}.gate_proj"), d, f, config, dtype, init);
        let up_proj = Projection::new(&format!("{name}.up_proj"), d, f, config, dtype, init);
        let down_proj = Projection::new(&format!("{name}.down_proj"), f, d, config, dtype, init);
        Mlp { gate_proj, up_proj, down_proj, gate_silu: config.mlp_gate_silu }
    }

    /// `[..., d_model] -> [..., d_model]` through an `[..., ffn_dim]` intermediate.
    pub fn forward<G: Graph>(&self, g: &mut G, x: &G::Value) -> Result<G::Value> {
        let gate = self.gate_proj.forward(g, x)?;
        let up = self.up_proj.forward(g, x)?;
        let activation = if self.gate_silu { GateActivation::Silu } else { GateActivation::Identity };
        // One op for `act(gate) * up`: backward reads only `gate` and `up` (no saved SiLU output).
        let hidden = g.gated(&gate, &up, activation)?;
        self.down_proj.forward(g, &hidden)
    }
}

impl Module for Mlp {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind)) {
        for p in [&self.gate_proj, &self.up_proj, &self.down_proj] {
            p.visit(f);
        }
    }

    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind)) {
        for p in [&mut self.gate_proj, &mut self.up_proj, &mut self.down_proj] {
            p.visit_mut(f);
        }
    }
}

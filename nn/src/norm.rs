//! RMSNorm over the last dim: `y = x / sqrt(mean(x^2) + eps) * weight` (computed in f32 or wider).
use crate::error::Result;
use crate::module::{Module, ParamKind};
use cola_autograd::{Graph, Parameter};
use cola_tensor::{DType, Tensor};

#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Parameter,
    eps: f64,
}

impl RmsNorm {
    /// A weight `[dim]` named `{name}.weight`, initialised to 1.
    pub fn new(name: &str, dim: usize, eps: f64, dtype: DType) -> Self {
        RmsNorm { weight: Parameter::new(format!("{name}.weight"), Tensor::ones(&[dim], dtype)), eps }
    }

    pub fn weight(&self) -> &Parameter {
        &self.weight
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// `[..., dim] -> [..., dim]`.
    pub fn forward<G: Graph>(&self, g: &mut G, x: &G::Value) -> Result<G::Value> {
        let w = g.param(&self.weight);
        Ok(g.rms_norm(x, &w, self.eps)?)
    }
}

impl Module for RmsNorm {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind)) {
        f(&self.weight, ParamKind::Vector);
    }

    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind)) {
        f(&mut self.weight, ParamKind::Vector);
    }
}

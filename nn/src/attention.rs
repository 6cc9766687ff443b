//! Causal multi-head self-attention with rotary positions (no GQA, no biases, no dropout):
//! `o(attention(rope(q(x)), rope(k(x)), v(x)))` with `softmax(q k^T / sqrt(head_dim) + causal mask) v`.
use crate::config::LlamaConfig;
use crate::error::{NnError, Result};
use crate::init::Init;
use crate::linear::Projection;
use crate::module::{Module, ParamKind};
use cola_autograd::{Graph, Parameter};
use cola_tensor::DType;

#[derive(Clone, Debug)]
pub struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    n_heads: usize,
    head_dim: usize,
    rope_theta: f64,
}

impl Attention {
    /// Projections `{name}.{q,k,v,o}_proj`, each `d_model -> d_model`, created in that order.
    pub fn new(name: &str, config: &LlamaConfig, dtype: DType, init: &mut Init) -> Self {
        let d = config.d_model;
        let mut projection =
            |p: &str| Projection::new(&format!("{name}.{p}_proj"), d, d, config, dtype, init);
        let (q_proj, k_proj, v_proj, o_proj) =
            (projection("q"), projection("k"), projection("v"), projection("o"));
        Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            n_heads: config.n_heads,
            head_dim: config.head_dim(),
            rope_theta: config.rope_theta,
        }
    }

    /// `x: [batch, seq, d_model] -> [batch, seq, d_model]`; `positions` (one per seq index, usually
    /// `0..seq`) are the RoPE angles' positions.
    pub fn forward<G: Graph>(&self, g: &mut G, x: &G::Value, positions: &[u32]) -> Result<G::Value> {
        let shape = g.shape(x)?;
        let &[batch, seq, d_model] = shape.as_slice() else {
            return Err(NnError::InvalidInput {
                reason: format!("attention input must be [batch, seq, d_model], got {shape:?}"),
            });
        };
        let heads = [batch, seq, self.n_heads, self.head_dim];
        let q = self.q_proj.forward(g, x)?;
        let q = g.reshape(&q, &heads)?;
        let q = g.rope(&q, positions, self.rope_theta)?;
        let k = self.k_proj.forward(g, x)?;
        let k = g.reshape(&k, &heads)?;
        let k = g.rope(&k, positions, self.rope_theta)?;
        let v = self.v_proj.forward(g, x)?;
        let v = g.reshape(&v, &heads)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mixed = g.attention(&q, &k, &v, scale)?;
        let mixed = g.reshape(&mixed, &[batch, seq, d_model])?;
        self.o_proj.forward(g, &mixed)
    }
}

impl Module for Attention {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind)) {
        for p in [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj] {
            p.visit(f);
        }
    }

    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind)) {
        for p in [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj, &mut self.o_proj] {
            p.visit_mut(f);
        }
    }
}

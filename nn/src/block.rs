//! The pre-norm decoder block: `h = x + attn(rmsnorm(x))`, `y = h + mlp(rmsnorm(h))`.
use crate::attention::Attention;
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::init::Init;
use crate::mlp::Mlp;
use crate::module::{Module, ParamKind};
use crate::norm::RmsNorm;
use cola_autograd::{Graph, Parameter, SlotKind};
use cola_tensor::DType;

#[derive(Clone, Debug)]
pub struct Block {
    /// Position in the stack, from 0 (what a KV-cached decoder keys its cache by).
    index: usize,
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// Layer `index`, its parameters named `model.layers.{index}.*`.
    pub fn new(index: usize, config: &LlamaConfig, dtype: DType, init: &mut Init) -> Self {
        let name = format!("model.layers.{index}");
        let d = config.d_model;
        let input_layernorm = RmsNorm::new(&format!("{name}.input_layernorm"), d, config.norm_eps, dtype);
        let self_attn = Attention::new(&format!("{name}.self_attn"), config, dtype, init);
        let post_attention_layernorm =
            RmsNorm::new(&format!("{name}.post_attention_layernorm"), d, config.norm_eps, dtype);
        let mlp = Mlp::new(&format!("{name}.mlp"), config, dtype, init);
        Block { index, input_layernorm, self_attn, post_attention_layernorm, mlp }
    }

    /// `x: [batch, seq, d_model] -> [batch, seq, d_model]`, run as one layer of the graph (so a
    /// retention policy can release its intermediates when it ends). Marks `x` as
    /// [`SlotKind::LayerInput`], `h` as [`SlotKind::Residual`] and the output as [`SlotKind::LayerOutput`]:
    /// with the rank-r pre-activations of the CoLA projections, the values CoLA-M keeps.
    pub fn forward<G: Graph>(&self, g: &mut G, x: &G::Value, positions: &[u32]) -> Result<G::Value> {
        g.layer(self.index, |g| {
            g.mark(x, SlotKind::LayerInput)?;
            let normed = self.input_layernorm.forward(g, x)?;
            let attended = self.self_attn.forward(g, &normed, positions)?;
            let h = g.add(x, &attended)?;
            g.mark(&h, SlotKind::Residual)?;
            let normed = self.post_attention_layernorm.forward(g, &h)?;
            let mixed = self.mlp.forward(g, &normed)?;
            let y = g.add(&h, &mixed)?;
            g.mark(&y, SlotKind::LayerOutput)?;
            Ok(y)
        })
    }
}

impl Module for Block {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind)) {
        self.input_layernorm.visit(f);
        self.self_attn.visit(f);
        self.post_attention_layernorm.visit(f);
        self.mlp.visit(f);
    }

    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind)) {
        self.input_layernorm.visit_mut(f);
        self.self_attn.visit_mut(f);
        self.post_attention_layernorm.visit_mut(f);
        self.mlp.visit_mut(f);
    }
}

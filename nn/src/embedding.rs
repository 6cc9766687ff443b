//! Token embedding: `out[b, s] = table[ids[b, s]]`, with the pad row zero at init and never updated.
use crate::error::{NnError, Result};
use crate::init::Init;
use crate::linear::DENSE_INIT_STD;
use crate::module::{Module, ParamKind};
use cola_autograd::{Graph, Parameter};
use cola_tensor::{DType, Tensor};

#[derive(Clone, Debug)]
pub struct Embedding {
    table: Parameter,
    pad_id: u32,
}

impl Embedding {
    /// A table `[vocab, dim]` named `{name}.weight`, entries i.i.d. Normal(0, 0.02^2) except row `pad_id`,
    /// which is zero. The pad row still consumes its draws, so the other rows do not depend on `pad_id`.
    pub fn new(
        name: &str,
        vocab: usize,
        dim: usize,
        pad_id: u32,
        dtype: DType,
        init: &mut Init,
    ) -> Result<Self> {
        let pad = pad_id as usize;
        if pad >= vocab {
            return Err(NnError::InvalidConfig {
                reason: format!("{name}: pad_id {pad_id} is not below vocab_size {vocab}"),
            });
        }
        let drawn = init.normal(&[vocab, dim], DENSE_INIT_STD, dtype);
        let mut parts = Vec::with_capacity(3);
        if pad > 0 {
            parts.push(drawn.narrow(0, 0, pad)?);
        }
        parts.push(Tensor::zeros(&[1, dim], dtype));
        if pad + 1 < vocab {
            parts.push(drawn.narrow(0, pad + 1, vocab - pad - 1)?);
        }
        let table = Tensor::concat(&parts, 0)?;
        Ok(Embedding { table: Parameter::new(format!("{name}.weight"), table), pad_id })
    }

    pub fn table(&self) -> &Parameter {
        &self.table
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.table.value().shape()[0]
    }

    /// `ids` of `ids_shape` (e.g. `[batch, seq]`) -> `[batch, seq, dim]`. Positions holding `pad_id` send no
    /// gradient to the table.
    pub fn forward<G: Graph>(&self, g: &mut G, ids: &[u32], ids_shape: &[usize]) -> Result<G::Value> {
        let table = g.param(&self.table);
        Ok(g.embedding(&table, ids, ids_shape, Some(self.pad_id))?)
    }
}

impl Module for Embedding {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Parameter, ParamKind)) {
        f(&self.table, ParamKind::Table);
    }

    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Parameter, ParamKind)) {
        f(&mut self.table, ParamKind::Table);
    }
}

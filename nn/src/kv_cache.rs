//! The key/value cache of cached decoding: per sequence (row) and decoder layer, the keys (after RoPE)
//! and values of every position seen so far, each `[1, len, heads, head_dim]`.
//!
//! Rows are stored separately, so a batch may hold sequences of different lengths (prompts of any
//! lengths, rows that stop early) without padding or masks: the projections still run batched, only
//! attention and the append go row by row. Appending concatenates (one copy of the row's cache per step:
//! the tensor API has no in-place writes, and the copy is small next to a decode step's weight traffic).
//! Dropping the cache, or [`KvCache::clear`], frees its tensors.
use crate::error::{NnError, Result};
use cola_tensor::Tensor;

/// Keys and values of one row at one layer, `[1, len, heads, head_dim]` each.
#[derive(Clone, Debug)]
struct LayerEntry {
    keys: Tensor,
    values: Tensor,
}

/// One sequence's cache: its length and an entry per layer (empty before the row's first tokens).
#[derive(Clone, Debug)]
struct RowCache {
    len: usize,
    layers: Vec<LayerEntry>,
}

/// The cache of a batch of sequences, for a model of `n_layers` decoder layers.
#[derive(Clone, Debug)]
pub struct KvCache {
    n_layers: usize,
    rows: Vec<RowCache>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> KvCache {
        KvCache { n_layers, rows: Vec::new() }
    }

    /// Number of sequences.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Tokens cached per row.
    pub fn lengths(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.len).collect()
    }

    /// Bytes of every cached key and value.
    pub fn bytes(&self) -> usize {
        let entry = |e: &LayerEntry| e.keys.size_in_bytes() + e.values.size_in_bytes();
        self.rows.iter().flat_map(|r| &r.layers).map(entry).sum()
    }

    /// Adds `count` empty rows at the end and returns the index of the first.
    pub(crate) fn add_rows(&mut self, count: usize) -> usize {
        let first = self.rows.len();
        self.rows.extend((0..count).map(|_| RowCache { len: 0, layers: Vec::with_capacity(self.n_layers) }));
        first
    }

    /// Appends `keys` and `values` (`[1, new, heads, head_dim]`) to row `row` at `layer`; layers are
    /// filled in order, and the row's length grows when the last layer is appended.
    pub(crate) fn append(&mut self, row: usize, layer: usize, keys: Tensor, values: Tensor) -> Result<()> {
        let n_layers = self.n_layers;
        let cache = self
            .rows
            .get_mut(row)
            .ok_or_else(|| NnError::InvalidInput { reason: format!("kv cache: no row {row}") })?;
        let (new, filled) = (keys.shape().get(1).copied().unwrap_or(0), cache.layers.len());
        match cache.layers.get_mut(layer) {
            Some(entry) => {
                entry.keys = Tensor::concat(&[entry.keys.clone(), keys], 1)?;
                entry.values = Tensor::concat(&[entry.values.clone(), values], 1)?;
            }
            None if layer == filled => cache.layers.push(LayerEntry { keys, values }),
            None => {
                return Err(NnError::InvalidInput {
                    reason: format!("kv cache: layer {layer} appended before layer {filled}"),
                })
            }
        }
        if layer + 1 == n_layers {
            cache.len += new;
        }
        Ok(())
    }

    /// Keys and values of row `row` at `layer`.
    pub(crate) fn get(&self, row: usize, layer: usize) -> Option<(&Tensor, &Tensor)> {
        let entry = self.rows.get(row)?.layers.get(layer)?;
        Some((&entry.keys, &entry.values))
    }

    /// Keeps the rows whose flag is true (in order); the others' tensors are freed.
    pub fn retain(&mut self, keep: &[bool]) {
        let mut flags = keep.iter().copied().chain(std::iter::repeat(false));
        self.rows.retain(|_| flags.next().unwrap_or(false));
    }

    /// Frees the rows from `rows` on.
    pub(crate) fn truncate(&mut self, rows: usize) {
        self.rows.truncate(rows);
    }

    /// Frees every row.
    pub fn clear(&mut self) {
        self.rows.clear();
    }
}

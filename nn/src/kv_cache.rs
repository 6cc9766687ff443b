//! The key/value cache of cached decoding: per sequence (row) and decoder layer, the keys (after RoPE)
//! and values of every position seen so far.
//!
//! Rows are stored separately, so a batch may hold sequences of different lengths (prompts of any
//! lengths, rows that stop early) without padding or masks: the projections still run batched, only
//! attention and the append go row by row.
//!
//! Each row and layer holds its keys and values in buffers with room for `capacity` positions, written
//! in place, so an append copies only the new positions. The capacity starts at the first append's
//! length rounded up to a power of two (at least `MIN_CAPACITY`) and doubles when full (one copy of the
//! filled prefix): the cache needs no model limits at construction (`new` takes the layer count only),
//! holds at most twice what a row has used, not `max_seq_len` for every row (rows that stop early stay
//! small), and writes each position once plus, on average, less than one move.
//!
//! On the CPU (f32 or f64) the buffers are an [`AttentionCache`]: the head-major layout the CPU attention
//! kernel reads in place (each head's keys transposed, `[heads, head_dim, capacity]`; its values
//! `[heads, capacity, head_dim rounded up to the kernel's 32-wide tiles]`; the capacity also rounded up
//! to whole tiles), so attention over the cache copies nothing; its result is the same bits as the
//! fused attention on the filled keys and values. Elsewhere (a GPU) they are `[1, capacity, heads,
//! head_dim]` tensors ([`Tensor::write_slice`] appends), and attention reads the filled prefix, a
//! contiguous `narrow` of them.
//! Dropping the cache, or [`KvCache::clear`], frees its tensors.
use crate::error::{NnError, Result};
use cola_tensor::{AttentionCache, DType, Device, Tensor};

/// The capacity of a fresh buffer is at least this many positions (so short prompts do not double
/// after every few decode steps).
const MIN_CAPACITY: usize = 16;

/// Keys and values of one row at one layer, and how many positions are filled.
#[derive(Clone, Debug)]
struct LayerEntry {
    buffers: Buffers,
    len: usize,
}

/// Where a [`LayerEntry`] keeps its keys and values. (There is one per row and layer, a few hundred
/// at most, so the variants' different sizes cost nothing worth a box.)
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum Buffers {
    /// f32 or f64 on the CPU: in the head-major layout the CPU attention reads in place.
    HeadMajor(AttentionCache),
    /// Elsewhere (a GPU; bf16): buffers `[1, capacity, heads, head_dim]` and the filled prefixes
    /// `[1, len, heads, head_dim]` that attention reads (views of the buffers; dropped while a write
    /// runs, so that the buffers are not shared then and the write happens in place rather than on a
    /// copy).
    Interleaved { keys: Tensor, values: Tensor, filled: Option<(Tensor, Tensor)> },
}

impl LayerEntry {
    /// An entry holding `keys` and `values` (`[1, new, heads, head_dim]`) in buffers of room for at
    /// least `MIN_CAPACITY` positions.
    fn new(keys: &Tensor, values: &Tensor) -> Result<LayerEntry> {
        let &[_, new, heads, head_dim] = keys.shape() else {
            return Err(NnError::InvalidInput {
                reason: format!("kv cache: keys must be [1, new, heads, head_dim], got {:?}", keys.shape()),
            });
        };
        let capacity = new.max(MIN_CAPACITY).next_power_of_two();
        let head_major = keys.device() == Device::Cpu && matches!(keys.dtype(), DType::F32 | DType::F64);
        let buffers = if head_major {
            Buffers::HeadMajor(AttentionCache::new(heads, head_dim, capacity, keys.dtype())?)
        } else {
            let mut shape = keys.shape().to_vec();
            shape[1] = capacity;
            let buffer = || Tensor::zeros_on(&shape, keys.dtype(), keys.device());
            Buffers::Interleaved { keys: buffer()?, values: buffer()?, filled: None }
        };
        let mut entry = LayerEntry { buffers, len: 0 };
        entry.append(keys, values)?;
        Ok(entry)
    }

    /// Writes `keys` and `values` after the filled positions, doubling the buffers first if they are
    /// full.
    /// On an error (keys or values of another shape, dtype or device) the filled positions stay as
    /// they were.
    fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        if keys.shape() != values.shape() {
            return Err(NnError::InvalidInput {
                reason: format!("kv cache: keys {:?} and values {:?} differ", keys.shape(), values.shape()),
            });
        }
        let new = keys.shape().get(1).copied().unwrap_or(0);
        let (start, needed) = (self.len, self.len + new);
        match &mut self.buffers {
            Buffers::HeadMajor(cache) => {
                let capacity = cache.capacity();
                if needed > capacity {
                    cache.reserve(needed.max(2 * capacity))?;
                }
                cache.append(keys, values)?;
            }
            Buffers::Interleaved { keys: key_buffer, values: value_buffer, filled } => {
                *filled = None;
                let written = write(key_buffer, value_buffer, start, keys, values);
                let len = if written.is_ok() { needed } else { start };
                *filled = Some((key_buffer.narrow(1, 0, len)?, value_buffer.narrow(1, 0, len)?));
                written?;
            }
        }
        self.len = needed;
        Ok(())
    }

    /// Attention of `q` (`[1, q_len, heads, head_dim]`) against the filled positions.
    fn attention(&self, q: &Tensor, scale: f64) -> Result<Tensor> {
        match &self.buffers {
            Buffers::HeadMajor(cache) => Ok(cache.attention(q, scale)?),
            Buffers::Interleaved { filled: Some((keys, values)), .. } => {
                Ok(Tensor::attention(q, keys, values, scale)?)
            }
            Buffers::Interleaved { filled: None, .. } => {
                Err(NnError::InvalidInput { reason: "kv cache: an entry without positions".into() })
            }
        }
    }

    /// Copies of the filled keys and values, `[1, len, heads, head_dim]` each.
    #[cfg(test)]
    fn keys_values(&self) -> Result<(Tensor, Tensor)> {
        match &self.buffers {
            Buffers::HeadMajor(cache) => Ok(cache.keys_values()?),
            Buffers::Interleaved { keys, values, .. } => {
                Ok((keys.narrow(1, 0, self.len)?.contiguous()?, values.narrow(1, 0, self.len)?.contiguous()?))
            }
        }
    }

    /// Bytes of the two buffers (allocated, filled or not).
    fn bytes(&self) -> usize {
        match &self.buffers {
            Buffers::HeadMajor(cache) => cache.size_in_bytes(),
            Buffers::Interleaved { keys, values, .. } => keys.size_in_bytes() + values.size_in_bytes(),
        }
    }
}

/// Writes `keys` and `values` into the interleaved buffers at `start`, doubling them first if they are
/// full.
fn write(
    key_buffer: &mut Tensor,
    value_buffer: &mut Tensor,
    start: usize,
    keys: &Tensor,
    values: &Tensor,
) -> Result<()> {
    let needed = start + keys.shape().get(1).copied().unwrap_or(0);
    let capacity = key_buffer.dim(1)?;
    if needed > capacity {
        let grown = needed.max(2 * capacity);
        *key_buffer = grow(key_buffer, start, grown)?;
        *value_buffer = grow(value_buffer, start, grown)?;
    }
    key_buffer.write_slice(1, start, keys)?;
    value_buffer.write_slice(1, start, values)?;
    Ok(())
}

/// A buffer like `buffer` with room for `capacity` positions, holding its first `len`.
fn grow(buffer: &Tensor, len: usize, capacity: usize) -> Result<Tensor> {
    let mut shape = buffer.shape().to_vec();
    shape[1] = capacity;
    let mut grown = Tensor::zeros_on(&shape, buffer.dtype(), buffer.device())?;
    grown.write_slice(1, 0, &buffer.narrow(1, 0, len)?)?;
    Ok(grown)
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

    /// Bytes allocated for keys and values: the buffers' whole capacity, filled or not (what the
    /// cache holds in memory; the filled part is `lengths()` positions per row and layer).
    pub fn bytes(&self) -> usize {
        self.rows.iter().flat_map(|r| &r.layers).map(LayerEntry::bytes).sum()
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
            Some(entry) => entry.append(&keys, &values)?,
            None if layer == filled => cache.layers.push(LayerEntry::new(&keys, &values)?),
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

    /// Attention of `q` (`[1, q_len, heads, head_dim]`, the last `q_len` cached positions of row `row`)
    /// against row `row`'s cache at `layer`.
    pub(crate) fn attention(&self, row: usize, layer: usize, q: &Tensor, scale: f64) -> Result<Tensor> {
        let entry = self.rows.get(row).and_then(|r| r.layers.get(layer));
        let entry = entry.ok_or_else(|| NnError::InvalidInput {
            reason: format!("kv cache: row {row} has no layer {layer}"),
        })?;
        entry.attention(q, scale)
    }

    /// Copies of the keys and values of row `row` at `layer`, `[1, len, heads, head_dim]` each.
    #[cfg(test)]
    fn get(&self, row: usize, layer: usize) -> Option<(Tensor, Tensor)> {
        self.rows.get(row)?.layers.get(layer)?.keys_values().ok()
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

#[cfg(test)]
mod tests {
    //! The preallocated cache against the concatenation it replaces: equal values after a prefill and
    //! many decode steps (exact: appends only copy), growth by doubling, allocated bytes, errors.
    use super::*;
    use cola_tensor::{DType, Rng};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, DType::F32, &mut Rng::new(seed))
    }

    #[test]
    fn appends_equal_the_concatenation_and_grow_by_doubling() {
        let (layers, heads, head_dim) = (2, 3, 4);
        let mut cache = KvCache::new(layers);
        assert_eq!(cache.add_rows(2), 0);
        let mut expected: Vec<Vec<Tensor>> = vec![Vec::new(); layers];
        for (step, new) in [5usize, 1, 1, 9, 1, 20].into_iter().enumerate() {
            for (layer, parts) in expected.iter_mut().enumerate() {
                let keys = randn(&[1, new, heads, head_dim], (step * 10 + layer) as u64);
                let values = keys.mul_scalar(-2.0).unwrap();
                cache.append(1, layer, keys.clone(), values).unwrap();
                parts.push(keys);
            }
        }
        assert_eq!(cache.lengths(), vec![0, 37]);
        for (layer, parts) in expected.iter().enumerate() {
            let want = Tensor::concat(parts, 1).unwrap();
            let (keys, values) = cache.get(1, layer).unwrap();
            assert_eq!(keys.shape(), &[1, 37, heads, head_dim]);
            assert_eq!(keys.to_vec_f64(), want.to_vec_f64());
            assert_eq!(values.to_vec_f64(), want.mul_scalar(-2.0).unwrap().to_vec_f64());
        }
        assert!(cache.get(0, 0).is_none());
        // 5 tokens start at 16 positions, rounded up to 32 (whole tiles of the CPU attention kernel);
        // 32 -> 64 at 37 tokens. Keys take `64 * heads * head_dim` f32 per layer, values
        // `64 * heads * 32` (each head's rows padded to a tile).
        assert_eq!(cache.bytes(), layers * (64 * heads * head_dim + 64 * heads * 32) * 4);
    }

    #[test]
    fn a_mismatched_append_is_an_error_and_keeps_the_filled_positions() {
        let mut cache = KvCache::new(1);
        cache.add_rows(1);
        let keys = randn(&[1, 3, 2, 2], 1);
        cache.append(0, 0, keys.clone(), keys.clone()).unwrap();
        let wrong = randn(&[1, 1, 3, 2], 2);
        assert!(cache.append(0, 0, wrong.clone(), wrong).is_err());
        assert!(cache.append(0, 0, keys.clone(), randn(&[1, 2, 2, 2], 3)).is_err());
        assert!(cache.append(0, 2, keys.clone(), keys.clone()).is_err());
        assert!(cache.append(1, 0, keys.clone(), keys.clone()).is_err());
        let (cached, _) = cache.get(0, 0).unwrap();
        assert_eq!(cached.to_vec_f64(), keys.to_vec_f64());
        assert_eq!(cache.lengths(), vec![3]);
    }
}

//! One sequence's cached keys and values for attention against a cache on the CPU, held in the
//! head-major layout the CPU attention kernel reads in place (`CacheLayout` in
//! `kernels/src/cpu/attention.rs`): keys transposed per head `[heads, head_dim, capacity]`, values per
//! head `[heads, capacity, width]` (`width` the head dim rounded up to the kernel's tiles), `capacity` a
//! multiple of the tile width.
//!
//! [`Tensor::attention`] on a `[1, len, heads, head_dim]` cache gathers every head's keys (transposed)
//! and values into buffers of its own at every call: the whole cache, every layer, every decoded token.
//! Here an append writes the new positions into that layout once (each key element to its place in its
//! head's transposed rows) and [`AttentionCache::attention`] reads the buffers as they are. The result
//! is [`Tensor::attention`]'s on the filled positions bit for bit: the kernel runs the same per-head
//! code on the same values (`kernels/tests/suite/fused.rs` holds it to that).
use super::{check_rank, match_float};
use crate::error::{Result, TensorError};
use crate::{DType, Device, Tensor};
use cola_kernels::cpu::attention::{
    attention_forward_cached, copy_cache, write_cache, AttentionDims, CacheLayout, CachedKeysValues,
};
use cola_kernels::Float;

const OP: &str = "attention_cache";

/// Keys and values of one sequence in the kernel's head-major layout, the first `len` positions filled.
/// f32 or f64 on the CPU. Cloning shares the buffers until one of the clones writes (copy on write).
#[derive(Clone, Debug)]
pub struct AttentionCache {
    keys_t: Tensor,
    values: Tensor,
    layout: CacheLayout,
    len: usize,
}

impl AttentionCache {
    /// An empty cache for `heads` heads of `head_dim` with room for at least `positions` positions
    /// (rounded up to whole tiles), zero-filled.
    pub fn new(heads: usize, head_dim: usize, positions: usize, dtype: DType) -> Result<AttentionCache> {
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(TensorError::UnsupportedDType {
                op: OP,
                dtype,
                reason: "the cache holds f32 or f64",
            });
        }
        let layout = CacheLayout::new(heads, head_dim, positions);
        Ok(AttentionCache::zeroed(layout, dtype))
    }

    fn zeroed(layout: CacheLayout, dtype: DType) -> AttentionCache {
        let CacheLayout { heads, head_dim, capacity } = layout;
        let keys_t = Tensor::zeros(&[heads, head_dim, capacity], dtype);
        let values = Tensor::zeros(&[heads, capacity, layout.width()], dtype);
        AttentionCache { keys_t, values, layout, len: 0 }
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions there is room for.
    pub fn capacity(&self) -> usize {
        self.layout.capacity
    }

    pub fn dtype(&self) -> DType {
        self.keys_t.dtype()
    }

    /// Bytes of the two buffers (allocated, filled or not).
    pub fn size_in_bytes(&self) -> usize {
        self.keys_t.size_in_bytes() + self.values.size_in_bytes()
    }

    /// Moves the filled positions into buffers with room for at least `positions` (rounded up to whole
    /// tiles); a cache that has that room already is left as it is.
    pub fn reserve(&mut self, positions: usize) -> Result<()> {
        if positions <= self.layout.capacity {
            return Ok(());
        }
        let layout = CacheLayout::new(self.layout.heads, self.layout.head_dim, positions);
        let mut grown = AttentionCache::zeroed(layout, self.dtype());
        match_float!(OP, self.dtype(), T => {
            let (keys_t, values) = (self.keys_t.contiguous_data::<T>()?, self.values.contiguous_data::<T>()?);
            let from = CachedKeysValues { keys_t: &keys_t, values: &values, layout: self.layout, len: self.len };
            copy_cache(from, layout, grown.keys_t.data_mut::<T>()?, grown.values.data_mut::<T>()?);
            Ok(())
        })?;
        grown.len = self.len;
        *self = grown;
        Ok(())
    }

    /// Writes `keys` and `values` (`[1, new, heads, head_dim]`, or `[new, heads, head_dim]`) after the
    /// filled positions. Fails, leaving the cache as it was, when they do not fit (see
    /// [`AttentionCache::reserve`]) or differ from the cache in heads, head dim, dtype or device.
    pub fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        let (heads, head_dim) = (self.layout.heads, self.layout.head_dim);
        for t in [keys, values] {
            let shape = t.shape();
            let fits = matches!(shape, [1, _, h, d] | [_, h, d] if *h == heads && *d == head_dim);
            if !fits || t.dtype() != self.dtype() || t.device() != Device::Cpu {
                return Err(TensorError::InvalidArgument {
                    op: OP,
                    reason: format!(
                        "keys and values must be {:?} [1, new, {heads}, {head_dim}] on the CPU, got {:?} {:?} on {:?}",
                        self.dtype(),
                        t.dtype(),
                        shape,
                        t.device()
                    ),
                });
            }
        }
        if keys.shape() != values.shape() {
            return Err(TensorError::ShapeMismatch {
                op: OP,
                lhs: keys.shape().to_vec(),
                rhs: values.shape().to_vec(),
                reason: "keys and values must have the same shape",
            });
        }
        let new = keys.shape()[keys.rank() - 3];
        if self.len + new > self.layout.capacity {
            return Err(TensorError::InvalidArgument {
                op: OP,
                reason: format!(
                    "{new} positions after {} exceed the capacity {}",
                    self.len, self.layout.capacity
                ),
            });
        }
        let (layout, start) = (self.layout, self.len);
        match_float!(OP, self.dtype(), T => {
            let (k, v) = (keys.contiguous_data::<T>()?, values.contiguous_data::<T>()?);
            write_cache(layout, start, &k, &v, self.keys_t.data_mut::<T>()?, self.values.data_mut::<T>()?);
            Ok(())
        })?;
        self.len += new;
        Ok(())
    }

    /// Causal attention of `q` (`[1, q_len, heads, head_dim]`, the last `q_len` of the filled positions)
    /// against the cache: [`Tensor::attention`] of `q` and the filled keys and values, bit for bit,
    /// without copying them.
    pub fn attention(&self, q: &Tensor, scale: f64) -> Result<Tensor> {
        check_rank(OP, q, 4, "q")?;
        let (heads, head_dim) = (self.layout.heads, self.layout.head_dim);
        let &[batch, q_len, q_heads, q_dim] = q.shape() else { unreachable!("rank checked") };
        if batch != 1 || q_heads != heads || q_dim != head_dim || q_len > self.len {
            return Err(TensorError::ShapeMismatch {
                op: OP,
                lhs: q.shape().to_vec(),
                rhs: vec![1, self.len, heads, head_dim],
                reason: "q must be [1, q_len, heads, head_dim] with q_len at most the cached length",
            });
        }
        if q.dtype() != self.dtype() || q.device() != Device::Cpu {
            return Err(TensorError::InvalidArgument {
                op: OP,
                reason: format!(
                    "q must be {:?} on the CPU, got {:?} on {:?}",
                    self.dtype(),
                    q.dtype(),
                    q.device()
                ),
            });
        }
        let dims = AttentionDims { batch: 1, heads, q_len, kv_len: self.len, head_dim };
        match_float!(OP, self.dtype(), T => {
            let qd = q.contiguous_data::<T>()?;
            // Every head's block is scattered into `out`, covering it.
            let mut out = crate::pool::take_for_overwrite::<T>(qd.len());
            if !out.is_empty() {
                let (keys_t, values) = (self.keys_t.contiguous_data::<T>()?, self.values.contiguous_data::<T>()?);
                let cache = CachedKeysValues { keys_t: &keys_t, values: &values, layout: self.layout, len: self.len };
                attention_forward_cached(&qd, cache, dims, T::from_f64(scale), &mut out);
            }
            Ok(Tensor::from_compute(out, q.shape()))
        })
    }

    /// Copies of the filled keys and values, `[1, len, heads, head_dim]` each (for inspection and tests;
    /// attention reads the buffers in place).
    pub fn keys_values(&self) -> Result<(Tensor, Tensor)> {
        let (len, head_dim) = (self.len, self.layout.head_dim);
        let keys = self.keys_t.narrow(2, 0, len)?.permute(&[2, 0, 1])?.contiguous()?;
        let values = self.values.narrow(1, 0, len)?.narrow(2, 0, head_dim)?;
        let values = values.permute(&[1, 0, 2])?.contiguous()?;
        Ok((keys.unsqueeze(0)?, values.unsqueeze(0)?))
    }
}

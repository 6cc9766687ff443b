//! In-place writes into a slice of an existing tensor: the append of a preallocated buffer (the KV cache
//! of cached decoding), which would otherwise concatenate and so copy everything written before.
use super::check_same;
use crate::error::{Result, TensorError};
use crate::layout::resolve_axis;
use crate::storage::Element;
use crate::{DType, Tensor};
use half::bf16;

/// Copies `src` (contiguous data of shape `[outer, len, inner]` after flattening) into `dst`, contiguous
/// `[outer, size, inner]`, at `start` along the middle axis.
fn write_t<T: Element>(dst: &mut Tensor, axis: usize, start: usize, src: &Tensor) -> Result<()> {
    let shape = dst.shape_vec();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let (size, len) = (shape[axis], src.shape()[axis]);
    let data = src.contiguous_data::<T>()?;
    let out = dst.data_mut::<T>()?;
    let run = len * inner;
    for (o, piece) in data.chunks_exact(run.max(1)).enumerate().take(outer) {
        out[(o * size + start) * inner..][..run].copy_from_slice(piece);
    }
    Ok(())
}

impl Tensor {
    /// Writes `src` into `self` at positions `start..start + src.shape()[axis]` along `axis` (negative
    /// counts from the end); every other dim, the dtype and the device must match. Only this tensor
    /// changes: when its storage is shared with another tensor (a clone or a view), it first gets a
    /// storage of its own (copy on write), so a writer should hold its buffer alone to write in place.
    /// A view (`self` narrowed or strided) likewise becomes a contiguous tensor of its own first.
    pub fn write_slice(&mut self, axis: isize, start: usize, src: &Tensor) -> Result<()> {
        const OP: &str = "write_slice";
        let ax = resolve_axis(OP, axis, self.rank())?;
        check_same(OP, &[&*self, src])?;
        let compatible = src.rank() == self.rank()
            && (0..self.rank()).all(|d| d == ax || src.shape()[d] == self.shape()[d]);
        if !compatible {
            return Err(TensorError::ShapeMismatch {
                op: OP,
                lhs: self.shape().to_vec(),
                rhs: src.shape().to_vec(),
                reason: "all dims but the written axis must match",
            });
        }
        let (len, size) = (src.shape()[ax], self.shape()[ax]);
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(TensorError::InvalidArgument {
                op: OP,
                reason: format!(
                    "positions {start}..{} of axis {ax} exceed its size {size}",
                    start.saturating_add(len)
                ),
            });
        }
        if src.numel() == 0 {
            return Ok(());
        }
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            if !self.storage_is_unique() || !self.is_contiguous() {
                *self = self.gpu_copy(self.dtype())?;
            }
            return self.narrow(ax as isize, start, len)?.gpu_copy_into(src);
        }
        match self.dtype() {
            DType::F32 => write_t::<f32>(self, ax, start, src),
            DType::F64 => write_t::<f64>(self, ax, start, src),
            DType::BF16 => write_t::<bf16>(self, ax, start, src),
        }
    }
}

//! View ops: new layouts over the same storage (reshape copies only when strides cannot express it).
use crate::error::{Result, TensorError};
use crate::layout::resolve_axis;
use crate::Tensor;

impl Tensor {
    /// Same elements, new shape. A view when the strides allow it, a contiguous copy otherwise.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let expected: usize = shape.iter().product();
        if expected != self.numel() {
            return Err(TensorError::ShapeMismatch {
                op: "reshape",
                lhs: self.shape().to_vec(),
                rhs: shape.to_vec(),
                reason: "element counts differ",
            });
        }
        match self.layout().reshape_view(shape) {
            Some(layout) => Ok(self.with_layout(layout)),
            None => {
                let c = self.contiguous()?;
                let layout = c.layout().reshape_view(shape).ok_or(TensorError::InvalidArgument {
                    op: "reshape",
                    reason: "a contiguous tensor must reshape as a view".into(),
                })?;
                Ok(c.with_layout(layout))
            }
        }
    }

    /// Reorders dims: dim i of the result is dim `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout().permute(perm)?))
    }

    /// Swaps two dims (negative axes count from the end).
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        self.permute(&crate::layout::transpose_perm(a, b, self.rank())?)
    }

    /// Transpose of the last two dims (a matrix transpose, batched).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(TensorError::InvalidArgument {
                op: "t",
                reason: format!("needs rank >= 2, got shape {:?}", self.shape()),
            });
        }
        self.transpose(-2, -1)
    }

    /// `len` entries of `axis` starting at `start`.
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Tensor> {
        let axis = resolve_axis("narrow", axis, self.rank())?;
        Ok(self.with_layout(self.layout().narrow(axis, start, len)?))
    }

    /// A view broadcast to `shape` (numpy rules).
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout().broadcast_to(shape)?))
    }

    /// Inserts a size-1 dim at `axis` (in `0..=rank`, negative counts from the end of the result).
    pub fn unsqueeze(&self, axis: isize) -> Result<Tensor> {
        let axis = resolve_axis("unsqueeze", axis, self.rank() + 1)?;
        let mut shape = self.shape_vec();
        shape.insert(axis, 1);
        self.reshape(&shape)
    }

    /// Removes a size-1 dim.
    pub fn squeeze(&self, axis: isize) -> Result<Tensor> {
        let axis = resolve_axis("squeeze", axis, self.rank())?;
        if self.shape()[axis] != 1 {
            return Err(TensorError::InvalidArgument {
                op: "squeeze",
                reason: format!("dim {axis} of shape {:?} is not 1", self.shape()),
            });
        }
        let mut shape = self.shape_vec();
        shape.remove(axis);
        self.reshape(&shape)
    }

    /// Splits `axis` into consecutive views of the given sizes, which must add up to its length.
    pub fn split(&self, sizes: &[usize], axis: isize) -> Result<Vec<Tensor>> {
        let ax = crate::layout::split_axis(sizes, axis, self.shape())?;
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let part = self.narrow(ax as isize, start, len);
                start += len;
                part
            })
            .collect()
    }
}

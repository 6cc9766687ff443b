//! Sums and means over axes.
use super::{in_compute_dtype1, match_float};
use crate::error::{Result, TensorError};
use crate::layout::{resolve_axis, Shape};
use crate::storage::CpuFloat;
use crate::Tensor;
use cola_kernels::cpu::reduce::sum_axes;

fn sum_t<T: CpuFloat>(a: &Tensor, reduce: &[bool], keep_shape: &[usize]) -> Result<Tensor> {
    // `sum_axes` assigns every output (an empty reduction gives zero).
    let mut out = crate::pool::take_for_overwrite::<T>(keep_shape.iter().product());
    if !out.is_empty() {
        sum_axes(a.strided::<T>()?, a.shape(), reduce, &mut out);
    }
    Ok(Tensor::from_compute(out, keep_shape))
}

impl Tensor {
    /// Marks the axes to reduce; an empty list reduces every axis. Repeated axes are an error.
    fn reduce_mask(&self, op: &'static str, axes: &[isize]) -> Result<Vec<bool>> {
        let mut mask = vec![axes.is_empty(); self.rank()];
        for &a in axes {
            let d = resolve_axis(op, a, self.rank())?;
            if std::mem::replace(&mut mask[d], true) {
                return Err(TensorError::InvalidArgument { op, reason: format!("axis {a} given twice") });
            }
        }
        Ok(mask)
    }

    /// Sum over `axes` (all axes when empty); reduced dims stay as size 1 when `keepdim`.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let mask = self.reduce_mask("sum", axes)?;
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return crate::cuda::reduce::sum(self, &mask, keepdim);
        }
        let kept: Shape = (0..self.rank()).map(|d| if mask[d] { 1 } else { self.shape()[d] }).collect();
        let out = in_compute_dtype1(
            "sum",
            [self],
            |[a]| match_float!("sum", a.dtype(), T => sum_t::<T>(&a, &mask, &kept)),
        )?;
        if keepdim {
            return Ok(out);
        }
        let squeezed: Shape = (0..self.rank()).filter(|&d| !mask[d]).map(|d| self.shape()[d]).collect();
        out.reshape(&squeezed)
    }

    /// Mean over `axes` (all axes when empty).
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let mask = self.reduce_mask("mean", axes)?;
        let count: usize = (0..self.rank()).filter(|&d| mask[d]).map(|d| self.shape()[d]).product();
        self.sum(axes, keepdim)?.mul_scalar(1.0 / count.max(1) as f64)
    }

    /// Sums a tensor that was broadcast from `shape` back to `shape` (the gradient of a broadcast).
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let err = || TensorError::ShapeMismatch {
            op: "sum_to_shape",
            lhs: self.shape().to_vec(),
            rhs: shape.to_vec(),
            reason: "target does not broadcast to the source",
        };
        if shape.len() > self.rank() {
            return Err(err());
        }
        let lead = self.rank() - shape.len();
        let mut axes = Vec::new();
        for d in 0..self.rank() {
            let reduce = if d < lead {
                true
            } else if shape[d - lead] == self.shape()[d] {
                false
            } else if shape[d - lead] == 1 {
                true
            } else {
                return Err(err());
            };
            if reduce {
                axes.push(d as isize);
            }
        }
        self.sum(&axes, true)?.reshape(shape)
    }
}

//! Shapes, strides and views. A view changes the layout and never copies storage.
use crate::error::{Result, TensorError};
use smallvec::SmallVec;

/// Dimensions of a tensor, outermost first.
pub type Shape = SmallVec<[usize; 6]>;

/// How a tensor's elements map onto its storage: element `idx` lives at `offset + sum(idx[d] * strides[d])`.
/// A stride of 0 repeats an element (broadcast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Shape,
    offset: usize,
}

/// Row-major strides of a contiguous tensor of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Shape {
    let mut strides: Shape = SmallVec::from_elem(1, shape.len());
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// Resolves a possibly negative axis (`-1` is the last) against `rank`.
pub fn resolve_axis(op: &'static str, axis: isize, rank: usize) -> Result<usize> {
    let resolved = if axis < 0 { axis + rank as isize } else { axis };
    if resolved < 0 || resolved >= rank as isize {
        return Err(TensorError::AxisOutOfRange { op, axis, rank });
    }
    Ok(resolved as usize)
}

/// The permutation that swaps axes `a` and `b` of a rank-`rank` value (negative axes count from the end).
pub fn transpose_perm(a: isize, b: isize, rank: usize) -> Result<Vec<usize>> {
    let (a, b) = (resolve_axis("transpose", a, rank)?, resolve_axis("transpose", b, rank)?);
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(a, b);
    Ok(perm)
}

/// Resolves the axis a split of `shape` into consecutive pieces of `sizes` cuts, checking that the sizes
/// add up to its length. Shared by `Tensor::split` and the graph's split, which has only the shape.
pub fn split_axis(sizes: &[usize], axis: isize, shape: &[usize]) -> Result<usize> {
    let ax = resolve_axis("split", axis, shape.len())?;
    let total: usize = sizes.iter().sum();
    if total != shape[ax] {
        return Err(TensorError::InvalidArgument {
            op: "split",
            reason: format!("sizes {sizes:?} add up to {total}, dim {ax} of {shape:?} is {}", shape[ax]),
        });
    }
    Ok(ax)
}

/// The shape two operands broadcast to (numpy rules: align trailing dims, size 1 stretches).
pub fn broadcast_shapes(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Result<Shape> {
    let rank = lhs.len().max(rhs.len());
    let mut out: Shape = SmallVec::from_elem(1, rank);
    for d in 0..rank {
        let l = if d + lhs.len() >= rank { lhs[d + lhs.len() - rank] } else { 1 };
        let r = if d + rhs.len() >= rank { rhs[d + rhs.len() - rank] } else { 1 };
        out[d] = match (l, r) {
            (a, b) if a == b => a,
            (1, b) => b,
            (a, 1) => a,
            _ => {
                return Err(TensorError::ShapeMismatch {
                    op,
                    lhs: lhs.to_vec(),
                    rhs: rhs.to_vec(),
                    reason: "not broadcastable",
                })
            }
        };
    }
    Ok(out)
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: shape.into(), strides: contiguous_strides(shape), offset: 0 }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the elements are stored densely in row-major order (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for d in (0..self.rank()).rev() {
            if self.shape[d] != 1 && self.strides[d] != expected {
                return false;
            }
            expected *= self.shape[d];
        }
        true
    }

    /// A view with dimensions reordered: new dim i is old dim `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        let valid =
            perm.len() == rank && perm.iter().all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(TensorError::InvalidArgument {
                op: "permute",
                reason: format!("{perm:?} is not a permutation of the {rank} dims of {:?}", self.shape),
            });
        }
        Ok(Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    /// A view of `len` entries of `dim` starting at `start`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        let size = self.shape[dim];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(TensorError::IndexOutOfRange {
                op: "narrow",
                index: start.saturating_add(len),
                size,
            });
        }
        let mut out = self.clone();
        out.shape[dim] = len;
        if len > 0 {
            out.offset += start * self.strides[dim];
        }
        Ok(out)
    }

    /// A view broadcast to `shape` (stride 0 on stretched and new leading dims).
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Layout> {
        let err = || TensorError::ShapeMismatch {
            op: "broadcast_to",
            lhs: self.shape.to_vec(),
            rhs: shape.to_vec(),
            reason: "cannot broadcast",
        };
        if shape.len() < self.rank() {
            return Err(err());
        }
        let lead = shape.len() - self.rank();
        let mut strides: Shape = SmallVec::from_elem(0, shape.len());
        for d in 0..self.rank() {
            let (have, want) = (self.shape[d], shape[lead + d]);
            strides[lead + d] = if have == want {
                self.strides[d]
            } else if have == 1 {
                0
            } else {
                return Err(err());
            };
        }
        Ok(Layout { shape: shape.into(), strides, offset: self.offset })
    }

    /// A view with the new `shape` when the strides allow it (no copy), `None` when a copy is needed.
    /// Dims are grouped into runs that are contiguous among themselves; a new dim may split or merge
    /// dims only within one such run.
    pub fn reshape_view(&self, shape: &[usize]) -> Option<Layout> {
        if self.is_contiguous() {
            return Some(Layout {
                shape: shape.into(),
                strides: contiguous_strides(shape),
                offset: self.offset,
            });
        }
        let numel = self.numel();
        if numel == 0 {
            return Some(Layout::contiguous(shape));
        }
        let mut new_strides: Shape = SmallVec::from_elem(0, shape.len());
        let mut view_d = shape.len() as isize - 1;
        let mut chunk_base_stride = *self.strides.last()?;
        let mut tensor_numel = 1;
        let mut view_numel = 1;
        for d in (0..self.rank()).rev() {
            tensor_numel *= self.shape[d];
            let run_ends =
                d == 0 || (self.shape[d - 1] != 1 && self.strides[d - 1] != tensor_numel * chunk_base_stride);
            if run_ends {
                while view_d >= 0 && (view_numel < tensor_numel || shape[view_d as usize] == 1) {
                    new_strides[view_d as usize] = view_numel * chunk_base_stride;
                    view_numel *= shape[view_d as usize];
                    view_d -= 1;
                }
                if view_numel != tensor_numel {
                    return None;
                }
                if d > 0 {
                    chunk_base_stride = self.strides[d - 1];
                    tensor_numel = 1;
                    view_numel = 1;
                }
            }
        }
        if view_d != -1 {
            return None;
        }
        Some(Layout { shape: shape.into(), strides: new_strides, offset: self.offset })
    }
}

//! Batch-broadcast addressing of matrix operands, shared by the CPU matmul (`ops/matmul.rs`) and the GPU
//! matmul (`cuda/matmul.rs`): both import it from here, so neither device path depends on the other.
use crate::error::Result;
use crate::layout::Shape;
use crate::Tensor;

/// Storage offsets of every matrix of a batch-broadcast operand, in row-major batch order.
pub(crate) fn batch_offsets(t: &Tensor, batch_shape: &[usize]) -> Result<Vec<usize>> {
    let rank = t.rank();
    let mut full: Shape = batch_shape.into();
    full.extend_from_slice(&t.shape()[rank - 2..]);
    let layout = t.layout().broadcast_to(&full)?;
    let strides = &layout.strides()[..batch_shape.len()];
    let count: usize = batch_shape.iter().product();
    Ok((0..count)
        .map(|mut b| {
            let mut off = layout.offset();
            for d in (0..batch_shape.len()).rev() {
                off += (b % batch_shape[d]) * strides[d];
                b /= batch_shape[d];
            }
            off
        })
        .collect())
}

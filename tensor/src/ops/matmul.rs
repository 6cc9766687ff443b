//! Matrix multiply, batched with broadcast batch dims. Transposed or narrowed operands are passed to the
//! GEMM as strided views, so `x.matmul(&w.t()?)` copies nothing.
use super::{in_compute_dtype1, match_float};
use crate::batch::batch_offsets;
use crate::error::{Result, TensorError};
use crate::layout::{broadcast_shapes, Shape};
use crate::storage::CpuFloat;
use crate::Tensor;
use cola_kernels::cpu::gemm::{gemm_batched, BatchRef, Dims};

fn matmul_t<T: CpuFloat>(a: &Tensor, b: &Tensor, batch_shape: &[usize], dims: Dims) -> Result<Tensor> {
    let (oa, ob) = (batch_offsets(a, batch_shape)?, batch_offsets(b, batch_shape)?);
    let (sa, sb) = (a.layout().strides(), b.layout().strides());
    let (ra, rb) = (a.rank(), b.rank());
    let va = a.strided::<T>()?;
    let vb = b.strided::<T>()?;
    let lhs = BatchRef { data: va.data, offsets: &oa, row_stride: sa[ra - 2], col_stride: sa[ra - 1] };
    let rhs = BatchRef { data: vb.data, offsets: &ob, row_stride: sb[rb - 2], col_stride: sb[rb - 1] };
    let mut out = vec![T::ZERO; oa.len() * dims.m * dims.n];
    if !out.is_empty() {
        gemm_batched(dims, T::ONE, lhs, rhs, T::ZERO, &mut out);
    }
    let mut shape: Shape = batch_shape.into();
    shape.extend_from_slice(&[dims.m, dims.n]);
    Ok(Tensor::from_compute(out, &shape))
}

impl Tensor {
    /// `[..., m, k] @ [..., k, n] -> [..., m, n]`; batch dims broadcast (numpy rules); both ranks >= 2.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        let (a, b) = (self, other);
        if a.rank() < 2 || b.rank() < 2 {
            return Err(TensorError::ShapeMismatch {
                op: "matmul",
                lhs: a.shape().to_vec(),
                rhs: b.shape().to_vec(),
                reason: "operands need rank >= 2",
            });
        }
        let (ra, rb) = (a.rank(), b.rank());
        let (m, k, k2, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 2], b.shape()[rb - 1]);
        if k != k2 {
            return Err(TensorError::ShapeMismatch {
                op: "matmul",
                lhs: a.shape().to_vec(),
                rhs: b.shape().to_vec(),
                reason: "inner dimensions differ",
            });
        }
        let batch_shape = broadcast_shapes("matmul", &a.shape()[..ra - 2], &b.shape()[..rb - 2])?;
        super::check_same("matmul", &[a, b])?;
        #[cfg(feature = "cuda")]
        if a.is_cuda() {
            return crate::cuda::matmul::matmul(a, b, &batch_shape, m, k, n);
        }
        let dims = Dims { m, n, k };
        in_compute_dtype1(
            "matmul",
            [a, b],
            |[a, b]| match_float!("matmul", a.dtype(), T => matmul_t::<T>(&a, &b, &batch_shape, dims)),
        )
    }
}

//! Matrix multiply, batched with broadcast batch dims. Transposed or narrowed operands are passed to the
//! GEMM as strided views, so `x.matmul(&w.t()?)` copies nothing. On the CPU, f32 and f64 run the GEMM of
//! their type; bf16 runs the bf16 GEMM (bf16 operands, f32 accumulation, each output rounded once to
//! bf16, to nearest even).
use super::{in_compute_dtype1, match_float};
use crate::batch::batch_offsets;
use crate::error::{Result, TensorError};
use crate::layout::{broadcast_shapes, Shape};
use crate::storage::{CpuFloat, Element};
use crate::{DType, Tensor};
use cola_kernels::cpu::gemm::{
    gemm_batched, gemm_bf16_batched, gemv_bf16, BatchRef, Dims, KernelPath, FEW_ROWS_MAX,
};
use half::bf16;

/// The operands of a batched product as the GEMM takes them: per-item offsets and the matrices' strides.
fn batch_views<'t, T: Element>(
    a: &'t Tensor,
    b: &'t Tensor,
    offsets: &'t (Vec<usize>, Vec<usize>),
) -> Result<(BatchRef<'t, T>, BatchRef<'t, T>)> {
    let (sa, sb) = (a.layout().strides(), b.layout().strides());
    let (ra, rb) = (a.rank(), b.rank());
    let (va, vb) = (a.strided::<T>()?, b.strided::<T>()?);
    let lhs = BatchRef { data: va.data, offsets: &offsets.0, row_stride: sa[ra - 2], col_stride: sa[ra - 1] };
    let rhs = BatchRef { data: vb.data, offsets: &offsets.1, row_stride: sb[rb - 2], col_stride: sb[rb - 1] };
    Ok((lhs, rhs))
}

/// `[..batch, m, n]`.
fn output_shape(batch_shape: &[usize], dims: Dims) -> Shape {
    let mut shape: Shape = batch_shape.into();
    shape.extend_from_slice(&[dims.m, dims.n]);
    shape
}

fn matmul_t<T: CpuFloat>(a: &Tensor, b: &Tensor, batch_shape: &[usize], dims: Dims) -> Result<Tensor> {
    let offsets = (batch_offsets(a, batch_shape)?, batch_offsets(b, batch_shape)?);
    let (lhs, rhs) = batch_views::<T>(a, b, &offsets)?;
    // With beta = 0 the GEMM writes every element of C and never reads it (a k = 0 product writes zeros).
    let mut out = crate::pool::take_for_overwrite::<T>(offsets.0.len() * dims.m * dims.n);
    if !out.is_empty() {
        gemm_batched(dims, T::ONE, lhs, rhs, T::ZERO, &mut out);
    }
    Ok(Tensor::from_compute(out, &output_shape(batch_shape, dims)))
}

/// bf16 operands on the bf16 GEMM: f32 accumulation, one rounding to bf16 per output element.
///
/// Few rows against one shared weight (a decode step: `[rows, 1, d] @ [d, n]` with at most
/// `FEW_ROWS_MAX` rows in all) take the few-row path instead, which reads the bf16 weight once in place
/// and widens it in registers (the blocked GEMM would first widen and pack all of it); its f32 sums are
/// rounded to bf16 here, once per element, as the GEMM rounds its own. They are the bits of the bf16
/// GEMM's widening path on the f32 micro-kernel path this CPU selects, the path the bf16 GEMM itself
/// selects on Intel CPUs; where it selects `VDPBF16PS` (AMD), few-row results round differently from
/// the blocked ones by up to the accumulation error both stay within.
fn matmul_bf16(a: &Tensor, b: &Tensor, batch_shape: &[usize], dims: Dims) -> Result<Tensor> {
    let offsets = (batch_offsets(a, batch_shape)?, batch_offsets(b, batch_shape)?);
    let (lhs, rhs) = batch_views::<bf16>(a, b, &offsets)?;
    let rows = offsets.0.len() * dims.m;
    if rows <= FEW_ROWS_MAX {
        let mut sums = vec![0.0f32; rows * dims.n];
        if gemv_bf16(KernelPath::selected(), dims, lhs, rhs, &mut sums).is_ok() {
            let out: Vec<bf16> = sums.iter().map(|&x| bf16::from_f32(x)).collect();
            return Tensor::from_vec(out, &output_shape(batch_shape, dims));
        }
    }
    // With beta = 0 the GEMM writes every element of C and never reads it.
    let mut out = crate::pool::take_for_overwrite::<bf16>(offsets.0.len() * dims.m * dims.n);
    if !out.is_empty() {
        gemm_bf16_batched(dims, 1.0, lhs, rhs, 0.0, &mut out);
    }
    Tensor::from_vec(out, &output_shape(batch_shape, dims))
}

/// `acc + a @ b`, or `a @ b` without `acc`, in f32 from 2-D bf16 CPU operands `[m, k] @ [k, n]`: the bf16
/// GEMM's f32 accumulator is the result, so it is never rounded to bf16 and never widened back (the LM
/// head's logits, which the loss reads in f32, and its gradients, which are summed over blocks in f32).
/// `acc` (f32 `[m, n]`) is updated in place (`beta = 1`) and returned. Same products, same order as
/// [`Tensor::matmul`] on these operands, without its final rounding.
pub fn matmul_bf16_f32(a: &Tensor, b: &Tensor, acc: Option<Tensor>) -> Result<Tensor> {
    let op = "matmul_bf16_f32";
    super::check_same(op, &[a, b])?;
    let (&[m, k], &[k2, n]) = (a.shape(), b.shape()) else {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: a.shape().to_vec(),
            rhs: b.shape().to_vec(),
            reason: "operands must be [m, k] and [k, n]",
        });
    };
    if k != k2 || a.dtype() != DType::BF16 || a.device() != crate::Device::Cpu {
        return Err(TensorError::InvalidArgument {
            op,
            reason: format!(
                "bf16 CPU operands [m, k] @ [k, n] expected, got {:?} {:?} @ {:?} on {:?}",
                a.dtype(),
                a.shape(),
                b.shape(),
                a.device()
            ),
        });
    }
    let dims = Dims { m, n, k };
    let offsets = (batch_offsets(a, &[])?, batch_offsets(b, &[])?);
    let (lhs, rhs) = batch_views::<bf16>(a, b, &offsets)?;
    let (mut out, beta) = match acc {
        Some(acc) if acc.shape() == [m, n] && acc.dtype() == DType::F32 => (acc, 1.0),
        Some(acc) => {
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!("accumulator {:?} {:?}, expected F32 [{m}, {n}]", acc.dtype(), acc.shape()),
            })
        }
        // With beta = 0 the GEMM writes every element of C and never reads it.
        None => (Tensor::from_compute(crate::pool::take_for_overwrite::<f32>(m * n), &[m, n]), 0.0),
    };
    let c = out.data_mut::<f32>()?;
    if !c.is_empty() {
        gemm_bf16_batched(dims, 1.0, lhs, rhs, beta, c);
    }
    Ok(out)
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
        if a.dtype() == DType::BF16 {
            return matmul_bf16(a, b, &batch_shape, dims);
        }
        in_compute_dtype1(
            "matmul",
            [a, b],
            |[a, b]| match_float!("matmul", a.dtype(), T => matmul_t::<T>(&a, &b, &batch_shape, dims)),
        )
    }
}

//! In-place updates for optimizers: the fused AdamW step and the squared norm used by gradient clipping.
use super::{check_same, check_same_shape, match_float};
use crate::error::{Result, TensorError};
use crate::storage::CpuFloat;
use crate::{DType, Tensor};
use cola_kernels::cpu::adamw::adamw_step;
pub use cola_kernels::cpu::adamw::AdamWStep;

fn adamw_t<T: CpuFloat>(
    param: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    hyper: AdamWStep,
) -> Result<()> {
    let g = grad.contiguous_data::<T>()?;
    adamw_step(param.data_mut::<T>()?, &g, m.data_mut::<T>()?, v.data_mut::<T>()?, hyper);
    Ok(())
}

/// Sum of squares of a contiguous buffer, in f64, in fixed-size chunks added in order (deterministic).
fn squared_norm_t<T: CpuFloat>(t: &Tensor) -> Result<f64> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let data = t.contiguous_data::<T>()?;
    let partials: Vec<f64> =
        data.par_chunks(CHUNK).map(|c| c.iter().map(|&x| x.to_f64() * x.to_f64()).sum::<f64>()).collect();
    Ok(partials.iter().sum())
}

impl Tensor {
    /// One AdamW step in place: `param`, `m` and `v` (same shape and dtype as `grad`) are updated; their
    /// storage is made unshared first. CPU parameters must be f32 or f64 (bf16 training keeps f32 master
    /// weights); GPU parameters may also be bf16 with bf16 moments (the pure-bf16 mode).
    pub fn adamw_step(
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        hyper: AdamWStep,
    ) -> Result<()> {
        check_same("adamw_step", &[param, grad, m, v])?;
        for t in [&*m, &*v, grad] {
            check_same_shape("adamw_step", param, t)?;
        }
        #[cfg(feature = "cuda")]
        if param.is_cuda() {
            return crate::cuda::optim::adamw_step(param, grad, m, v, hyper);
        }
        if param.dtype() == DType::BF16 {
            return Err(TensorError::UnsupportedDType {
                op: "adamw_step",
                dtype: DType::BF16,
                reason: "keep f32 master weights and optimizer state",
            });
        }
        match_float!("adamw_step", param.dtype(), T => adamw_t::<T>(param, grad, m, v, hyper))
    }

    /// `sum(x^2)` accumulated in f64.
    pub fn squared_norm(&self) -> Result<f64> {
        crate::tensor::check_device("squared_norm", self.device())?;
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return crate::cuda::optim::squared_norm(self);
        }
        match self.dtype() {
            DType::BF16 => squared_norm_t::<f32>(&self.to_dtype(DType::F32)?),
            dtype => match_float!("squared_norm", dtype, T => squared_norm_t::<T>(self)),
        }
    }
}

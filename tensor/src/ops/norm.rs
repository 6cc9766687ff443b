//! RMSNorm over the last dim: `y = x / sqrt(mean(x^2) + eps) * weight`.
use super::{in_compute_dtype, in_compute_dtype1, match_float};
use crate::error::{Result, TensorError};
use crate::{DType, Device, Tensor};
use cola_kernels::cpu::bf16::{map_rows_par, round, widen};
use cola_kernels::cpu::norm::{rms_norm_backward, rms_norm_backward_bf16, rms_norm_forward};
use cola_kernels::Float;
use half::bf16;

fn check(op: &'static str, x: &Tensor, weight: &Tensor) -> Result<usize> {
    let d = x.shape().last().copied().unwrap_or(0);
    if x.rank() == 0 || weight.shape() != [d] {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: x.shape().to_vec(),
            rhs: weight.shape().to_vec(),
            reason: "weight must be [d] for x of shape [..., d]",
        });
    }
    Ok(d)
}

impl Tensor {
    /// RMSNorm of `x: [..., d]` with `weight: [d]`.
    pub fn rms_norm(&self, weight: &Tensor, eps: f64) -> Result<Tensor> {
        let d = check("rms_norm", self, weight)?;
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            super::check_same("rms_norm", &[self, weight])?;
            return crate::cuda::norm::rms_norm(self, weight, eps);
        }
        if self.dtype() == DType::BF16 && self.device() == Device::Cpu && super::fused_bf16() {
            // Rows are independent: whole rows at a time widened, the f32 kernel, one rounding.
            super::check_same("rms_norm", &[self, weight])?;
            let (x, w) = (self.contiguous_data::<bf16>()?, weight.contiguous_data::<bf16>()?);
            let mut wide_weight = vec![0.0f32; d];
            widen(&w, &mut wide_weight);
            let mut y = crate::pool::take_for_overwrite::<bf16>(x.len()); // written whole, row by row
            map_rows_par(&x, &mut y, d, |x, y| rms_norm_forward(x, &wide_weight, d, f32::from_f64(eps), y));
            return Tensor::from_vec(y, self.shape());
        }
        in_compute_dtype1("rms_norm", [self, weight], |[x, w]| {
            match_float!("rms_norm", x.dtype(), T => {
                let (xd, wd) = (x.contiguous_data::<T>()?, w.contiguous_data::<T>()?);
                let mut y = crate::pool::take_for_overwrite::<T>(xd.len()); // written whole by the kernel (empty when d == 0)
                if d > 0 {
                    rms_norm_forward(&xd, &wd, d, T::from_f64(eps), &mut y);
                }
                Ok(Tensor::from_compute(y, x.shape()))
            })
        })
    }

    /// Gradients `[grad_x, grad_weight]` of [`Tensor::rms_norm`] given the output gradient.
    pub fn rms_norm_backward(x: &Tensor, weight: &Tensor, grad_y: &Tensor, eps: f64) -> Result<Vec<Tensor>> {
        let d = check("rms_norm_backward", x, weight)?;
        super::check_same_shape("rms_norm_backward", x, grad_y)?;
        #[cfg(feature = "cuda")]
        if x.is_cuda() {
            super::check_same("rms_norm_backward", &[x, weight, grad_y])?;
            return crate::cuda::norm::rms_norm_backward(x, weight, grad_y, eps);
        }
        if x.dtype() == DType::BF16 && x.device() == Device::Cpu && super::fused_bf16() {
            // Blocks of rows widened, the f32 kernel, one rounding; the weight's gradient summed in f32.
            super::check_same("rms_norm_backward", &[x, weight, grad_y])?;
            let (xd, gd) = (x.contiguous_data::<bf16>()?, grad_y.contiguous_data::<bf16>()?);
            let mut wide_weight = vec![0.0f32; d];
            widen(&weight.contiguous_data::<bf16>()?, &mut wide_weight);
            let mut gx = crate::pool::take_for_overwrite::<bf16>(xd.len()); // written whole, block by block
            let mut gw = vec![0.0f32; d];
            rms_norm_backward_bf16(&xd, &wide_weight, &gd, d, f32::from_f64(eps), &mut gx, &mut gw);
            let mut grad_weight = crate::pool::take_for_overwrite::<bf16>(d);
            round(&gw, &mut grad_weight);
            return Ok(vec![Tensor::from_vec(gx, x.shape())?, Tensor::from_vec(grad_weight, &[d])?]);
        }
        in_compute_dtype("rms_norm_backward", [x, weight, grad_y], |[x, w, g]| {
            match_float!("rms_norm_backward", x.dtype(), T => {
                let (xd, wd, gd) = (x.contiguous_data::<T>()?, w.contiguous_data::<T>()?, g.contiguous_data::<T>()?);
                // `gx` is written whole; `gw` is zeroed by the kernel before it sums the rows into it.
                let mut gx = crate::pool::take_for_overwrite::<T>(xd.len());
                let mut gw = crate::pool::take_for_overwrite::<T>(d);
                if d > 0 {
                    rms_norm_backward(&xd, &wd, &gd, d, T::from_f64(eps), &mut gx, &mut gw);
                }
                Ok(vec![Tensor::from_compute(gx, x.shape()), Tensor::from_compute(gw, &[d])])
            })
        })
    }
}

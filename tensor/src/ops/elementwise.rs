//! Elementwise ops: broadcasting binary arithmetic, scalar arithmetic and unary functions.
use super::{fused_elementwise, in_compute_dtype1, match_float};
use crate::error::{Result, TensorError};
use crate::layout::broadcast_shapes;
pub use crate::op_kinds::{BinaryOp, UnaryOp};
use crate::storage::CpuFloat;
use crate::{DType, Device, Tensor};
use cola_kernels::cpu::bf16::map_in_place;
use cola_kernels::cpu::elementwise::{
    gelu_backward, gelu_forward, relu_backward, relu_forward, silu_backward, silu_forward,
};
use cola_kernels::cpu::strided::{binary_map, unary_map};
use cola_kernels::Float;
use half::bf16;

fn binary_t<T: CpuFloat>(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let shape = broadcast_shapes(op.name(), a.shape(), b.shape())?;
    let (la, lb) = (a.layout().broadcast_to(&shape)?, b.layout().broadcast_to(&shape)?);
    let (a, b) = (a.with_layout(la), b.with_layout(lb));
    // `binary_map` writes every element of the broadcast shape.
    let mut out = crate::pool::take_for_overwrite::<T>(shape.iter().product());
    if !out.is_empty() {
        // Each operation is its own monomorphised loop so the compiler can vectorise it.
        let (va, vb) = (a.strided::<T>()?, b.strided::<T>()?);
        match op {
            BinaryOp::Add => binary_map(va, vb, &shape, &mut out, |x, y| BinaryOp::Add.apply(x, y)),
            BinaryOp::Sub => binary_map(va, vb, &shape, &mut out, |x, y| BinaryOp::Sub.apply(x, y)),
            BinaryOp::Mul => binary_map(va, vb, &shape, &mut out, |x, y| BinaryOp::Mul.apply(x, y)),
            BinaryOp::Div => binary_map(va, vb, &shape, &mut out, |x, y| BinaryOp::Div.apply(x, y)),
        }
    }
    Ok(Tensor::from_compute(out, &shape))
}

fn map_t<T: CpuFloat>(a: &Tensor, f: impl Fn(T) -> T + Sync) -> Result<Tensor> {
    // `unary_map` writes every element.
    let mut out = crate::pool::take_for_overwrite::<T>(a.numel());
    if !out.is_empty() {
        unary_map(a.strided::<T>()?, a.shape(), &mut out, f);
    }
    Ok(Tensor::from_compute(out, a.shape()))
}

/// `x -> scale * x + shift` with the scalars rounded to `T` once: the formula of [`Tensor::affine`] and its
/// in-place form.
fn affine_fn<T: CpuFloat>(scale: f64, shift: f64) -> impl Fn(T) -> T + Sync {
    let (s, b) = (T::from_f64(scale), T::from_f64(shift));
    move |x| s * x + b
}

/// The unary op on f32 slices: the per-element formulas of [`unary_t`] (the same closures and kernels), for
/// the fused bf16 path.
fn unary_f32(op: UnaryOp, x: &[f32], y: &mut [f32]) {
    let map = |f: fn(f32) -> f32, y: &mut [f32]| y.iter_mut().zip(x).for_each(|(y, &x)| *y = f(x));
    match op {
        UnaryOp::Neg => map(neg, y),
        UnaryOp::Exp => map(Float::exp, y),
        UnaryOp::Log => map(Float::ln, y),
        UnaryOp::Silu => silu_forward(x, y),
        UnaryOp::Gelu => gelu_forward(x, y),
        UnaryOp::Relu => relu_forward(x, y),
    }
}

fn neg<T: CpuFloat>(x: T) -> T {
    -x
}

fn unary_t<T: CpuFloat>(op: UnaryOp, a: &Tensor) -> Result<Tensor> {
    match op {
        UnaryOp::Neg => map_t::<T>(a, neg),
        UnaryOp::Exp => map_t::<T>(a, Float::exp),
        UnaryOp::Log => map_t::<T>(a, Float::ln),
        UnaryOp::Silu => activation_t::<T>(a, silu_forward),
        UnaryOp::Gelu => activation_t::<T>(a, gelu_forward),
        UnaryOp::Relu => activation_t::<T>(a, relu_forward),
    }
}

/// An activation kernel over the contiguous values of `a`.
fn activation_t<T: CpuFloat>(a: &Tensor, kernel: fn(&[T], &mut [T])) -> Result<Tensor> {
    let x = a.contiguous_data::<T>()?;
    let mut y = crate::pool::take_for_overwrite::<T>(x.len()); // written whole by the kernel
    kernel(&x, &mut y);
    Ok(Tensor::from_compute(y, a.shape()))
}

impl Tensor {
    /// Broadcasting `self (op) other`.
    pub fn binary(&self, op: BinaryOp, other: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            super::check_same(op.name(), &[self, other])?;
            return crate::cuda::elementwise::binary(op, self, other);
        }
        if self.shape() == other.shape() {
            let fused = fused_elementwise(op.name(), [self, other], self.shape(), |[a, b], [out]| {
                out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| *o = op.apply(a, b));
            })?;
            if let Some([out]) = fused {
                return Ok(out);
            }
        }
        in_compute_dtype1(
            op.name(),
            [self, other],
            |[a, b]| match_float!(op.name(), a.dtype(), T => binary_t::<T>(op, &a, &b)),
        )
    }

    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, other)
    }

    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, other)
    }

    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, other)
    }

    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, other)
    }

    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return crate::cuda::elementwise::unary(op, self);
        }
        if let Some([out]) =
            fused_elementwise(op.name(), [self], self.shape(), |[x], [y]| unary_f32(op, x, y))?
        {
            return Ok(out);
        }
        in_compute_dtype1(
            op.name(),
            [self],
            |[a]| match_float!(op.name(), a.dtype(), T => unary_t::<T>(op, &a)),
        )
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }

    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }

    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }

    /// `x * sigmoid(x)`.
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }

    /// GELU, tanh form (CPU only).
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }

    /// `max(x, 0)` (CPU only).
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }

    /// `scale * x + shift`, elementwise (scalar add, sub, multiply and divide are special cases).
    pub fn affine(&self, scale: f64, shift: f64) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return crate::cuda::elementwise::affine(self, scale, shift);
        }
        let f = affine_fn::<f32>(scale, shift);
        let fused = fused_elementwise("affine", [self], self.shape(), |[x], [y]| {
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = f(x));
        })?;
        if let Some([out]) = fused {
            return Ok(out);
        }
        in_compute_dtype1(
            "affine",
            [self],
            |[a]| match_float!("affine", a.dtype(), T => map_t::<T>(&a, affine_fn::<T>(scale, shift))),
        )
    }

    /// [`Tensor::affine`] in place, with the same per-element formula (so the same bits). A CPU f32 or f64
    /// tensor reuses its storage when nothing else holds it (gradient clipping scales every gradient of a
    /// step, and a fresh buffer of the model's size each step costs more than the arithmetic); other
    /// tensors are replaced by `affine`'s result.
    pub fn affine_in_place(&mut self, scale: f64, shift: f64) -> Result<()> {
        use rayon::prelude::*;
        if self.device() == crate::Device::Cpu && self.dtype() == DType::BF16 && super::fused_bf16() {
            // Widened, scaled in f32 and rounded once, a chunk at a time: `affine`'s bits.
            let f = affine_fn::<f32>(scale, shift);
            map_in_place(self.data_mut::<bf16>()?, |w| w.iter_mut().for_each(|x| *x = f(*x)));
            return Ok(());
        }
        if self.device() != crate::Device::Cpu || !matches!(self.dtype(), DType::F32 | DType::F64) {
            *self = self.affine(scale, shift)?;
            return Ok(());
        }
        match_float!("affine_in_place", self.dtype(), T => {
            let f = affine_fn::<T>(scale, shift);
            self.data_mut::<T>()?.par_chunks_mut(1 << 16).for_each(|c| c.iter_mut().for_each(|x| *x = f(*x)));
            Ok(())
        })
    }

    pub fn add_scalar(&self, value: f64) -> Result<Tensor> {
        self.affine(1.0, value)
    }

    pub fn mul_scalar(&self, value: f64) -> Result<Tensor> {
        self.affine(value, 0.0)
    }

    /// Gradient of silu: `grad_y * s * (1 + x (1 - s))` with `s = sigmoid(x)`; shapes must match.
    pub fn silu_backward(x: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
        super::check_same_shape("silu_backward", x, grad_y)?;
        #[cfg(feature = "cuda")]
        if x.is_cuda() {
            super::check_same("silu_backward", &[x, grad_y])?;
            return crate::cuda::elementwise::silu_backward(x, grad_y);
        }
        cpu_activation_backward("silu_backward", Activation::Silu, x, grad_y)
    }

    /// Gradient of gelu (tanh form): `grad_y * (s + 2 x s (1 - s) u')`, `s = sigmoid(2u)`; CPU only.
    pub fn gelu_backward(x: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
        super::check_same_shape("gelu_backward", x, grad_y)?;
        cpu_activation_backward("gelu_backward", Activation::Gelu, x, grad_y)
    }

    /// Gradient of relu: `grad_y` where `x > 0`, else 0; CPU only.
    pub fn relu_backward(x: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
        super::check_same_shape("relu_backward", x, grad_y)?;
        cpu_activation_backward("relu_backward", Activation::Relu, x, grad_y)
    }
}

/// The activations with a gradient kernel.
#[derive(Clone, Copy)]
enum Activation {
    Silu,
    Gelu,
    Relu,
}

/// An activation's gradient kernel over `x` and `grad_y`, whose shapes the caller checked. A GPU tensor
/// is [`TensorError::UnsupportedDevice`]: silu's gradient has its own GPU kernel, gelu's and relu's none.
fn cpu_activation_backward(op: &'static str, act: Activation, x: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
    if x.device() != Device::Cpu || grad_y.device() != Device::Cpu {
        return Err(TensorError::UnsupportedDevice {
            op,
            device: if x.device() != Device::Cpu { x.device() } else { grad_y.device() },
            reason: "this activation has a CPU kernel only".into(),
        });
    }
    fn kernel<T: CpuFloat>(act: Activation) -> fn(&[T], &[T], &mut [T]) {
        match act {
            Activation::Silu => silu_backward,
            Activation::Gelu => gelu_backward,
            Activation::Relu => relu_backward,
        }
    }
    if let Some([out]) =
        fused_elementwise(op, [x, grad_y], x.shape(), |[x, g], [out]| kernel(act)(x, g, out))?
    {
        return Ok(out);
    }
    in_compute_dtype1(op, [x, grad_y], |[x, g]| {
        match_float!(op, x.dtype(), T => {
            let (xd, gd) = (x.contiguous_data::<T>()?, g.contiguous_data::<T>()?);
            let mut out = crate::pool::take_for_overwrite::<T>(xd.len()); // written whole by the kernel
            let kernel = kernel::<T>(act);
            kernel(&xd, &gd, &mut out);
            Ok(Tensor::from_compute(out, x.shape()))
        })
    })
}

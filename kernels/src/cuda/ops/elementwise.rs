//! Launchers of `kernels/cuda/elementwise.cu`.
use super::{grid_1d, kernel_name, launch};
use crate::cuda::{CudaDevice, GpuDType, Result, StridedArg};
use cudarc::driver::PushKernelArg;

/// `y[dst(i)] = convert(x[src(i)])` for the `n` elements of the views (dtype conversion included).
///
/// # Safety
/// `x` and `y` must be buffers of this device holding every element the views address.
#[allow(clippy::too_many_arguments)] // two (view, address, dtype) triples, kept flat for the callers
pub unsafe fn copy_strided(
    device: &CudaDevice,
    src: &StridedArg,
    x: u64,
    src_dtype: GpuDType,
    dst: &StridedArg,
    y: u64,
    dst_dtype: GpuDType,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let name = format!("copy_{}_{}", src_dtype.suffix(), dst_dtype.suffix());
    let n = n as i64;
    // SAFETY: argument list matches `copy_S_D(Strided, const S*, Strided, D*, i64)`.
    unsafe { launch!(device, "elementwise", name, grid_1d(n as usize); src, &x, dst, &y, &n) }
}

/// `y[i] = value` for `i < n`.
///
/// # Safety
/// `y` must hold `n` elements of `dtype`.
pub unsafe fn fill(device: &CudaDevice, y: u64, dtype: GpuDType, value: f32, n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let n = n as i64;
    // SAFETY: argument list matches `fill_T(T*, float, i64)`.
    unsafe { launch!(device, "elementwise", kernel_name("fill", dtype), grid_1d(n as usize); &y, &value, &n) }
}

/// A strided operand of a kernel: the view and the device address of its storage's first element.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    pub view: StridedArg,
    pub base: u64,
}

/// The broadcasting binary kernels (`binary_<op>_<dtype>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

impl Binary {
    fn kernel(self) -> &'static str {
        match self {
            Binary::Add => "binary_add",
            Binary::Sub => "binary_sub",
            Binary::Mul => "binary_mul",
            Binary::Div => "binary_div",
        }
    }
}

/// The unary kernels (`unary_<op>_<dtype>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Neg,
    Exp,
    Log,
    Silu,
}

impl Unary {
    fn kernel(self) -> &'static str {
        match self {
            Unary::Neg => "unary_neg",
            Unary::Exp => "unary_exp",
            Unary::Log => "unary_log",
            Unary::Silu => "unary_silu",
        }
    }
}

/// `y[i] = a[i] (op) b[i]` over the `n` elements of the (broadcast) views; `y` is contiguous.
///
/// # Safety
/// The operands must address only elements of live buffers of this device, and `y` must hold `n`
/// elements; all three have type `dtype`.
pub unsafe fn binary(
    device: &CudaDevice,
    op: Binary,
    a: &Operand,
    b: &Operand,
    y: u64,
    dtype: GpuDType,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let n = n as i64;
    // SAFETY: argument list matches `binary_OP_T(Strided, const T*, Strided, const T*, T*, i64)`.
    unsafe {
        launch!(device, "elementwise", kernel_name(op.kernel(), dtype), grid_1d(n as usize);
            &a.view, &a.base, &b.view, &b.base, &y, &n)
    }
}

/// `y[i] = f(x[i])` over the `n` elements of the view; `y` is contiguous.
///
/// # Safety
/// As for [`binary`].
pub unsafe fn unary(
    device: &CudaDevice,
    op: Unary,
    x: &Operand,
    y: u64,
    dtype: GpuDType,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let n = n as i64;
    // SAFETY: argument list matches `unary_OP_T(Strided, const T*, T*, i64)`.
    unsafe {
        launch!(device, "elementwise", kernel_name(op.kernel(), dtype), grid_1d(n as usize);
            &x.view, &x.base, &y, &n)
    }
}

/// `y[i] = scale * x[i] + shift` over the `n` elements of the view; `y` is contiguous.
///
/// # Safety
/// As for [`binary`].
pub unsafe fn affine(
    device: &CudaDevice,
    x: &Operand,
    scale: f32,
    shift: f32,
    y: u64,
    dtype: GpuDType,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let n = n as i64;
    // SAFETY: argument list matches `affine_T(Strided, const T*, float, float, T*, i64)`.
    unsafe {
        launch!(device, "elementwise", kernel_name("affine", dtype), grid_1d(n as usize);
            &x.view, &x.base, &scale, &shift, &y, &n)
    }
}

/// `y[i] = grad[i] * s * (1 + x[i] (1 - s))`, `s = sigmoid(x[i])`, over `n` elements; `y` is contiguous.
///
/// # Safety
/// As for [`binary`].
pub unsafe fn silu_backward(
    device: &CudaDevice,
    x: &Operand,
    grad: &Operand,
    y: u64,
    dtype: GpuDType,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let n = n as i64;
    // SAFETY: argument list matches `silu_backward_T(Strided, const T*, Strided, const T*, T*, i64)`.
    unsafe {
        launch!(device, "elementwise", kernel_name("silu_backward", dtype), grid_1d(n as usize);
            &x.view, &x.base, &grad.view, &grad.base, &y, &n)
    }
}

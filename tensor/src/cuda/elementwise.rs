//! GPU implementation of the elementwise ops (see `ops/elementwise.rs` for the CPU path and the shape rules),
//! of the MLP's gated product (`ops/gated.rs`) and of concatenation. Inputs may be any strided view
//! (broadcast dims have stride 0); outputs are new contiguous tensors of the input dtype, bf16 computed in
//! f32 inside the kernels.
use super::{cuda_error, strided_args};
use crate::error::{Result, TensorError};
use crate::layout::broadcast_shapes;
use crate::op_kinds::{BinaryOp, UnaryOp};
use crate::Tensor;
use cola_kernels::cpu::gated::GateActivation;
use cola_kernels::cuda::ops::elementwise::{self as kernels, Binary, Operand, Unary};
use cola_kernels::cuda::StridedArg;

fn operand(op: &'static str, t: &Tensor, view: StridedArg) -> Result<Operand> {
    Ok(Operand { view, base: t.gpu_base(op)? })
}

/// Broadcasting `a (op) b`; `a` and `b` share dtype and device (checked by the caller).
pub(crate) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = op.name();
    let shape = broadcast_shapes(name, a.shape(), b.shape())?;
    let (la, lb) = (a.layout().broadcast_to(&shape)?, b.layout().broadcast_to(&shape)?);
    let (device, dtype) = (a.gpu_device(name)?, a.gpu_dtype(name)?);
    let out = Tensor::gpu_empty(&device, &shape, a.dtype())?;
    let args = strided_args(name, &shape, &[&la, &lb, out.layout()])?;
    let kernel = match op {
        BinaryOp::Add => Binary::Add,
        BinaryOp::Sub => Binary::Sub,
        BinaryOp::Mul => Binary::Mul,
        BinaryOp::Div => Binary::Div,
    };
    let (x, y) = (operand(name, a, args[0])?, operand(name, b, args[1])?);
    // SAFETY: the broadcast views address only elements of their buffers (stride 0 on stretched dims) and
    // `out` is a fresh contiguous buffer of `shape`.
    unsafe { kernels::binary(&device, kernel, &x, &y, out.gpu_ptr(name)?, dtype, out.numel()) }
        .map_err(cuda_error(name))?;
    Ok(out)
}

/// `f(a)` elementwise.
pub(crate) fn unary(op: UnaryOp, a: &Tensor) -> Result<Tensor> {
    let name = op.name();
    let (device, dtype) = (a.gpu_device(name)?, a.gpu_dtype(name)?);
    let out = Tensor::gpu_empty(&device, a.shape(), a.dtype())?;
    let args = strided_args(name, a.shape(), &[a.layout(), out.layout()])?;
    let kernel = match op {
        UnaryOp::Neg => Unary::Neg,
        UnaryOp::Exp => Unary::Exp,
        UnaryOp::Log => Unary::Log,
        UnaryOp::Silu => Unary::Silu,
        UnaryOp::Gelu | UnaryOp::Relu => {
            return Err(TensorError::UnsupportedDevice {
                op: name,
                device: a.device(),
                reason: format!("{name} has a CPU kernel only (silu is the GPU's low-rank activation)"),
            })
        }
    };
    let x = operand(name, a, args[0])?;
    // SAFETY: the view addresses only elements of its buffer; `out` is fresh and contiguous.
    unsafe { kernels::unary(&device, kernel, &x, out.gpu_ptr(name)?, dtype, out.numel()) }
        .map_err(cuda_error(name))?;
    Ok(out)
}

/// `scale * a + shift` elementwise; the scalars are rounded to f32 as the CPU path rounds them.
pub(crate) fn affine(a: &Tensor, scale: f64, shift: f64) -> Result<Tensor> {
    const OP: &str = "affine";
    let (device, dtype) = (a.gpu_device(OP)?, a.gpu_dtype(OP)?);
    let out = Tensor::gpu_empty(&device, a.shape(), a.dtype())?;
    let args = strided_args(OP, a.shape(), &[a.layout(), out.layout()])?;
    let x = operand(OP, a, args[0])?;
    // SAFETY: the view addresses only elements of its buffer; `out` is fresh and contiguous.
    unsafe { kernels::affine(&device, &x, scale as f32, shift as f32, out.gpu_ptr(OP)?, dtype, out.numel()) }
        .map_err(cuda_error(OP))?;
    Ok(out)
}

/// `grad_y * s * (1 + x (1 - s))`, `s = sigmoid(x)`; shapes, dtypes and devices checked by the caller.
pub(crate) fn silu_backward(x: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
    const OP: &str = "silu_backward";
    let (device, dtype) = (x.gpu_device(OP)?, x.gpu_dtype(OP)?);
    let out = Tensor::gpu_empty(&device, x.shape(), x.dtype())?;
    let args = strided_args(OP, x.shape(), &[x.layout(), grad_y.layout(), out.layout()])?;
    let (xs, gs) = (operand(OP, x, args[0])?, operand(OP, grad_y, args[1])?);
    // SAFETY: the views address only elements of their buffers; `out` is fresh and contiguous.
    unsafe { kernels::silu_backward(&device, &xs, &gs, out.gpu_ptr(OP)?, dtype, out.numel()) }
        .map_err(cuda_error(OP))?;
    Ok(out)
}

/// Joins `parts` along `axis` into a new tensor of `shape` (validated by the caller): each part is copied
/// into its slice of the output.
pub(crate) fn concat(parts: &[Tensor], axis: usize, shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "concat";
    let Some(first) = parts.first() else {
        return Err(crate::TensorError::InvalidArgument {
            op: OP,
            reason: "needs at least one tensor".into(),
        });
    };
    let out = Tensor::gpu_empty(&first.gpu_device(OP)?, shape, first.dtype())?;
    let mut start = 0;
    for p in parts {
        let len = p.shape()[axis];
        out.narrow(axis as isize, start, len)?.gpu_copy_into(p)?;
        start += len;
    }
    Ok(out)
}

/// `act(gate) * up` elementwise; shapes, dtypes and devices checked by the caller.
pub(crate) fn gated(gate: &Tensor, up: &Tensor, activation: GateActivation) -> Result<Tensor> {
    const OP: &str = "gated";
    let (device, dtype) = (gate.gpu_device(OP)?, gate.gpu_dtype(OP)?);
    let out = Tensor::gpu_empty(&device, gate.shape(), gate.dtype())?;
    let args = strided_args(OP, gate.shape(), &[gate.layout(), up.layout(), out.layout()])?;
    let (g, u) = (operand(OP, gate, args[0])?, operand(OP, up, args[1])?);
    // SAFETY: the views address only elements of their buffers; `out` is fresh and contiguous.
    unsafe { kernels::gated(&device, &g, &u, activation, out.gpu_ptr(OP)?, dtype, out.numel()) }
        .map_err(cuda_error(OP))?;
    Ok(out)
}

/// `(grad_gate, grad_up)` of [`gated`] in one kernel; shapes, dtypes and devices checked by the caller.
pub(crate) fn gated_backward(
    gate: &Tensor,
    up: &Tensor,
    grad: &Tensor,
    activation: GateActivation,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "gated_backward";
    let (device, dtype) = (gate.gpu_device(OP)?, gate.gpu_dtype(OP)?);
    let grad_gate = Tensor::gpu_empty(&device, gate.shape(), gate.dtype())?;
    let grad_up = Tensor::gpu_empty(&device, gate.shape(), gate.dtype())?;
    let views = [gate.layout(), up.layout(), grad.layout(), grad_gate.layout(), grad_up.layout()];
    let args = strided_args(OP, gate.shape(), &views)?;
    let (g, u) = (operand(OP, gate, args[0])?, operand(OP, up, args[1])?);
    let dh = operand(OP, grad, args[2])?;
    let (pg, pu) = (grad_gate.gpu_ptr(OP)?, grad_up.gpu_ptr(OP)?);
    // SAFETY: the views address only elements of their buffers; both outputs are fresh and contiguous.
    unsafe { kernels::gated_backward(&device, &g, &u, &dh, activation, pg, pu, dtype, gate.numel()) }
        .map_err(cuda_error(OP))?;
    Ok((grad_gate, grad_up))
}

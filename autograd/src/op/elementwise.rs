//! Broadcasting binary ops, unary ops and `scale * x + shift`.
use super::{InputGrads, Needs, Rule};
use crate::backward::Context;
use crate::profile::{broadcast_numel, numel, pick};
use cola_tensor::{BinaryOp, Result, Tensor, UnaryOp};

impl Rule for BinaryOp {
    fn name(&self) -> &'static str {
        BinaryOp::name(*self)
    }

    fn family(&self) -> &'static str {
        "elementwise"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].binary(*self, inputs[1])
    }

    fn needs(&self) -> Needs {
        match self {
            BinaryOp::Add | BinaryOp::Sub => Needs::NOTHING,
            BinaryOp::Mul | BinaryOp::Div => Needs::ALL_INPUTS,
        }
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        let g = ctx.grad;
        let (sa, sb) = (ctx.input_shapes[0], ctx.input_shapes[1]);
        let (ga, gb) = match self {
            BinaryOp::Add => {
                (ctx.grad_for(0, || Ok(g.sum_to_shape(sa)?))?, ctx.grad_for(1, || Ok(g.sum_to_shape(sb)?))?)
            }
            BinaryOp::Sub => (
                ctx.grad_for(0, || Ok(g.sum_to_shape(sa)?))?,
                ctx.grad_for(1, || Ok(g.sum_to_shape(sb)?.neg()?))?,
            ),
            BinaryOp::Mul => {
                let (a, b) = (ctx.input(0)?, ctx.input(1)?);
                (
                    ctx.grad_for(0, || Ok(g.mul(b)?.sum_to_shape(sa)?))?,
                    ctx.grad_for(1, || Ok(g.mul(a)?.sum_to_shape(sb)?))?,
                )
            }
            // d(a/b)/da = 1/b, d(a/b)/db = -a/b^2.
            BinaryOp::Div => {
                let (a, b) = (ctx.input(0)?, ctx.input(1)?);
                (
                    ctx.grad_for(0, || Ok(g.div(b)?.sum_to_shape(sa)?))?,
                    ctx.grad_for(1, || Ok(g.mul(a)?.div(&b.mul(b)?)?.neg()?.sum_to_shape(sb)?))?,
                )
            }
        };
        Ok(vec![ga, gb])
    }

    /// 1 per element of the broadcast output forward, 1 per input backward.
    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        pick(backward, 1, inputs.len() as u64) * broadcast_numel(inputs)
    }
}

impl Rule for UnaryOp {
    fn name(&self) -> &'static str {
        UnaryOp::name(*self)
    }

    /// SiLU, the activation of every CoLA projection, has a row of its own, as do the other low-rank
    /// activations of the variants (`--lowrank-act`).
    fn family(&self) -> &'static str {
        match self {
            UnaryOp::Silu => "silu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Relu => "relu",
            _ => "elementwise",
        }
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].unary(*self)
    }

    fn needs(&self) -> Needs {
        match self {
            UnaryOp::Exp => Needs { inputs: 0, output: true },
            UnaryOp::Log | UnaryOp::Silu | UnaryOp::Gelu | UnaryOp::Relu => {
                Needs { inputs: 1, output: false }
            }
            UnaryOp::Neg => Needs::NOTHING,
        }
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        let g = ctx.grad;
        Ok(vec![ctx.grad_for(0, || {
            Ok(match self {
                UnaryOp::Neg => g.neg()?,
                UnaryOp::Exp => g.mul(ctx.output()?)?,
                UnaryOp::Log => g.div(ctx.input(0)?)?,
                UnaryOp::Silu => Tensor::silu_backward(ctx.input(0)?, g)?,
                UnaryOp::Gelu => Tensor::gelu_backward(ctx.input(0)?, g)?,
                UnaryOp::Relu => Tensor::relu_backward(ctx.input(0)?, g)?,
            })
        })?])
    }

    /// Per element, forward / backward: silu 4 / 9 (`exp`, `+1`, divide, multiply; backward recomputes
    /// the sigmoid and forms `g s (1 + x (1 - s))`); gelu 8 / 16 (`x * sigmoid(2u)` with a cubic `u`; the
    /// slope adds the cubic's derivative); relu and the others 1 / 1.
    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        let first = inputs.first().copied().unwrap_or(&[]);
        match self {
            UnaryOp::Silu => pick(backward, 4, 9) * numel(first),
            UnaryOp::Gelu => pick(backward, 8, 16) * numel(first),
            _ => numel(first),
        }
    }
}

/// `scale * x + shift`.
#[derive(Clone, Copy, Debug)]
pub struct Affine {
    pub scale: f64,
    pub shift: f64,
}

impl Rule for Affine {
    fn name(&self) -> &'static str {
        "affine"
    }

    fn family(&self) -> &'static str {
        "elementwise"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].affine(self.scale, self.shift)
    }

    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        Ok(vec![ctx.grad_for(0, || Ok(ctx.grad.mul_scalar(self.scale)?))?])
    }

    /// Per element, forward / backward: 2 (a multiply and an add) / 1.
    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        pick(backward, 2, 1) * numel(inputs.first().copied().unwrap_or(&[]))
    }
}

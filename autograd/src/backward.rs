//! One backward rule per op: given the output gradient (and the values the op said it needs), the
//! gradients of the inputs that want one.
use crate::error::{AutogradError, Result};
use crate::op::Op;
use cola_tensor::{AttentionSaved, BinaryOp, Tensor, TensorError, UnaryOp};

/// What a backward rule sees of its node.
pub struct Context<'a> {
    /// Input values, present where `Op::needs` asked for them.
    pub inputs: Vec<Option<&'a Tensor>>,
    pub input_shapes: Vec<&'a [usize]>,
    /// The output value, present when `Op::needs` asked for it.
    pub output: Option<&'a Tensor>,
    /// The auxiliary tensor [`Op::forward_saving`] produced with the output, when it produced one and
    /// the output is present.
    pub saved: Option<&'a Tensor>,
    /// Gradient of the loss with respect to the output.
    pub grad: &'a Tensor,
    /// Whether input i wants a gradient; rules skip the work for the others.
    pub wants: Vec<bool>,
    /// Gradients of the inputs for an output gradient of 1, formed in forward by ops that do so
    /// ([`Op::forward_with_grads`]); `None` for the others.
    pub unit_grads: Option<&'a [Option<Tensor>]>,
}

impl<'a> Context<'a> {
    fn input(&self, i: usize) -> Result<&'a Tensor> {
        self.inputs[i].ok_or(AutogradError::Tensor(TensorError::InvalidArgument {
            op: "backward",
            reason: format!("input {i} was not kept for backward"),
        }))
    }

    fn output(&self) -> Result<&'a Tensor> {
        self.output.ok_or(AutogradError::Tensor(TensorError::InvalidArgument {
            op: "backward",
            reason: "output was not kept for backward".into(),
        }))
    }

    /// Computes the gradient of input i with `f` only when it is wanted.
    fn grad_for(&self, i: usize, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
        if self.wants[i] {
            f().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Gradient of one matmul operand. For `a @ b` with `a: [..., m, k]`, `b: [..., k, n]`:
/// `grad_a = g @ b^T` and `grad_b = a^T @ g`, each summed over the batch dims it was broadcast along.
/// A rank-2 `b` shared across a batch (a weight) gets its gradient as one GEMM over all rows of the batch.
fn matmul_grads(ctx: &Context) -> Result<Vec<Option<Tensor>>> {
    let (a, b, g) = (ctx.input(0)?, ctx.input(1)?, ctx.grad);
    let grad_a = ctx.grad_for(0, || Ok(g.matmul(&b.t()?)?.sum_to_shape(a.shape())?))?;
    let grad_b = ctx.grad_for(1, || {
        if b.rank() == 2 && a.rank() > 2 {
            let k = a.shape()[a.rank() - 1];
            let n = g.shape()[g.rank() - 1];
            let a2 = a.reshape(&[a.numel() / k.max(1), k])?;
            let g2 = g.reshape(&[g.numel() / n.max(1), n])?;
            return Ok(a2.t()?.matmul(&g2)?);
        }
        Ok(a.t()?.matmul(g)?.sum_to_shape(b.shape())?)
    })?;
    Ok(vec![grad_a, grad_b])
}

fn binary_grads(op: BinaryOp, ctx: &Context) -> Result<Vec<Option<Tensor>>> {
    let g = ctx.grad;
    let (sa, sb) = (ctx.input_shapes[0], ctx.input_shapes[1]);
    let (ga, gb) = match op {
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

fn unary_grad(op: UnaryOp, ctx: &Context) -> Result<Tensor> {
    let g = ctx.grad;
    Ok(match op {
        UnaryOp::Neg => g.neg()?,
        UnaryOp::Exp => g.mul(ctx.output()?)?,
        UnaryOp::Log => g.div(ctx.input(0)?)?,
        UnaryOp::Silu => Tensor::silu_backward(ctx.input(0)?, g)?,
        UnaryOp::Gelu => Tensor::gelu_backward(ctx.input(0)?, g)?,
        UnaryOp::Relu => Tensor::relu_backward(ctx.input(0)?, g)?,
    })
}

/// The gradient of a reduction spread back over the reduced axes (a broadcast view, no copy).
fn unreduce(g: &Tensor, input_shape: &[usize], axes: &[isize], keepdim: bool) -> Result<Tensor> {
    let rank = input_shape.len();
    let mut reduced = vec![axes.is_empty(); rank];
    for &a in axes {
        reduced[cola_tensor::layout::resolve_axis("sum backward", a, rank)?] = true;
    }
    let kept: Vec<usize> = (0..rank).map(|d| if reduced[d] { 1 } else { input_shape[d] }).collect();
    let g = if keepdim { g.clone() } else { g.reshape(&kept)? };
    Ok(g.broadcast_to(input_shape)?)
}

/// Zeros of `input_shape` with `g` placed at `start..start+len` of `axis` (the gradient of a narrow).
fn unnarrow(g: &Tensor, input_shape: &[usize], axis: isize, start: usize, len: usize) -> Result<Tensor> {
    let ax = cola_tensor::layout::resolve_axis("narrow backward", axis, input_shape.len())?;
    let mut parts = Vec::with_capacity(3);
    let zeros = |n: usize| {
        let mut s = input_shape.to_vec();
        s[ax] = n;
        Tensor::zeros_on(&s, g.dtype(), g.device())
    };
    if start > 0 {
        parts.push(zeros(start)?);
    }
    parts.push(g.clone());
    let after = input_shape[ax] - start - len;
    if after > 0 {
        parts.push(zeros(after)?);
    }
    Ok(Tensor::concat(&parts, ax as isize)?)
}

/// The gradients an op formed in forward for an output gradient of 1 (in the dtypes of its inputs), times
/// the scalar output gradient. A gradient of exactly 1 (the mean loss of a whole batch) returns them
/// unchanged, bit for bit; any other (a micro-batch's weight in an accumulated step) scales them once.
fn scaled_unit_grads(ctx: &Context) -> Result<Vec<Option<Tensor>>> {
    let unit = ctx.unit_grads.ok_or(AutogradError::Tensor(TensorError::InvalidArgument {
        op: "backward",
        reason: "the gradients formed in forward were not kept".into(),
    }))?;
    let scale = ctx.grad.to_scalar()?;
    let mut out = Vec::with_capacity(ctx.wants.len());
    for (i, &wanted) in ctx.wants.iter().enumerate() {
        let grad = match unit.get(i) {
            Some(Some(t)) if wanted => Some(if scale == 1.0 { t.clone() } else { t.mul_scalar(scale)? }),
            _ => None,
        };
        out.push(grad);
    }
    Ok(out)
}

/// Gradients of every input of one node (`None` where not wanted).
pub fn backward(op: &Op, ctx: &Context) -> Result<Vec<Option<Tensor>>> {
    let g = ctx.grad;
    let shape0 = ctx.input_shapes[0];
    let one =
        |f: &dyn Fn() -> Result<Tensor>| -> Result<Vec<Option<Tensor>>> { Ok(vec![ctx.grad_for(0, f)?]) };
    match op {
        Op::Matmul => matmul_grads(ctx),
        Op::Binary(b) => binary_grads(*b, ctx),
        Op::Unary(u) => one(&|| unary_grad(*u, ctx)),
        Op::Affine { scale, .. } => one(&|| Ok(g.mul_scalar(*scale)?)),
        Op::Sum { axes, keepdim } => one(&|| unreduce(g, shape0, axes, *keepdim)),
        Op::Mean { axes, keepdim } => one(&|| {
            let count: usize = if axes.is_empty() {
                shape0.iter().product()
            } else {
                let rank = shape0.len();
                axes.iter()
                    .map(|&a| cola_tensor::layout::resolve_axis("mean backward", a, rank).map(|d| shape0[d]))
                    .product::<cola_tensor::Result<usize>>()?
            };
            unreduce(&g.mul_scalar(1.0 / count.max(1) as f64)?, shape0, axes, *keepdim)
        }),
        Op::Reshape { .. } => one(&|| Ok(g.reshape(shape0)?)),
        Op::Permute { perm } => one(&|| {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            Ok(g.permute(&inverse)?)
        }),
        Op::Narrow { axis, start, len } => one(&|| unnarrow(g, shape0, *axis, *start, *len)),
        Op::BroadcastTo { .. } => one(&|| Ok(g.sum_to_shape(shape0)?)),
        Op::Concat { axis } => {
            let ax = cola_tensor::layout::resolve_axis("concat backward", *axis, shape0.len())?;
            let mut start = 0;
            let mut out = Vec::with_capacity(ctx.input_shapes.len());
            for (i, shape) in ctx.input_shapes.iter().enumerate() {
                let len = shape[ax];
                out.push(ctx.grad_for(i, || Ok(g.narrow(ax as isize, start, len)?))?);
                start += len;
            }
            Ok(out)
        }
        Op::RmsNorm { eps } => {
            let mut grads = Tensor::rms_norm_backward(ctx.input(0)?, ctx.input(1)?, g, *eps)?.into_iter();
            let (gx, gw) = (grads.next(), grads.next());
            Ok(vec![gx.filter(|_| ctx.wants[0]), gw.filter(|_| ctx.wants[1])])
        }
        Op::Rope { positions, theta } => one(&|| Ok(Tensor::rope_backward(g, positions, *theta)?)),
        Op::Attention { scale } => {
            let saved = ctx.output.zip(ctx.saved).map(|(output, lse)| AttentionSaved { output, lse });
            let (q, k, v) = (ctx.input(0)?, ctx.input(1)?, ctx.input(2)?);
            let grads = Tensor::attention_backward_saved(q, k, v, g, saved, *scale)?;
            Ok(grads.into_iter().zip(&ctx.wants).map(|(t, &w)| Some(t).filter(|_| w)).collect())
        }
        Op::Embedding { ids, pad_id, .. } => {
            one(&|| Ok(Tensor::embedding_backward(g, ids, shape0[0], *pad_id)?))
        }
        Op::CrossEntropy { targets, ignore_id } => one(&|| {
            let grad_loss = g.to_scalar()?;
            Ok(Tensor::cross_entropy_backward(ctx.input(0)?, targets, *ignore_id, grad_loss)?)
        }),
        // One pass gives both gradients, so they are computed together even when only one is wanted.
        Op::Gated { activation } => {
            let (grad_gate, grad_up) = Tensor::gated_backward(ctx.input(0)?, ctx.input(1)?, g, *activation)?;
            Ok(vec![Some(grad_gate).filter(|_| ctx.wants[0]), Some(grad_up).filter(|_| ctx.wants[1])])
        }
        Op::HeadCrossEntropy { .. } => scaled_unit_grads(ctx),
    }
}

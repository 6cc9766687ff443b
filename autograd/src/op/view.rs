//! Reshape, permute, narrow and broadcast (views that copy nothing), and concat (a copy). They move or
//! alias data: 0 FLOPs, except the sum a broadcast's backward does.
use super::{InputGrads, Needs, Rule};
use crate::backward::Context;
use crate::profile::{numel, pick};
use cola_tensor::{Result, Shape, Tensor};

#[derive(Clone, Debug)]
pub struct Reshape {
    pub shape: Shape,
}

/// Dim i of the output is dim `perm[i]` of the input.
#[derive(Clone, Debug)]
pub struct Permute {
    pub perm: Vec<usize>,
}

/// `len` entries of `axis` from `start`.
#[derive(Clone, Copy, Debug)]
pub struct Narrow {
    pub axis: isize,
    pub start: usize,
    pub len: usize,
}

#[derive(Clone, Debug)]
pub struct BroadcastTo {
    pub shape: Shape,
}

/// Inputs: the parts, joined along `axis`.
#[derive(Clone, Copy, Debug)]
pub struct Concat {
    pub axis: isize,
}

impl Rule for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }

    fn family(&self) -> &'static str {
        "view"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].reshape(&self.shape)
    }

    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        Ok(vec![ctx.grad_for(0, || Ok(ctx.grad.reshape(ctx.input_shapes[0])?))?])
    }

    fn flops(&self, _backward: bool, _inputs: &[&[usize]]) -> u64 {
        0
    }
}

impl Rule for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }

    fn family(&self) -> &'static str {
        "view"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].permute(&self.perm)
    }

    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        Ok(vec![ctx.grad_for(0, || {
            let mut inverse = vec![0; self.perm.len()];
            for (i, &p) in self.perm.iter().enumerate() {
                inverse[p] = i;
            }
            Ok(ctx.grad.permute(&inverse)?)
        })?])
    }

    fn flops(&self, _backward: bool, _inputs: &[&[usize]]) -> u64 {
        0
    }
}

/// Zeros of `input_shape` with `g` placed at `start..start+len` of `axis` (the gradient of a narrow).
fn unnarrow(
    g: &Tensor,
    input_shape: &[usize],
    axis: isize,
    start: usize,
    len: usize,
) -> crate::Result<Tensor> {
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

impl Rule for Narrow {
    fn name(&self) -> &'static str {
        "narrow"
    }

    fn family(&self) -> &'static str {
        "view"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].narrow(self.axis, self.start, self.len)
    }

    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        let (shape, Narrow { axis, start, len }) = (ctx.input_shapes[0], *self);
        Ok(vec![ctx.grad_for(0, || unnarrow(ctx.grad, shape, axis, start, len))?])
    }

    fn flops(&self, _backward: bool, _inputs: &[&[usize]]) -> u64 {
        0
    }
}

impl Rule for BroadcastTo {
    fn name(&self) -> &'static str {
        "broadcast_to"
    }

    fn family(&self) -> &'static str {
        "view"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].broadcast_to(&self.shape)
    }

    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        Ok(vec![ctx.grad_for(0, || Ok(ctx.grad.sum_to_shape(ctx.input_shapes[0])?))?])
    }

    /// The backward sums back: 1 per element of the broadcast shape.
    fn flops(&self, backward: bool, _inputs: &[&[usize]]) -> u64 {
        pick(backward, 0, numel(&self.shape))
    }
}

impl Rule for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }

    fn family(&self) -> &'static str {
        "concat"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let parts: Vec<Tensor> = inputs.iter().map(|&t| t.clone()).collect();
        Tensor::concat(&parts, self.axis)
    }

    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        let ax = cola_tensor::layout::resolve_axis("concat backward", self.axis, ctx.input_shapes[0].len())?;
        let mut start = 0;
        let mut out = Vec::with_capacity(ctx.input_shapes.len());
        for (i, shape) in ctx.input_shapes.iter().enumerate() {
            let len = shape[ax];
            out.push(ctx.grad_for(i, || Ok(ctx.grad.narrow(ax as isize, start, len)?))?);
            start += len;
        }
        Ok(out)
    }

    fn flops(&self, _backward: bool, _inputs: &[&[usize]]) -> u64 {
        0
    }
}

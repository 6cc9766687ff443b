//! Sum and mean over axes (all when none are given), with or without the reduced axes kept.
use super::{InputGrads, Needs, Rule};
use crate::backward::Context;
use crate::profile::{numel, pick};
use cola_tensor::{Result, Tensor};

/// Sum over `axes` (all when empty).
#[derive(Clone, Debug)]
pub struct Sum {
    pub axes: Vec<isize>,
    pub keepdim: bool,
}

/// Mean over `axes` (all when empty).
#[derive(Clone, Debug)]
pub struct Mean {
    pub axes: Vec<isize>,
    pub keepdim: bool,
}

/// The gradient of a reduction spread back over the reduced axes (a broadcast view, no copy).
fn unreduce(g: &Tensor, input_shape: &[usize], axes: &[isize], keepdim: bool) -> crate::Result<Tensor> {
    let rank = input_shape.len();
    let mut reduced = vec![axes.is_empty(); rank];
    for &a in axes {
        reduced[cola_tensor::layout::resolve_axis("sum backward", a, rank)?] = true;
    }
    let kept: Vec<usize> = (0..rank).map(|d| if reduced[d] { 1 } else { input_shape[d] }).collect();
    let g = if keepdim { g.clone() } else { g.reshape(&kept)? };
    Ok(g.broadcast_to(input_shape)?)
}

/// 1 per input element forward; the backward is a broadcast view (0).
fn reduce_flops(backward: bool, inputs: &[&[usize]]) -> u64 {
    pick(backward, numel(inputs.first().copied().unwrap_or(&[])), 0)
}

impl Rule for Sum {
    fn name(&self) -> &'static str {
        "sum"
    }

    fn family(&self) -> &'static str {
        "reduce"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].sum(&self.axes, self.keepdim)
    }

    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        Ok(vec![ctx.grad_for(0, || unreduce(ctx.grad, ctx.input_shapes[0], &self.axes, self.keepdim))?])
    }

    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        reduce_flops(backward, inputs)
    }
}

impl Rule for Mean {
    fn name(&self) -> &'static str {
        "mean"
    }

    fn family(&self) -> &'static str {
        "reduce"
    }

    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].mean(&self.axes, self.keepdim)
    }

    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    fn backward(&self, ctx: &Context) -> crate::Result<InputGrads> {
        let shape0 = ctx.input_shapes[0];
        Ok(vec![ctx.grad_for(0, || {
            let count: usize = if self.axes.is_empty() {
                shape0.iter().product()
            } else {
                let rank = shape0.len();
                self.axes
                    .iter()
                    .map(|&a| cola_tensor::layout::resolve_axis("mean backward", a, rank).map(|d| shape0[d]))
                    .product::<cola_tensor::Result<usize>>()?
            };
            unreduce(&ctx.grad.mul_scalar(1.0 / count.max(1) as f64)?, shape0, &self.axes, self.keepdim)
        })?])
    }

    fn flops(&self, backward: bool, inputs: &[&[usize]]) -> u64 {
        reduce_flops(backward, inputs)
    }
}

//! Global-norm gradient clipping (as `torch.nn.utils.clip_grad_norm_`), in two halves so that a caller
//! whose gradients are spread over several stores (ZeRO's shards on several ranks) sums the squared
//! norms itself and scales each store by the same rule.
use crate::error::Result;
use cola_autograd::GradStore;

/// Scales every gradient by `min(1, max_norm / (norm + 1e-6))` where `norm` is the L2 norm of all gradients
/// together; returns `norm` before clipping. The sum runs over parameters in id order (deterministic).
pub fn clip_grad_norm(grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let norm = squared_norm(grads)?.sqrt();
    clip_to(grads, norm, max_norm)?;
    Ok(norm)
}

/// The sum of the squares of every gradient in `grads`, in f64, in id order.
pub fn squared_norm(grads: &GradStore) -> Result<f64> {
    let mut total = 0.0;
    for (_, g) in grads.iter() {
        total += g.squared_norm()?;
    }
    Ok(total)
}

/// Scales every gradient in `grads` by `min(1, max_norm / (norm + 1e-6))`, where `norm` is the global
/// norm of the gradients `grads` is part of.
pub fn clip_to(grads: &mut GradStore, norm: f64, max_norm: f64) -> Result<()> {
    let scale = clip_factor(norm, max_norm);
    if scale < 1.0 {
        let ids: Vec<_> = grads.iter().map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(g) = grads.get_mut(id) {
                // In place: the same `scale * g` as `mul_scalar`, without a second gradient-sized buffer.
                g.affine_in_place(scale, 0.0)?;
            }
        }
    }
    Ok(())
}

/// The factor clipping multiplies every gradient by: `min(1, max_norm / (norm + 1e-6))` (1 when the
/// quotient is NaN), the rule of `multi_tensor_clip_factor` in kernels/cuda/adamw.cu, in the same f64
/// operations.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        scale
    } else {
        1.0
    }
}

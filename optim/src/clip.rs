//! Global-norm gradient clipping (as `torch.nn.utils.clip_grad_norm_`).
use crate::error::Result;
use cola_autograd::GradStore;

/// Scales every gradient by `min(1, max_norm / (norm + 1e-6))` where `norm` is the L2 norm of all gradients
/// together; returns `norm` before clipping. The sum runs over parameters in id order (deterministic).
pub fn clip_grad_norm(grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let mut total = 0.0;
    for (_, g) in grads.iter() {
        total += g.squared_norm()?;
    }
    let norm = total.sqrt();
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        let ids: Vec<_> = grads.iter().map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(g) = grads.get_mut(id) {
                // In place: the same `scale * g` as `mul_scalar`, without a second gradient-sized buffer.
                g.affine_in_place(scale, 0.0)?;
            }
        }
    }
    Ok(norm)
}

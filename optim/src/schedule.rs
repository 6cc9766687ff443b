//! The learning-rate schedule of the CoLA recipe: linear warmup from 0, then cosine decay to 10% of peak.
//!
//! `lr(s) = peak * s / W` for `s < W`, else `peak * (0.1 + 0.9 * 0.5 * (1 + cos(pi * (s - W) / (N - W))))`,
//! where `s` counts optimizer updates from 0, `W` is the warmup length and `N` the total number of updates.
//! Past `N` the rate stays at its floor.
use crate::error::{OptimError, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineSchedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// The floor as a fraction of the peak (0.1 in the paper).
    pub min_ratio: f64,
}

impl CosineSchedule {
    /// The paper's schedule with a floor of 10% of the peak.
    pub fn new(peak_lr: f64, warmup_steps: u64, total_steps: u64) -> Result<Self> {
        if !(peak_lr.is_finite() && peak_lr >= 0.0) {
            return Err(OptimError::Schedule {
                reason: format!("peak lr {peak_lr} must be finite and >= 0"),
            });
        }
        if warmup_steps > total_steps {
            return Err(OptimError::Schedule {
                reason: format!("warmup {warmup_steps} is longer than the run ({total_steps} steps)"),
            });
        }
        Ok(CosineSchedule { peak_lr, warmup_steps, total_steps, min_ratio: 0.1 })
    }

    /// Learning rate of update number `step` (from 0).
    pub fn lr(&self, step: u64) -> f64 {
        let (w, n) = (self.warmup_steps, self.total_steps);
        if step < w {
            return self.peak_lr * step as f64 / w as f64;
        }
        let progress = if n > w { ((step - w) as f64 / (n - w) as f64).min(1.0) } else { 1.0 };
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak_lr * (self.min_ratio + (1.0 - self.min_ratio) * cosine)
    }
}

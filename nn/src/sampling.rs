//! Choosing the next token from logits: greedy (argmax), or sampling at a temperature from the top-k
//! tokens and the top-p nucleus, reproducible from a seed.
//!
//! Sampling keeps the `top_k` largest logits (ties: the lower id first), takes the softmax of
//! `logit / temperature` over them (in f64), keeps the smallest prefix of them, in that order, whose
//! probability reaches `top_p`, renormalises, and draws one uniform number from the project's
//! counter-based [`Rng`]: one draw per sampled token, so a seed fixes the whole output.
use crate::error::{NnError, Result};
use cola_tensor::Rng;

/// How tokens are chosen. The default is greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Divides the logits before the softmax; `0` is greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens; `0` keeps all. `1` is greedy.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; `1` keeps all.
    pub top_p: f64,
}

impl Default for SamplingConfig {
    fn default() -> SamplingConfig {
        SamplingConfig::greedy()
    }
}

impl SamplingConfig {
    pub fn greedy() -> SamplingConfig {
        SamplingConfig { temperature: 0.0, top_k: 0, top_p: 1.0 }
    }

    /// Whether this always picks the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Checks `temperature >= 0` and `0 < top_p <= 1`, both finite.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(NnError::InvalidInput {
                reason: format!("temperature must be a finite number >= 0, got {}", self.temperature),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(NnError::InvalidInput {
                reason: format!("top_p must be in (0, 1], got {}", self.top_p),
            });
        }
        Ok(())
    }
}

/// Picks tokens per [`SamplingConfig`] with its own random stream.
#[derive(Clone, Debug)]
pub struct Sampler {
    config: SamplingConfig,
    rng: Rng,
}

impl Sampler {
    pub fn new(config: SamplingConfig, seed: u64) -> Result<Sampler> {
        config.validate()?;
        Ok(Sampler { config, rng: Rng::new(seed) })
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// The next token given one row's `logits` over the vocabulary (non-empty). NaN logits count as the
    /// least likely.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.config.is_greedy() || logits.len() < 2 {
            return argmax(logits);
        }
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit =
            |a: &u32, b: &u32| key(logits[*b as usize]).total_cmp(&key(logits[*a as usize])).then(a.cmp(b));
        let k = if self.config.top_k == 0 { logits.len() } else { self.config.top_k.min(logits.len()) };
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, by_logit);
            order.truncate(k);
        }
        order.sort_unstable_by(by_logit);
        let max = key(logits[order[0] as usize]) as f64;
        let mut weights: Vec<f64> = order
            .iter()
            .map(|&i| ((key(logits[i as usize]) as f64 - max) / self.config.temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut kept = 0.0;
        let mut cut = weights.len();
        for (i, w) in weights.iter_mut().enumerate() {
            *w /= total;
            kept += *w;
            if kept >= self.config.top_p {
                cut = i + 1;
                break;
            }
        }
        let weights = &weights[..cut];
        let target = self.rng.uniform() * weights.iter().sum::<f64>();
        let mut acc = 0.0;
        for (&id, &w) in order.iter().zip(weights) {
            acc += w;
            if target < acc {
                return id;
            }
        }
        order[cut - 1]
    }
}

/// NaN sorts below every number.
fn key(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// The index of the largest logit (the lowest such index on ties); 0 for an empty slice.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if key(x) > key(logits[best]) {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_k: usize, top_p: f64, seed: u64) -> Sampler {
        Sampler::new(SamplingConfig { temperature, top_k, top_p }, seed).unwrap()
    }

    #[test]
    fn greedy_is_the_first_argmax() {
        assert_eq!(argmax(&[0.5, 2.0, f32::NAN, 2.0]), 1);
        assert_eq!(sampler(0.0, 0, 1.0, 3).sample(&[0.1, -1.0, 0.3]), 2);
        assert_eq!(sampler(5.0, 1, 1.0, 3).sample(&[0.1, -1.0, 0.3]), 2);
    }

    #[test]
    fn top_k_and_top_p_limit_the_candidates() {
        let logits = [3.0, 2.9, 2.8, -10.0, 2.7];
        let mut top2 = sampler(1.0, 2, 1.0, 9);
        let mut nucleus = sampler(1.0, 0, 0.25, 9);
        for _ in 0..200 {
            assert!(top2.sample(&logits) <= 1);
            assert_eq!(nucleus.sample(&logits), 0); // the first token alone holds 0.29
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4 and 3/4
        let draws: Vec<u32> = {
            let mut s = sampler(1.0, 0, 1.0, 42);
            (0..4000).map(|_| s.sample(&logits)).collect()
        };
        let ones = draws.iter().filter(|&&t| t == 1).count() as f64 / draws.len() as f64;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
        let again: Vec<u32> = {
            let mut s = sampler(1.0, 0, 1.0, 42);
            (0..4000).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(draws, again);
    }

    #[test]
    fn bad_settings_are_errors() {
        let bad = |t: f64, p: f64| Sampler::new(SamplingConfig { temperature: t, top_k: 0, top_p: p }, 0);
        assert!(bad(-1.0, 1.0).is_err());
        assert!(bad(f64::NAN, 1.0).is_err());
        assert!(bad(1.0, 0.0).is_err());
        assert!(bad(1.0, 1.5).is_err());
    }
}

//! The project's counter-based random number generator.
//!
//! Value number `i` of a stream is a pure function of `(seed, i)`, so tensors can be filled in parallel and
//! the result never depends on thread timing, and a generator's whole state is two integers that a
//! checkpoint can store.

/// A seeded stream of random numbers; `counter` is how many values have been drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rng {
    pub seed: u64,
    pub counter: u64,
}

/// The splitmix64 finaliser: a bijective mix of 64 bits with good avalanche.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits for value `index` of the stream `seed`.
pub fn bits_at(seed: u64, index: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// Uniform in the open interval (0, 1), from the top 53 bits.
pub fn uniform_at(seed: u64, index: u64) -> f64 {
    ((bits_at(seed, index) >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// Standard normal by Box-Muller from the uniforms at `2 * index` and `2 * index + 1`.
pub fn normal_at(seed: u64, index: u64) -> f64 {
    let u1 = uniform_at(seed, 2 * index);
    let u2 = uniform_at(seed, 2 * index + 1);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { seed, counter: 0 }
    }

    /// Reserves `n` values of the stream and returns the index of the first.
    pub fn take(&mut self, n: usize) -> u64 {
        let start = self.counter;
        self.counter += n as u64;
        start
    }

    /// One uniform value in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        let i = self.take(1);
        uniform_at(self.seed, i)
    }

    /// A uniform integer in `0..n` (n > 0), by multiply-shift (bias below 2^-32 for n < 2^32).
    pub fn below(&mut self, n: u64) -> u64 {
        let i = self.take(1);
        ((bits_at(self.seed, i) as u128 * n as u128) >> 64) as u64
    }
}

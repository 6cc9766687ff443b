//! Seeded permutations of `0..n` that cost no memory: element `i` of the shuffled order, and the position
//! of any element, are computed on demand. The data order and the validation split use them, so a corpus
//! of billions of sequences is shuffled without a table of its indices.
//!
//! Construction: a balanced Feistel network on `2h`-bit words (`2^(2h)` is the smallest even power of two
//! `>= n`) is a bijection of `0..2^(2h)` for any round function; "cycle walking" (apply it again while the
//! result is `>= n`) restricts it to a bijection of `0..n`. Since `2^(2h) < 4n`, a walk takes fewer than
//! four rounds of the network on average. The round function is the counter-based hash the engine's random
//! streams use ([`bits_at`]), keyed per round from the seed.
use cola_tensor::rng::bits_at;

/// Rounds of the Feistel network: three make a pseudorandom permutation in theory, six leave no visible
/// structure between neighbouring indices in practice, and a round costs a few nanoseconds.
const ROUNDS: usize = 6;

/// A bijection of `0..len`, fixed by its seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permutation {
    len: u64,
    half_bits: u32,
    keys: [u64; ROUNDS],
}

impl Permutation {
    /// The permutation of `0..len` drawn by `seed`.
    pub fn new(len: u64, seed: u64) -> Permutation {
        let bits = (u64::BITS - len.saturating_sub(1).leading_zeros()).max(2);
        let half_bits = bits.div_ceil(2);
        let keys = std::array::from_fn(|round| bits_at(seed, round as u64));
        Permutation { len, half_bits, keys }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element at position `index` (`index < len`).
    pub fn apply(&self, index: u64) -> u64 {
        debug_assert!(index < self.len, "index {index} outside 0..{}", self.len);
        let mut x = self.encrypt(index);
        while x >= self.len {
            x = self.encrypt(x);
        }
        x
    }

    /// The position of `element` (`element < len`): `apply(invert(e)) == e`.
    pub fn invert(&self, element: u64) -> u64 {
        debug_assert!(element < self.len, "element {element} outside 0..{}", self.len);
        let mut x = self.decrypt(element);
        while x >= self.len {
            x = self.decrypt(x);
        }
        x
    }

    fn mask(&self) -> u64 {
        (1u64 << self.half_bits) - 1
    }

    fn round(&self, round: usize, half: u64) -> u64 {
        bits_at(self.keys[round], half) & self.mask()
    }

    fn encrypt(&self, x: u64) -> u64 {
        let (mut left, mut right) = (x >> self.half_bits, x & self.mask());
        for round in 0..ROUNDS {
            (left, right) = (right, left ^ self.round(round, right));
        }
        (left << self.half_bits) | right
    }

    fn decrypt(&self, x: u64) -> u64 {
        let (mut left, mut right) = (x >> self.half_bits, x & self.mask());
        for round in (0..ROUNDS).rev() {
            (left, right) = (right ^ self.round(round, left), left);
        }
        (left << self.half_bits) | right
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size from 0 to 300 (odd and even bit counts, powers of two and their neighbours) is a bijection
    /// whose inverse undoes it, and different seeds give different orders.
    #[test]
    fn is_a_bijection_with_its_inverse() {
        for len in 0..300u64 {
            let p = Permutation::new(len, 7);
            let mut seen = vec![false; len as usize];
            for i in 0..len {
                let e = p.apply(i);
                assert!(e < len && !seen[e as usize], "len {len}: {i} -> {e} repeats or escapes");
                seen[e as usize] = true;
                assert_eq!(p.invert(e), i, "len {len}: inverse of {e}");
            }
        }
        let order = |seed| (0..100).map(|i| Permutation::new(100, seed).apply(i)).collect::<Vec<_>>();
        assert_ne!(order(1), order(2));
        assert_ne!(order(1), (0..100).collect::<Vec<_>>());
    }

    /// Large lengths (no table could hold them) still invert exactly.
    #[test]
    fn large_lengths_invert() {
        for len in [1u64 << 40, (1 << 40) + 3, u64::MAX / 3] {
            let p = Permutation::new(len, 11);
            for i in [0, 1, len / 2, len - 1] {
                let e = p.apply(i);
                assert!(e < len);
                assert_eq!(p.invert(e), i);
            }
        }
    }
}

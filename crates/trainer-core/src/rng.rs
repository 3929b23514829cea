//! A small seeded RNG (xoshiro256**) with cloneable state: candle's CPU RNG cannot be seeded.

/// xoshiro256** seeded through SplitMix64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    /// The noise stream of micro-batch `k` of optimizer step `step` (0-based, the steps done before it) of a run
    /// seeded with `seed`: a function of those three numbers alone, so the same micro-batch draws the same dropout
    /// masks and NEFTune noise whichever process runs it and whatever ran before it.
    pub(crate) fn for_micro_batch(seed: u64, step: u64, k: u64) -> Self {
        let key = splitmix(
            splitmix(splitmix(seed ^ 0x7261_696E_696E_6721).wrapping_add(step)).wrapping_add(k),
        );
        Self::new(key)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 24 random bits.
    pub(crate) fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// `n` values uniform in `[lo, hi)`.
    pub(crate) fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        let mut v = vec![0f32; n];
        self.fill_uniform(&mut v, lo, hi);
        v
    }

    /// Fills `out` with values uniform in `[lo, hi)` (the same draws as [`Rng::uniform`]).
    pub(crate) fn fill_uniform(&mut self, out: &mut [f32], lo: f32, hi: f32) {
        for v in out {
            *v = lo + (hi - lo) * self.next_f32();
        }
    }
}

/// One SplitMix64 output for input `x` (a bijective mixer of 64 bits).
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::Rng;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn uniform_stays_in_range_and_a_clone_resumes(seed in any::<u64>(), skip in 0usize..50) {
            let mut a = Rng::new(seed);
            for v in a.uniform(64, -0.5, 0.5) {
                prop_assert!((-0.5..0.5).contains(&v));
            }
            for _ in 0..skip { a.next_u64(); }
            let mut b = a.clone();
            prop_assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    proptest! {
        #[test]
        fn micro_batch_streams_depend_on_seed_step_and_k_alone(
            seed in any::<u64>(), step in 0u64..1 << 40, k in 0u64..1024, other in any::<(u64, u64, u64)>()
        ) {
            let first = Rng::for_micro_batch(seed, step, k).uniform(8, 0.0, 1.0);
            prop_assert_eq!(&first, &Rng::for_micro_batch(seed, step, k).uniform(8, 0.0, 1.0));
            prop_assume!(other != (seed, step, k));
            let (s2, t2, k2) = other;
            prop_assert_ne!(first, Rng::for_micro_batch(s2, t2, k2).uniform(8, 0.0, 1.0));
        }
    }

    #[test]
    fn neighbouring_micro_batches_and_steps_differ() {
        let a = Rng::for_micro_batch(7, 3, 1).next_u64();
        assert_ne!(a, Rng::for_micro_batch(7, 3, 0).next_u64());
        assert_ne!(a, Rng::for_micro_batch(7, 2, 1).next_u64());
        assert_ne!(a, Rng::for_micro_batch(7, 4, 0).next_u64());
    }

    #[test]
    fn different_seeds_differ() {
        assert_ne!(Rng::new(0).next_u64(), Rng::new(1).next_u64());
    }
}

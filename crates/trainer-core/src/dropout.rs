//! LoRA dropout masks that are a pure function of a key and the element index.
//!
//! Each mask takes one `u64` from the trainer's RNG as its key; element `i` is dropped when a SplitMix64 hash of
//! `(key, i)` falls below `p`. Masks are therefore the same whatever the thread count, can be built in parallel
//! and never need storing: backward (and gradient checkpointing's recomputation) regenerates them from the key.

use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

/// One dropout mask: keep probability `1 - p`, kept elements scaled by `1 / (1 - p)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dropout {
    key: u64,
    /// Element `i` is dropped when the top 24 bits of its hash are below this (`ceil(p · 2²⁴)`: the same as
    /// comparing the hash as a uniform in `[0, 1)` with `p`).
    threshold: u64,
    keep: f32,
}

impl Dropout {
    /// A mask with drop probability `p` (`0 < p < 1`) and the given key.
    pub(crate) fn new(key: u64, p: f64) -> Self {
        Self {
            key,
            threshold: (p * (1u64 << 24) as f64).ceil() as u64,
            keep: (1.0 / (1.0 - p)) as f32,
        }
    }

    /// The factor of element `i`: 0 (dropped) or `1 / (1 - p)`.
    #[inline(always)]
    fn factor(&self, i: usize) -> f32 {
        let mut z = self.key.wrapping_add(
            (i as u64)
                .wrapping_add(1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if (z >> 40) < self.threshold {
            0.0
        } else {
            self.keep
        }
    }

    /// The mask's factors for `n` elements.
    pub(crate) fn values(&self, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
            for (j, v) in o.iter_mut().enumerate() {
                *v = self.factor(c * CHUNK + j);
            }
        });
        out
    }

    /// `out = x ⊙ mask`.
    pub(crate) fn apply_into(&self, x: &[f32], out: &mut [f32]) {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (o, x))| {
                for (j, (o, x)) in o.iter_mut().zip(x).enumerate() {
                    *o = x * self.factor(c * CHUNK + j);
                }
            });
    }

    /// `y += x ⊙ mask` in one pass.
    pub(crate) fn add_masked(&self, y: &mut [f32], x: &[f32]) {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (y, x))| {
                for (j, (y, x)) in y.iter_mut().zip(x).enumerate() {
                    *y += x * self.factor(c * CHUNK + j);
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn drops_about_p_and_scales_the_rest(key in any::<u64>(), p in 0.02f64..0.9) {
            let n = 40_000;
            let m = Dropout::new(key, p);
            let v = m.values(n);
            let dropped = v.iter().filter(|&&x| x == 0.0).count() as f64 / n as f64;
            // 6 standard deviations of a binomial proportion.
            prop_assert!((dropped - p).abs() < 6.0 * (p * (1.0 - p) / n as f64).sqrt(), "{dropped} vs {p}");
            let keep = (1.0 / (1.0 - p)) as f32;
            prop_assert!(v.iter().all(|&x| x == 0.0 || x == keep));
            let x: Vec<f32> = (0..n).map(|i| i as f32 - 7.0).collect();
            let mut applied = vec![0f32; n];
            m.apply_into(&x, &mut applied);
            prop_assert!(applied.iter().zip(&x).zip(&v).all(|((a, x), m)| *a == x * m));
            let mut y = vec![1f32; n];
            m.add_masked(&mut y, &x);
            prop_assert!(y.iter().zip(&applied).all(|(y, a)| *y == 1.0 + a));
        }

        #[test]
        fn different_keys_give_different_masks(key in any::<u64>()) {
            let a = Dropout::new(key, 0.5).values(256);
            let b = Dropout::new(key.wrapping_add(1), 0.5).values(256);
            prop_assert_ne!(a, b);
        }
    }
}

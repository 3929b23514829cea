//! The order of training: a seeded shuffle per epoch, the micro-batches of each optimizer step, and the
//! fingerprint of the data that a resume checks.

use schedulers::StepPlan;

use crate::train::Sample;

/// SplitMix64: a tiny, fully specified generator, so the data order of a
/// run depends only on (seed, epoch) and survives any resume.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection so there is no modulo bias.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next();
            if v < zone {
                return v % n;
            }
        }
    }
}

/// The block order of `epoch`: a Fisher-Yates shuffle seeded by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = SplitMix64(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// The micro-batches (each a list of block indices) of optimizer step
/// `step` (0-based). Step `j` of an epoch takes micro-batches
/// `j*GA .. (j+1)*GA` of that epoch's order; the last step of an epoch also
/// takes the micro-batches left over when they do not divide evenly, so
/// every block is trained once per epoch.
pub fn step_batches(plan: &StepPlan, order: &[usize], step: u64) -> Vec<Vec<usize>> {
    let spe = plan.steps_per_epoch;
    let ga = plan.grad_accum;
    let bs = plan.input.batch_size as usize;
    let j = step % spe;
    let first = j * ga;
    let last = if j + 1 == spe {
        plan.micro_batches_per_epoch
    } else {
        (first + ga).min(plan.micro_batches_per_epoch)
    };
    (first..last)
        .map(|mb| {
            let start = mb as usize * bs;
            let end = (start + bs).min(order.len());
            order[start..end].to_vec()
        })
        .filter(|b| !b.is_empty())
        .collect()
}

/// FNV-1a over the encoded blocks: cheap, stable across platforms.
pub(crate) fn fingerprint(blocks: &[Vec<u32>]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u32| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for block in blocks {
        eat(u32::MAX);
        for &id in block {
            eat(id);
        }
    }
    h
}

/// The fingerprint of a run's data: an FNV-1a hash of the training token ids (so a raw-text run keeps the value
/// it always had), extended with the labels and the eval set when any label is masked or an eval set exists.
pub fn data_fingerprint(train: &[Sample], eval: &[Sample]) -> u64 {
    let ids: Vec<Vec<u32>> = train.iter().map(|s| s.input_ids.clone()).collect();
    let base = fingerprint(&ids);
    let causal = |s: &Sample| {
        s.labels
            .iter()
            .zip(&s.input_ids)
            .all(|(&l, &i)| l == i64::from(i))
    };
    if eval.is_empty() && train.iter().all(causal) {
        return base;
    }
    // Labels as u32 (-100 -> u32::MAX - 1, which no vocabulary reaches), then the eval set.
    let label = |l: i64| u32::try_from(l).unwrap_or(u32::MAX - 1);
    let mut more: Vec<Vec<u32>> = vec![vec![(base >> 32) as u32, base as u32]];
    more.extend(
        train
            .iter()
            .map(|s| s.labels.iter().map(|&l| label(l)).collect()),
    );
    more.push(Vec::new());
    for s in eval {
        more.push(s.input_ids.clone());
        more.push(s.labels.iter().map(|&l| label(l)).collect());
    }
    fingerprint(&more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use schedulers::{PlanInput, Warmup};

    proptest! {
        #[test]
        fn every_block_once_per_epoch(blocks in 1u64..200, bs in 1u64..9, ga in 1u64..9, seed: u64) {
            let plan = StepPlan::new(PlanInput { blocks, batch_size: bs, grad_accum: ga, epochs: 2.0, warmup: Warmup::Steps(0), max_steps: None }).unwrap();
            for epoch in 0..2u64 {
                let order = epoch_order(blocks as usize, seed, epoch);
                let mut seen = Vec::new();
                for j in 0..plan.steps_per_epoch {
                    for b in step_batches(&plan, &order, epoch * plan.steps_per_epoch + j) {
                        prop_assert!(b.len() as u64 <= bs);
                        seen.extend(b);
                    }
                }
                seen.sort_unstable();
                prop_assert_eq!(seen, (0..blocks as usize).collect::<Vec<_>>());
            }
        }

        #[test]
        fn order_is_a_permutation_and_deterministic(n in 0usize..500, seed: u64, epoch in 0u64..10) {
            let a = epoch_order(n, seed, epoch);
            prop_assert_eq!(&a, &epoch_order(n, seed, epoch));
            let mut s = a.clone();
            s.sort_unstable();
            prop_assert_eq!(s, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn data_fingerprint_sees_masks_and_eval_sets() {
        use crate::IGNORE_INDEX;
        let train = vec![Sample::causal(vec![1, 2, 3]), Sample::causal(vec![4, 5])];
        assert_eq!(
            data_fingerprint(&train, &[]),
            fingerprint(&[vec![1, 2, 3], vec![4, 5]])
        );
        let mut masked = train.clone();
        masked[0].labels[1] = IGNORE_INDEX;
        let eval = vec![Sample::causal(vec![7, 8])];
        let all = [
            data_fingerprint(&train, &[]),
            data_fingerprint(&masked, &[]),
            data_fingerprint(&train, &eval),
            data_fingerprint(&masked, &eval),
        ];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j], "{i} vs {j}");
            }
        }
    }

    #[test]
    fn epochs_get_different_orders() {
        assert_ne!(epoch_order(50, 1, 0), epoch_order(50, 1, 1));
    }
}

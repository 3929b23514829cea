//! Training data for the run loop: blocks encoded exactly as trained, a
//! seeded per-epoch order, and the micro-batches of each optimizer step.

use anyhow::{anyhow, bail, Result};
use prts_chunker::Block;
use schedulers::StepPlan;
use tokenizers::Tokenizer;
use trainer_core::{Sample, SpecialTokens};

/// Encodes each block as `[BOS] + text + [EOS]` (as the block's flags say),
/// and checks that the length equals what the chunker measured.
pub fn encode_blocks(
    blocks: &[Block],
    tokenizer: &Tokenizer,
    special: SpecialTokens,
) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::with_capacity(blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        let enc = tokenizer
            .encode(b.text.as_str(), false)
            .map_err(|e| anyhow!("cannot tokenize block {i}: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if b.bos {
            ids.push(
                special
                    .bos
                    .ok_or_else(|| anyhow!("the model has no BOS token: set bos = false"))?,
            );
        }
        ids.extend_from_slice(enc.get_ids());
        if b.eos {
            ids.push(
                special
                    .eos
                    .ok_or_else(|| anyhow!("the model has no EOS token: set eos = \"none\""))?,
            );
        }
        if ids.len() != b.tokens {
            bail!(
                "block {i} encodes to {} tokens but the chunker counted {}; this is a bug, please report it",
                ids.len(),
                b.tokens
            );
        }
        out.push(ids);
    }
    Ok(out)
}

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

/// Turns sample indices into the micro-batches of a step.
pub fn samples(all: &[Sample], batches: &[Vec<usize>]) -> Vec<Vec<Sample>> {
    batches
        .iter()
        .map(|b| b.iter().map(|&i| all[i].clone()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use schedulers::{PlanInput, Warmup};

    proptest! {
        #[test]
        fn every_block_once_per_epoch(blocks in 1u64..200, bs in 1u64..9, ga in 1u64..9, seed: u64) {
            let plan = StepPlan::new(PlanInput { blocks, batch_size: bs, grad_accum: ga, epochs: 2.0, warmup: Warmup::Steps(0) }).unwrap();
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
    fn epochs_get_different_orders() {
        assert_ne!(epoch_order(50, 1, 0), epoch_order(50, 1, 1));
    }
}

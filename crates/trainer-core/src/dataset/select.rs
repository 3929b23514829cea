//! Seeded choices over a dataset: the eval split, the hybrid sample, and the length-grouped batch order.

use crate::rng::Rng;

/// How many of `n` items a percentage keeps: all at 100 (or more), otherwise `floor(n * percent / 100)`; 0 keeps
/// none (spec T5, without the original's "at least one").
pub fn keep_count(n: usize, percent: f64) -> usize {
    if percent >= 100.0 {
        n
    } else if percent <= 0.0 || !percent.is_finite() {
        0
    } else {
        ((n as f64) * percent / 100.0).floor() as usize
    }
}

/// `k` distinct indices of `0..n` drawn uniformly with `seed`, in increasing order (file order is kept).
pub fn sample_indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let k = k.min(n);
    let mut rng = Rng::new(seed);
    let mut all: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + below(&mut rng, (n - i) as u64) as usize;
        all.swap(i, j);
    }
    let mut out = all[..k].to_vec();
    out.sort_unstable();
    out
}

/// Splits `0..n` into (train, eval) with `ceil(n * fraction)` seeded eval items (as `datasets`' `train_test_split`
/// rounds), both in increasing order. `None` when either side would be empty.
pub fn split_indices(n: usize, fraction: f64, seed: u64) -> Option<(Vec<usize>, Vec<usize>)> {
    let k = ((n as f64) * fraction).ceil() as usize;
    if k == 0 || k >= n {
        return None;
    }
    let eval = sample_indices(n, k, seed ^ 0x6576_616C);
    let mut is_eval = vec![false; n];
    for &i in &eval {
        is_eval[i] = true;
    }
    let train = (0..n).filter(|&i| !is_eval[i]).collect();
    Some((train, eval))
}

/// Reorders an epoch's sample order so that neighbouring samples have similar lengths (as transformers'
/// `LengthGroupedSampler` does): the shuffled order is cut into mega-batches of `50 * batch_size` samples, each
/// sorted by length and cut into micro-batches of consecutive lengths. The order of the samples within the
/// mega-batches stays seeded (it comes from `order`). When the last micro-batch of the epoch is short, the
/// samples it takes are the run of sorted lengths that pads least.
pub fn group_by_length(order: &[usize], lengths: &[usize], batch_size: usize) -> Vec<usize> {
    let bs = batch_size.max(1);
    let mut out = Vec::with_capacity(order.len());
    for chunk in order.chunks(bs.saturating_mul(50)) {
        let mut c = chunk.to_vec();
        c.sort_by_key(|&i| lengths[i]);
        let r = c.len() % bs;
        if r == 0 {
            out.extend(c);
            continue;
        }
        // The short micro-batch takes sorted positions g*bs .. g*bs+r; the full ones the runs around it.
        let full = c.len() / bs;
        let cost = |g: usize| {
            let max_at = |end: usize| lengths[c[end - 1]];
            let before: usize = (1..=g).map(|j| bs * max_at(j * bs)).sum();
            let after: usize = (1..=full - g)
                .map(|j| bs * max_at(g * bs + r + j * bs))
                .sum();
            before + r * max_at(g * bs + r) + after
        };
        let g = (0..=full).min_by_key(|&g| cost(g)).unwrap_or(0);
        let (start, end) = (g * bs, g * bs + r);
        out.extend(&c[..start]);
        out.extend(&c[end..]);
        out.extend(&c[start..end]);
    }
    out
}

/// Token positions a pass over `order` in micro-batches of `batch_size` computes, each padded to its longest.
pub fn padded_tokens(order: &[usize], lengths: &[usize], batch_size: usize) -> usize {
    order
        .chunks(batch_size.max(1))
        .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap_or(0))
        .sum()
}

/// Uniform in `0..n` (n > 0) without modulo bias.
fn below(rng: &mut Rng, n: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let v = rng.next_u64();
        if v < zone {
            return v % n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Spec T5 (with the sampling fix): the hybrid count is exact, the sample distinct and seeded.
        #[test]
        fn hybrid_counts(n in 0usize..500, pct in 0.0f64..=100.0, seed: u64) {
            let k = keep_count(n, pct);
            let want = if pct >= 100.0 { n } else { (n as f64 * pct / 100.0).floor() as usize };
            prop_assert_eq!(k, want);
            let s = sample_indices(n, k, seed);
            prop_assert_eq!(s.len(), k);
            prop_assert!(s.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(s.iter().all(|&i| i < n));
            prop_assert_eq!(&s, &sample_indices(n, k, seed));
        }

        #[test]
        fn split_partitions(n in 2usize..300, frac in 0.01f64..0.9, seed: u64) {
            if let Some((train, eval)) = split_indices(n, frac, seed) {
                prop_assert_eq!(eval.len(), (n as f64 * frac).ceil() as usize);
                let mut all: Vec<usize> = train.iter().chain(&eval).copied().collect();
                all.sort_unstable();
                prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
            }
        }

        #[test]
        fn grouping_is_a_permutation_that_never_pads_more(lengths in proptest::collection::vec(1usize..300, 0..400), bs in 1usize..9) {
            let order: Vec<usize> = (0..lengths.len()).collect();
            let g = group_by_length(&order, &lengths, bs);
            let mut s = g.clone();
            s.sort_unstable();
            prop_assert_eq!(s, order.clone());
            if lengths.len() <= 50 * bs {
                let reversed: Vec<usize> = order.iter().rev().copied().collect();
                let best = padded_tokens(&g, &lengths, bs);
                prop_assert!(best <= padded_tokens(&order, &lengths, bs));
                prop_assert!(best <= padded_tokens(&reversed, &lengths, bs));
                prop_assert_eq!(best, padded_tokens(&group_by_length(&reversed, &lengths, bs), &lengths, bs));
            }
        }
    }

    #[test]
    fn sample_is_not_a_prefix() {
        let s = sample_indices(1000, 100, 7);
        assert_ne!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(s, sample_indices(1000, 100, 8));
        assert_eq!(keep_count(10, 5.0), 0);
        assert!(split_indices(1, 0.5, 0).is_none());
    }
}

//! Pure numeric helpers: loss smoothing and axis ranges.

/// Debiased exponential moving average (TensorBoard's smoothing).
///
/// `weight` in `[0, 1)`: 0 returns the input; 0.9 averages over roughly the
/// last ten values. The bias correction keeps the first values from being
/// pulled towards zero.
pub(crate) fn ema(values: &[f64], weight: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut debias = 1.0;
    values
        .iter()
        .map(|&v| {
            acc = weight * acc + (1.0 - weight) * v;
            debias *= weight;
            acc / (1.0 - debias)
        })
        .collect()
}

/// A range that holds every value with a margin of `pad` (a fraction of the
/// span) on each side and never has zero width. `None` when there are no values.
pub(crate) fn padded_range(values: impl IntoIterator<Item = f64>, pad: f64) -> Option<(f64, f64)> {
    let (lo, hi) =
        values
            .into_iter()
            .filter(|v| v.is_finite())
            .fold(None, |acc: Option<(f64, f64)>, v| match acc {
                None => Some((v, v)),
                Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
            })?;
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        let half = (hi.abs() * 0.1).max(0.5);
        return Some((lo - half, hi + half));
    }
    Some((lo - span * pad, hi + span * pad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_weight_is_identity_and_constant_input_stays_constant() {
        let v = [3.0, 1.0, 2.0];
        assert_eq!(ema(&v, 0.0), v);
        for s in ema(&[2.5; 50], 0.95) {
            assert!((s - 2.5).abs() < 1e-12);
        }
    }

    proptest! {
        #[test]
        fn ema_stays_within_the_range_seen_so_far(
            values in proptest::collection::vec(0.0f64..20.0, 1..200),
            weight in 0.0f64..0.999,
        ) {
            let s = ema(&values, weight);
            prop_assert_eq!(s.len(), values.len());
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for (v, s) in values.iter().zip(&s) {
                lo = lo.min(*v);
                hi = hi.max(*v);
                prop_assert!(*s >= lo - 1e-9 && *s <= hi + 1e-9, "{} not in [{}, {}]", s, lo, hi);
            }
        }

        #[test]
        fn padded_range_holds_every_value_and_has_width(
            values in proptest::collection::vec(-1e6f64..1e6, 1..50),
            pad in 0.0f64..0.5,
        ) {
            let (lo, hi) = padded_range(values.iter().copied(), pad).unwrap();
            prop_assert!(lo < hi);
            for v in values {
                prop_assert!(lo <= v && v <= hi);
            }
        }
    }

    #[test]
    fn empty_input_has_no_range() {
        assert_eq!(padded_range([], 0.1), None);
        assert_eq!(padded_range([f64::NAN], 0.1), None);
    }
}

//! The multiplier formulas. Hugging Face kinds follow `transformers.optimization` exactly; the FP
//! kinds follow Training PRO's `custom_scheduler.py` with the fixes described in `docs/schedules.md`.
//! Every function takes `s <= t`, `t >= 1`, `e >= 1` and returns a finite value in `[0, 1]`.

use std::f64::consts::PI;

/// Linear warmup `s / w` (`s < w`).
fn warm(s: u64, w: u64) -> f64 {
    s as f64 / w.max(1) as f64
}

pub(crate) fn linear(s: u64, w: u64, t: u64) -> f64 {
    if s < w {
        return warm(s, w);
    }
    let left = t.saturating_sub(s) as f64;
    (left / t.saturating_sub(w).max(1) as f64).max(0.0)
}

pub(crate) fn constant_with_warmup(s: u64, w: u64) -> f64 {
    if s < w {
        warm(s, w)
    } else {
        1.0
    }
}

fn progress(s: u64, w: u64, t: u64) -> f64 {
    (s - w) as f64 / t.saturating_sub(w).max(1) as f64
}

pub(crate) fn cosine(s: u64, w: u64, t: u64, num_cycles: f64) -> f64 {
    if s < w {
        return warm(s, w);
    }
    let p = progress(s, w, t);
    (0.5 * (1.0 + (PI * num_cycles * 2.0 * p).cos())).max(0.0)
}

pub(crate) fn cosine_with_restarts(s: u64, w: u64, t: u64, num_cycles: u32) -> f64 {
    if s < w {
        return warm(s, w);
    }
    let p = progress(s, w, t);
    if p >= 1.0 {
        return 0.0;
    }
    (0.5 * (1.0 + (PI * ((f64::from(num_cycles) * p) % 1.0)).cos())).max(0.0)
}

/// `end_ratio = lr_end / base_lr`, in `[0, 1)`.
pub(crate) fn polynomial(s: u64, w: u64, t: u64, power: f64, end_ratio: f64) -> f64 {
    if s < w {
        return warm(s, w);
    }
    // Hugging Face returns the end value only for s > t and divides by t - w otherwise, which is
    // 0/0 when w == t; at s == t both give the end value, so `>=` fixes the crash and nothing else.
    if s >= t {
        return end_ratio;
    }
    let pct_remaining = 1.0 - (s - w) as f64 / (t - w) as f64;
    (1.0 - end_ratio) * pct_remaining.powf(power) + end_ratio
}

pub(crate) fn inverse_sqrt(s: u64, w: u64, timescale: Option<u64>) -> f64 {
    if s < w {
        return warm(s, w);
    }
    let timescale = match timescale {
        Some(ts) => ts,
        None if w > 0 => w,
        None => 10_000,
    } as f64;
    let shifted = s as f64 + timescale - w as f64;
    (1.0 / (shifted / timescale).sqrt()).min(1.0)
}

/// Warmup to `min(w, a)`, hold 1 until `a`, cosine anneal to 0 at `t` (`a < t`).
fn warm_hold_anneal(s: u64, w: u64, a: u64, t: u64) -> f64 {
    let w = w.min(a);
    if s < w {
        warm(s, w)
    } else if s < a {
        1.0
    } else {
        0.5 * (1.0 + (PI * (s - a) as f64 / (t - a) as f64).cos())
    }
}

/// The hold end of `FP_low_epoch_annealing`: the first epoch, or half the run when the run is not
/// longer than one epoch.
pub(crate) fn low_epoch_hold_end(t: u64, e: u64) -> u64 {
    if t > e {
        e
    } else {
        t / 2
    }
}

pub(crate) fn low_epoch(s: u64, w: u64, t: u64, e: u64) -> f64 {
    warm_hold_anneal(s, w, low_epoch_hold_end(t, e), t)
}

pub(crate) fn half_time(s: u64, w: u64, t: u64) -> f64 {
    warm_hold_anneal(s, w, t / 2, t)
}

pub(crate) fn raise_fall(s: u64, t: u64) -> f64 {
    let h = t / 2;
    if s <= h {
        if h == 0 {
            1.0
        } else {
            0.5 * (1.0 - (PI * s as f64 / h as f64).cos())
        }
    } else {
        0.5 * (1.0 + (PI * (s - h) as f64 / (t - h) as f64).cos())
    }
}

/// Rise and hold lengths of `FP_3epoch_raise_hold_fall`: one epoch each, or a third of the run each
/// when the run is not longer than two epochs (the fall would be empty).
pub(crate) fn raise_hold_fall_phases(t: u64, e: u64) -> (u64, u64) {
    if t > e.saturating_mul(2) {
        (e, e)
    } else {
        (t / 3, t / 3)
    }
}

pub(crate) fn raise_hold_fall(s: u64, t: u64, e: u64) -> f64 {
    let (r, hd) = raise_hold_fall_phases(t, e);
    if s < r {
        (PI / 2.0 * s as f64 / r as f64).sin()
    } else if s < r + hd {
        1.0
    } else if s >= t {
        0.0
    } else {
        let fall = (t - r - hd) as f64;
        (PI / 2.0 * (s - r - hd) as f64 / fall).cos().max(0.0)
    }
}

pub(crate) fn step_decay(s: u64, w: u64, e: u64) -> f64 {
    let w = w.min(e);
    if s < w {
        warm(s, w)
    } else if s < e {
        1.0
    } else {
        // 2^-k underflows to 0 long before i32::MAX.
        let k = (s / e).min(2000) as i32;
        0.5f64.powi(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Horizon, Schedule, Scheduler};
    use proptest::prelude::*;

    fn schedules() -> Vec<Schedule> {
        let mut all = Schedule::all();
        all.extend([
            Schedule::Cosine { num_cycles: 2.3 },
            Schedule::CosineWithRestarts { num_cycles: 4 },
            Schedule::Polynomial {
                power: 0.5,
                lr_end: 0.0,
            },
            Schedule::Polynomial {
                power: 3.0,
                lr_end: 2.9e-4,
            },
            Schedule::InverseSqrt { timescale: Some(3) },
        ]);
        all
    }

    /// Steps to probe: all of them for short runs, the phase edges and a spread otherwise.
    fn probe(t: u64, w: u64, e: u64) -> Vec<u64> {
        if t <= 400 {
            return (0..=t).collect();
        }
        let mut v: Vec<u64> = (0..=t).step_by((t / 200) as usize).collect();
        for x in [w, e, 2 * e, t / 2, t / 3, 2 * (t / 3), t] {
            for d in [0, 1] {
                v.push(x.saturating_sub(d).min(t));
                v.push((x + d).min(t));
            }
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        // L1: every schedule is finite and in [0, 1] for every plan and step, including 2 epochs.
        #[test]
        fn l1_finite_and_in_unit_range(t in 1u64..3000, w in 0u64..4000, e in 1u64..4000, past in 0u64..10) {
            let h = Horizon::new(t, w, e).unwrap();
            for schedule in schedules() {
                let sched = Scheduler::new(schedule, h, 3e-4).unwrap();
                for s in probe(t, w, e).into_iter().chain([t + past]) {
                    let m = sched.multiplier(s);
                    prop_assert!(m.is_finite() && (0.0..=1.0).contains(&m), "{} T={} W={} E={} s={} -> {}", schedule, t, w, e, s, m);
                }
            }
        }

        // L1 with whole epochs, the original's E1 = ceil(T / epochs), 1 and 2 epochs included.
        #[test]
        fn l1_whole_epochs(per_epoch in 1u64..300, epochs in 1u64..6, w in 0u64..400) {
            let t = per_epoch * epochs;
            let h = Horizon::from_epochs(t, w, epochs as f64).unwrap();
            for schedule in schedules() {
                let sched = Scheduler::new(schedule, h, 3e-4).unwrap();
                for m in sched.multipliers() {
                    prop_assert!(m.is_finite() && (0.0..=1.0).contains(&m), "{} {:?}", schedule, h);
                }
            }
        }

        // L2: warmup-hold-anneal shape of low_epoch (T > E1) and half_time.
        #[test]
        fn l2_hold_then_non_increasing(t in 2u64..2000, w in 0u64..2000, e in 1u64..2000) {
            let half: fn(u64, u64, u64, u64) -> f64 = |s, w, t, _| half_time(s, w, t);
            let mut cases = vec![(half, t / 2)];
            if t > e {
                cases.push((low_epoch, e));
            }
            for (f, hold_end) in cases {
                let w2 = w.min(hold_end);
                for s in w2..hold_end {
                    prop_assert_eq!(f(s, w, t, e), 1.0);
                }
                for s in hold_end..t {
                    prop_assert!(f(s + 1, w, t, e) <= f(s, w, t, e));
                }
                prop_assert!(f(t, w, t, e).abs() < 1e-12);
            }
        }

        // L3: raise_fall hump; raise_hold_fall continuity; step_decay halving per epoch.
        #[test]
        fn l3_shapes(t in 1u64..2000, e in 1u64..700, w in 0u64..50) {
            let h = t / 2;
            prop_assert_eq!(raise_fall(h, t), 1.0);
            prop_assert!(raise_fall(t, t).abs() < 1e-12);
            for s in 0..h {
                prop_assert!(raise_fall(s + 1, t) >= raise_fall(s, t));
            }
            for s in h..t {
                prop_assert!(raise_fall(s + 1, t) <= raise_fall(s, t));
            }
            if h > 0 {
                prop_assert_eq!(raise_fall(0, t), 0.0);
            }

            let (r, hd) = raise_hold_fall_phases(t, e);
            let step = |a: u64, b: u64| (raise_hold_fall(a, t, e) - raise_hold_fall(b, t, e)).abs();
            // Continuity at R and R + Hd: one step moves the curve by at most one phase's slope.
            if r > 0 {
                prop_assert!(step(r - 1, r) <= PI / 2.0 / r as f64 + 1e-12);
            }
            let fall = t - r - hd;
            prop_assert!(fall >= 1);
            prop_assert!(step(r + hd, r + hd + 1) <= PI / 2.0 / fall as f64 + 1e-12);
            prop_assert_eq!(raise_hold_fall(r + hd, t, e), 1.0);
            prop_assert!(raise_hold_fall(t, t, e).abs() < 1e-12);

            for s in (e..t.max(e + 1) + 3 * e).step_by(((e / 3).max(1)) as usize) {
                prop_assert_eq!(step_decay(s, w, e), 0.5f64.powi((s / e) as i32));
            }
        }

        // L4: warmup is linear s / W' with W' = min(W, E1 or H).
        #[test]
        fn l4_linear_warmup(t in 2u64..2000, w in 1u64..500, e in 1u64..2000) {
            let low_end = low_epoch_hold_end(t, e);
            for (f, cap) in [
                (Box::new(|s| low_epoch(s, w, t, e)) as Box<dyn Fn(u64) -> f64>, low_end),
                (Box::new(|s| half_time(s, w, t)), t / 2),
                (Box::new(|s| step_decay(s, w, e)), e),
                (Box::new(|s| linear(s, w, t)), w),
                (Box::new(|s| cosine(s, w, t, 0.5)), w),
            ] {
                let w2 = w.min(cap);
                for s in 0..w2 {
                    prop_assert!((f(s) - s as f64 / w2 as f64).abs() < 1e-15);
                }
            }
        }
    }
}

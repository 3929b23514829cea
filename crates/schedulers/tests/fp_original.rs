//! The original `custom_scheduler.py` formulas (spec §3.7), transcribed, with
//! `E1 = ceil(T / epochs)` and `H = T // 2`.

use std::f64::consts::PI;

use schedulers::{Horizon, Schedule, Scheduler, Warning};

fn original(name: &str, s: u64, w: u64, t: u64, epochs: f64) -> f64 {
    let (s, w, t) = (s as f64, w as f64, t as f64);
    let e1 = (t / epochs).ceil();
    let h = (t / 2.0).floor();
    match name {
        "FP_low_epoch_annealing" => {
            let w2 = w.min(e1);
            if s < w2 {
                s / w2.max(1.0)
            } else if s < e1 {
                1.0
            } else {
                0.5 * (1.0 + (PI * (s - e1) / (t - e1).max(1.0)).cos())
            }
        }
        "FP_half_time_annealing" => {
            let w2 = w.min(h);
            if s < w2 {
                s / w2.max(1.0)
            } else if s < h {
                1.0
            } else {
                0.5 * (1.0 + (PI * (s - h) / (t - h).max(1.0)).cos())
            }
        }
        "FP_raise_fall_creative" => {
            (0.5 * (1.0 + (PI * (s - h) / (t - h).max(1.0)).cos())).max(0.0)
        }
        "FP_3epoch_raise_hold_fall" => {
            let (r, hd, f) = (e1, e1, t - 2.0 * e1);
            if s < r {
                (PI / 2.0 * s / r).sin()
            } else if s < r + hd {
                1.0
            } else {
                (PI / 2.0 * (s - r - hd) / f).cos().max(0.0)
            }
        }
        "FP_step_decay_with_warmup" => {
            let w2 = w.min(e1);
            if s < w2 {
                s / w2.max(1.0)
            } else if s < e1 {
                1.0
            } else {
                0.5f64.powf((s / e1).floor())
            }
        }
        _ => unreachable!("not an FP schedule: {name}"),
    }
}

const FP: [&str; 5] = [
    "FP_low_epoch_annealing",
    "FP_half_time_annealing",
    "FP_raise_fall_creative",
    "FP_3epoch_raise_hold_fall",
    "FP_step_decay_with_warmup",
];

#[test]
fn fp_set_matches_the_original_away_from_edge_cases() {
    let mut checked = 0;
    for epochs in [3u64, 4, 5, 7] {
        for per_epoch in [2u64, 3, 10, 37, 100] {
            // Even totals: the original's raise_fall start depends on T's parity (fixed here).
            let t = epochs * per_epoch * 2;
            for w in [0, 1, 5, per_epoch, 3 * per_epoch] {
                let h = Horizon::from_epochs(t, w, epochs as f64).unwrap();
                for name in FP {
                    let sched = Scheduler::new(name.parse().unwrap(), h, 3e-4).unwrap();
                    for s in 0..=t {
                        let want = original(name, s, w, t, epochs as f64);
                        let got = sched.multiplier(s);
                        assert!(
                            (got - want).abs() <= 1e-12,
                            "{name} T={t} W={w} epochs={epochs} s={s}: got {got}, original {want}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 50_000, "{checked}");
}

#[test]
fn fixed_edge_cases_do_not_crash_and_end_at_zero() {
    // The original divides by zero for raise_hold_fall at 2 epochs and never decays low_epoch at 1.
    for epochs in [0.25, 0.5, 1.0, 1.5, 2.0, 2.5] {
        for t in [1u64, 2, 3, 7, 20, 101] {
            let h = Horizon::from_epochs(t, 3, epochs).unwrap();
            for name in [FP[0], FP[1], FP[2], FP[3]] {
                let sched = Scheduler::new(name.parse().unwrap(), h, 1e-3).unwrap();
                let m = sched.multipliers();
                assert!(
                    m.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
                    "{name} {m:?}"
                );
                assert!(
                    m[t as usize].abs() < 1e-12,
                    "{name} T={t} epochs={epochs} ends at {m:?}"
                );
                assert!(
                    m.iter().any(|&v| v > 0.99),
                    "{name} T={t} never peaks: {m:?}"
                );
            }
        }
    }
}

#[test]
fn short_runs_are_reported() {
    let two_epochs = Horizon::from_epochs(20, 0, 2.0).unwrap();
    let rhf = Scheduler::new(Schedule::FpRaiseHoldFall, two_epochs, 1e-3).unwrap();
    assert!(rhf
        .warnings()
        .iter()
        .any(|w| matches!(w, Warning::ShortRunShape { .. })));
    let one_epoch = Horizon::from_epochs(20, 4, 1.0).unwrap();
    let low = Scheduler::new(Schedule::FpLowEpochAnnealing, one_epoch, 1e-3).unwrap();
    assert!(low
        .warnings()
        .iter()
        .any(|w| matches!(w, Warning::ShortRunShape { .. })));
    let step = Scheduler::new(Schedule::FpStepDecayWithWarmup, one_epoch, 1e-3).unwrap();
    assert!(step
        .warnings()
        .iter()
        .any(|w| matches!(w, Warning::NoDecay { .. })));
    let three = Horizon::from_epochs(30, 4, 3.0).unwrap();
    let rhf3 = Scheduler::new(Schedule::FpRaiseHoldFall, three, 1e-3).unwrap();
    let warnings = rhf3.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].to_string().contains("ignores warmup"));
}

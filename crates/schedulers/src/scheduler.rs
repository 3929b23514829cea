//! A schedule bound to a horizon and a base learning rate.

use serde::{Deserialize, Serialize};

use crate::{curves, Error, Horizon, Schedule, Warning};

/// A validated schedule, ready to evaluate: [`Scheduler::lr`] at each optimizer step.
///
/// Steps are optimizer steps, 0-based: `lr(k)` is the learning rate of the `k`-th optimizer update
/// (as `LambdaLR` gives it), for `k` in `0..total_steps`; `lr(total_steps)` is the value after the
/// last update (what the original logs last). Steps past the end evaluate as `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SchedulerRepr")]
pub struct Scheduler {
    schedule: Schedule,
    horizon: Horizon,
    base_lr: f64,
}

/// The serialized form, validated on the way in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerRepr {
    schedule: Schedule,
    horizon: Horizon,
    base_lr: f64,
}

impl TryFrom<SchedulerRepr> for Scheduler {
    type Error = Error;

    fn try_from(r: SchedulerRepr) -> Result<Self, Error> {
        Scheduler::new(r.schedule, r.horizon, r.base_lr)
    }
}

impl Scheduler {
    /// Binds `schedule` to `horizon` and `base_lr`.
    ///
    /// # Errors
    /// `base_lr` not finite and > 0, an invalid schedule parameter, or a polynomial `lr_end` not
    /// below `base_lr`.
    pub fn new(schedule: Schedule, horizon: Horizon, base_lr: f64) -> Result<Self, Error> {
        if !(base_lr.is_finite() && base_lr > 0.0) {
            return Err(Error::invalid(
                "learning_rate",
                base_lr,
                "a finite learning rate > 0",
            ));
        }
        schedule.validate()?;
        if let Schedule::Polynomial { lr_end, .. } = schedule {
            if lr_end >= base_lr {
                return Err(Error::invalid(
                    "lr_end",
                    lr_end,
                    "a final learning rate below the base learning rate",
                ));
            }
        }
        Ok(Scheduler {
            schedule,
            horizon,
            base_lr,
        })
    }

    /// The LR multiplier (a finite value in `[0, 1]`) at optimizer step `step`.
    #[must_use]
    pub fn multiplier(&self, step: u64) -> f64 {
        let t = self.horizon.total_steps();
        let w = self.horizon.warmup_steps();
        let e = self.horizon.steps_per_epoch();
        let s = step.min(t);
        match self.schedule {
            Schedule::Linear => curves::linear(s, w, t),
            Schedule::Constant => 1.0,
            Schedule::ConstantWithWarmup => curves::constant_with_warmup(s, w),
            Schedule::Cosine { num_cycles } => curves::cosine(s, w, t, num_cycles),
            Schedule::CosineWithRestarts { num_cycles } => {
                curves::cosine_with_restarts(s, w, t, num_cycles)
            }
            Schedule::Polynomial { power, lr_end } => {
                curves::polynomial(s, w, t, power, lr_end / self.base_lr)
            }
            Schedule::InverseSqrt { timescale } => curves::inverse_sqrt(s, w, timescale),
            Schedule::FpLowEpochAnnealing => curves::low_epoch(s, w, t, e),
            Schedule::FpHalfTimeAnnealing => curves::half_time(s, w, t),
            Schedule::FpRaiseFallCreative => curves::raise_fall(s, t),
            Schedule::FpRaiseHoldFall => curves::raise_hold_fall(s, t, e),
            Schedule::FpStepDecayWithWarmup => curves::step_decay(s, w, e),
        }
    }

    /// The learning rate at optimizer step `step`: `base_lr * multiplier(step)`.
    #[must_use]
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.multiplier(step)
    }

    /// The multipliers at steps `0..=total_steps` (a preview of the whole run).
    #[must_use]
    pub fn multipliers(&self) -> Vec<f64> {
        (0..=self.horizon.total_steps())
            .map(|s| self.multiplier(s))
            .collect()
    }

    /// The schedule.
    #[must_use]
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// The horizon.
    #[must_use]
    pub fn horizon(&self) -> Horizon {
        self.horizon
    }

    /// The base learning rate.
    #[must_use]
    pub fn base_lr(&self) -> f64 {
        self.base_lr
    }

    /// What the user should know about this schedule on this horizon (ignored or capped warmup,
    /// short-run shapes, no decay).
    #[must_use]
    pub fn warnings(&self) -> Vec<Warning> {
        let name = self.schedule.name();
        let t = self.horizon.total_steps();
        let w = self.horizon.warmup_steps();
        let e = self.horizon.steps_per_epoch();
        let mut out = Vec::new();
        if w > 0 && !self.schedule.uses_warmup() {
            out.push(Warning::WarmupIgnored {
                schedule: name,
                warmup_steps: w,
            });
        }
        let cap = match self.schedule {
            Schedule::FpLowEpochAnnealing => Some(curves::low_epoch_hold_end(t, e)),
            Schedule::FpHalfTimeAnnealing => Some(t / 2),
            Schedule::FpStepDecayWithWarmup => Some(e),
            _ => None,
        };
        match cap {
            Some(cap) if w > cap => out.push(Warning::WarmupCapped {
                schedule: name,
                given: w,
                used: cap,
            }),
            None if self.schedule.uses_warmup() && w >= t => out.push(Warning::WarmupCoversRun {
                warmup_steps: w,
                total_steps: t,
            }),
            _ => {}
        }
        match self.schedule {
            Schedule::FpLowEpochAnnealing if t <= e => out.push(Warning::ShortRunShape {
                schedule: name,
                shape:
                    "warmup and hold over the first half of the run, cosine anneal over the second",
            }),
            Schedule::FpRaiseHoldFall if t <= e.saturating_mul(2) => {
                out.push(Warning::ShortRunShape {
                    schedule: name,
                    shape: "rise, hold and fall over thirds of the run",
                })
            }
            Schedule::FpStepDecayWithWarmup if t <= e => {
                out.push(Warning::NoDecay { schedule: name });
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_base_lr_and_lr_end_are_rejected() {
        let h = Horizon::new(10, 0, 5).unwrap();
        for lr in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let msg = Scheduler::new(Schedule::Linear, h, lr)
                .unwrap_err()
                .to_string();
            assert!(msg.contains("learning_rate"), "{msg}");
        }
        let poly = Schedule::Polynomial {
            power: 1.0,
            lr_end: 1e-3,
        };
        let msg = Scheduler::new(poly, h, 1e-3).unwrap_err().to_string();
        assert!(msg.contains("lr_end"), "{msg}");
    }

    #[test]
    fn serde_round_trip_validates() {
        let h = Horizon::new(10, 2, 5).unwrap();
        let s = Scheduler::new("FP_step_decay_with_warmup".parse().unwrap(), h, 2e-4).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Scheduler>(&json).unwrap(), s);
        let bad = json.replace("0.0002", "0.0");
        assert_ne!(bad, json);
        assert!(serde_json::from_str::<Scheduler>(&bad).is_err());
    }

    #[test]
    fn steps_past_the_end_evaluate_as_the_end() {
        let h = Horizon::new(10, 0, 5).unwrap();
        for schedule in Schedule::all() {
            let s = Scheduler::new(schedule, h, 1e-3).unwrap();
            assert_eq!(s.multiplier(11), s.multiplier(10), "{schedule}");
            assert_eq!(s.multipliers().len(), 11);
        }
    }
}

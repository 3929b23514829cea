//! The schedule kinds, their parameters and the names users type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A learning-rate schedule kind with its parameters.
///
/// The first seven keep Hugging Face `transformers.get_scheduler` semantics; the five `Fp*` kinds are
/// Training PRO's custom schedules with their crashes and degenerate cases fixed (see
/// `docs/schedules.md`). Parse one from the names users know with [`str::parse`]; parameters then
/// take Hugging Face's defaults and can be changed on the value.
///
/// ```
/// use schedulers::Schedule;
/// let s: Schedule = "Cosine_With_Restarts".parse().unwrap();
/// assert_eq!(s, Schedule::CosineWithRestarts { num_cycles: 1 });
/// assert_eq!(s.to_string(), "cosine_with_restarts");
/// assert!("cosin".parse::<Schedule>().unwrap_err().to_string().contains("cosine_with_restarts"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", deny_unknown_fields)]
#[non_exhaustive]
pub enum Schedule {
    /// Linear warmup, then linear decay to 0 at the last step.
    #[serde(rename = "linear")]
    Linear,
    /// Multiplier 1 throughout; warmup is ignored (as in Hugging Face).
    #[serde(rename = "constant")]
    Constant,
    /// Linear warmup, then 1.
    #[serde(rename = "constant_with_warmup")]
    ConstantWithWarmup,
    /// Linear warmup, then cosine decay; `num_cycles` 0.5 (the default) is a half cosine down to 0.
    #[serde(rename = "cosine")]
    Cosine {
        /// Number of cosine cycles over the decay (Hugging Face default 0.5).
        num_cycles: f64,
    },
    /// Linear warmup, then `num_cycles` hard-restarting cosine decays; 0 at the last step.
    #[serde(rename = "cosine_with_restarts")]
    CosineWithRestarts {
        /// Number of restarts cycles (Hugging Face default 1).
        num_cycles: u32,
    },
    /// Linear warmup, then polynomial decay from the base LR to the absolute `lr_end`.
    #[serde(rename = "polynomial")]
    Polynomial {
        /// Exponent of the decay (Hugging Face default 1.0 = linear).
        power: f64,
        /// Absolute final learning rate (Hugging Face default 1e-7); must be below the base LR.
        lr_end: f64,
    },
    /// Linear warmup, then `1/sqrt((step + timescale - warmup) / timescale)`.
    #[serde(rename = "inverse_sqrt")]
    InverseSqrt {
        /// Decay timescale in steps; `None` = the warmup steps, or 10,000 without warmup.
        timescale: Option<u64>,
    },
    /// Warmup within the first epoch, hold to the end of the first epoch, cosine anneal to 0.
    #[serde(rename = "FP_low_epoch_annealing")]
    FpLowEpochAnnealing,
    /// Warmup, hold until half the run, cosine anneal to 0.
    #[serde(rename = "FP_half_time_annealing")]
    FpHalfTimeAnnealing,
    /// Raised-cosine hump: 0 at the start, 1 at half the run, 0 at the end; warmup is ignored.
    #[serde(rename = "FP_raise_fall_creative")]
    FpRaiseFallCreative,
    /// Sine rise over epoch 1, hold over epoch 2, cosine fall to 0 over the rest; warmup is ignored.
    #[serde(rename = "FP_3epoch_raise_hold_fall")]
    FpRaiseHoldFall,
    /// Warmup within the first epoch, hold to its end, then halve at every epoch boundary.
    #[serde(rename = "FP_step_decay_with_warmup")]
    FpStepDecayWithWarmup,
}

impl Schedule {
    /// Every valid name, in the original's UI order.
    pub const NAMES: [&'static str; 12] = [
        "linear",
        "constant",
        "constant_with_warmup",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "inverse_sqrt",
        "FP_low_epoch_annealing",
        "FP_half_time_annealing",
        "FP_raise_fall_creative",
        "FP_3epoch_raise_hold_fall",
        "FP_step_decay_with_warmup",
    ];

    /// The canonical name (one of [`Schedule::NAMES`]).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Linear => Self::NAMES[0],
            Schedule::Constant => Self::NAMES[1],
            Schedule::ConstantWithWarmup => Self::NAMES[2],
            Schedule::Cosine { .. } => Self::NAMES[3],
            Schedule::CosineWithRestarts { .. } => Self::NAMES[4],
            Schedule::Polynomial { .. } => Self::NAMES[5],
            Schedule::InverseSqrt { .. } => Self::NAMES[6],
            Schedule::FpLowEpochAnnealing => Self::NAMES[7],
            Schedule::FpHalfTimeAnnealing => Self::NAMES[8],
            Schedule::FpRaiseFallCreative => Self::NAMES[9],
            Schedule::FpRaiseHoldFall => Self::NAMES[10],
            Schedule::FpStepDecayWithWarmup => Self::NAMES[11],
        }
    }

    /// Every kind with its default parameters, in [`Schedule::NAMES`] order.
    #[must_use]
    pub fn all() -> Vec<Schedule> {
        Self::NAMES.iter().filter_map(|n| n.parse().ok()).collect()
    }

    /// Whether the kind uses the warmup steps of the horizon.
    #[must_use]
    pub fn uses_warmup(&self) -> bool {
        !matches!(
            self,
            Schedule::Constant | Schedule::FpRaiseFallCreative | Schedule::FpRaiseHoldFall
        )
    }

    /// Checks the parameters that do not depend on the base LR.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        match *self {
            Schedule::Cosine { num_cycles } if !(num_cycles.is_finite() && num_cycles > 0.0) => Err(
                Error::invalid("num_cycles", num_cycles, "a finite number > 0 (default 0.5)"),
            ),
            Schedule::CosineWithRestarts { num_cycles: 0 } => Err(Error::invalid(
                "num_cycles",
                0,
                "a whole number >= 1 (default 1)",
            )),
            Schedule::Polynomial { power, lr_end } => {
                if !(power.is_finite() && power > 0.0) {
                    return Err(Error::invalid("power", power, "a finite number > 0 (default 1.0)"));
                }
                if !(lr_end.is_finite() && lr_end >= 0.0) {
                    return Err(Error::invalid(
                        "lr_end",
                        lr_end,
                        "a finite learning rate >= 0 below the base LR (default 1e-7)",
                    ));
                }
                Ok(())
            }
            Schedule::InverseSqrt { timescale: Some(0) } => Err(Error::invalid(
                "timescale",
                0,
                "a whole number of steps >= 1, or unset for the warmup steps (10000 without warmup)",
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Schedule {
    type Err = Error;

    /// Case-insensitive; `-` is accepted for `_`. Parameters take Hugging Face's defaults.
    fn from_str(s: &str) -> Result<Self, Error> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        Ok(match key.as_str() {
            "linear" => Schedule::Linear,
            "constant" => Schedule::Constant,
            "constant_with_warmup" => Schedule::ConstantWithWarmup,
            "cosine" => Schedule::Cosine { num_cycles: 0.5 },
            "cosine_with_restarts" => Schedule::CosineWithRestarts { num_cycles: 1 },
            "polynomial" => Schedule::Polynomial {
                power: 1.0,
                lr_end: 1e-7,
            },
            "inverse_sqrt" => Schedule::InverseSqrt { timescale: None },
            "fp_low_epoch_annealing" => Schedule::FpLowEpochAnnealing,
            "fp_half_time_annealing" => Schedule::FpHalfTimeAnnealing,
            "fp_raise_fall_creative" => Schedule::FpRaiseFallCreative,
            "fp_3epoch_raise_hold_fall" => Schedule::FpRaiseHoldFall,
            "fp_step_decay_with_warmup" => Schedule::FpStepDecayWithWarmup,
            _ => {
                return Err(Error::UnknownSchedule {
                    name: s.to_string(),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for name in Schedule::NAMES {
            let s: Schedule = name.parse().unwrap();
            assert_eq!(s.name(), name);
            let upper: Schedule = name.to_uppercase().parse().unwrap();
            assert_eq!(upper, s);
        }
        assert_eq!(Schedule::all().len(), Schedule::NAMES.len());
    }

    #[test]
    fn unknown_name_lists_valid_ones() {
        let msg = "cosinus".parse::<Schedule>().unwrap_err().to_string();
        assert!(msg.contains("cosinus"), "{msg}");
        for name in Schedule::NAMES {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn serde_uses_user_names() {
        let s = Schedule::Polynomial {
            power: 2.0,
            lr_end: 0.0,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"name":"polynomial","power":2.0,"lr_end":0.0}"#);
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
        let fp: Schedule = serde_json::from_str(r#"{"name":"FP_3epoch_raise_hold_fall"}"#).unwrap();
        assert_eq!(fp, Schedule::FpRaiseHoldFall);
        let typo = r#"{"name":"cosine","num_cycle":0.5}"#;
        assert!(serde_json::from_str::<Schedule>(typo)
            .unwrap_err()
            .to_string()
            .contains("num_cycle"));
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert!(Schedule::Cosine { num_cycles: 0.0 }.validate().is_err());
        assert!(Schedule::CosineWithRestarts { num_cycles: 0 }
            .validate()
            .is_err());
        assert!(Schedule::Polynomial {
            power: f64::NAN,
            lr_end: 0.0
        }
        .validate()
        .is_err());
        assert!(Schedule::Polynomial {
            power: 1.0,
            lr_end: -1.0
        }
        .validate()
        .is_err());
        assert!(Schedule::InverseSqrt { timescale: Some(0) }
            .validate()
            .is_err());
        assert!(Schedule::Linear.validate().is_ok());
    }
}

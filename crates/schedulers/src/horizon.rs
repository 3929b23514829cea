//! The three numbers a schedule needs.

use serde::{Deserialize, Serialize};

use crate::Error;

/// What a schedule is evaluated against, in optimizer steps: the run length, the warmup and the epoch
/// length (the FP schedules' phases follow epochs). Build it from a [`StepPlan`](crate::StepPlan)
/// with [`StepPlan::horizon`](crate::StepPlan::horizon), or directly for a preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HorizonRepr")]
pub struct Horizon {
    total_steps: u64,
    warmup_steps: u64,
    steps_per_epoch: u64,
}

impl Horizon {
    /// A horizon from explicit counts.
    ///
    /// # Errors
    /// `total_steps` or `steps_per_epoch` is 0.
    pub fn new(total_steps: u64, warmup_steps: u64, steps_per_epoch: u64) -> Result<Self, Error> {
        if total_steps == 0 {
            return Err(Error::invalid(
                "total_steps",
                0,
                "at least 1 optimizer step",
            ));
        }
        if steps_per_epoch == 0 {
            return Err(Error::invalid(
                "steps_per_epoch",
                0,
                "at least 1 optimizer step per epoch",
            ));
        }
        Ok(Self::from_parts(total_steps, warmup_steps, steps_per_epoch))
    }

    /// A horizon from a run length and its epoch count, as the original computes the epoch length:
    /// `steps_per_epoch = max(1, ceil(total_steps / epochs))`.
    ///
    /// # Errors
    /// `total_steps` is 0, or `epochs` is not finite and > 0.
    pub fn from_epochs(total_steps: u64, warmup_steps: u64, epochs: f64) -> Result<Self, Error> {
        if !(epochs.is_finite() && epochs > 0.0) {
            return Err(Error::invalid(
                "epochs",
                epochs,
                "a finite number of epochs > 0 (fractions allowed)",
            ));
        }
        let per_epoch = (total_steps as f64 / epochs).ceil();
        // Saturating float-to-int conversion; a huge value just means "longer than the run".
        let per_epoch = (per_epoch as u64).max(1);
        Self::new(total_steps, warmup_steps, per_epoch)
    }

    pub(crate) fn from_parts(total_steps: u64, warmup_steps: u64, steps_per_epoch: u64) -> Self {
        Horizon {
            total_steps: total_steps.max(1),
            warmup_steps,
            steps_per_epoch: steps_per_epoch.max(1),
        }
    }

    /// Total optimizer steps (>= 1).
    #[must_use]
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// Warmup optimizer steps as given (a schedule may cap or ignore them).
    #[must_use]
    pub fn warmup_steps(&self) -> u64 {
        self.warmup_steps
    }

    /// Optimizer steps per epoch (>= 1).
    #[must_use]
    pub fn steps_per_epoch(&self) -> u64 {
        self.steps_per_epoch
    }
}

/// The serialized form, validated on the way in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HorizonRepr {
    total_steps: u64,
    warmup_steps: u64,
    steps_per_epoch: u64,
}

impl TryFrom<HorizonRepr> for Horizon {
    type Error = Error;

    fn try_from(r: HorizonRepr) -> Result<Self, Error> {
        Horizon::new(r.total_steps, r.warmup_steps, r.steps_per_epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_epochs_matches_the_original_epoch_length() {
        let h = Horizon::from_epochs(100, 5, 3.0).unwrap();
        assert_eq!(h.steps_per_epoch(), 34);
        assert_eq!(
            Horizon::from_epochs(10, 0, 0.5).unwrap().steps_per_epoch(),
            20
        );
        assert!(Horizon::from_epochs(10, 0, 0.0).is_err());
        assert!(Horizon::new(0, 0, 1).is_err());
        assert!(Horizon::new(1, 0, 0).is_err());
    }

    #[test]
    fn serde_validates() {
        let h = Horizon::new(10, 2, 5).unwrap();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Horizon>(&json).unwrap(), h);
        let bad = r#"{"total_steps":0,"warmup_steps":0,"steps_per_epoch":1}"#;
        assert!(serde_json::from_str::<Horizon>(bad)
            .unwrap_err()
            .to_string()
            .contains("total_steps"));
    }
}

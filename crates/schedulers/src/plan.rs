//! Step accounting: from data size and batch settings to optimizer steps.

use serde::{Deserialize, Serialize};

use crate::{Error, Horizon, Warning};

/// How warmup is given.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    /// Warmup in optimizer steps (this project's unit everywhere). `0` = no warmup.
    Steps(u64),
    /// Warmup in micro-steps (forward passes), the unit of the original's UI; converted with
    /// `ceil(n / grad_accum)` using the gradient accumulation actually used.
    MicroSteps(u64),
    /// Fraction of the total optimizer steps, in `[0, 1]`; `ceil(total * ratio)`.
    Ratio(f64),
}

/// What a [`StepPlan`] is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    /// Training blocks (samples) per epoch, >= 1.
    pub blocks: u64,
    /// Micro-batch size (samples per forward pass), >= 1.
    pub batch_size: u64,
    /// Requested gradient accumulation (micro-batches per optimizer step), >= 1.
    pub grad_accum: u64,
    /// Epochs, finite and > 0; may be fractional. Not used when `max_steps` is set.
    pub epochs: f64,
    /// Warmup length.
    pub warmup: Warmup,
    /// Hugging Face's `max_steps`: when set (>= 1), the run is exactly this many optimizer steps, whatever
    /// `epochs` says; the data is cycled through as many (possibly partial) epochs as that takes, and a
    /// warmup ratio is a fraction of these steps.
    #[serde(default)]
    pub max_steps: Option<u64>,
}

/// The optimizer-step plan of a run, shared by the trainer, the schedule, the checkpoint policy and
/// the dry-run preview. Every count is in **optimizer steps** unless its name says micro.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StepPlan {
    /// The input the plan was computed from (with the requested gradient accumulation).
    pub input: PlanInput,
    /// Gradient accumulation used, after auto-lowering (`<= max(1, blocks / batch_size)`).
    pub grad_accum: u64,
    /// Micro-batches per epoch: `ceil(blocks / batch_size)` (the last one may be partial).
    pub micro_batches_per_epoch: u64,
    /// Optimizer steps per epoch: `max(1, micro_batches_per_epoch / grad_accum)`.
    pub steps_per_epoch: u64,
    /// Total optimizer steps: `ceil(epochs * steps_per_epoch)`, or `max_steps` when set; >= 1.
    pub total_steps: u64,
    /// Warmup optimizer steps.
    pub warmup_steps: u64,
    /// Warnings to show the user.
    pub warnings: Vec<Warning>,
}

/// Largest total step count accepted (keeps every count exact in an `f64`).
const MAX_TOTAL_STEPS: f64 = 9.0e15;

impl StepPlan {
    /// Computes the plan (Hugging Face `Trainer` accounting, transformers 4.x rounding), lowering the
    /// gradient accumulation when the data has fewer full batches than requested.
    ///
    /// # Errors
    /// A zero block count, batch size or accumulation, non-finite or non-positive epochs, a warmup
    /// ratio outside `[0, 1]`, or a run longer than 9e15 steps.
    pub fn new(input: PlanInput) -> Result<StepPlan, Error> {
        let PlanInput {
            blocks,
            batch_size,
            grad_accum: requested,
            epochs,
            warmup,
            max_steps,
        } = input;
        if blocks == 0 {
            return Err(Error::invalid(
                "blocks",
                0,
                "at least 1 training block; the dataset is empty after filtering",
            ));
        }
        if batch_size == 0 {
            return Err(Error::invalid("batch_size", 0, "a micro-batch size >= 1"));
        }
        if requested == 0 {
            return Err(Error::invalid(
                "grad_accum",
                0,
                "a gradient accumulation >= 1",
            ));
        }
        if max_steps == Some(0) {
            return Err(Error::invalid(
                "max_steps",
                0,
                "at least 1 optimizer step (or no max_steps, to train by epochs)",
            ));
        }
        if max_steps.is_none() && !(epochs.is_finite() && epochs > 0.0) {
            return Err(Error::invalid(
                "epochs",
                epochs,
                "a finite number of epochs > 0 (fractions allowed)",
            ));
        }
        if let Warmup::Ratio(r) = warmup {
            if !(0.0..=1.0).contains(&r) {
                return Err(Error::invalid("warmup_ratio", r, "a fraction in [0, 1]"));
            }
        }
        let mut warnings = Vec::new();
        let full_batches = (blocks / batch_size).max(1);
        let grad_accum = requested.min(full_batches);
        if grad_accum < requested {
            warnings.push(Warning::GradAccumLowered {
                requested,
                used: grad_accum,
                blocks,
                batch_size,
            });
        }
        let micro_batches_per_epoch = blocks.div_ceil(batch_size);
        let steps_per_epoch = (micro_batches_per_epoch / grad_accum).max(1);
        let total = match max_steps {
            Some(n) => n as f64,
            None => (epochs * steps_per_epoch as f64).ceil(),
        };
        if total > MAX_TOTAL_STEPS {
            return Err(match max_steps {
                Some(n) => Error::invalid("max_steps", n, "at most 9e15 optimizer steps"),
                None => Error::invalid(
                    "epochs",
                    epochs,
                    "few enough epochs that the run has at most 9e15 optimizer steps",
                ),
            });
        }
        let total_steps = (total as u64).max(1);
        let warmup_steps = match warmup {
            Warmup::Steps(w) => w,
            Warmup::MicroSteps(w) => w.div_ceil(grad_accum),
            Warmup::Ratio(r) => (total_steps as f64 * r).ceil() as u64,
        };
        Ok(StepPlan {
            input,
            grad_accum,
            micro_batches_per_epoch,
            steps_per_epoch,
            total_steps,
            warmup_steps,
            warnings,
        })
    }

    /// The schedule horizon of this plan (total, warmup and epoch length in optimizer steps).
    #[must_use]
    pub fn horizon(&self) -> Horizon {
        Horizon::from_parts(self.total_steps, self.warmup_steps, self.steps_per_epoch)
    }

    /// Fractional epoch after `step` optimizer steps (`step / steps_per_epoch`).
    #[must_use]
    pub fn epoch_at(&self, step: u64) -> f64 {
        step as f64 / self.steps_per_epoch as f64
    }

    /// Micro-steps (forward passes) after `step` optimizer steps, the original UI's unit.
    #[must_use]
    pub fn micro_steps(&self, step: u64) -> u64 {
        step.saturating_mul(self.grad_accum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn input(
        blocks: u64,
        batch_size: u64,
        grad_accum: u64,
        epochs: f64,
        warmup: Warmup,
    ) -> PlanInput {
        PlanInput {
            blocks,
            batch_size,
            grad_accum,
            epochs,
            warmup,
            max_steps: None,
        }
    }

    #[test]
    fn max_steps_replaces_the_epochs_and_the_warmup_ratio_follows_it() {
        // 10 blocks, batch 2: 5 steps per epoch; 12 steps are 2.4 epochs, whatever `epochs` says.
        let p = StepPlan::new(PlanInput {
            max_steps: Some(12),
            ..input(10, 2, 1, 0.0, Warmup::Ratio(0.25))
        })
        .unwrap();
        assert_eq!(
            (p.steps_per_epoch, p.total_steps, p.warmup_steps),
            (5, 12, 3)
        );
        assert_eq!(p.epoch_at(12), 2.4);
        assert_eq!(p.horizon().total_steps(), 12);
        let zero = StepPlan::new(PlanInput {
            max_steps: Some(0),
            ..input(10, 2, 1, 1.0, Warmup::Steps(0))
        });
        assert!(zero.unwrap_err().to_string().contains("max_steps"));
    }

    #[test]
    fn original_defaults() {
        // 1,173 blocks (the KJV sample), batch 4, GA 1, 3 epochs, UI warmup 100 micro-steps.
        let p = StepPlan::new(input(1173, 4, 1, 3.0, Warmup::MicroSteps(100))).unwrap();
        assert_eq!(p.micro_batches_per_epoch, 294);
        assert_eq!(p.steps_per_epoch, 294);
        assert_eq!(p.total_steps, 882);
        assert_eq!(p.warmup_steps, 100);
        assert!(p.warnings.is_empty());
        assert_eq!(p.epoch_at(441), 1.5);
    }

    #[test]
    fn lowering_goes_to_the_largest_supported_value() {
        // 10 blocks, batch 4: 2 full batches; the original would pick 2 - 1 = 1.
        let p = StepPlan::new(input(10, 4, 8, 1.0, Warmup::Steps(0))).unwrap();
        assert_eq!(p.grad_accum, 2);
        assert_eq!(p.steps_per_epoch, 1);
        assert_eq!(
            p.warnings,
            vec![Warning::GradAccumLowered {
                requested: 8,
                used: 2,
                blocks: 10,
                batch_size: 4
            }]
        );
        assert!(p.warnings[0].to_string().contains("using 2"));
    }

    #[test]
    fn micro_step_warmup_uses_the_lowered_accumulation() {
        let p = StepPlan::new(input(10, 4, 8, 3.0, Warmup::MicroSteps(5))).unwrap();
        assert_eq!(p.warmup_steps, 3); // ceil(5 / 2), not ceil(5 / 8)
        assert_eq!(p.micro_steps(3), 6);
    }

    #[test]
    fn bad_inputs_name_the_field() {
        for (inp, field) in [
            (input(0, 1, 1, 1.0, Warmup::Steps(0)), "blocks"),
            (input(1, 0, 1, 1.0, Warmup::Steps(0)), "batch_size"),
            (input(1, 1, 0, 1.0, Warmup::Steps(0)), "grad_accum"),
            (input(1, 1, 1, 0.0, Warmup::Steps(0)), "epochs"),
            (input(1, 1, 1, f64::NAN, Warmup::Steps(0)), "epochs"),
            (input(1, 1, 1, 1e300, Warmup::Steps(0)), "epochs"),
            (input(1, 1, 1, 1.0, Warmup::Ratio(1.5)), "warmup_ratio"),
        ] {
            let msg = StepPlan::new(inp).unwrap_err().to_string();
            assert!(msg.contains(field), "{msg}");
        }
    }

    #[test]
    fn warmup_is_not_capped_by_the_plan() {
        // The schedule decides what a too-long warmup means (see `Scheduler::warnings`).
        let p = StepPlan::new(input(8, 1, 1, 1.0, Warmup::Steps(20))).unwrap();
        assert_eq!((p.warmup_steps, p.total_steps), (20, 8));
        assert!(p.warnings.is_empty());
    }

    proptest! {
        // A1: HF accounting.
        #[test]
        fn a1_accounting(blocks in 1u64..5000, batch in 1u64..64, ga in 1u64..64,
                         epochs in 0.01f64..20.0, w in 0u64..500, ratio in 0.0f64..=1.0, use_ratio: bool) {
            let warmup = if use_ratio { Warmup::Ratio(ratio) } else { Warmup::MicroSteps(w) };
            let p = StepPlan::new(input(blocks, batch, ga, epochs, warmup)).unwrap();
            let ga2 = p.grad_accum;
            let upe = (blocks.div_ceil(batch) / ga2).max(1);
            prop_assert_eq!(p.steps_per_epoch, upe);
            let total = (epochs * upe as f64).ceil() as u64;
            prop_assert_eq!(p.total_steps, total);
            let warm = if use_ratio { (total as f64 * ratio).ceil() as u64 } else { w.div_ceil(ga2) };
            prop_assert_eq!(p.warmup_steps, warm);
            prop_assert!(p.total_steps >= 1);
        }

        // A2: auto-lowering bounds, and it is the largest such value.
        #[test]
        fn a2_lowering(blocks in 1u64..5000, batch in 1u64..64, ga in 1u64..300) {
            let p = StepPlan::new(input(blocks, batch, ga, 1.0, Warmup::Steps(0))).unwrap();
            let cap = (blocks / batch).max(1);
            prop_assert!(p.grad_accum >= 1);
            prop_assert!(p.grad_accum <= cap);
            prop_assert_eq!(p.grad_accum, ga.min(cap));
            prop_assert_eq!(p.warnings.iter().any(|w| matches!(w, Warning::GradAccumLowered { .. })), ga > cap);
        }
    }
}

//! The step plan and learning-rate schedule of a job (`schedulers`), and its eval cadence.

use schedulers::{PlanInput, Schedule, Scheduler, StepPlan, Warmup};

use crate::error::{Error, Result};

/// How long a job trains, how its steps are batched and what learning rate each step gets.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSettings {
    /// Micro-batch size (samples per forward pass).
    pub batch_size: usize,
    /// Gradient accumulation requested (micro-batches per optimizer step; lowered when the data is small).
    pub grad_accum: usize,
    /// Epochs (fractions allowed); not used when `max_steps` is set.
    pub epochs: f64,
    /// Hugging Face's `max_steps`: exactly this many optimizer steps, cycling through the data, with warmup
    /// and decay computed over them.
    pub max_steps: Option<u64>,
    /// Warmup.
    pub warmup: Warmup,
    /// The schedule.
    pub schedule: Schedule,
    /// Peak learning rate.
    pub learning_rate: f64,
}

impl Default for PlanSettings {
    fn default() -> Self {
        Self {
            batch_size: 4,
            grad_accum: 1,
            epochs: 3.0,
            max_steps: None,
            warmup: Warmup::Ratio(0.1),
            schedule: Schedule::Linear,
            learning_rate: 3e-4,
        }
    }
}

/// A job's plan: the optimizer steps (`steps`) and the learning rate of each (`scheduler`).
#[derive(Debug, Clone)]
pub struct TrainingPlan {
    /// Step accounting.
    pub steps: StepPlan,
    /// The schedule bound to the plan and the peak learning rate.
    pub scheduler: Scheduler,
    /// What it was computed from.
    pub settings: PlanSettings,
}

impl TrainingPlan {
    /// The plan of `samples` training samples.
    pub fn new(settings: PlanSettings, samples: usize) -> Result<Self> {
        if !(settings.learning_rate.is_finite() && settings.learning_rate > 0.0) {
            return Err(Error::setting(
                "learning_rate",
                format!(
                    "{} is not a learning rate > 0 (e.g. 3e-4)",
                    settings.learning_rate
                ),
            ));
        }
        let steps = StepPlan::new(PlanInput {
            blocks: samples as u64,
            batch_size: settings.batch_size as u64,
            grad_accum: settings.grad_accum as u64,
            epochs: settings.epochs,
            warmup: settings.warmup,
            max_steps: settings.max_steps,
        })?;
        let scheduler = Scheduler::new(settings.schedule, steps.horizon(), settings.learning_rate)?;
        Ok(Self {
            steps,
            scheduler,
            settings,
        })
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        self.scheduler.lr(step)
    }

    /// The plan in words, with its warnings (a lowered accumulation, a schedule that ignores warmup...).
    pub fn text(&self) -> String {
        let p = &self.steps;
        let length = match self.settings.max_steps {
            Some(n) => format!(
                "max_steps {n}: {:.2} epochs of {} steps",
                p.epoch_at(n),
                p.steps_per_epoch
            ),
            None => format!(
                "{} per epoch x {} epochs",
                p.steps_per_epoch, self.settings.epochs
            ),
        };
        let mut out = format!(
            "steps:          {} optimizer steps ({length}), warmup {}\n\
             batches:        micro-batch {} x gradient accumulation {} = {} blocks per step",
            p.total_steps,
            p.warmup_steps,
            p.input.batch_size,
            p.grad_accum,
            p.input.batch_size * p.grad_accum
        );
        for w in p
            .warnings
            .iter()
            .map(ToString::to_string)
            .chain(self.scheduler.warnings().iter().map(ToString::to_string))
        {
            out.push_str(&format!("\nwarning: {w}"));
        }
        out
    }

    /// The learning rate against the fractional epoch, for every step boundary `0..=total`: the points of a
    /// schedule preview.
    pub fn lr_curve(&self) -> Vec<(f64, f64)> {
        (0..=self.steps.total_steps)
            .map(|s| (self.steps.epoch_at(s), self.scheduler.lr(s)))
            .collect()
    }
}

/// When a job scores its eval set (always also after the last step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvalEvery {
    /// At the end of every epoch.
    #[default]
    EpochEnd,
    /// Every this many optimizer steps.
    Steps(u64),
}

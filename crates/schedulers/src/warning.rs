//! Structured warnings for the CLI to print.

use std::fmt;

use serde::Serialize;

/// Something the user should know about a plan or a schedule; never fatal.
///
/// `Display` gives a one-line message that says what happened and what to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Warning {
    /// The data has too few full batches for the requested gradient accumulation; it was lowered
    /// to the largest value the data supports (one full optimizer step per epoch).
    GradAccumLowered {
        /// Gradient accumulation asked for.
        requested: u64,
        /// Gradient accumulation used (`max(1, blocks / batch_size)`).
        used: u64,
        /// Training blocks.
        blocks: u64,
        /// Micro-batch size.
        batch_size: u64,
    },
    /// Warmup is at least as long as the run: the LR never reaches its base value.
    WarmupCoversRun {
        /// Warmup optimizer steps.
        warmup_steps: u64,
        /// Total optimizer steps.
        total_steps: u64,
    },
    /// The schedule caps warmup at the end of its hold phase (first epoch or half the run).
    WarmupCapped {
        /// Schedule name.
        schedule: &'static str,
        /// Warmup optimizer steps given.
        given: u64,
        /// Warmup optimizer steps used.
        used: u64,
    },
    /// The schedule ignores warmup steps that were given.
    WarmupIgnored {
        /// Schedule name.
        schedule: &'static str,
        /// Warmup optimizer steps that will not be used.
        warmup_steps: u64,
    },
    /// The run is too short for the schedule's epoch-based shape; a fixed short-run shape is used
    /// (see `docs/schedules.md`).
    ShortRunShape {
        /// Schedule name.
        schedule: &'static str,
        /// What is used instead.
        shape: &'static str,
    },
    /// The schedule keeps the LR at its peak for the whole run (a step decay shorter than two epochs).
    NoDecay {
        /// Schedule name.
        schedule: &'static str,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::GradAccumLowered {
                requested,
                used,
                blocks,
                batch_size,
            } => write!(
                f,
                "gradient accumulation {requested} is too high for {blocks} blocks at batch size \
                 {batch_size} (at most {used} full batches per epoch); using {used}. Add data or \
                 lower the gradient accumulation to silence this"
            ),
            Warning::WarmupCoversRun {
                warmup_steps,
                total_steps,
            } => write!(
                f,
                "warmup ({warmup_steps} optimizer steps) is not shorter than the run \
                 ({total_steps} steps): the LR never reaches its base value; lower the warmup"
            ),
            Warning::WarmupCapped {
                schedule,
                given,
                used,
            } => write!(
                f,
                "schedule {schedule} ends warmup by the end of its hold phase: using {used} warmup \
                 steps instead of {given}"
            ),
            Warning::WarmupIgnored {
                schedule,
                warmup_steps,
            } => write!(
                f,
                "schedule {schedule} ignores warmup ({warmup_steps} optimizer steps given)"
            ),
            Warning::ShortRunShape { schedule, shape } => write!(
                f,
                "the run is too short for {schedule}'s epoch-based shape; using {shape}"
            ),
            Warning::NoDecay { schedule } => write!(
                f,
                "schedule {schedule} decays only at epoch boundaries: with this few epochs the LR \
                 stays at its peak; train longer or pick another schedule"
            ),
        }
    }
}

//! Learning-rate schedules (Hugging Face set and Training PRO's FP set) and step accounting.
//!
//! Three steps, all pure:
//!
//! 1. [`StepPlan::new`] turns the data size and batch settings into **optimizer steps** (steps per
//!    epoch, total, warmup), lowering the gradient accumulation when the data is too small and saying
//!    so in [`StepPlan::warnings`].
//! 2. A [`Schedule`] is parsed from the names users know (`cosine`, `FP_low_epoch_annealing`, ...,
//!    case-insensitive); an unknown name is an error that lists the valid ones.
//! 3. A [`Scheduler`] binds the schedule to the plan's [`Horizon`] and the base learning rate;
//!    [`Scheduler::lr`] gives the learning rate of each optimizer step.
//!
//! Every count in this crate is in optimizer steps (one update after `grad_accum` micro-batches),
//! never in the micro-steps the original's UI showed; `docs/schedules.md` explains the conventions and
//! how the FP schedules' crashes and degenerate cases are fixed.
//!
//! ```
//! use schedulers::{PlanInput, Schedule, Scheduler, StepPlan, Warmup, Warning};
//!
//! let plan = StepPlan::new(PlanInput {
//!     blocks: 10,
//!     batch_size: 4,
//!     grad_accum: 8, // too high for 10 blocks: lowered to 2
//!     epochs: 3.0,
//!     warmup: Warmup::Steps(1),
//!     max_steps: None, // Some(n): exactly n optimizer steps, whatever `epochs` says
//! })?;
//! assert_eq!((plan.grad_accum, plan.steps_per_epoch, plan.total_steps), (2, 1, 3));
//! assert!(matches!(plan.warnings[0], Warning::GradAccumLowered { used: 2, .. }));
//!
//! let schedule: Schedule = "linear".parse()?;
//! let sched = Scheduler::new(schedule, plan.horizon(), 3e-4)?;
//! assert_eq!(sched.multipliers(), vec![0.0, 1.0, 0.5, 0.0]);
//! assert_eq!(sched.lr(2), 1.5e-4);
//! # Ok::<(), schedulers::Error>(())
//! ```

mod curves;
mod error;
mod horizon;
mod plan;
mod schedule;
mod scheduler;
mod warning;

pub use error::Error;
pub use horizon::Horizon;
pub use plan::{PlanInput, StepPlan, Warmup};
pub use schedule::Schedule;
pub use scheduler::Scheduler;
pub use warning::Warning;

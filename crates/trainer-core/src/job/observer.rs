//! What a running job tells its caller ([`Observer`]), and how the caller stops it ([`Interrupter`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use checkpoint_policy::{SaveReason, StopReason};
use plot_report::{ControlRecord, ControlResult, LogRecord};

use crate::evaluate::EvalStats;
use crate::job::control::ControlCommand;

/// What an observer asks of the job after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flow {
    /// Go on.
    #[default]
    Continue,
    /// Stop after the current step, as a user's stop does (the final adapter is saved; a resumable
    /// checkpoint only when a rule saves one at that step).
    Stop,
}

/// The start of a run: where it starts and how long it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// Optimizer steps already done (0 for a new run, the checkpoint's step when resuming).
    pub step: u64,
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    /// The checkpoint resumed from.
    pub resumed_from: Option<PathBuf>,
}

/// A checkpoint the job saved.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved<'a> {
    /// Its name (`checkpoint-12-epoch-1`, ...).
    pub name: &'a str,
    /// Where the store put it.
    pub path: &'a Path,
    /// The optimizer steps it holds.
    pub step: u64,
    /// The rule that saved it.
    pub reason: SaveReason,
}

/// What became of a live-control command (see [`ControlSource`](crate::job::ControlSource)).
#[derive(Debug, Clone, PartialEq)]
pub enum ControlOutcome {
    /// Applied to this step's decisions.
    Applied(ControlCommand),
    /// Refused (an unknown key or a bad value for `set`); the run goes on unchanged.
    Rejected {
        /// The command.
        command: ControlCommand,
        /// Why.
        reason: String,
    },
    /// A line of the control input that is not a command; skipped.
    Unreadable {
        /// What was wrong with it.
        reason: String,
    },
}

impl ControlOutcome {
    /// The outcome as the training log records it.
    pub fn log_record(&self) -> ControlRecord {
        let (command, outcome, reason) = match self {
            ControlOutcome::Applied(c) => (Some(c), ControlResult::Applied, None),
            ControlOutcome::Rejected { command, reason } => {
                (Some(command), ControlResult::Rejected, Some(reason.clone()))
            }
            ControlOutcome::Unreadable { reason } => {
                (None, ControlResult::Unreadable, Some(reason.clone()))
            }
        };
        ControlRecord {
            command: command.map(|c| c.name().to_string()),
            assignment: command.and_then(|c| match c {
                ControlCommand::Set { assignment } => Some(assignment.clone()),
                _ => None,
            }),
            outcome,
            reason,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// All planned steps were trained.
    Finished,
    /// A rule (`stop_at_loss`, `stop_at_epoch`) or a user's stop (control input, an observer) ended it.
    Stopped(StopReason),
    /// The [`Interrupter`] ended it; a resumable checkpoint of the last step was saved.
    Interrupted,
}

/// What [`Job::run`](crate::job::Job::run) returns: how the run ended and where things are.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// How it ended.
    pub end: End,
    /// Optimizer steps done.
    pub step: u64,
    /// Optimizer steps planned.
    pub total_steps: u64,
    /// The loss of the last step (NaN when no step ran).
    pub loss: f64,
    /// Where the final adapter was saved.
    pub adapter: PathBuf,
    /// The newest checkpoint saved by this run (for an interrupted run: the one to resume from).
    pub last_checkpoint: Option<PathBuf>,
}

/// Receives what a job does, as it does it; every method has a default that does nothing. The job calls
/// the observer on its own thread, between steps; returning [`Flow::Stop`] stops the run after the step.
///
/// The command line's progress bar, JSON lines and graph are one observer; a web UI would forward the
/// calls to its clients, a TensorBoard writer would record them.
pub trait Observer {
    /// The run starts (after a resume was accepted).
    fn on_start(&mut self, _start: &Start) {}

    /// One optimizer step is done, decided on and logged: `record` is the line appended to the training log
    /// (with `checkpoint` set when a checkpoint of this step was saved, and `eval_loss` when it was evaluated).
    fn on_step(&mut self, _record: &LogRecord) -> Flow {
        Flow::Continue
    }

    /// The eval set was scored after optimizer step `step`.
    fn on_eval(&mut self, _step: u64, _eval: &EvalStats) -> Flow {
        Flow::Continue
    }

    /// A checkpoint was saved.
    fn on_checkpoint(&mut self, _saved: &Saved<'_>) {}

    /// The retention rules deleted a checkpoint.
    fn on_checkpoint_deleted(&mut self, _name: &str) {}

    /// A live-control command was applied, refused or could not be read.
    fn on_control(&mut self, _outcome: &ControlOutcome) {}

    /// The run ended (the final adapter is saved). Not called when the run fails with an error.
    fn on_finish(&mut self, _report: &Report) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Observer for Silent {}

/// Stops a running job from another thread or a signal handler: the job finishes the step in progress,
/// saves a resumable checkpoint of it (`checkpoint-N-user`) and the final adapter, and returns
/// [`End::Interrupted`]. Cloning shares the flag.
#[derive(Debug, Clone, Default)]
pub struct Interrupter(Arc<AtomicBool>);

impl Interrupter {
    /// A flag that is not raised.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the flag.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the flag is raised.
    pub fn should_stop(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

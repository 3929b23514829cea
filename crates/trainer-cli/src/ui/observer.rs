//! The job observer that feeds a run's page, and the pieces that let the command line's observer and control
//! file work beside it.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use plot_report::LogRecord;
use serde_json::{json, Value};
use trainer_core::job::{
    ControlCommand, ControlOutcome, ControlSource, End, Flow, Observer, Report, Saved, Start,
    LOG_FILE,
};
use trainer_core::EvalStats;

use super::hub::Hub;

/// Forwards every job event to the page's [`Hub`].
pub struct UiObserver {
    hub: Arc<Hub>,
    log: PathBuf,
}

impl UiObserver {
    /// An observer pushing into `hub` the events of a run writing into `output`.
    pub fn new(hub: Arc<Hub>, output: &Path) -> Self {
        Self {
            hub,
            log: output.join(LOG_FILE),
        }
    }
}

/// A number for JSON: non-finite values (a diverged loss) become null.
fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

fn command_json(c: &ControlCommand) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

/// How a run ended, in words (the same words as the command line's last line).
pub fn end_text(end: End) -> String {
    match end {
        End::Finished => "finished: all steps done".into(),
        End::Interrupted => "interrupted: a resumable checkpoint was saved".into(),
        End::Stopped(reason) => format!("stopped: {reason}"),
    }
}

impl Observer for UiObserver {
    fn on_start(&mut self, start: &Start) {
        // A resumed run: the steps before the checkpoint are in the log already; the page shows them too.
        if start.step > 0 {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            for line in log.lines() {
                for (kind, fields) in super::runs::log_line_events(line) {
                    let done = fields
                        .get("step")
                        .and_then(Value::as_u64)
                        .unwrap_or(u64::MAX);
                    if done <= start.step {
                        self.hub.push(kind, fields);
                    }
                }
            }
        }
        self.hub.push(
            "start",
            json!({
                "step": start.step,
                "total_steps": start.total_steps,
                "resumed_from": start.resumed_from.as_ref().map(|p| p.display().to_string()),
            }),
        );
    }

    fn on_step(&mut self, r: &LogRecord) -> Flow {
        let opt = |x: Option<f64>| x.map_or(Value::Null, num);
        self.hub.push(
            "step",
            json!({
                "step": r.step,
                "epoch": num(r.epoch),
                "loss": opt(r.loss),
                "lr": opt(r.lr),
                "eval_loss": opt(r.eval_loss),
                "grad_norm": opt(r.grad_norm),
                "tokens_per_s": opt(r.tokens_per_s),
                "time_s": opt(r.time_s),
                "checkpoint": r.checkpoint,
            }),
        );
        Flow::Continue
    }

    fn on_eval(&mut self, step: u64, eval: &EvalStats) -> Flow {
        self.hub.push(
            "eval",
            json!({"step": step, "loss": num(eval.loss), "tokens": eval.tokens, "samples": eval.samples}),
        );
        Flow::Continue
    }

    fn on_checkpoint(&mut self, saved: &Saved<'_>) {
        self.hub.push(
            "checkpoint",
            json!({
                "name": saved.name,
                "step": saved.step,
                "reason": format!("{:?}", saved.reason).to_lowercase(),
            }),
        );
    }

    fn on_checkpoint_deleted(&mut self, name: &str) {
        self.hub.push("checkpoint_deleted", json!({ "name": name }));
    }

    fn on_control(&mut self, outcome: &ControlOutcome) {
        let v = match outcome {
            ControlOutcome::Applied(c) => json!({"outcome": "applied", "command": command_json(c)}),
            ControlOutcome::Rejected { command, reason } => {
                json!({"outcome": "rejected", "command": command_json(command), "reason": reason})
            }
            ControlOutcome::Unreadable { reason } => {
                json!({"outcome": "unreadable", "reason": reason})
            }
        };
        self.hub.push("control", v);
    }

    fn on_finish(&mut self, report: &Report) {
        self.hub.push(
            "finish",
            json!({
                "end": end_text(report.end),
                "step": report.step,
                "total_steps": report.total_steps,
                "loss": num(report.loss),
                "adapter": report.adapter.display().to_string(),
            }),
        );
    }
}

/// Two observers as one: both see every event; either may stop the run.
pub struct Both<A, B>(pub A, pub B);

impl<A: Observer, B: Observer> Observer for Both<A, B> {
    fn on_start(&mut self, s: &Start) {
        self.0.on_start(s);
        self.1.on_start(s);
    }
    fn on_step(&mut self, r: &LogRecord) -> Flow {
        let (a, b) = (self.0.on_step(r), self.1.on_step(r));
        if a == Flow::Stop || b == Flow::Stop {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
    fn on_eval(&mut self, step: u64, e: &EvalStats) -> Flow {
        let (a, b) = (self.0.on_eval(step, e), self.1.on_eval(step, e));
        if a == Flow::Stop || b == Flow::Stop {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
    fn on_checkpoint(&mut self, s: &Saved<'_>) {
        self.0.on_checkpoint(s);
        self.1.on_checkpoint(s);
    }
    fn on_checkpoint_deleted(&mut self, name: &str) {
        self.0.on_checkpoint_deleted(name);
        self.1.on_checkpoint_deleted(name);
    }
    fn on_control(&mut self, o: &ControlOutcome) {
        self.0.on_control(o);
        self.1.on_control(o);
    }
    fn on_finish(&mut self, r: &Report) {
        self.0.on_finish(r);
        self.1.on_finish(r);
    }
}

/// The control file and the page's channel as one source (the file's commands first).
pub struct BothSources<A>(pub A, pub Receiver<ControlCommand>);

impl<A: ControlSource> ControlSource for BothSources<A> {
    fn poll(&mut self) -> Vec<Result<ControlCommand, String>> {
        let mut v = self.0.poll();
        v.extend(self.1.poll());
        v
    }
}

//! The training log: `training_log.jsonl`, one JSON object per optimizer step or event.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;

/// One line of `training_log.jsonl`.
///
/// Written by the trainer (see [`LogRecord::to_json_line`]) and read by
/// [`read_log`]. Only `step` and `epoch` are required; unknown fields are
/// ignored on read, so the format can grow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Optimizer steps done.
    pub step: u64,
    /// Fractional epoch (0 at the start, 1.0 after one pass over the data).
    pub epoch: f64,
    /// Training loss of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning rate used by the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Evaluation loss, when an evaluation ran at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Training throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Name of a checkpoint written at this step, e.g. `checkpoint-12-loss-1_62`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Seconds since the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_s: Option<f64>,
    /// Live-control commands handled after this step, in the order they arrived, with what the run did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control: Vec<ControlRecord>,
}

/// A live-control command as the training log records it: `{"command":"save-now","outcome":"applied"}`,
/// `{"command":"set","assignment":"stop_at_loss=1.5","outcome":"applied"}`,
/// `{"command":"set","assignment":"rank=2","outcome":"rejected","reason":"..."}`,
/// `{"outcome":"unreadable","reason":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRecord {
    /// `save-now`, `stop` or `set` (absent for an input that was not a command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The `KEY=VALUE` of a `set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<String>,
    /// What the run did with it.
    pub outcome: ControlResult,
    /// Why it was rejected or unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What became of a live-control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlResult {
    /// Applied at this step.
    Applied,
    /// Refused (an unknown key or a bad value); the run went on unchanged.
    Rejected,
    /// Not a command; skipped.
    Unreadable,
}

impl ControlRecord {
    fn check(&self, i: usize) -> Result<(), String> {
        let at = format!("`control[{i}]`");
        match (self.outcome, &self.command, &self.reason) {
            (ControlResult::Unreadable, Some(_), _) => {
                Err(format!("{at} is unreadable but names a `command`"))
            }
            (ControlResult::Applied | ControlResult::Rejected, None, _) => {
                Err(format!("{at} has no `command`"))
            }
            (ControlResult::Rejected | ControlResult::Unreadable, _, None) => {
                Err(format!("{at} has no `reason`"))
            }
            _ if self.assignment.is_some() != (self.command.as_deref() == Some("set")) => Err(
                format!("{at}: an `assignment` belongs to a `set` command, and a `set` needs one"),
            ),
            _ => Ok(()),
        }
    }
}

impl LogRecord {
    /// The record as one JSON line, newline included, ready to append to the log.
    ///
    /// Non-finite numbers (a diverged loss) are written as `null`, which reads back as absent.
    #[must_use]
    pub fn to_json_line(&self) -> String {
        // Only strings and numbers: serialising cannot fail.
        let mut line = serde_json::to_string(self).expect("LogRecord is plain JSON data");
        line.push('\n');
        line
    }

    fn check(&self) -> Result<(), String> {
        if !(self.epoch.is_finite() && self.epoch >= 0.0) {
            return Err(format!("`epoch` is {}, expected a number >= 0", self.epoch));
        }
        for (field, value) in [
            ("lr", self.lr),
            ("loss", self.loss),
            ("eval_loss", self.eval_loss),
            ("grad_norm", self.grad_norm),
        ] {
            if let Some(v) = value.filter(|v| *v < 0.0) {
                return Err(format!("`{field}` is {v}, expected a number >= 0"));
            }
        }
        for (i, c) in self.control.iter().enumerate() {
            c.check(i)?;
        }
        Ok(())
    }
}

/// A whole training log, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunLog {
    /// The records, one per non-blank line.
    pub records: Vec<LogRecord>,
}

impl RunLog {
    /// Parses the text of a log; `origin` names it in errors (e.g. the file name).
    ///
    /// Blank lines are skipped; any other line that is not a valid record is an
    /// error naming its 1-based line number.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        let mut records = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| Error::BadLine {
                origin: origin.to_owned(),
                line: i + 1,
                message,
            };
            let record: LogRecord = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            record.check().map_err(bad)?;
            records.push(record);
        }
        Ok(RunLog { records })
    }
}

impl RunLog {
    /// The run as it finally happened: when a resumed run repeats steps (it
    /// went on from a checkpoint older than the last logged step), the
    /// records of the abandoned steps are dropped and the repeat kept.
    #[must_use]
    pub fn timeline(&self) -> RunLog {
        let mut kept: Vec<LogRecord> = Vec::with_capacity(self.records.len());
        for r in &self.records {
            if kept.last().is_some_and(|last| r.step < last.step) {
                let cut = kept.partition_point(|k| k.step < r.step);
                kept.truncate(cut);
            }
            kept.push(r.clone());
        }
        RunLog { records: kept }
    }
}

impl From<Vec<LogRecord>> for RunLog {
    fn from(records: Vec<LogRecord>) -> Self {
        RunLog { records }
    }
}

/// Reads `training_log.jsonl`; a bad line is an error naming the file and line number.
pub fn read_log(path: impl AsRef<Path>) -> Result<RunLog, Error> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        action: "cannot read training log",
        path: path.to_owned(),
        source,
    })?;
    RunLog::parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timeline_drops_steps_abandoned_by_a_resume() {
        let rec = |step: u64, loss: f64| LogRecord {
            step,
            epoch: step as f64 / 10.0,
            loss: Some(loss),
            ..LogRecord::default()
        };
        // Steps 1..=5 logged, then a resume from the step-3 checkpoint repeats 4 and 5.
        let log = RunLog::from(vec![
            rec(1, 3.0),
            rec(2, 2.9),
            rec(3, 2.8),
            rec(4, 2.7),
            rec(5, 2.6),
            rec(4, 2.75),
            rec(5, 2.65),
            rec(6, 2.5),
        ]);
        let t = log.timeline();
        let steps: Vec<u64> = t.records.iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(t.records[3].loss, Some(2.75));
        // Several records of one step (a step and its checkpoint event) are kept.
        let same = RunLog::from(vec![rec(1, 3.0), rec(1, 3.0), rec(2, 2.0)]);
        assert_eq!(same.timeline().records.len(), 3);
    }

    #[test]
    fn parses_the_documented_format_and_ignores_unknown_fields() {
        let text = concat!(
            r#"{"step": 1, "epoch": 0.01, "loss": 2.5, "lr": 3e-4, "grad_norm": 1.2, "tokens_per_s": 900.5, "time_s": 1.5, "new_field": [1]}"#,
            "\n\n",
            r#"{"step": 12, "epoch": 0.12, "eval_loss": 2.1, "checkpoint": "checkpoint-12-loss-1.62"}"#,
            "\n",
        );
        let log = RunLog::parse(text, "t").unwrap();
        assert_eq!(log.records.len(), 2);
        assert_eq!(log.records[0].lr, Some(3e-4));
        assert_eq!(log.records[1].loss, None);
        assert_eq!(
            log.records[1].checkpoint.as_deref(),
            Some("checkpoint-12-loss-1.62")
        );
    }

    #[test]
    fn control_outcomes_read_and_write_as_documented() {
        let text = concat!(
            r#"{"step":3,"epoch":0.3,"control":[{"command":"set","assignment":"rank=2","outcome":"rejected","reason":"cannot be changed"},"#,
            r#"{"command":"save-now","outcome":"applied"},{"outcome":"unreadable","reason":"not json"}]}"#,
            "\n"
        );
        let log = RunLog::parse(text, "t").unwrap();
        let c = &log.records[0].control;
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].assignment.as_deref(), Some("rank=2"));
        assert_eq!(
            (c[1].command.as_deref(), c[1].outcome),
            (Some("save-now"), ControlResult::Applied)
        );
        assert_eq!(
            (c[2].command.as_ref(), c[2].outcome),
            (None, ControlResult::Unreadable)
        );
        assert_eq!(log.records[0].to_json_line(), text);
        // A step without control commands writes no `control` field.
        assert!(!LogRecord::default().to_json_line().contains("control"));
    }

    #[test]
    fn bad_lines_are_named() {
        let cases = [
            ("{\"step\": 1, \"epoch\": 0}\n{\"step\": 2}\n", 2, "epoch"),
            (
                "{\"step\": 1, \"epoch\": 0}\n\n{\"step\": 2, \"epoch\": 0.1, \"loss\": \"x\"}",
                3,
                "invalid type",
            ),
            ("{\"step\": -1, \"epoch\": 0}", 1, "invalid value"),
            ("{\"step\": 1, \"epoch\": -0.5}", 1, "`epoch` is -0.5"),
            ("{\"step\": 1, \"epoch\": 0, \"lr\": -1}", 1, "`lr` is -1"),
            ("{\"step\": 1, \"epoch\": 0, \"loss\": 1.2", 1, "EOF"),
            (
                r#"{"step": 1, "epoch": 0, "control": [{"outcome": "applied"}]}"#,
                1,
                "`control[0]` has no `command`",
            ),
            (
                r#"{"step": 1, "epoch": 0, "control": [{"command": "set", "outcome": "rejected"}]}"#,
                1,
                "`control[0]` has no `reason`",
            ),
            (
                r#"{"step": 1, "epoch": 0, "control": [{"command": "stop", "assignment": "x=1", "outcome": "applied"}]}"#,
                1,
                "`assignment` belongs to a `set`",
            ),
            (
                r#"{"step": 1, "epoch": 0, "control": [{"command": "stop", "outcome": "done"}]}"#,
                1,
                "unknown variant",
            ),
        ];
        for (text, line, want) in cases {
            match RunLog::parse(text, "log.jsonl") {
                Err(e @ Error::BadLine { line: l, .. }) => {
                    assert_eq!(l, line, "{e}");
                    let msg = e.to_string();
                    assert!(msg.contains(want) && msg.contains("log.jsonl"), "{msg}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    fn opt() -> impl Strategy<Value = Option<f64>> {
        proptest::option::of(0.0f64..1e6)
    }

    proptest! {
        #[test]
        fn records_round_trip_through_lines(
            recs in proptest::collection::vec(
                (any::<u64>(), 0.0f64..1e3, opt(), opt(), opt(), opt(), proptest::option::of("[a-z0-9_-]{1,20}")),
                0..20,
            )
        ) {
            let records: Vec<LogRecord> = recs
                .into_iter()
                .map(|(step, epoch, loss, lr, eval_loss, time_s, checkpoint)| LogRecord {
                    step, epoch, loss, lr, eval_loss, time_s, checkpoint, ..Default::default()
                })
                .collect();
            let text: String = records.iter().map(LogRecord::to_json_line).collect();
            prop_assert_eq!(text.lines().count(), records.len());
            prop_assert_eq!(RunLog::parse(&text, "p").unwrap(), RunLog::from(records));
        }
    }

    #[test]
    fn non_finite_values_are_written_as_null_and_read_as_absent() {
        let r = LogRecord {
            step: 3,
            epoch: 0.5,
            loss: Some(f64::NAN),
            ..Default::default()
        };
        let line = r.to_json_line();
        assert!(line.contains("\"loss\":null"), "{line}");
        assert_eq!(RunLog::parse(&line, "p").unwrap().records[0].loss, None);
    }
}

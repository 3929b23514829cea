//! Live control of a running job, the headless form of the original's buttons: `save-now`, `stop` and
//! `set KEY=VALUE`, read from a [`ControlSource`] after every optimizer step. [`ControlFile`] reads them
//! from `control.jsonl` in the output folder (where `trainer-cli control` appends them); a channel's
//! receiver is a source too (a server thread sends them).

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use checkpoint_policy::{LossSave, Policy};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::store::CONTROL_FILE;

/// A live-control command, as one JSON line: `{"command":"save-now"}`, `{"command":"stop"}`,
/// `{"command":"set","assignment":"stop_at_loss=1.5"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum ControlCommand {
    /// Save a checkpoint after the current step (`checkpoint-N-user`).
    SaveNow,
    /// Stop after the current step (the final adapter is saved).
    Stop,
    /// Change a setting for the rest of the run: `KEY=VALUE` (see [`Change::parse`]).
    Set {
        /// `KEY=VALUE`.
        assignment: String,
    },
}

impl ControlCommand {
    /// The command's name, as in its JSON line: `save-now`, `stop` or `set`.
    pub fn name(&self) -> &'static str {
        match self {
            ControlCommand::SaveNow => "save-now",
            ControlCommand::Stop => "stop",
            ControlCommand::Set { .. } => "set",
        }
    }
}

/// A validated `set`: the settings a run may change while it goes (0 turns each off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// `stop_at_loss`.
    StopAtLoss(f64),
    /// `stop_at_epoch`.
    StopAtEpoch(u64),
    /// `save_every`.
    SaveEvery(u64),
    /// `save_under_loss`.
    SaveUnderLoss(f64),
}

/// The keys `set` accepts.
pub const CHANGEABLE: [&str; 4] = [
    "stop_at_loss",
    "stop_at_epoch",
    "save_every",
    "save_under_loss",
];

impl Change {
    /// Parses `KEY=VALUE`; an error names the key ([`Error::Setting`]).
    pub fn parse(assignment: &str) -> Result<Change> {
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(Error::setting(
                assignment.trim(),
                format!("`{assignment}` is not KEY=VALUE (e.g. stop_at_loss=1.5)"),
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        let float = || -> Result<f64> {
            match value.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(Error::setting(
                    key,
                    format!("`{value}` is not a finite number >= 0"),
                )),
            }
        };
        let int = || -> Result<u64> {
            value
                .parse()
                .map_err(|_| Error::setting(key, format!("`{value}` is not a whole number >= 0")))
        };
        Ok(match key {
            "stop_at_loss" => Change::StopAtLoss(float()?),
            "stop_at_epoch" => Change::StopAtEpoch(int()?),
            "save_every" => Change::SaveEvery(int()?),
            "save_under_loss" => Change::SaveUnderLoss(float()?),
            _ => {
                return Err(Error::setting(
                    key,
                    format!(
                        "cannot be changed during a run; these can: {}",
                        CHANGEABLE.join(", ")
                    ),
                ))
            }
        })
    }

    /// Applies the change to `policy`; `loss_rule` is the loss-save rule a `save_under_loss` turns on when the
    /// run has none yet.
    pub(crate) fn apply(self, policy: &mut Policy, loss_rule: LossSave) -> Result<()> {
        let mut s = policy.settings().clone();
        match self {
            Change::StopAtLoss(v) => s.stop_at_loss = (v > 0.0).then_some(v),
            Change::StopAtEpoch(v) => s.stop_at_epoch = (v > 0).then_some(v),
            Change::SaveEvery(v) => s.save_every = (v > 0).then_some(v),
            Change::SaveUnderLoss(v) => {
                s.loss_save = (v > 0.0).then(|| LossSave {
                    threshold: v,
                    ..s.loss_save.unwrap_or(loss_rule)
                });
            }
        }
        Ok(policy.update(s)?)
    }
}

/// Where a job reads live-control commands from, after every optimizer step.
pub trait ControlSource {
    /// The commands that arrived since the last poll, in order; an input that is not a command is an
    /// `Err` with the reason (the job reports it and goes on).
    fn poll(&mut self) -> Vec<std::result::Result<ControlCommand, String>>;
}

impl ControlSource for Receiver<ControlCommand> {
    fn poll(&mut self) -> Vec<std::result::Result<ControlCommand, String>> {
        self.try_iter().map(Ok).collect()
    }
}

/// Reads the commands appended to an output folder's `control.jsonl`.
#[derive(Debug)]
pub struct ControlFile {
    path: PathBuf,
    offset: u64,
}

impl ControlFile {
    /// Starts reading `dir`'s control file at its current end: commands queued before the run started are
    /// not replayed.
    pub fn new(dir: &Path) -> Self {
        let path = dir.join(CONTROL_FILE);
        let offset = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Self { path, offset }
    }

    /// Appends `command` as one line to `dir`'s control file, for the run that reads it.
    pub fn send(dir: &Path, command: &ControlCommand) -> Result<PathBuf> {
        if let ControlCommand::Set { assignment } = command {
            Change::parse(assignment)?;
        }
        let path = dir.join(CONTROL_FILE);
        let line = serde_json::to_string(command)
            .map_err(|e| Error::input("command", e.to_string()))?
            + "\n";
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }
}

impl ControlSource for ControlFile {
    /// New complete lines; a partly written last line waits for the next poll.
    fn poll(&mut self) -> Vec<std::result::Result<ControlCommand, String>> {
        let Ok(mut f) = fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut buf = String::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_string(&mut buf).is_err() {
            return Vec::new();
        }
        let complete = buf.rfind('\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        buf[..complete]
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                serde_json::from_str::<ControlCommand>(line)
                    .map_err(|e| format!("ignored control line {line:?}: {e}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_parses_known_keys_and_names_the_key_it_refuses() {
        assert_eq!(
            Change::parse("stop_at_loss=1.5").unwrap(),
            Change::StopAtLoss(1.5)
        );
        assert_eq!(
            Change::parse("stop_at_epoch = 3").unwrap(),
            Change::StopAtEpoch(3)
        );
        match Change::parse("rank=4").unwrap_err() {
            Error::Setting { field, message } => {
                assert_eq!(field, "rank");
                assert!(message.contains("cannot be changed"), "{message}");
            }
            e => panic!("{e}"),
        }
        assert!(Change::parse("stop_at_loss=nan").is_err());
        assert!(Change::parse("stop_at_loss").is_err());
    }

    #[test]
    fn the_file_reader_sees_only_new_complete_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(CONTROL_FILE);
        fs::write(&p, "{\"command\":\"stop\"}\n").unwrap();
        let mut r = ControlFile::new(d.path());
        assert!(r.poll().is_empty());
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"command\":\"save-now\"}\nnot json\n{\"command\":\"set\",\"assign")
            .unwrap();
        let got = r.poll();
        assert_eq!(got[0], Ok(ControlCommand::SaveNow));
        assert!(got[1].as_ref().unwrap_err().contains("not json"));
        f.write_all(b"ment\":\"stop_at_epoch=2\"}\n").unwrap();
        let set = ControlCommand::Set {
            assignment: "stop_at_epoch=2".into(),
        };
        assert_eq!(r.poll(), vec![Ok(set.clone())]);
        ControlFile::send(d.path(), &set).unwrap();
        assert_eq!(r.poll(), vec![Ok(set)]);
        let bad = ControlCommand::Set {
            assignment: "rank=2".into(),
        };
        assert!(ControlFile::send(d.path(), &bad).is_err());
    }
}

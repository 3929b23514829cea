//! Live control of a running `train`, the headless form of the original's
//! buttons: `trainer-cli control DIR save-now | stop | set KEY=VALUE`.
//!
//! Commands are appended as JSON lines to `DIR/control.jsonl`; the run reads
//! the lines added since it started before each optimizer step.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::output::{CONTROL_FILE, PARAMETERS_FILE};

/// Arguments of `trainer-cli control`.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The output folder of the running training.
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: ControlCommand,
}

/// A live-control command.
#[derive(Debug, Clone, PartialEq, Subcommand, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum ControlCommand {
    /// Save a checkpoint after the current step (`checkpoint-N-user`).
    SaveNow,
    /// Stop after the current step (the final adapter is saved).
    Stop,
    /// Change a setting: stop_at_loss=X, stop_at_epoch=N, save_every=N, save_under_loss=X.
    Set {
        /// KEY=VALUE.
        assignment: String,
    },
}

/// A validated `set`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// Stop at this loss (0 = off).
    StopAtLoss(f64),
    /// Stop at this epoch (0 = off).
    StopAtEpoch(u64),
    /// Periodic save interval (0 = off).
    SaveEvery(u64),
    /// Loss-save threshold (0 = off).
    SaveUnderLoss(f64),
}

/// Parses `KEY=VALUE` of `control set`.
pub fn parse_change(assignment: &str) -> Result<Change> {
    let Some((key, value)) = assignment.split_once('=') else {
        bail!("`{assignment}` is not KEY=VALUE (e.g. stop_at_loss=1.5)");
    };
    let (key, value) = (key.trim(), value.trim());
    let float = || -> Result<f64> {
        let v: f64 = value
            .parse()
            .with_context(|| format!("{key}: `{value}` is not a number"))?;
        if !v.is_finite() || v < 0.0 {
            bail!("{key}: give a finite number >= 0, not {value}");
        }
        Ok(v)
    };
    let int = || -> Result<u64> {
        value
            .parse()
            .with_context(|| format!("{key}: `{value}` is not a whole number >= 0"))
    };
    Ok(match key {
        "stop_at_loss" => Change::StopAtLoss(float()?),
        "stop_at_epoch" => Change::StopAtEpoch(int()?),
        "save_every" => Change::SaveEvery(int()?),
        "save_under_loss" => Change::SaveUnderLoss(float()?),
        _ => bail!(
            "`{key}` cannot be changed during a run; these can: stop_at_loss, stop_at_epoch, save_every, save_under_loss"
        ),
    })
}

/// Runs `trainer-cli control`.
pub fn run(args: &ControlArgs) -> Result<ExitCode> {
    if !args.dir.join(PARAMETERS_FILE).is_file() {
        bail!(
            "{} is not the output folder of a training run (it has no {PARAMETERS_FILE}): give the --output of the running train",
            args.dir.display()
        );
    }
    if let ControlCommand::Set { assignment } = &args.command {
        parse_change(assignment)?;
    }
    let line = serde_json::to_string(&args.command)? + "\n";
    let path = args.dir.join(CONTROL_FILE);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(line.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "queued {}; the run applies it before its next step",
        line.trim()
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads the commands appended to `control.jsonl` since the last read.
pub struct ControlReader {
    path: PathBuf,
    offset: u64,
}

impl ControlReader {
    /// Starts reading at the current end of the file: commands queued before
    /// the run started are not replayed.
    pub fn new(dir: &Path) -> Self {
        let path = dir.join(CONTROL_FILE);
        let offset = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Self { path, offset }
    }

    /// New complete lines, parsed; a line that does not parse is reported
    /// in the returned errors and skipped.
    pub fn poll(&mut self) -> (Vec<ControlCommand>, Vec<String>) {
        let mut cmds = Vec::new();
        let mut errors = Vec::new();
        let Ok(mut f) = fs::File::open(&self.path) else {
            return (cmds, errors);
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return (cmds, errors);
        }
        let mut buf = String::new();
        if f.read_to_string(&mut buf).is_err() {
            return (cmds, errors);
        }
        let complete = buf.rfind('\n').map_or(0, |i| i + 1);
        for line in buf[..complete].lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<ControlCommand>(line) {
                Ok(c) => cmds.push(c),
                Err(e) => errors.push(format!("ignored control line {line:?}: {e}")),
            }
        }
        self.offset += complete as u64;
        (cmds, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_parses_known_keys_and_rejects_others() {
        assert_eq!(
            parse_change("stop_at_loss=1.5").unwrap(),
            Change::StopAtLoss(1.5)
        );
        assert_eq!(
            parse_change("stop_at_epoch = 3").unwrap(),
            Change::StopAtEpoch(3)
        );
        assert!(parse_change("rank=4")
            .unwrap_err()
            .to_string()
            .contains("cannot be changed"));
        assert!(parse_change("stop_at_loss=nan").is_err());
        assert!(parse_change("stop_at_loss").is_err());
    }

    #[test]
    fn reader_sees_only_new_complete_lines() {
        let d = std::env::temp_dir().join(format!("trainer-cli-control-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let p = d.join(CONTROL_FILE);
        fs::write(&p, "{\"command\":\"stop\"}\n").unwrap();
        let mut r = ControlReader::new(&d);
        assert!(r.poll().0.is_empty());
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"command\":\"save-now\"}\n{\"command\":\"set\",\"assign")
            .unwrap();
        assert_eq!(r.poll().0, vec![ControlCommand::SaveNow]);
        f.write_all(b"ment\":\"stop_at_epoch=2\"}\n").unwrap();
        assert_eq!(
            r.poll().0,
            vec![ControlCommand::Set {
                assignment: "stop_at_epoch=2".into()
            }]
        );
        fs::remove_dir_all(&d).unwrap();
    }
}

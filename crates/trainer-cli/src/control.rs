//! `trainer-cli control DIR save-now | stop | set KEY=VALUE`: steer a running `train` through its output
//! folder's control file (`trainer_core::job::ControlFile`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use trainer_core::job::{ControlCommand, ControlFile, PARAMETERS_FILE};

/// Arguments of `trainer-cli control`.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The output folder of the running training.
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// A live-control command.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
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

/// Runs `trainer-cli control`.
pub fn run(args: &ControlArgs) -> Result<ExitCode> {
    if !args.dir.join(PARAMETERS_FILE).is_file() {
        bail!(
            "{} is not the output folder of a training run (it has no {PARAMETERS_FILE}): give the --output of the running train",
            args.dir.display()
        );
    }
    let command = match &args.command {
        Command::SaveNow => ControlCommand::SaveNow,
        Command::Stop => ControlCommand::Stop,
        Command::Set { assignment } => ControlCommand::Set {
            assignment: assignment.clone(),
        },
    };
    ControlFile::send(&args.dir, &command)?;
    eprintln!(
        "queued {}; the run applies it after its current step",
        serde_json::to_string(&command)?
    );
    Ok(ExitCode::SUCCESS)
}

//! `train` as one of several processes that `mpirun` started for one job (data parallel, feature
//! `distributed`): the flag, how a process finds out how many were started, and the hand-over of rank 0's
//! choices to the others.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use trainer_core::job::Collective;

/// Flags of a job run over several processes.
#[derive(Args, Debug, Clone)]
pub struct RankFlags {
    /// Under mpirun (a build with the `distributed` feature): seconds one process waits for the others at one
    /// point of a step before the whole job is stopped with an error. Process 0 evaluates and saves checkpoints
    /// while the others wait: keep it above the time those take.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 1800,
        value_parser = clap::value_parser!(u64).range(1..),
        hide = !cfg!(feature = "distributed")
    )]
    pub collective_timeout: u64,
}

impl Default for RankFlags {
    fn default() -> Self {
        RankFlags {
            collective_timeout: 1800,
        }
    }
}

impl RankFlags {
    /// `--collective-timeout` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.collective_timeout)
    }
}

/// How many processes the launcher started for this job, from the variables Open MPI, MPICH (Hydra) and
/// PMIx launchers set; 1 when there is no launcher.
pub fn launched_size() -> usize {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(1)
}

/// Refuses to run as one of several processes in a build that cannot join them: each would train alone into
/// the same output folder.
#[cfg(not(feature = "distributed"))]
pub fn refuse_unjoined(size: usize) -> Result<()> {
    if size > 1 {
        bail!(
            "this process is one of {size} that mpirun started, but this trainer-cli was built without the \
             `distributed` feature, so each would train alone into the same folder: build it with \
             `cargo build --release -p trainer-cli --features distributed` (needs an MPI library and libclang), \
             or run it without mpirun"
        );
    }
    Ok(())
}

/// Rank 0's resume checkpoint, sent to every rank: the others use the folder rank 0 chose (after it cleaned
/// up what a killed run left), never one they picked themselves.
pub fn share_resume_dir(
    c: &dyn Collective,
    mine: Option<PathBuf>,
    timeout: Duration,
) -> Result<PathBuf> {
    let mut bytes = match &mine {
        Some(dir) => dir
            .to_str()
            .with_context(|| {
                format!(
                    "--resume: {} is not valid UTF-8: a job over several processes needs a UTF-8 path",
                    dir.display()
                )
            })?
            .as_bytes()
            .to_vec(),
        None => Vec::new(),
    };
    c.broadcast(&mut bytes, timeout)?;
    let dir = String::from_utf8(bytes)
        .context("process 0 sent an unreadable checkpoint path: the processes are out of step")?;
    if dir.is_empty() {
        bail!("process 0 sent no checkpoint to resume from: the processes are out of step");
    }
    Ok(PathBuf::from(dir))
}

/// Prints `line` to stderr in one write: under mpirun the processes' outputs are merged, and a line printed in
/// pieces can be split by another process's line.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

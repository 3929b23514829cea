//! Writing files from the subcommands, and the command line's wording for file-system errors of the
//! libraries.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, then renamed over the
/// target (`tempfile`'s persist).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let write = || -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.tmp", name.to_string_lossy()))
            .tempfile_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// Adds what to do to an error of a run caused by a full disk.
pub fn disk_full_hint(err: trainer_core::Error, output: &Path) -> anyhow::Error {
    let full = err.is_disk_full();
    let err = anyhow::Error::from(err);
    if full {
        err.context(format!(
            "the disk is full (or a file-size limit was reached): free some space, then continue with \
             `trainer-cli train --output {} --resume latest`",
            output.display()
        ))
    } else {
        err
    }
}

/// An output-folder error in the command line's words (which flag to give).
pub fn output_error(err: trainer_core::Error) -> anyhow::Error {
    match err {
        trainer_core::Error::RunExists { dir } => anyhow!(
            "output folder {} already holds a training run: pass --overwrite to replace it, \
             --resume latest to continue it, or choose another --output",
            dir.display()
        ),
        trainer_core::Error::NotAFolder { path } => {
            anyhow!(
                "output {} is a file, not a folder: give another --output",
                path.display()
            )
        }
        other => other.into(),
    }
}

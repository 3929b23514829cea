//! Small file-system helpers shared by the subcommands.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder,
/// flushed to disk, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Whether `err` comes from a full disk or a file-size limit (`ENOSPC`,
/// `EDQUOT`, `EFBIG`) anywhere in its chain.
pub fn is_disk_full(err: &anyhow::Error) -> bool {
    use std::io::ErrorKind;
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| {
            matches!(
                e.kind(),
                ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge
            )
        })
}

/// Adds what to do to a write error caused by a full disk.
pub fn disk_full_hint(err: anyhow::Error, output: &Path) -> anyhow::Error {
    if is_disk_full(&err) {
        let hint = format!(
            "the disk is full (or a file-size limit was reached): free some space, then continue with \
             `trainer-cli train --output {} --resume latest`",
            output.display()
        );
        err.context(hint)
    } else {
        err
    }
}

//! The output-folder lock: one `train` at a time writes into an output
//! folder.
//!
//! A run takes an exclusive advisory lock on `.trainer-cli.lock` inside its
//! output folder (std's `File::try_lock`) before it loads the model or
//! changes anything there, and holds it until the process ends. The
//! operating system releases the lock when the process exits or is killed
//! (`kill -9` included), so a lock is never stale; the file itself stays
//! behind and means nothing on its own. It holds the holder's PID and start
//! time (JSON), which a refused run names in its error.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The lock file inside an output folder (hidden; never deleted, never part
/// of a run: the overwrite rule and the resume cleanup ignore it).
pub const LOCK_FILE: &str = ".trainer-cli.lock";

/// Who holds the lock, as written into the lock file.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    /// Process id of the holder.
    pub pid: u32,
    /// When the holder took the lock, "YYYY-MM-DD HH:MM:SS" in UTC.
    pub started: String,
}

/// A held output-folder lock; dropping it (or ending the process) releases it.
#[derive(Debug)]
pub struct OutputLock {
    /// The locked file; `None` where the file system cannot lock (a warning was printed).
    _file: Option<File>,
}

/// What `try_lock` said, sorted into what the command does next.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The lock is ours.
    Held,
    /// Another process holds it: refuse.
    Busy,
    /// The file system cannot lock (the reason): warn and go on unprotected.
    Unavailable(String),
}

fn outcome(result: Result<(), TryLockError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Held,
        Err(TryLockError::WouldBlock) => Outcome::Busy,
        // `Unsupported` is a file system without locks; any other failure of a non-blocking
        // lock (an NFS mount without a lock manager gives ENOLCK) means the same to the user.
        Err(TryLockError::Error(e)) => Outcome::Unavailable(e.to_string()),
    }
}

/// The holder named by the lock file's text, in words.
fn holder_text(text: &str) -> String {
    match serde_json::from_str::<Holder>(text) {
        Ok(h) => format!("PID {}, started {} UTC", h.pid, h.started),
        // Written just after the lock is taken: a holder that is starting has not written it yet.
        Err(_) => "PID unknown: it is just starting".to_string(),
    }
}

/// Takes the lock of output folder `dir` for this process, creating the
/// folder when it does not exist. Fails, changing nothing in the folder, when
/// another process holds it; the error names the folder, the holder's PID and
/// what to do. Where the file system cannot lock, prints one warning line and
/// returns an unlocked guard.
pub fn acquire(dir: &Path) -> Result<OutputLock> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "output {} is a file, not a folder: give another --output",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| {
            format!(
                "cannot create the lock file {} of the output folder",
                path.display()
            )
        })?;
    match outcome(file.try_lock()) {
        Outcome::Held => {
            let holder = Holder {
                pid: std::process::id(),
                started: crate::clock::utc_now(),
            };
            // Informational only: a failure to record the holder (a full disk) does not stop the run.
            let _ = write_holder(&mut file, &holder);
            Ok(OutputLock { _file: Some(file) })
        }
        Outcome::Busy => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            bail!(
                "output folder {} is in use by another trainer-cli ({}): wait for it to finish, stop it \
                 (`trainer-cli control {} stop`, Ctrl-C in its terminal, or kill the process), \
                 or choose another --output",
                dir.display(),
                holder_text(&text),
                dir.display()
            )
        }
        Outcome::Unavailable(why) => {
            eprintln!(
                "warning: cannot lock output folder {} ({why}); going on without the lock: \
                 make sure no other trainer-cli writes into it at the same time",
                dir.display()
            );
            Ok(OutputLock { _file: None })
        }
    }
}

/// Replaces the lock file's content by `holder`, in place (the locked file must keep its identity).
fn write_holder(file: &mut File, holder: &Holder) -> std::io::Result<()> {
    let json = serde_json::to_string(holder)?;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(format!("{json}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let t = tempdir();
        let d = t.path();
        let first = acquire(&d.join("out")).unwrap();
        let text = std::fs::read_to_string(d.join("out").join(LOCK_FILE)).unwrap();
        let holder: Holder = serde_json::from_str(&text).unwrap();
        assert_eq!(holder.pid, std::process::id());
        let err = acquire(&d.join("out")).unwrap_err().to_string();
        assert!(
            err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains(&d.join("out").display().to_string()), "{err}");
        assert!(err.contains("another --output"), "{err}");
        // Refused: the file still names the first holder.
        assert_eq!(
            std::fs::read_to_string(d.join("out").join(LOCK_FILE)).unwrap(),
            text
        );
        drop(first);
        let again = acquire(&d.join("out")).unwrap();
        drop(again);
    }

    #[test]
    fn an_output_that_is_a_file_is_refused_and_kept() {
        let t = tempdir();
        let d = t.path();
        std::fs::create_dir_all(d).unwrap();
        let f = d.join("out");
        std::fs::write(&f, "precious").unwrap();
        let err = acquire(&f).unwrap_err().to_string();
        assert!(err.contains("is a file"), "{err}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "precious");
    }

    #[test]
    fn the_lock_file_is_not_part_of_a_run() {
        let t = tempdir();
        let d = t.path();
        let out = d.join("out");
        let lock = acquire(&out).unwrap();
        // Neither the overwrite rule nor the resume cleanup sees it, and --overwrite keeps it.
        let store = trainer_core::job::DirStore::new(&out);
        assert!(store.check_new(false).unwrap().is_empty());
        assert!(store.recover().unwrap().is_empty());
        store.prepare_new(true).unwrap();
        assert!(out.join(LOCK_FILE).is_file());
        drop(lock);
    }

    #[test]
    fn lock_results_map_to_what_the_command_does() {
        use std::io::{Error, ErrorKind};
        assert_eq!(outcome(Ok(())), Outcome::Held);
        assert_eq!(outcome(Err(TryLockError::WouldBlock)), Outcome::Busy);
        let unsupported = Error::new(ErrorKind::Unsupported, "no locks here");
        assert_eq!(
            outcome(Err(TryLockError::Error(unsupported))),
            Outcome::Unavailable("no locks here".into())
        );
    }

    #[test]
    fn a_holder_is_named_when_the_file_says_who() {
        let text = serde_json::to_string(&Holder {
            pid: 4242,
            started: "2026-01-02 03:04:05".into(),
        })
        .unwrap();
        assert_eq!(
            holder_text(&text),
            "PID 4242, started 2026-01-02 03:04:05 UTC"
        );
        assert_eq!(holder_text(""), "PID unknown: it is just starting");
    }

    proptest! {
        /// The lock file is a plain file anyone can write: describing its holder never fails, and a holder
        /// record names its PID, whatever its start-time text holds.
        #[test]
        fn any_lock_file_content_is_described(text in ".{0,200}", pid in any::<u32>(), started in ".{0,40}") {
            prop_assert!(holder_text(&text).starts_with("PID "));
            let json = serde_json::to_string(&Holder { pid, started }).unwrap();
            let pid_text = format!("PID {pid}, started ");
            prop_assert!(holder_text(&json).starts_with(&pid_text));
        }
    }
}

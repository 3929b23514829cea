//! Where a job puts what it writes: the [`CheckpointStore`] trait and its folder implementation,
//! [`DirStore`], which owns the output folder's layout, atomic checkpoint writes, recovery after a kill and
//! the deletes that retention asks for.

use std::fs;
use std::path::{Path, PathBuf};

use plot_report::LogRecord;

use crate::adapter::{Adapter, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use crate::error::{Error, Result};
use crate::gguf_lora::{GgufBase, ADAPTER_GGUF_FILE};
use crate::io::write_atomic;
use crate::job::log::LogFile;
use crate::job::report::RUNS_DIR;
use crate::job::state::RunState;
use crate::train::Trainer;

/// One JSON object per optimizer step, appended as the run goes.
pub const LOG_FILE: &str = "training_log.jsonl";
/// Loss and LR against epoch, rendered from the log.
pub const GRAPH_FILE: &str = "training_graph.png";
/// Live-control commands, one JSON object per line ([`ControlFile`](crate::job::ControlFile)).
pub const CONTROL_FILE: &str = "control.jsonl";
/// The job's state in each checkpoint folder ([`RunState`]).
pub const RUN_STATE_FILE: &str = "run_state.json";
/// The caller's record of the run's settings (the command line writes its resolved settings there).
pub const PARAMETERS_FILE: &str = "training_parameters.toml";
/// A learning-rate preview drawn before training.
pub const PREVIEW_FILE: &str = "lr_preview.png";

/// A checkpoint to write: the trainer (adapter, optimizer moments, RNG) and the job's [`RunState`].
pub struct Checkpoint<'a> {
    /// The trainer at the checkpoint's step.
    pub trainer: &'a Trainer<'a>,
    /// The job's state.
    pub state: &'a RunState,
    /// The base-model name written into `adapter_config.json`.
    pub base_model: &'a str,
}

impl Checkpoint<'_> {
    /// Writes the checkpoint's files into folder `dir` (each atomically): `adapter_config.json`,
    /// `adapter_model.safetensors`, `optimizer.safetensors`, `trainer_state.json` and `run_state.json`.
    pub fn write_into(&self, dir: &Path) -> Result<()> {
        self.trainer.save_state(dir, self.base_model)?;
        let path = dir.join(RUN_STATE_FILE);
        let json =
            serde_json::to_string_pretty(self.state).map_err(|e| Error::io(&path, e.into()))?;
        write_atomic(&path, json.as_bytes())
    }
}

/// Where a job writes its checkpoints, its log and its final adapter. The job decides what to save and
/// delete (the checkpoint policy); the store decides where and how.
pub trait CheckpointStore {
    /// Saves checkpoint `name` completely or not at all (a failed save leaves the earlier ones intact), and
    /// returns where it is. A checkpoint of the same name is replaced.
    fn save_checkpoint(&mut self, name: &str, checkpoint: &Checkpoint<'_>) -> Result<PathBuf>;

    /// Deletes checkpoint `name` (retention); a missing one is no error.
    fn delete_checkpoint(&mut self, name: &str) -> Result<()>;

    /// Saves the final adapter of the run and returns where it is.
    fn save_adapter(&mut self, adapter: &Adapter, base_model: &str) -> Result<PathBuf>;

    /// Appends one step's record to the training log.
    fn append_log(&mut self, record: &LogRecord) -> Result<()>;

    /// The folder for TensorBoard event files (`None`, the default: the store has none, and a job that
    /// reports to TensorBoard is refused).
    fn runs_dir(&self) -> Option<PathBuf> {
        None
    }
}

/// What [`DirStore::recover`] did with one leftover of an interrupted write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// A checkpoint folder moved aside to be replaced, whose replacement never arrived, was put back.
    Restored(PathBuf),
    /// A temporary file or folder was removed.
    Removed(PathBuf),
}

impl std::fmt::Display for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recovered::Restored(p) => write!(
                f,
                "restored {} (it was being replaced when the run stopped)",
                p.display()
            ),
            Recovered::Removed(p) => {
                write!(f, "removed {} (left by an interrupted write)", p.display())
            }
        }
    }
}

/// An output folder: the final adapter (`adapter_config.json`, `adapter_model.safetensors`) at its top,
/// `checkpoint-*` folders, [`LOG_FILE`], [`GRAPH_FILE`], [`CONTROL_FILE`], TensorBoard's
/// [`RUNS_DIR`](crate::job::RUNS_DIR), and the caller's
/// [`PARAMETERS_FILE`] and [`PREVIEW_FILE`].
///
/// Every file is written atomically (a temporary `.NAME.tmpXXXXXX` file, synced, renamed); a checkpoint is
/// filled in a temporary `.checkpoint-….tmpXXXXXX` folder, synced and renamed into place, and one being
/// replaced is first moved aside to `.NAME.old-PID`. A `kill -9` at any moment therefore leaves every folder
/// with a final name complete; [`DirStore::recover`] cleans what it leaves behind.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    log: Option<LogFile>,
    gguf: Option<GgufBase>,
}

impl DirStore {
    /// The store of folder `dir` (nothing is read or written yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            log: None,
            gguf: None,
        }
    }

    /// Also writes a llama.cpp LoRA adapter GGUF copy ([`ADAPTER_GGUF_FILE`]) of every checkpoint's and the
    /// final adapter for `base` (see [`AdapterFormats`](crate::job::AdapterFormats)); a checkpoint is complete
    /// only with it.
    #[must_use]
    pub fn with_gguf_copies(mut self, base: GgufBase) -> Self {
        self.gguf = Some(base);
        self
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What this layout holds in the folder, after checking the folder can take a new run: an error
    /// ([`Error::RunExists`]) when it holds one and `overwrite` is false, or ([`Error::NotAFolder`]) when the
    /// path is a file. Changes nothing. The preview file does not count as a run.
    pub fn check_new(&self, overwrite: bool) -> Result<Vec<PathBuf>> {
        let dir = &self.dir;
        if dir.exists() && !dir.is_dir() {
            return Err(Error::NotAFolder { path: dir.clone() });
        }
        let mut ours = Vec::new();
        if dir.is_dir() {
            for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
                let entry = entry.map_err(|e| Error::io(dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_ours(&name) && name != PREVIEW_FILE {
                    ours.push(entry.path());
                }
            }
            if !ours.is_empty() && !overwrite {
                return Err(Error::RunExists { dir: dir.clone() });
            }
        }
        Ok(ours)
    }

    /// Prepares the folder for a new run: [`DirStore::check_new`], then removes the earlier run's files (only
    /// those of this layout; other files stay) and creates the folder. Call it once everything else about the
    /// run was checked.
    pub fn prepare_new(&self, overwrite: bool) -> Result<()> {
        for path in self.check_new(overwrite)? {
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io(&path, e))?;
        }
        fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }

    /// Cleans up after a run killed while writing (`kill -9`, a power cut, a full disk): removes temporary
    /// checkpoint folders and temporary files of this layout, and puts back a checkpoint folder moved aside
    /// to be replaced when its replacement never arrived. Never touches a complete file or checkpoint. Run it
    /// only while no other process writes into the folder.
    pub fn recover(&self) -> Result<Vec<Recovered>> {
        let dir = &self.dir;
        let mut names: Vec<String> = fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        // Put folders moved aside back before removing temporaries.
        names.sort_by_key(|n| leftover_of(n).is_none_or(|(_, old)| !old));
        let mut done = Vec::new();
        for name in names {
            let Some((base, old)) = leftover_of(&name) else {
                continue;
            };
            let path = dir.join(&name);
            let dest = dir.join(base);
            if old && !dest.exists() {
                fs::rename(&path, &dest).map_err(|e| Error::io(&dest, e))?;
                done.push(Recovered::Restored(dest));
                continue;
            }
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io(&path, e))?;
            done.push(Recovered::Removed(path));
        }
        Ok(done)
    }

    /// The newest complete checkpoint (highest step; a folder still being written has a temporary name and
    /// is never chosen), or [`Error::NoCheckpoint`].
    pub fn latest_checkpoint(&self) -> Result<PathBuf> {
        let dir = &self.dir;
        let mut best: Option<(u64, PathBuf)> = None;
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !name.starts_with("checkpoint-") || !path.join(RUN_STATE_FILE).is_file() {
                continue;
            }
            let Ok(state) = RunState::load(&path) else {
                continue;
            };
            if best.as_ref().is_none_or(|(s, _)| state.step > *s) {
                best = Some((state.step, path));
            }
        }
        best.map(|(_, p)| p)
            .ok_or_else(|| Error::NoCheckpoint { dir: dir.clone() })
    }

    /// Writes `bytes` to file `name` of the folder, atomically (the caller's [`PARAMETERS_FILE`], ...).
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.dir.join(name);
        write_atomic(&path, bytes)?;
        Ok(path)
    }
}

impl CheckpointStore for DirStore {
    fn save_checkpoint(&mut self, name: &str, checkpoint: &Checkpoint<'_>) -> Result<PathBuf> {
        let failed = |e: Error| Error::Checkpoint {
            name: name.to_string(),
            source: Box::new(e),
        };
        let output = &self.dir;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.tmp"))
            .tempdir_in(output)
            .map_err(|e| failed(Error::io(output, e)))?;
        // On an error the temporary folder is removed when `tmp` drops.
        checkpoint.write_into(tmp.path()).map_err(failed)?;
        if let Some(base) = &self.gguf {
            let adapter = checkpoint.trainer.adapter().map_err(failed)?;
            adapter
                .save_gguf_for(base, &tmp.path().join(ADAPTER_GGUF_FILE))
                .map_err(failed)?;
        }
        // The folder's entries reach the disk before the folder gets its final name.
        fs::File::open(tmp.path())
            .and_then(|d| d.sync_all())
            .map_err(|e| failed(Error::io(tmp.path(), e)))?;
        let tmp = tmp.keep();
        let dest = output.join(name);
        let renamed = if dest.exists() {
            let old = output.join(format!(".{name}.old-{}", std::process::id()));
            fs::rename(&dest, &old)
                .and_then(|()| fs::rename(&tmp, &dest))
                .map(|()| {
                    let _ = fs::remove_dir_all(&old);
                })
        } else {
            fs::rename(&tmp, &dest)
        };
        if let Err(e) = renamed {
            let _ = fs::remove_dir_all(&tmp);
            return Err(failed(Error::io(&dest, e)));
        }
        if let Ok(d) = fs::File::open(output) {
            let _ = d.sync_all();
        }
        Ok(dest)
    }

    fn delete_checkpoint(&mut self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        if path.is_dir() {
            fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    fn save_adapter(&mut self, adapter: &Adapter, base_model: &str) -> Result<PathBuf> {
        adapter.save(&self.dir, base_model)?;
        if let Some(base) = &self.gguf {
            adapter.save_gguf_for(base, &self.dir.join(ADAPTER_GGUF_FILE))?;
        }
        Ok(self.dir.clone())
    }

    fn append_log(&mut self, record: &LogRecord) -> Result<()> {
        if self.log.is_none() {
            self.log = Some(LogFile::open(&self.dir.join(LOG_FILE))?);
        }
        match &mut self.log {
            Some(log) => log.append(record),
            None => Ok(()),
        }
    }

    fn runs_dir(&self) -> Option<PathBuf> {
        Some(self.dir.join(RUNS_DIR))
    }
}

/// Files and folders of this layout, and the leftovers of its interrupted writes.
fn is_ours(name: &str) -> bool {
    is_final_name(name) || leftover_of(name).is_some()
}

/// The final names of this layout.
fn is_final_name(name: &str) -> bool {
    name.starts_with("checkpoint-")
        || name == ADAPTER_CONFIG_FILE
        || name == ADAPTER_WEIGHTS_FILE
        || name.starts_with("adapter_")
        || matches!(
            name,
            PARAMETERS_FILE | LOG_FILE | GRAPH_FILE | PREVIEW_FILE | CONTROL_FILE | RUNS_DIR
        )
}

/// A leftover of an interrupted write: the final name it was for, and whether it is a checkpoint folder moved
/// aside while being replaced (`.NAME.old-PID`) rather than a temporary (`.NAME.tmpXXXXXX`; older versions
/// wrote `.NAME.tmp-PID`, `.NAME.tmpPID` and `.NAME.tmp-PID-N.png`).
fn leftover_of(name: &str) -> Option<(&str, bool)> {
    let rest = name.strip_prefix('.')?;
    let (at, old) = [(".tmp", false), (".old-", true)]
        .into_iter()
        .filter_map(|(marker, old)| rest.find(marker).map(|i| (i, old)))
        .min()?;
    let base = &rest[..at];
    is_final_name(base).then_some((base, old))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_existing_run_needs_overwrite_and_foreign_files_stay() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(LOG_FILE), "{}\n").unwrap();
        fs::write(d.path().join("notes.txt"), "mine").unwrap();
        let store = DirStore::new(d.path());
        assert!(matches!(
            store.prepare_new(false),
            Err(Error::RunExists { .. })
        ));
        assert!(d.path().join(LOG_FILE).exists());
        store.prepare_new(true).unwrap();
        assert_eq!(names(d.path()), ["notes.txt"]);
        let file = d.path().join("notes.txt");
        assert!(matches!(
            DirStore::new(&file).prepare_new(true),
            Err(Error::NotAFolder { .. })
        ));
    }

    #[test]
    fn leftovers_are_recognised_by_name() {
        for (name, want) in [
            (".checkpoint-3.tmp-123", Some(("checkpoint-3", false))),
            (".checkpoint-3.tmpAbC123", Some(("checkpoint-3", false))),
            (
                ".checkpoint-3-epoch-1.old-9",
                Some(("checkpoint-3-epoch-1", true)),
            ),
            (
                ".adapter_model.safetensors.tmp77",
                Some(("adapter_model.safetensors", false)),
            ),
            (
                ".adapter_config.json.tmpx1Y2z3",
                Some(("adapter_config.json", false)),
            ),
            (
                ".training_graph.png.tmp-5-2.png",
                Some(("training_graph.png", false)),
            ),
            (
                ".training_graph.png.tmpQ1w2E3.png",
                Some(("training_graph.png", false)),
            ),
            (
                ".training_parameters.toml.tmp-8",
                Some((PARAMETERS_FILE, false)),
            ),
            (".notes.txt.tmp-1", None),
            (".tmp-1", None),
            ("checkpoint-3", None),
            (".hidden", None),
        ] {
            assert_eq!(leftover_of(name), want, "{name}");
        }
    }

    #[test]
    fn recover_cleans_leftovers_and_puts_back_a_moved_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, content: &str| {
            fs::create_dir_all(d.path().join(name)).unwrap();
            fs::write(d.path().join(name).join("x"), content).unwrap();
        };
        mk("checkpoint-1", "one");
        mk(".checkpoint-2.tmpA1b2C3", "half");
        // Killed between moving checkpoint-3 aside and renaming its replacement in.
        mk(".checkpoint-3.old-5", "three");
        mk(".checkpoint-3.tmpZ9y8X7", "three again");
        // Killed after the replacement was in place.
        mk(".checkpoint-1.old-6", "old one");
        fs::write(
            d.path().join(".adapter_model.safetensors.tmpQwErTy"),
            "half",
        )
        .unwrap();
        fs::write(d.path().join(".notes.tmp-1"), "mine").unwrap();
        let store = DirStore::new(d.path());
        let done = store.recover().unwrap();
        assert_eq!(done.len(), 5, "{done:?}");
        assert_eq!(done[0], Recovered::Restored(d.path().join("checkpoint-3")));
        assert_eq!(
            names(d.path()),
            [".notes.tmp-1", "checkpoint-1", "checkpoint-3"]
        );
        assert_eq!(
            fs::read_to_string(d.path().join("checkpoint-1/x")).unwrap(),
            "one"
        );
        assert_eq!(
            fs::read_to_string(d.path().join("checkpoint-3/x")).unwrap(),
            "three"
        );
        assert!(store.recover().unwrap().is_empty());
        assert!(matches!(
            store.latest_checkpoint(),
            Err(Error::NoCheckpoint { .. })
        ));
    }
}

//! The output folder: its layout, the overwrite rule, checkpoints written
//! as whole folders (temp folder + rename) and finding the newest one.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use checkpoint_policy::Policy;

use crate::settings::Settings;
use serde::{Deserialize, Serialize};

/// The resolved settings, reusable with `--config`.
pub const PARAMETERS_FILE: &str = "training_parameters.toml";
/// One JSON object per optimizer step, appended as the run goes.
pub const LOG_FILE: &str = "training_log.jsonl";
/// Loss and LR against epoch, re-rendered from the log.
pub const GRAPH_FILE: &str = "training_graph.png";
/// The LR preview of `--dry-run`.
pub const PREVIEW_FILE: &str = "lr_preview.png";
/// Live-control commands (`trainer-cli control`), one JSON object per line.
pub const CONTROL_FILE: &str = "control.jsonl";
/// What the run loop needs on top of the trainer state to resume exactly.
pub const RUN_STATE_FILE: &str = "run_state.json";

/// Files and folders this tool writes into an output folder, and the
/// leftovers of its interrupted writes.
fn is_ours(name: &str) -> bool {
    is_final_name(name) || leftover_of(name).is_some()
}

/// The final names this tool writes into an output folder.
fn is_final_name(name: &str) -> bool {
    name.starts_with("checkpoint-")
        || name.starts_with("adapter_")
        || matches!(
            name,
            PARAMETERS_FILE | LOG_FILE | GRAPH_FILE | PREVIEW_FILE | CONTROL_FILE
        )
}

/// A leftover of an interrupted write: the final name it was for, and
/// whether it is a checkpoint folder moved aside while being replaced
/// (`.NAME.old-PID`) rather than a temporary (`.NAME.tmp-PID`, `.NAME.tmpPID`,
/// `.NAME.tmp-PID-N.png`).
fn leftover_of(name: &str) -> Option<(&str, bool)> {
    let rest = name.strip_prefix('.')?;
    let (at, old) = [(".tmp", false), (".old-", true)]
        .into_iter()
        .filter_map(|(marker, old)| rest.find(marker).map(|i| (i, old)))
        .min()?;
    let base = &rest[..at];
    is_final_name(base).then_some((base, old))
}

/// What this tool wrote into an existing output folder, after checking the
/// folder can take a new run (`overwrite` allows replacing an earlier run).
/// Changes nothing.
pub fn check_new(dir: &Path, overwrite: bool) -> Result<Vec<PathBuf>> {
    if dir.as_os_str().is_empty() {
        bail!("no output folder: give --output DIR (or `output` in the config file)");
    }
    if dir.exists() && !dir.is_dir() {
        bail!(
            "output {} is a file, not a folder: give another --output",
            dir.display()
        );
    }
    let mut ours = Vec::new();
    if dir.is_dir() {
        for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_ours(&name) && name != PREVIEW_FILE {
                ours.push(entry.path());
            }
        }
        if !ours.is_empty() && !overwrite {
            bail!(
                "output folder {} already holds a training run: pass --overwrite to replace it, \
                 --resume latest to continue it, or choose another --output",
                dir.display()
            );
        }
    }
    Ok(ours)
}

/// Prepares the output folder of a new run: [`check_new`], then removes
/// the earlier run's files (only what this tool wrote) and creates the folder.
/// Call it only once everything else about the run has been validated.
pub fn prepare_new(dir: &Path, overwrite: bool) -> Result<()> {
    for path in check_new(dir, overwrite)? {
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))
}

/// The run-loop state saved in every checkpoint (besides the trainer's).
#[derive(Debug, Serialize, Deserialize)]
pub struct RunState {
    /// Format version of this file.
    pub format: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// Loss of the last step (`None` when it was not a finite number).
    pub loss: Option<f64>,
    /// Fingerprint of the training data (blocks as token ids): resuming on other data is refused.
    pub data_fingerprint: u64,
    /// The label-mask rule the fingerprint's labels were built with (`trainer_core::dataset::LABEL_MASK_RULE`);
    /// checkpoints written before it was recorded used rule 1.
    #[serde(default = "first_label_mask_rule")]
    pub label_mask_rule: u32,
    /// The checkpoint policy, with its memory of earlier saves and thresholds.
    pub policy: Policy,
    /// The settings the run was trained with.
    pub settings: Settings,
}

/// The label-mask rule of checkpoints that do not record one.
fn first_label_mask_rule() -> u32 {
    1
}

impl RunState {
    /// Reads `run_state.json` from a checkpoint folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(RUN_STATE_FILE);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a resumable checkpoint (no {RUN_STATE_FILE})",
                dir.display()
            )
        })?;
        let state: RunState = serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged", path.display()))?;
        if state.format != 1 {
            bail!("{}: unknown format {}", path.display(), state.format);
        }
        Ok(state)
    }
}

/// Writes a checkpoint folder atomically: `fill` writes into a temporary
/// folder beside it, which is then renamed into place (replacing an older
/// folder of the same name, as happens when a resumed run repeats a step).
pub fn write_checkpoint(
    output: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let tmp = output.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let filled = fill(&tmp).and_then(|()| {
        // The folder's entries reach the disk before the folder gets its final name.
        fs::File::open(&tmp)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))
    });
    if let Err(e) = filled {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "cannot write checkpoint {name}; earlier checkpoints are intact"
        )));
    }
    let dest = output.join(name);
    if dest.exists() {
        let old = output.join(format!(".{name}.old-{}", std::process::id()));
        fs::rename(&dest, &old).with_context(|| format!("cannot replace {}", dest.display()))?;
        fs::rename(&tmp, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(&tmp, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
    }
    if let Ok(d) = fs::File::open(output) {
        let _ = d.sync_all();
    }
    Ok(dest)
}

/// Cleans up after a run that was killed while writing (`kill -9`, a power
/// cut, a full disk): removes temporary checkpoint folders and temporary
/// files, and puts back a checkpoint folder that was moved aside to be
/// replaced when its replacement never arrived. Returns one line per
/// leftover handled. Never touches a complete file or checkpoint.
pub fn recover(output: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let entries = fs::read_dir(output)
        .with_context(|| format!("cannot read output folder {}", output.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // Put folders moved aside back before removing temporaries.
    names.sort_by_key(|n| leftover_of(n).is_none_or(|(_, old)| !old));
    for name in names {
        let Some((base, old)) = leftover_of(&name) else {
            continue;
        };
        let path = output.join(&name);
        let dest = output.join(base);
        if old && !dest.exists() {
            fs::rename(&path, &dest)
                .with_context(|| format!("cannot restore {}", dest.display()))?;
            done.push(format!(
                "restored {} (it was being replaced when the run stopped)",
                dest.display()
            ));
            continue;
        }
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove leftover {}", path.display()))?;
        done.push(format!(
            "removed {} (left by an interrupted write)",
            path.display()
        ));
    }
    Ok(done)
}

/// Removes a checkpoint folder the retention policy let go.
pub fn delete_checkpoint(output: &Path, name: &str) -> Result<()> {
    let path = output.join(name);
    if path.is_dir() {
        fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// The newest complete checkpoint of an output folder (highest step; a
/// folder still being written has a temporary name and is never chosen).
pub fn latest_checkpoint(output: &Path) -> Result<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    let entries = fs::read_dir(output)
        .with_context(|| format!("cannot read output folder {}", output.display()))?;
    for entry in entries {
        let path = entry?.path();
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
    best.map(|(_, p)| p).with_context(|| {
        format!(
            "{} has no complete checkpoint to resume from",
            output.display()
        )
    })
}

/// FNV-1a over the encoded blocks: cheap, stable across platforms.
pub fn fingerprint(blocks: &[Vec<u32>]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u32| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for block in blocks {
        eat(u32::MAX);
        for &id in block {
            eat(id);
        }
    }
    h
}

/// The fingerprint of a run's data: [`fingerprint`] of the training token ids (so a raw-text run keeps the value
/// it always had), extended with the labels and the eval set when any label is masked or an eval set exists.
pub fn data_fingerprint(train: &[trainer_core::Sample], eval: &[trainer_core::Sample]) -> u64 {
    let ids: Vec<Vec<u32>> = train.iter().map(|s| s.input_ids.clone()).collect();
    let base = fingerprint(&ids);
    let causal = |s: &trainer_core::Sample| {
        s.labels
            .iter()
            .zip(&s.input_ids)
            .all(|(&l, &i)| l == i64::from(i))
    };
    if eval.is_empty() && train.iter().all(causal) {
        return base;
    }
    // Labels as u32 (-100 -> u32::MAX - 1, which no vocabulary reaches), then the eval set.
    let label = |l: i64| u32::try_from(l).unwrap_or(u32::MAX - 1);
    let mut more: Vec<Vec<u32>> = vec![vec![(base >> 32) as u32, base as u32]];
    more.extend(
        train
            .iter()
            .map(|s| s.labels.iter().map(|&l| label(l)).collect()),
    );
    more.push(Vec::new());
    for s in eval {
        more.push(s.input_ids.clone());
        more.push(s.labels.iter().map(|&l| label(l)).collect());
    }
    fingerprint(&more)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("trainer-cli-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn existing_run_needs_overwrite_and_keeps_foreign_files() {
        let d = tempdir("overwrite");
        fs::write(d.join(LOG_FILE), "{}\n").unwrap();
        fs::write(d.join("notes.txt"), "mine").unwrap();
        let err = prepare_new(&d, false).unwrap_err().to_string();
        assert!(err.contains("--overwrite"), "{err}");
        assert!(d.join(LOG_FILE).exists());
        prepare_new(&d, true).unwrap();
        assert!(!d.join(LOG_FILE).exists());
        assert_eq!(fs::read_to_string(d.join("notes.txt")).unwrap(), "mine");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failed_checkpoint_leaves_nothing_behind() {
        let d = tempdir("ckpt");
        let err = write_checkpoint(&d, "checkpoint-1", |_| bail!("disk full")).unwrap_err();
        assert!(format!("{err:#}").contains("disk full"));
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
        write_checkpoint(&d, "checkpoint-2", |t| Ok(fs::write(t.join("x"), "1")?)).unwrap();
        write_checkpoint(&d, "checkpoint-2", |t| Ok(fs::write(t.join("x"), "2")?)).unwrap();
        assert_eq!(fs::read_to_string(d.join("checkpoint-2/x")).unwrap(), "2");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn data_fingerprint_sees_masks_and_eval_sets() {
        use trainer_core::{Sample, IGNORE_INDEX};
        let train = vec![Sample::causal(vec![1, 2, 3]), Sample::causal(vec![4, 5])];
        assert_eq!(
            data_fingerprint(&train, &[]),
            fingerprint(&[vec![1, 2, 3], vec![4, 5]])
        );
        let mut masked = train.clone();
        masked[0].labels[1] = IGNORE_INDEX;
        let eval = vec![Sample::causal(vec![7, 8])];
        let all = [
            data_fingerprint(&train, &[]),
            data_fingerprint(&masked, &[]),
            data_fingerprint(&train, &eval),
            data_fingerprint(&masked, &eval),
        ];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j], "{i} vs {j}");
            }
        }
    }

    #[test]
    fn leftovers_are_recognised_by_name() {
        for (name, want) in [
            (".checkpoint-3.tmp-123", Some(("checkpoint-3", false))),
            (
                ".checkpoint-3-epoch-1.old-9",
                Some(("checkpoint-3-epoch-1", true)),
            ),
            (
                ".adapter_model.safetensors.tmp77",
                Some(("adapter_model.safetensors", false)),
            ),
            (
                ".adapter_config.json.tmp-77",
                Some(("adapter_config.json", false)),
            ),
            (
                ".training_graph.png.tmp-5-2.png",
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
        let d = tempdir("recover");
        let mk = |name: &str, content: &str| {
            fs::create_dir_all(d.join(name)).unwrap();
            fs::write(d.join(name).join("x"), content).unwrap();
        };
        mk("checkpoint-1", "one");
        mk(".checkpoint-2.tmp-5", "half");
        // Killed between moving checkpoint-3 aside and renaming its replacement in.
        mk(".checkpoint-3.old-5", "three");
        mk(".checkpoint-3.tmp-5", "three again");
        // Killed after the replacement was in place.
        mk(".checkpoint-1.old-6", "old one");
        fs::write(d.join(".adapter_model.safetensors.tmp6"), "half").unwrap();
        fs::write(d.join(".notes.tmp-1"), "mine").unwrap();
        let done = recover(&d).unwrap();
        assert_eq!(done.len(), 5, "{done:?}");
        let mut left: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".notes.tmp-1", "checkpoint-1", "checkpoint-3"]);
        assert_eq!(fs::read_to_string(d.join("checkpoint-1/x")).unwrap(), "one");
        assert_eq!(
            fs::read_to_string(d.join("checkpoint-3/x")).unwrap(),
            "three"
        );
        assert!(recover(&d).unwrap().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn output_that_is_a_file_is_refused() {
        let d = tempdir("file");
        let f = d.join("out");
        fs::write(&f, "x").unwrap();
        assert!(prepare_new(&f, true)
            .unwrap_err()
            .to_string()
            .contains("is a file"));
        fs::remove_dir_all(&d).unwrap();
    }
}

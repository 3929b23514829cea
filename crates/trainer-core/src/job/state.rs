//! What a checkpoint holds on top of the trainer's state: `run_state.json`, the job's step, loss, data
//! fingerprint, checkpoint-policy memory and the settings a resume must keep.
//!
//! Format 2 (this version) holds [`ResumeSettings`]. Format 1, written by the command line before the job
//! API existed, held the command line's whole settings table; it is still read: the keys that matter are
//! taken from it (see [`RunState::load`]).

use std::path::Path;

use checkpoint_policy::Policy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::job::data::DataOptions;
use crate::job::store::RUN_STATE_FILE;

/// The run-state format this version writes.
pub const RUN_STATE_FORMAT: u32 = 2;

/// The settings a resumed run must share with the checkpoint, in library types; the names are the command
/// line's setting keys, so a refusal names what the user typed. What may change on resume (the run length,
/// learning rate and schedule, evaluation cadence, checkpoint and stopping rules, where the files are read
/// from) is not here; the data itself is checked by its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeSettings {
    /// The base model, as named in `adapter_config.json`.
    pub model: String,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha.
    pub alpha: f64,
    /// rsLoRA scaling.
    pub rslora: bool,
    /// LoRA dropout.
    pub dropout: f64,
    /// The adapted modules, resolved against the model.
    pub targets: Vec<String>,
    /// `lm_head` and `embed_tokens` trained in full.
    pub train_head: bool,
    /// Weight decay (of every optimizer; the optimizer itself is checked against the trainer state).
    pub weight_decay: f64,
    /// Gradient clipping (`None`: off).
    pub max_grad_norm: Option<f64>,
    /// NEFTune alpha (`None`: off).
    pub neftune_alpha: Option<f64>,
    /// Gradient checkpointing.
    pub gradient_checkpointing: bool,
    /// Micro-batch size.
    pub batch_size: usize,
    /// Gradient accumulation requested.
    pub grad_accum: usize,
    /// Length-grouped micro-batches.
    pub group_by_length: bool,
    /// How the data became samples.
    #[serde(flatten)]
    pub data: DataOptions,
}

impl ResumeSettings {
    /// The settings of `self` (what a checkpoint was trained with) that differ in `now`, as
    /// `key (old -> new)`, in key order.
    pub fn conflicts(&self, now: &ResumeSettings) -> Vec<String> {
        let (a, b) = (as_map(self), as_map(now));
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                let show = |v: Option<&Value>| v.map_or("unset".to_string(), ToString::to_string);
                format!("{k} ({} -> {})", show(a.get(k)), show(b.get(k)))
            })
            .collect()
    }
}

fn as_map(s: &ResumeSettings) -> Map<String, Value> {
    match serde_json::to_value(s) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// `run_state.json` of a checkpoint. New fields are added with a serde default, so that older files keep
/// reading; a change of meaning raises [`RUN_STATE_FORMAT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Format version ([`RUN_STATE_FORMAT`]).
    pub format: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// Loss of the last step (`None` when it was not a finite number).
    pub loss: Option<f64>,
    /// Fingerprint of the training data ([`TrainingData::fingerprint`](crate::job::TrainingData::fingerprint)).
    pub data_fingerprint: u64,
    /// The label-mask rule the fingerprint's labels were built with ([`LABEL_MASK_RULE`](crate::dataset::LABEL_MASK_RULE));
    /// checkpoints written before it was recorded used rule 1.
    #[serde(default = "first_label_mask_rule")]
    pub label_mask_rule: u32,
    /// The checkpoint policy, with its memory of earlier saves and thresholds.
    pub policy: Policy,
    /// What the run was trained with. In a format-1 file, only the keys it recorded (the rest are taken as
    /// the resuming run's own; the trainer state checks the LoRA modules).
    pub settings: ResumeSettingsRecord,
}

/// The settings recorded in a run state: complete (format 2), or the command line's table of format 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResumeSettingsRecord {
    /// Format 2.
    Complete(Box<ResumeSettings>),
    /// Format 1: the command line's settings as it wrote them, translated to [`ResumeSettings`] keys when
    /// compared.
    Legacy(Map<String, Value>),
}

/// The label-mask rule of checkpoints that do not record one.
fn first_label_mask_rule() -> u32 {
    1
}

impl RunState {
    /// Reads `run_state.json` from checkpoint folder `dir` (format 1 or 2).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(RUN_STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Error::resume(
                dir,
                format!("it is not a resumable checkpoint (no {RUN_STATE_FILE})"),
            )
        })?;
        let state: RunState = serde_json::from_str(&text)
            .map_err(|e| Error::resume(dir, format!("{} is damaged: {e}", path.display())))?;
        match (state.format, &state.settings) {
            (1, ResumeSettingsRecord::Legacy(_)) | (2, ResumeSettingsRecord::Complete(_)) => Ok(state),
            (1 | 2, _) => Err(Error::resume(
                dir,
                format!("{} is damaged: its settings do not match its format {}", path.display(), state.format),
            )),
            (f, _) => Err(Error::resume(
                dir,
                format!(
                    "{} has format {f}, which this version does not know (it reads 1 and 2): resume it with \
                     the version that wrote it",
                    path.display()
                ),
            )),
        }
    }

    /// The settings this state was trained with, compared against `now`: `key (old -> new)` for each
    /// difference; `None` when a format-1 table holds a value of the wrong type (a damaged file).
    pub fn conflicts(&self, now: &ResumeSettings) -> Option<Vec<String>> {
        match &self.settings {
            ResumeSettingsRecord::Complete(s) => Some(s.conflicts(now)),
            ResumeSettingsRecord::Legacy(table) => {
                legacy_settings(table, now).map(|s| s.conflicts(now))
            }
        }
    }
}

/// A format-1 settings table as [`ResumeSettings`]: its keys of the same name and meaning, translated where
/// format 1 spelled them differently (`dementor = true` is `mode = "dementor"`; a 0 turned clipping and
/// NEFTune off; `hard_cut` and `train_only_after` were escaped); keys it lacks, and `targets` (a preset name
/// then, resolved now; the trainer state checks the modules), are taken from `now`.
fn legacy_settings(table: &Map<String, Value>, now: &ResumeSettings) -> Option<ResumeSettings> {
    let mut out = as_map(now);
    for (key, value) in table {
        if key == "targets" || !out.contains_key(key) {
            continue;
        }
        let value = match (key.as_str(), value) {
            ("max_grad_norm" | "neftune_alpha", v) if v.as_f64() == Some(0.0) => Value::Null,
            ("hard_cut" | "train_only_after", Value::String(s)) => {
                Value::String(prts_chunker::unescape_hard_cut(s))
            }
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    if let Some(dementor) = table.get("dementor").and_then(Value::as_bool) {
        out.insert(
            "mode".into(),
            Value::String(if dementor { "dementor" } else { "precise" }.into()),
        );
    }
    serde_json::from_value(Value::Object(out)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ResumeSettings {
        ResumeSettings {
            model: "m.gguf".into(),
            rank: 8,
            alpha: 16.0,
            rslora: false,
            dropout: 0.05,
            targets: vec!["q_proj".into(), "v_proj".into()],
            train_head: false,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            neftune_alpha: None,
            gradient_checkpointing: false,
            batch_size: 4,
            grad_accum: 1,
            group_by_length: false,
            data: DataOptions::default(),
        }
    }

    #[test]
    fn conflicts_name_each_key_with_both_values() {
        let a = settings();
        assert!(a.conflicts(&a).is_empty());
        let mut b = a.clone();
        b.rank = 4;
        b.data.seed = 7;
        b.data.mode = prts_chunker::Mode::Dementor;
        assert_eq!(
            a.conflicts(&b),
            [
                "mode (\"precise\" -> \"dementor\")",
                "rank (8 -> 4)",
                "seed (42 -> 7)"
            ]
        );
    }

    #[test]
    fn a_format_1_table_is_read_with_its_own_spellings() {
        let now = settings();
        let table: Map<String, Value> = serde_json::from_str(
            r#"{"model":"m.gguf","rank":8,"dementor":true,"hard_cut":"\\n\\n","max_grad_norm":0.0,
                "targets":"q-v","epochs":3.0,"output":"out","eos":"every-block"}"#,
        )
        .unwrap();
        let c = legacy_settings(&table, &now).unwrap().conflicts(&now);
        assert_eq!(
            c,
            [
                "hard_cut (\"\\n\\n\" -> \"\\n\\n\\n\")",
                "max_grad_norm (null -> 1.0)",
                "mode (\"dementor\" -> \"precise\")"
            ]
        );
    }
}

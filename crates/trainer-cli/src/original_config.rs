//! `--config training_parameters.json`: the settings file Training PRO saved beside each LoRA, read key by key
//! into our settings. Each key the original wrote has one rule in [`RULES`] (in the original's key order):
//! the setting it becomes and how its value converts, or why it has none. A converted value goes through
//! [`Settings::set_key`], the config file's own parser, so a wrong type or name gives the same error as in a
//! TOML file (with the file and the original key named). Keys the table does not know (other Training PRO
//! versions) are listed as unused, not refused.
//!
//! Step counts in the file are micro-steps (forward passes); they become optimizer steps with the original's
//! rounding, `ceil(x / grad_accum)`, using the run's final `grad_accum` (a flag may change it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};

use crate::settings::Settings;
use crate::sources::{Source, Sources};

/// How a value of the original converts to ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conv {
    /// The value as it is.
    Same,
    /// Micro-steps to optimizer steps: `ceil(x / grad_accum)`.
    MicroSteps,
    /// A number, or text holding one (the original's learning-rate box was text).
    Number,
    /// A number; negative values become 0, as the original clamped them.
    AtLeastZero,
    /// `sliding_window` true/false: `mode` dementor/precise.
    SlidingWindow,
    /// `add_eos_token` with `add_eos_token_type`: `eos`.
    Eos,
    /// `add_eos_token_type` (with `add_eos_token`): `eos`.
    EosType,
    /// `save_steps`: `save_every` in optimizer steps, and `save_each_epoch` (the original saved epochs only
    /// when `save_steps > 0`).
    SaveSteps,
    /// `lora_alpha`: unused when `lora_RS` is on.
    LoraAlpha,
    /// `lora_RS_alpha`: the alpha when `lora_RS` is on, at least 1.
    RsAlpha,
    /// `grad_accumulation`: replaced by `batch_size // micro_batch_size` when the legacy `batch_size` > 0.
    GradAccum,
    /// The legacy `batch_size` (the original's `fix_old_version`).
    LegacyBatch,
    /// `eval_steps`: replaced by `eval_stepsJSONL` when the file names a JSONL dataset.
    EvalSteps,
    /// `eval_stepsJSONL`: the eval cadence of a JSONL dataset.
    EvalStepsJsonl,
    /// `report_to`: "None" becomes `[]`, a name a one-name list.
    ReportTo,
}

/// What one key of the original becomes.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Our setting, the conversion, and a note on how the meaning differs ("" for none).
    Key(&'static str, Conv, &'static str),
    /// Our setting once it exists, its conversion, and why it has no equivalent yet. Mapping it is one
    /// change: `NotYet(k, c, _)` becomes `Key(k, c, "")`.
    NotYet(&'static str, Conv, &'static str),
    /// No equivalent, and why.
    No(&'static str),
}

/// Why the data keys have no equivalent.
const DATA_NAME: &str =
    "the original stored a name from the webui's training folders, not a path: give the file with";

/// The original's keys, in the order its `PARAMETERS` list (and so its `training_parameters.json`) has them.
const RULES: &[(&str, Rule)] = &[
    ("lora_name", Rule::No("the adapter's name, which named its folder: give --output DIR")),
    ("always_override", Rule::No("a choice made per run here: --overwrite replaces an earlier run, --init-adapter continues an adapter")),
    ("save_steps", Rule::Key("save_every", Conv::SaveSteps, "")),
    ("micro_batch_size", Rule::Key("batch_size", Conv::Same, "")),
    ("batch_size", Rule::Key("grad_accum", Conv::LegacyBatch, "")),
    ("epochs", Rule::Key("epochs", Conv::Same, "")),
    ("learning_rate", Rule::Key("learning_rate", Conv::Number, "")),
    ("lr_scheduler_type", Rule::Key("scheduler", Conv::Same, "")),
    ("lora_rank", Rule::Key("rank", Conv::Same, "")),
    ("lora_alpha", Rule::Key("alpha", Conv::LoraAlpha, "")),
    ("lora_dropout", Rule::Key("dropout", Conv::Same, "")),
    ("cutoff_len", Rule::Key("cutoff", Conv::Same, "")),
    ("dataset", Rule::No("--dataset FILE (a JSON dataset)")),
    ("eval_dataset", Rule::No("--eval-dataset FILE")),
    ("format", Rule::No("--format FILE")),
    ("eval_steps", Rule::Key("eval_steps", Conv::EvalSteps, "")),
    ("raw_text_file", Rule::No("--text FILE|DIR")),
    ("higher_rank_limit", Rule::No("it only widened the UI's rank and alpha sliders; rank and alpha have no upper limit here")),
    ("warmup_steps", Rule::Key("warmup_steps", Conv::MicroSteps, "")),
    ("optimizer", Rule::NotYet("optimizer", Conv::Same, "the optimizer is AdamW here (betas 0.9/0.999, eps 1e-8), which the original's default adamw_torch and its other adamw_* choices are")),
    ("hard_cut_string", Rule::Key("hard_cut", Conv::Same, "the same backslash escapes; an empty one means no hard cut (the original cut between every character, bug 8)")),
    ("train_only_after", Rule::Key("train_only_after", Conv::Same, "it masks the prompt of instruction data here; the original's had no effect (bug 2)")),
    ("stop_at_loss", Rule::Key("stop_at_loss", Conv::Same, "")),
    ("add_eos_token", Rule::Key("eos", Conv::Eos, "")),
    ("min_chars", Rule::Key("min_chars", Conv::AtLeastZero, "")),
    ("report_to", Rule::NotYet("report_to", Conv::ReportTo, "nothing is reported but training_log.jsonl and the graph; the original's \"None\" meant every installed integration (bug 26)")),
    ("precize_slicing_overlap", Rule::Key("overlap", Conv::Same, "")),
    ("add_eos_token_type", Rule::Key("eos", Conv::EosType, "")),
    ("save_steps_under_loss", Rule::Key("save_under_loss", Conv::Same, "the next loss save needs a true 10% drop (loss_improvement 0.1); absolute_improvement = true restores the original's absolute 0.09 (bug 20)")),
    ("add_bos_token", Rule::Key("bos", Conv::Same, "true starts every block with the BOS token; the original only kept one the tokenizer added (bug 12)")),
    ("training_projection", Rule::Key("targets", Conv::Same, "")),
    ("sliding_window", Rule::Key("mode", Conv::SlidingWindow, "")),
    ("warmup_ratio", Rule::Key("warmup_ratio", Conv::Same, "")),
    ("grad_accumulation", Rule::Key("grad_accum", Conv::GradAccum, "")),
    ("neft_noise_alpha", Rule::Key("neftune_alpha", Conv::Same, "")),
    ("group_by_length", Rule::Key("group_by_length", Conv::Same, "it groups samples here; the original's had no effect (bug 15)")),
    ("eliminate_long_blocks", Rule::Key("eliminate_long", Conv::Same, "")),
    ("stop_at_epoch", Rule::Key("stop_at_epoch", Conv::Same, "")),
    ("datasetJSONL", Rule::No("--dataset FILE (a chat dataset)")),
    ("eval_datasetJSONL", Rule::No("--eval-dataset FILE")),
    ("eval_stepsJSONL", Rule::Key("eval_steps", Conv::EvalStepsJsonl, "")),
    ("hybrid_training", Rule::No("a run is hybrid when both --text and --dataset are given")),
    ("hybrid_data_ratio", Rule::Key("hybrid_data_ratio", Conv::Same, "")),
    ("hybrid_text_ratio", Rule::Key("hybrid_text_ratio", Conv::Same, "")),
    ("lora_RS", Rule::Key("rslora", Conv::Same, "")),
    ("lora_RS_alpha", Rule::Key("alpha", Conv::RsAlpha, "")),
    ("lora_modulessave", Rule::Key("train_head", Conv::Same, "")),
    ("use_grad_checkpoint", Rule::Key("gradient_checkpointing", Conv::Same, "")),
];

/// One of our settings set from a key of the file.
#[derive(Debug, Clone)]
struct Set {
    /// Our key.
    key: &'static str,
    /// The value set.
    value: toml::Value,
    /// How it was converted ("" when taken as it is).
    how: String,
    /// For micro-step keys: the micro-steps, converted again with the final `grad_accum`.
    micro: Option<f64>,
}

/// What one key of the file became.
#[derive(Debug, Clone)]
enum Outcome {
    /// These settings.
    Set(Vec<Set>),
    /// Nothing, and why.
    Unused(String),
}

/// A `training_parameters.json` read: each key with what it became.
#[derive(Debug, Clone)]
pub struct OriginalConfig {
    path: PathBuf,
    values: Map<String, Value>,
    entries: Vec<(String, Outcome)>,
}

/// A file value as the dry run shows it.
fn shown(v: &Value) -> String {
    v.to_string()
}

impl OriginalConfig {
    /// Whether `--config PATH` is the original's file: a `.json` file (TOML settings files have any other
    /// name).
    pub fn is_original(path: &Path) -> bool {
        path.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    }

    /// Reads the file (a JSON object); nothing is mapped yet.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(path, &text)
    }

    /// Parses the text of the file `path` (a JSON object); nothing is mapped yet.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let values = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(other) => bail!(
                "config {}: a Training PRO training_parameters.json holds one JSON object of settings, not {}; \
                 give that file, or a TOML settings file (any name not ending in .json)",
                path.display(),
                kind(&other)
            ),
            Err(e) => bail!(
                "config {}: not JSON ({e}); a .json config is read as Training PRO's training_parameters.json: \
                 give that file, or a TOML settings file (any name not ending in .json)",
                path.display()
            ),
        };
        Ok(OriginalConfig {
            path: path.to_path_buf(),
            values,
            entries: Vec::new(),
        })
    }

    /// The file's gradient accumulation: `batch_size // micro_batch_size` when the legacy `batch_size` > 0
    /// (the original's `fix_old_version`), else `grad_accumulation` (default 1).
    fn file_grad_accum(&self) -> u64 {
        let legacy = self.number("batch_size").unwrap_or(0.0);
        let ga = if legacy > 0.0 {
            (legacy / self.number("micro_batch_size").unwrap_or(4.0).max(1.0)).floor()
        } else {
            self.number("grad_accumulation").unwrap_or(1.0)
        };
        if ga.is_finite() && ga >= 1.0 {
            ga as u64
        } else {
            1
        }
    }

    /// A number of the file, if the key holds one.
    fn number(&self, key: &str) -> Option<f64> {
        self.values.get(key).and_then(Value::as_f64)
    }

    /// Whether `lora_RS` is on in the file.
    fn rslora(&self) -> bool {
        self.values
            .get("lora_RS")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether the file names a JSONL dataset (then `eval_stepsJSONL` is the eval cadence).
    fn jsonl(&self) -> bool {
        self.values
            .get("datasetJSONL")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty() && s != "None")
    }

    /// Maps every key of the file into `settings`, recording the sources. All bad keys are reported at once,
    /// each naming the file and the key.
    pub fn apply(&mut self, settings: &mut Settings, sources: &mut Sources) -> Result<()> {
        let ga = self.file_grad_accum();
        let mut errors = Vec::new();
        let mut entries = Vec::new();
        for (key, rule) in RULES {
            let Some(value) = self.values.get(*key) else {
                continue;
            };
            let outcome = match *rule {
                Rule::No(why) if why.starts_with("--") => {
                    Outcome::Unused(format!("no equivalent: {DATA_NAME} {why}"))
                }
                Rule::No(why) => Outcome::Unused(format!("no equivalent: {why}")),
                Rule::NotYet(ours, conv, why) => {
                    // What it will become once the setting exists, when the value converts.
                    let would = match self.convert(ours, conv, value, ga) {
                        Ok(Outcome::Set(sets)) => sets
                            .iter()
                            .map(|s| format!(" (it will be {} = {})", s.key, s.value))
                            .collect(),
                        Ok(Outcome::Unused(then)) => format!(" (and then {then})"),
                        Err(_) => String::new(),
                    };
                    Outcome::Unused(format!("no equivalent yet: {why}{would}"))
                }
                Rule::Key(_, _, _) if value.is_null() => {
                    Outcome::Unused("null: no value, the setting keeps its default".into())
                }
                Rule::Key(ours, conv, note) => match self.convert(ours, conv, value, ga) {
                    Ok(Outcome::Set(sets)) => {
                        let mut done = Vec::new();
                        for mut set in sets {
                            if let Err(e) = settings.set_key(set.key, set.value.clone()) {
                                errors.push(self.bad(
                                    key,
                                    value,
                                    &format!("{e} (setting `{}`)", set.key),
                                ));
                                continue;
                            }
                            sources.set(
                                set.key,
                                Source::Original {
                                    file: self.path.clone(),
                                    key: key.to_string(),
                                },
                            );
                            if set.key == ours && !note.is_empty() {
                                set.how = join(&set.how, note);
                            }
                            done.push(set);
                        }
                        Outcome::Set(done)
                    }
                    Ok(unused) => unused,
                    Err(why) => {
                        errors.push(self.bad(key, value, &why));
                        continue;
                    }
                },
            };
            entries.push((key.to_string(), outcome));
        }
        for key in self.values.keys() {
            if !RULES.iter().any(|(k, _)| k == key) {
                entries.push((
                    key.clone(),
                    Outcome::Unused(
                        "unknown key (from another Training PRO version?): not used".into(),
                    ),
                ));
            }
        }
        self.entries = entries;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(errors.join("; ")))
        }
    }

    /// The error for a bad value: the file, the key, what is wrong and what to do.
    fn bad(&self, key: &str, value: &Value, why: &str) -> String {
        format!(
            "config {}: key `{key}` = {}: {why}; correct the value in the file or remove the key",
            self.path.display(),
            shown(value)
        )
    }

    /// Converts one value; `Err` is the reason it is bad.
    fn convert(
        &self,
        ours: &'static str,
        conv: Conv,
        value: &Value,
        ga: u64,
    ) -> std::result::Result<Outcome, String> {
        let one = |value: toml::Value, how: String| {
            Outcome::Set(vec![Set {
                key: ours,
                value,
                how,
                micro: None,
            }])
        };
        let unused = |why: &str| Ok(Outcome::Unused(format!("no effect: {why}")));
        match conv {
            Conv::Same => Ok(one(to_toml(value)?, String::new())),
            Conv::Number => {
                let x = match value {
                    Value::String(s) => s.trim().parse::<f64>().map_err(|_| {
                        format!("`{s}` is not a number (e.g. 3e-4)")
                    })?,
                    v => v.as_f64().ok_or("expected a number (e.g. 3e-4)")?,
                };
                let how = if value.is_string() {
                    "text read as a number".to_string()
                } else {
                    String::new()
                };
                Ok(one(toml::Value::Float(x), how))
            }
            Conv::AtLeastZero => {
                let x = value.as_f64().ok_or("expected a number")?;
                if x < 0.0 {
                    Ok(one(
                        toml::Value::Integer(0),
                        "negative becomes 0, as in the original".into(),
                    ))
                } else {
                    Ok(one(to_toml(value)?, String::new()))
                }
            }
            Conv::MicroSteps => Ok(Outcome::Set(vec![micro_steps(ours, value, ga)?])),
            Conv::SaveSteps => {
                let every = micro_steps(ours, value, ga)?;
                let on = every.micro.unwrap_or(0.0) > 0.0;
                Ok(Outcome::Set(vec![
                    every,
                    Set {
                        key: "save_each_epoch",
                        value: toml::Value::Boolean(on),
                        how: "the original saved at epoch ends only when save_steps > 0 (never at the last; \
                              here the last is saved too)"
                            .into(),
                        micro: None,
                    },
                ]))
            }
            Conv::EvalSteps if self.jsonl() => {
                unused("replaced by eval_stepsJSONL, as the file names a JSONL dataset")
            }
            Conv::EvalSteps => Ok(Outcome::Set(vec![micro_steps(ours, value, ga)?])),
            Conv::EvalStepsJsonl if self.jsonl() => {
                Ok(Outcome::Set(vec![micro_steps(ours, value, ga)?]))
            }
            Conv::EvalStepsJsonl => unused("used only with a JSONL dataset (datasetJSONL is None)"),
            Conv::SlidingWindow => {
                let on = value.as_bool().ok_or("expected true or false")?;
                let mode = if on { "dementor" } else { "precise" };
                Ok(one(toml::Value::String(mode.into()), String::new()))
            }
            Conv::Eos => {
                let on = value.as_bool().ok_or("expected true or false")?;
                let kind = match self.values.get("add_eos_token_type") {
                    Some(v) => eos_type(v).unwrap_or("every-block"),
                    None => "every-block",
                };
                let eos = if on { kind } else { "none" };
                Ok(one(
                    toml::Value::String(eos.into()),
                    "with add_eos_token_type".into(),
                ))
            }
            Conv::EosType => {
                let kind = eos_type(value)?;
                if self.values.contains_key("add_eos_token") {
                    unused("combined into eos with add_eos_token (see there)")
                } else {
                    Ok(one(
                        toml::Value::String(kind.into()),
                        "add_eos_token absent: the original's default true".into(),
                    ))
                }
            }
            Conv::LoraAlpha if self.rslora() => {
                unused("lora_RS is on, so lora_RS_alpha is the alpha (as in the original)")
            }
            Conv::LoraAlpha => Ok(one(to_toml(value)?, String::new())),
            Conv::RsAlpha if !self.rslora() => unused("lora_RS is off"),
            Conv::RsAlpha => {
                let x = value.as_f64().ok_or("expected a number")?;
                if x < 1.0 {
                    Ok(one(
                        toml::Value::Float(1.0),
                        format!("{x} raised to 1, as the original clamped it"),
                    ))
                } else {
                    Ok(one(to_toml(value)?, String::new()))
                }
            }
            Conv::GradAccum if self.number("batch_size").unwrap_or(0.0) > 0.0 => unused(
                "replaced by batch_size // micro_batch_size, as the legacy batch_size is > 0 \
                 (the original's fix_old_version)",
            ),
            Conv::GradAccum => Ok(one(to_toml(value)?, String::new())),
            Conv::LegacyBatch => {
                let legacy = value
                    .as_f64()
                    .filter(|x| *x >= 0.0)
                    .ok_or("expected a number >= 0")?;
                if legacy == 0.0 {
                    return unused(
                        "the legacy batch size, 0 in every file the current original writes",
                    );
                }
                let micro = self.number("micro_batch_size").unwrap_or(4.0);
                let ga = if micro >= 1.0 {
                    (legacy / micro).floor()
                } else {
                    0.0
                };
                if ga < 1.0 {
                    return Err(format!(
                        "the legacy batch_size gives grad_accum = batch_size // micro_batch_size = {legacy} // \
                         {micro} = {ga}, and it must be at least 1: set batch_size to 0"
                    ));
                }
                Ok(one(
                    toml::Value::Integer(ga as i64),
                    format!("batch_size // micro_batch_size = {legacy} // {micro} (the original's fix_old_version)"),
                ))
            }
            Conv::ReportTo => match value.as_str() {
                Some("None") => Ok(one(
                    toml::Value::Array(Vec::new()),
                    "the original's None meant every installed integration (bug 26); here it means none".into(),
                )),
                Some(name) if name.eq_ignore_ascii_case("wandb") => {
                    unused("Weights & Biases is not supported")
                }
                Some(name) => Ok(one(
                    toml::Value::Array(vec![toml::Value::String(name.into())]),
                    String::new(),
                )),
                None => Ok(one(to_toml(value)?, String::new())),
            },
        }
    }

    /// Converts the micro-step keys again with the run's final `grad_accum` (the file's own may have been
    /// replaced by a flag or a later config), for keys still taken from this file.
    pub fn finish(&mut self, settings: &mut Settings, sources: &Sources) -> Result<()> {
        let ga = settings.grad_accum.max(1) as u64;
        let path = self.path.clone();
        for (key, outcome) in &mut self.entries {
            let Outcome::Set(sets) = outcome else {
                continue;
            };
            for set in sets {
                let Some(micro) = set.micro else {
                    continue;
                };
                if !is_source(&path, sources.get(set.key), key) {
                    continue;
                }
                let fresh = micro_set(set.key, micro, ga);
                settings.set_key(set.key, fresh.value.clone())?;
                set.value = fresh.value;
                set.how = join(&fresh.how, set.how.split_once("; ").map_or("", |(_, n)| n));
            }
        }
        Ok(())
    }

    /// One line for a training run: how many keys were used, and which were not.
    pub fn summary(&self) -> String {
        let unused: Vec<&str> = self
            .entries
            .iter()
            .filter(|(_, o)| !matches!(o, Outcome::Set(sets) if !sets.is_empty()))
            .map(|(k, _)| k.as_str())
            .collect();
        format!(
            "{}: {} of its {} keys set a setting; not used: {} (--dry-run lists what each key became)",
            self.path.display(),
            self.entries.len() - unused.len(),
            self.entries.len(),
            unused.join(", ")
        )
    }

    /// The dry run's listing: every key of the file, with what it became or why nothing.
    pub fn listing(&self, settings: &Settings, sources: &Sources) -> String {
        let mut out = format!(
            "# {} (Training PRO's settings), key by key\n",
            self.path.display()
        );
        for (key, outcome) in &self.entries {
            let value = self.values.get(key).map_or_else(String::new, shown);
            let left = format!("{key} = {value}");
            let right = match outcome {
                Outcome::Unused(why) => why.clone(),
                Outcome::Set(sets) if sets.is_empty() => "nothing (its value was refused)".into(),
                Outcome::Set(sets) => sets
                    .iter()
                    .map(|set| {
                        let source = sources.get(set.key);
                        let ours = is_source(&self.path, source, key);
                        // The setting as it reads (3 -> 3.0 for a decimal one) while this key decides it.
                        let value = match settings.value_of(set.key) {
                            Some(v) if ours => v,
                            _ => set.value.clone(),
                        };
                        let mut s = format!("{} = {value}", set.key);
                        if !set.how.is_empty() {
                            let _ = write!(s, " ({})", set.how);
                        }
                        if !ours {
                            let now = settings
                                .value_of(set.key)
                                .map_or_else(String::new, |v| v.to_string());
                            let _ = write!(s, ", overridden by {source}: {} = {now}", set.key);
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            let _ = writeln!(out, "{left:<40} -> {right}");
        }
        out
    }
}

/// Whether `source` is `key` of the file `path`.
fn is_source(path: &Path, source: &Source, key: &str) -> bool {
    matches!(source, Source::Original { file, key: k } if file == path && k == key)
}

/// `a; b`, leaving out empty parts.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}; {b}"),
    }
}

/// A micro-step count converted with `ga`.
fn micro_set(key: &'static str, micro: f64, ga: u64) -> Set {
    let steps = (micro / ga as f64).ceil();
    let how = if micro == 0.0 {
        "0: off".to_string()
    } else {
        format!("{micro} micro-steps: ceil({micro} / grad_accum {ga}) optimizer steps, the original's rounding")
    };
    Set {
        key,
        value: toml::Value::Integer(steps as i64),
        how,
        micro: Some(micro),
    }
}

/// A micro-step value of the file converted with the file's `ga` (converted again in
/// [`OriginalConfig::finish`]).
fn micro_steps(key: &'static str, value: &Value, ga: u64) -> std::result::Result<Set, String> {
    let micro = value
        .as_f64()
        .ok_or("expected a number of micro-steps (forward passes)")?;
    if !(0.0..=i64::MAX as f64 / 2.0).contains(&micro) {
        return Err(format!(
            "give a number of micro-steps from 0 (off) to {}",
            i64::MAX / 2
        ));
    }
    Ok(micro_set(key, micro, ga))
}

/// Our `eos` name of an `add_eos_token_type` value.
fn eos_type(v: &Value) -> std::result::Result<&'static str, String> {
    match v.as_str() {
        Some("Every Block") => Ok("every-block"),
        Some("Hard Cut Blocks Only") => Ok("hard-cut"),
        _ => Err("expected \"Every Block\" or \"Hard Cut Blocks Only\"".into()),
    }
}

/// The JSON kind of a value, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A JSON value as TOML: whole numbers (also `32.0`, as the UI's number boxes give them) become integers, so
/// both whole-number and decimal settings read them.
fn to_toml(v: &Value) -> std::result::Result<toml::Value, String> {
    Ok(match v {
        Value::Null => return Err("null: expected a value".into()),
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(x)) if x.fract() == 0.0 && x.abs() < 9.0e15 => {
                toml::Value::Integer(x as i64)
            }
            (None, Some(x)) => toml::Value::Float(x),
            (None, None) => return Err("the number is out of range".into()),
        },
        Value::Array(items) => toml::Value::Array(
            items
                .iter()
                .map(to_toml)
                .collect::<std::result::Result<_, _>>()?,
        ),
        Value::Object(_) => return Err("expected a single value, not an object".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{RunFlags, SettingFlags};
    use crate::sources::Resolved;

    /// The fixture: a training_parameters.json as the original writes it, with its defaults.
    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/training_parameters.json")
    }

    /// The fixture with `changes` (key, JSON value; `null` removes the key) written to a temporary folder.
    fn variant(dir: &Path, changes: &[(&str, Value)]) -> PathBuf {
        let text = std::fs::read_to_string(fixture()).unwrap();
        let mut map: Map<String, Value> = serde_json::from_str(&text).unwrap();
        for (k, v) in changes {
            if v.is_null() {
                map.remove(*k);
            } else {
                map.insert(k.to_string(), v.clone());
            }
        }
        let path = dir.join("training_parameters.json");
        std::fs::write(&path, serde_json::to_string_pretty(&map).unwrap()).unwrap();
        path
    }

    fn resolve(configs: &[PathBuf], run: RunFlags) -> Result<Resolved> {
        let flags = SettingFlags {
            run,
            ..SettingFlags::default()
        };
        Resolved::new(configs, &flags, None)
    }

    fn listing(r: &Resolved) -> String {
        r.originals[0].listing(&r.settings, &r.sources)
    }

    /// The line of `key` in the listing.
    fn line<'a>(listing: &'a str, key: &str) -> &'a str {
        listing
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no line for {key} in\n{listing}"))
    }

    #[test]
    fn the_rules_follow_the_fixtures_key_order_and_name_real_settings() {
        let text = std::fs::read_to_string(fixture()).unwrap();
        // The file's key order (serde_json sorts its map, so read the keys off the text).
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"')?.split_once('"').map(|(k, _)| k))
            .collect();
        let rules: Vec<&str> = RULES.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, rules);
        let mut s = Settings::default();
        for (key, rule) in RULES {
            match rule {
                Rule::Key(ours, _, _) => {
                    let v = s
                        .value_of(ours)
                        .unwrap_or_else(|| panic!("{key}: no setting {ours}"));
                    s.set_key(ours, v).unwrap();
                }
                // The day `optimizer` or `report_to` becomes a setting, this fails: map the key
                // (`NotYet(k, c, _)` becomes `Key(k, c, "")`) and document it in the user guide.
                Rule::NotYet(ours, _, _) => assert!(
                    s.value_of(ours).is_none(),
                    "`{ours}` is a setting now: map the original's `{key}` to it"
                ),
                Rule::No(_) => {}
            }
        }
    }

    #[test]
    fn the_original_defaults_map_to_these_settings() {
        let r = resolve(&[fixture()], RunFlags::default()).unwrap();
        let s = &r.settings;
        assert_eq!(s.rank, 32);
        assert_eq!(s.alpha, 64.0);
        assert!(!s.rslora);
        assert_eq!(s.dropout, 0.05);
        assert_eq!(s.cutoff, 256);
        assert_eq!(s.batch_size, 4);
        assert_eq!(s.grad_accum, 1);
        assert_eq!(s.epochs, 3.0);
        assert_eq!(s.learning_rate, 3e-4);
        assert_eq!(s.scheduler.0.to_string(), "linear");
        assert_eq!(s.warmup_steps, 100);
        assert_eq!(s.warmup_ratio, 0.0);
        assert_eq!(s.eval_steps, 100);
        assert_eq!(s.save_every, 0);
        assert!(
            !s.save_each_epoch,
            "the original saved epochs only with save_steps > 0"
        );
        assert_eq!(s.save_under_loss, 1.8);
        assert_eq!(s.stop_at_loss, 0.0);
        assert_eq!(s.stop_at_epoch, 0);
        assert_eq!(s.hard_cut, "\\n\\n\\n");
        assert_eq!(s.train_only_after, "");
        assert_eq!(s.eos.0.to_string(), "every-block");
        assert!(s.bos);
        assert!(s.overlap);
        assert_eq!(s.mode.0.to_string(), "precise");
        assert_eq!(s.min_chars, 0);
        assert_eq!(s.targets.0.to_string(), "q-v");
        assert_eq!(s.neftune_alpha, 0.0);
        assert!(!s.group_by_length && !s.eliminate_long && !s.train_head);
        assert!(!s.gradient_checkpointing);
        assert_eq!((s.hybrid_data_ratio, s.hybrid_text_ratio), (100.0, 100.0));
        // Every mapped key is recorded with its source; the data names are not settings.
        assert_eq!(
            *r.sources.get("rank"),
            Source::Original {
                file: fixture(),
                key: "lora_rank".into()
            }
        );
        assert_eq!(*r.sources.get("text"), Source::Default);
        let l = listing(&r);
        assert_eq!(l.lines().count(), 1 + RULES.len(), "{l}");
        for (key, expected) in [
            ("lora_rank", "-> rank = 32"),
            (
                "warmup_steps",
                "-> warmup_steps = 100 (100 micro-steps: ceil(100 / grad_accum 1)",
            ),
            (
                "learning_rate",
                "-> learning_rate = 0.0003 (text read as a number)",
            ),
            ("add_eos_token", "-> eos = \"every-block\""),
            ("add_eos_token_type", "no effect: combined into eos"),
            ("lora_RS_alpha", "no effect: lora_RS is off"),
            ("batch_size", "no effect: the legacy batch size"),
            (
                "eval_stepsJSONL",
                "no effect: used only with a JSONL dataset",
            ),
            ("raw_text_file", "no equivalent: the original stored a name"),
            ("lora_name", "no equivalent: the adapter's name"),
            ("optimizer", "no equivalent yet: the optimizer is AdamW"),
            ("report_to", "(it will be report_to = [])"),
            ("sliding_window", "-> mode = \"precise\""),
            (
                "save_steps",
                "save_every = 0 (0: off); save_each_epoch = false",
            ),
        ] {
            assert!(line(&l, key).contains(expected), "{key}: {}", line(&l, key));
        }
        r.validate().unwrap();
    }

    #[test]
    fn micro_steps_become_optimizer_steps_with_the_originals_rounding() {
        let dir = tempfile::tempdir().unwrap();
        let path = variant(
            dir.path(),
            &[
                ("grad_accumulation", 4.into()),
                ("warmup_steps", 100.0.into()),
                ("save_steps", 10.0.into()),
                ("eval_steps", 6.into()),
            ],
        );
        let r = resolve(std::slice::from_ref(&path), RunFlags::default()).unwrap();
        let s = &r.settings;
        assert_eq!(s.grad_accum, 4);
        assert_eq!(s.warmup_steps, 25);
        assert_eq!(s.save_every, 3, "ceil(10 / 4)");
        assert!(s.save_each_epoch);
        assert_eq!(s.eval_steps, 2, "ceil(6 / 4)");
        let l = listing(&r);
        assert!(
            line(&l, "save_steps").contains("ceil(10 / grad_accum 4)"),
            "{l}"
        );

        // The run's grad_accum wins: the micro-steps are converted with it.
        let r = resolve(
            &[path],
            RunFlags {
                grad_accum: Some(3),
                ..RunFlags::default()
            },
        )
        .unwrap();
        assert_eq!(
            (
                r.settings.warmup_steps,
                r.settings.save_every,
                r.settings.eval_steps
            ),
            (34, 4, 2)
        );
        let l = listing(&r);
        assert!(
            line(&l, "warmup_steps").contains("ceil(100 / grad_accum 3)"),
            "{l}"
        );
        assert!(
            line(&l, "grad_accumulation").contains("overridden by the command line"),
            "{l}"
        );

        // A JSONL dataset: eval_stepsJSONL is the cadence, eval_steps unused.
        let path = variant(
            dir.path(),
            &[
                ("grad_accumulation", 2.into()),
                ("datasetJSONL", "chat".into()),
                ("eval_steps", 100.into()),
                ("eval_stepsJSONL", 7.into()),
            ],
        );
        let r = resolve(&[path], RunFlags::default()).unwrap();
        assert_eq!(r.settings.eval_steps, 4, "ceil(7 / 2)");
        assert!(line(&listing(&r), "eval_steps").contains("replaced by eval_stepsJSONL"));
    }

    #[test]
    fn legacy_batch_size_sets_grad_accum() {
        let dir = tempfile::tempdir().unwrap();
        let path = variant(
            dir.path(),
            &[
                ("batch_size", 16.into()),
                ("micro_batch_size", 4.into()),
                ("grad_accumulation", 1.into()),
                ("warmup_steps", 10.into()),
            ],
        );
        let r = resolve(&[path], RunFlags::default()).unwrap();
        assert_eq!((r.settings.grad_accum, r.settings.warmup_steps), (4, 3));
        assert!(line(&listing(&r), "grad_accumulation").contains("fix_old_version"));
        let path = variant(dir.path(), &[("batch_size", 2.into())]);
        let err = resolve(&[path], RunFlags::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`batch_size`") && err.contains("set batch_size to 0"),
            "{err}"
        );
    }

    #[test]
    fn rslora_takes_lora_rs_alpha_clamped_or_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = variant(
            dir.path(),
            &[
                ("lora_RS", true.into()),
                ("lora_RS_alpha", 8.into()),
                ("lora_alpha", 128.into()),
            ],
        );
        let r = resolve(&[path], RunFlags::default()).unwrap();
        assert!(r.settings.rslora);
        assert_eq!(r.settings.alpha, 8.0);
        let l = listing(&r);
        assert!(
            line(&l, "lora_alpha").contains("no effect: lora_RS is on"),
            "{l}"
        );
        let path = variant(
            dir.path(),
            &[("lora_RS", true.into()), ("lora_RS_alpha", 0.5.into())],
        );
        assert_eq!(
            resolve(&[path], RunFlags::default())
                .unwrap()
                .settings
                .alpha,
            1.0
        );
        // No lora_RS_alpha in the file: the original's default 16.
        let path = variant(
            dir.path(),
            &[("lora_RS", true.into()), ("lora_RS_alpha", Value::Null)],
        );
        let r = resolve(&[path], RunFlags::default()).unwrap();
        assert_eq!(r.settings.alpha, 16.0);
        assert_eq!(*r.sources.get("alpha"), Source::RsloraDefault);
    }

    #[test]
    fn the_command_line_wins_and_the_listing_says_so() {
        let r = resolve(
            &[fixture()],
            RunFlags {
                rank: Some(8),
                ..RunFlags::default()
            },
        )
        .unwrap();
        assert_eq!(r.settings.rank, 8);
        assert_eq!(*r.sources.get("rank"), Source::CommandLine);
        let l = listing(&r);
        assert!(
            line(&l, "lora_rank").contains("rank = 32, overridden by the command line: rank = 8"),
            "{l}"
        );
    }

    #[test]
    fn a_toml_file_and_the_original_combine_in_the_order_given() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("run.toml");
        std::fs::write(&toml, "rank = 4\nseed = 9\n").unwrap();
        let r = resolve(&[toml.clone(), fixture()], RunFlags::default()).unwrap();
        assert_eq!((r.settings.rank, r.settings.seed), (32, 9));
        let r = resolve(&[fixture(), toml.clone()], RunFlags::default()).unwrap();
        assert_eq!(r.settings.rank, 4);
        assert_eq!(*r.sources.get("rank"), Source::Toml(toml));
    }

    #[test]
    fn bad_files_and_values_are_errors_naming_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("training_parameters.json");
        for (text, wanted) in [
            ("lora_rank = 8", "not JSON"),
            ("[1, 2]", "not a list"),
            ("{\"lora_rank\": \"abc\"}", "key `lora_rank` = \"abc\""),
            ("{\"lora_rank\": 8.5}", "key `lora_rank` = 8.5"),
            ("{\"learning_rate\": \"fast\"}", "`fast` is not a number"),
            (
                "{\"lr_scheduler_type\": \"sometimes\"}",
                "key `lr_scheduler_type`",
            ),
            (
                "{\"training_projection\": \"q-z\"}",
                "key `training_projection`",
            ),
            ("{\"warmup_steps\": -5}", "key `warmup_steps` = -5"),
            ("{\"add_eos_token_type\": \"Always\"}", "\"Every Block\""),
            ("{\"sliding_window\": \"yes\"}", "expected true or false"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = resolve(std::slice::from_ref(&path), RunFlags::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&path.display().to_string()), "{text}: {err}");
            assert!(err.contains(wanted), "{text}: {err}");
            assert!(!err.contains('\n'), "{err:?}");
        }
        // Out of range: refused by the settings' validation, naming the original key and the file.
        std::fs::write(&path, "{\"lora_dropout\": 1.5, \"lora_rank\": 0}").unwrap();
        let r = resolve(std::slice::from_ref(&path), RunFlags::default()).unwrap();
        let err = r.validate().unwrap_err().to_string();
        assert!(
            err.contains("`dropout` is 1.5")
                && err.contains(&format!("key `lora_dropout` of {}", path.display())),
            "{err}"
        );
        assert!(err.contains("key `lora_rank`"), "{err}");
        // Unknown keys (other versions) and nulls are listed, not refused.
        std::fs::write(
            &path,
            "{\"lora_rank\": 8, \"new_knob\": 3, \"lora_alpha\": null}",
        )
        .unwrap();
        let r = resolve(&[path], RunFlags::default()).unwrap();
        assert_eq!((r.settings.rank, r.settings.alpha), (8, 64.0));
        let l = listing(&r);
        assert!(line(&l, "new_knob").contains("unknown key"), "{l}");
        assert!(line(&l, "lora_alpha").contains("null"), "{l}");
    }

    #[test]
    fn eos_bos_projection_and_report_to_choices() {
        let dir = tempfile::tempdir().unwrap();
        for (changes, eos) in [
            (vec![("add_eos_token", false.into())], "none"),
            (
                vec![("add_eos_token_type", "Hard Cut Blocks Only".into())],
                "hard-cut",
            ),
            (
                vec![
                    ("add_eos_token", Value::Null),
                    ("add_eos_token_type", "Hard Cut Blocks Only".into()),
                ],
                "hard-cut",
            ),
        ] {
            let path = variant(dir.path(), &changes);
            let r = resolve(&[path], RunFlags::default()).unwrap();
            assert_eq!(r.settings.eos.0.to_string(), eos, "{changes:?}");
        }
        let path = variant(
            dir.path(),
            &[
                ("add_bos_token", false.into()),
                ("training_projection", "k-v-down".into()),
                ("sliding_window", true.into()),
                ("lr_scheduler_type", "FP_low_epoch_annealing".into()),
                ("min_chars", (-3).into()),
                ("report_to", "wandb".into()),
            ],
        );
        let r = resolve(&[path], RunFlags::default()).unwrap();
        let s = &r.settings;
        assert!(!s.bos);
        assert_eq!(s.targets.0.to_string(), "k-v-down");
        assert_eq!(s.mode.0.to_string(), "dementor");
        assert_eq!(s.scheduler.0.to_string(), "FP_low_epoch_annealing");
        assert_eq!(s.min_chars, 0);
        let l = listing(&r);
        assert!(
            line(&l, "report_to").contains("Weights & Biases is not supported"),
            "{l}"
        );
        assert!(line(&l, "min_chars").contains("negative becomes 0"), "{l}");
    }
}

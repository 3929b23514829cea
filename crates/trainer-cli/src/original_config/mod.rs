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

mod rules;
#[cfg(test)]
mod tests;

use rules::{Conv, Rule, DATA_NAME, RULES};

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

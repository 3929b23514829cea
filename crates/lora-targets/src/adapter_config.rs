//! PEFT's `adapter_config.json` for LoRA adapters.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::{Error, LoraSettings};

/// `target_modules` as PEFT stores it: a list of names, or one regex pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names; PEFT matches each against the end of a module's path.
    List(Vec<String>),
    /// A regular expression PEFT matches against full module paths.
    Pattern(String),
}

/// The contents of PEFT's `adapter_config.json` for a LoRA adapter.
///
/// Reading tolerates (and keeps, in [`AdapterConfig::extra`]) the many keys that
/// PEFT writes and this project does not use, so a read-then-written file keeps
/// them. Keys absent from the file take PEFT's `LoraConfig` defaults.
/// [`AdapterConfig::to_json`] writes keys sorted, as PEFT does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Always `"LORA"` (checked on read).
    pub peft_type: String,
    /// `"CAUSAL_LM"` for the adapters this project writes.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model's name or folder.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// The base model's hub revision, if any.
    #[serde(default)]
    pub revision: Option<String>,
    /// `true` in saved adapters.
    #[serde(default)]
    pub inference_mode: bool,
    /// LoRA rank.
    #[serde(default = "default_r")]
    pub r: usize,
    /// LoRA alpha (written as an integer when it is one, like PEFT).
    #[serde(default = "default_r_f64", serialize_with = "number")]
    pub lora_alpha: f64,
    /// Dropout on the input of A.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Adapted modules; `null` means PEFT's per-architecture default.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Scale by `alpha / sqrt(r)`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Modules trained and saved in full.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Bias training: only `"none"` is supported.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// `true` only for GPT-2 style Conv1D weights.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// PEFT's initialisation (`true`, `"gaussian"`, `"pissa"`, ...).
    #[serde(default = "default_init")]
    pub init_lora_weights: Value,
    /// DoRA (not supported for training or loading here).
    #[serde(default)]
    pub use_dora: bool,
    /// Per-module rank overrides (must be empty here).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, Value>,
    /// Per-module alpha overrides (must be empty here).
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, Value>,
    /// Restricts adapted layers (must be `null` here).
    #[serde(default)]
    pub layers_to_transform: Option<Value>,
    /// The PEFT version that wrote the file; not written by this crate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft_version: Option<String>,
    /// Every other key of the file, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn default_r() -> usize {
    8
}
fn default_r_f64() -> f64 {
    8.0
}
fn default_bias() -> String {
    "none".into()
}
fn default_init() -> Value {
    Value::Bool(true)
}

fn number<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    // Exactly representable integers are written as integers (PEFT writes `16`).
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        s.serialize_i64(*x as i64)
    } else {
        s.serialize_f64(*x)
    }
}

/// Keys PEFT writes that change what the adapter means; they must be off.
const MUST_BE_OFF: [(&str, &str); 7] = [
    ("lora_bias", "retrain without `lora_bias`"),
    ("use_qalora", "retrain without QALoRA"),
    ("use_bdlora", "retrain without block-diagonal LoRA"),
    (
        "target_parameters",
        "retrain targeting modules, not parameters",
    ),
    (
        "trainable_token_indices",
        "retrain without trainable tokens",
    ),
    ("layer_replication", "retrain without layer replication"),
    (
        "exclude_modules",
        "list the wanted modules in `target_modules` instead",
    ),
];

fn is_off(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

impl AdapterConfig {
    /// The config PEFT 0.21 loads for an adapter trained with `s` on `base_model_name_or_path`.
    #[must_use]
    pub fn from_settings(s: &LoraSettings, base_model_name_or_path: &str) -> Self {
        AdapterConfig {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: Some(base_model_name_or_path.to_owned()),
            revision: None,
            inference_mode: true,
            r: s.r,
            lora_alpha: s.alpha,
            lora_dropout: s.dropout,
            target_modules: Some(TargetModules::List(s.target_modules.clone())),
            use_rslora: s.use_rslora,
            modules_to_save: (!s.modules_to_save.is_empty()).then(|| s.modules_to_save.clone()),
            bias: default_bias(),
            fan_in_fan_out: false,
            init_lora_weights: default_init(),
            use_dora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            layers_to_transform: None,
            peft_version: None,
            extra: BTreeMap::from([
                ("layers_pattern".to_owned(), Value::Null),
                ("lora_bias".to_owned(), Value::Bool(false)),
            ]),
        }
    }

    /// The settings this adapter was trained with.
    ///
    /// Fails, naming the field, for PEFT features this project cannot train or
    /// load (DoRA, per-module ranks, regex targets, bias training, ...) and for
    /// values [`LoraSettings::validate`] rejects.
    pub fn to_settings(&self) -> Result<LoraSettings, Error> {
        let unsupported = |field, value: String, hint| Error::Unsupported { field, value, hint };
        let target_modules = match &self.target_modules {
            Some(TargetModules::List(list)) => list.clone(),
            Some(TargetModules::Pattern(p)) => {
                return Err(unsupported(
                    "target_modules",
                    format!("{p:?}"),
                    "a regex pattern cannot be resolved here; list the module names instead",
                ))
            }
            None => {
                return Err(unsupported(
                    "target_modules",
                    "null".into(),
                    "list the adapted module names (e.g. [\"q_proj\", \"v_proj\"])",
                ))
            }
        };
        if self.bias != "none" {
            return Err(unsupported(
                "bias",
                format!("{:?}", self.bias),
                "only \"none\" is supported; retrain without bias training",
            ));
        }
        if self.fan_in_fan_out {
            return Err(unsupported(
                "fan_in_fan_out",
                "true".into(),
                "Conv1D (GPT-2 style) weights are not supported",
            ));
        }
        if self.use_dora {
            return Err(unsupported(
                "use_dora",
                "true".into(),
                "retrain as plain LoRA (DoRA is not supported)",
            ));
        }
        for (field, map) in [
            ("rank_pattern", &self.rank_pattern),
            ("alpha_pattern", &self.alpha_pattern),
        ] {
            if !map.is_empty() {
                return Err(unsupported(
                    field,
                    Value::Object(map.clone().into_iter().collect()).to_string(),
                    "per-module ranks and alphas are not supported; use one r and lora_alpha",
                ));
            }
        }
        if let Some(v) = self.layers_to_transform.as_ref().filter(|v| !is_off(v)) {
            return Err(unsupported(
                "layers_to_transform",
                v.to_string(),
                "adapting a subset of layers is not supported; remove the key",
            ));
        }
        for (field, hint) in MUST_BE_OFF {
            if let Some(v) = self.extra.get(field).filter(|v| !is_off(v)) {
                return Err(unsupported(field, v.to_string(), hint));
            }
        }
        let s = LoraSettings {
            r: self.r,
            alpha: self.lora_alpha,
            use_rslora: self.use_rslora,
            dropout: self.lora_dropout,
            target_modules,
            modules_to_save: self.modules_to_save.clone().unwrap_or_default(),
        };
        s.validate()?;
        Ok(s)
    }

    /// Parses the text of an `adapter_config.json`; errors name the line and column.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let cfg: AdapterConfig = serde_json::from_str(text).map_err(|source| {
            let line_text = text
                .lines()
                .nth(source.line().saturating_sub(1))
                .map(str::trim)
                .filter(|l| !l.is_empty() && source.line() > 0)
                .map(|l| format!(", in `{}`", l.chars().take(120).collect::<String>()))
                .unwrap_or_default();
            Error::Json {
                cause: source,
                line_text,
            }
        })?;
        if cfg.peft_type != "LORA" {
            return Err(Error::Unsupported {
                field: "peft_type",
                value: format!("{:?}", cfg.peft_type),
                hint: "only LoRA adapters (\"LORA\") are supported",
            });
        }
        Ok(cfg)
    }

    /// The JSON text (keys sorted, 2-space indent, trailing newline).
    #[must_use]
    pub fn to_json(&self) -> String {
        // All keys are strings and all values plain data, so serialising cannot fail.
        let value = serde_json::to_value(self).expect("AdapterConfig is plain JSON data");
        let sorted: BTreeMap<String, Value> = match value {
            Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        let mut text = serde_json::to_string_pretty(&sorted).expect("a map of JSON values");
        text.push('\n');
        text
    }

    /// Reads and parses `path`; errors name the file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            action: "cannot read adapter config",
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| Error::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// Writes [`AdapterConfig::to_json`] to `path` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let io = |source| Error::Io {
            action: "cannot write adapter config",
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A temporary file beside the target, synced, then renamed over it.
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.tmp"))
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(self.to_json().as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> impl Strategy<Value = LoraSettings> {
        (
            1usize..2048,
            prop_oneof![(1u32..4096).prop_map(f64::from), 0.01f64..1e4],
            any::<bool>(),
            prop_oneof![Just(0.0), 0.0f64..0.999],
            proptest::collection::vec("[a-z][a-z0-9_]{0,10}", 1..8),
            proptest::collection::vec("[a-z][a-z_.]{0,10}[a-z]", 0..3),
        )
            .prop_map(
                |(r, alpha, use_rslora, dropout, target_modules, modules_to_save)| LoraSettings {
                    r,
                    alpha,
                    use_rslora,
                    dropout,
                    target_modules,
                    modules_to_save,
                },
            )
            .prop_filter("valid", |s| s.validate().is_ok())
    }

    proptest! {
        #[test]
        fn settings_round_trip_through_json(s in settings(), base in "[A-Za-z0-9._/-]{1,30}") {
            let cfg = AdapterConfig::from_settings(&s, &base);
            let back = AdapterConfig::from_json(&cfg.to_json()).unwrap();
            prop_assert_eq!(&back, &cfg);
            prop_assert_eq!(back.to_settings().unwrap(), s);
            prop_assert_eq!(back.base_model_name_or_path.as_deref(), Some(base.as_str()));
        }
    }

    #[test]
    fn integral_alpha_is_written_as_an_integer() {
        let s = LoraSettings {
            alpha: 16.0,
            ..Default::default()
        };
        let text = AdapterConfig::from_settings(&s, "m").to_json();
        assert!(text.contains("\"lora_alpha\": 16,"), "{text}");
        let s = LoraSettings {
            alpha: 0.5,
            ..Default::default()
        };
        assert!(AdapterConfig::from_settings(&s, "m")
            .to_json()
            .contains("\"lora_alpha\": 0.5,"));
    }
}

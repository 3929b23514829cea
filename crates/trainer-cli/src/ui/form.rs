//! The setup page's form read as the command line reads its flags: every value goes through the same clap
//! parser as `trainer-cli train --KEY VALUE`, the settings through the same resolution and
//! [`Settings::validate`](crate::settings::Settings::validate), so a bad value gets the command line's message,
//! next to its field. Paths are server-side and must lie under one of the `--ui-root` folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use serde::{Deserialize, Serialize};

use crate::settings::{SettingFlags, Settings};
use crate::sources::Resolved;
use crate::train::TrainArgs;

/// The settings that name a file or folder to read: each must lie under a root.
pub const PATH_KEYS: [&str; 7] = [
    "model",
    "text",
    "dataset",
    "format",
    "chat_template",
    "eval_dataset",
    "init_adapter",
];

/// What the page sends: the run's name (its folder under `--runs`) and the form's values, by setting key.
#[derive(Debug, Deserialize)]
pub struct Form {
    /// The run's folder name under `--runs` (not needed by Preview).
    #[serde(default)]
    pub name: String,
    /// Each setting's value as typed (booleans as `true`/`false`).
    pub values: BTreeMap<String, String>,
}

/// An error to show next to a field (`field` is the setting key, `name` for the run name, `""` for the form).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The field.
    pub field: String,
    /// The message, as the command line prints it.
    pub message: String,
}

fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// The setting flags of `train`, alone: the form's values are parsed by them.
#[derive(Debug, Parser)]
#[command(name = "trainer-cli train")]
struct Flags {
    #[command(flatten)]
    settings: SettingFlags,
}

/// A setting's value as the form shows it.
fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every setting key with its value as the form shows it, and its kind (`bool`, `int`, `float`, `text`).
pub fn values_of(s: &Settings) -> BTreeMap<String, (String, &'static str)> {
    let Ok(toml::Value::Table(t)) = toml::Value::try_from(s) else {
        return BTreeMap::new();
    };
    t.into_iter()
        .map(|(k, v)| {
            let kind = match v {
                toml::Value::Boolean(_) => "bool",
                toml::Value::Integer(_) => "int",
                toml::Value::Float(_) => "float",
                _ => "text",
            };
            (k, (shown(&v), kind))
        })
        .collect()
}

/// Each setting's help text, as `train --help` shows it, by setting key.
pub fn help_texts() -> BTreeMap<String, String> {
    Flags::command()
        .get_arguments()
        .filter_map(|a| {
            let key = a.get_long()?.replace('-', "_");
            Some((key, a.get_help()?.to_string()))
        })
        .collect()
}

/// The first line of a clap error without its `error: ` prefix: what the command line prints for the flag.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or("").trim();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// Whether `name` is one plain folder name (no separators, no `..`, not hidden).
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

/// The canonical form of `text` when it names an existing path under one of `roots` (canonical folders).
pub fn under_roots(roots: &[PathBuf], key: &str, text: &str) -> Result<PathBuf, String> {
    let path = Path::new(text);
    if !path.is_absolute() {
        return Err(format!(
            "{key}: `{text}` is not an absolute path: pick one from the list (under the server's --ui-root folders)"
        ));
    }
    let canonical = path
        .canonicalize()
        .map_err(|e| format!("{key}: cannot open {text}: {e}"))?;
    if roots.iter().any(|r| canonical.starts_with(r)) {
        Ok(canonical)
    } else {
        Err(format!(
            "{key}: {text} is outside the folders this server may read (its --ui-root folders)"
        ))
    }
}

/// The form as the arguments of `train`: the values that differ from the defaults become the flags the
/// command line would get (parsed by the same parser), the run's folder is `runs/NAME` (when `output` is
/// given), and the settings are resolved and validated as `train` does. Every error names its field.
pub fn train_args(
    form: &Form,
    roots: &[PathBuf],
    output: Option<&Path>,
) -> Result<TrainArgs, Vec<FieldError>> {
    let defaults = values_of(&Settings::default());
    let mut errors = Vec::new();
    let mut argv = vec!["trainer-cli train".to_string()];
    for (key, value) in &form.values {
        let Some((default, _)) = defaults.get(key) else {
            errors.push(field_error(key, format!("unknown setting `{key}`")));
            continue;
        };
        if key == "output" || value == default {
            continue;
        }
        let mut value = value.clone();
        if PATH_KEYS.contains(&key.as_str()) && !value.is_empty() {
            match under_roots(roots, key, &value) {
                Ok(p) => value = p.display().to_string(),
                Err(e) => {
                    errors.push(field_error(key, e));
                    continue;
                }
            }
        }
        let flag = format!("--{}", key.replace('_', "-"));
        match Flags::try_parse_from([argv[0].as_str(), &flag, &value]) {
            Ok(_) => argv.extend([flag, value]),
            Err(e) => errors.push(field_error(key, clap_message(&e))),
        }
    }
    if let Some(out) = output {
        argv.extend(["--output".to_string(), out.display().to_string()]);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let flags =
        Flags::try_parse_from(&argv).map_err(|e| vec![field_error("", clap_message(&e))])?;
    let resolved = Resolved::new(&[], &flags.settings, None)
        .map_err(|e| vec![field_error("", format!("{e:#}"))])?;
    if let Err(e) = resolved.settings.validate() {
        return Err(e
            .0
            .into_iter()
            .map(|e| field_error(&e.field, e.message))
            .collect());
    }
    let s = &resolved.settings;
    if s.model.as_os_str().is_empty() {
        errors.push(field_error(
            "model",
            "no model: pick a .gguf file or a model folder",
        ));
    }
    if s.text.as_os_str().is_empty() && s.dataset.as_os_str().is_empty() {
        errors.push(field_error(
            "text",
            "no training data: give a raw text, a dataset, or both (hybrid)",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(TrainArgs::from_settings(flags.settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(values: &[(&str, &str)]) -> Form {
        Form {
            name: String::new(),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn errors_name_their_field_with_the_command_line_message() {
        let errs =
            train_args(&form(&[("dropout", "1.5"), ("cutoff", "abc")]), &[], None).unwrap_err();
        let cutoff = errs.iter().find(|e| e.field == "cutoff").unwrap();
        assert!(cutoff.message.contains("'--cutoff <CUTOFF>'"), "{cutoff:?}");
        // Range errors come after the values parse: the bad cutoff is reported first.
        let errs = train_args(&form(&[("dropout", "1.5")]), &[], None).unwrap_err();
        let s = Settings {
            dropout: 1.5,
            ..Settings::default()
        };
        let expected = s.validate().unwrap_err().0[0].message.clone();
        assert_eq!(errs[0].field, "dropout");
        assert_eq!(errs[0].message, expected);
        let errs = train_args(&form(&[("nope", "1")]), &[], None).unwrap_err();
        assert_eq!(errs[0].field, "nope");
        // Every setting has a field with train's help text.
        let help = help_texts();
        for key in values_of(&Settings::default()).keys() {
            assert!(help.get(key).is_some_and(|h| !h.is_empty()), "{key}");
        }
    }

    #[test]
    fn paths_outside_the_roots_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.txt"), "x").unwrap();
        std::fs::write(t.path().join("b.txt"), "x").unwrap();
        let roots = [root.canonicalize().unwrap()];
        let inside = root.join("a.txt").display().to_string();
        assert!(under_roots(&roots, "text", &inside).is_ok());
        let sneaky = root.join("..").join("b.txt").display().to_string();
        assert!(under_roots(&roots, "text", &sneaky).is_err());
        assert!(under_roots(&roots, "text", "a.txt").is_err());
        let errs = train_args(&form(&[("text", &sneaky)]), &roots, None).unwrap_err();
        assert_eq!(errs[0].field, "text");
        assert!(errs[0].message.contains("outside"), "{errs:?}");
    }
}

//! Where each setting came from, and the settings of an invocation resolved from their sources: the defaults,
//! then each `--config` file in the order given (a TOML settings file, or the original's
//! `training_parameters.json`), then the command line. A later source wins over an earlier one. The dry run
//! shows the sources; error messages and `--init-adapter` conflicts name them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lora_targets::LoraSettings;

use crate::original_config::OriginalConfig;
use crate::settings::{SettingError, SettingErrors, SettingFlags, Settings};

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The rsLoRA default alpha ([`LoraSettings::RSLORA_DEFAULT_ALPHA`]): `rslora` is on and no alpha was given.
    RsloraDefault,
    /// A key of a TOML settings file.
    Toml(PathBuf),
    /// A key of the original's `training_parameters.json`, mapped to this setting.
    Original {
        /// The file.
        file: PathBuf,
        /// The original's key.
        key: String,
    },
    /// A command-line flag.
    CommandLine,
    /// Taken from the `--init-adapter` adapter (its rank, alpha, rsLoRA, targets, trained head).
    Adapter(PathBuf),
}

impl Source {
    /// Whether the user gave the value (anything but a default).
    pub fn is_explicit(&self) -> bool {
        !matches!(
            self,
            Source::Default | Source::RsloraDefault | Source::Adapter(_)
        )
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the default"),
            Source::RsloraDefault => write!(
                f,
                "the rsLoRA default (the original's lora_RS_alpha {})",
                LoraSettings::RSLORA_DEFAULT_ALPHA
            ),
            Source::Toml(path) => write!(f, "config file {}", path.display()),
            Source::Original { file, key } => write!(f, "key `{key}` of {}", file.display()),
            Source::CommandLine => f.write_str("the command line"),
            Source::Adapter(path) => write!(f, "the adapter {} (--init-adapter)", path.display()),
        }
    }
}

/// The source of every setting (absent keys: [`Source::Default`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources(BTreeMap<String, Source>);

impl Sources {
    /// The source of `key`.
    pub fn get(&self, key: &str) -> &Source {
        self.0.get(key).unwrap_or(&Source::Default)
    }

    /// Records that `key` now comes from `source`.
    pub fn set(&mut self, key: &str, source: Source) {
        self.0.insert(key.to_string(), source);
    }

    /// Whether the user gave `key` (a flag, or a key of a config file).
    pub fn is_explicit(&self, key: &str) -> bool {
        self.get(key).is_explicit()
    }

    /// `" (from SOURCE)"` for a setting the user gave, `""` for a default: appended to messages about `key`.
    pub fn from(&self, key: &str) -> String {
        let source = self.get(key);
        if source.is_explicit() {
            format!(" (from {source})")
        } else {
            String::new()
        }
    }

    /// The lines of the dry run: every setting not from its default, with its source.
    pub fn text(&self, settings: &Settings) -> String {
        let mut out = String::new();
        for (key, source) in &self.0 {
            if *source == Source::Default {
                continue;
            }
            let value = settings
                .value_of(key)
                .map_or_else(String::new, |v| v.to_string());
            out.push_str(&format!("{:<40} {source}\n", format!("{key} = {value}")));
        }
        if out.is_empty() {
            out.push_str("(every setting is at its default)\n");
        }
        out
    }
}

/// The settings of an invocation, where each came from, and the original's files that were read.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The settings.
    pub settings: Settings,
    /// Their sources.
    pub sources: Sources,
    /// Each `training_parameters.json` read, with what each of its keys became.
    pub originals: Vec<OriginalConfig>,
}

impl Resolved {
    /// Reads `configs` in order over the defaults, then applies the flags (and the old `--dementor` flag),
    /// the rsLoRA default alpha and the micro-step conversions of the original's files (with the final
    /// `grad_accum`). Settings are not validated here: see [`Resolved::validate`].
    pub fn new(configs: &[PathBuf], flags: &SettingFlags, dementor: Option<bool>) -> Result<Self> {
        let mut r = Resolved {
            settings: Settings::default(),
            sources: Sources::default(),
            originals: Vec::new(),
        };
        for path in configs {
            if OriginalConfig::is_original(path) {
                let mut original = OriginalConfig::read(path)?;
                original.apply(&mut r.settings, &mut r.sources)?;
                r.originals.push(original);
            } else {
                r.read_toml(path)?;
            }
        }
        r.settings.apply(flags);
        for key in Settings::given(flags) {
            r.sources.set(key, Source::CommandLine);
        }
        if let Some(dementor) = dementor {
            r.settings.mode.0 = if dementor {
                prts_chunker::Mode::Dementor
            } else {
                prts_chunker::Mode::Precise
            };
            r.sources.set("mode", Source::CommandLine);
        }
        if r.settings.rslora && !r.sources.is_explicit("alpha") {
            r.settings.alpha = LoraSettings::RSLORA_DEFAULT_ALPHA;
            r.sources.set("alpha", Source::RsloraDefault);
        }
        for original in &mut r.originals {
            original.finish(&mut r.settings, &r.sources)?;
        }
        Ok(r)
    }

    /// Reads a TOML settings file over the current settings.
    fn read_toml(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let keys = self
            .settings
            .overlay_toml(&text)
            .with_context(|| format!("config {}", path.display()))?;
        for key in keys {
            self.sources.set(&key, Source::Toml(path.to_path_buf()));
        }
        Ok(())
    }

    /// [`Settings::validate`], each error followed by the source of its setting when the user gave it.
    pub fn validate(&self) -> std::result::Result<(), SettingErrors> {
        self.settings.validate().map_err(|SettingErrors(errors)| {
            SettingErrors(
                errors
                    .into_iter()
                    .map(|e| SettingError {
                        message: format!("{}{}", e.message, self.sources.from(&e.field)),
                        field: e.field,
                    })
                    .collect(),
            )
        })
    }

    /// What `--dry-run` prints about the sources: the settings not at their defaults with where each came
    /// from, then each original file key by key.
    pub fn text(&self) -> String {
        let mut out = format!(
            "# where the settings came from (the others are defaults)\n{}",
            self.sources.text(&self.settings)
        );
        for original in &self.originals {
            out.push('\n');
            out.push_str(&original.listing(&self.settings, &self.sources));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::RunFlags;

    fn flags(run: RunFlags) -> SettingFlags {
        SettingFlags {
            run,
            ..SettingFlags::default()
        }
    }

    #[test]
    fn rslora_without_alpha_takes_the_original_default_and_an_explicit_alpha_wins() {
        let on = RunFlags {
            rslora: Some(true),
            rank: Some(16),
            ..RunFlags::default()
        };
        let r = Resolved::new(&[], &flags(on.clone()), None).unwrap();
        assert_eq!(r.settings.alpha, 16.0);
        assert_eq!(*r.sources.get("alpha"), Source::RsloraDefault);
        assert!(!r.sources.is_explicit("alpha"));
        let lora = LoraSettings {
            r: r.settings.rank,
            alpha: r.settings.alpha,
            use_rslora: true,
            ..LoraSettings::default()
        };
        assert_eq!(lora.scaling(), 16.0 / 4.0);

        let r = Resolved::new(
            &[],
            &flags(RunFlags {
                alpha: Some(64.0),
                ..on
            }),
            None,
        )
        .unwrap();
        assert_eq!(r.settings.alpha, 64.0);
        assert_eq!(*r.sources.get("alpha"), Source::CommandLine);
        // Without rsLoRA the default alpha stays 64.
        let r = Resolved::new(&[], &SettingFlags::default(), None).unwrap();
        assert_eq!(r.settings.alpha, 64.0);
    }

    #[test]
    fn toml_files_then_flags_each_recorded_with_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
        std::fs::write(&a, "rank = 8\nalpha = 16.0\nseed = 1\n").unwrap();
        std::fs::write(&b, "rank = 12\ndementor = true\n").unwrap();
        let given = flags(RunFlags {
            seed: Some(7),
            ..RunFlags::default()
        });
        let r = Resolved::new(&[a.clone(), b.clone()], &given, None).unwrap();
        assert_eq!(
            (r.settings.rank, r.settings.alpha, r.settings.seed),
            (12, 16.0, 7)
        );
        assert_eq!(*r.sources.get("rank"), Source::Toml(b.clone()));
        assert_eq!(*r.sources.get("alpha"), Source::Toml(a));
        assert_eq!(*r.sources.get("mode"), Source::Toml(b));
        assert_eq!(*r.sources.get("seed"), Source::CommandLine);
        assert_eq!(*r.sources.get("cutoff"), Source::Default);
        let text = r.text();
        assert!(
            text.contains("seed = 7") && text.contains("the command line"),
            "{text}"
        );
        assert!(!text.contains("cutoff"), "{text}");
    }

    #[test]
    fn validation_errors_name_the_source() {
        let given = flags(RunFlags {
            dropout: Some(1.5),
            ..RunFlags::default()
        });
        let r = Resolved::new(&[], &given, None).unwrap();
        let err = r.validate().unwrap_err();
        assert_eq!(err.0[0].field, "dropout");
        assert!(err.to_string().contains("(from the command line)"), "{err}");
    }
}

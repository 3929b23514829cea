//! [`Targets`]: what a user asks to adapt, a preset or a list of module names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{resolve, Arch, Error, Preset};

/// The modules a user asks to adapt: a [`Preset`] (`q-v`, `all-linear`, ...) or module names
/// (`q_proj,v_proj`). Written and read as that text (also through serde), so a settings file holds
/// `targets = "q-v"`.
///
/// ```
/// use lora_targets::{Arch, Preset, Targets};
/// let t: Targets = "Q-V".parse().unwrap();
/// assert_eq!(t, Targets::Preset(Preset::QV));
/// let t: Targets = "q_proj, o_proj".parse().unwrap();
/// assert_eq!(t.to_string(), "q_proj,o_proj");
/// let have: Vec<String> = ["q_proj", "v_proj", "o_proj"].map(String::from).to_vec();
/// assert_eq!(t.resolve(Arch::Llama, &have).unwrap(), ["q_proj", "o_proj"]);
/// assert!("q-x".parse::<Targets>().unwrap_err().to_string().contains("q-k-v-o"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// A named preset.
    Preset(Preset),
    /// Module names (at least one, each holding a `_`, as every linear module name does).
    Modules(Vec<String>),
}

impl Default for Targets {
    fn default() -> Self {
        Targets::Preset(Preset::QV)
    }
}

impl Targets {
    /// The module names of `arch` these targets stand for, checked against the model's linear
    /// modules `available` (see [`resolve`]).
    ///
    /// # Errors
    /// A requested module the model lacks, or no module at all.
    pub fn resolve(&self, arch: Arch, available: &[String]) -> Result<Vec<String>, Error> {
        let requested: Vec<String> = match self {
            Targets::Preset(p) => p.modules(arch).into_iter().map(str::to_string).collect(),
            Targets::Modules(m) => m.clone(),
        };
        resolve(&requested, available)
    }
}

impl FromStr for Targets {
    type Err = Error;

    /// A preset name (case-insensitive), or a comma list of module names. A text that is neither
    /// (no `_` in it) is reported as an unknown preset, listing the presets.
    fn from_str(s: &str) -> Result<Self, Error> {
        match Preset::from_str(s) {
            Ok(p) => Ok(Targets::Preset(p)),
            Err(preset_err) if !s.contains('_') => Err(preset_err),
            Err(_) => Ok(Targets::Modules(
                s.split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect(),
            )),
        }
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Targets::Preset(p) => write!(f, "{p}"),
            Targets::Modules(m) => f.write_str(&m.join(",")),
        }
    }
}

impl Serialize for Targets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_through_serde() {
        for text in ["q-v", "all-linear", "q_proj,v_proj,o_proj"] {
            let t: Targets = text.parse().unwrap();
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Targets>(&json).unwrap(), t);
        }
        assert!(serde_json::from_str::<Targets>("\"qv\"").is_err());
    }
}

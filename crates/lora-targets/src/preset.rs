//! Architectures, target-module presets and resolution against a model's modules.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A decoder architecture whose linear-module names this crate knows.
///
/// Parsed from the Hugging Face `model_type` or the GGUF `general.architecture`
/// value (`"llama"`, `"mistral"`, `"qwen2"`), case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Llama 1/2/3 and look-alikes (SmolLM2, TinyLlama, ...).
    Llama,
    /// Mistral 7B and look-alikes.
    Mistral,
    /// Qwen2 / Qwen2.5.
    Qwen2,
}

impl Arch {
    /// Every supported architecture.
    pub const ALL: [Arch; 3] = [Arch::Llama, Arch::Mistral, Arch::Qwen2];

    /// The canonical name (`"llama"`, `"mistral"`, `"qwen2"`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }

    /// The linear modules of one decoder layer (attention, then MLP), as short names.
    ///
    /// All three supported architectures use the Llama names; Qwen2 adds biases to
    /// q/k/v, which does not change the names. The output head (`lm_head`) is not a
    /// LoRA target here (PEFT's `all-linear` excludes it too); train it with
    /// `modules_to_save`.
    #[must_use]
    pub fn linear_modules(self) -> &'static [&'static str] {
        match self {
            Arch::Llama | Arch::Mistral | Arch::Qwen2 => &LLAMA_LINEAR,
        }
    }
}

const LLAMA_LINEAR: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let wanted = s.trim();
        Arch::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| Error::UnknownArch {
                given: s.to_owned(),
                valid: join(Arch::ALL.iter().map(|a| a.name())),
            })
    }
}

/// A named set of target modules, as offered by the original's "projections" radio
/// (the first five) plus `all-linear`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// `q-v`: q_proj, v_proj (the original's default).
    QV,
    /// `q-k-v`: q_proj, k_proj, v_proj.
    QKV,
    /// `q-k-v-o`: q_proj, k_proj, v_proj, o_proj.
    QKVO,
    /// `k-v-down`: k_proj, v_proj, down_proj.
    KVDown,
    /// `all`: the original's seven projections (gate, down, up, q, k, v, o).
    All,
    /// `all-linear`: every linear module of a decoder layer of the architecture.
    AllLinear,
}

impl Preset {
    /// Every preset, in the order users see them.
    pub const ALL: [Preset; 6] = [
        Preset::QV,
        Preset::QKV,
        Preset::QKVO,
        Preset::KVDown,
        Preset::All,
        Preset::AllLinear,
    ];

    /// The preset's name as users type it (`"q-v"`, ..., `"all-linear"`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Preset::QV => "q-v",
            Preset::QKV => "q-k-v",
            Preset::QKVO => "q-k-v-o",
            Preset::KVDown => "k-v-down",
            Preset::All => "all",
            Preset::AllLinear => "all-linear",
        }
    }

    /// The target modules (short names) of this preset on `arch`.
    ///
    /// ```
    /// use lora_targets::{Arch, Preset};
    /// assert_eq!(Preset::KVDown.modules(Arch::Qwen2), ["k_proj", "v_proj", "down_proj"]);
    /// ```
    #[must_use]
    pub fn modules(self, arch: Arch) -> Vec<&'static str> {
        match self {
            Preset::QV => vec!["q_proj", "v_proj"],
            Preset::QKV => vec!["q_proj", "k_proj", "v_proj"],
            Preset::QKVO => vec!["q_proj", "k_proj", "v_proj", "o_proj"],
            Preset::KVDown => vec!["k_proj", "v_proj", "down_proj"],
            // The original's order (spec §3.2); PEFT treats the list as a set.
            Preset::All => vec![
                "gate_proj",
                "down_proj",
                "up_proj",
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
            ],
            Preset::AllLinear => arch.linear_modules().to_vec(),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let wanted = s.trim();
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| Error::UnknownPreset {
                given: s.to_owned(),
                valid: join(Preset::ALL.iter().map(|p| p.name())),
            })
    }
}

/// Checks `requested` target-module short names against the short names of the
/// model's actual linear modules (`available`, duplicates allowed, e.g. one entry
/// per layer).
///
/// Returns the requested names once each, in request order. An empty request, or
/// any name the model lacks, is an error that lists the available modules.
///
/// ```
/// use lora_targets::resolve;
/// let have: Vec<String> = ["q_proj", "k_proj", "v_proj"].map(String::from).to_vec();
/// let want = vec!["v_proj".to_string(), "q_proj".to_string(), "v_proj".to_string()];
/// assert_eq!(resolve(&want, &have).unwrap(), ["v_proj", "q_proj"]);
/// let err = resolve(&["gate_proj".to_string()], &have).unwrap_err();
/// assert!(err.to_string().contains("available linear modules: k_proj, q_proj, v_proj"));
/// ```
pub fn resolve(requested: &[String], available: &[String]) -> Result<Vec<String>, Error> {
    let mut have: Vec<&str> = available.iter().map(String::as_str).collect();
    have.sort_unstable();
    have.dedup();
    let listing = || {
        if have.is_empty() {
            "(none: the model reported no linear modules)".to_owned()
        } else {
            join(have.iter().copied())
        }
    };
    let mut out: Vec<String> = Vec::new();
    let mut missing: Vec<&str> = Vec::new();
    for name in requested {
        let name = name.trim();
        if name.is_empty() || out.iter().any(|o| o == name) || missing.contains(&name) {
            continue;
        }
        if have.binary_search(&name).is_ok() {
            out.push(name.to_owned());
        } else {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        return Err(Error::MissingTargets {
            missing: join(missing.into_iter()),
            available: listing(),
        });
    }
    if out.is_empty() {
        return Err(Error::NoTargets {
            available: listing(),
        });
    }
    Ok(out)
}

/// Both name types are written as their names and read case-insensitively, so
/// config files say `preset = "q-k-v-o"` and `arch = "llama"`.
macro_rules! serde_by_name {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                name.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_by_name!(Arch);
serde_by_name!(Preset);

pub(crate) fn join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_parse_case_insensitively_and_round_trip() {
        for p in Preset::ALL {
            assert_eq!(p.to_string().parse::<Preset>().unwrap(), p);
            assert_eq!(p.name().to_uppercase().parse::<Preset>().unwrap(), p);
        }
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
            assert_eq!(a.name().to_uppercase().parse::<Arch>().unwrap(), a);
        }
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let e = "q-k".parse::<Preset>().unwrap_err().to_string();
        assert!(
            e.contains("q-v, q-k-v, q-k-v-o, k-v-down, all, all-linear"),
            "{e}"
        );
        let e = "gpt2".parse::<Arch>().unwrap_err().to_string();
        assert!(e.contains("llama, mistral, qwen2"), "{e}");
    }

    #[test]
    fn names_serialize_as_strings() {
        let json = serde_json::to_string(&(Preset::KVDown, Arch::Qwen2)).unwrap();
        assert_eq!(json, r#"["k-v-down","qwen2"]"#);
        let back: (Preset, Arch) = serde_json::from_str(r#"["ALL-linear", "Mistral"]"#).unwrap();
        assert_eq!(back, (Preset::AllLinear, Arch::Mistral));
        let err = serde_json::from_str::<Preset>(r#""qv""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("use one of q-v"), "{err}");
    }

    #[test]
    fn presets_match_the_original() {
        let a = Arch::Llama;
        assert_eq!(Preset::QV.modules(a), ["q_proj", "v_proj"]);
        assert_eq!(Preset::QKV.modules(a), ["q_proj", "k_proj", "v_proj"]);
        assert_eq!(
            Preset::QKVO.modules(a),
            ["q_proj", "k_proj", "v_proj", "o_proj"]
        );
        assert_eq!(Preset::KVDown.modules(a), ["k_proj", "v_proj", "down_proj"]);
        let mut all = Preset::All.modules(a);
        let mut lin = Preset::AllLinear.modules(a);
        all.sort_unstable();
        lin.sort_unstable();
        assert_eq!(all, lin);
    }

    #[test]
    fn missing_and_empty_requests_are_errors() {
        let have: Vec<String> = LLAMA_LINEAR.map(String::from).to_vec();
        let e = resolve(&["c_attn".into(), "q_proj".into()], &have).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("c_attn") && !msg.contains("found in the model: q_proj"),
            "{msg}"
        );
        assert!(msg.contains("down_proj, gate_proj, k_proj"), "{msg}");
        assert!(matches!(resolve(&[], &have), Err(Error::NoTargets { .. })));
        assert!(matches!(
            resolve(&["  ".into()], &have),
            Err(Error::NoTargets { .. })
        ));
        let e = resolve(&["q_proj".into()], &[]).unwrap_err().to_string();
        assert!(e.contains("reported no linear modules"), "{e}");
    }

    proptest! {
        #[test]
        fn every_preset_resolves_on_its_arch(pi in 0usize..6, ai in 0usize..3) {
            let (p, a) = (Preset::ALL[pi], Arch::ALL[ai]);
            let have: Vec<String> = a.linear_modules().iter().map(|s| s.to_string()).collect();
            let want: Vec<String> = p.modules(a).iter().map(|s| s.to_string()).collect();
            prop_assert_eq!(resolve(&want, &have).unwrap(), want);
        }

        #[test]
        fn resolve_returns_a_deduplicated_subset_or_names_every_missing_one(
            want in proptest::collection::vec("[a-d]_proj", 0..8),
            have in proptest::collection::vec("[a-c]_proj", 0..8),
        ) {
            match resolve(&want, &have) {
                Ok(got) => {
                    prop_assert!(!got.is_empty());
                    for g in &got {
                        prop_assert!(have.contains(g));
                        prop_assert_eq!(got.iter().filter(|x| *x == g).count(), 1);
                    }
                    for w in &want {
                        prop_assert!(got.contains(w));
                    }
                }
                Err(Error::MissingTargets { missing, .. }) => {
                    for w in want.iter().filter(|w| !have.contains(w)) {
                        prop_assert!(missing.contains(w.as_str()));
                    }
                }
                Err(Error::NoTargets { .. }) => prop_assert!(want.is_empty()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }
}

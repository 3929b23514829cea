//! LoRA hyper-parameters: rank, alpha, rsLoRA, dropout and the module lists.

use serde::{Deserialize, Serialize};

use crate::Error;

/// The LoRA hyper-parameters of a run.
///
/// `Default` gives the original's defaults: r 32, alpha 64, no rsLoRA, dropout
/// 0.05, targets `q_proj`, `v_proj` (the `q-v` preset), nothing saved in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    /// Rank of the A/B matrices (at least 1).
    pub r: usize,
    /// LoRA alpha (finite, > 0). With rsLoRA it is the rsLoRA alpha.
    pub alpha: f64,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Dropout applied to the input of A, in `[0, 1)`.
    pub dropout: f64,
    /// Target module short names (e.g. `q_proj`), resolved with [`crate::resolve`].
    pub target_modules: Vec<String>,
    /// Modules trained and saved in full (e.g. `lm_head`, `embed_tokens`).
    pub modules_to_save: Vec<String>,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            r: 32,
            alpha: 64.0,
            use_rslora: false,
            dropout: 0.05,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            modules_to_save: Vec::new(),
        }
    }
}

impl LoraSettings {
    /// The alpha of a rank-stabilised LoRA when none is given: the original's `lora_RS_alpha` default, so the
    /// scale is `16 / sqrt(r)` (the plain default alpha 64 would make it four times larger).
    pub const RSLORA_DEFAULT_ALPHA: f64 = 16.0;

    /// Checks every field; the error names the first bad one (PEFT's name for it).
    pub fn validate(&self) -> Result<(), Error> {
        if self.r == 0 {
            return Err(invalid("r", "0", "the rank must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(invalid(
                "lora_alpha",
                &self.alpha.to_string(),
                "alpha must be a finite number greater than 0",
            ));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(invalid(
                "lora_dropout",
                &self.dropout.to_string(),
                "dropout must be at least 0 and below 1",
            ));
        }
        if self.target_modules.is_empty() {
            return Err(invalid(
                "target_modules",
                "[]",
                "name at least one module to adapt (e.g. the q-v preset: q_proj, v_proj)",
            ));
        }
        for (field, list) in [
            ("target_modules", &self.target_modules),
            ("modules_to_save", &self.modules_to_save),
        ] {
            if let Some(bad) = list.iter().find(|m| !is_module_name(m)) {
                return Err(invalid(
                    field,
                    &format!("{bad:?}"),
                    "module names are non-empty, dot-separated [A-Za-z0-9_] parts",
                ));
            }
        }
        Ok(())
    }

    /// The factor applied to `B·A·x`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    ///
    /// ```
    /// let mut s = lora_targets::LoraSettings { r: 16, alpha: 32.0, ..Default::default() };
    /// assert_eq!(s.scaling(), 2.0);
    /// s.use_rslora = true;
    /// assert_eq!(s.scaling(), 8.0);
    /// ```
    #[must_use]
    pub fn scaling(&self) -> f64 {
        // r == 0 is rejected by `validate`; report infinity rather than dividing silently.
        let r = self.r as f64;
        if self.use_rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }
}

fn invalid(field: &'static str, value: &str, expected: &'static str) -> Error {
    Error::InvalidSetting {
        field,
        value: value.to_owned(),
        expected,
    }
}

pub(crate) fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn field_of(s: &LoraSettings) -> Option<&'static str> {
        match s.validate() {
            Ok(()) => None,
            Err(Error::InvalidSetting { field, .. }) => Some(field),
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_scale_like_the_original() {
        let s = LoraSettings::default();
        assert_eq!(field_of(&s), None);
        assert_eq!(s.scaling(), 2.0);
    }

    #[test]
    fn bad_values_name_their_field() {
        let base = LoraSettings::default();
        let cases: Vec<(LoraSettings, &str)> = vec![
            (
                LoraSettings {
                    r: 0,
                    ..base.clone()
                },
                "r",
            ),
            (
                LoraSettings {
                    alpha: 0.0,
                    ..base.clone()
                },
                "lora_alpha",
            ),
            (
                LoraSettings {
                    alpha: -1.0,
                    ..base.clone()
                },
                "lora_alpha",
            ),
            (
                LoraSettings {
                    alpha: f64::NAN,
                    ..base.clone()
                },
                "lora_alpha",
            ),
            (
                LoraSettings {
                    alpha: f64::INFINITY,
                    ..base.clone()
                },
                "lora_alpha",
            ),
            (
                LoraSettings {
                    dropout: 1.0,
                    ..base.clone()
                },
                "lora_dropout",
            ),
            (
                LoraSettings {
                    dropout: -0.1,
                    ..base.clone()
                },
                "lora_dropout",
            ),
            (
                LoraSettings {
                    dropout: f64::NAN,
                    ..base.clone()
                },
                "lora_dropout",
            ),
            (
                LoraSettings {
                    target_modules: vec![],
                    ..base.clone()
                },
                "target_modules",
            ),
            (
                LoraSettings {
                    target_modules: vec!["q proj".into()],
                    ..base.clone()
                },
                "target_modules",
            ),
            (
                LoraSettings {
                    modules_to_save: vec!["".into()],
                    ..base.clone()
                },
                "modules_to_save",
            ),
        ];
        for (s, want) in cases {
            assert_eq!(field_of(&s), Some(want), "{s:?}");
            assert!(s.validate().unwrap_err().to_string().contains(want));
        }
    }

    proptest! {
        #[test]
        fn scaling_is_positive_finite_and_rslora_never_smaller(r in 1usize..4096, alpha in 1e-3f64..1e4) {
            let s = LoraSettings { r, alpha, ..Default::default() };
            prop_assert!(s.validate().is_ok());
            let plain = s.scaling();
            let rs = LoraSettings { use_rslora: true, ..s }.scaling();
            prop_assert!(plain.is_finite() && plain > 0.0);
            prop_assert!(rs >= plain);
            prop_assert!((plain * r as f64 - alpha).abs() <= 1e-9 * alpha);
        }

        #[test]
        fn dropout_in_unit_interval_is_accepted(d in 0.0f64..1.0) {
            let s = LoraSettings { dropout: d, ..Default::default() };
            prop_assert!(s.validate().is_ok());
        }
    }
}

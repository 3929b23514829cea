//! [`AdapterFormats`]: the formats a run writes its adapters in (every checkpoint and the final adapter).

use std::fmt;
use std::str::FromStr;

use lora_targets::LoraSettings;

use crate::error::{Error, Result};
use crate::gguf_lora::GgufBase;
use crate::model::Model;

/// The formats of a run's adapters: always PEFT (what checkpoints resume from), optionally also a llama.cpp
/// LoRA adapter GGUF ([`crate::ADAPTER_GGUF_FILE`]) beside it.
///
/// Written as `auto`, `peft` or `peft,gguf` (order free; a settings file may give a list, `["peft", "gguf"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterFormats {
    /// Both when the base is a GGUF file, PEFT only otherwise; with a trained `lm_head` / `embed_tokens`
    /// (`train_head`), which a llama.cpp LoRA cannot hold, PEFT only with a warning.
    #[default]
    Auto,
    /// PEFT only.
    Peft,
    /// PEFT and GGUF.
    PeftAndGguf,
}

impl FromStr for AdapterFormats {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.trim() == "auto" {
            return Ok(Self::Auto);
        }
        let (mut peft, mut gguf) = (false, false);
        for part in s.split(',').map(str::trim) {
            match part {
                "peft" => peft = true,
                "gguf" => gguf = true,
                other => {
                    return Err(format!(
                        "unknown adapter format `{other}`: give `auto`, `peft` or `peft,gguf`"
                    ))
                }
            }
        }
        match (peft, gguf) {
            (true, false) => Ok(Self::Peft),
            (true, true) => Ok(Self::PeftAndGguf),
            _ => Err(
                "`peft` must be among the adapter formats (checkpoints resume from it): give `peft` or \
                 `peft,gguf`"
                    .to_string(),
            ),
        }
    }
}

impl fmt::Display for AdapterFormats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Peft => "peft",
            Self::PeftAndGguf => "peft,gguf",
        })
    }
}

/// What [`AdapterFormats::resolve`] decided for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatChoice {
    /// The base to write GGUF copies for, when the run writes them (hand it to
    /// [`DirStore::with_gguf_copies`](crate::job::DirStore::with_gguf_copies)).
    pub gguf: Option<GgufBase>,
    /// A warning to show once at the start (the default skipped the GGUF copy).
    pub warning: Option<String>,
}

impl AdapterFormats {
    /// Decides the formats for training `lora` on `model`. Asking for `gguf` explicitly together with trained
    /// full modules (`modules_to_save`, `train_head`) is an error ([`Error::Setting`] `adapter_formats`),
    /// reported before training; the default skips the GGUF copy then, with a warning.
    pub fn resolve(self, model: &Model, lora: &LoraSettings) -> Result<FormatChoice> {
        let head = !lora.modules_to_save.is_empty();
        let gguf = match self {
            Self::Peft => false,
            Self::PeftAndGguf if head => {
                return Err(Error::setting(
                    "adapter_formats",
                    "a llama.cpp LoRA adapter GGUF cannot hold the fully trained lm_head / embed_tokens of \
                     train_head: drop `gguf` from adapter_formats or turn train_head off",
                ))
            }
            Self::PeftAndGguf => true,
            Self::Auto if head && model.source().is_file() => {
                return Ok(FormatChoice {
                    gguf: None,
                    warning: Some(
                        "train_head: the adapter trains lm_head / embed_tokens in full, which a llama.cpp LoRA \
                         adapter GGUF cannot hold; writing PEFT adapters only (set adapter_formats = \"peft\" \
                         to silence this)"
                            .to_string(),
                    ),
                })
            }
            Self::Auto => model.source().is_file(),
        };
        Ok(FormatChoice {
            gguf: if gguf {
                Some(GgufBase::of(model)?)
            } else {
                None
            },
            warning: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for (text, want) in [
            ("auto", AdapterFormats::Auto),
            ("peft", AdapterFormats::Peft),
            ("peft,gguf", AdapterFormats::PeftAndGguf),
            ("gguf, peft", AdapterFormats::PeftAndGguf),
        ] {
            let f: AdapterFormats = text.parse().unwrap();
            assert_eq!(f, want);
            assert_eq!(f.to_string().parse::<AdapterFormats>().unwrap(), want);
        }
        assert!("gguf"
            .parse::<AdapterFormats>()
            .unwrap_err()
            .contains("peft"));
        assert!("peft,onnx"
            .parse::<AdapterFormats>()
            .unwrap_err()
            .contains("onnx"));
    }
}

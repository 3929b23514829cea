//! PEFT on-disk tensor names (`adapter_model.safetensors`).
//!
//! PEFT's `save_pretrained` strips the adapter name: in memory a weight is
//! `…q_proj.lora_A.default.weight`, on disk `…q_proj.lora_A.weight`. A key with a
//! wrong prefix only makes PEFT warn and load a silent no-op adapter, so these
//! helpers are the one place the names are spelled.

use crate::settings::is_module_name;
use crate::Error;

const PREFIX: &str = "base_model.model.";

/// Which LoRA matrix a tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoraPart {
    /// `lora_A`, shape `[r, in_features]`.
    A,
    /// `lora_B`, shape `[out_features, r]`.
    B,
}

impl LoraPart {
    fn suffix(self) -> &'static str {
        match self {
            LoraPart::A => ".lora_A.weight",
            LoraPart::B => ".lora_B.weight",
        }
    }
}

/// The on-disk key of a LoRA matrix for the module at `module_path` (the base
/// model's own name, e.g. `model.layers.3.self_attn.q_proj`).
///
/// ```
/// use lora_targets::{lora_tensor_key, LoraPart};
/// assert_eq!(
///     lora_tensor_key("model.layers.3.self_attn.q_proj", LoraPart::A),
///     "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
/// );
/// ```
#[must_use]
pub fn lora_tensor_key(module_path: &str, part: LoraPart) -> String {
    format!("{PREFIX}{module_path}{}", part.suffix())
}

/// The inverse of [`lora_tensor_key`]: the module path and the part.
///
/// Rejects keys without the `base_model.model.` prefix, in-memory keys with an
/// adapter name (`.default.`), and anything that is not a `lora_A`/`lora_B` weight.
pub fn parse_lora_tensor_key(key: &str) -> Result<(String, LoraPart), Error> {
    let reject = |reason| Error::TensorKey {
        key: key.to_owned(),
        reason,
    };
    let rest = key.strip_prefix(PREFIX).ok_or_else(|| {
        reject("it must start with `base_model.model.` (PEFT ignores other names and leaves the adapter a no-op)")
    })?;
    let (path, part) = if let Some(p) = rest.strip_suffix(LoraPart::A.suffix()) {
        (p, LoraPart::A)
    } else if let Some(p) = rest.strip_suffix(LoraPart::B.suffix()) {
        (p, LoraPart::B)
    } else if rest.contains(".default.") {
        return Err(reject(
            "it carries PEFT's in-memory adapter name `.default.`; on disk the key is `<module>.lora_A.weight` / `<module>.lora_B.weight`",
        ));
    } else {
        return Err(reject(
            "it must end with `.lora_A.weight` or `.lora_B.weight`",
        ));
    };
    if path.split('.').any(|p| p == "default") {
        return Err(reject(
            "it carries PEFT's in-memory adapter name `.default.`; on disk the key is `<module>.lora_A.weight` / `<module>.lora_B.weight`",
        ));
    }
    if !is_module_name(path) || path.split('.').any(|p| p.starts_with("lora_")) {
        return Err(reject(
            "the module path between the prefix and `.lora_A/B.weight` is empty or malformed",
        ));
    }
    Ok((path.to_owned(), part))
}

/// The on-disk key of a module trained in full (`modules_to_save`), e.g.
/// `lm_head` → `base_model.model.lm_head.weight`.
///
/// ```
/// assert_eq!(
///     lora_targets::saved_module_key("model.embed_tokens"),
///     "base_model.model.model.embed_tokens.weight"
/// );
/// ```
#[must_use]
pub fn saved_module_key(module_path: &str) -> String {
    format!("{PREFIX}{module_path}.weight")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_wrong_prefix_default_and_other_suffixes() {
        let bad = [
            "model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
            "base_model.model.model.layers.0.self_attn.default.q_proj.lora_B.weight",
            "base_model.model.lm_head.weight",
            "base_model.model.lora_A.weight",
            "base_model.model..lora_A.weight",
            "base_model.model.x.lora_B.lora_A.weight",
            "base_model.model.model.embed_tokens.lora_embedding_A",
        ];
        for k in bad {
            let e = parse_lora_tensor_key(k).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
        let e = parse_lora_tensor_key(bad[1]).unwrap_err().to_string();
        assert!(e.contains(".default."), "{e}");
    }

    proptest! {
        #[test]
        fn keys_round_trip(
            parts in proptest::collection::vec("[a-z_][a-z0-9_]{0,8}", 1..6),
            a in any::<bool>(),
        ) {
            prop_assume!(parts.iter().all(|p| p != "default" && !p.starts_with("lora_")));
            let path = parts.join(".");
            let part = if a { LoraPart::A } else { LoraPart::B };
            let key = lora_tensor_key(&path, part);
            prop_assert!(!key.contains(".default."));
            prop_assert_eq!(parse_lora_tensor_key(&key).unwrap(), (path.clone(), part));
            prop_assert!(parse_lora_tensor_key(&saved_module_key(&path)).is_err());
        }
    }
}

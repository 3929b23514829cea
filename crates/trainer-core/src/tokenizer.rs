//! Builds a `tokenizers::Tokenizer` from GGUF metadata (byte-level BPE, as llama.cpp does), and reads the special
//! tokens and chat template of a Hugging Face model directory.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Value as Json};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// The special token ids of a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// Padding token.
    pub pad: Option<u32>,
}

/// The GPT-2 byte-level split.
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Every split pattern [`pre_regexes`] uses.
#[cfg(test)]
pub(crate) const KNOWN_SPLITS: [&str; 4] = [GPT2_RE, LLAMA3_RE, QWEN2_RE, r"\p{N}"];

/// Pre-tokenizer regexes for llama.cpp's `tokenizer.ggml.pre` values (src/llama-vocab.cpp).
fn pre_regexes(pre: &str) -> Option<Vec<&'static str>> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => vec![GPT2_RE],
        "smollm" | "starcoder" | "refact" => vec![r"\p{N}", GPT2_RE],
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => vec![LLAMA3_RE],
        "qwen2" | "deepseek-r1-qwen" => vec![QWEN2_RE],
        _ => return None,
    })
}

fn md_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Option<&'a str> {
    md.get(key)
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
}

pub(crate) fn md_u64(md: &HashMap<String, Value>, key: &str) -> Option<u64> {
    match md.get(key)? {
        Value::U8(v) => Some(u64::from(*v)),
        Value::U16(v) => Some(u64::from(*v)),
        Value::U32(v) => Some(u64::from(*v)),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

fn md_id(md: &HashMap<String, Value>, key: &str) -> Option<u32> {
    md_u64(md, key).and_then(|v| u32::try_from(v).ok())
}

/// Builds the tokenizer, special ids and chat template from GGUF metadata.
pub(crate) fn from_gguf(
    md: &HashMap<String, Value>,
    path: &Path,
) -> Result<(Tokenizer, SpecialTokens, Option<String>)> {
    let kind = md_str(md, "tokenizer.ggml.model").ok_or_else(|| {
        Error::model(
            path,
            "no `tokenizer.ggml.model` key: the GGUF file carries no tokenizer",
        )
    })?;
    if kind != "gpt2" {
        return Err(Error::model(
            path,
            format!(
                "tokenizer.ggml.model `{kind}` is not supported (only byte-level BPE `gpt2`); \
                 use a Hugging Face model directory with a tokenizer.json instead"
            ),
        ));
    }
    let pre = md_str(md, "tokenizer.ggml.pre").unwrap_or("default");
    let regexes = pre_regexes(pre).ok_or_else(|| {
        Error::model(path, format!("tokenizer.ggml.pre `{pre}` is not supported (known: gpt2, smollm, starcoder, llama-bpe, qwen2)"))
    })?;
    let list = |key: &str| -> Result<Vec<&Value>> {
        let v = md
            .get(key)
            .ok_or_else(|| Error::model(path, format!("metadata key `{key}` is missing")))?;
        let arr = v
            .to_vec()
            .map_err(|_| Error::model(path, format!("metadata key `{key}` is not an array")))?;
        Ok(arr.iter().collect())
    };
    let tokens: Vec<String> = list("tokenizer.ggml.tokens")?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.to_string().cloned().map_err(|_| {
                Error::model(path, format!("tokenizer.ggml.tokens[{i}] is not a string"))
            })
        })
        .collect::<Result<_>>()?;
    let merges: Vec<Json> = list("tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let s = v.to_string().map_err(|_| {
                Error::model(path, format!("tokenizer.ggml.merges[{i}] is not a string"))
            })?;
            let (a, b) = s.split_once(' ').ok_or_else(|| {
                Error::model(
                    path,
                    format!("tokenizer.ggml.merges[{i}] `{s}` has no space"),
                )
            })?;
            Ok(json!([a, b]))
        })
        .collect::<Result<_>>()?;
    let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|_| Error::model(path, "tokenizer.ggml.token_type is not an array"))?
            .iter()
            .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.clone(), json!(id));
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": ty == 4, "special": ty == 3}));
        }
    }
    let special = SpecialTokens {
        bos: md_id(md, "tokenizer.ggml.bos_token_id"),
        eos: md_id(md, "tokenizer.ggml.eos_token_id"),
        pad: md_id(md, "tokenizer.ggml.padding_token_id"),
    };
    let add_bos = md
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let mut pretok: Vec<Json> = regexes
        .iter()
        .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
        .collect();
    pretok.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
    let post = match (add_bos, special.bos) {
        (true, Some(bos)) => {
            let name = tokens.get(bos as usize).cloned().unwrap_or_default();
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                            {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {name.clone(): {"id": name, "ids": [bos], "tokens": [name]}}})
        }
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})
        }
    };
    let doc = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pretok},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    let tokenizer = Tokenizer::from_str(&doc.to_string()).map_err(|e| {
        Error::model(
            path,
            format!("cannot build the tokenizer from GGUF metadata: {e}"),
        )
    })?;
    let template = md_str(md, "tokenizer.chat_template").map(str::to_string);
    Ok((tokenizer, special, template))
}

/// Reads `tokenizer.json`, special ids (`tokenizer_config.json`, then `config.json`) and the chat template
/// (`chat_template.jinja`, then `tokenizer_config.json`) from a Hugging Face model directory.
pub(crate) fn from_hf_dir(
    dir: &Path,
    config: &Json,
) -> Result<(Tokenizer, SpecialTokens, Option<String>)> {
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(Error::model(
            dir,
            "no tokenizer.json in the model directory",
        ));
    }
    let text = std::fs::read_to_string(&tok_path).map_err(|e| Error::io(&tok_path, e))?;
    let doc: Json = serde_json::from_str(&text)
        .map_err(|e| Error::model(&tok_path, format!("not valid JSON: {e}")))?;
    crate::split_patterns::check(&doc, &tok_path)?;
    drop(doc);
    let tokenizer =
        Tokenizer::from_str(&text).map_err(|e| Error::model(&tok_path, e.to_string()))?;
    let tc_path = dir.join("tokenizer_config.json");
    let tc: Json = match std::fs::read_to_string(&tc_path) {
        Ok(t) => serde_json::from_str(&t)
            .map_err(|e| Error::model(&tc_path, format!("not valid JSON: {e}")))?,
        Err(_) => Json::Null,
    };
    let id_of = |key: &str| -> Option<u32> {
        let by_token = tc.get(key).and_then(|v| {
            v.as_str()
                .or_else(|| v.get("content").and_then(Json::as_str))
        });
        by_token.and_then(|t| tokenizer.token_to_id(t)).or_else(|| {
            config
                .get(format!("{key}_id"))
                .and_then(Json::as_u64)
                .map(|v| v as u32)
        })
    };
    let special = SpecialTokens {
        bos: id_of("bos_token"),
        eos: id_of("eos_token"),
        pad: id_of("pad_token"),
    };
    let jinja = dir.join("chat_template.jinja");
    let template = match std::fs::read_to_string(&jinja) {
        Ok(t) => Some(t),
        Err(_) => tc
            .get("chat_template")
            .and_then(Json::as_str)
            .map(str::to_string),
    };
    Ok((tokenizer, special, template))
}

/// Writes `tokenizer.json`, `tokenizer_config.json` and (if any) `chat_template.jinja` into `dir`.
pub(crate) fn write_hf_files(
    dir: &Path,
    tokenizer: &Tokenizer,
    special: &SpecialTokens,
    template: Option<&str>,
) -> Result<()> {
    let text = tokenizer
        .to_string(true)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    crate::io::write_atomic(&dir.join("tokenizer.json"), text.as_bytes())?;
    let name = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(special.bos), "eos_token": name(special.eos), "pad_token": name(special.pad),
        "add_bos_token": false, "clean_up_tokenization_spaces": false, "model_max_length": 1_000_000_000_u64,
    });
    if let Some(t) = template {
        crate::io::write_atomic(&dir.join("chat_template.jinja"), t.as_bytes())?;
        tc["chat_template"] = json!(t);
    }
    let text = serde_json::to_string_pretty(&tc).map_err(|e| Error::Tokenizer(e.to_string()))?;
    crate::io::write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())
}

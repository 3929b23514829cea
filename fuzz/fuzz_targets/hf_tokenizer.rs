//! A Hugging Face model folder's `tokenizer.json`, loaded through `Model::load`: arbitrary text, or the
//! byte-level tokenizer of a tiny model with a fuzzer-chosen split pattern (pre-tokenizer) and `Replace`
//! normalizer pattern. Loading never panics nor hangs (a pattern that backtracks past the regex engine's limit
//! on a probe text is refused); a loaded tokenizer encodes any text and decodes what it encoded.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use trainer_core::{Model, ModelConfig};

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    /// The whole tokenizer.json.
    Raw(&'a str),
    /// The tiny model's tokenizer with these patterns, then `text` encoded.
    Patterns {
        split: &'a str,
        replace: Option<&'a str>,
        text: &'a str,
    },
}

/// A tiny model's folder (config.json, model.safetensors, tokenizer.json), written once per process.
fn base() -> &'static (PathBuf, serde_json::Value) {
    static BASE: OnceLock<(PathBuf, serde_json::Value)> = OnceLock::new();
    BASE.get_or_init(|| {
        let root = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = root.join(format!("fuzz-hf-tokenizer-{}", std::process::id()));
        let model = Model::random(ModelConfig::tiny_llama(256, 8, 1, 1, 1), 0, &Device::Cpu)
            .expect("tiny model");
        model.save_hf_dir(&dir).expect("tiny model folder");
        let doc = std::fs::read_to_string(dir.join("tokenizer.json")).expect("tokenizer.json");
        (dir, serde_json::from_str(&doc).expect("our tokenizer.json is JSON"))
    })
}

fuzz_target!(|input: Input| {
    let (dir, doc) = base();
    let (text, sample) = match &input {
        Input::Raw(t) => (t.to_string(), "Hello there, the tokenizer!"),
        Input::Patterns {
            split,
            replace,
            text,
        } => {
            let mut d = doc.clone();
            d["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]});
            if let Some(r) = replace {
                d["normalizer"] =
                    serde_json::json!({"type": "Replace", "pattern": {"Regex": r}, "content": " "});
            }
            (d.to_string(), *text)
        }
    };
    std::fs::write(dir.join("tokenizer.json"), text).expect("write tokenizer.json");
    let Ok(model) = Model::load(dir, &Device::Cpu) else {
        return;
    };
    let Ok(enc) = model.tokenizer().encode(sample, false) else {
        return;
    };
    let _ = model.tokenizer().decode(enc.get_ids(), false);
});

//! The regular expressions a `tokenizer.json` splits or rewrites text with, probed before the tokenizer is used.
//!
//! The tokenizers crate (built with fancy-regex) runs these patterns on a backtracking engine with a limit of a
//! million steps per search. A pattern that backtracks catastrophically (`(?:(?=a)a|a)+$` on a run of `a`s) hits
//! the limit in milliseconds, and tokenizers then *stops splitting silently*: the rest of the text becomes one
//! piece, so it is tokenized unlike anything the model was trained on, with no error. Each pattern of a
//! `Split` pre-tokenizer or `Replace` normalizer is therefore run here on probe texts (long runs of letters,
//! digits, spaces, newlines, punctuation and the pattern's own characters, each followed by a character that
//! breaks the run, the classic trigger) with the same engine and limit; one that hits the limit is refused,
//! naming the file and the pattern. A probe is no proof: a pattern built to fail only on some rarer text passes.
//! A `Replace` pattern that matches the empty string is refused too: tokenizers panics applying it.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Characters of the probes: a letter, a capital, a digit, space, newline, tab, punctuation, a Latin-1 letter,
/// a CJK character and an apostrophe (contractions), besides those of the pattern itself.
const ATOMS: [&str; 10] = ["a", "A", "1", " ", "\n", "\t", ".", "é", "中", "'"];
/// Length of each probe run, in repetitions.
const RUN: usize = 2048;

/// A pattern of a tokenizer.json document.
struct Pattern {
    /// `Replace` (a normalizer) rather than `Split` (a pre-tokenizer).
    replace: bool,
    /// A regex, or a plain string (`{"String": ...}`).
    regex: bool,
    text: String,
}

/// Every `Split` or `Replace` pattern of a tokenizer.json document (pre-tokenizer, normalizer, nested
/// sequences).
fn patterns(doc: &Value) -> Vec<Pattern> {
    let mut out = Vec::new();
    let mut todo = vec![doc];
    while let Some(v) = todo.pop() {
        match v {
            Value::Object(m) => {
                let kind = m.get("type").and_then(Value::as_str);
                if let (Some(k @ ("Split" | "Replace")), Some(p)) = (kind, m.get("pattern")) {
                    for (regex, key) in [(true, "Regex"), (false, "String")] {
                        if let Some(t) = p.get(key).and_then(Value::as_str) {
                            out.push(Pattern {
                                replace: k == "Replace",
                                regex,
                                text: t.to_string(),
                            });
                        }
                    }
                }
                // The vocabulary and merges hold no patterns and are large.
                todo.extend(
                    m.iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "vocab" | "merges" | "added_tokens"))
                        .map(|(_, v)| v),
                );
            }
            Value::Array(a) => todo.extend(a),
            _ => {}
        }
    }
    out
}

/// The probe texts for one pattern.
fn probes(pattern: &str) -> Vec<String> {
    let mut atoms: Vec<String> = ATOMS.iter().map(|s| s.to_string()).collect();
    for c in pattern.chars().filter(|c| c.is_alphanumeric()) {
        let s = c.to_string();
        if !atoms.contains(&s) {
            atoms.push(s);
        }
    }
    atoms.truncate(40);
    let mut out = Vec::new();
    for a in &atoms {
        let run = a.repeat(RUN);
        out.push(run.clone());
        out.push(format!("{run}!"));
        out.push(format!("{run}\u{0}b"));
        out.push(format!("{a} ").repeat(RUN));
    }
    out
}

/// Probes every split pattern of `doc` (the text of `path`); the error names the file and the pattern.
pub(crate) fn check(doc: &Value, path: &Path) -> Result<()> {
    for p in patterns(doc) {
        let refuse = |why: String| {
            Err(Error::model(
                path,
                format!("{why}: fix the pattern, or use the model's GGUF file"),
            ))
        };
        // A `Replace` whose pattern matches the empty string would insert its content between every two
        // characters, and the tokenizers library panics applying it (index out of bounds; fuzzing finding 9).
        if p.replace && !p.regex && p.text.is_empty() {
            return refuse("the tokenizer's Replace normalizer pattern is the empty string".into());
        }
        if !p.regex {
            continue;
        }
        // A pattern fancy-regex cannot compile is reported by the tokenizers crate itself.
        let Ok(re) = fancy_regex::Regex::new(&p.text) else {
            continue;
        };
        for text in std::iter::once(String::new()).chain(probes(&p.text)) {
            for m in re.find_iter(&text) {
                match m {
                    Err(e) => {
                        let shown: String = text.chars().take(12).collect();
                        return refuse(format!(
                            "the tokenizer's split pattern {:?} fails on a probe text ({shown:?}... of {} \
                             bytes): {e}; the tokenizers library would then stop splitting silently and tokenize \
                             the rest of the text unlike the model's training",
                            p.text,
                            text.len()
                        ));
                    }
                    Ok(m) if p.replace && m.start() == m.end() => {
                        return refuse(format!(
                            "the tokenizer's Replace normalizer pattern {:?} matches the empty string, which \
                             the tokenizers library cannot apply",
                            p.text
                        ));
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(pattern: &str) -> Value {
        serde_json::json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "_"},
            "model": {"vocab": {"(a|a)+$": 0}}})
    }

    #[test]
    fn finds_split_and_replace_regexes_only() {
        let mut d = doc("x+");
        d["normalizer"] =
            serde_json::json!({"type": "Replace", "pattern": {"Regex": "y"}, "content": ""});
        let mut p: Vec<(bool, bool, String)> = patterns(&d)
            .into_iter()
            .map(|p| (p.replace, p.regex, p.text))
            .collect();
        p.sort();
        assert_eq!(
            p,
            [
                (false, true, "x+".to_string()),
                (true, true, "y".to_string())
            ]
        );
    }

    #[test]
    fn a_replace_that_matches_the_empty_string_is_refused() {
        // The fuzzer's finding: tokenizers panics applying it (index out of bounds).
        for pattern in [
            serde_json::json!({"Regex": ""}),
            serde_json::json!({"Regex": "x*"}),
            serde_json::json!({"Regex": "(?=a)"}),
            serde_json::json!({"String": ""}),
        ] {
            let mut d = doc(" ");
            d["normalizer"] =
                serde_json::json!({"type": "Replace", "pattern": pattern, "content": " "});
            let e = check(&d, Path::new("m/tokenizer.json"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("m/tokenizer.json") && e.contains("empty string"),
                "{pattern}: {e}"
            );
        }
        // A Split may match the empty string.
        check(&doc("x*"), Path::new("t.json")).unwrap();
    }

    #[test]
    fn catastrophic_patterns_are_refused_with_the_file_and_pattern() {
        for bad in [r"(?:(?=a)a|a)+$", r"(a|a)+\1$", r"(?:(?=\s)\s|\s)+x"] {
            let e = check(&doc(bad), Path::new("m/tokenizer.json"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("m/tokenizer.json") && e.contains("backtrack"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_known_pretokenizer_patterns_pass() {
        for p in crate::tokenizer::KNOWN_SPLITS {
            check(&doc(p), Path::new("t.json")).unwrap();
        }
    }
}

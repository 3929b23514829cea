//! The original's dataset tools (its "Tools" tab), fixed: a seeded train/eval split, Alpaca records -> chat
//! records with the `input` field kept, and raw text -> chat records. Output is written by the caller as true
//! JSON Lines ([`to_json_lines`]).

use std::path::Path;

use serde_json::{json, Value};

use super::records::Record;
use super::select;
use crate::error::{Error, Result};

/// Splits records into (train, eval): `floor(n * (1 - eval_percent / 100))` training records (the original's
/// rule), chosen with `seed` (the original shuffled unseeded); both keep file order.
pub fn split_records(records: &[Record], eval_percent: f64, seed: u64) -> (Vec<Value>, Vec<Value>) {
    let n = records.len();
    let train_n = ((n as f64) * (1.0 - eval_percent / 100.0)).floor().max(0.0) as usize;
    let train = select::sample_indices(n, train_n.min(n), seed);
    let mut is_train = vec![false; n];
    for &i in &train {
        is_train[i] = true;
    }
    let mut a = Vec::with_capacity(train.len());
    let mut b = Vec::with_capacity(n - train.len());
    for (r, keep) in records.iter().zip(is_train) {
        let v = Value::Object(r.fields.clone());
        if keep {
            a.push(v);
        } else {
            b.push(v);
        }
    }
    (a, b)
}

/// Alpaca records (`instruction`, optional `input`, `output`) -> chat records: an optional system message, the
/// user message (the instruction, then a blank line and the input when the input is not blank), the assistant
/// message (the output). A record without a string `instruction` or `output` is an error naming it (and saying so
/// when it is already a chat record, `messages` or ShareGPT `conversations`, which trains without conversion).
pub fn alpaca_to_chat(records: &[Record], system: &str, dataset: &Path) -> Result<Vec<Value>> {
    records
        .iter()
        .map(|r| {
            let field = |k: &str| -> Result<&str> {
                r.fields.get(k).and_then(Value::as_str).ok_or_else(|| {
                    let chat = ["messages", "conversations"]
                        .into_iter()
                        .find(|c| r.fields.contains_key(*c));
                    let todo = match chat {
                        Some(c) => format!(
                            "it is already a chat record (`{c}`): train on the file as it is, no conversion needed"
                        ),
                        None => "every record needs `instruction` and `output`".to_string(),
                    };
                    Error::dataset(
                        dataset,
                        format!(
                            "{} has no string `{k}` (keys: {}): {todo}",
                            r.location(),
                            r.keys()
                        ),
                    )
                })
            };
            let (instruction, output) = (field("instruction")?, field("output")?);
            let user = match r.fields.get("input").and_then(Value::as_str) {
                Some(input) if !input.trim().is_empty() => format!("{instruction}\n\n{input}"),
                _ => instruction.to_string(),
            };
            Ok(chat(system, &user, output))
        })
        .collect()
}

/// Raw text -> chat records: the text is cut at `separator`, each part trimmed (empty parts skipped) and made the
/// assistant reply to `prompt`, after an optional system message. A UTF-8 BOM and carriage returns are removed.
pub fn text_to_chat(text: &str, separator: &str, prompt: &str, system: &str) -> Vec<Value> {
    let text = text
        .strip_prefix('\u{feff}')
        .unwrap_or(text)
        .replace('\r', "");
    let parts: Vec<&str> = if separator.is_empty() {
        vec![text.as_str()]
    } else {
        text.split(separator).collect()
    };
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| chat(system, prompt, p))
        .collect()
}

fn chat(system: &str, user: &str, assistant: &str) -> Value {
    let mut messages = Vec::with_capacity(3);
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": user}));
    messages.push(json!({"role": "assistant", "content": assistant}));
    json!({ "messages": messages })
}

/// One JSON object per line, each line ending with a newline.
pub fn to_json_lines(values: &[Value]) -> String {
    let mut out = String::new();
    for v in values {
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::records::parse_records;

    #[test]
    fn alpaca_keeps_the_input_and_names_bad_records() {
        let recs = parse_records(
            "{\"instruction\":\"Add.\",\"input\":\"2 and 3\",\"output\":\"5\"}\n{\"instruction\":\"Hi\",\"input\":\" \",\"output\":\"Hello\"}\n",
            Path::new("a.jsonl"),
        )
        .unwrap();
        let out = alpaca_to_chat(&recs, "Be brief.", Path::new("a.jsonl")).unwrap();
        assert_eq!(
            out[0],
            json!({"messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Add.\n\n2 and 3"},
                                {"role": "assistant", "content": "5"}]})
        );
        let out = alpaca_to_chat(&recs, "", Path::new("a.jsonl")).unwrap();
        assert_eq!(out[1]["messages"].as_array().unwrap().len(), 2);
        assert_eq!(out[1]["messages"][0]["content"], "Hi");
        let bad = parse_records("[{\"instruction\":\"x\"}]", Path::new("b.json")).unwrap();
        let e = alpaca_to_chat(&bad, "", Path::new("b.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("record 1 has no string `output`"), "{e}");
        let chat = parse_records(
            "{\"conversations\":[{\"from\":\"human\",\"value\":\"Hi\"}]}\n",
            Path::new("c.jsonl"),
        )
        .unwrap();
        let e = alpaca_to_chat(&chat, "", Path::new("c.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already a chat record (`conversations`)"), "{e}");
    }

    #[test]
    fn text_parts_become_replies() {
        let out = text_to_chat(
            "\u{feff}One.\r\n\n\n\n  \n\n\nTwo.\n",
            "\n\n\n",
            "Write.",
            "",
        );
        let replies: Vec<&str> = out
            .iter()
            .map(|v| v["messages"][1]["content"].as_str().unwrap())
            .collect();
        assert_eq!(replies, ["One.", "Two."]);
        assert_eq!(to_json_lines(&out).lines().count(), 2);
    }

    #[test]
    fn split_is_seeded_and_complete() {
        let text: String = (0..20).map(|i| format!("{{\"i\":{i}}}\n")).collect();
        let recs = parse_records(&text, Path::new("d.jsonl")).unwrap();
        let (a, b) = split_records(&recs, 10.0, 1);
        assert_eq!((a.len(), b.len()), (18, 2));
        assert_eq!(split_records(&recs, 10.0, 1), (a.clone(), b.clone()));
        let mut all: Vec<i64> = a
            .iter()
            .chain(&b)
            .map(|v| v["i"].as_i64().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
    }
}

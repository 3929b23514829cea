//! ShareGPT chat records: `{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}], "system": ...}`,
//! read as the `messages` they stand for. Roles are mapped (case-insensitively):
//!
//! | `from` | role |
//! |---|---|
//! | `human`, `user` | `user` |
//! | `gpt`, `assistant`, `chatgpt`, `bing`, `bard`, `model` | `assistant` |
//! | `system` | `system` |
//! | `tool`, `function`, `observation` (a tool's result) | `tool` |
//!
//! Any other `from` is an error naming the record and the turn; so is `function_call` (a tool call, which has no
//! plain-message form). An optional top-level `system` string, when not blank, becomes a first system message.

use serde_json::Value;

use super::chat::{turns, Message, Shape};
use super::records::Record;
use crate::error::{Error, Result};

/// ShareGPT's `conversations: [{from, value}]`.
pub(super) const SHAPE: Shape = Shape {
    list: "conversations",
    role: "from",
    content: "value",
    turn: "turn",
};

/// The `from` names of each role.
const ROLES: [(&str, &[&str]); 4] = [
    ("user", &["human", "user"]),
    (
        "assistant",
        &["gpt", "assistant", "chatgpt", "bing", "bard", "model"],
    ),
    ("system", &["system"]),
    ("tool", &["tool", "function", "observation"]),
];

/// The chat role a ShareGPT `from` stands for (case-insensitive), or what to do instead.
pub(crate) fn role_of(from: &str) -> std::result::Result<&'static str, String> {
    let lower = from.to_ascii_lowercase();
    if let Some((role, _)) = ROLES
        .iter()
        .find(|(_, names)| names.contains(&lower.as_str()))
    {
        return Ok(role);
    }
    if lower == "function_call" || lower == "tool_call" {
        return Err(format!(
            "`from` \"{from}\" is a tool call, which is not read from ShareGPT records (it has no plain-message \
             form): write the call as a `gpt` turn to learn it as text, or remove the record"
        ));
    }
    let known: Vec<String> = ROLES
        .iter()
        .map(|(role, names)| format!("{} -> {role}", names.join("/")))
        .collect();
    Err(format!(
        "`from` \"{from}\" is not a ShareGPT role this reader knows ({}): rename it, or write the record as \
         `messages` with the role your chat template expects",
        known.join(", ")
    ))
}

/// The messages of a record with `conversations` (the caller has checked it has no `messages`).
pub(super) fn messages(rec: &Record, err: &dyn Fn(String) -> Error) -> Result<Vec<Message>> {
    let mut out = Vec::new();
    let system = match rec.fields.get("system") {
        None => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(err(
            "`system` is not a string: give the system prompt as a string, or leave the key out"
                .into(),
        )),
    };
    if let Some(s) = system {
        out.push(Message::new("system", s.as_str()));
    }
    for (i, (from, content, learn)) in turns(rec, &SHAPE, err)?.into_iter().enumerate() {
        let role = role_of(&from).map_err(|m| err(format!("turn {}: {m}", i + 1)))?;
        if i == 0 && role == "system" && system.is_some() {
            return Err(err(
                "has both a `system` field and a first `system` turn: keep one of them".into(),
            ));
        }
        out.push(Message {
            role: role.to_string(),
            content,
            learn,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::OnceLock;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::config::ModelConfig;
    use crate::dataset::{
        encode_labeled, labeled_text, parse_records, ChatTemplate, DatasetKind, EncodeOptions,
        LongSamples, TrainOn,
    };
    use crate::model::Model;
    use crate::tokenizer::SpecialTokens;

    /// ChatML with a default system prompt, as SmolLM2's template.
    const TEMPLATE: &str = "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n\
                            Default.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n\
                            {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    /// A byte-level tokenizer: token id = byte.
    fn tok() -> &'static tokenizers::Tokenizer {
        static M: OnceLock<Model> = OnceLock::new();
        M.get_or_init(|| {
            Model::random(
                ModelConfig::tiny_llama(256, 8, 1, 1, 1),
                0,
                &candle_core::Device::Cpu,
            )
            .unwrap()
        })
        .tokenizer()
    }

    fn err(m: String) -> Error {
        Error::dataset("s.jsonl", m)
    }

    #[test]
    fn roles_map_case_insensitively_and_unknown_ones_say_what_to_do() {
        for (from, role) in [
            ("human", "user"),
            ("User", "user"),
            ("gpt", "assistant"),
            ("GPT", "assistant"),
            ("chatgpt", "assistant"),
            ("model", "assistant"),
            ("system", "system"),
            ("observation", "tool"),
            ("function", "tool"),
            ("tool", "tool"),
        ] {
            assert_eq!(role_of(from), Ok(role), "{from}");
        }
        let e = role_of("narrator").unwrap_err();
        assert!(
            e.contains("\"narrator\"") && e.contains("human/user -> user"),
            "{e}"
        );
        let e = role_of("function_call").unwrap_err();
        assert!(e.contains("tool call") && e.contains("`gpt` turn"), "{e}");
    }

    #[test]
    fn the_system_field_leads_and_cannot_double_a_system_turn() {
        let recs = parse_records(
            "{\"system\":\"Be brief.\",\"conversations\":[{\"from\":\"human\",\"value\":\"Hi\"}]}\n\
             {\"system\":\" \",\"conversations\":[{\"from\":\"human\",\"value\":\"Hi\"}]}\n\
             {\"system\":\"A\",\"conversations\":[{\"from\":\"system\",\"value\":\"B\"}]}\n\
             {\"system\":1,\"conversations\":[{\"from\":\"human\",\"value\":\"Hi\"}]}\n",
            Path::new("s.jsonl"),
        )
        .unwrap();
        let m = messages(&recs[0], &err).unwrap();
        assert_eq!(
            m,
            [
                Message::new("system", "Be brief."),
                Message::new("user", "Hi")
            ]
        );
        assert_eq!(messages(&recs[1], &err).unwrap().len(), 1);
        let e = messages(&recs[2], &err).unwrap_err().to_string();
        assert!(e.contains("both a `system` field"), "{e}");
        let e = messages(&recs[3], &err).unwrap_err().to_string();
        assert!(e.contains("`system` is not a string"), "{e}");
    }

    /// (role index into ROLES, alias choice, upper-case it, content, weight).
    type Turn = (usize, usize, bool, String, Option<bool>);

    fn turn() -> impl Strategy<Value = Turn> {
        (
            0usize..4,
            0usize..6,
            any::<bool>(),
            "[a-zA-Z0-9 .?!\n]{0,12}",
            proptest::option::of(any::<bool>()),
        )
    }

    proptest! {
        /// A ShareGPT record and the `messages` record it stands for give the same messages, the same rendered
        /// text and learned ranges, and the same token ids and labels, under both `train_on` settings; a leading
        /// system turn may be given as the top-level `system` field.
        #[test]
        fn sharegpt_encodes_as_the_messages_it_stands_for(
            conv in proptest::collection::vec(turn(), 1..6),
            system_field: bool,
            all: bool,
        ) {
            let mut msgs = Vec::new();
            let mut turns = Vec::new();
            let mut top = None;
            for (i, (r, alias, upper, content, weight)) in conv.iter().enumerate() {
                let (role, names) = ROLES[*r];
                let from = names[alias % names.len()];
                let from = if *upper { from.to_ascii_uppercase() } else { from.to_string() };
                let mut m = json!({"role": role, "content": content});
                let mut t = json!({"from": from, "value": content});
                if let Some(w) = weight {
                    m["weight"] = json!(u8::from(*w));
                    t["weight"] = json!(u8::from(*w));
                }
                msgs.push(m);
                let next_is_system = conv.get(1).is_some_and(|t| ROLES[t.0].0 == "system");
                if i == 0 && role == "system" && system_field && !next_is_system
                    && !content.trim().is_empty() && weight.is_none() {
                    top = Some(content.clone());
                } else {
                    turns.push(t);
                }
            }
            let mut share = json!({ "conversations": turns });
            if let Some(s) = top {
                share["system"] = json!(s);
            }
            if turns.is_empty() {
                share["conversations"] = json!([{"from": "human", "value": "x"}]);
                msgs.push(json!({"role": "user", "content": "x"}));
            }
            // Each record alone in its file, so that errors (a template that cannot locate a reply) compare too.
            let path = Path::new("p.jsonl");
            let a = parse_records(&json!({ "messages": msgs }).to_string(), path).unwrap();
            let b = parse_records(&share.to_string(), path).unwrap();
            prop_assert_eq!(
                crate::dataset::messages_of(&a[0], path).unwrap(),
                crate::dataset::messages_of(&b[0], path).unwrap()
            );
            let kind = DatasetKind::Chat {
                template: ChatTemplate::new(TEMPLATE, Path::new("t.jinja"), "<|im_start|>", "<|im_end|>").unwrap(),
                train_on: if all { TrainOn::All } else { TrainOn::Responses },
            };
            let opts = EncodeOptions { cutoff: 512, bos: false, eos: false, long: LongSamples::Truncate };
            let special = SpecialTokens { bos: None, eos: None, pad: None };
            let encode = |rec| {
                labeled_text(rec, &kind, &opts, path)
                    .and_then(|(t, _)| Ok((encode_labeled(tok(), special, &opts, &t)?, t)))
                    .map_err(|e| e.to_string())
            };
            prop_assert_eq!(encode(&a[0]), encode(&b[0]));
        }
    }
}

//! Arbitrary dataset text, format files and chat conversations through the dataset pipeline of trainer-core:
//! the readers never panic, and every encoded sample keeps the label-mask and cutoff invariants.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use trainer_core::dataset::{
    encode_labeled, labeled_text, parse_records, ChatTemplate, DatasetKind, EncodeOptions, Encoded,
    Format, LongSamples, TrainOn,
};
use trainer_core::{Model, ModelConfig, SpecialTokens, IGNORE_INDEX};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Fed to the record reader as is.
    raw: String,
    /// Records built from (field or role index, value) pairs and written as JSON, so the pipeline past the
    /// reader is reached.
    records: Vec<Vec<(u8, String)>>,
    as_array: bool,
    use_raw: bool,
    format: String,
    template: String,
    kind: u8,
    train_only_after: String,
    cutoff: u8,
    bos: Option<u8>,
    eos: Option<u8>,
    add_bos: bool,
    add_eos: bool,
    eliminate: bool,
}

/// Fixed templates; besides them, the fuzzer's own template text is compiled and rendered: the render limits
/// bound what any template can do (fuel, output, values), so even a template bomb ends quickly in an error.
const FIELDS: [&str; 4] = ["instruction", "input", "output", "text"];
const ROLES: [&str; 3] = ["system", "user", "assistant"];
const SHAREGPT_ROLES: [&str; 3] = ["system", "human", "gpt"];
const FORMAT: &str = r#"{"instruction,output": "I: %instruction%\nO: %output%", "instruction,input,output": "I: %instruction% %input%\nO: %output%", "text": "%text%"}"#;

const TEMPLATES: [&str; 3] = [
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content.strip() }} [/INST]{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}",
    "{% for m in messages %}{% if loop.first and m.role != 'system' %}<sys>default</sys>\n{% endif %}<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>\n{% endfor %}",
];

fn tokenizer() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let config = ModelConfig::tiny_llama(256, 8, 1, 1, 1);
        Model::random(config, 0, &candle_core::Device::Cpu).expect("tiny model")
    })
}

fuzz_target!(|inp: Input| {
    let path = Path::new("fuzz.jsonl");
    let _ = ChatTemplate::new(&inp.template, Path::new("t.jinja"), "<s>", "</s>");
    let _ = Format::parse(&inp.format, Path::new("f.json"));
    let chat = inp.kind % 5 != 0;
    let records = if inp.use_raw {
        match parse_records(&inp.raw, path) {
            Ok(r) => r,
            Err(_) => return,
        }
    } else {
        let values: Vec<serde_json::Value> = inp
            .records
            .iter()
            .map(|pairs| {
                if chat && inp.kind % 5 == 3 {
                    // ShareGPT shape: `conversations` of `{from, value}` (roles as ShareGPT names them).
                    let turns: Vec<serde_json::Value> = pairs
                        .iter()
                        .map(|(r, c)| serde_json::json!({"from": SHAREGPT_ROLES[usize::from(*r) % 3], "value": c}))
                        .collect();
                    serde_json::json!({ "conversations": turns })
                } else if chat {
                    let msgs: Vec<serde_json::Value> = pairs
                        .iter()
                        .map(|(r, c)| serde_json::json!({"role": ROLES[usize::from(*r) % 3], "content": c}))
                        .collect();
                    serde_json::json!({ "messages": msgs })
                } else {
                    let mut m = serde_json::Map::new();
                    for (f, v) in pairs {
                        m.insert(FIELDS[usize::from(*f) % 4].to_string(), serde_json::Value::String(v.clone()));
                    }
                    serde_json::Value::Object(m)
                }
            })
            .collect();
        let text = if inp.as_array {
            serde_json::Value::Array(values.clone()).to_string()
        } else {
            values.iter().map(|v| format!("{v}\n")).collect()
        };
        match parse_records(&text, path) {
            Ok(r) => {
                assert_eq!(r.len(), values.len());
                r
            }
            Err(e) => {
                assert!(values.is_empty(), "written records rejected: {e}");
                return;
            }
        }
    };
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.number, i + 1);
    }
    let special = SpecialTokens {
        bos: inp.bos.map(u32::from),
        eos: inp.eos.map(u32::from),
        pad: None,
    };
    let opts = EncodeOptions {
        cutoff: usize::from(inp.cutoff) + 1,
        bos: inp.add_bos,
        eos: inp.add_eos,
        long: if inp.eliminate {
            LongSamples::Eliminate
        } else {
            LongSamples::Truncate
        },
    };
    let train_on = if inp.kind & 8 == 0 {
        TrainOn::Responses
    } else {
        TrainOn::All
    };
    let kind = match inp.kind % 5 {
        0 => match Format::parse(
            if inp.use_raw { &inp.format } else { FORMAT },
            Path::new("f.json"),
        ) {
            Ok(format) => DatasetKind::Format {
                format,
                train_only_after: inp.train_only_after.clone(),
            },
            Err(_) => return,
        },
        4 => match ChatTemplate::new(&inp.template, Path::new("t.jinja"), "<s>", "</s>") {
            Ok(template) => DatasetKind::Chat { template, train_on },
            Err(_) => return,
        },
        k => DatasetKind::Chat {
            template: ChatTemplate::new(
                TEMPLATES[usize::from(k - 1)],
                Path::new("t.jinja"),
                "<s>",
                "</s>",
            )
            .expect("fixed template compiles"),
            train_on,
        },
    };
    let tok = tokenizer().tokenizer();
    for rec in &records {
        let Ok((text, _)) = labeled_text(rec, &kind, &opts, path) else {
            continue;
        };
        for r in &text.learn {
            assert!(
                r.start <= r.end && r.end <= text.text.len(),
                "{r:?} {}",
                text.text.len()
            );
            assert!(text.text.is_char_boundary(r.start) && text.text.is_char_boundary(r.end));
        }
        let enc = encode_labeled(tok, special, &opts, &text)
            .expect("the byte tokenizer encodes any text");
        match enc {
            Encoded::Kept {
                sample,
                truncated,
                tokens,
                ..
            } => {
                let n = sample.input_ids.len();
                assert!(n >= 2 && n <= opts.cutoff && n == sample.labels.len());
                assert_eq!(truncated, tokens > opts.cutoff);
                assert!(!(truncated && inp.eliminate));
                for (&id, &l) in sample.input_ids.iter().zip(&sample.labels) {
                    assert!(
                        l == IGNORE_INDEX || l == i64::from(id),
                        "label {l} on id {id}"
                    );
                }
                assert!(sample.labels[1..].iter().any(|&l| l != IGNORE_INDEX));
                if let Some(bos) = special.bos {
                    if text.add_bos {
                        assert_eq!(sample.input_ids[0], bos);
                    }
                    if sample.input_ids[0] == bos {
                        assert_eq!(sample.labels[0], IGNORE_INDEX);
                    }
                }
                if let (Some(eos), true, false) = (special.eos, text.add_eos, truncated) {
                    assert_eq!(sample.input_ids[n - 1], eos);
                    assert_eq!(
                        sample.labels[n - 1],
                        i64::from(eos),
                        "EOS is always learned"
                    );
                }
            }
            Encoded::TooLong { tokens } => assert!(inp.eliminate && tokens > opts.cutoff),
            Encoded::NothingToLearn { .. } => {}
        }
    }
});

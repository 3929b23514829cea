//! The dataset pipeline on the fixtures with the real SmolLM2 tokenizer: format files, train_only_after, the chat
//! template rendered as transformers renders it, ShareGPT records, and label masks checked token by token.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;
use trainer_core::dataset::{
    encode_dataset, parse_records, read_records, ChatTemplate, DatasetKind, EncodeOptions, Format,
    LongSamples, TrainOn,
};
use trainer_core::{SpecialTokens, IGNORE_INDEX};

use crate::common::testdata;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(testdata("smollm2-tokenizer.json")).unwrap()
}

/// SmolLM2: `<|im_start|>` (1) is BOS, `<|im_end|>` (2) is EOS.
const SPECIAL: SpecialTokens = SpecialTokens {
    bos: Some(1),
    eos: Some(2),
    pad: None,
};

fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).unwrap().get_ids().to_vec()
}

/// Expected (ids, labels) from (text, learned) segments, each tokenized alone.
fn expect(tok: &Tokenizer, parts: &[(&str, bool)], eos: bool) -> (Vec<u32>, Vec<i64>) {
    let (mut i, mut l) = (vec![1u32], vec![IGNORE_INDEX]);
    for (text, learned) in parts {
        for id in ids(tok, text) {
            i.push(id);
            l.push(if *learned {
                i64::from(id)
            } else {
                IGNORE_INDEX
            });
        }
    }
    if eos {
        i.push(2);
        l.push(2);
    }
    (i, l)
}

fn opts(cutoff: usize) -> EncodeOptions {
    EncodeOptions {
        cutoff,
        bos: true,
        eos: true,
        long: LongSamples::Truncate,
    }
}

fn alpaca(train_only_after: &str, o: EncodeOptions) -> trainer_core::dataset::EncodedDataset {
    let path = fixture("alpaca.json");
    let records = read_records(&path).unwrap();
    let kind = DatasetKind::Format {
        format: Format::load(&fixture("alpaca-format.json")).unwrap(),
        train_only_after: train_only_after.into(),
    };
    encode_dataset(&records, &path, &kind, &o, &tokenizer(), SPECIAL).unwrap()
}

#[test]
fn train_only_after_masks_the_prompt_token_by_token() {
    let tok = tokenizer();
    let d = alpaca("### Response:\n", opts(256));
    assert_eq!(d.records, [1, 2, 3]);
    let (want_ids, want_labels) = expect(
        &tok,
        &[
            (
                "### Instruction:\nName the capital of France.\n\n### Response:\n",
                false,
            ),
            ("Paris.", true),
        ],
        true,
    );
    assert_eq!(d.samples[0].input_ids, want_ids);
    assert_eq!(d.samples[0].labels, want_labels);
    let (want_ids, want_labels) = expect(
        &tok,
        &[
            (
                "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n",
                false,
            ),
            ("5", true),
        ],
        true,
    );
    assert_eq!(
        (&d.samples[1].input_ids, &d.samples[1].labels),
        (&want_ids, &want_labels)
    );
    // Record 3: a blank `input` does not count as filled, so the two-field entry is used.
    assert_eq!(
        tok.decode(&d.samples[2].input_ids, false).unwrap(),
        "<|im_start|>### Instruction:\nSay nothing useful.\n\n### Response:\nFine.<|im_end|>"
    );
    assert_eq!(
        (d.report.kept, d.report.marker_missing, d.report.truncated),
        (3, 0, 0)
    );
}

#[test]
fn without_a_marker_everything_but_bos_is_learned_and_eos_always() {
    let d = alpaca("", opts(256));
    for s in &d.samples {
        assert_eq!(s.labels[0], IGNORE_INDEX);
        assert!(s.input_ids[1..]
            .iter()
            .zip(&s.labels[1..])
            .all(|(&i, &l)| l == i64::from(i)));
        assert_eq!(*s.input_ids.last().unwrap(), 2);
    }
    let d = alpaca("no such marker", opts(256));
    assert_eq!(d.report.marker_missing, 3);
}

#[test]
fn long_samples_truncate_keeping_the_start_or_are_eliminated() {
    let full = alpaca("", opts(256));
    let cut = alpaca("", opts(12));
    assert_eq!(cut.report.truncated, 3);
    for (a, b) in full.samples.iter().zip(&cut.samples) {
        assert_eq!(&a.input_ids[..12], &b.input_ids[..]);
        assert_ne!(
            *b.input_ids.last().unwrap(),
            2,
            "a truncated sample has no EOS"
        );
    }
    let gone = alpaca(
        "",
        EncodeOptions {
            long: LongSamples::Eliminate,
            ..opts(16)
        },
    );
    let longest = full
        .samples
        .iter()
        .map(|s| s.input_ids.len())
        .max()
        .unwrap();
    assert!(longest > 16);
    assert_eq!(gone.report.eliminated + gone.report.kept, 3);
    assert!(gone.report.eliminated >= 1);
    assert!(gone.samples.iter().all(|s| s.input_ids.len() <= 16));
    // A prompt longer than the cutoff leaves nothing to learn: dropped, counted.
    let none = alpaca("### Response:\n", opts(8));
    assert_eq!((none.report.nothing_to_learn, none.report.kept), (3, 0));
}

fn smollm_template() -> ChatTemplate {
    let path = testdata("smollm2-chat_template.jinja");
    let src = std::fs::read_to_string(&path).unwrap();
    ChatTemplate::new(&src, &path, "<|im_start|>", "<|im_end|>").unwrap()
}

#[test]
fn smollm2_template_renders_as_transformers_does() {
    let path = fixture("chat.jsonl");
    let records = read_records(&path).unwrap();
    let t = smollm_template();
    for (i, rec) in records.iter().enumerate() {
        let messages = trainer_core::dataset::messages_of(rec, &path).unwrap();
        let want =
            std::fs::read_to_string(fixture(&format!("chat-expected-{}.txt", i + 1))).unwrap();
        assert_eq!(
            t.render(&messages, false).unwrap(),
            want,
            "record {}",
            i + 1
        );
        let with_prompt = t.render(&messages, true).unwrap();
        assert_eq!(with_prompt, format!("{want}<|im_start|>assistant\n"));
    }
}

fn chat_kind(train_on: TrainOn) -> DatasetKind {
    DatasetKind::Chat {
        template: smollm_template(),
        train_on,
    }
}

fn chat_file(name: &str, train_on: TrainOn) -> trainer_core::dataset::EncodedDataset {
    let path = fixture(name);
    let records = read_records(&path).unwrap();
    let kind = chat_kind(train_on);
    encode_dataset(&records, &path, &kind, &opts(256), &tokenizer(), SPECIAL).unwrap()
}

fn chat(train_on: TrainOn) -> trainer_core::dataset::EncodedDataset {
    chat_file("chat.jsonl", train_on)
}

#[test]
fn chat_learns_only_replies_and_their_end_token() {
    let tok = tokenizer();
    let d = chat(TrainOn::Responses);
    let sys =
        "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    // The template's own <|im_start|> is the BOS: it is not doubled and not learned.
    let (want_ids, want_labels) = expect(
        &tok,
        &[
            (sys, false),
            ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", false),
            ("Paris.<|im_end|>", true),
            ("\n", false),
        ],
        false,
    );
    assert_eq!(d.samples[0].input_ids, want_ids);
    assert_eq!(d.samples[0].labels, want_labels);
    assert_eq!(
        d.samples[0].input_ids.iter().filter(|&&i| i == 1).count(),
        3
    );
    let (want_ids, want_labels) = expect(
        &tok,
        &[
            ("system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n", false),
            ("5<|im_end|>", true),
            ("\n<|im_start|>user\nAnd 4+4?<|im_end|>\n<|im_start|>assistant\n", false),
            ("8<|im_end|>", true),
            ("\n", false),
        ],
        false,
    );
    assert_eq!(
        (&d.samples[1].input_ids, &d.samples[1].labels),
        (&want_ids, &want_labels)
    );

    let all = chat(TrainOn::All);
    assert_eq!(all.samples[0].input_ids, d.samples[0].input_ids);
    assert!(all.samples[0].labels[1..]
        .iter()
        .all(|&l| l != IGNORE_INDEX));
}

#[test]
fn mixed_validity_file_names_the_record() {
    let path = fixture("mixed.jsonl");
    let records = read_records(&path).unwrap();
    let kind = DatasetKind::Format {
        format: Format::load(&fixture("alpaca-format.json")).unwrap(),
        train_only_after: String::new(),
    };
    let err = encode_dataset(&records, &path, &kind, &opts(64), &tokenizer(), SPECIAL)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mixed.jsonl: record 2 (line 3)"), "{err}");
    assert!(err.contains("{instruction, text}"), "{err}");
    // Read as a chat dataset, the first record is named.
    let kind = DatasetKind::Chat {
        template: smollm_template(),
        train_on: TrainOn::Responses,
    };
    let err = encode_dataset(&records, &path, &kind, &opts(64), &tokenizer(), SPECIAL)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("record 1 (line 1)") && err.contains("messages"),
        "{err}"
    );
    assert!(Path::new(&path).is_file());
}

#[test]
fn dump_marks_masked_and_learned_runs() {
    let tok = tokenizer();
    let d = alpaca("### Response:\n", opts(256));
    let segs = trainer_core::dataset::dump_segments(&tok, &d.samples[0]).unwrap();
    let shown: Vec<(bool, &str)> = segs.iter().map(|s| (s.learned, s.text.as_str())).collect();
    assert_eq!(
        shown,
        [
            (
                false,
                "<|im_start|>### Instruction:\nName the capital of France.\n\n### Response:\n"
            ),
            (true, "Paris.<|im_end|>")
        ]
    );
}

#[test]
fn sharegpt_trains_to_the_same_samples_as_messages() {
    for train_on in [TrainOn::Responses, TrainOn::All] {
        let messages = chat(train_on);
        let sharegpt = chat_file("chat-sharegpt.jsonl", train_on);
        assert_eq!(messages.samples.len(), 2);
        assert_eq!(sharegpt, messages, "{train_on:?}");
    }
}

/// Encodes `text` (a JSON Lines dataset named `name`) as chat data under SmolLM2's template.
fn chat_text(
    name: &str,
    text: &str,
    train_on: TrainOn,
) -> trainer_core::Result<trainer_core::dataset::EncodedDataset> {
    let path = Path::new(name);
    let records = parse_records(text, path)?;
    encode_dataset(
        &records,
        path,
        &chat_kind(train_on),
        &opts(256),
        &tokenizer(),
        SPECIAL,
    )
}

#[test]
fn weight_zero_leaves_an_assistant_turn_unlearned_in_both_shapes() {
    let tok = tokenizer();
    let plain = chat(TrainOn::Responses);
    let text = concat!(
        r#"{"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+3?"}, "#,
        r#"{"role": "assistant", "content": "5", "weight": 0}, {"role": "user", "content": "And 4+4?", "weight": 1}, "#,
        r#"{"role": "assistant", "content": "8", "weight": 1}]}"#,
        "\n",
        r#"{"system": "Answer briefly.", "conversations": [{"from": "human", "value": "2+3?"}, "#,
        r#"{"from": "gpt", "value": "5", "weight": 0}, {"from": "human", "value": "And 4+4?", "weight": 1}, "#,
        r#"{"from": "gpt", "value": "8"}]}"#,
        "\n",
    );
    let d = chat_text("w.jsonl", text, TrainOn::Responses).unwrap();
    for s in &d.samples {
        // The same tokens as without weights; only the "5" reply is no longer learned.
        assert_eq!(s.input_ids, plain.samples[1].input_ids);
        let segs = trainer_core::dataset::dump_segments(&tok, s).unwrap();
        let learned: Vec<&str> = segs
            .iter()
            .filter(|g| g.learned)
            .map(|g| g.text.as_str())
            .collect();
        assert_eq!(learned, ["8<|im_end|>"]);
    }
    // `all` learns every token whatever the weights.
    let all = chat_text("w.jsonl", text, TrainOn::All).unwrap();
    assert_eq!(all.samples[1], chat(TrainOn::All).samples[1]);
    // A conversation whose only reply has weight 0 has nothing to learn: dropped, counted.
    let none = chat_text(
        "w.jsonl",
        r#"{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello", "weight": 0}]}"#,
        TrainOn::Responses,
    )
    .unwrap();
    assert_eq!((none.report.kept, none.report.nothing_to_learn), (0, 1));
}

#[test]
fn bad_sharegpt_records_name_the_file_record_line_and_turn() {
    let good = r#"{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}"#;
    for (bad, needle) in [
        (
            r#"{"messages": [{"role": "user", "content": "Hi"}], "conversations": [{"from": "human", "value": "Hi"}]}"#,
            "has both `messages` and `conversations`",
        ),
        (
            r#"{"conversations": [{"from": "human", "value": "Hi"}, {"value": "Hello"}]}"#,
            "turn 2 has no `from` (keys: {value})",
        ),
        (
            r#"{"conversations": [{"role": "user", "content": "Hi"}]}"#,
            "turn 1 has no `from` (keys: {content, role})",
        ),
        (
            r#"{"conversations": [{"from": "human"}]}"#,
            "turn 1 has no `value`",
        ),
        (
            r#"{"conversations": [{"from": "human", "value": ["Hi"]}]}"#,
            "turn 1 has a `value` that is not a string",
        ),
        (
            r#"{"conversations": [{"from": 1, "value": "Hi"}]}"#,
            "turn 1 has a `from` that is not a string",
        ),
        (
            r#"{"conversations": [{"from": "human", "value": "Hi"}, {"from": "narrator", "value": "Then"}]}"#,
            "turn 2: `from` \"narrator\" is not a ShareGPT role",
        ),
        (
            r#"{"conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "{}"}]}"#,
            "turn 2: `from` \"function_call\" is a tool call",
        ),
        (
            r#"{"conversations": [{"from": "gpt", "value": "Hi", "weight": 0.5}]}"#,
            "turn 1 has `weight` 0.5: give 0",
        ),
        (
            r#"{"conversations": "Hi"}"#,
            "`conversations` is not a list",
        ),
        (r#"{"conversations": []}"#, "`conversations` is empty"),
        (r#"{"conversations": ["Hi"]}"#, "turn 1 is not an object"),
        (
            r#"{"system": ["x"], "conversations": [{"from": "human", "value": "Hi"}]}"#,
            "`system` is not a string",
        ),
        (
            r#"{"system": "A", "conversations": [{"from": "system", "value": "B"}]}"#,
            "both a `system` field and a first `system` turn",
        ),
    ] {
        let text = format!("{good}\n\n{bad}\n");
        let err = chat_text("bad.jsonl", &text, TrainOn::Responses)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.jsonl: record 2 (line 3): ") && err.contains(needle),
            "{needle}: {err}"
        );
        // In a JSON array the record is named without a line.
        let array = format!("[{good}, {bad}]");
        let err = chat_text("bad.json", &array, TrainOn::All)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.json: record 2: ") && err.contains(needle),
            "{needle}: {err}"
        );
    }
}

#[test]
fn a_marker_ending_in_a_space_leaves_the_first_word_of_the_answer_learned() {
    let tok = tokenizer();
    let path = Path::new("qa.jsonl");
    let records = parse_records(
        r#"{"instruction": "Capital of France?", "output": "Paris"}"#,
        path,
    )
    .unwrap();
    let kind = DatasetKind::Format {
        format: Format::parse(
            r####"{"instruction,output": "### Q: %instruction%\n### A: %output%"}"####,
            Path::new("qa-format.json"),
        )
        .unwrap(),
        train_only_after: "### A: ".into(),
    };
    let d = encode_dataset(&records, path, &kind, &opts(256), &tok, SPECIAL).unwrap();
    let segs = trainer_core::dataset::dump_segments(&tok, &d.samples[0]).unwrap();
    let shown: Vec<(bool, &str)> = segs.iter().map(|s| (s.learned, s.text.as_str())).collect();
    assert_eq!(
        shown,
        [
            (false, "<|im_start|>### Q: Capital of France?\n### A:"),
            (true, " Paris<|im_end|>")
        ]
    );
    // The marker's last character (the space) is learned with ` Paris`: the summary counts it.
    assert_eq!((d.report.learned, d.report.starts_mid_token), (2, 1));
    // A marker that ends where the tokenizer splits does not.
    let kind = DatasetKind::Format {
        format: Format::parse(
            r####"{"instruction,output": "### Q: %instruction%\n### A: %output%"}"####,
            Path::new("qa-format.json"),
        )
        .unwrap(),
        train_only_after: "### A:".into(),
    };
    let d = encode_dataset(&records, path, &kind, &opts(256), &tok, SPECIAL).unwrap();
    assert_eq!((d.report.learned, d.report.starts_mid_token), (2, 0));
}

//! The label-mask rule ([`super::LABEL_MASK_RULE`]) on real tokenizers, through both paths that build learned
//! ranges: format files with `train_only_after`, and chat templates' assistant spans. Random texts, markers and
//! replies; the SmolLM2 byte-level BPE (whose tokens carry the space before a word) and a tokenizer that splits
//! on spaces (whose tokens cover no space at all).

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use tokenizers::Tokenizer;

use super::{
    encode_labeled, labeled_text, parse_records, ChatTemplate, DatasetKind, EncodeOptions, Encoded,
    Format, LabeledText, LongSamples, TrainOn,
};
use crate::tokenizer::SpecialTokens;
use crate::train::IGNORE_INDEX;

fn smollm2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/smollm2-tokenizer.json"
        );
        Tokenizer::from_file(path).expect("the SmolLM2 tokenizer in testdata/")
    })
}

/// Words split on whitespace; unknown words are `[UNK]`; the chat templates' special strings are added tokens.
fn by_spaces() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let specials = ["<|im_start|>", "<|im_end|>", "</s>"];
        let added: Vec<serde_json::Value> = specials
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({"id": i + 1, "content": s, "single_word": false, "lstrip": false,
                                   "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let mut vocab = serde_json::Map::new();
        vocab.insert("[UNK]".into(), 0.into());
        for (i, s) in specials.iter().enumerate() {
            vocab.insert((*s).into(), (i + 1).into());
        }
        for (i, w) in ["A:", "Q:", "Paris", "user", "assistant", "###"]
            .iter()
            .enumerate()
        {
            vocab.insert((*w).into(), (i + 10).into());
        }
        let doc = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
            "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
        });
        doc.to_string().parse().expect("a word-level tokenizer")
    })
}

fn tokenizer(which: usize) -> &'static Tokenizer {
    [smollm2, by_spaces][which]()
}

/// No BOS/EOS, no cut: the sample is exactly the text's tokens, so labels line up with the offsets.
const NONE: SpecialTokens = SpecialTokens {
    bos: None,
    eos: None,
    pad: None,
};
const OPTS: EncodeOptions = EncodeOptions {
    cutoff: 100_000,
    bos: false,
    eos: false,
    long: LongSamples::Truncate,
};

/// Encodes `t` and checks the rule against the tokenizer's own offsets: every byte of a learned range that a
/// token covers is covered by a learned token; a token wholly outside the learned ranges is masked.
fn check_rule(tok: &Tokenizer, t: &LabeledText) -> std::result::Result<(), TestCaseError> {
    let enc = tok.encode(t.text.as_str(), false).unwrap();
    let offsets = enc.get_offsets();
    let labels = match encode_labeled(tok, NONE, &OPTS, t).unwrap() {
        Encoded::Kept { sample, .. } => {
            prop_assert_eq!(&sample.input_ids[..], enc.get_ids());
            sample.labels
        }
        // Nothing learned after the first token: every later token lies wholly outside the ranges.
        Encoded::NothingToLearn { .. } => vec![IGNORE_INDEX; offsets.len()],
        Encoded::TooLong { .. } => unreachable!("no cutoff"),
    };
    let learned = |i: usize| labels[i] != IGNORE_INDEX;
    let inside = |b: usize| t.learn.iter().any(|r: &Range<usize>| r.contains(&b));
    for (i, &(start, end)) in offsets.iter().enumerate() {
        prop_assert!(start < end, "token {} has empty offsets", i);
        let touches = (start..end).any(inside);
        // Token 0 of a kept sample keeps its label even when it is the only one learned; NothingToLearn does not.
        if !touches || i > 0 {
            prop_assert_eq!(
                learned(i),
                touches,
                "token {} {:?} of {:?}, ranges {:?}",
                i,
                &t.text[start..end],
                t.text,
                t.learn
            );
        }
    }
    for r in &t.learn {
        for b in r.clone() {
            let covering: Vec<usize> = (0..offsets.len())
                .filter(|&i| offsets[i].0 <= b && b < offsets[i].1)
                .collect();
            prop_assert!(
                covering.is_empty() || covering.iter().any(|&i| learned(i) || i == 0),
                "byte {} ({:?}) of a learned range is in no learned token: {:?}",
                b,
                t.text[..].get(b..=b),
                t.text
            );
        }
    }
    Ok(())
}

const CHAT_TEMPLATES: [&str; 3] = [
    // ChatML: the reply starts after a newline.
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
     {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    // The reply glued to the template's last word, as some templates render it.
    "{% for m in messages %}{% if m['role'] == 'user' %}### Q: {{ m['content'] }}\n{% else %}\
     ### A:{{ m['content'] }}</s>\n{% endif %}{% endfor %}{% if add_generation_prompt %}### A:{% endif %}",
    // Llama-2 style: the space before the reply belongs to the template.
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST] {% else %}\
     {{ m['content'] }}</s>{% endif %}{% endfor %}",
];

const TEXT: &str = "[a-zA-Z#:.,é日 \n]{0,24}";
const REPLY: &str = "[ \n]{0,2}[a-zA-Zé日.][a-zA-Zé日 .,\n]{0,24}";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Instruction path: the learned range starts right after the first occurrence of the marker.
    #[test]
    fn every_byte_after_the_marker_is_learned_and_nothing_before_it(
        which in 0usize..2, prompt in TEXT, marker in "[a-zA-Z#:. \n]{1,8}", answer in REPLY,
    ) {
        let format = format!(
            "{{\"q,a\": {}}}",
            serde_json::to_string(&format!("Q{prompt}%q%{marker}%a%")).unwrap()
        );
        let format = Format::parse(&format, Path::new("f.json")).unwrap();
        let record = serde_json::json!({"q": "x", "a": answer}).to_string();
        let records = parse_records(&record, Path::new("d.jsonl")).unwrap();
        let kind = DatasetKind::Format { format, train_only_after: marker.clone() };
        let (t, found) = labeled_text(&records[0], &kind, &OPTS, Path::new("d.jsonl")).unwrap();
        prop_assert!(found);
        let end = t.text.find(&marker).unwrap() + marker.len();
        prop_assert_eq!(t.learn.len(), 1);
        prop_assert_eq!(t.learn[0].clone(), end..t.text.len());
        check_rule(tokenizer(which), &t)?;
    }

    /// Chat path: each reply's span (and its end-of-turn text) is learned, nothing wholly outside the spans is.
    #[test]
    fn every_byte_of_a_reply_is_learned_and_nothing_outside(
        which in 0usize..2, template in 0usize..3, user in REPLY, reply in REPLY, reply2 in REPLY,
        second_learned: bool,
    ) {
        let template = ChatTemplate::new(CHAT_TEMPLATES[template], Path::new("t.jinja"), "", "</s>").unwrap();
        let record = serde_json::json!({"messages": [
            {"role": "user", "content": user}, {"role": "assistant", "content": reply},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": reply2, "weight": u8::from(second_learned)},
        ]})
        .to_string();
        let records = parse_records(&record, Path::new("c.jsonl")).unwrap();
        let kind = DatasetKind::Chat { template, train_on: TrainOn::Responses };
        let (t, _) = labeled_text(&records[0], &kind, &OPTS, Path::new("c.jsonl")).unwrap();
        prop_assert_eq!(t.learn.len(), 1 + usize::from(second_learned));
        prop_assert!(t.text[t.learn[0].clone()].contains(reply.trim_end()));
        check_rule(tokenizer(which), &t)?;
    }
}

#[test]
fn the_space_a_marker_ends_with_does_not_mask_the_word_after_it() {
    let tok = smollm2();
    let t = LabeledText {
        text: "### Q: Capital of France?\n### A: Paris".into(),
        learn: std::iter::once(33..38).collect(),
        add_bos: false,
        add_eos: false,
    };
    assert_eq!(&t.text[33..], "Paris");
    let Encoded::Kept {
        sample,
        starts_mid_token,
        ..
    } = encode_labeled(tok, NONE, &OPTS, &t).unwrap()
    else {
        panic!("nothing learned")
    };
    let learned: Vec<u32> = sample
        .input_ids
        .iter()
        .zip(&sample.labels)
        .filter(|(_, &l)| l != IGNORE_INDEX)
        .map(|(&i, _)| i)
        .collect();
    assert_eq!(tok.decode(&learned, false).unwrap(), " Paris");
    assert!(starts_mid_token, "the marker's space is inside ` Paris`");
}

#[test]
fn trimmed_offsets_stand_for_the_byte_before_them() {
    // GPT-2's ByteLevel post-processor with trim_offsets: ` Paris` covers only `Paris`, an all-space token is empty.
    let learn: Vec<Range<usize>> = std::iter::once(5..12).collect();
    assert!(super::encode::is_learned(&learn, (6, 11)));
    assert!(!super::encode::is_learned(&learn, (5, 5)), "ends at 5");
    assert!(super::encode::is_learned(&learn, (6, 6)));
    assert!(super::encode::is_learned(&learn, (12, 12)));
    assert!(!super::encode::is_learned(&learn, (13, 13)));
    assert!(!super::encode::is_learned(&learn, (0, 0)));
    assert!(
        !super::encode::is_learned(std::slice::from_ref(&(3..3)), (0, 9)),
        "an empty range learns nothing"
    );
}

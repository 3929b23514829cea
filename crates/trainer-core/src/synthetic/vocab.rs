//! The synthetic models' tokenizer: byte-level BPE (GPT-2 style) with three ChatML control tokens, the 256 byte
//! tokens and generated merges that fill the vocabulary to the shape's size, written as GGUF `tokenizer.*`
//! metadata.
//!
//! Merges grow words one letter at a time, letters in rough English frequency order: first words after a space
//! (`Ġe`, `Ġt`, ..., `Ġth`, ..., `Ġthe`), then bare letter pairs and triples, then longer words after a space.
//! Any text encodes (bytes are always in the vocabulary) and decodes back to itself; English words take fewer
//! tokens than bytes (` the tea is on the table`: 7 tokens for 24 bytes at 32000 tokens).

use crate::error::{Error, Result};
use crate::gguf_write::Value;

/// `<|endoftext|>` (padding), `<|im_start|>` (BOS), `<|im_end|>` (EOS): ids 0, 1, 2.
pub(super) const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub(super) const PAD: u32 = 0;
pub(super) const BOS: u32 = 1;
pub(super) const EOS: u32 = 2;

/// A ChatML template (as SmolLM2's and Qwen2's, without their default system prompt).
pub(super) const CHAT_TEMPLATE: &str = "{% for message in messages %}\
    {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
    {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Letters in rough order of English frequency: the alphabet merges are built from.
const LETTERS: &str = "etaoinshrdlcumwfgypbvkjxqz";

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;

/// GPT-2's byte -> printable character map (`bytes_to_unicode`).
fn byte_chars() -> [char; 256] {
    let mut out = [' '; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(b)
        } else {
            extra += 1;
            255 + extra
        };
        out[usize::from(b)] = char::from_u32(code).unwrap_or(' ');
    }
    out
}

/// Tokens (specials, bytes, merges), their types and the merges, `size` tokens in all.
pub(super) struct Vocab {
    pub(super) tokens: Vec<String>,
    pub(super) types: Vec<i32>,
    pub(super) merges: Vec<String>,
}

pub(super) fn vocab(size: usize) -> Result<Vocab> {
    let base = SPECIALS.len() + 256;
    if size < base {
        return Err(Error::input(
            "vocab_size",
            format!("a synthetic model needs at least {base} tokens (3 control tokens and 256 bytes), got {size}"),
        ));
    }
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![CONTROL; SPECIALS.len()];
    let chars = byte_chars();
    tokens.extend(chars.iter().map(char::to_string));
    types.extend([NORMAL; 256]);
    let mut v = Vocab {
        tokens,
        types,
        merges: Vec::with_capacity(size - base),
    };
    let letters: Vec<String> = LETTERS.chars().map(String::from).collect();
    // Words after a space grow from the left, and all their merges rank before any merge of bare letters, so
    // byte-pair encoding (lowest rank first) builds ` the` as `Ġt`, `Ġth`, `Ġthe` rather than stranding `Ġt`
    // beside `he`. Up to three letters after the space, then bare letter pairs and triples (word pieces with no
    // space before them), then longer space-led words until the vocabulary is full.
    let mut spaced = grow(
        &mut v,
        &[chars[usize::from(b' ')].to_string()],
        &letters,
        size,
    );
    for _ in 0..2 {
        spaced = grow(&mut v, &spaced, &letters, size);
    }
    let bare = grow(&mut v, &letters, &letters, size);
    grow(&mut v, &bare, &letters, size);
    while v.tokens.len() < size && !spaced.is_empty() {
        spaced = grow(&mut v, &spaced, &letters, size);
    }
    Ok(v)
}

/// Adds the merges `prefix + letter` for every prefix (in order) until the vocabulary has `size` tokens; returns
/// the new tokens. Every token is made once: from its own prefix and last letter.
fn grow(v: &mut Vocab, prefixes: &[String], letters: &[String], size: usize) -> Vec<String> {
    let mut made = Vec::new();
    for p in prefixes {
        for c in letters {
            if v.tokens.len() == size {
                return made;
            }
            let token = format!("{p}{c}");
            v.merges.push(format!("{p} {c}"));
            v.tokens.push(token.clone());
            v.types.push(NORMAL);
            made.push(token);
        }
    }
    made
}

/// The `tokenizer.*` metadata of a vocabulary of `size` tokens.
pub(super) fn metadata(size: usize) -> Result<Vec<(String, Value)>> {
    let v = vocab(size)?;
    let strings = |items: Vec<String>| Value::Array(items.into_iter().map(Value::String).collect());
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), strings(v.tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(v.types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strings(v.merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(BOS)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(EOS)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(PAD)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(CHAT_TEMPLATE.into()),
        ),
    ])
}

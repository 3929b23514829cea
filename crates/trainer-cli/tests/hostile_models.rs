//! Hostile model files: chat-template bombs (given with `--chat-template` or embedded in a GGUF file) and GGUF
//! copies of the real model declaring absurd counts. Each run ends in one clear error naming the file and the
//! limit or key, whatever the machine; the tests assert the error, never a time (the render limits and the
//! count checks make the outcome deterministic). docs/fuzzing.md gives each case's time and peak memory before
//! and after the limits.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;

use crate::common::{assert_clean_error, cli, model, tempdir};

/// The template bombs: (file name, source, what the error says).
pub const BOMBS: [(&str, &str, &str); 4] = [
    (
        "nested-loops.jinja",
        "{% for i in range(10000) %}{% for j in range(10000) %}{{ j }}{% endfor %}{% endfor %}",
        "built a value of",
    ),
    (
        "string-doubling.jinja",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        "built a value of",
    ),
    (
        "deep-recursion.jinja",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "recursion limit",
    ),
    (
        "branching-recursion.jinja",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% else %}abcdefgh{% endif %}{% endmacro %}{{ f(40) }}",
        "ran more than",
    ),
];

/// A one-record chat dataset.
fn chat(dir: &Path) -> PathBuf {
    let p = dir.join("chat.jsonl");
    fs::write(
        &p,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello!\"}]}\n",
    )
    .unwrap();
    p
}

/// `check` on `model` with the one-record chat dataset (and `template` when given).
fn check(model: &Path, dir: &Path, template: Option<&Path>) -> Output {
    let mut c = cli();
    c.arg("check")
        .arg("--model")
        .arg(model)
        .arg("--dataset")
        .arg(chat(dir))
        .args(["--cutoff", "64"]);
    if let Some(t) = template {
        c.arg("--chat-template").arg(t);
    }
    c.output().unwrap()
}

#[test]
fn chat_template_bombs_end_in_a_render_limit() {
    let d = tempdir("hostile-templates");
    for (name, src, needle) in BOMBS {
        let t = d.join(name);
        fs::write(&t, src).unwrap();
        let out = check(&model(), &d, Some(&t));
        assert_clean_error(&out, needle);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{err}");
        if needle != "recursion limit" {
            assert!(
                err.contains("record 1") && err.contains("--chat-template"),
                "{err}"
            );
        }
    }
}

fn ggml_type(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A GGUF value's type number and bytes (without the type).
fn put_value(out: &mut Vec<u8>, v: &Value) -> u32 {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(items) => {
            let mut body = Vec::new();
            let ty = items
                .iter()
                .map(|i| put_value(&mut body, i))
                .last()
                .unwrap_or(0);
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            out.extend_from_slice(&body);
        }
    }
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// A copy of the real model at `to` with the metadata keys `set` (replaced or added) and the tensors `shapes`
/// given new dimensions: the header is written anew and the tensor data copied as it is (tensor offsets count
/// from its start).
pub fn gguf_copy(to: &Path, set: &[(&str, Value)], shapes: &[(&str, Vec<usize>)]) {
    let mut f = fs::File::open(model()).unwrap();
    let ct = Content::read(&mut f).unwrap();
    let mut md: BTreeMap<String, &Value> =
        ct.metadata.iter().map(|(k, v)| (k.clone(), v)).collect();
    for (k, v) in set {
        md.insert(k.to_string(), v);
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(ct.tensor_infos.len() as u64).to_le_bytes());
    out.extend_from_slice(&(md.len() as u64).to_le_bytes());
    for (k, v) in &md {
        put_str(&mut out, k);
        let mut body = Vec::new();
        let ty = put_value(&mut body, v);
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&body);
    }
    for (name, info) in &ct.tensor_infos {
        let dims = shapes
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| info.shape.dims().to_vec(), |(_, d)| d.clone());
        put_str(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims.iter().rev() {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        out.extend_from_slice(&ggml_type(info.ggml_dtype).to_le_bytes());
        out.extend_from_slice(&info.offset.to_le_bytes());
    }
    let align = match md.get("general.alignment") {
        Some(Value::U32(a)) => *a as usize,
        _ => 32,
    };
    out.resize(out.len().div_ceil(align) * align, 0);
    let data = fs::read(model()).unwrap();
    let mut w = fs::File::create(to).unwrap();
    w.write_all(&out).unwrap();
    w.write_all(&data[ct.tensor_data_offset as usize..])
        .unwrap();
}

/// A GGUF case: (file name, metadata keys set, tensor shapes set, what the error says).
pub type GgufCase = (
    &'static str,
    Vec<(&'static str, Value)>,
    Vec<(&'static str, Vec<usize>)>,
    &'static str,
);

/// The GGUF cases.
pub fn gguf_cases() -> Vec<GgufCase> {
    let doubling = BOMBS[1].1.to_string();
    vec![
        (
            "template-bomb.gguf",
            vec![("tokenizer.chat_template", Value::String(doubling))],
            vec![],
            "built a value of",
        ),
        (
            "layers.gguf",
            vec![("llama.block_count", Value::U64(69_879_750_394_594_115))],
            vec![],
            "`llama.block_count` is 69879750394594115",
        ),
        (
            "heads.gguf",
            vec![("llama.attention.head_count", Value::U64(1 << 40))],
            vec![],
            "`llama.attention.head_count` is 1099511627776",
        ),
        (
            "vocabulary.gguf",
            vec![],
            vec![("token_embd.weight", vec![1 << 62, 576])],
            "tensor `token_embd.weight` declares shape",
        ),
        (
            "context.gguf",
            vec![("llama.context_length", Value::U64(1 << 50))],
            vec![],
            "`llama.context_length` is 1125899906842624",
        ),
    ]
}

#[test]
fn gguf_copies_with_a_template_bomb_or_absurd_counts_name_the_key() {
    let d = tempdir("hostile-gguf-counts");
    for (name, set, shapes, needle) in gguf_cases() {
        let m = d.join(name);
        gguf_copy(&m, &set, &shapes);
        let out = check(&m, &d, None);
        assert_clean_error(&out, needle);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{err}");
        fs::remove_file(&m).unwrap();
    }
    // The copy itself is faithful: unchanged, it loads and checks like the model.
    let same = d.join("same.gguf");
    gguf_copy(&same, &[], &[]);
    let out = check(&same, &d, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("renders:        3 chat-template renders"),
        "{out}"
    );
    fs::remove_file(&same).unwrap();
}

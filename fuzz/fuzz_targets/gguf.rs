//! Loading a model from a GGUF file: the metadata, the tokenizer built from it and the tensor
//! table. The input is raw bytes, or a tiny valid llama GGUF (byte-level BPE vocabulary, F32 or
//! F16 tensors) with fuzzer-chosen metadata changes, dropped or reshaped tensors, a replaced
//! vocabulary or merges, then truncated or flipped bytes. `Model::load` never panics nor blows
//! up memory; a model it accepts tokenizes, and runs a forward pass on ids it produced.
#![no_main]

use std::io::Cursor;
use std::path::PathBuf;

use arbitrary::Arbitrary;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use libfuzzer_sys::fuzz_target;
use trainer_core::Model;

const KEYS: [&str; 20] = [
    "general.architecture",
    "general.alignment",
    "llama.embedding_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.key_length",
    "llama.feed_forward_length",
    "llama.block_count",
    "llama.context_length",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
];

#[derive(Debug, Arbitrary)]
enum Val<'a> {
    U8(u8),
    U32(u32),
    U64(u64),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    Strs(Vec<&'a str>),
    U32s(Vec<u32>),
}

impl Val<'_> {
    fn value(&self) -> Value {
        match self {
            Val::U8(v) => Value::U8(*v),
            Val::U32(v) => Value::U32(*v),
            Val::U64(v) => Value::U64(*v),
            Val::I32(v) => Value::I32(*v),
            Val::F32(v) => Value::F32(*v),
            Val::Bool(v) => Value::Bool(*v),
            Val::Str(s) => Value::String((*s).to_string()),
            Val::Strs(v) if v.is_empty() => Value::Array(Vec::new()),
            Val::Strs(v) => Value::Array(v.iter().map(|s| Value::String((*s).to_string())).collect()),
            Val::U32s(v) => Value::Array(v.iter().map(|x| Value::U32(*x)).collect()),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Key<'a> {
    Known(u8),
    Other(&'a str),
}

#[derive(Debug, Arbitrary)]
struct Spec<'a> {
    set: Vec<(Key<'a>, Val<'a>)>,
    drop_keys: Vec<u8>,
    drop_tensors: Vec<u8>,
    reshape: Option<(u8, Vec<u8>)>,
    f16: bool,
    truncate: Option<u32>,
    flip: Option<(u32, u8)>,
}

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    Raw(&'a [u8]),
    Built(Spec<'a>),
}

/// GPT-2's byte-to-character table: the 256 byte tokens, by byte value.
fn byte_tokens() -> Vec<String> {
    let mut table: Vec<(u32, u32)> = (33..=126)
        .chain(161..=172)
        .chain(174..=255)
        .map(|b| (b, b))
        .collect();
    let mut n = 0;
    for b in 0..256 {
        if !table.iter().any(|(x, _)| *x == b) {
            table.push((b, 256 + n));
            n += 1;
        }
    }
    table.sort_unstable();
    table
        .into_iter()
        .map(|(_, c)| char::from_u32(c).unwrap().to_string())
        .collect()
}

fn base_metadata() -> Vec<(String, Value)> {
    let mut tokens = byte_tokens();
    tokens.push("\u{120}t".to_string()); // "Ġt": the one merge's result
    let s = |v: &str| Value::String(v.to_string());
    vec![
        ("general.architecture".into(), s("llama")),
        ("llama.embedding_length".into(), Value::U32(16)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        ("llama.feed_forward_length".into(), Value::U32(32)),
        ("llama.block_count".into(), Value::U32(1)),
        ("llama.context_length".into(), Value::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
        ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![s("\u{120} t")])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
    ]
}

fn base_tensors() -> Vec<(String, Vec<usize>)> {
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![257, 16]),
        ("output_norm.weight".to_string(), vec![16]),
    ];
    for (name, shape) in [
        ("attn_norm.weight", vec![16]),
        ("attn_q.weight", vec![16, 16]),
        ("attn_k.weight", vec![8, 16]),
        ("attn_v.weight", vec![8, 16]),
        ("attn_output.weight", vec![16, 16]),
        ("ffn_gate.weight", vec![32, 16]),
        ("ffn_up.weight", vec![32, 16]),
        ("ffn_down.weight", vec![16, 32]),
        ("ffn_norm.weight", vec![16]),
    ] {
        t.push((format!("blk.0.{name}"), shape));
    }
    t
}

fn build(spec: &Spec) -> Vec<u8> {
    let mut md = base_metadata();
    for &i in &spec.drop_keys {
        if !md.is_empty() {
            let n = md.len();
            md.remove(usize::from(i) % n);
        }
    }
    for (key, val) in spec.set.iter().take(6) {
        let key = match key {
            Key::Known(i) => KEYS[usize::from(*i) % KEYS.len()].to_string(),
            Key::Other(s) => (*s).to_string(),
        };
        md.retain(|(k, _)| *k != key);
        md.push((key, val.value()));
    }
    let mut shapes = base_tensors();
    for &i in &spec.drop_tensors {
        if !shapes.is_empty() {
            let n = shapes.len();
            shapes.remove(usize::from(i) % n);
        }
    }
    if let Some((i, dims)) = &spec.reshape {
        if !shapes.is_empty() && !dims.is_empty() {
            let n = shapes.len();
            shapes[usize::from(*i) % n].1 = dims.iter().take(3).map(|&d| usize::from(d % 64) + 1).collect();
        }
    }
    let dtype = if spec.f16 { GgmlDType::F16 } else { GgmlDType::F32 };
    let tensors: Vec<(String, QTensor)> = shapes
        .iter()
        .filter_map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let t = Tensor::arange(0u32, n as u32, &Device::Cpu)
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .and_then(|t| (t * 0.001)?.cos())
                .and_then(|t| t.reshape(shape.as_slice()))
                .ok()?;
            QTensor::quantize(&t, dtype).ok().map(|q| (name.clone(), q))
        })
        .collect();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, q)| (k.as_str(), q)).collect();
    let mut out = Cursor::new(Vec::new());
    if gguf_file::write(&mut out, &md_refs, &t_refs).is_err() {
        return Vec::new();
    }
    let mut bytes = out.into_inner();
    if let Some(n) = spec.truncate {
        bytes.truncate(n as usize);
    }
    if let Some((at, x)) = spec.flip {
        if !bytes.is_empty() {
            let n = bytes.len();
            bytes[at as usize % n] ^= x;
        }
    }
    bytes
}

fn scratch() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("fuzz-gguf-{}.gguf", std::process::id()))
}

fuzz_target!(|input: Input| {
    let bytes = match &input {
        Input::Raw(b) => b.to_vec(),
        Input::Built(spec) => build(spec),
    };
    let path = scratch();
    std::fs::write(&path, &bytes).unwrap();
    let Ok(model) = Model::load(&path, &Device::Cpu) else {
        return;
    };
    let vocab = model.config().vocab_size;
    let Ok(enc) = model.tokenizer().encode("Hello there, the tokenizer!", false) else {
        return;
    };
    let n = 8.min(model.config().max_position_embeddings);
    let ids: Vec<u32> = enc.get_ids().iter().copied().take(n).collect();
    let _ = model.tokenizer().decode(&ids, false);
    if !ids.is_empty() && ids.iter().all(|&i| (i as usize) < vocab) {
        let logits = model.logits(None, &ids).expect("a loaded model runs on its own ids");
        assert_eq!(logits.dims(), &[ids.len(), vocab]);
    }
});

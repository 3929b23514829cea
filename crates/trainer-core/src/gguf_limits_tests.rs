//! Tests of the GGUF checks, with a tiny GGUF writer and the fuzz seeds.

use std::fs::File;

use super::*;
use crate::gguf_file::GgufModel;
use candle_core::quantized::gguf_file::{self, Value};

/// GGUF's metadata value type of an array.
const GGUF_ARRAY: u32 = 9;

fn file(md: &[(&str, &Value)], name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gguf-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let mut f = File::create(&p).unwrap();
    gguf_file::write(&mut f, md, &[]).unwrap();
    p
}

/// Reads the header as the loader does.
fn read_content(p: &Path) -> Result<GgufModel> {
    GgufModel::open(p)
}

#[test]
fn an_alignment_that_is_not_a_power_of_two_is_refused() {
    let arr = Value::Array(vec![Value::String("a b".into()), Value::String("c".into())]);
    let name = Value::String("x".into());
    // 0 (which a reader would divide by), not a power of two, negative, or not a 32-bit integer.
    for (i, bad) in [
        Value::U8(0),
        Value::U16(0),
        Value::U32(0),
        Value::I32(0),
        Value::U32(24),
        Value::I32(-1),
        Value::U64(0),
    ]
    .into_iter()
    .enumerate()
    {
        let p = file(
            &[
                ("general.name", &name),
                ("t", &arr),
                ("general.alignment", &bad),
            ],
            &format!("bad{i}.gguf"),
        );
        let err = read_content(&p).err().unwrap();
        assert!(err.to_string().contains("general.alignment"), "{err}");
    }
    for (i, fine) in [Value::U32(32), Value::U8(1), Value::I32(64)]
        .into_iter()
        .enumerate()
    {
        let p = file(
            &[("t", &arr), ("general.alignment", &fine)],
            &format!("fine{i}.gguf"),
        );
        read_content(&p).unwrap();
    }
}

#[test]
fn a_header_that_would_exhaust_memory_is_refused_before_it_is_read() {
    // 40 million one-byte elements: 40 MB on disk (a sparse file of zeros here), 1.3 GB as metadata values.
    let dir = std::env::temp_dir().join(format!("gguf-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("big.gguf");
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&0u64.to_le_bytes()); // tensors
    head.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
    head.extend_from_slice(&12u64.to_le_bytes());
    head.extend_from_slice(b"general.name");
    head.extend_from_slice(&GGUF_ARRAY.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes()); // of u8
    head.extend_from_slice(&40_000_000u64.to_le_bytes());
    std::fs::write(&p, &head).unwrap();
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(head.len() as u64 + 40_000_000)
        .unwrap();
    let err = read_content(&p).err().unwrap().to_string();
    assert!(
        err.contains("more than 1024 MiB") && err.contains("big.gguf"),
        "{err}"
    );
    // Strings: each counts its text besides its value.
    let strings = Value::Array(vec![Value::String("x".repeat(100)); 1000]);
    let p = file(&[("tokenizer.ggml.tokens", &strings)], "strings.gguf");
    read_content(&p).unwrap();
}

#[test]
fn declared_counts_over_the_limits_or_the_tensors_name_the_key() {
    let arch = Value::String("llama".into());
    for (key, v, needle) in [
        (
            "llama.block_count",
            69_879_750_394_594_115u64,
            "`llama.block_count` is 69879750394594115",
        ),
        ("llama.block_count", 2, "no tensors of block 0"),
        (
            "llama.attention.head_count",
            1 << 40,
            "`llama.attention.head_count`",
        ),
        (
            "llama.embedding_length",
            1 << 40,
            "`llama.embedding_length`",
        ),
        ("llama.context_length", 1 << 40, "`llama.context_length`"),
        (
            "llama.feed_forward_length",
            u64::MAX,
            "`llama.feed_forward_length`",
        ),
    ] {
        let v = Value::U64(v);
        let p = file(&[("general.architecture", &arch), (key, &v)], "counts.gguf");
        let err = read_content(&p).err().unwrap().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

/// A tiny but complete llama GGUF (1 real block, 256-token tokenizer) declaring `blocks` blocks.
pub(crate) fn tiny_gguf(blocks: u64) -> Vec<u8> {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    let s = |v: &str| Value::String(v.to_string());
    let tokens = (0..256u32)
        .map(|i| Value::String(char::from_u32(0x100 + i).unwrap().to_string()))
        .collect();
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", s("llama")),
        ("llama.embedding_length", Value::U32(16)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.feed_forward_length", Value::U32(32)),
        ("llama.block_count", Value::U64(blocks)),
        ("llama.context_length", Value::U32(64)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
    ];
    let mut shapes = vec![
        ("token_embd.weight".to_string(), vec![256, 16]),
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
        shapes.push((format!("blk.0.{name}"), shape));
    }
    let tensors: Vec<(String, QTensor)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let t = Tensor::ones(shape.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap();
            (name, QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, q)| (k.as_str(), q)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
    out.into_inner()
}

/// The inputs in `fuzz/seeds/gguf/` (each the 4-byte tag of the target's raw-bytes case, then a GGUF file),
/// among them the fuzzer's findings: a `block_count` of 69879750394594115 (it aborted the process in
/// `Vec::with_capacity`), a tensor with a dimension of 0 (read by candle through a misaligned slice) and a
/// tensor whose byte size overflows: each loads or fails with an error, and those three fail naming the key,
/// the empty tensor or the overflow.
#[test]
fn the_gguf_fuzz_seeds_load_or_fail_cleanly() {
    let ok = std::env::temp_dir().join(format!("gguf-tiny-{}.gguf", std::process::id()));
    std::fs::write(&ok, tiny_gguf(1)).unwrap();
    crate::Model::load(&ok, &candle_core::Device::Cpu).unwrap();
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/gguf");
    let mut named = 0;
    for e in std::fs::read_dir(&seeds).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&ok, &bytes[4.min(bytes.len())..]).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let res = crate::Model::load(&ok, &candle_core::Device::Cpu);
        if let Some(key) = name.strip_prefix("count-") {
            let e = res.err().unwrap_or_else(|| panic!("{name} loaded"));
            assert!(
                e.to_string().contains(&format!("`llama.{key}`")),
                "{name}: {e}"
            );
            named += 1;
        } else if name.starts_with("empty-tensor") {
            let e = res.err().unwrap_or_else(|| panic!("{name} loaded"));
            assert!(e.to_string().contains("holds no elements"), "{name}: {e}");
            named += 1;
        } else if name.starts_with("byte-size-overflow") {
            // A shape whose element count fits in 64 bits but whose byte size does not (it overflowed in the
            // size computation: a panic in the fuzz build, a wrong size without overflow checks).
            let e = res.err().unwrap_or_else(|| panic!("{name} loaded"));
            assert!(e.to_string().contains("overflow"), "{name}: {e}");
            named += 1;
        }
    }
    assert!(
        named >= 3,
        "the count, empty-tensor or byte-size seeds are missing from {}",
        seeds.display()
    );
}

#[test]
#[ignore = "writes the count seeds of fuzz/seeds/gguf; run by hand"]
fn write_count_seeds() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/gguf");
    std::fs::create_dir_all(&seeds).unwrap();
    let mut bytes = vec![0u8; 4];
    bytes.extend(tiny_gguf(69_879_750_394_594_115));
    std::fs::write(seeds.join("count-block_count"), bytes).unwrap();
    let mut bytes = vec![0u8; 4];
    bytes.extend(tiny_gguf(1));
    std::fs::write(seeds.join("tiny-llama"), bytes).unwrap();
}

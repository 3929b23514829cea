//! Base weights kept as stored (`base_weights = keep`): every GGUF and safetensors type against the same model
//! expanded to f32 when loading, the real test model, split GGUF files, tampered files and memory limits.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use lora_targets::LoraSettings;
use trainer_core::{BaseWeights, LoadOptions, Model, ModelConfig, Sample, TrainConfig, Trainer};

use crate::common::{ids, model, model_path};

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("trainer-core-stored-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn opts(base_weights: BaseWeights) -> LoadOptions {
    LoadOptions {
        base_weights,
        ..LoadOptions::default()
    }
}

/// A tiny random model whose rows are whole K-quant blocks (256 values).
fn tiny(tied: bool, bias: bool) -> Model {
    let cfg = ModelConfig {
        tie_word_embeddings: tied,
        attention_bias: bias,
        ..ModelConfig::tiny_llama(256, 256, 2, 4, 2)
    };
    Model::random(cfg, 21, &Device::Cpu).unwrap()
}

/// GPT-2's byte-to-character table: the 256 byte tokens, by byte value.
fn byte_tokens() -> Vec<Value> {
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
        .map(|(_, c)| Value::String(char::from_u32(c).unwrap().to_string()))
        .collect()
}

fn metadata(cfg: &ModelConfig) -> Vec<(String, Value)> {
    let u = |v: usize| Value::U32(v as u32);
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.embedding_length".into(), u(cfg.hidden_size)),
        (
            "llama.attention.head_count".into(),
            u(cfg.num_attention_heads),
        ),
        (
            "llama.attention.head_count_kv".into(),
            u(cfg.num_key_value_heads),
        ),
        ("llama.feed_forward_length".into(), u(cfg.intermediate_size)),
        ("llama.block_count".into(), u(cfg.num_hidden_layers)),
        (
            "llama.context_length".into(),
            u(cfg.max_position_embeddings),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(cfg.rope_theta as f32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(byte_tokens())),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![])),
    ]
}

/// The model's weights under GGUF names, q/k rows in llama.cpp's order (what its converter writes).
fn gguf_tensors(m: &Model) -> Vec<(String, Tensor)> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = tmp(&format!(
        "export{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    m.save_hf_dir(&dir).unwrap();
    let hf = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = m.config();
    let permute = |t: &Tensor, heads: usize| {
        let dims = t.dims().to_vec();
        let (out, rest): (usize, usize) = (dims[0], dims[1..].iter().product());
        t.reshape((heads, 2, out / heads / 2, rest))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape(dims)
            .unwrap()
    };
    let mut out = Vec::new();
    for (name, t) in hf {
        let g = name
            .replace("model.embed_tokens.weight", "token_embd.weight")
            .replace("model.norm.weight", "output_norm.weight")
            .replace("lm_head.weight", "output.weight")
            .replace("model.layers.", "blk.")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down")
            .replace("input_layernorm", "attn_norm")
            .replace("post_attention_layernorm", "ffn_norm");
        let t = if g.contains("attn_q.") {
            permute(&t, cfg.num_attention_heads)
        } else if g.contains("attn_k.") {
            permute(&t, cfg.num_key_value_heads)
        } else {
            t
        };
        out.push((g, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Writes a GGUF with the matrices in `ty` (vectors in F32) and extra metadata.
fn write_gguf(
    path: &Path,
    cfg: &ModelConfig,
    tensors: &[(String, Tensor)],
    ty: GgmlDType,
    extra: &[(String, Value)],
) {
    let md: Vec<(String, Value)> = metadata(cfg)
        .into_iter()
        .chain(extra.iter().cloned())
        .collect();
    let q: Vec<(String, QTensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let ty = if t.rank() == 2 { ty } else { GgmlDType::F32 };
            (n.clone(), QTensor::quantize(t, ty).unwrap())
        })
        .collect();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// max |a - b| / max |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-12)
}

fn text_sample(s: &str) -> Sample {
    Sample::causal(s.bytes().map(u32::from).collect())
}

/// Logits, 3 training steps (all 7 modules, dropout, NEFTune, two micro-batches) and the LoRA gradients of `a`
/// and `b` agree to a relative 1e-5.
fn assert_same_model(a: &Model, b: &Model, what: &str) {
    let ids: Vec<u32> = b"kept as stored, expanded a panel at a time"
        .iter()
        .map(|&c| u32::from(c))
        .collect();
    let d = rel_diff(
        &a.logits(None, &ids).unwrap(),
        &b.logits(None, &ids).unwrap(),
    );
    assert!(d < 1e-5, "{what}: logits differ by {d} (relative)");
    let settings = LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: a.linear_modules(),
        ..LoraSettings::default()
    };
    let cfg = TrainConfig {
        seed: 3,
        neftune_alpha: Some(5.0),
        ..TrainConfig::default()
    };
    let mut ta = Trainer::new(a, settings.clone(), cfg.clone()).unwrap();
    let mut tb = Trainer::new(b, settings, cfg).unwrap();
    let steps = [
        vec![
            vec![text_sample("the first step"), text_sample("and a shorter")],
            vec![text_sample("two micro")],
        ],
        vec![vec![text_sample("a second step of training text")]],
        vec![vec![text_sample("the third"), text_sample("step")]],
    ];
    let cancel = AtomicBool::new(false);
    for (i, step) in steps.iter().enumerate() {
        let (la, lb) = (
            ta.step(step, 1e-2, &cancel).unwrap().loss,
            tb.step(step, 1e-2, &cancel).unwrap().loss,
        );
        assert!(
            (la - lb).abs() <= 1e-5 * lb.abs(),
            "{what}: step {i} loss {la} vs {lb}"
        );
    }
    let batch = [text_sample("gradients of every LoRA tensor")];
    let (ga, gb) = (ta.gradients(&batch).unwrap(), tb.gradients(&batch).unwrap());
    assert_eq!(ga.len(), 2 * 7 * 2);
    for (key, g) in &ga {
        let d = rel_diff(g, &gb[key]);
        assert!(
            d < 1e-5,
            "{what}: gradient of {key} differs by {d} (relative)"
        );
    }
}

#[test]
fn every_gguf_type_kept_gives_the_f32_logits_gradients_and_losses() {
    use GgmlDType::*;
    let dir = tmp("types");
    let types = [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K,
    ];
    for (i, ty) in types.into_iter().enumerate() {
        let (tied, bias) = (i % 2 == 0, i % 3 == 0);
        let m = tiny(tied, bias);
        let path = dir.join(format!("{ty:?}.gguf"));
        write_gguf(&path, m.config(), &gguf_tensors(&m), ty, &[]);
        let keep = Model::load_with(&path, &Device::Cpu, &opts(BaseWeights::Keep)).unwrap();
        let full = Model::load_with(&path, &Device::Cpu, &opts(BaseWeights::F32)).unwrap();
        let what = format!("{ty:?} (tied {tied}, bias {bias})");
        let types = keep.weight_types();
        assert_eq!(types.len(), 1, "{what}: {types:?}");
        if ty != F32 {
            assert!(
                keep.resident_bytes() < full.resident_bytes() / 3 * 2,
                "{what}: kept weights are not smaller"
            );
            assert_eq!(full.weight_types()[0].0, "F32");
        }
        assert_same_model(&keep, &full, &what);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn safetensors_f16_and_bf16_kept_give_the_f32_results() {
    let m = tiny(false, true);
    for dtype in [DType::F16, DType::BF16] {
        let dir = tmp(&format!("st-{dtype:?}"));
        m.save_hf_dir(&dir).unwrap();
        let file = dir.join("model.safetensors");
        let t: std::collections::HashMap<String, Tensor> =
            candle_core::safetensors::load(&file, &Device::Cpu)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
                .collect();
        candle_core::safetensors::save(&t, &file).unwrap();
        let keep = Model::load_with(&dir, &Device::Cpu, &opts(BaseWeights::Keep)).unwrap();
        let full = Model::load_with(&dir, &Device::Cpu, &opts(BaseWeights::F32)).unwrap();
        assert_eq!(
            keep.weight_types(),
            vec![(format!("{dtype:?}").to_uppercase(), 2 * 7 + 2)]
        );
        assert_same_model(&keep, &full, &format!("safetensors {dtype:?}"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_split_gguf_loads_from_its_first_part() {
    let m = tiny(true, false);
    let dir = tmp("split");
    let tensors = gguf_tensors(&m);
    let single = dir.join("one.gguf");
    write_gguf(&single, m.config(), &tensors, GgmlDType::Q8_0, &[]);
    let half = tensors.len() / 2;
    let split_md = |no: u16| {
        vec![
            ("split.no".to_string(), Value::U16(no)),
            ("split.count".to_string(), Value::U16(2)),
            (
                "split.tensors.count".to_string(),
                Value::I32(tensors.len() as i32),
            ),
        ]
    };
    let first = dir.join("tiny-00001-of-00002.gguf");
    write_gguf(
        &first,
        m.config(),
        &tensors[..half],
        GgmlDType::Q8_0,
        &split_md(0),
    );
    write_gguf(
        &dir.join("tiny-00002-of-00002.gguf"),
        m.config(),
        &tensors[half..],
        GgmlDType::Q8_0,
        &split_md(1),
    );
    let a = Model::load(&first, &Device::Cpu).unwrap();
    let b = Model::load(&single, &Device::Cpu).unwrap();
    let ids: Vec<u32> = (0..40).collect();
    assert_eq!(
        rel_diff(
            &a.logits(None, &ids).unwrap(),
            &b.logits(None, &ids).unwrap()
        ),
        0.0
    );
    std::fs::remove_file(dir.join("tiny-00002-of-00002.gguf")).unwrap();
    let err = Model::load(&first, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("tiny-00002-of-00002.gguf"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The position of tensor `name`'s type field in a GGUF header (after its name, dimension count and dimensions).
fn type_field(bytes: &[u8], name: &str) -> usize {
    let at = bytes
        .windows(name.len() + 8)
        .position(|w| w[8..] == *name.as_bytes() && w[..8] == (name.len() as u64).to_le_bytes())
        .unwrap();
    let p = at + 8 + name.len();
    let dims = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    p + 4 + 8 * dims
}

#[test]
fn tampered_or_unreadable_gguf_files_are_refused_naming_the_tensor() {
    let m = tiny(true, false);
    let dir = tmp("tamper");
    let path = dir.join("m.gguf");
    write_gguf(&path, m.config(), &gguf_tensors(&m), GgmlDType::Q4K, &[]);
    let good = std::fs::read(&path).unwrap();
    let load = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        Model::load(&path, &Device::Cpu).unwrap_err().to_string()
    };
    // Data running past the end of the file.
    let err = load(&good[..good.len() - 1000]);
    assert!(
        err.contains("runs past the end of the file") && err.contains("tensor `"),
        "{err}"
    );
    // Two tensors sharing bytes: k's data offset set to q's.
    let mut bytes = good.clone();
    let (q, k) = (
        type_field(&bytes, "blk.0.attn_q.weight"),
        type_field(&bytes, "blk.0.attn_k.weight"),
    );
    let q_offset: [u8; 8] = bytes[q + 4..q + 12].try_into().unwrap();
    bytes[k + 4..k + 12].copy_from_slice(&q_offset);
    let err = load(&bytes);
    assert!(
        err.contains("overlap") && err.contains("blk.0.attn_q.weight"),
        "{err}"
    );
    // A type this crate cannot decode (IQ2_XXS, id 16).
    let mut bytes = good.clone();
    bytes[q..q + 4].copy_from_slice(&16u32.to_le_bytes());
    let err = load(&bytes);
    assert!(
        err.contains("`blk.0.attn_q.weight` is stored as IQ2_XXS") && err.contains("Q4_K"),
        "{err}"
    );
    // A zero alignment.
    write_gguf(
        &path,
        m.config(),
        &gguf_tensors(&m),
        GgmlDType::F32,
        &[("general.alignment".into(), Value::U32(0))],
    );
    let err = Model::load(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("general.alignment"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tampered_safetensors_files_are_refused_naming_the_tensor() {
    let m = tiny(true, false);
    let dir = tmp("st-tamper");
    m.save_hf_dir(&dir).unwrap();
    let file = dir.join("model.safetensors");
    let good = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&good[8..8 + n]).unwrap();
    let norm = |i: usize| format!("model.layers.{i}.input_layernorm.weight");
    let offsets = header[norm(0)]["data_offsets"].clone();
    header[norm(1)]["data_offsets"] = offsets;
    let text = serde_json::to_vec(&header).unwrap();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&text);
    bytes.extend_from_slice(&good[8 + n..]);
    std::fs::write(&file, &bytes).unwrap();
    let err = Model::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("overlap") && err.contains("input_layernorm"),
        "{err}"
    );
    std::fs::write(&file, &good[..good.len() - 64]).unwrap();
    let err = Model::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("runs past the end of the file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_model_over_the_memory_limit_is_refused_before_reading_tensors() {
    let m = tiny(false, false);
    let dir = tmp("limit");
    let path = dir.join("m.gguf");
    write_gguf(&path, m.config(), &gguf_tensors(&m), GgmlDType::Q4_0, &[]);
    let keep = Model::load(&path, &Device::Cpu).unwrap();
    let full = Model::load_with(&path, &Device::Cpu, &opts(BaseWeights::F32)).unwrap();
    let between = (keep.resident_bytes() + full.resident_bytes()) / 2;
    let limited = |b| LoadOptions {
        base_weights: b,
        memory_limit: Some(between),
    };
    Model::load_with(&path, &Device::Cpu, &limited(BaseWeights::Keep)).unwrap();
    let err = Model::load_with(&path, &Device::Cpu, &limited(BaseWeights::F32))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("loading needs about") && err.contains("base_weights = keep"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real test model kept in Q4_1 against the same file expanded to f32: 5 steps with the same losses (1e-5)
/// and adapters that give the same logits (1e-4).
#[test]
fn smollm2_q4_1_kept_trains_like_f32() {
    let keep = model();
    assert!(
        keep.weight_types().iter().any(|(t, _)| t == "Q4_1"),
        "{:?}",
        keep.weight_types()
    );
    let full = Model::load_with(&model_path(), &Device::Cpu, &opts(BaseWeights::F32)).unwrap();
    eprintln!(
        "resident weights: keep {} MB, f32 {} MB",
        keep.resident_bytes() >> 20,
        full.resident_bytes() >> 20
    );
    assert!(keep.resident_bytes() * 4 <= full.resident_bytes());
    let settings = LoraSettings {
        r: 8,
        alpha: 16.0,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        ..LoraSettings::default()
    };
    let all = ids("train_input_ids");
    let batch = vec![vec![
        Sample::causal(all[..40].to_vec()),
        Sample::causal(all[5..30].to_vec()),
    ]];
    let cancel = AtomicBool::new(false);
    let mut ta = Trainer::new(keep, settings.clone(), TrainConfig::default()).unwrap();
    let mut tb = Trainer::new(&full, settings, TrainConfig::default()).unwrap();
    for i in 0..5 {
        let (a, b) = (
            ta.step(&batch, 1e-3, &cancel).unwrap(),
            tb.step(&batch, 1e-3, &cancel).unwrap(),
        );
        eprintln!("step {i}: keep {} f32 {}", a.loss, b.loss);
        assert!(
            (a.loss - b.loss).abs() <= 1e-5 * b.loss,
            "step {i}: {} vs {}",
            a.loss,
            b.loss
        );
    }
    let input = ids("input_ids");
    let (aa, ab) = (ta.adapter().unwrap(), tb.adapter().unwrap());
    let d = rel_diff(
        &full.logits(Some(&aa), &input).unwrap(),
        &full.logits(Some(&ab), &input).unwrap(),
    );
    eprintln!("adapter logits relative difference {d:e}");
    assert!(d < 1e-4, "the adapters give logits {d} apart");
}

/// A GGUF v3 file declaring `cfg`'s weights in F32 whose data is a hole (a sparse file): a big model on disk for
/// the memory checks, without writing its data.
fn write_sparse_gguf(path: &Path, cfg: &ModelConfig) {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    let mut kv: Vec<u8> = Vec::new();
    let mut n_kv = 0u64;
    for (k, v) in metadata(cfg) {
        s(&mut kv, &k);
        n_kv += 1;
        match v {
            Value::U32(x) => kv.extend(4u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
            Value::F32(x) => kv.extend(6u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
            Value::String(x) => {
                kv.extend(8u32.to_le_bytes());
                s(&mut kv, &x);
            }
            Value::Array(items) => {
                kv.extend(9u32.to_le_bytes().into_iter().chain(8u32.to_le_bytes()));
                kv.extend((items.len() as u64).to_le_bytes());
                for it in items {
                    s(&mut kv, it.to_string().unwrap());
                }
            }
            other => panic!("{other:?}"),
        }
    }
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, k) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![v, h]),
        ("output_norm.weight".into(), vec![h]),
    ];
    for l in 0..cfg.num_hidden_layers {
        for (n, d) in [
            ("attn_norm.weight", vec![h]),
            ("attn_q.weight", vec![q, h]),
            ("attn_k.weight", vec![k, h]),
            ("attn_v.weight", vec![k, h]),
            ("attn_output.weight", vec![h, q]),
            ("ffn_gate.weight", vec![i, h]),
            ("ffn_up.weight", vec![i, h]),
            ("ffn_down.weight", vec![h, i]),
            ("ffn_norm.weight", vec![h]),
        ] {
            shapes.push((format!("blk.{l}.{n}"), d));
        }
    }
    let mut infos: Vec<u8> = Vec::new();
    let mut offset = 0u64;
    for (name, dims) in &shapes {
        s(&mut infos, name);
        infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims.iter().rev() {
            infos.extend((*d as u64).to_le_bytes());
        }
        infos.extend(0u32.to_le_bytes());
        infos.extend(offset.to_le_bytes());
        offset += (dims.iter().product::<usize>() * 4).div_ceil(32) as u64 * 32;
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((shapes.len() as u64).to_le_bytes());
    out.extend(n_kv.to_le_bytes());
    out.extend(kv);
    out.extend(infos);
    out.resize(out.len().div_ceil(32) * 32, 0);
    let data_start = out.len() as u64;
    std::fs::write(path, &out).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(data_start + offset)
        .unwrap();
}

/// Under an address-space limit (`ulimit -v`, in a child process running this test), a model whose f32 weights
/// need more is refused before any tensor is read, and the message names the limit.
#[test]
fn the_address_space_limit_refuses_a_model_over_it() {
    const CHILD: &str = "TRAINER_CORE_TEST_RLIMIT_CHILD";
    if let Some(path) = std::env::var_os(CHILD) {
        let err = Model::load_with(Path::new(&path), &Device::Cpu, &opts(BaseWeights::F32))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("RLIMIT_AS") && err.contains("loading needs about"),
            "{err}"
        );
        println!("refused: {err}");
        return;
    }
    let dir = tmp("rlimit");
    let path = dir.join("big.gguf");
    let cfg = ModelConfig {
        intermediate_size: 14336,
        max_position_embeddings: 4096,
        ..ModelConfig::tiny_llama(256, 4096, 8, 32, 8)
    };
    write_sparse_gguf(&path, &cfg);
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304 && exec \"$0\" --exact stored::the_address_space_limit_refuses_a_model_over_it --nocapture --test-threads=1")
        .arg(&exe)
        .env(CHILD, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{}",
        stdout
            .lines()
            .find(|l| l.contains("refused: "))
            .unwrap_or("")
    );
    assert!(
        out.status.success() && stdout.contains("refused: "),
        "child: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generation_with_a_cache_on_the_stored_model_gives_the_full_forward_logits() {
    let m = model();
    let adapter = trainer_core::Adapter::load(&crate::common::peft_ref(), m).unwrap();
    let input = ids("input_ids");
    let full = m
        .logits(Some(&adapter), &input)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut g = m.generation(Some(&adapter)).unwrap();
    let prompt = input.len() - 3;
    let mut rows = vec![(prompt, g.feed(&input[..prompt]).unwrap())];
    for end in prompt + 1..=input.len() {
        rows.push((end, g.feed(&input[end - 1..end]).unwrap()));
    }
    for (end, got) in rows {
        let want = &full[end - 1];
        let d = got
            .iter()
            .zip(want)
            .fold(0f32, |d, (a, b)| d.max((a - b).abs()));
        // Logits reach ~30; the cached path sums attention in another order.
        assert!(d < 1e-4, "after {end} tokens: cached logits differ by {d}");
    }
}

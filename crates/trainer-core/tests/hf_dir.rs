//! HF directories (convert round trip), merging, adapter save/load strictness, rsLoRA scaling, perplexity.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use trainer_core::{Adapter, BaseWeights, LoadOptions, Model, ModelConfig, SaveDType};

use crate::common::{ids, max_abs_diff, model, peft_ref};

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("trainer-core-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn converted_hf_dir_gives_the_same_logits_and_tokens_as_the_gguf() {
    let m = model();
    let dir = tmp("convert");
    m.save_hf_dir(&dir).unwrap();
    let hf = Model::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(hf.config(), m.config());
    assert_eq!(hf.special_tokens(), m.special_tokens());
    assert_eq!(hf.chat_template(), m.chat_template());
    let input = ids("input_ids");
    // The converted folder holds the GGUF's weights expanded to f32: the GGUF expanded when loading runs the same
    // arithmetic on the same values. The GGUF kept as stored multiplies panel by panel, summing in another
    // order: within 1e-6 of the logits' scale (they reach ~30).
    let expanded = Model::load_with(
        m.source(),
        &Device::Cpu,
        &LoadOptions {
            base_weights: BaseWeights::F32,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let hf_logits = hf.logits(None, &input).unwrap();
    let d = max_abs_diff(&hf_logits, &expanded.logits(None, &input).unwrap());
    assert!(d < 1e-5, "GGUF (f32) and converted HF dir differ by {d}");
    let scale = hf_logits
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_abs_diff(&hf_logits, &m.logits(None, &input).unwrap());
    assert!(
        d < 1e-6 * scale,
        "GGUF (kept) and converted HF dir differ by {d} (logits up to {scale})"
    );
    let text = "In the beginning God created the heaven and the earth. 1234 <|im_end|>";
    assert_eq!(
        hf.tokenizer().encode(text, false).unwrap().get_ids(),
        m.tokenizer().encode(text, false).unwrap().get_ids()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn merged_weights_equal_base_plus_adapter_and_save_load_round_trips() {
    let m = model();
    let adapter = Adapter::load(&peft_ref(), m).unwrap();
    let input = ids("input_ids");
    let with = m.logits(Some(&adapter), &input).unwrap();
    let merged = m.merge(&adapter).unwrap();
    let d = max_abs_diff(&merged.logits(None, &input).unwrap(), &with);
    // W + s·B·A rounds differently from W·x + s·B·(A·x); logits are O(10), so allow f32 noise.
    eprintln!("merged vs base + adapter: max abs diff {d:e}");
    assert!(d < 5e-4, "merged differs from base + adapter by {d}");

    let dir = tmp("adapter-rt");
    adapter.save(&dir, "SmolLM2-135M-Instruct").unwrap();
    let text = std::fs::read_to_string(dir.join(trainer_core::ADAPTER_CONFIG_FILE)).unwrap();
    assert!(text.contains("\"peft_type\": \"LORA\""));
    let back = Adapter::load(&dir, m).unwrap();
    assert_eq!(back.settings(), adapter.settings());
    let d = max_abs_diff(&m.logits(Some(&back), &input).unwrap(), &with);
    assert_eq!(d, 0.0, "save -> load changed the logits");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn streamed_merge_of_the_quantized_model_equals_the_in_memory_merge_and_writes_bf16() {
    let m = model();
    let adapter = Adapter::load(&peft_ref(), m).unwrap();
    let input = ids("input_ids");
    let with = m.logits(Some(&adapter), &input).unwrap();
    // f32: the streamed merge (one module expanded at a time, B·A added row block by row block) writes the bytes
    // of the merged model held in memory.
    let streamed = tmp("merge-streamed");
    m.save_hf_dir_as(&streamed, Some(&adapter), SaveDType::F32)
        .unwrap();
    let whole = tmp("merge-whole");
    m.merge(&adapter).unwrap().save_hf_dir(&whole).unwrap();
    let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    let f32_bytes = read(&streamed);
    assert!(
        f32_bytes == read(&whole),
        "streamed and in-memory merges differ"
    );
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(
            std::fs::read(streamed.join(f)).unwrap(),
            std::fs::read(whole.join(f)).unwrap(),
            "{f}"
        );
    }
    // bf16, the default for a quantized base: half the bytes, kept as BF16 when loaded, logits within bf16's
    // rounding of the weights (2^-9 relative) of base + adapter.
    assert_eq!(m.native_dtype(), SaveDType::Bf16);
    let bf16 = tmp("merge-bf16");
    m.save_hf_dir_as(&bf16, Some(&adapter), SaveDType::Bf16)
        .unwrap();
    let bf16_bytes = read(&bf16);
    assert!(
        bf16_bytes.len() < f32_bytes.len() / 2 + (64 << 10),
        "{} vs {}",
        bf16_bytes.len(),
        f32_bytes.len()
    );
    let back = Model::load(&bf16, &Device::Cpu).unwrap();
    assert!(
        back.weight_types().iter().all(|(t, _)| t == "BF16"),
        "{:?}",
        back.weight_types()
    );
    let config = std::fs::read_to_string(bf16.join("config.json")).unwrap();
    assert!(config.contains("\"torch_dtype\": \"bfloat16\""), "{config}");
    let d = max_abs_diff(&back.logits(None, &input).unwrap(), &with);
    eprintln!("bf16 merge vs base + adapter: max abs diff {d:e}");
    assert!(
        d > 1e-4 && d < 0.5,
        "bf16 merge differs from base + adapter by {d}"
    );
    for d in [streamed, whole, bf16] {
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// Rewrites the adapter tensors of a copy of the reference adapter with `edit`, then loads it.
fn load_edited(name: &str, edit: impl Fn(&mut HashMap<String, Tensor>)) -> trainer_core::Error {
    let dir = tmp(name);
    copy_dir(&peft_ref(), &dir);
    let file = dir.join(trainer_core::ADAPTER_WEIGHTS_FILE);
    let mut t = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, &file).unwrap();
    let err = Adapter::load(&dir, model()).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    err
}

#[test]
fn adapter_load_rejects_wrong_prefix_default_missing_and_bad_shapes() {
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let e = load_edited("prefix", |t| {
        let v = t.remove(key).unwrap();
        t.insert(key.trim_start_matches("base_model.model.").to_string(), v);
    });
    assert!(e.to_string().contains("base_model.model."), "{e}");
    let e = load_edited("default", |t| {
        let v = t.remove(key).unwrap();
        t.insert(key.replace("lora_A.weight", "lora_A.default.weight"), v);
    });
    assert!(e.to_string().contains(".default."), "{e}");
    let e = load_edited("missing", |t| {
        t.remove(key);
    });
    assert!(
        e.to_string().contains("missing") && e.to_string().contains("q_proj.lora_A"),
        "{e}"
    );
    let e = load_edited("shape", |t| {
        t.insert(
            key.to_string(),
            Tensor::zeros((4, 576), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(e.to_string().contains("shape"), "{e}");
    let e = load_edited("untargeted", |t| {
        t.insert(
            "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight".into(),
            Tensor::zeros((8, 576), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(e.to_string().contains("target_modules"), "{e}");
}

fn tiny_config() -> ModelConfig {
    ModelConfig {
        model_type: "qwen2".into(),
        vocab_size: 256,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        attention_bias: true,
    }
}

#[test]
fn rslora_scaling_matches_a_hand_merged_tiny_model() {
    let base = Model::random(tiny_config(), 3, &Device::Cpu).unwrap();
    let dir = tmp("rslora");
    let (model_dir, adapter_dir) = (dir.join("model"), dir.join("adapter"));
    base.save_hf_dir(&model_dir).unwrap();
    // A hand-written PEFT adapter: r = 4, alpha = 8, rsLoRA -> scale 8 / sqrt(4) = 4 (plain LoRA would be 2).
    std::fs::create_dir_all(&adapter_dir).unwrap();
    std::fs::write(
        adapter_dir.join("adapter_config.json"),
        r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["k_proj"],"task_type":"CAUSAL_LM","use_rslora":true}"#,
    )
    .unwrap();
    let dev = Device::Cpu;
    let a = Tensor::arange(0f32, 64., &dev)
        .unwrap()
        .reshape((4, 16))
        .unwrap()
        .affine(0.01, -0.3)
        .unwrap();
    let b = Tensor::arange(0f32, 32., &dev)
        .unwrap()
        .reshape((8, 4))
        .unwrap()
        .affine(-0.02, 0.25)
        .unwrap();
    let mut tensors = HashMap::new();
    for l in 0..2 {
        let p = format!("base_model.model.model.layers.{l}.self_attn.k_proj");
        tensors.insert(format!("{p}.lora_A.weight"), a.clone());
        tensors.insert(format!("{p}.lora_B.weight"), b.clone());
    }
    candle_core::safetensors::save(&tensors, adapter_dir.join("adapter_model.safetensors"))
        .unwrap();
    let adapter = Adapter::load(&adapter_dir, &base).unwrap();
    assert_eq!(adapter.scaling(), 4.0);
    // Hand merge: W_k += 4 * B @ A in the saved HF weights, then load that model.
    let wfile = model_dir.join("model.safetensors");
    let mut w = candle_core::safetensors::load(&wfile, &dev).unwrap();
    let delta = (b.matmul(&a).unwrap() * 4.0).unwrap();
    for l in 0..2 {
        let k = format!("model.layers.{l}.self_attn.k_proj.weight");
        let merged = (w[&k].clone() + &delta).unwrap();
        w.insert(k, merged);
    }
    candle_core::safetensors::save(&w, &wfile).unwrap();
    let hand = Model::load(&model_dir, &dev).unwrap();
    let input: Vec<u32> = b"rsLoRA scales by alpha over sqrt r"
        .iter()
        .map(|&c| u32::from(c))
        .collect();
    let want = hand.logits(None, &input).unwrap();
    let got = base.logits(Some(&adapter), &input).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(
        d < 1e-5,
        "adapter logits differ from the hand-merged model by {d}"
    );
    assert!(
        max_abs_diff(&got, &base.logits(None, &input).unwrap()) > 1e-3,
        "the adapter changed nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn perplexity_with_one_window_is_exp_mean_nll() {
    let m = Model::random(tiny_config(), 9, &Device::Cpu).unwrap();
    let input: Vec<u32> = b"perplexity over a sliding window"
        .iter()
        .map(|&c| u32::from(c))
        .collect();
    let logits = m.logits(None, &input).unwrap();
    let n = input.len();
    let lsm = candle_nn::ops::log_softmax(&logits.narrow(0, 0, n - 1).unwrap(), D::Minus1).unwrap();
    let targets = Tensor::new(&input[1..], &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let nll = lsm
        .gather(&targets, 1)
        .unwrap()
        .neg()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let ppl = m.perplexity(None, &input, 512, n).unwrap();
    assert!(
        (ppl.ln() - f64::from(nll)).abs() < 1e-4,
        "{} vs {nll}",
        ppl.ln()
    );
    // Strided windows: finite, and different from the single-window value.
    let strided = m.perplexity(None, &input, 8, 12).unwrap();
    assert!(strided.is_finite() && (strided - ppl).abs() > 1e-6);
    assert!(m.perplexity(None, &input, 0, 12).is_err());
}

#[test]
fn sharded_safetensors_with_index_load_like_a_single_file() {
    let m = Model::random(tiny_config(), 21, &Device::Cpu).unwrap();
    let dir = tmp("sharded");
    m.save_hf_dir(&dir).unwrap();
    let single = dir.join("model.safetensors");
    let all = candle_core::safetensors::load(&single, &Device::Cpu).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (k, v)) in all.into_iter().enumerate() {
        let (shard, name) = if i % 2 == 0 {
            (&mut a, "model-00001-of-00002.safetensors")
        } else {
            (&mut b, "model-00002-of-00002.safetensors")
        };
        shard.insert(
            k.clone(),
            v.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        );
        map.insert(k, serde_json::json!(name));
    }
    candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    std::fs::remove_file(&single).unwrap();
    let sharded = Model::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(sharded.config(), m.config());
    let input: Vec<u32> = b"shards".iter().map(|&c| u32::from(c)).collect();
    // The shards hold bf16-rounded weights, so compare against the rounded model loosely.
    let d = max_abs_diff(
        &sharded.logits(None, &input).unwrap(),
        &m.logits(None, &input).unwrap(),
    );
    assert!(d < 0.1, "sharded model differs by {d}");
    // A missing tensor names itself.
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    candle_core::safetensors::save(
        &HashMap::from([(
            "model.norm.weight".to_string(),
            Tensor::ones(16, DType::F32, &Device::Cpu).unwrap(),
        )]),
        dir.join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let e = Model::load(&dir, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("is missing"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

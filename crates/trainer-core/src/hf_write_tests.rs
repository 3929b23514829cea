//! The streamed writer against the in-memory path it replaced: `Model::merge`, every weight expanded to an f32
//! tensor, `safetensors::serialize` of the whole file.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device};

use super::*;
use crate::test_models::{adapter, packed_f16, tiny};

/// The previous writer: every weight under its HF name expanded to f32, converted with candle, serialized whole.
fn in_memory(m: &Model, dtype: SaveDType) -> Vec<u8> {
    let w = &m.weights;
    let dev = &Device::Cpu;
    let mut t = BTreeMap::new();
    t.insert(
        "model.embed_tokens.weight".to_string(),
        w.embed.to_tensor(dev).unwrap(),
    );
    t.insert("model.norm.weight".to_string(), w.norm.clone());
    if let Some(h) = &w.lm_head {
        t.insert("lm_head.weight".to_string(), h.to_tensor(dev).unwrap());
    }
    for (l, layer) in w.layers.iter().enumerate() {
        for (i, x) in layer.linears.iter().enumerate() {
            t.insert(
                format!("{}.weight", module_path(l, i)),
                x.to_tensor(dev).unwrap(),
            );
        }
        t.insert(
            format!("model.layers.{l}.input_layernorm.weight"),
            layer.input_norm.clone(),
        );
        t.insert(
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            layer.post_norm.clone(),
        );
    }
    let (cdt, sdt) = match dtype {
        SaveDType::F32 => (DType::F32, safetensors::Dtype::F32),
        SaveDType::Bf16 => (DType::BF16, safetensors::Dtype::BF16),
        SaveDType::F16 => (DType::F16, safetensors::Dtype::F16),
    };
    let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = t
        .iter()
        .map(|(k, v)| {
            let v = v.to_dtype(cdt).unwrap().flatten_all().unwrap();
            let bytes = match dtype {
                SaveDType::F32 => v
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
                SaveDType::Bf16 => v
                    .to_vec1::<half::bf16>()
                    .unwrap()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
                SaveDType::F16 => v
                    .to_vec1::<half::f16>()
                    .unwrap()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            };
            (k.clone(), t[k].dims().to_vec(), bytes)
        })
        .collect();
    let views = bufs.iter().map(|(k, s, b)| {
        (
            k.clone(),
            safetensors::tensor::TensorView::new(sdt, s.clone(), b).unwrap(),
        )
    });
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).unwrap()
}

fn streamed(m: &Model, adapter: Option<&Adapter>, dtype: SaveDType, name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(name);
    m.save_hf_dir_as(&out, adapter, dtype).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], dtype.torch_name());
    std::fs::read(out.join("model.safetensors")).unwrap()
}

#[test]
fn streamed_files_equal_the_in_memory_merge_byte_for_byte() {
    let base = tiny();
    let f16 = packed_f16(&base);
    assert_eq!(base.native_dtype(), SaveDType::F32);
    assert_eq!(f16.native_dtype(), SaveDType::F16);
    for (what, m) in [("f32", &base), ("f16 packed", &f16)] {
        for save_embed in [false, true] {
            let a = adapter(m, save_embed);
            let merged = m.merge(&a).unwrap();
            for dtype in [SaveDType::F32, SaveDType::Bf16, SaveDType::F16] {
                let got = streamed(m, Some(&a), dtype, "merged");
                let want = in_memory(&merged, dtype);
                assert!(
                    got == want,
                    "{what}, embed saved {save_embed}, {dtype:?}: streamed file differs at byte {:?} ({} vs {} bytes)",
                    got.iter().zip(&want).position(|(a, b)| a != b),
                    got.len(),
                    want.len()
                );
            }
            // Without an adapter: the plain conversion.
            assert!(
                streamed(m, None, SaveDType::F32, "plain") == in_memory(m, SaveDType::F32),
                "{what}"
            );
        }
    }
}

#[test]
fn a_trained_embedding_unties_the_head_and_the_folder_loads_with_the_merged_logits() {
    let m = tiny();
    assert!(m.config().tie_word_embeddings);
    let a = adapter(&m, true);
    let dir = tempfile::tempdir().unwrap();
    m.save_hf_dir_as(dir.path(), Some(&a), SaveDType::F32)
        .unwrap();
    let back = Model::load(dir.path(), &Device::Cpu).unwrap();
    assert!(!back.config().tie_word_embeddings);
    let ids = [1u32, 7, 42, 200, 3];
    let want = m.logits(Some(&a), &ids).unwrap();
    let got = back.logits(None, &ids).unwrap();
    let d = (want - got)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-4, "merged folder differs from base + adapter by {d}");
}

#[test]
fn output_types_parse_and_others_are_refused() {
    for t in [SaveDType::F32, SaveDType::Bf16, SaveDType::F16] {
        assert_eq!(t.name().parse::<SaveDType>().unwrap(), t);
    }
    let e = "f64".parse::<SaveDType>().unwrap_err().to_string();
    assert!(e.contains("f64") && e.contains("bf16"), "{e}");
}

//! Hugging Face model directories: load (`config.json`, single or sharded safetensors, tokenizer) and write.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::config::ModelConfig;
use crate::decoder::{Layer, Weights};
use crate::error::{Error, Result};
use crate::lora::module_path;
use crate::matrix::Matrix;
use crate::model::Parts;
use crate::{io, tokenizer};

/// Reads a Hugging Face model directory.
pub(crate) fn load(dir: &Path, device: &Device) -> Result<Parts> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let config = ModelConfig::from_hf_json(&text, &cfg_path)?;
    let raw: Value =
        serde_json::from_str(&text).map_err(|e| Error::model(&cfg_path, e.to_string()))?;
    let (tok, special, template) = tokenizer::from_hf_dir(dir, &raw)?;

    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    if single.is_file() {
        tensors = io::load_safetensors(&single, device)?;
    } else if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::model(&index, "field `weight_map` is missing"))?;
        let shards: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        for shard in shards {
            tensors.extend(io::load_safetensors(&dir.join(shard), device)?);
        }
    } else {
        return Err(Error::model(
            dir,
            "no model.safetensors or model.safetensors.index.json (only safetensors weights are supported)",
        ));
    }
    let file = if single.is_file() { single } else { index };
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let t = tensors
            .remove(name)
            .ok_or_else(|| Error::model(&file, format!("tensor `{name}` is missing")))?;
        if t.dims() != shape {
            return Err(Error::model(
                &file,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                ),
            ));
        }
        Ok(t)
    };
    let c = &config;
    let (h, q_out, kv_out, i) = (
        c.hidden_size,
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
        c.intermediate_size,
    );
    let shapes: [[usize; 2]; 7] = [
        [q_out, h],
        [kv_out, h],
        [kv_out, h],
        [h, q_out],
        [i, h],
        [i, h],
        [h, i],
    ];
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for l in 0..c.num_hidden_layers {
        let mut lin = Vec::with_capacity(7);
        for (m, shape) in shapes.iter().enumerate() {
            lin.push(Matrix::dense(take(
                &format!("{}.weight", module_path(l, m)),
                shape,
            )?)?);
        }
        let qkv_bias = if c.attention_bias {
            Some([
                take(&format!("{}.bias", module_path(l, 0)), &[q_out])?,
                take(&format!("{}.bias", module_path(l, 1)), &[kv_out])?,
                take(&format!("{}.bias", module_path(l, 2)), &[kv_out])?,
            ])
        } else {
            None
        };
        let linears: [Matrix; 7] = lin.try_into().map_err(|_| {
            Error::model(&file, format!("layer {l}: wrong number of linear weights"))
        })?;
        layers.push(Layer {
            input_norm: take(&format!("model.layers.{l}.input_layernorm.weight"), &[h])?,
            linears,
            qkv_bias,
            post_norm: take(
                &format!("model.layers.{l}.post_attention_layernorm.weight"),
                &[h],
            )?,
        });
    }
    let embed = Matrix::dense(take("model.embed_tokens.weight", &[c.vocab_size, h])?)?;
    let lm_head = if c.tie_word_embeddings {
        None
    } else {
        Some(Matrix::dense(take("lm_head.weight", &[c.vocab_size, h])?)?)
    };
    let weights = Weights {
        embed,
        layers,
        norm: take("model.norm.weight", &[h])?,
        lm_head,
        rope_freq_factors: None,
    };
    Ok(Parts {
        config,
        weights,
        tokenizer: tok,
        special,
        chat_template: template,
    })
}

/// The weights under their HF names (`model.layers.0.self_attn.q_proj.weight`, ...), expanded to f32.
pub(crate) fn named_weights(w: &Weights, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    out.insert(
        "model.embed_tokens.weight".to_string(),
        w.embed.to_tensor(device)?,
    );
    out.insert("model.norm.weight".to_string(), w.norm.clone());
    if let Some(h) = &w.lm_head {
        out.insert("lm_head.weight".to_string(), h.to_tensor(device)?);
    }
    for (l, layer) in w.layers.iter().enumerate() {
        for (m, t) in layer.linears.iter().enumerate() {
            out.insert(
                format!("{}.weight", module_path(l, m)),
                t.to_tensor(device)?,
            );
        }
        if let Some(b) = &layer.qkv_bias {
            for (m, t) in b.iter().enumerate() {
                out.insert(format!("{}.bias", module_path(l, m)), t.clone());
            }
        }
        out.insert(
            format!("model.layers.{l}.input_layernorm.weight"),
            layer.input_norm.clone(),
        );
        out.insert(
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            layer.post_norm.clone(),
        );
    }
    Ok(out)
}

//! Hugging Face model directories: load (`config.json`, single or sharded safetensors, tokenizer) and write.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::config::ModelConfig;
use crate::decoder::{Layer, Weights};
use crate::error::{Error, Result};
use crate::load::{self, LoadOptions};
use crate::lora::module_path;
use crate::matrix::Matrix;
use crate::model::Parts;
use crate::safetensors_file::SafetensorsFile;
use crate::tokenizer;

/// Reads a Hugging Face model directory.
pub(crate) fn load(dir: &Path, device: &Device, opts: &LoadOptions) -> Result<Parts> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let config = ModelConfig::from_hf_json(&text, &cfg_path)?;
    let raw: Value =
        serde_json::from_str(&text).map_err(|e| Error::model(&cfg_path, e.to_string()))?;
    let (tok, special, template) = tokenizer::from_hf_dir(dir, &raw)?;

    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<SafetensorsFile> = if single.is_file() {
        vec![SafetensorsFile::open(&single)?]
    } else if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::model(&index, "field `weight_map` is missing"))?;
        let shards: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        shards
            .into_iter()
            .map(|shard| SafetensorsFile::open(&dir.join(shard)))
            .collect::<Result<_>>()?
    } else {
        return Err(Error::model(
            dir,
            "no model.safetensors or model.safetensors.index.json (only safetensors weights are supported)",
        ));
    };
    let file = if single.is_file() { single } else { index };
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        for name in f.tensors.keys() {
            at.insert(name, i);
        }
    }
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
    // (name, shape, is a matrix) of every tensor the model needs.
    let mut wanted: Vec<(String, Vec<usize>, bool)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![c.vocab_size, h],
            true,
        ),
        ("model.norm.weight".into(), vec![h], false),
    ];
    if !c.tie_word_embeddings {
        wanted.push(("lm_head.weight".into(), vec![c.vocab_size, h], true));
    }
    for l in 0..c.num_hidden_layers {
        for (m, shape) in shapes.iter().enumerate() {
            wanted.push((
                format!("{}.weight", module_path(l, m)),
                shape.to_vec(),
                true,
            ));
        }
        if c.attention_bias {
            for (m, n) in [q_out, kv_out, kv_out].into_iter().enumerate() {
                wanted.push((format!("{}.bias", module_path(l, m)), vec![n], false));
            }
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            wanted.push((format!("model.layers.{l}.{norm}.weight"), vec![h], false));
        }
    }
    let keep = opts.keep();
    let mut needed = 0u64;
    let mut largest = 0u64;
    for (name, shape, is_matrix) in &wanted {
        let f = at
            .get(name.as_str())
            .map(|&i| &files[i])
            .ok_or_else(|| Error::model(&file, format!("tensor `{name}` is missing")))?;
        let t = &f.tensors[name];
        if &t.shape != shape {
            return Err(Error::model(
                &file,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.shape
                ),
            ));
        }
        let n: usize = shape.iter().product();
        needed += match (t.stored(), is_matrix) {
            (Some(s), true) => s.resident(shape[0], shape[1], keep),
            _ => (n * 4) as u64,
        };
        largest = largest.max(t.end - t.start + (n * 4) as u64);
    }
    opts.check_memory(dir, needed + largest)?;

    let mut matrices: HashMap<String, Matrix> = HashMap::new();
    let mut vectors: HashMap<String, Tensor> = HashMap::new();
    for (name, shape, is_matrix) in &wanted {
        let f = &files[at[name.as_str()]];
        let t = &f.tensors[name];
        let err = |e: Error| Error::model(&f.path, format!("tensor `{name}`: {e}"));
        match (t.stored(), is_matrix) {
            (Some(s), true) => {
                let m =
                    load::matrix(s, shape[0], shape[1], f.read(t)?, keep, device).map_err(err)?;
                matrices.insert(name.clone(), m);
            }
            (_, true) => {
                let v = f.read_f32(name, t)?;
                let m = Matrix::dense(Tensor::from_vec(v, (shape[0], shape[1]), device)?)?;
                matrices.insert(name.clone(), m);
            }
            (_, false) => {
                let v = f.read_f32(name, t)?;
                vectors.insert(name.clone(), Tensor::from_vec(v, shape[0], device)?);
            }
        }
    }
    drop(files);
    let missing = |n: &str| Error::model(&file, format!("tensor `{n}` is missing"));
    let mut mat = |n: String| matrices.remove(&n).ok_or_else(|| missing(&n));
    let mut vec = |n: String| vectors.remove(&n).ok_or_else(|| missing(&n));
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for l in 0..c.num_hidden_layers {
        let lin = |m: usize| format!("{}.weight", module_path(l, m));
        let qkv_bias = if c.attention_bias {
            let b = |m: usize| format!("{}.bias", module_path(l, m));
            Some([vec(b(0))?, vec(b(1))?, vec(b(2))?])
        } else {
            None
        };
        layers.push(Layer {
            input_norm: vec(format!("model.layers.{l}.input_layernorm.weight"))?,
            linears: [
                mat(lin(0))?,
                mat(lin(1))?,
                mat(lin(2))?,
                mat(lin(3))?,
                mat(lin(4))?,
                mat(lin(5))?,
                mat(lin(6))?,
            ],
            qkv_bias,
            post_norm: vec(format!("model.layers.{l}.post_attention_layernorm.weight"))?,
        });
    }
    let weights = Weights {
        embed: mat("model.embed_tokens.weight".into())?,
        layers,
        norm: vec("model.norm.weight".into())?,
        lm_head: if c.tie_word_embeddings {
            None
        } else {
            Some(mat("lm_head.weight".into())?)
        },
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

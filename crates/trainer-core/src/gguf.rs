//! Loading a GGUF model (one file, or the first part of a split model): metadata -> config, tokenizer, and the
//! weights in HF layout (llama.cpp's q/k row order undone by moving whole rows), kept as stored or expanded to
//! f32 (`LoadOptions`), after checking that the process has the memory for them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Tensor};

use crate::config::{ModelConfig, SUPPORTED_TYPES};
use crate::decoder::{Layer, Weights};
use crate::error::{Error, Result};
use crate::ggml_type::SUPPORTED;
use crate::gguf_file::{GgufModel, TensorInfo};
use crate::load::{self, LoadOptions, Stored};
use crate::matrix::Matrix;
use crate::model::Parts;
use crate::tokenizer::{self, md_u64};

fn md_f64(md: &HashMap<String, Value>, key: &str) -> Option<f64> {
    match md.get(key)? {
        Value::F32(v) => Some(f64::from(*v)),
        Value::F64(v) => Some(*v),
        _ => md_u64(md, key).map(|v| v as f64),
    }
}

/// The model configuration from the `{arch}.*` metadata and the tensor table.
fn config(g: &GgufModel, path: &Path) -> Result<ModelConfig> {
    let md = &g.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| Error::model(path, "metadata key `general.architecture` is missing"))?;
    if !SUPPORTED_TYPES.contains(&arch.as_str()) {
        return Err(Error::model(
            path,
            format!(
                "architecture `{arch}` is not supported; supported: {}",
                SUPPORTED_TYPES.join(", ")
            ),
        ));
    }
    let need = |key: &str| -> Result<usize> {
        let full = format!("{arch}.{key}");
        md_u64(md, &full).map(|v| v as usize).ok_or_else(|| {
            Error::model(
                path,
                format!("metadata key `{full}` is missing or not an integer"),
            )
        })
    };
    let hidden_size = need("embedding_length")?;
    let num_attention_heads = need("attention.head_count")?;
    let num_key_value_heads = need("attention.head_count_kv").unwrap_or(num_attention_heads);
    let head_dim = need("attention.key_length").unwrap_or(hidden_size / num_attention_heads.max(1));
    let has = |name: &str| g.tensors.contains_key(name);
    let vocab_size = g
        .tensors
        .get("token_embd.weight")
        .and_then(|i| i.dims.first().copied())
        .ok_or_else(|| Error::model(path, "tensor `token_embd.weight` is missing"))?;
    let cfg = ModelConfig {
        model_type: arch.clone(),
        vocab_size,
        hidden_size,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: need("block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: md_f64(md, &format!("{arch}.attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5),
        rope_theta: md_f64(md, &format!("{arch}.rope.freq_base")).unwrap_or(10_000.0),
        rope_scaling: None,
        max_position_embeddings: need("context_length").unwrap_or(4096),
        tie_word_embeddings: !has("output.weight"),
        attention_bias: has("blk.0.attn_q.bias"),
    };
    cfg.validate(path)?;
    Ok(cfg)
}

/// What a tensor becomes.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// A frozen matrix (kept as stored with `keep`), with llama.cpp's row order to undo for that many heads.
    Matrix(Option<usize>),
    /// An f32 vector (norm, bias), with the row order to undo.
    Vector(Option<usize>),
}

/// A tensor the model needs: its name, expected dimensions and role.
struct Want {
    name: String,
    dims: Vec<usize>,
    role: Role,
}

fn wants(cfg: &ModelConfig, permuted: bool) -> Vec<Want> {
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    let q_out = cfg.num_attention_heads.saturating_mul(cfg.head_dim);
    let kv_out = cfg.num_key_value_heads.saturating_mul(cfg.head_dim);
    let heads = |n: usize| permuted.then_some(n);
    let (qh, kh) = (
        heads(cfg.num_attention_heads),
        heads(cfg.num_key_value_heads),
    );
    let mut out = Vec::new();
    let mut w = |name: String, dims: Vec<usize>, role: Role| out.push(Want { name, dims, role });
    w(
        "token_embd.weight".into(),
        vec![cfg.vocab_size, h],
        Role::Matrix(None),
    );
    w("output_norm.weight".into(), vec![h], Role::Vector(None));
    if !cfg.tie_word_embeddings {
        w(
            "output.weight".into(),
            vec![cfg.vocab_size, h],
            Role::Matrix(None),
        );
    }
    for i in 0..cfg.num_hidden_layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        w(p("attn_norm.weight"), vec![h], Role::Vector(None));
        w(p("attn_q.weight"), vec![q_out, h], Role::Matrix(qh));
        w(p("attn_k.weight"), vec![kv_out, h], Role::Matrix(kh));
        w(p("attn_v.weight"), vec![kv_out, h], Role::Matrix(None));
        w(p("attn_output.weight"), vec![h, q_out], Role::Matrix(None));
        w(p("ffn_gate.weight"), vec![inter, h], Role::Matrix(None));
        w(p("ffn_up.weight"), vec![inter, h], Role::Matrix(None));
        w(p("ffn_down.weight"), vec![h, inter], Role::Matrix(None));
        w(p("ffn_norm.weight"), vec![h], Role::Vector(None));
        if cfg.attention_bias {
            w(p("attn_q.bias"), vec![q_out], Role::Vector(qh));
            w(p("attn_k.bias"), vec![kv_out], Role::Vector(kh));
            w(p("attn_v.bias"), vec![kv_out], Role::Vector(None));
        }
    }
    out
}

/// The tensor a want names, checked: present, of the expected shape, of a type this crate reads.
fn find<'a>(g: &'a GgufModel, path: &Path, w: &Want) -> Result<(&'a TensorInfo, Stored, u64)> {
    let t = g
        .tensors
        .get(&w.name)
        .ok_or_else(|| Error::model(path, format!("tensor `{}` is missing", w.name)))?;
    if t.dims != w.dims {
        return Err(Error::model(
            path,
            format!(
                "tensor `{}` has shape {:?}, expected {:?} from the metadata",
                w.name, t.dims, w.dims
            ),
        ));
    }
    let stored = if t.ty.is_f32() {
        Stored::F32
    } else {
        Stored::Packed(t.ty.packed().ok_or_else(|| {
            load::unsupported(g.path_of(t), &w.name, &t.ty.name(), &SUPPORTED.join(" "))
        })?)
    };
    let bytes = t.bytes.ok_or_else(|| {
        load::unsupported(g.path_of(t), &w.name, &t.ty.name(), &SUPPORTED.join(" "))
    })?;
    Ok((t, stored, bytes))
}

/// Reads a GGUF model.
pub(crate) fn load(path: &Path, device: &Device, opts: &LoadOptions) -> Result<Parts> {
    let g = GgufModel::open(path)?;
    let cfg = config(&g, path)?;
    let (tok, special, template) = tokenizer::from_gguf(&g.metadata, path)?;
    // llama.cpp permutes q/k rows for llama-arch models (interleaved RoPE); undo it to get the HF layout.
    let permuted = cfg.model_type != "qwen2";
    let mut wanted = wants(&cfg, permuted);
    if g.tensors.contains_key("rope_freqs.weight") {
        let name = "rope_freqs.weight".to_string();
        wanted.push(Want {
            name,
            dims: vec![cfg.head_dim / 2],
            role: Role::Vector(None),
        });
    }
    // Check every tensor and the memory before reading any data.
    let keep = opts.keep();
    let mut needed = 0u64;
    let mut largest = 0u64;
    for w in &wanted {
        let (_, stored, bytes) = find(&g, path, w)?;
        let (rows, cols) = (w.dims[0], w.dims.get(1).copied().unwrap_or(1));
        needed += match w.role {
            Role::Matrix(_) => stored.resident(rows, cols, keep),
            Role::Vector(_) => (rows * 4) as u64,
        };
        largest = largest.max(bytes + (rows * cols * 4) as u64);
    }
    opts.check_memory(path, needed + largest)?;

    let mut matrices: HashMap<String, Matrix> = HashMap::new();
    let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
    for w in &wanted {
        let (t, stored, bytes) = find(&g, path, w)?;
        let mut data = vec![0u8; bytes as usize];
        g.read(t, &mut data)?;
        let (rows, cols) = (w.dims[0], w.dims.get(1).copied().unwrap_or(1));
        let err = |e: Error| Error::model(g.path_of(t), format!("tensor `{}`: {e}", w.name));
        match w.role {
            Role::Matrix(heads) => {
                if let Some(h) = heads {
                    data = load::move_rows(
                        &data,
                        stored.row_bytes(cols),
                        &load::unpermute_order(rows, h),
                    );
                }
                let m = load::matrix(stored, rows, cols, data, keep, device).map_err(err)?;
                matrices.insert(w.name.clone(), m);
            }
            Role::Vector(heads) => {
                let mut v = load::expand(stored, &data, rows).map_err(err)?;
                if let Some(h) = heads {
                    v = load::unpermute_order(rows, h)
                        .iter()
                        .map(|&r| v[r])
                        .collect();
                }
                vectors.insert(w.name.clone(), v);
            }
        }
    }
    let rope_freq_factors = vectors
        .remove("rope_freqs.weight")
        .map(|v| v.into_iter().map(f64::from).collect());
    let missing = |n: &str| Error::model(path, format!("tensor `{n}` is missing"));
    let mut mat = |n: String| matrices.remove(&n).ok_or_else(|| missing(&n));
    let mut vec = |n: String| -> Result<Tensor> {
        let v = vectors.remove(&n).ok_or_else(|| missing(&n))?;
        let len = v.len();
        Ok(Tensor::from_vec(v, len, device)?)
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        let qkv_bias = if cfg.attention_bias {
            Some([
                vec(p("attn_q.bias"))?,
                vec(p("attn_k.bias"))?,
                vec(p("attn_v.bias"))?,
            ])
        } else {
            None
        };
        layers.push(Layer {
            input_norm: vec(p("attn_norm.weight"))?,
            linears: [
                mat(p("attn_q.weight"))?,
                mat(p("attn_k.weight"))?,
                mat(p("attn_v.weight"))?,
                mat(p("attn_output.weight"))?,
                mat(p("ffn_gate.weight"))?,
                mat(p("ffn_up.weight"))?,
                mat(p("ffn_down.weight"))?,
            ],
            qkv_bias,
            post_norm: vec(p("ffn_norm.weight"))?,
        });
    }
    let weights = Weights {
        embed: mat("token_embd.weight".into())?,
        norm: vec("output_norm.weight".into())?,
        lm_head: if cfg.tie_word_embeddings {
            None
        } else {
            Some(mat("output.weight".into())?)
        },
        layers,
        rope_freq_factors,
    };
    Ok(Parts {
        config: cfg,
        weights,
        tokenizer: tok,
        special,
        chat_template: template,
    })
}

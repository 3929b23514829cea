//! Loading a GGUF file: metadata -> config, tensors dequantized to f32 in HF layout (q/k un-permuted), tokenizer.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Tensor};

use crate::config::{ModelConfig, SUPPORTED_TYPES};
use crate::decoder::{Layer, Weights};
use crate::error::{Error, Result};
use crate::model::Parts;
use crate::tokenizer::{self, md_u64};

fn md_f64(md: &HashMap<String, Value>, key: &str) -> Option<f64> {
    match md.get(key)? {
        Value::F32(v) => Some(f64::from(*v)),
        Value::F64(v) => Some(*v),
        _ => md_u64(md, key).map(|v| v as f64),
    }
}

/// Reads a GGUF model file.
pub(crate) fn load(path: &Path, device: &Device) -> Result<Parts> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    // Every count the header declares is checked before it sizes anything (gguf_limits.rs).
    let ct = crate::gguf_limits::read_content(&mut reader, path)?;
    let md = &ct.metadata;
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
    let (tok, special, template) = tokenizer::from_gguf(md, path)?;
    let hidden_size = need("embedding_length")?;
    let num_attention_heads = need("attention.head_count")?;
    let num_key_value_heads = need("attention.head_count_kv").unwrap_or(num_attention_heads);
    let head_dim = need("attention.key_length").unwrap_or(hidden_size / num_attention_heads.max(1));
    let has = |name: &str| ct.tensor_infos.contains_key(name);
    let vocab_size = ct
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|i| i.shape.dims().first().copied())
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

    // Every tensor is checked against the configuration (as the Hugging Face loader does), so a
    // file whose metadata and tensors disagree is refused here, not in the first forward pass.
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    let q_out = cfg.num_attention_heads.saturating_mul(cfg.head_dim);
    let kv_out = cfg.num_key_value_heads.saturating_mul(cfg.head_dim);
    let mut get = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let q = ct
            .tensor(&mut reader, name, device)
            .map_err(|e| Error::model(path, format!("tensor `{name}`: {e}")))?;
        let t = q
            .dequantize(device)
            .map_err(|e| Error::model(path, format!("tensor `{name}`: cannot dequantize: {e}")))?;
        if t.dims() != shape {
            return Err(Error::model(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?} from the metadata",
                    t.dims()
                ),
            ));
        }
        Ok(t)
    };
    // llama.cpp permutes q/k rows for llama-arch models (interleaved RoPE); undo it to get the HF layout.
    let permuted = arch != "qwen2";
    let unpermute = |w: Tensor, heads: usize| -> Result<Tensor> {
        if !permuted {
            return Ok(w);
        }
        let (out, inp) = w.dims2()?;
        Ok(w.reshape((heads, out / heads / 2, 2, inp))?
            .transpose(1, 2)?
            .reshape((out, inp))?
            .contiguous()?)
    };
    let unpermute_bias = |b: Tensor, heads: usize| -> Result<Tensor> {
        if !permuted {
            return Ok(b);
        }
        let out = b.dims1()?;
        Ok(b.reshape((heads, out / heads / 2, 2))?
            .transpose(1, 2)?
            .reshape(out)?
            .contiguous()?)
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        let q = unpermute(
            get(&p("attn_q.weight"), &[q_out, h])?,
            cfg.num_attention_heads,
        )?;
        let k = unpermute(
            get(&p("attn_k.weight"), &[kv_out, h])?,
            cfg.num_key_value_heads,
        )?;
        let qkv_bias = if cfg.attention_bias {
            Some([
                unpermute_bias(get(&p("attn_q.bias"), &[q_out])?, cfg.num_attention_heads)?,
                unpermute_bias(get(&p("attn_k.bias"), &[kv_out])?, cfg.num_key_value_heads)?,
                get(&p("attn_v.bias"), &[kv_out])?,
            ])
        } else {
            None
        };
        layers.push(Layer {
            input_norm: get(&p("attn_norm.weight"), &[h])?,
            linears: [
                q,
                k,
                get(&p("attn_v.weight"), &[kv_out, h])?,
                get(&p("attn_output.weight"), &[h, q_out])?,
                get(&p("ffn_gate.weight"), &[inter, h])?,
                get(&p("ffn_up.weight"), &[inter, h])?,
                get(&p("ffn_down.weight"), &[h, inter])?,
            ],
            qkv_bias,
            post_norm: get(&p("ffn_norm.weight"), &[h])?,
        });
    }
    let rope_freq_factors = if has("rope_freqs.weight") {
        Some(
            get("rope_freqs.weight", &[cfg.head_dim / 2])?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f64::from)
                .collect(),
        )
    } else {
        None
    };
    let weights = Weights {
        embed: get("token_embd.weight", &[cfg.vocab_size, h])?,
        norm: get("output_norm.weight", &[h])?,
        lm_head: if cfg.tie_word_embeddings {
            None
        } else {
            Some(get("output.weight", &[cfg.vocab_size, h])?)
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

//! Loading a GGUF file: metadata -> config, tensors dequantized to f32 in HF layout (q/k un-permuted), tokenizer.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::config::{ModelConfig, SUPPORTED_TYPES};
use crate::decoder::{Layer, Weights};
use crate::error::{Error, Result};
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

/// Reads a GGUF model file.
pub(crate) fn load(path: &Path, device: &Device) -> Result<Parts> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    check_alignment(&mut reader, path)?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let ct = Content::read(&mut reader).map_err(|e| {
        Error::model(
            path,
            format!("not a readable GGUF file (or it uses a tensor type candle cannot read): {e}"),
        )
    })?;
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
        let d = Matrix::dense;
        layers.push(Layer {
            input_norm: get(&p("attn_norm.weight"), &[h])?,
            linears: [
                d(q)?,
                d(k)?,
                d(get(&p("attn_v.weight"), &[kv_out, h])?)?,
                d(get(&p("attn_output.weight"), &[h, q_out])?)?,
                d(get(&p("ffn_gate.weight"), &[inter, h])?)?,
                d(get(&p("ffn_up.weight"), &[inter, h])?)?,
                d(get(&p("ffn_down.weight"), &[h, inter])?)?,
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
        embed: Matrix::dense(get("token_embd.weight", &[cfg.vocab_size, h])?)?,
        norm: get("output_norm.weight", &[h])?,
        lm_head: if cfg.tie_word_embeddings {
            None
        } else {
            Some(Matrix::dense(get("output.weight", &[cfg.vocab_size, h])?)?)
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

/// GGUF metadata value types (the GGUF specification's numbering).
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;

/// Refuses a GGUF file whose `general.alignment` is 0 before candle reads it: candle's reader
/// divides by that value. Walks the metadata the way the reader does; anything else that is
/// malformed (a short file, a bad type, a length past the end) is left to the reader, which
/// reports it as an error.
fn check_alignment(reader: &mut (impl Read + Seek), path: &Path) -> Result<()> {
    match find_alignment(reader) {
        Ok(Some(0)) => Err(Error::model(
            path,
            "metadata `general.alignment` is 0: the file is damaged (GGUF needs an alignment of at least 1)",
        )),
        _ => Ok(()),
    }
}

/// The integer value of `general.alignment` when the header holds one of a type candle uses.
fn find_alignment(r: &mut (impl Read + Seek)) -> std::io::Result<Option<u64>> {
    let size = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    let magic = read_u32(r)?;
    let version = read_u32(r)?;
    if magic != 0x4655_4747 || !(1..=3).contains(&version) {
        return Ok(None);
    }
    let wide = version >= 2;
    let _tensors = read_len(r, wide)?;
    let kvs = read_len(r, wide)?;
    for _ in 0..kvs {
        let key_len = read_len(r, wide)?;
        if key_len > size {
            return Ok(None);
        }
        let mut key = vec![0u8; key_len as usize];
        r.read_exact(&mut key)?;
        let ty = read_u32(r)?;
        if key == b"general.alignment" {
            let v = match ty {
                0 => u64::from(read_n::<1>(r)?[0]),
                1 => i8::from_le_bytes(read_n::<1>(r)?) as u64,
                2 => u64::from(u16::from_le_bytes(read_n::<2>(r)?)),
                3 => i16::from_le_bytes(read_n::<2>(r)?) as u64,
                4 => u64::from(read_u32(r)?),
                5 => i32::from_le_bytes(read_n::<4>(r)?) as u64,
                _ => return Ok(None),
            };
            return Ok(Some(v));
        }
        if !skip_value(r, ty, wide, size, 0)? {
            return Ok(None);
        }
    }
    Ok(None)
}

/// Skips one metadata value; false when it cannot be walked (left to candle's reader).
fn skip_value(
    r: &mut (impl Read + Seek),
    ty: u32,
    wide: bool,
    size: u64,
    depth: u32,
) -> std::io::Result<bool> {
    let fixed = match ty {
        0 | 1 | 7 => 1,
        2..=3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        GGUF_STRING => {
            let n = read_len(r, wide)?;
            return seek_by(r, n, size);
        }
        GGUF_ARRAY if depth < 4 => {
            let elem = read_u32(r)?;
            let n = read_len(r, wide)?;
            if n > size {
                return Ok(false);
            }
            for _ in 0..n {
                if !skip_value(r, elem, wide, size, depth + 1)? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        _ => return Ok(false),
    };
    seek_by(r, fixed, size)
}

fn seek_by(r: &mut (impl Read + Seek), n: u64, size: u64) -> std::io::Result<bool> {
    let pos = r.stream_position()?;
    match pos.checked_add(n) {
        Some(end) if end <= size => {
            r.seek(SeekFrom::Start(end))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn read_n<const N: usize>(r: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    Ok(u32::from_le_bytes(read_n::<4>(r)?))
}

fn read_len(r: &mut impl Read, wide: bool) -> std::io::Result<u64> {
    if wide {
        Ok(u64::from_le_bytes(read_n::<8>(r)?))
    } else {
        Ok(u64::from(read_u32(r)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file;

    fn gguf(md: &[(&str, &Value)]) -> std::io::Cursor<Vec<u8>> {
        let mut c = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut c, md, &[]).unwrap();
        c.set_position(0);
        c
    }

    #[test]
    fn a_zero_alignment_is_refused_before_candle_divides_by_it() {
        let arr = Value::Array(vec![Value::String("a b".into()), Value::String("c".into())]);
        let name = Value::String("x".into());
        for zero in [Value::U8(0), Value::U16(0), Value::U32(0), Value::I32(0)] {
            let mut f = gguf(&[
                ("general.name", &name),
                ("t", &arr),
                ("general.alignment", &zero),
            ]);
            let err = check_alignment(&mut f, Path::new("m.gguf")).unwrap_err();
            assert!(err.to_string().contains("general.alignment"), "{err}");
        }
        for fine in [Value::U32(32), Value::U64(0), Value::I32(-1)] {
            let mut f = gguf(&[("t", &arr), ("general.alignment", &fine)]);
            check_alignment(&mut f, Path::new("m.gguf")).unwrap();
            f.set_position(0);
            Content::read(&mut f).unwrap();
        }
        // Damaged headers are left to candle's reader.
        let mut short = std::io::Cursor::new(b"GGUF\x03\x00".to_vec());
        check_alignment(&mut short, Path::new("m.gguf")).unwrap();
    }
}

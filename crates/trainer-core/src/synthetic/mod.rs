//! Synthetic models for tests and benchmarks: real architectures and shapes with seeded random weights, written
//! as a GGUF file in any weight type this crate reads, or as a Hugging Face folder, so big-model behaviour is
//! tested without downloading a big model.
//!
//! ```no_run
//! use std::path::Path;
//! use trainer_core::synthetic::{write_gguf, Shape, Spec, WeightType};
//!
//! // All 32 layers of a Llama-2-7B-shaped model in Q4_K (about 3.9 GB).
//! let spec = Spec::new(Shape::Llama7b, WeightType::Q4_K).with_seed(1);
//! let written = write_gguf(Path::new("llama-7b-q4_k.gguf"), &spec)?;
//! assert!(written.fallbacks.is_empty());
//! # Ok::<(), trainer_core::Error>(())
//! ```
//!
//! What is written:
//! - weights: uniform in `±1/sqrt(in)` for the linear layers, `±4/sqrt(hidden)` for the embedding and an untied
//!   head (logits of a normalized state spread by about 2.3), `1 ± 0.1` for the RMSNorm weights, `±0.1` for
//!   q/k/v biases; each row from its own RNG stream, so a seed fixes the model whatever the output format;
//! - GGUF: the requested type for every matrix (as llama.cpp's `--pure`), norms and biases F32; a matrix whose rows
//!   do not fill whole blocks of that type falls back as llama.cpp's `llama_tensor_get_type` does (Q4_K -> Q5_0,
//!   Q5_K -> Q5_1, Q6_K -> Q8_0, then F16; Q2_K and Q3_K go to Q4_0 because llama.cpp's IQ4_NL cannot be read
//!   here), reported in [`Written::fallbacks`]; llama-arch q/k rows permuted as llama.cpp's converter does; the
//!   `{arch}.*` hyper-parameters; a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) with control tokens
//!   `<|endoftext|>` (pad, 0), `<|im_start|>` (BOS, 1) and `<|im_end|>` (EOS, 2), the 256 byte tokens and generated
//!   merges up to the vocabulary size, and a ChatML chat template;
//! - Hugging Face folder ([`write_hf_dir`]): `config.json`, `model.safetensors` in F32, F16 or BF16, and the same
//!   tokenizer as `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja`.
//!
//! Both are generated one tensor at a time, rows in parallel, and streamed to a temporary file renamed into place
//! when complete: memory stays at a few rows per thread whatever the model's size.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gguf_write::{self, TensorInfo, Value};
use crate::quant::{quantize, QuantType};

mod hf_dir;
mod spec;
mod tensors;
#[cfg(test)]
mod tests;
mod vocab;

pub use hf_dir::write_hf_dir;
pub use spec::{Shape, Spec, WeightType};

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The file (GGUF) or folder (Hugging Face).
    pub path: PathBuf,
    /// Bytes written (the GGUF file, or `model.safetensors`).
    pub bytes: u64,
    /// Number of tensors.
    pub tensors: usize,
    /// Number of weights.
    pub parameters: u64,
    /// Matrices stored in another type than requested (rows that do not fill its blocks), with the type used.
    pub fallbacks: Vec<(String, WeightType)>,
}

/// Writes a GGUF file of the model `spec` describes at `path` (atomically).
pub fn write_gguf(path: &Path, spec: &Spec) -> Result<Written> {
    write_gguf_observed(path, spec, |_, _, _| {})
}

/// [`write_gguf`], calling `on_tensor(done, total, name)` after each tensor is written.
pub fn write_gguf_observed(
    path: &Path,
    spec: &Spec,
    mut on_tensor: impl FnMut(usize, usize, &str),
) -> Result<Written> {
    spec.validate(path)?;
    let c = &spec.config;
    let list = tensors::tensors(c);
    let requested = spec.weight_type.quant();
    let types: Vec<QuantType> = list
        .iter()
        .map(|t| {
            if t.is_matrix() {
                tensors::storage_type(requested, t.cols())
            } else {
                QuantType::F32
            }
        })
        .collect();
    let infos: Vec<TensorInfo> = list
        .iter()
        .zip(&types)
        .map(|(t, ty)| TensorInfo::new(&t.gguf, *ty, &t.dims))
        .collect();
    let metadata = gguf_metadata(spec)?;
    let total = list.len();
    let layout = gguf_write::write(path, &metadata, &infos, |i, sink| {
        let t = &list[i];
        let ty = types[i];
        if t.is_matrix() {
            // Rows in parallel, a few MB at a time, in order.
            let cols = t.cols();
            let chunk_rows = ((4 << 20) / cols).max(1);
            for start in (0..t.rows()).step_by(chunk_rows) {
                let end = (start + chunk_rows).min(t.rows());
                let parts: Vec<Vec<u8>> = (start..end)
                    .into_par_iter()
                    .with_min_len(8)
                    .map_init(
                        || vec![0f32; cols],
                        |row, r| {
                            tensors::gguf_row(spec.seed, t, r, row);
                            let mut out = Vec::new();
                            quantize(ty, row, &mut out).map(|()| out)
                        },
                    )
                    .collect::<Result<_>>()?;
                for p in parts {
                    sink.write(&p)?;
                }
            }
        } else {
            let mut out = Vec::new();
            quantize(
                QuantType::F32,
                &tensors::gguf_vector(spec.seed, t),
                &mut out,
            )?;
            sink.write(&out)?;
        }
        on_tensor(i + 1, total, &t.gguf);
        Ok(())
    })?;
    Ok(Written {
        path: path.to_path_buf(),
        bytes: layout.file_bytes,
        tensors: list.len(),
        parameters: list.iter().map(|t| t.elements() as u64).sum(),
        fallbacks: list
            .iter()
            .zip(&types)
            .filter(|(t, ty)| t.is_matrix() && **ty != requested)
            .map(|(t, ty)| (t.gguf.clone(), WeightType::from_quant(*ty)))
            .collect(),
    })
}

/// llama.cpp's `general.file_type` (`enum llama_ftype`) of a file of this type (the `_S` mix for K-quants, the
/// closest to a uniform file).
fn file_type(t: QuantType) -> u32 {
    match t {
        QuantType::F32 => 0,
        QuantType::F16 => 1,
        QuantType::Q4_0 => 2,
        QuantType::Q4_1 => 3,
        QuantType::Q8_0 => 7,
        QuantType::Q5_0 => 8,
        QuantType::Q5_1 => 9,
        QuantType::Q2K => 10,
        QuantType::Q3K => 11,
        QuantType::Q4K => 14,
        QuantType::Q5K => 16,
        QuantType::Q6K => 18,
        QuantType::BF16 => 32,
    }
}

/// The header metadata: general keys, the `{arch}.*` hyper-parameters, the tokenizer.
fn gguf_metadata(spec: &Spec) -> Result<Vec<(String, Value)>> {
    let c = &spec.config;
    let arch = c.model_type.as_str();
    let u32_of = |field: &str, v: usize| {
        u32::try_from(v).map_err(|_| Error::input(field, format!("{v} does not fit GGUF's u32")))
    };
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(format!("synthetic {arch} (seed {})", spec.seed)),
        ),
        (
            "general.file_type".into(),
            Value::U32(file_type(spec.weight_type.quant())),
        ),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    let hp = [
        ("context_length", c.max_position_embeddings),
        ("embedding_length", c.hidden_size),
        ("block_count", c.num_hidden_layers),
        ("feed_forward_length", c.intermediate_size),
        ("attention.head_count", c.num_attention_heads),
        ("attention.head_count_kv", c.num_key_value_heads),
        ("attention.key_length", c.head_dim),
        ("attention.value_length", c.head_dim),
        ("rope.dimension_count", c.head_dim),
        ("vocab_size", c.vocab_size),
    ];
    for (key, v) in hp {
        md.push((format!("{arch}.{key}"), Value::U32(u32_of(key, v)?)));
    }
    md.push((
        format!("{arch}.rope.freq_base"),
        Value::F32(c.rope_theta as f32),
    ));
    md.push((
        format!("{arch}.attention.layer_norm_rms_epsilon"),
        Value::F32(c.rms_norm_eps as f32),
    ));
    md.extend(vocab::metadata(c.vocab_size)?);
    Ok(md)
}

//! A synthetic model as a Hugging Face folder: `config.json`, a streamed `model.safetensors` (F32, F16 or BF16)
//! and the tokenizer files.

use std::collections::HashMap;
use std::path::Path;

use candle_core::DType;
use half::{bf16, f16};
use rayon::prelude::*;
use serde_json::json;

use super::{tensors, vocab, Spec, Written};
use crate::error::{Error, Result};
use crate::io::AtomicFile;
use crate::{io, tokenizer};

/// Writes the model `spec` describes as a Hugging Face folder in `dir` (created if needed): `config.json`,
/// `model.safetensors` with every tensor in `dtype` (F32, F16 or BF16; `spec.weight_type` is not used), and the
/// tokenizer as `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja`. The same seed gives the
/// same model as [`write_gguf`](super::write_gguf) (exactly so in F32). Each file is written atomically.
pub fn write_hf_dir(dir: &Path, spec: &Spec, dtype: DType) -> Result<Written> {
    let (st_dtype, width) = match dtype {
        DType::F32 => ("F32", 4),
        DType::F16 => ("F16", 2),
        DType::BF16 => ("BF16", 2),
        other => {
            return Err(Error::input(
                "dtype",
                format!("{other:?}: safetensors weights are written in F32, F16 or BF16"),
            ))
        }
    };
    spec.validate(dir)?;
    io::ensure_dir(dir)?;
    let list = tensors::tensors(&spec.config);

    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut end = 0u64;
    for t in &list {
        let size = t.elements() as u64 * width;
        header.insert(
            t.hf.clone(),
            json!({"dtype": st_dtype, "shape": t.dims, "data_offsets": [end, end + size]}),
        );
        end += size;
    }
    let mut head =
        serde_json::to_vec(&header).map_err(|e| Error::input("header", e.to_string()))?;
    // The data starts 8-aligned (as the safetensors crate writes it); the header is padded with spaces.
    head.resize(head.len().next_multiple_of(8), b' ');
    let path = dir.join("model.safetensors");
    let mut file = AtomicFile::create(&path)?;
    file.write_all(&(head.len() as u64).to_le_bytes())?;
    file.write_all(&head)?;
    for t in &list {
        let cols = t.cols();
        let chunk_rows = ((4 << 20) / cols).max(1);
        for start in (0..t.rows()).step_by(chunk_rows) {
            let stop = (start + chunk_rows).min(t.rows());
            let parts: Vec<Vec<u8>> = (start..stop)
                .into_par_iter()
                .with_min_len(8)
                .map_init(
                    || vec![0f32; cols],
                    |row, r| {
                        tensors::fill_row(spec.seed, t, r, row);
                        encode(row, dtype)
                    },
                )
                .collect();
            for p in parts {
                file.write_all(&p)?;
            }
        }
    }
    file.commit()?;

    let mut config: serde_json::Value =
        serde_json::from_str(&spec.config.to_hf_json(Some(vocab::BOS), Some(vocab::EOS)))
            .map_err(|e| Error::input("config", e.to_string()))?;
    config["torch_dtype"] = json!(match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    });
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| Error::input("config", e.to_string()))?;
    io::write_atomic(&dir.join("config.json"), text.as_bytes())?;

    let md: HashMap<String, _> = vocab::metadata(spec.config.vocab_size)?
        .into_iter()
        .collect();
    let (tok, special, template) = tokenizer::from_gguf(&md, dir)?;
    tokenizer::write_hf_files(dir, &tok, &special, template.as_deref())?;
    Ok(Written {
        path: dir.to_path_buf(),
        bytes: 8 + head.len() as u64 + end,
        tensors: list.len(),
        parameters: list.iter().map(|t| t.elements() as u64).sum(),
        fallbacks: Vec::new(),
    })
}

/// Little-endian bytes of `row` in `dtype` (rounded to nearest even, as torch converts).
fn encode(row: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F16 => row
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::BF16 => row
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => row.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

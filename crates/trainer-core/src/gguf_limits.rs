//! What a GGUF file declares, checked before anything is sized from it.
//!
//! A GGUF header is a list of counts and lengths, each of which sizes an allocation in the reader or the loader.
//! The reader ([`crate::gguf_file`]) checks every length against the bytes left in the file before it allocates,
//! and counts here, as it reads, the memory the metadata and tensor table take once read ([`HeaderMemory`]: 32
//! bytes per metadata value plus every string, an entry per key and tensor): a file of 1 GB of one-byte array
//! elements would still become 32 GB of values, so over [`MAX_HEADER_MEMORY`] is refused. Once read, the
//! model's counts (layers, heads, sizes, context, vocabulary) are checked against sane limits
//! ([`crate::config::LIMITS`]) and against the tensors present ([`check_model`]), each error naming the key or
//! tensor.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use crate::config::LIMITS;
use crate::error::{Error, Result};
use crate::gguf_file::TensorInfo;
use crate::tokenizer::md_u64;

/// The most memory the metadata and tensor table of a GGUF file (all its parts together) may take once read
/// (real files take under 100 MB: a 256k-token vocabulary with its merges is about 40 MB).
pub(crate) const MAX_HEADER_MEMORY: u64 = 1 << 30;

/// The bytes one metadata value takes once read ([`Value`]), besides a string's text.
pub(crate) const VALUE_BYTES: u64 = 32;
/// A map entry of the metadata or the tensor table, besides its key and value.
pub(crate) const ENTRY_BYTES: u64 = 64;
/// A tensor of the table once read, besides its name and dimensions.
pub(crate) const TENSOR_BYTES: u64 = ENTRY_BYTES + std::mem::size_of::<TensorInfo>() as u64;

/// The GGUF metadata keys (after `{arch}.`) of the model sizes, with the configuration field each fills.
const COUNT_KEYS: [(&str, &str); 7] = [
    ("block_count", "num_hidden_layers"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.key_length", "head_dim"),
    ("embedding_length", "hidden_size"),
    ("feed_forward_length", "intermediate_size"),
    ("context_length", "max_position_embeddings"),
];

/// The memory the header read so far takes, counted before each allocation it sizes.
#[derive(Debug, Default)]
pub(crate) struct HeaderMemory {
    used: u64,
}

impl HeaderMemory {
    /// Counts `n` more bytes; an error naming `path` once the total is over [`MAX_HEADER_MEMORY`].
    pub(crate) fn add(&mut self, n: u64, path: &Path) -> Result<()> {
        self.used = self.used.saturating_add(n);
        if self.used > MAX_HEADER_MEMORY {
            return Err(Error::model(
                path,
                format!(
                    "the metadata and tensor table would take more than {} MiB of memory once read (the header \
                     reached {} MiB; real models take under 100 MiB): the file is damaged or hostile",
                    MAX_HEADER_MEMORY >> 20,
                    self.used >> 20
                ),
            ));
        }
        Ok(())
    }

    /// Counts `n` items of `each` bytes.
    pub(crate) fn add_items(&mut self, n: u64, each: u64, path: &Path) -> Result<()> {
        self.add(n.saturating_mul(each), path)
    }
}

/// Refuses a tensor whose shape holds no elements (no model has one) or more than a `u64` can count.
pub(crate) fn check_shape(name: &str, dims: &[usize], path: &Path) -> Result<()> {
    let problem = if dims.contains(&0) {
        "which holds no elements: the file is damaged"
    } else if dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .is_none()
    {
        "whose element count overflows: the file is damaged or not a model"
    } else {
        return Ok(());
    };
    Err(Error::model(
        path,
        format!("tensor `{name}` declares shape {dims:?}, {problem}"),
    ))
}

/// The model's counts against [`LIMITS`] and against the tensors present, and the tokenizer's vocabulary
/// against the embedding's rows.
pub(crate) fn check_model(
    md: &HashMap<String, Value>,
    tensors: &HashMap<String, TensorInfo>,
    path: &Path,
) -> Result<()> {
    check_counts(md, tensors).map_err(|m| Error::model(path, m))
}

fn check_counts(
    md: &HashMap<String, Value>,
    tensors: &HashMap<String, TensorInfo>,
) -> std::result::Result<(), String> {
    let Some(arch) = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
    else {
        return Ok(()); // the loader says it is missing
    };
    for (suffix, field) in COUNT_KEYS {
        let key = format!("{arch}.{suffix}");
        let Some(v) = md_u64(md, &key) else { continue };
        let max = LIMITS
            .iter()
            .find(|(f, _)| *f == field)
            .map_or(u64::MAX, |(_, m)| *m as u64);
        if v > max {
            return Err(format!(
                "metadata key `{key}` is {v}, over the limit of {max} (no real model comes near it): the \
                 file is damaged or not a model"
            ));
        }
    }
    if let Some(layers) = md_u64(md, &format!("{arch}.block_count")) {
        let present = tensors
            .keys()
            .filter_map(|n| {
                n.strip_prefix("blk.")?
                    .split('.')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .collect::<BTreeSet<u64>>();
        if let Some(i) = (0..layers).find(|i| !present.contains(i)) {
            return Err(format!(
                "metadata key `{arch}.block_count` is {layers}, but the file holds no tensors of block {i} \
                 (it has {} blocks): the file is damaged",
                present.len()
            ));
        }
    }
    if let Some(Value::Array(tokens)) = md.get("tokenizer.ggml.tokens") {
        let rows = tensors
            .get("token_embd.weight")
            .and_then(|t| t.dims.first().copied());
        let max = LIMITS
            .iter()
            .find(|(f, _)| *f == "vocab_size")
            .map_or(usize::MAX, |(_, m)| *m);
        if tokens.len() > max || rows.is_some_and(|r| tokens.len() > r) {
            return Err(format!(
                "metadata key `tokenizer.ggml.tokens` lists {} tokens, more than {}: the file is damaged",
                tokens.len(),
                match rows {
                    Some(r) if r < max => format!("the {r} rows of tensor `token_embd.weight`"),
                    _ => format!("the limit of {max}"),
                }
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "gguf_limits_tests.rs"]
mod tests;

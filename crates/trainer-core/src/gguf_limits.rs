//! What a GGUF file declares, checked before anything is sized from it.
//!
//! A GGUF header is a list of counts and lengths, each of which sizes an allocation in the reader or the loader.
//! Before candle reads the header, it is walked here and the memory candle's reader will allocate for it is
//! estimated (32 bytes per metadata value, plus every string; candle itself checks each length against the bytes
//! left in the file, but a file of 1 GB of one-byte array elements still becomes 32 GB of values): over
//! [`MAX_HEADER_MEMORY`] is refused, as is a `general.alignment` of 0 (candle divides by it). Once read, the
//! model's counts (layers, heads, sizes, context, vocabulary) are checked against sane limits
//! ([`crate::config::LIMITS`]) and against the tensors present, and every tensor's declared size against the
//! file, each error naming the key or tensor.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::Content;

use crate::config::LIMITS;
use crate::error::{Error, Result};
use crate::tokenizer::md_u64;

/// The most memory the metadata and tensor table of a GGUF file may take once read (real files take under
/// 100 MB: a 256k-token vocabulary with its merges is about 40 MB).
pub(crate) const MAX_HEADER_MEMORY: u64 = 1 << 30;

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

/// Reads the metadata and tensor table of a GGUF file, refusing what would exhaust memory or abort in candle's
/// reader and any count the file declares beyond a sane limit or the tensors it holds.
pub(crate) fn read_content(reader: &mut BufReader<File>, path: &Path) -> Result<Content> {
    let size = reader
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io(path, e))?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    // A header that cannot be walked is left to candle's reader, which says what is wrong with it.
    if let Ok(Some(problem)) = walk_header(reader, size) {
        return Err(Error::model(path, problem));
    }
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let ct = Content::read(reader).map_err(|e| {
        Error::model(
            path,
            format!("not a readable GGUF file (or it uses a tensor type candle cannot read): {e}"),
        )
    })?;
    check_counts(&ct, size).map_err(|m| Error::model(path, m))?;
    Ok(ct)
}

/// The model's counts against [`LIMITS`] and the tensors present; every tensor's size against the file.
fn check_counts(ct: &Content, file_size: u64) -> std::result::Result<(), String> {
    let md = &ct.metadata;
    for (name, info) in &ct.tensor_infos {
        let dims = info.shape.dims();
        if dims.contains(&0) {
            // No model has an empty tensor, and candle reads one through a misaligned slice (undefined
            // behaviour, caught by debug assertions: fuzzing finding 8).
            return Err(format!(
                "tensor `{name}` declares shape {dims:?}, which holds no elements: the file is damaged"
            ));
        }
        let elems = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let block = info.ggml_dtype.block_size() as u64;
        let bytes = elems.and_then(|n| (n / block).checked_mul(info.ggml_dtype.type_size() as u64));
        let end = bytes.and_then(|b| {
            ct.tensor_data_offset
                .checked_add(info.offset)
                .and_then(|s| s.checked_add(b))
        });
        if end.is_none_or(|e| e > file_size) {
            return Err(format!(
                "tensor `{name}` declares shape {dims:?} of {:?} at offset {}, which does not fit in the file \
                 ({file_size} bytes): the file is damaged or truncated",
                info.ggml_dtype, info.offset
            ));
        }
    }
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
        let present = ct
            .tensor_infos
            .keys()
            .filter_map(|n| {
                n.strip_prefix("blk.")?
                    .split('.')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .collect::<std::collections::BTreeSet<u64>>();
        let missing = (0..layers).find(|i| !present.contains(i));
        if let Some(i) = missing {
            return Err(format!(
                "metadata key `{arch}.block_count` is {layers}, but the file holds no tensors of block {i} \
                 (it has {} blocks): the file is damaged",
                present.len()
            ));
        }
    }
    if let Some(tokens) = md
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
    {
        let rows = ct
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|i| i.shape.dims().first().copied());
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

/// GGUF metadata value types (the GGUF specification's numbering).
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;
/// The bytes one metadata value takes once candle has read it (`gguf_file::Value`), besides a string's text.
const VALUE_BYTES: u64 = 32;
/// A map entry of the metadata or tensor table, besides its key and value.
const ENTRY_BYTES: u64 = 64;

/// Walks the header as candle's reader will read it: `Ok(Some(problem))` for a header candle would accept but
/// must not read (too much memory, an alignment of 0), `Ok(None)` when fine or when the walk stops at something
/// malformed (left to candle's reader, which reports it), `Err` on a short read.
fn walk_header(r: &mut BufReader<File>, size: u64) -> std::io::Result<Option<String>> {
    let magic = read_u32(r)?;
    let version = read_u32(r)?;
    if magic != 0x4655_4747 || !(1..=3).contains(&version) {
        return Ok(None);
    }
    let wide = version >= 2;
    let tensors = read_len(r, wide)?;
    let kvs = read_len(r, wide)?;
    if tensors > size || kvs > size {
        return Ok(None); // candle refuses counts that cannot fit in the file
    }
    let mut memory = Memory {
        used: kvs.saturating_add(tensors).saturating_mul(ENTRY_BYTES),
    };
    for _ in 0..kvs {
        let key_len = read_len(r, wide)?;
        if !memory.add(key_len) || key_len > size {
            return Ok(memory.problem());
        }
        let mut key = vec![0u8; key_len as usize];
        r.read_exact(&mut key)?;
        let ty = read_u32(r)?;
        if key == b"general.alignment" && matches!(ty, 0..=5) {
            let at = r.stream_position()?;
            if read_small_int(r, ty)? == 0 {
                return Ok(Some(
                    "metadata `general.alignment` is 0: the file is damaged (GGUF needs an alignment of at \
                     least 1)"
                        .into(),
                ));
            }
            r.seek(SeekFrom::Start(at))?;
        }
        if !skip_value(r, ty, wide, size, 0, &mut memory)? {
            return Ok(memory.problem());
        }
    }
    for _ in 0..tensors {
        let name_len = read_len(r, wide)?;
        let dims = {
            if !memory.add(name_len) || !seek_by(r, name_len, size)? {
                return Ok(memory.problem());
            }
            read_u32(r)?
        };
        // dimensions, type, offset
        let rest = u64::from(dims.min(8)) * if wide { 8 } else { 4 } + 4 + 8;
        if !memory.add(u64::from(dims.min(8)) * 8) || !seek_by(r, rest, size)? {
            return Ok(memory.problem());
        }
    }
    Ok(None)
}

/// The memory candle's reader will allocate for the header walked so far.
struct Memory {
    used: u64,
}

impl Memory {
    /// Adds `n` bytes; false once over [`MAX_HEADER_MEMORY`].
    fn add(&mut self, n: u64) -> bool {
        self.used = self.used.saturating_add(n);
        self.used <= MAX_HEADER_MEMORY
    }

    fn problem(&self) -> Option<String> {
        (self.used > MAX_HEADER_MEMORY).then(|| {
            format!(
                "the metadata and tensor table would take more than {} MiB of memory once read (the walk \
                 reached {} MiB; real models take under 100 MiB): the file is damaged or hostile",
                MAX_HEADER_MEMORY >> 20,
                self.used >> 20
            )
        })
    }
}

fn read_small_int(r: &mut impl Read, ty: u32) -> std::io::Result<u64> {
    Ok(match ty {
        0 => u64::from(read_n::<1>(r)?[0]),
        1 => i8::from_le_bytes(read_n::<1>(r)?) as u64,
        2 => u64::from(u16::from_le_bytes(read_n::<2>(r)?)),
        3 => i16::from_le_bytes(read_n::<2>(r)?) as u64,
        4 => u64::from(read_u32(r)?),
        _ => i32::from_le_bytes(read_n::<4>(r)?) as u64,
    })
}

/// Skips one metadata value, counting what candle will allocate for it; false when it cannot be walked (left
/// to candle's reader) or the memory is over the limit.
fn skip_value(
    r: &mut BufReader<File>,
    ty: u32,
    wide: bool,
    size: u64,
    depth: u32,
    memory: &mut Memory,
) -> std::io::Result<bool> {
    if !memory.add(VALUE_BYTES) {
        return Ok(false);
    }
    let fixed = match ty {
        0 | 1 | 7 => 1,
        2..=3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        GGUF_STRING => {
            let n = read_len(r, wide)?;
            return Ok(memory.add(n) && seek_by(r, n, size)?);
        }
        GGUF_ARRAY if depth < 64 => {
            let elem = read_u32(r)?;
            let n = read_len(r, wide)?;
            if n > size || !memory.add(n.saturating_mul(VALUE_BYTES)) {
                return Ok(false);
            }
            let fixed = match elem {
                0 | 1 | 7 => Some(1),
                2..=3 => Some(2),
                4..=6 => Some(4),
                10..=12 => Some(8),
                _ => None,
            };
            if let Some(width) = fixed {
                return seek_by(r, n * width, size);
            }
            for _ in 0..n {
                // The element's own 32 bytes are counted above.
                memory.used -= VALUE_BYTES;
                if !skip_value(r, elem, wide, size, depth + 1, memory)? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        _ => return Ok(false),
    };
    seek_by(r, fixed, size)
}

fn seek_by(r: &mut BufReader<File>, n: u64, size: u64) -> std::io::Result<bool> {
    let pos = r.stream_position()?;
    match pos.checked_add(n) {
        Some(end) if end <= size => {
            r.seek_relative(n as i64)?;
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
#[path = "gguf_limits_tests.rs"]
mod tests;

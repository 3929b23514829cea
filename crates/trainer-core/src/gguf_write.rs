//! A streaming GGUF v3 writer: the header (metadata of any GGUF value type, tensor infos with their offsets
//! computed up front, `general.alignment` honoured) is built first, then the tensors' data is written one tensor at
//! a time from a callback, so a file of many gigabytes never needs more than the caller's current tensor in
//! memory. The file is written to a temporary file and renamed into place when complete.
//!
//! Format: the GGUF specification (ggml's `docs/gguf.md`): little-endian; `GGUF`, version 3, tensor count and
//! metadata count as u64; each metadata entry a string key, a u32 value type and the value; each tensor info a
//! string name, u32 dimension count, the dimensions innermost first as u64, the u32 ggml type and the u64 offset
//! of its data from the start of the data section; the data section starts at the next multiple of the alignment,
//! and each tensor's data is padded with zeros to a multiple of it.

use std::collections::HashSet;
use std::path::Path;

pub(crate) use candle_core::quantized::gguf_file::Value;

use crate::error::{Error, Result};
use crate::io::AtomicFile;
use crate::quant::QuantType;

/// The alignment when the metadata sets none (`GGUF_DEFAULT_ALIGNMENT`).
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
/// The longest tensor name llama.cpp accepts (`GGML_MAX_NAME` is 64 with the terminating zero).
const MAX_NAME: usize = 63;
/// The most dimensions a ggml tensor has (`GGML_MAX_DIMS`).
const MAX_DIMS: usize = 4;

/// A tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorInfo {
    pub(crate) name: String,
    pub(crate) ty: QuantType,
    /// Dimensions outermost first, as candle and safetensors give them (`[rows, cols]`); GGUF stores them
    /// innermost first.
    pub(crate) dims: Vec<usize>,
}

impl TensorInfo {
    pub(crate) fn new(name: impl Into<String>, ty: QuantType, dims: &[usize]) -> Self {
        Self {
            name: name.into(),
            ty,
            dims: dims.to_vec(),
        }
    }

    /// Bytes of the tensor's data (rows of the innermost dimension in `ty`).
    pub(crate) fn data_bytes(&self) -> Result<u64> {
        let bad = |m: String| Error::tensor(&self.name, m);
        if self.dims.is_empty() || self.dims.len() > MAX_DIMS {
            return Err(bad(format!(
                "has {} dimensions; GGUF tensors have 1 to {MAX_DIMS}",
                self.dims.len()
            )));
        }
        if self.dims.contains(&0) {
            return Err(bad(format!("has an empty dimension: {:?}", self.dims)));
        }
        let cols = self.dims[self.dims.len() - 1];
        let row = self
            .ty
            .row_bytes(cols)
            .map_err(|e| bad(format!("shape {:?}: {e}", self.dims)))?;
        self.dims[..self.dims.len() - 1]
            .iter()
            .try_fold(row as u64, |n, d| n.checked_mul(*d as u64))
            .ok_or_else(|| bad(format!("shape {:?} overflows", self.dims)))
    }
}

/// Where the data of one tensor goes: exactly its size, in order.
pub(crate) struct TensorSink<'a> {
    file: &'a mut AtomicFile,
    name: &'a str,
    left: u64,
}

impl TensorSink<'_> {
    /// Appends `bytes` to the tensor; an error when they run past its size.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 > self.left {
            return Err(Error::tensor(
                self.name,
                format!(
                    "{} more bytes written than its shape and type hold",
                    bytes.len() as u64 - self.left
                ),
            ));
        }
        self.left -= bytes.len() as u64;
        self.file.write_all(bytes)
    }
}

/// Where things landed in a written file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Start of the data section.
    pub(crate) data_offset: u64,
    /// Each tensor's offset within the data section, in the order given.
    pub(crate) offsets: Vec<u64>,
    /// Size of the whole file.
    pub(crate) file_bytes: u64,
}

/// Writes a GGUF v3 file at `path`: `metadata` in the order given, then `tensors`, whose data `data(i, sink)`
/// writes for tensor `i` (called once per tensor, in order; it must write exactly the tensor's bytes). The file
/// appears only when complete; on any error the target is left as it was.
pub(crate) fn write<K: AsRef<str>>(
    path: &Path,
    metadata: &[(K, Value)],
    tensors: &[TensorInfo],
    mut data: impl FnMut(usize, &mut TensorSink<'_>) -> Result<()>,
) -> Result<Layout> {
    let align = alignment(metadata)?;
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    let mut keys = HashSet::new();
    for (key, value) in metadata {
        let key = key.as_ref();
        if key.is_empty() || !keys.insert(key) {
            return Err(Error::input(
                "metadata",
                format!("key `{key}` is empty or given twice"),
            ));
        }
        put_string(&mut head, key);
        head.extend_from_slice(&value_type(value, key)?.to_le_bytes());
        put_value(&mut head, value, key)?;
    }
    let mut names = HashSet::new();
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut end = 0u64;
    for t in tensors {
        if t.name.is_empty() || t.name.len() > MAX_NAME || !names.insert(t.name.as_str()) {
            return Err(Error::tensor(
                &t.name,
                format!("the name is empty, longer than {MAX_NAME} bytes or given twice"),
            ));
        }
        let size = t.data_bytes()?;
        let offset = end.next_multiple_of(align);
        end = offset
            .checked_add(size)
            .ok_or_else(|| Error::tensor(&t.name, "the file would exceed 2^64 bytes"))?;
        put_string(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in t.dims.iter().rev() {
            head.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        head.extend_from_slice(&t.ty.ggml_id().to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        sizes.push(size);
    }
    let data_offset = (head.len() as u64).next_multiple_of(align);
    head.resize(data_offset as usize, 0);

    let mut file = AtomicFile::create(path)?;
    file.write_all(&head)?;
    let mut at = 0u64;
    for (i, (t, (&offset, &size))) in tensors.iter().zip(offsets.iter().zip(&sizes)).enumerate() {
        pad(&mut file, offset - at)?;
        let mut sink = TensorSink {
            file: &mut file,
            name: &t.name,
            left: size,
        };
        data(i, &mut sink)?;
        if sink.left > 0 {
            return Err(Error::tensor(
                &t.name,
                format!("{} of its {size} bytes were written", size - sink.left),
            ));
        }
        at = offset + size;
    }
    let total = at.next_multiple_of(align);
    pad(&mut file, total - at)?;
    file.commit()?;
    Ok(Layout {
        data_offset,
        offsets,
        file_bytes: data_offset + total,
    })
}

fn pad(file: &mut AtomicFile, n: u64) -> Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut n = n;
    while n > 0 {
        let k = n.min(ZEROS.len() as u64);
        file.write_all(&ZEROS[..k as usize])?;
        n -= k;
    }
    Ok(())
}

/// `general.alignment`: a u32 power of two (llama.cpp reads it as u32 and checks it), 32 when absent.
fn alignment<K: AsRef<str>>(metadata: &[(K, Value)]) -> Result<u64> {
    match metadata
        .iter()
        .find(|(k, _)| k.as_ref() == "general.alignment")
    {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, Value::U32(a))) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some((_, v)) => Err(Error::input(
            "metadata",
            format!("`general.alignment` must be a u32 power of two, got {v:?}"),
        )),
    }
}

/// GGUF's value type ids (`enum gguf_type`); an array's elements must share one type.
fn value_type(v: &Value, key: &str) -> Result<u32> {
    Ok(match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(items) => {
            let mut types = items.iter().map(|x| value_type(x, key));
            if let Some(first) = types.next() {
                let first = first?;
                for t in types {
                    if t? != first {
                        return Err(Error::input(
                            "metadata",
                            format!("`{key}`: an array's elements must all have one type"),
                        ));
                    }
                }
            }
            9
        }
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    })
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value, key: &str) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array's element type is free; u32 as candle writes it.
            let elem = items.first().map_or(Ok(4), |x| value_type(x, key))?;
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                put_value(out, x, key)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

//! A safetensors file's header, read and checked without reading tensor data (every tensor's byte range must lie
//! in the file, fit its dtype and shape, and not overlap another's), and one tensor's data read on demand.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::load::Stored;
use crate::matrix::Packed;

/// Largest header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// One tensor of the file.
pub(crate) struct TensorEntry {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

impl TensorEntry {
    /// How the data is stored, when this crate reads the dtype as a float type (`F64` is read as f32 values).
    pub(crate) fn stored(&self) -> Option<Stored> {
        match self.dtype.as_str() {
            "F32" => Some(Stored::F32),
            "F16" => Some(Stored::Packed(Packed::F16)),
            "BF16" => Some(Stored::Packed(Packed::BF16)),
            _ => None,
        }
    }
}

/// An open safetensors file and its tensor table.
pub(crate) struct SafetensorsFile {
    pub path: PathBuf,
    file: File,
    pub tensors: HashMap<String, TensorEntry>,
}

fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

impl SafetensorsFile {
    /// Opens `path` and checks its header.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let bad = |m: String| Error::model(path, format!("not a valid safetensors file: {m}"));
        let mut n = [0u8; 8];
        file.read_exact_at(&mut n, 0)
            .map_err(|_| bad("shorter than its 8-byte header length".into()))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER || n > len.saturating_sub(8) {
            return Err(bad(format!(
                "a header of {n} bytes does not fit in the file ({len} bytes)"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| Error::io(path, e))?;
        let mut raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("the header is not JSON: {e}")))?;
        raw.remove("__metadata__");
        let base = 8 + n;
        let mut tensors = HashMap::with_capacity(raw.len());
        for (name, v) in raw {
            let e: Entry =
                serde_json::from_value(v).map_err(|err| bad(format!("tensor `{name}`: {err}")))?;
            let [s, t] = e.data_offsets;
            let elems = e
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            let size = dtype_bytes(&e.dtype).and_then(|b| elems?.checked_mul(b));
            if t < s || size.is_some_and(|size| t - s != size) {
                return Err(bad(format!(
                    "tensor `{name}` ({} {:?}) has data offsets {s}..{t} that do not fit its type and shape",
                    e.dtype, e.shape
                )));
            }
            let (start, end) = (base.saturating_add(s), base.saturating_add(t));
            if end > len {
                return Err(bad(format!(
                    "tensor `{name}`'s data (bytes {start}..{end}) runs past the end of the file ({len} bytes): \
                     the file is truncated or damaged"
                )));
            }
            tensors.insert(
                name,
                TensorEntry {
                    dtype: e.dtype,
                    shape: e.shape,
                    start,
                    end,
                },
            );
        }
        let mut ranges: Vec<(&String, &TensorEntry)> =
            tensors.iter().filter(|(_, t)| t.end > t.start).collect();
        ranges.sort_by_key(|(_, t)| t.start);
        for w in ranges.windows(2) {
            let ((a, ta), (b, tb)) = (w[0], w[1]);
            if tb.start < ta.end {
                return Err(bad(format!(
                    "tensors `{a}` and `{b}` overlap (bytes {}..{} and {}..{}): the file is damaged or was tampered with",
                    ta.start, ta.end, tb.start, tb.end
                )));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            tensors,
        })
    }

    /// The data of `t`.
    pub(crate) fn read(&self, t: &TensorEntry) -> Result<Vec<u8>> {
        let mut out = vec![0u8; (t.end - t.start) as usize];
        self.file
            .read_exact_at(&mut out, t.start)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(out)
    }

    /// The data of `t` as f32 values, for the float dtypes (`F64` narrowed).
    pub(crate) fn read_f32(&self, name: &str, t: &TensorEntry) -> Result<Vec<f32>> {
        let bytes = self.read(t)?;
        let n = t.shape.iter().product();
        match (t.stored(), t.dtype.as_str()) {
            (Some(s), _) => crate::load::expand(s, &bytes, n),
            (None, "F64") => Ok(bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect()),
            (None, other) => Err(Error::model(
                &self.path,
                format!("tensor `{name}` has dtype {other}; model weights must be F32, F16, BF16 or F64"),
            )),
        }
    }
}

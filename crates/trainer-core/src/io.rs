//! File helpers: atomic writes and safetensors read/write with errors that name the file.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (`.NAME.tmpXXXXXX`), synced, then
/// renamed over `path`. On an error the temporary file is removed and `path` is untouched.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// A file written in a stream and published atomically through `tempfile`: a temporary file beside the target
/// (`.NAME.tmpXXXXXX`), then fsync and persist (rename). Until [`AtomicFile::commit`] the target is untouched; a
/// writer dropped without committing (an error, a cancelled write) removes its temporary file.
pub(crate) struct AtomicFile {
    path: PathBuf,
    out: BufWriter<NamedTempFile>,
}

impl AtomicFile {
    /// Creates the temporary file in `path`'s directory.
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::input("path", format!("{} names no file", path.display())))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.tmp"))
            .tempfile_in(dir)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, tmp),
        })
    }

    /// Writes all of `bytes`; an I/O error names the target.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes, syncs and renames the temporary file onto the target.
    pub(crate) fn commit(self) -> Result<()> {
        let path = self.path;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        tmp.as_file().sync_all().map_err(|e| Error::io(&path, e))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }
}

/// Creates `dir` (and parents) if needed.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Serializes f32 tensors as safetensors with metadata `{"format": "pt"}` and writes the file atomically.
pub(crate) fn save_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::tensor(name.clone(), e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::model(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Reads every tensor of a safetensors file, converted to f32 on `device`.
pub(crate) fn load_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let map = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::model(path, format!("not a valid safetensors file: {e}")))?;
    map.into_iter()
        .map(|(k, t)| {
            let t = t
                .to_dtype(DType::F32)
                .map_err(|e| Error::tensor(k.clone(), e.to_string()))?;
            Ok((k, t))
        })
        .collect()
}

//! How a model's weights are loaded: [`LoadOptions`] (`base_weights = keep | f32`, the memory limit), and the
//! steps the GGUF and safetensors loaders share: turning a tensor's stored bytes into a frozen [`Matrix`] (kept
//! as stored, or expanded to f32) or an f32 vector (norms, biases), moving whole rows, and the memory check.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::matrix::{Matrix, Packed};
use crate::memory::{self, MemoryLimit};

/// How the frozen weights are held in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseWeights {
    /// Each frozen linear weight (q/k/v/o/gate/up/down, the embedding and an untied `lm_head`) stays in the type
    /// its file stores it in (GGUF `Q4_0 … Q6_K`, `F16`, `BF16`, `F32`; safetensors `F16`, `BF16`, `F32`) and is
    /// expanded a panel at a time as the CPU engine multiplies. Norms and biases are f32. CPU only.
    #[default]
    Keep,
    /// Every weight expanded to f32 when loading (about 4 bytes per parameter).
    F32,
}

impl BaseWeights {
    /// `keep` or `f32`.
    pub fn name(self) -> &'static str {
        match self {
            BaseWeights::Keep => "keep",
            BaseWeights::F32 => "f32",
        }
    }
}

impl std::fmt::Display for BaseWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BaseWeights {
    type Err = Error;

    /// `keep` or `f32` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        [BaseWeights::Keep, BaseWeights::F32]
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::setting("base_weights", format!("{s:?} is not keep or f32")))
    }
}

/// Options of [`crate::Model::load_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Keep the frozen weights as stored (default) or expand them to f32.
    pub base_weights: BaseWeights,
    /// Refuse a model whose weights need more than this many bytes. `None` (default): the limit of this process
    /// (`MemAvailable`, the cgroup limit, `RLIMIT_AS`), see [`crate::memory::process_limit`].
    pub memory_limit: Option<u64>,
}

impl LoadOptions {
    /// Whether weights stay packed.
    pub(crate) fn keep(&self) -> bool {
        self.base_weights == BaseWeights::Keep
    }

    /// Refuses the load when `needed` bytes exceed the limit in effect.
    pub(crate) fn check_memory(&self, path: &Path, needed: u64) -> Result<()> {
        let limit = match self.memory_limit {
            Some(bytes) => Some(MemoryLimit {
                bytes,
                source: "the memory limit given in the load options".into(),
            }),
            None => memory::process_limit(),
        };
        memory::check_load(path, needed, self.keep(), limit.as_ref())
    }
}

/// How a tensor's bytes are stored: f32, or a packed type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    F32,
    Packed(Packed),
}

impl Stored {
    /// Bytes per row of `cols` values.
    pub(crate) fn row_bytes(self, cols: usize) -> usize {
        match self {
            Stored::F32 => cols * 4,
            Stored::Packed(p) => p.row_bytes(cols),
        }
    }

    /// The bytes a `[rows, cols]` weight occupies once loaded.
    pub(crate) fn resident(self, rows: usize, cols: usize, keep: bool) -> u64 {
        match self {
            Stored::Packed(p) if keep => (rows * p.row_bytes(cols)) as u64,
            _ => (rows * cols * 4) as u64,
        }
    }
}

/// Expands stored bytes to f32 values.
pub(crate) fn expand(stored: Stored, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    match stored {
        Stored::F32 => out
            .iter_mut()
            .zip(bytes.chunks_exact(4))
            .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Stored::Packed(p) => {
            let rb = p.row_bytes(p.block_len());
            // Whole blocks at a time (the data is a run of blocks).
            for (o, b) in out
                .chunks_mut(p.block_len() * 1024)
                .zip(bytes.chunks(rb * 1024))
            {
                p.expand(b, o)?;
            }
        }
    }
    Ok(out)
}

/// Reorders whole rows: row `i` of the result is row `from[i]` of `bytes`.
pub(crate) fn move_rows(bytes: &[u8], row_bytes: usize, from: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &r in from {
        out.extend_from_slice(&bytes[r * row_bytes..(r + 1) * row_bytes]);
    }
    out
}

/// The row order that undoes llama.cpp's q/k permutation of a `[heads · hd, ..]` weight: HF row
/// `(head, s, j)` (`s` in 0..2, `j` in 0..hd/2) is GGUF row `(head, j, s)`.
pub(crate) fn unpermute_order(rows: usize, heads: usize) -> Vec<usize> {
    let hd = rows / heads.max(1);
    let half = hd / 2;
    (0..rows)
        .map(|r| {
            let (head, rest) = (r / hd.max(1), r % hd.max(1));
            let (s, j) = (rest / half.max(1), rest % half.max(1));
            head * hd + j * 2 + s
        })
        .collect()
}

/// A frozen `[rows, cols]` weight from its stored bytes: kept packed, or expanded to f32, on `device`.
pub(crate) fn matrix(
    stored: Stored,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
    keep: bool,
    device: &Device,
) -> Result<Matrix> {
    match stored {
        Stored::Packed(p) if keep => Ok(Matrix::packed(p, rows, cols, bytes)?),
        _ => {
            let v = expand(stored, &bytes, rows * cols)?;
            drop(bytes);
            Ok(Matrix::dense(Tensor::from_vec(v, (rows, cols), device)?)?)
        }
    }
}

/// The error for a tensor of a type this crate cannot read.
pub(crate) fn unsupported(path: &Path, name: &str, ty: &str, supported: &str) -> Error {
    Error::model(
        path,
        format!(
            "tensor `{name}` is stored as {ty}, which this crate cannot read (supported: {supported}); convert the \
             model to one of these, e.g. with llama.cpp's `llama-quantize` to Q4_K_M"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Moving whole rows by `unpermute_order` is llama.cpp's permutation undone: the same as viewing the rows
        /// as `[heads, hd/2, 2]` and swapping the last two axes.
        #[test]
        fn unpermute_order_swaps_the_pair_axes(heads in 1usize..5, half in 1usize..5) {
            let rows = heads * half * 2;
            let order = unpermute_order(rows, heads);
            for (r, &from) in order.iter().enumerate() {
                let (h, s, j) = (r / (2 * half), (r % (2 * half)) / half, r % half);
                prop_assert_eq!(from, (h * half + j) * 2 + s);
            }
            let mut sorted = order.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..rows).collect::<Vec<_>>());
        }
    }
}

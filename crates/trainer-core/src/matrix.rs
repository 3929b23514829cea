//! [`Matrix`]: a frozen `[rows, cols]` weight matrix kept in the form it was stored in (f32 on any device, or a
//! packed CPU form: f16, bf16, GGML blocks), expanded to f32 a block of rows or columns at a time when the engine multiplies.
//!
//! Packed rows are independent: row `r` occupies `row_bytes` bytes at `r · row_bytes`, and within a row the values
//! come in blocks of `block_len` (1 for f16/bf16, 32 or 256 for GGML blocks), so any run of rows, and any block-aligned run of columns, can
//! be expanded without touching the rest.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use crate::quant::{self, QuantType};

/// A packed element type of a frozen weight: a [`QuantType`] other than `F32` (f16, bf16, a GGML block type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packed(QuantType);

impl Packed {
    /// IEEE half precision.
    pub(crate) const F16: Packed = Packed(QuantType::F16);
    /// bfloat16.
    pub(crate) const BF16: Packed = Packed(QuantType::BF16);

    /// The packed type of a GGML type id, if this crate decodes it (`F32`, id 0, is not packed).
    pub(crate) fn from_ggml_id(id: u32) -> Option<Self> {
        QuantType::from_ggml_id(id)
            .filter(|&t| t != QuantType::F32)
            .map(Packed)
    }

    /// The name used in files and messages (`F16`, `Q4_K`, ...).
    pub(crate) fn name(self) -> &'static str {
        self.0.name()
    }

    /// Values per block (a row's length must be a multiple of it).
    pub(crate) fn block_len(self) -> usize {
        self.0.block_len()
    }

    /// Bytes per block.
    pub(crate) fn block_bytes(self) -> usize {
        self.0.block_bytes()
    }

    /// Bytes of a row of `cols` values (`cols` a multiple of [`Packed::block_len`]).
    pub(crate) fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// Expands whole blocks `bytes` into `out` (`out.len()` values).
    pub(crate) fn expand(self, bytes: &[u8], out: &mut [f32]) -> Result<()> {
        quant::dequantize(self.0, bytes, out).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

#[derive(Debug, Clone)]
enum Data {
    /// f32 `[rows, cols]` on any device.
    Dense(Tensor),
    /// Packed rows on the CPU (shared between clones of a model).
    Packed { kind: Packed, bytes: Arc<Vec<u8>> },
}

/// A frozen weight matrix `[rows, cols]` (`[out, in]` for a linear layer, `[vocab, hidden]` for an embedding).
#[derive(Debug, Clone)]
pub(crate) struct Matrix {
    rows: usize,
    cols: usize,
    data: Data,
}

/// A view of a [`Matrix`] on the CPU: its f32 values in place, or its packed rows.
#[derive(Clone, Copy)]
pub(crate) struct MatrixRef<'a> {
    pub rows: usize,
    pub cols: usize,
    pub data: RefData<'a>,
}

/// The data of a [`MatrixRef`].
#[derive(Clone, Copy)]
pub(crate) enum RefData<'a> {
    /// Row-major f32 values.
    F32(&'a [f32]),
    /// Packed rows.
    Packed { kind: Packed, bytes: &'a [u8] },
}

impl Matrix {
    /// A matrix from a 2-D f32 tensor.
    pub(crate) fn dense(t: Tensor) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        let t = if t.dtype() == candle_core::DType::F32 {
            t.contiguous()?
        } else {
            t.to_dtype(candle_core::DType::F32)?.contiguous()?
        };
        Ok(Self {
            rows,
            cols,
            data: Data::Dense(t),
        })
    }

    /// A matrix from packed row-major bytes; fails when the length or the row length does not fit the kind.
    pub(crate) fn packed(kind: Packed, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self> {
        if !cols.is_multiple_of(kind.block_len()) {
            candle_core::bail!(
                "{} rows of {cols} values are not whole blocks of {}",
                kind.name(),
                kind.block_len()
            )
        }
        let want = rows
            .checked_mul(kind.row_bytes(cols))
            .ok_or_else(|| candle_core::Error::Msg("matrix size overflows".into()))?;
        if bytes.len() != want {
            candle_core::bail!(
                "{} [{rows}, {cols}] needs {want} bytes, got {}",
                kind.name(),
                bytes.len()
            )
        }
        Ok(Self {
            rows,
            cols,
            data: Data::Packed {
                kind,
                bytes: Arc::new(bytes),
            },
        })
    }

    /// `(rows, cols)`.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The stored type's name (`F32`, `F16`, `BF16`).
    pub(crate) fn type_name(&self) -> &'static str {
        match &self.data {
            Data::Dense(_) => "F32",
            Data::Packed { kind, .. } => kind.name(),
        }
    }

    /// Bytes the matrix occupies in memory.
    pub(crate) fn resident_bytes(&self) -> usize {
        match &self.data {
            Data::Dense(_) => self.rows * self.cols * 4,
            Data::Packed { bytes, .. } => bytes.len(),
        }
    }

    /// The whole matrix as an f32 tensor on `device` (no copy when it is stored dense there).
    pub(crate) fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        match &self.data {
            Data::Dense(t) => t.to_device(device),
            Data::Packed { .. } => {
                let mut out = vec![0f32; self.rows * self.cols];
                self.with_ref(|m| m.expand_rows(0, self.rows, &mut out))?;
                Tensor::from_vec(out, (self.rows, self.cols), device)
            }
        }
    }

    /// Runs `f` on a CPU view of the matrix (dense f32 data borrowed in place).
    pub(crate) fn with_ref<R>(&self, f: impl FnOnce(MatrixRef<'_>) -> Result<R>) -> Result<R> {
        let pin = self.pin()?;
        f(pin.view())
    }

    /// Pins the matrix's data for CPU views (dense f32 data is borrowed in place while the pin lives).
    pub(crate) fn pin(&self) -> Result<MatrixPin<'_>> {
        let dense = match &self.data {
            Data::Dense(t) => Some(F32Pin::new(t)?),
            Data::Packed { .. } => None,
        };
        Ok(MatrixPin { m: self, dense })
    }
}

/// A tensor's contiguous CPU f32 data, borrowed while the pin lives.
pub(crate) struct F32Pin<'a> {
    guard: candle_core::StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> F32Pin<'a> {
    /// Pins `t`; fails unless it is contiguous f32 on the CPU.
    pub(crate) fn new(t: &'a Tensor) -> Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        let offsets = layout.contiguous_offsets();
        match (&*guard, offsets) {
            (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(_)), Some((start, end))) => {
                Ok(Self { guard, start, end })
            }
            _ => candle_core::bail!(
                "the CPU engine needs weights as contiguous f32 in CPU memory (found {:?} on {:?})",
                t.dtype(),
                t.device()
            ),
        }
    }

    /// The pinned values.
    pub(crate) fn slice(&self) -> &[f32] {
        match &*self.guard {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => &v[self.start..self.end],
            // `new` admits only CPU f32 storages.
            _ => &[],
        }
    }
}

/// A [`Matrix`] pinned for CPU views.
pub(crate) struct MatrixPin<'a> {
    m: &'a Matrix,
    dense: Option<F32Pin<'a>>,
}

impl MatrixPin<'_> {
    /// The matrix's CPU view.
    pub(crate) fn view(&self) -> MatrixRef<'_> {
        let (rows, cols) = (self.m.rows, self.m.cols);
        let data = match (&self.m.data, &self.dense) {
            (Data::Packed { kind, bytes }, _) => RefData::Packed { kind: *kind, bytes },
            (Data::Dense(_), Some(p)) => RefData::F32(p.slice()),
            // `pin` always pins a dense matrix.
            (Data::Dense(_), None) => RefData::F32(&[]),
        };
        MatrixRef { rows, cols, data }
    }
}

impl<'a> MatrixRef<'a> {
    /// A view of row-major f32 values `[rows, cols]`.
    pub(crate) fn f32(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: RefData::F32(data),
        }
    }

    /// Values per block along a row (1 for f32, f16, bf16).
    pub(crate) fn block_len(&self) -> usize {
        match self.data {
            RefData::F32(_) => 1,
            RefData::Packed { kind, .. } => kind.block_len(),
        }
    }

    /// Expands row `r` into `out` (`cols` values).
    pub(crate) fn expand_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let cols = self.cols;
        match self.data {
            RefData::F32(v) => {
                out.copy_from_slice(&v[r * cols..(r + 1) * cols]);
                Ok(())
            }
            RefData::Packed { kind, bytes } => {
                let rb = kind.row_bytes(cols);
                kind.expand(&bytes[r * rb..(r + 1) * rb], out)
            }
        }
    }

    /// Expands rows `r0..r1` into `out` (`(r1 - r0) · cols` values), in parallel over rows.
    pub(crate) fn expand_rows(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        let cols = self.cols.max(1);
        out[..(r1 - r0) * cols]
            .par_chunks_mut(cols * 16)
            .enumerate()
            .try_for_each(|(i, o)| {
                for (j, row) in o.chunks_mut(cols).enumerate() {
                    self.expand_row(r0 + i * 16 + j, row)?;
                }
                Ok(())
            })
    }

    /// Expands the columns `c0..c1` (`c0` a multiple of the block length, `c1` too or `c1 = cols`) of every row
    /// into `out` (`rows · (c1 - c0)` values, row-major), in parallel over rows.
    pub(crate) fn expand_cols(&self, c0: usize, c1: usize, out: &mut [f32]) -> Result<()> {
        let (cols, w) = (self.cols, c1 - c0);
        if w == 0 {
            return Ok(());
        }
        match self.data {
            RefData::F32(v) => {
                out[..self.rows * w]
                    .par_chunks_mut(w)
                    .zip(v.par_chunks(cols))
                    .for_each(|(o, row)| o.copy_from_slice(&row[c0..c1]));
                Ok(())
            }
            RefData::Packed { kind, bytes } => {
                let (rb, bl, bb) = (kind.row_bytes(cols), kind.block_len(), kind.block_bytes());
                let (b0, b1) = (c0 / bl * bb, c1.div_ceil(bl) * bb);
                out[..self.rows * w]
                    .par_chunks_mut(w)
                    .zip(bytes.par_chunks(rb))
                    .try_for_each(|(o, row)| kind.expand(&row[b0..b1], o))
            }
        }
    }

    /// Expands the rows `ids` into consecutive rows of `out` (an embedding lookup).
    pub(crate) fn gather_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        out.par_chunks_mut(self.cols.max(1))
            .zip(ids.par_iter())
            .try_for_each(|(o, &id)| self.expand_row(id as usize, o))
    }
}

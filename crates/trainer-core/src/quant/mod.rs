//! GGML block formats: the 13 weight types a GGUF file may store that this crate reads, their sizes, a decoder
//! for each (safe Rust, bit-identical to candle's `QTensor::dequantize` and so to llama.cpp's
//! `dequantize_row_*`) and quantization (candle's `from_float`, llama.cpp's reference quantizers).
//!
//! A tensor row of `cols` values is `cols / block_len` blocks of `block_bytes` bytes; blocks run along a row, so
//! any block-aligned column range of a row decodes on its own. The decoders run in the training hot loop (frozen
//! weights are expanded a panel at a time), so they are written for the auto-vectorizer: fixed-size blocks
//! (`as_chunks`), fixed-length inner loops and no per-value branches; f16 scales are converted with `half`, eight
//! blocks per call for the 32-value types.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::{bf16, f16, slice::HalfBitsSliceExt, slice::HalfFloatSliceExt};

use crate::error::{Error, Result};

mod kquants;
mod legacy;
#[cfg(test)]
mod tests;

/// A weight storage type: plain floats, the 32-value legacy quants or the 256-value K-quants.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum QuantType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl QuantType {
    /// Every supported type, floats first.
    pub(crate) const ALL: [QuantType; 13] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2K,
        Self::Q3K,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
    ];

    /// ggml's type id (`enum ggml_type`), as GGUF files store it.
    pub(crate) fn ggml_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::BF16 => 30,
        }
    }

    /// The type of a ggml type id, if this crate stores weights in it.
    pub(crate) fn from_ggml_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_id() == id)
    }

    /// The type of a candle GGML dtype; `None` for the ones this crate does not store weights in (`Q8_1`, `Q8K`:
    /// llama.cpp uses them only for activations).
    pub(crate) fn from_ggml(t: GgmlDType) -> Option<Self> {
        Some(match t {
            GgmlDType::F32 => Self::F32,
            GgmlDType::F16 => Self::F16,
            GgmlDType::BF16 => Self::BF16,
            GgmlDType::Q4_0 => Self::Q4_0,
            GgmlDType::Q4_1 => Self::Q4_1,
            GgmlDType::Q5_0 => Self::Q5_0,
            GgmlDType::Q5_1 => Self::Q5_1,
            GgmlDType::Q8_0 => Self::Q8_0,
            GgmlDType::Q2K => Self::Q2K,
            GgmlDType::Q3K => Self::Q3K,
            GgmlDType::Q4K => Self::Q4K,
            GgmlDType::Q5K => Self::Q5K,
            GgmlDType::Q6K => Self::Q6K,
            GgmlDType::Q8_1 | GgmlDType::Q8K => return None,
        })
    }

    /// The candle GGML dtype.
    pub(crate) fn to_ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::BF16 => GgmlDType::BF16,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q2K => GgmlDType::Q2K,
            Self::Q3K => GgmlDType::Q3K,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
        }
    }

    /// The name as llama.cpp spells it (`Q4_K`, `F16`, ...).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// Values per block: 1 (floats), 32 (legacy quants) or 256 (K-quants).
    pub(crate) fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block (llama.cpp's `block_q*` struct sizes).
    pub(crate) fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => legacy::Q4_0_BYTES,
            Self::Q4_1 => legacy::Q4_1_BYTES,
            Self::Q5_0 => legacy::Q5_0_BYTES,
            Self::Q5_1 => legacy::Q5_1_BYTES,
            Self::Q8_0 => legacy::Q8_0_BYTES,
            Self::Q2K => kquants::Q2K_BYTES,
            Self::Q3K => kquants::Q3K_BYTES,
            Self::Q4K => kquants::Q4K_BYTES,
            Self::Q5K => kquants::Q5K_BYTES,
            Self::Q6K => kquants::Q6K_BYTES,
        }
    }

    /// Bytes of a row of `cols` values; an error when `cols` is not a multiple of [`QuantType::block_len`].
    pub(crate) fn row_bytes(self, cols: usize) -> Result<usize> {
        let len = self.block_len();
        if !cols.is_multiple_of(len) {
            return Err(Error::input(
                "cols",
                format!(
                    "a row of {cols} values cannot be stored as {}: rows must be a multiple of its block length {len}",
                    self.name()
                ),
            ));
        }
        (cols / len).checked_mul(self.block_bytes()).ok_or_else(|| {
            Error::input(
                "cols",
                format!("a row of {cols} values in {} overflows", self.name()),
            )
        })
    }
}

/// Expands `out.len()` values (a multiple of `block_len`) from `bytes`, which holds exactly their blocks
/// (`out.len() / block_len * block_bytes` bytes). Works on any block-aligned column range of a row.
pub(crate) fn dequantize(ty: QuantType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let len = ty.block_len();
    if !out.len().is_multiple_of(len) {
        return Err(Error::input(
            "dequantize",
            format!(
                "{} values cannot be expanded from {}: not a multiple of its block length {len}",
                out.len(),
                ty.name()
            ),
        ));
    }
    let need = out.len() / len * ty.block_bytes();
    if bytes.len() != need {
        return Err(Error::input(
            "dequantize",
            format!(
                "{} values of {} take {need} bytes, got {}",
                out.len(),
                ty.name(),
                bytes.len()
            ),
        ));
    }
    match ty {
        QuantType::F32 => f32s(bytes, out),
        QuantType::F16 => halves::<f16>(bytes, out),
        QuantType::BF16 => halves::<bf16>(bytes, out),
        QuantType::Q4_0 => legacy::q4_0(bytes, out),
        QuantType::Q4_1 => legacy::q4_1(bytes, out),
        QuantType::Q5_0 => legacy::q5_0(bytes, out),
        QuantType::Q5_1 => legacy::q5_1(bytes, out),
        QuantType::Q8_0 => legacy::q8_0(bytes, out),
        QuantType::Q2K => kquants::q2k(bytes, out),
        QuantType::Q3K => kquants::q3k(bytes, out),
        QuantType::Q4K => kquants::q4k(bytes, out),
        QuantType::Q5K => kquants::q5k(bytes, out),
        QuantType::Q6K => kquants::q6k(bytes, out),
    }
    Ok(())
}

/// Quantizes `values` (a multiple of `block_len`) and appends the blocks to `out` (candle's `from_float`, which
/// follows llama.cpp's reference `quantize_row_*_ref`).
pub(crate) fn quantize(ty: QuantType, values: &[f32], out: &mut Vec<u8>) -> Result<()> {
    let len = ty.block_len();
    if !values.len().is_multiple_of(len) {
        return Err(Error::input(
            "quantize",
            format!(
                "{} values cannot be stored as {}: not a multiple of its block length {len}",
                values.len(),
                ty.name()
            ),
        ));
    }
    if values.is_empty() {
        return Ok(());
    }
    let t = Tensor::from_slice(values, values.len(), &Device::Cpu)?;
    let q = QTensor::quantize(&t, ty.to_ggml())?;
    out.extend_from_slice(&q.data()?);
    Ok(())
}

fn f32s(bytes: &[u8], out: &mut [f32]) {
    let (words, _) = bytes.as_chunks::<4>();
    for (o, w) in out.iter_mut().zip(words) {
        *o = f32::from_le_bytes(*w);
    }
}

/// Values converted per call of `half`'s slice conversion (one CPU-feature check per call).
const HALF_CHUNK: usize = 64;

/// 16-bit floats (f16 or bf16) in chunks of [`HALF_CHUNK`].
fn halves<H>(bytes: &[u8], out: &mut [f32])
where
    [H]: HalfFloatSliceExt,
    H: HalfBits,
{
    let (chunks, tail) = bytes.as_chunks::<{ 2 * HALF_CHUNK }>();
    let (outs, out_tail) = out.as_chunks_mut::<HALF_CHUNK>();
    for (c, o) in chunks.iter().zip(outs) {
        let mut bits = [0u16; HALF_CHUNK];
        let (pairs, _) = c.as_chunks::<2>();
        for (b, p) in bits.iter_mut().zip(pairs) {
            *b = u16::from_le_bytes(*p);
        }
        H::cast(&bits).convert_to_f32_slice(o);
    }
    let (pairs, _) = tail.as_chunks::<2>();
    let mut bits = [0u16; HALF_CHUNK];
    for (b, p) in bits.iter_mut().zip(pairs) {
        *b = u16::from_le_bytes(*p);
    }
    H::cast(&bits[..out_tail.len()]).convert_to_f32_slice(out_tail);
}

/// The two 16-bit float types, reinterpreted from their bits.
trait HalfBits: Sized {
    fn cast(bits: &[u16]) -> &[Self];
}

impl HalfBits for f16 {
    fn cast(bits: &[u16]) -> &[Self] {
        bits.reinterpret_cast::<f16>()
    }
}

impl HalfBits for bf16 {
    fn cast(bits: &[u16]) -> &[Self] {
        bits.reinterpret_cast::<bf16>()
    }
}

/// `N` f16 values from their little-endian bytes, converted in one call.
#[inline(always)]
fn f16s<const N: usize>(bits: [u16; N]) -> [f32; N] {
    let mut out = [0f32; N];
    bits.reinterpret_cast::<f16>()
        .convert_to_f32_slice(&mut out);
    out
}

/// One f16 from two little-endian bytes.
#[inline(always)]
fn f16_at(lo: u8, hi: u8) -> f32 {
    f16::from_le_bytes([lo, hi]).to_f32()
}

/// Not part of the API: the decoder under the GGML dtype's name, for the crate's benchmark example.
pub mod bench {
    use candle_core::quantized::GgmlDType;

    /// The crate's `quant::dequantize` for a candle dtype: `Ok(false)` for a dtype it does not decode.
    pub fn dequantize(t: GgmlDType, bytes: &[u8], out: &mut [f32]) -> crate::Result<bool> {
        match super::QuantType::from_ggml(t) {
            Some(ty) => super::dequantize(ty, bytes, out).map(|()| true),
            None => Ok(false),
        }
    }
}

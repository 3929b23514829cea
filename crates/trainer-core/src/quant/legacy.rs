//! The 32-value block types (`Q4_0 Q4_1 Q5_0 Q5_1 Q8_0`): llama.cpp's `dequantize_row_q*` (ggml-quants.c), with
//! the same float operations in the same order as candle's `to_float`, so results are bit-identical.
//!
//! Each block starts with its f16 scale `d` (and, for the `_1` types, its f16 offset `m`); the scales of
//! [`GROUP`] blocks are converted in one call of `half`'s slice conversion.

use super::{f16_at, f16s};

pub(super) const Q4_0_BYTES: usize = 18;
pub(super) const Q4_1_BYTES: usize = 20;
pub(super) const Q5_0_BYTES: usize = 22;
pub(super) const Q5_1_BYTES: usize = 24;
pub(super) const Q8_0_BYTES: usize = 34;

const QK: usize = 32;
/// Blocks whose scales are converted together.
const GROUP: usize = 8;

/// Runs `decode(block, d, m, out)` over the blocks of `bytes`; `m` is the block's f16 at byte 2 when `WITH_M`
/// (`Q4_1`, `Q5_1`), 0 otherwise.
#[inline(always)]
fn blocks<const B: usize, const WITH_M: bool>(
    bytes: &[u8],
    out: &mut [f32],
    decode: impl Fn(&[u8; B], f32, f32, &mut [f32; QK]),
) {
    let (blocks, _) = bytes.as_chunks::<B>();
    let (outs, _) = out.as_chunks_mut::<QK>();
    let mut bi = blocks.chunks_exact(GROUP);
    let mut oi = outs.chunks_exact_mut(GROUP);
    for (bg, og) in (&mut bi).zip(&mut oi) {
        let mut dbits = [0u16; GROUP];
        let mut mbits = [0u16; GROUP];
        for ((db, mb), b) in dbits.iter_mut().zip(&mut mbits).zip(bg) {
            *db = u16::from_le_bytes([b[0], b[1]]);
            if WITH_M {
                *mb = u16::from_le_bytes([b[2], b[3]]);
            }
        }
        let ds = f16s(dbits);
        let ms = if WITH_M { f16s(mbits) } else { [0.0; GROUP] };
        for (((b, o), d), m) in bg.iter().zip(og).zip(ds).zip(ms) {
            decode(b, d, m, o);
        }
    }
    for (b, o) in bi.remainder().iter().zip(oi.into_remainder()) {
        let m = if WITH_M { f16_at(b[2], b[3]) } else { 0.0 };
        decode(b, f16_at(b[0], b[1]), m, o);
    }
}

/// `d * (q - 8)`, q the 4-bit value; low nibbles are values 0..16, high nibbles 16..32.
pub(super) fn q4_0(bytes: &[u8], out: &mut [f32]) {
    blocks::<Q4_0_BYTES, false>(bytes, out, |b, d, _, o| {
        let [_, _, qs @ ..] = b;
        for j in 0..16 {
            o[j] = f32::from(i16::from(qs[j] & 0x0F) - 8) * d;
            o[j + 16] = f32::from(i16::from(qs[j] >> 4) - 8) * d;
        }
    });
}

/// `d * q + m`.
pub(super) fn q4_1(bytes: &[u8], out: &mut [f32]) {
    blocks::<Q4_1_BYTES, true>(bytes, out, |b, d, m, o| {
        let [_, _, _, _, qs @ ..] = b;
        for j in 0..16 {
            o[j] = f32::from(qs[j] & 0x0F) * d + m;
            o[j + 16] = f32::from(qs[j] >> 4) * d + m;
        }
    });
}

/// The fifth bits of a Q5 block as 16 or 0 per value (bit `j` of the little-endian `qh` for value `j`),
/// spread a byte at a time without per-value shifts: multiplying by `0x0101..` copies the byte into every lane,
/// the mask keeps bit `i` in lane `i`, and adding `0x7F` carries any set bit into the lane's top bit.
#[inline(always)]
fn high_bits(qh: [u8; 4]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, b) in out.chunks_exact_mut(8).zip(qh) {
        let spread = (u64::from(b) * 0x0101_0101_0101_0101) & 0x8040_2010_0804_0201;
        let ones = ((spread + 0x7F7F_7F7F_7F7F_7F7F) >> 7) & 0x0101_0101_0101_0101;
        o.copy_from_slice(&(ones << 4).to_le_bytes());
    }
    out
}

/// `d * (q - 16)`.
pub(super) fn q5_0(bytes: &[u8], out: &mut [f32]) {
    blocks::<Q5_0_BYTES, false>(bytes, out, |b, d, _, o| {
        let [_, _, h0, h1, h2, h3, qs @ ..] = b;
        let hb = high_bits([*h0, *h1, *h2, *h3]);
        for j in 0..16 {
            let x0 = (qs[j] & 0x0F) | hb[j];
            let x1 = (qs[j] >> 4) | hb[j + 16];
            o[j] = f32::from(i16::from(x0) - 16) * d;
            o[j + 16] = f32::from(i16::from(x1) - 16) * d;
        }
    });
}

/// `d * q + m`.
pub(super) fn q5_1(bytes: &[u8], out: &mut [f32]) {
    blocks::<Q5_1_BYTES, true>(bytes, out, |b, d, m, o| {
        let [_, _, _, _, h0, h1, h2, h3, qs @ ..] = b;
        let hb = high_bits([*h0, *h1, *h2, *h3]);
        for j in 0..16 {
            let x0 = (qs[j] & 0x0F) | hb[j];
            let x1 = (qs[j] >> 4) | hb[j + 16];
            o[j] = f32::from(x0) * d + m;
            o[j + 16] = f32::from(x1) * d + m;
        }
    });
}

/// `q * d`, q a signed byte.
pub(super) fn q8_0(bytes: &[u8], out: &mut [f32]) {
    blocks::<Q8_0_BYTES, false>(bytes, out, |b, d, _, o| {
        let [_, _, qs @ ..] = b;
        for (y, q) in o.iter_mut().zip(qs) {
            *y = f32::from(*q as i8) * d;
        }
    });
}

//! The 256-value K-quant super-blocks (`Q2_K Q3_K Q4_K Q5_K Q6_K`): llama.cpp's `dequantize_row_q*_K`
//! (ggml-quants.c), with the same float operations in the same order as candle's `to_float`, so results are
//! bit-identical. Byte layouts are llama.cpp's `block_q*_K` structs (ggml-common.h).

use super::f16_at;

pub(super) const Q2K_BYTES: usize = 84;
pub(super) const Q3K_BYTES: usize = 110;
pub(super) const Q4K_BYTES: usize = 144;
pub(super) const Q5K_BYTES: usize = 176;
pub(super) const Q6K_BYTES: usize = 210;

const QK_K: usize = 256;

#[inline(always)]
fn blocks<const B: usize>(
    bytes: &[u8],
    out: &mut [f32],
    decode: impl Fn(&[u8; B], &mut [f32; QK_K]),
) {
    let (blocks, _) = bytes.as_chunks::<B>();
    let (outs, _) = out.as_chunks_mut::<QK_K>();
    for (b, o) in blocks.iter().zip(outs) {
        decode(b, o);
    }
}

/// `[u8; N]` at `at` in a block (`at + N` is within the block by construction; the index checks fold away).
#[inline(always)]
fn part<const B: usize, const N: usize>(b: &[u8; B], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

/// Q2_K: `scales[16] qs[64] d dmin`. Element `128h + 32j + l` is `dl * q - ml` with `q = (qs[32h + l] >> 2j) & 3`
/// and sub-block `8h + 2j + l / 16`: `dl = d * (sc & 15)`, `ml = dmin * (sc >> 4)`.
pub(super) fn q2k(bytes: &[u8], out: &mut [f32]) {
    blocks::<Q2K_BYTES>(bytes, out, |b, o| {
        let scales: [u8; 16] = part(b, 0);
        let qs: [u8; 64] = part(b, 16);
        let d = f16_at(b[80], b[81]);
        let min = f16_at(b[82], b[83]);
        let mut dl = [0f32; 16];
        let mut ml = [0f32; 16];
        for ((dl, ml), sc) in dl.iter_mut().zip(&mut ml).zip(scales) {
            *dl = d * f32::from(sc & 0xF);
            *ml = min * f32::from(sc >> 4);
        }
        for h in 0..2 {
            for j in 0..4 {
                for l in 0..32 {
                    let s = 8 * h + 2 * j + l / 16;
                    let q = (qs[32 * h + l] >> (2 * j)) & 3;
                    o[128 * h + 32 * j + l] = dl[s] * f32::from(q) - ml[s];
                }
            }
        }
    });
}

/// Q3_K: `hmask[32] qs[64] scales[12] d`. Sixteen 6-bit scales (biased by 32) are packed in 12 bytes; element
/// `128h + 32j + l` is `d * (sc - 32) * q` with `q = ((qs[32h + l] >> 2j) & 3) - 4` plus 4 when bit `4h + j` of
/// `hmask[l]` is set.
pub(super) fn q3k(bytes: &[u8], out: &mut [f32]) {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    blocks::<Q3K_BYTES>(bytes, out, |b, o| {
        let hmask: [u8; 32] = part(b, 0);
        let qs: [u8; 64] = part(b, 32);
        let packed: [u8; 12] = part(b, 96);
        let d = f16_at(b[108], b[109]);
        let word = |i: usize| {
            u32::from_le_bytes([
                packed[4 * i],
                packed[4 * i + 1],
                packed[4 * i + 2],
                packed[4 * i + 3],
            ])
        };
        let (a0, a1, tmp) = (word(0), word(1), word(2));
        let aux = [
            (a0 & KMASK2) | ((tmp & KMASK1) << 4),
            (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
            ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
            ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
        ];
        let mut dl = [0f32; 16];
        for (i, dl) in dl.iter_mut().enumerate() {
            let sc = aux[i / 4].to_le_bytes()[i % 4] as i8;
            *dl = d * (f32::from(sc) - 32.0);
        }
        for h in 0..2 {
            for j in 0..4 {
                for l in 0..32 {
                    let s = 8 * h + 2 * j + l / 16;
                    let low = (qs[32 * h + l] >> (2 * j)) & 3;
                    let high = (hmask[l] >> (4 * h + j)) & 1;
                    let q = (low | (high << 2)) as i8 - 4;
                    o[128 * h + 32 * j + l] = dl[s] * f32::from(q);
                }
            }
        }
    });
}

/// The eight 6-bit scales and mins of Q4_K / Q5_K (llama.cpp's `get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xF) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// The per-sub-block `d * sc` and `dmin * m` of Q4_K / Q5_K.
#[inline(always)]
fn scales_k4(b: &[u8], packed: &[u8; 12]) -> ([f32; 8], [f32; 8]) {
    let d = f16_at(b[0], b[1]);
    let min = f16_at(b[2], b[3]);
    let (sc, m) = scale_min_k4(packed);
    let mut dl = [0f32; 8];
    let mut ml = [0f32; 8];
    for i in 0..8 {
        dl[i] = d * f32::from(sc[i]);
        ml[i] = min * f32::from(m[i]);
    }
    (dl, ml)
}

/// Q4_K: `d dmin scales[12] qs[128]`. Element `64j + l` (`l < 32`) is `dl[2j] * (qs[32j + l] & 15) - ml[2j]`,
/// element `64j + 32 + l` the same with the high nibble and sub-block `2j + 1`.
pub(super) fn q4k(bytes: &[u8], out: &mut [f32]) {
    blocks::<Q4K_BYTES>(bytes, out, |b, o| {
        let packed: [u8; 12] = part(b, 4);
        let qs: [u8; 128] = part(b, 16);
        let (dl, ml) = scales_k4(b, &packed);
        for j in 0..4 {
            for l in 0..32 {
                let q = qs[32 * j + l];
                o[64 * j + l] = dl[2 * j] * f32::from(q & 0xF) - ml[2 * j];
                o[64 * j + 32 + l] = dl[2 * j + 1] * f32::from(q >> 4) - ml[2 * j + 1];
            }
        }
    });
}

/// Q5_K: `d dmin scales[12] qh[32] qs[128]`: Q4_K's nibbles plus a fifth bit, bit `2j` (`2j + 1` for the high
/// nibble) of `qh[l]`.
pub(super) fn q5k(bytes: &[u8], out: &mut [f32]) {
    blocks::<Q5K_BYTES>(bytes, out, |b, o| {
        let packed: [u8; 12] = part(b, 4);
        let qh: [u8; 32] = part(b, 16);
        let qs: [u8; 128] = part(b, 48);
        let (dl, ml) = scales_k4(b, &packed);
        for j in 0..4 {
            for l in 0..32 {
                let q = qs[32 * j + l];
                let h = qh[l] >> (2 * j);
                let lo = (q & 0xF) | ((h & 1) << 4);
                let hi = (q >> 4) | ((h & 2) << 3);
                o[64 * j + l] = dl[2 * j] * f32::from(lo) - ml[2 * j];
                o[64 * j + 32 + l] = dl[2 * j + 1] * f32::from(hi) - ml[2 * j + 1];
            }
        }
    });
}

/// Q6_K: `ql[128] qh[64] scales[16] (i8) d`. In each half `h`, element `128h + 32k + l` is
/// `(d * scales[8h + 2k + l / 16]) * (q - 32)`, `q` a nibble of `ql` plus two bits of `qh[32h + l]`.
pub(super) fn q6k(bytes: &[u8], out: &mut [f32]) {
    blocks::<Q6K_BYTES>(bytes, out, |b, o| {
        let ql: [u8; 128] = part(b, 0);
        let qh: [u8; 64] = part(b, 128);
        let scales: [u8; 16] = part(b, 192);
        let d = f16_at(b[208], b[209]);
        let mut ds = [0f32; 16];
        for (ds, s) in ds.iter_mut().zip(scales) {
            *ds = d * f32::from(s as i8);
        }
        for h in 0..2 {
            for l in 0..32 {
                let lo0 = ql[64 * h + l];
                let lo1 = ql[64 * h + l + 32];
                let hb = qh[32 * h + l];
                let q = [
                    (lo0 & 0xF) | ((hb & 3) << 4),
                    (lo1 & 0xF) | (((hb >> 2) & 3) << 4),
                    (lo0 >> 4) | (((hb >> 4) & 3) << 4),
                    (lo1 >> 4) | (((hb >> 6) & 3) << 4),
                ];
                for (k, q) in q.into_iter().enumerate() {
                    let s = 8 * h + 2 * k + l / 16;
                    o[128 * h + 32 * k + l] = ds[s] * f32::from(q as i8 - 32);
                }
            }
        }
    });
}

//! The decoders against candle's, quantization round trips, ranges and length errors.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use proptest::prelude::*;

use super::{dequantize, quantize, QuantType};
use crate::rng::Rng;

/// Byte offsets of the f16 scales in a block (every value for the 16-bit float types).
fn f16_offsets(ty: QuantType) -> &'static [usize] {
    match ty {
        QuantType::F32 | QuantType::F16 | QuantType::BF16 => &[],
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => &[0, 2],
        QuantType::Q2K => &[80, 82],
        QuantType::Q3K => &[108],
        QuantType::Q6K => &[208],
    }
}

/// Random blocks whose floats (scales, or the values of the float types) are finite.
fn random_blocks(ty: QuantType, blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let n = blocks * ty.block_bytes();
    let mut bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    let finite16 = |b: &mut [u8], exp: u16| {
        let v = u16::from_le_bytes([b[0], b[1]]);
        // An all-ones exponent is inf/NaN: clear its top bit.
        let v = if v & exp == exp {
            v & !(exp & !(exp >> 1))
        } else {
            v
        };
        b.copy_from_slice(&v.to_le_bytes());
    };
    match ty {
        QuantType::F16 => bytes.chunks_exact_mut(2).for_each(|b| finite16(b, 0x7C00)),
        QuantType::BF16 => bytes.chunks_exact_mut(2).for_each(|b| finite16(b, 0x7F80)),
        QuantType::F32 => bytes.chunks_exact_mut(4).for_each(|b| {
            let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let v = if v & 0x7F80_0000 == 0x7F80_0000 {
                v & !0x4000_0000
            } else {
                v
            };
            b.copy_from_slice(&v.to_le_bytes());
        }),
        _ => {
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                for &at in f16_offsets(ty) {
                    finite16(&mut block[at..at + 2], 0x7C00);
                }
            }
        }
    }
    bytes
}

fn candle_dequantize(ty: QuantType, bytes: &[u8], n: usize) -> Vec<f32> {
    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, ty.to_ggml()).unwrap();
    QTensor::new(storage, (n,))
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn ours(ty: QuantType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequantize(ty, bytes, &mut out).unwrap();
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Random values: uniform in `±scale`, with an outlier every `outlier_every` values when that is non-zero.
fn random_values(n: usize, scale: f32, outlier_every: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v = (2.0 * rng.next_f32() - 1.0) * scale;
            if outlier_every > 0 && i % outlier_every == outlier_every / 2 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

/// Bits per value of a quantized type (the float types are checked per value instead).
fn quant_bits(ty: QuantType) -> Option<i32> {
    match ty {
        QuantType::F32 | QuantType::F16 | QuantType::BF16 => None,
        QuantType::Q2K => Some(2),
        QuantType::Q3K => Some(3),
        QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q4K => Some(4),
        QuantType::Q5_0 | QuantType::Q5_1 | QuantType::Q5K => Some(5),
        QuantType::Q6K => Some(6),
        QuantType::Q8_0 => Some(8),
    }
}

/// Checks a quantize -> dequantize round trip against the type's known error. For `b`-bit types, per 256 values
/// with largest magnitude `amax`, the grid step is `2 amax / (2^b - 1)`: uniform rounding on it has RMS error
/// `step / sqrt(12)` and a largest error of half a step. The stored scales are rounded too (f16, and 4 to 8-bit
/// sub-block scales in the K-quants), the 32-value types clamp one extreme to the grid, and the K-quants search
/// their scales for the least squared error, which can leave a single value further off; measured over 4800
/// blocks of uniform values with and without outliers, the worst were 1.11 steps (Q6_K) and an RMS of 1.14
/// `step / sqrt(12)` (Q4_0). The bounds are 1.25 steps and 1.3 `step / sqrt(12)`. The floats round each value
/// to nearest: half an ulp, relative `2^-11` (F16; absolute `2^-25` below its normal range) or `2^-8` (BF16).
fn check_round_trip(ty: QuantType, values: &[f32]) -> std::result::Result<(), String> {
    let mut bytes = Vec::new();
    quantize(ty, values, &mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() != ty.row_bytes(values.len()).map_err(|e| e.to_string())? {
        return Err(format!("{}: {} bytes", ty.name(), bytes.len()));
    }
    let back = ours(ty, &bytes, values.len());
    let Some(b) = quant_bits(ty) else {
        for (x, y) in values.iter().zip(&back) {
            let bound = match ty {
                QuantType::F32 => 0.0,
                QuantType::F16 => (x.abs() * 2f32.powi(-11)).max(2f32.powi(-25)),
                _ => x.abs() * 2f32.powi(-8),
            };
            if (x - y).abs() > bound {
                return Err(format!("{}: {x} came back as {y}", ty.name()));
            }
        }
        return Ok(());
    };
    for (i, (x, y)) in values.chunks(256).zip(back.chunks(256)).enumerate() {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let step = 2.0 * amax / ((1u32 << b) - 1) as f32;
        let worst = x.iter().zip(y).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let rms = (x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / 256.0).sqrt();
        if worst > 1.25 * step || rms > 1.3 * step / 12f32.sqrt() {
            return Err(format!(
                "{}: block {i}: largest error {} steps, rms {} step/sqrt(12)",
                ty.name(),
                worst / step,
                rms / step * 12f32.sqrt()
            ));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn random_blocks_decode_bit_identically_to_candle(seed in any::<u64>(), blocks in 1usize..12) {
        let mut rng = Rng::new(seed);
        for ty in QuantType::ALL {
            // The float types convert 64 values at a time: cover whole chunks and a tail.
            let blocks = if ty.block_len() == 1 { blocks * 29 } else { blocks };
            let n = blocks * ty.block_len();
            let bytes = random_blocks(ty, blocks, &mut rng);
            let want = candle_dequantize(ty, &bytes, n);
            prop_assert_eq!(bits(&ours(ty, &bytes, n)), bits(&want), "{}", ty.name());
        }
    }

    #[test]
    fn a_block_range_decodes_as_that_range_of_the_row(
        seed in any::<u64>(),
        blocks in 1usize..20,
        a in 0usize..20,
        b in 0usize..20,
    ) {
        let mut rng = Rng::new(seed);
        let (lo, hi) = (a.min(b) % blocks, (a.max(b) % blocks) + 1);
        let (lo, hi) = (lo.min(hi - 1), hi);
        for ty in QuantType::ALL {
            let (bl, bb) = (ty.block_len(), ty.block_bytes());
            let bytes = random_blocks(ty, blocks, &mut rng);
            let row = ours(ty, &bytes, blocks * bl);
            let part = ours(ty, &bytes[lo * bb..hi * bb], (hi - lo) * bl);
            prop_assert_eq!(bits(&part), bits(&row[lo * bl..hi * bl]), "{}", ty.name());
        }
    }

    #[test]
    fn quantize_then_dequantize_stays_within_the_type_error(
        seed in any::<u64>(),
        blocks in 1usize..6,
        scale_exp in -6i32..6,
        outlier_every in prop::sample::select(vec![0usize, 7, 64, 256]),
    ) {
        let mut rng = Rng::new(seed);
        let values = random_values(blocks * 256, 2f32.powi(scale_exp), outlier_every, &mut rng);
        for ty in QuantType::ALL {
            if let Err(e) = check_round_trip(ty, &values) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}

#[test]
fn sizes_and_names_agree_with_candle() {
    for ty in QuantType::ALL {
        let g = ty.to_ggml();
        assert_eq!(QuantType::from_ggml(g), Some(ty));
        assert_eq!(ty.block_len(), g.block_size(), "{}", ty.name());
        assert_eq!(ty.block_bytes(), g.type_size(), "{}", ty.name());
        assert_eq!(
            ty.row_bytes(4096).unwrap(),
            4096 / g.block_size() * g.type_size()
        );
    }
    assert_eq!(QuantType::from_ggml(GgmlDType::Q8_1), None);
    assert_eq!(QuantType::from_ggml(GgmlDType::Q8K), None);
    let names: Vec<&str> = QuantType::ALL.iter().map(|t| t.name()).collect();
    assert_eq!(
        names,
        [
            "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
            "Q5_K", "Q6_K"
        ]
    );
}

#[test]
fn wrong_lengths_are_errors() {
    for ty in QuantType::ALL {
        let (bl, bb) = (ty.block_len(), ty.block_bytes());
        let bytes = vec![0u8; 2 * bb];
        // Right: two blocks.
        dequantize(ty, &bytes, &mut vec![0.0; 2 * bl]).unwrap();
        // One block too many or too few bytes.
        let e = dequantize(ty, &bytes[..bb], &mut vec![0.0; 2 * bl]).unwrap_err();
        assert!(e.to_string().contains(ty.name()), "{e}");
        dequantize(
            ty,
            &[bytes.clone(), bytes.clone()].concat(),
            &mut vec![0.0; 2 * bl],
        )
        .unwrap_err();
        if bl > 1 {
            // A partial block.
            let e = dequantize(ty, &bytes, &mut vec![0.0; 2 * bl - 1]).unwrap_err();
            assert!(e.to_string().contains("block length"), "{e}");
            let e = quantize(ty, &vec![0.5; bl + 1], &mut Vec::new()).unwrap_err();
            assert!(e.to_string().contains("block length"), "{e}");
            let e = ty.row_bytes(bl + 16).unwrap_err();
            assert!(e.to_string().contains(ty.name()), "{e}");
        } else {
            // A stray byte.
            dequantize(ty, &bytes[..2 * bb - 1], &mut [0.0; 2]).unwrap_err();
        }
    }
    // Nothing to do is fine.
    dequantize(QuantType::Q4K, &[], &mut []).unwrap();
    let mut out = Vec::new();
    quantize(QuantType::Q4K, &[], &mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn quantize_appends_candle_blocks() {
    let mut rng = Rng::new(7);
    let values = rng.uniform(512, -1.0, 1.0);
    for ty in QuantType::ALL {
        let mut out = vec![0xAB];
        quantize(ty, &values, &mut out).unwrap();
        let t = candle_core::Tensor::from_slice(&values, 512, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, ty.to_ggml()).unwrap();
        assert_eq!(out[0], 0xAB);
        assert_eq!(&out[1..], &q.data().unwrap()[..], "{}", ty.name());
    }
}

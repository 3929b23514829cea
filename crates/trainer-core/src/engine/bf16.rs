//! A matrix product of bf16 inputs with f32 accumulation (`C = A · B`), on AVX-512 BF16 (`vdpbf16ps`) where the
//! CPU has it, else in plain Rust: the second and last place in trainer-core that needs `unsafe` (the intrinsics),
//! behind safe functions that check every size first. Measured against the f32 GEMM by the `bench_bf16` example;
//! not used by training (see docs/performance.md).
//!
//! Layout: `A` is row-major bf16 `[m, kp]` (`kp` = `k` rounded up to even, the pad 0); `B` is packed once into
//! [`PackedB`]: column blocks of [`NR`] columns, and in each block, for each pair of rows `(2p, 2p + 1)`, the
//! [`NR`] column pairs interleaved (`b[2p][j], b[2p + 1][j]`), which is what `vdpbf16ps` multiplies with a
//! broadcast pair of `A`.

#![allow(unsafe_code)]

use candle_core::Result;
use rayon::prelude::*;

/// Columns per packed block (three 16-lane vectors).
pub(crate) const NR: usize = 48;
/// Rows per micro-kernel call.
const MR: usize = 8;
/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// f32 to bf16, rounding to nearest even (NaN kept a NaN).
fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

fn f32_of(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `B` `[k, n]` packed for the product (see the module docs).
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    data: Vec<u16>,
}

impl PackedB {
    /// Packs `B` given element-wise (`at(row, col)`, `row < k`, `col < n`); `n` is padded to whole blocks.
    pub(crate) fn new(k: usize, n: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        let pairs = k.div_ceil(2);
        let blocks = n.div_ceil(NR);
        let mut data = vec![0u16; blocks * pairs * NR * 2];
        for (jb, block) in data.chunks_mut(pairs * NR * 2).enumerate() {
            for (p, row) in block.chunks_mut(NR * 2).enumerate() {
                for j in 0..NR {
                    let col = jb * NR + j;
                    if col < n {
                        row[2 * j] = bf16(at(2 * p, col));
                        if 2 * p + 1 < k {
                            row[2 * j + 1] = bf16(at(2 * p + 1, col));
                        }
                    }
                }
            }
        }
        Self { k, n, data }
    }
}

/// Converts row-major f32 `[m, k]` into bf16 rows of `k` rounded up to even (the pad 0) in `out`.
pub(crate) fn rows_to_bf16(a: &[f32], k: usize, out: &mut Vec<u16>) {
    let kp = k.div_ceil(2) * 2;
    let m = a.len() / k.max(1);
    out.resize(m * kp, 0);
    out.par_chunks_mut(kp)
        .zip(a.par_chunks(k.max(1)))
        .for_each(|(o, r)| {
            for (o, &x) in o.iter_mut().zip(r) {
                *o = bf16(x);
            }
            o[k..].fill(0);
        });
}

/// `c[m, n] = a[m, k] · b` with `a` from [`rows_to_bf16`]; fails when a size does not match.
pub(crate) fn matmul(c: &mut [f32], a: &[u16], m: usize, b: &PackedB) -> Result<()> {
    let (k, n) = (b.k, b.n);
    let kp = k.div_ceil(2) * 2;
    if a.len() != m * kp || c.len() != m * n {
        candle_core::bail!("bf16 matmul: sizes do not match ({m}x{n}x{k}) (a bug)")
    }
    let fast = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16");
    c.par_chunks_mut(ROWS_PER_TASK * n.max(1))
        .zip(a.par_chunks(ROWS_PER_TASK * kp.max(1)))
        .for_each(|(c, a)| {
            let rows = c.len() / n.max(1);
            for jb in 0..n.div_ceil(NR) {
                let bb = &b.data[jb * (kp / 2) * NR * 2..][..(kp / 2) * NR * 2];
                let mut i = 0;
                while i < rows {
                    let r = MR.min(rows - i);
                    if fast && r == MR && (jb + 1) * NR <= n {
                        // SAFETY: the CPU has AVX-512F and AVX-512 BF16 (checked above); `a` holds `MR` rows of
                        // `kp` values from row `i`, `bb` holds `kp / 2 · NR · 2` values, and `c` holds `MR` rows of
                        // `n` values from row `i` with the `NR` columns from `jb · NR` inside them (all checked
                        // against the slice lengths by the indexing below before the call).
                        let (a_rows, c_rows) =
                            (&a[i * kp..(i + MR) * kp], &mut c[i * n..(i + MR) * n]);
                        unsafe { kernel(a_rows, bb, c_rows, kp, n, jb * NR) };
                    } else {
                        scalar(
                            &a[i * kp..(i + r) * kp],
                            bb,
                            &mut c[i * n..(i + r) * n],
                            kp,
                            n,
                            jb,
                        );
                    }
                    i += r;
                }
            }
        });
    Ok(())
}

/// The product of rows of `a` with one packed block `bb` into columns `jb · NR ..` of `c`, in plain Rust.
fn scalar(a: &[u16], bb: &[u16], c: &mut [f32], kp: usize, n: usize, jb: usize) {
    for (ar, cr) in a.chunks(kp).zip(c.chunks_mut(n)) {
        for j in 0..NR.min(n - jb * NR) {
            let mut s = 0f32;
            for p in 0..kp / 2 {
                let b = &bb[p * NR * 2 + 2 * j..];
                s += f32_of(ar[2 * p]) * f32_of(b[0]) + f32_of(ar[2 * p + 1]) * f32_of(b[1]);
            }
            cr[jb * NR + j] = s;
        }
    }
}

/// `MR` rows × `NR` columns with `vdpbf16ps`: 24 accumulators, three `B` vectors and one broadcast per pair.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(a: &[u16], bb: &[u16], c: &mut [f32], kp: usize, n: usize, col: usize) {
    use std::arch::x86_64::*;
    assert!(
        a.len() >= MR * kp && bb.len() >= kp / 2 * NR * 2 && c.len() >= (MR - 1) * n + col + NR
    );
    let mut acc = [[_mm512_setzero_ps(); 3]; MR];
    let (ap, bp) = (a.as_ptr(), bb.as_ptr());
    for p in 0..kp / 2 {
        // SAFETY (all loads): p < kp / 2, so `bp + p · 2NR + 64` and `ap + r · kp + 2p + 2` stay inside the
        // slices asserted above.
        let b0 = _mm512_loadu_si512(bp.add(p * NR * 2) as *const _);
        let b1 = _mm512_loadu_si512(bp.add(p * NR * 2 + 32) as *const _);
        let b2 = _mm512_loadu_si512(bp.add(p * NR * 2 + 64) as *const _);
        let (b0, b1, b2): (__m512bh, __m512bh, __m512bh) = (
            std::mem::transmute::<__m512i, __m512bh>(b0),
            std::mem::transmute::<__m512i, __m512bh>(b1),
            std::mem::transmute::<__m512i, __m512bh>(b2),
        );
        for (r, acc) in acc.iter_mut().enumerate() {
            let pair = (ap.add(r * kp + 2 * p) as *const u32).read_unaligned();
            let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
            acc[2] = _mm512_dpbf16_ps(acc[2], x, b2);
        }
    }
    let cp = c.as_mut_ptr();
    for (r, acc) in acc.iter().enumerate() {
        for (v, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(cp.add(r * n + col + 16 * v), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The product equals the f32 product of the bf16-rounded inputs (up to f32 summation order), on the
        /// vector kernel and the scalar edges alike.
        #[test]
        fn matches_the_f32_product_of_the_rounded_inputs(
            m in 1usize..40, n in 1usize..120, k in 1usize..70, seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let a = rng.uniform(m * k, -1.0, 1.0);
            let b = rng.uniform(k * n, -1.0, 1.0);
            let mut a16 = Vec::new();
            rows_to_bf16(&a, k, &mut a16);
            let packed = PackedB::new(k, n, |r, c| b[r * n + c]);
            let mut c = vec![f32::NAN; m * n];
            matmul(&mut c, &a16, m, &packed).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|l| f32_of(bf16(a[i * k + l])) * f32_of(bf16(b[l * n + j]))).sum();
                    prop_assert!((c[i * n + j] - want).abs() < 1e-4 * (k as f32), "{} vs {want}", c[i * n + j]);
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3F80);
        assert_eq!(bf16(f32::from_bits(0x3F80_8000)), 0x3F80); // tie, even stays
        assert_eq!(bf16(f32::from_bits(0x3F81_8000)), 0x3F82); // tie, odd rounds up
        assert!(f32_of(bf16(f32::NAN)).is_nan());
    }
}

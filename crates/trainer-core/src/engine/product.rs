//! Products with a frozen weight matrix in its stored form: forward `x · Wᵀ` and backward `g · W`.
//!
//! An f32 matrix is read in place. A packed one (f16, bf16, quantized blocks) is expanded a panel at a time into
//! one reused buffer, and each panel goes through the same GEMM as the f32 path: rows of W for `x · Wᵀ` (each
//! output column still sums over all of W's columns), and block-aligned column panels of W for `g · W` (each
//! output element still sums over all of W's rows in one product), so the sums have the f32 path's terms and
//! order. No f32 copy of a whole matrix is ever made.

use candle_core::Result;

use super::gemm::{matmul, Mode, Threads, View};
use super::workspace::Buf;
use crate::matrix::{MatrixRef, RefData};

/// Target size of an expanded panel of a layer's matrix, in f32 values (64 MiB: a whole 4096 × 4096 matrix):
/// fewer, larger products keep the GEMM's workers busier than small panels (a 7B Q4_K step 0.67× as long at 2
/// threads as with 4 MiB panels; docs/performance.md).
pub(crate) const LAYER_PANEL: usize = 1 << 24;
/// Target size of an expanded panel of the output head (16 MiB): its vocabulary-sized matrix would take a
/// [`LAYER_PANEL`] on any model, a large share of a small model's memory.
pub(crate) const HEAD_PANEL: usize = 1 << 22;
/// Narrowest column panel of `g · W`; a matrix whose panels would be narrower is taken in row panels instead.
const MIN_COLUMNS: usize = 256;

/// `y[n, rows] (=|+=) beta · x[n, cols] · Wᵀ`, a packed W expanded in panels of about `target` values.
pub(crate) fn x_wt(
    y: &mut [f32],
    x: &[f32],
    w: MatrixRef,
    n: usize,
    (mode, beta): (Mode, f32),
    panel: &mut Buf,
    target: usize,
) -> Result<()> {
    x_wt_panels(y, x, w, n, (mode, beta), panel, target)
}

/// `d[n, cols] (=|+=) beta · g[n, rows] · W`, a packed W expanded in panels of about `target` values.
pub(crate) fn g_w(
    d: &mut [f32],
    g: &[f32],
    w: MatrixRef,
    n: usize,
    (mode, beta): (Mode, f32),
    panel: &mut Buf,
    target: usize,
) -> Result<()> {
    g_w_panels(d, g, w, n, (mode, beta), panel, target)
}

/// [`x_wt`] with panels of about `target` values.
fn x_wt_panels(
    y: &mut [f32],
    x: &[f32],
    w: MatrixRef,
    n: usize,
    (mode, beta): (Mode, f32),
    panel: &mut Buf,
    target: usize,
) -> Result<()> {
    let (rows, cols) = (w.rows, w.cols);
    if let RefData::F32(v) = w.data {
        return matmul(
            y,
            0,
            rows,
            (n, rows, cols),
            View::rows(x, 0, cols),
            View::rows(v, 0, cols).t(),
            mode,
            beta,
            Threads::Par,
        );
    }
    let step = (target / cols.max(1)).max(1);
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + step).min(rows);
        let p = panel.fit((r1 - r0) * cols);
        w.expand_rows(r0, r1, p)?;
        matmul(
            y,
            r0,
            rows,
            (n, r1 - r0, cols),
            View::rows(x, 0, cols),
            View::rows(p, 0, cols).t(),
            mode,
            beta,
            Threads::Par,
        )?;
        r0 = r1;
    }
    Ok(())
}

/// [`g_w`] with panels of about `target` values.
fn g_w_panels(
    d: &mut [f32],
    g: &[f32],
    w: MatrixRef,
    n: usize,
    (mode, beta): (Mode, f32),
    panel: &mut Buf,
    target: usize,
) -> Result<()> {
    let (rows, cols) = (w.rows, w.cols);
    if let RefData::F32(v) = w.data {
        return matmul(
            d,
            0,
            cols,
            (n, cols, rows),
            View::rows(g, 0, rows),
            View::rows(v, 0, cols),
            mode,
            beta,
            Threads::Par,
        );
    }
    let bl = w.block_len().max(1);
    // Column panels of whole blocks.
    let step = (target / rows.max(1)).max(1).div_ceil(bl) * bl;
    if step < cols.min(MIN_COLUMNS) {
        return g_w_row_panels(d, g, w, n, (mode, beta), panel, target);
    }
    let mut c0 = 0;
    while c0 < cols {
        let c1 = (c0 + step).min(cols);
        let p = panel.fit(rows * (c1 - c0));
        w.expand_cols(c0, c1, p)?;
        matmul(
            d,
            c0,
            cols,
            (n, c1 - c0, rows),
            View::rows(g, 0, rows),
            View::rows(p, 0, c1 - c0),
            mode,
            beta,
            Threads::Par,
        )?;
        c0 = c1;
    }
    Ok(())
}

/// [`g_w`] for a matrix with so many rows that a column panel would be a sliver (an output projection over a
/// large vocabulary): row panels of W, each product added into `d`. The sum over W's rows is then split at the
/// panel boundaries (a rounding difference of ~1e-7 relative from the f32 path's single product).
fn g_w_row_panels(
    d: &mut [f32],
    g: &[f32],
    w: MatrixRef,
    n: usize,
    (mode, beta): (Mode, f32),
    panel: &mut Buf,
    target: usize,
) -> Result<()> {
    let (rows, cols) = (w.rows, w.cols);
    let step = (target / cols.max(1)).max(1);
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + step).min(rows);
        let p = panel.fit((r1 - r0) * cols);
        w.expand_rows(r0, r1, p)?;
        matmul(
            d,
            0,
            cols,
            (n, cols, r1 - r0),
            View::rows(g, r0, rows),
            View::rows(p, 0, cols),
            if r0 == 0 { mode } else { Mode::Add },
            beta,
            Threads::Par,
        )?;
        r0 = r1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{Matrix, Packed};
    use crate::rng::Rng;
    use candle_core::{Device, Tensor};
    use proptest::prelude::*;

    /// bf16 bytes of `v` (truncated), and the f32 values they stand for.
    fn bf16(v: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let bits: Vec<u16> = v.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
        let bytes = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let vals = bits
            .iter()
            .map(|&b| f32::from_bits(u32::from(b) << 16))
            .collect();
        (bytes, vals)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// A packed matrix multiplies exactly like its f32 expansion (both ways), across panel boundaries.
        #[test]
        fn packed_products_equal_the_expanded_f32_products(
            n in 1usize..6, rows in 1usize..40, cols in 1usize..40, seed in any::<u64>(), add in any::<bool>(),
            target in 1usize..200,
        ) {
            let mut rng = Rng::new(seed);
            let (bytes, vals) = bf16(&rng.uniform(rows * cols, -1.0, 1.0));
            let packed = Matrix::packed(Packed::BF16, rows, cols, bytes).unwrap();
            let dense = Matrix::dense(Tensor::from_vec(vals, (rows, cols), &Device::Cpu).unwrap()).unwrap();
            let x = rng.uniform(n * cols, -1.0, 1.0);
            let g = rng.uniform(n * rows, -1.0, 1.0);
            let start_y = rng.uniform(n * rows, -1.0, 1.0);
            let start_d = rng.uniform(n * cols, -1.0, 1.0);
            let mode = if add { Mode::Add } else { Mode::Set };
            let mut panel = Buf::default();
            let run = |m: &Matrix, panel: &mut Buf| {
                let (mut y, mut d) = (start_y.clone(), start_d.clone());
                m.with_ref(|w| {
                    x_wt_panels(&mut y, &x, w, n, (mode, 0.5), panel, target)?;
                    g_w_panels(&mut d, &g, w, n, (mode, 0.5), panel, target)
                }).unwrap();
                (y, d)
            };
            let (ya, da) = run(&packed, &mut panel);
            let (yb, db) = run(&dense, &mut panel);
            for (a, b) in ya.iter().zip(&yb).chain(da.iter().zip(&db)) {
                prop_assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }
}

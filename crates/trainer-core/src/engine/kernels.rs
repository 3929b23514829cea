//! Element-wise and row-wise kernels of the engine, on plain f32 slices, with the same formulas (and the same
//! f64 accumulations) as the fused candle ops of `fused.rs` and `fused_attention.rs`.

use rayon::prelude::*;

/// Rows per parallel task of the row-wise kernels.
const ROWS_PER_TASK: usize = 16;
/// Elements per parallel task of the element-wise kernels.
const ELEMS_PER_TASK: usize = 16 * 1024;

/// RMSNorm of the rows (width `w.len()`) of `x` into `out`, and each row's `1 / rms` into `inv`.
pub(crate) fn rms_forward(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], inv: &mut [f32]) {
    let n = w.len();
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(x.par_chunks(n * ROWS_PER_TASK))
        .zip(inv.par_chunks_mut(ROWS_PER_TASK))
        .for_each(|((o, x), inv)| {
            for ((o, x), inv) in o.chunks_mut(n).zip(x.chunks(n)).zip(inv) {
                let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                let r = 1.0 / ((ss / n as f64) as f32 + eps).sqrt();
                *inv = r;
                for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                    *o = w * (x * r);
                }
            }
        });
}

/// The normalized rows `w ⊙ (x · inv)` of `x` given each row's `1 / rms` (what [`rms_forward`] wrote, bit for bit).
pub(crate) fn rms_apply(x: &[f32], inv: &[f32], w: &[f32], out: &mut [f32]) {
    let n = w.len();
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(x.par_chunks(n * ROWS_PER_TASK))
        .zip(inv.par_chunks(ROWS_PER_TASK))
        .for_each(|((o, x), inv)| {
            for ((o, x), &r) in o.chunks_mut(n).zip(x.chunks(n)).zip(inv) {
                for ((o, x), &w) in o.iter_mut().zip(x).zip(w) {
                    *o = w * (x * r);
                }
            }
        });
}

/// RMSNorm backward: `dx += d rmsnorm(x) / dx · g` for rows of `x` with forward `1 / rms` `inv`.
pub(crate) fn rms_backward(g: &[f32], x: &[f32], inv: &[f32], w: &[f32], dx: &mut [f32]) {
    let n = w.len();
    dx.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(x.par_chunks(n * ROWS_PER_TASK))
        .zip(g.par_chunks(n * ROWS_PER_TASK))
        .zip(inv.par_chunks(ROWS_PER_TASK))
        .for_each(|(((dx, x), g), inv)| {
            for (((dx, x), g), &r) in dx.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)).zip(inv) {
                let m: f64 = x
                    .iter()
                    .zip(g)
                    .zip(w)
                    .map(|((&x, &g), &w)| f64::from(g * w) * f64::from(x))
                    .sum();
                let c = r * r * r * (m / n as f64) as f32;
                for (((d, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                    *d += r * (g * w) - x * c;
                }
            }
        });
}

/// Rotary embedding (Hugging Face's rotate-half layout) applied in place to rows `[N, heads · hd]` whose position is
/// the row index modulo `t`; `cos`/`sin` are `[t, hd / 2]`. `inverse` rotates back (the backward pass).
pub(crate) fn rope(
    x: &mut [f32],
    width: usize,
    hd: usize,
    t: usize,
    cos: &[f32],
    sin: &[f32],
    inverse: bool,
) {
    let half = hd / 2;
    x.par_chunks_mut(width * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, rows)| {
            for (i, row) in rows.chunks_mut(width).enumerate() {
                let pos = (task * ROWS_PER_TASK + i) % t;
                let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
                for head in row.chunks_mut(hd) {
                    let (x1, x2) = head.split_at_mut(half);
                    for j in 0..half {
                        let (a, b) = (x1[j], x2[j]);
                        let sj = if inverse { -s[j] } else { s[j] };
                        x1[j] = a * c[j] - b * sj;
                        x2[j] = a * sj + b * c[j];
                    }
                }
            }
        });
}

/// Causal softmax of `scale · s` in place over rows of length `t` of a score block whose first row is query
/// position `first` (row `i` keeps columns `0..=i`, the rest become 0). Sums in f64.
pub(crate) fn causal_softmax(s: &mut [f32], t: usize, first: usize, scale: f32) {
    for (r, row) in s.chunks_mut(t).enumerate() {
        let i = first + r;
        let (live, dead) = row.split_at_mut(i + 1);
        let max = live
            .iter()
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
        let mut sum = 0f64;
        for v in live.iter_mut() {
            *v = (*v * scale - max).exp();
            sum += f64::from(*v);
        }
        let inv = (1.0 / sum) as f32;
        live.iter_mut().for_each(|v| *v *= inv);
        dead.fill(0.0);
    }
}

/// Causal softmax backward in place over one `[t, t]` block: `dp` (the gradient of the probabilities `p`) becomes
/// the gradient of the raw scores, `scale · p · (dp - Σ p·dp)`; masked entries become 0.
pub(crate) fn causal_softmax_backward(dp: &mut [f32], p: &[f32], t: usize, scale: f32) {
    for (i, (d, p)) in dp.chunks_mut(t).zip(p.chunks(t)).enumerate() {
        let n = i + 1;
        let dot: f32 = p[..n].iter().zip(&d[..n]).map(|(p, g)| p * g).sum();
        for (d, &p) in d[..n].iter_mut().zip(&p[..n]) {
            *d = scale * p * (*d - dot);
        }
        d[n..].fill(0.0);
    }
}

/// `silu(gate) · up` into `out`.
pub(crate) fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(ELEMS_PER_TASK)
        .zip(
            gate.par_chunks(ELEMS_PER_TASK)
                .zip(up.par_chunks(ELEMS_PER_TASK)),
        )
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
}

/// SwiGLU backward: turns `d` (the gradient of `silu(gate) · up`) into the gate gradient in place and writes the
/// up gradient into `d_up`.
pub(crate) fn swiglu_backward(gate: &[f32], up: &[f32], d: &mut [f32], d_up: &mut [f32]) {
    d.par_chunks_mut(ELEMS_PER_TASK)
        .zip(d_up.par_chunks_mut(ELEMS_PER_TASK))
        .zip(
            gate.par_chunks(ELEMS_PER_TASK)
                .zip(up.par_chunks(ELEMS_PER_TASK)),
        )
        .for_each(|((dg, du), (x, u))| {
            for i in 0..dg.len() {
                let sig = 1.0 / (1.0 + (-x[i]).exp());
                du[i] = dg[i] * x[i] * sig;
                dg[i] = dg[i] * u[i] * sig * (1.0 + x[i] * (1.0 - sig));
            }
        });
}

/// `y += x` element-wise.
pub(crate) fn add_assign(y: &mut [f32], x: &[f32]) {
    y.par_chunks_mut(ELEMS_PER_TASK)
        .zip(x.par_chunks(ELEMS_PER_TASK))
        .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += x));
}

/// Adds a bias (one value per column) to every row of `y`.
pub(crate) fn add_bias(y: &mut [f32], bias: &[f32]) {
    y.par_chunks_mut(bias.len() * ROWS_PER_TASK)
        .for_each(|rows| {
            for row in rows.chunks_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn inverse_rope_undoes_rope(seed in any::<u64>(), t in 1usize..40, heads in 1usize..4, half in 1usize..6) {
            let hd = 2 * half;
            let mut rng = Rng::new(seed);
            let angles = rng.uniform(t * half, -3.0, 3.0);
            let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
            let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
            let x = rng.uniform(2 * t * heads * hd, -2.0, 2.0);
            let mut y = x.clone();
            rope(&mut y, heads * hd, hd, t, &cos, &sin, false);
            // A rotation keeps the length of each (j, j + half) pair.
            for (a, b) in x.chunks(hd).zip(y.chunks(hd)) {
                for k in 0..half {
                    let (la, lb) = (a[k] * a[k] + a[k + half] * a[k + half], b[k] * b[k] + b[k + half] * b[k + half]);
                    prop_assert!((la - lb).abs() < 1e-4, "{la} vs {lb}");
                }
            }
            rope(&mut y, heads * hd, hd, t, &cos, &sin, true);
            for (a, b) in x.iter().zip(&y) {
                prop_assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }

        #[test]
        fn causal_softmax_rows_sum_to_one_over_the_visible_keys(seed in any::<u64>(), t in 1usize..30) {
            let mut rng = Rng::new(seed);
            let mut s = rng.uniform(t * t, -20.0, 20.0);
            causal_softmax(&mut s, t, 0, 0.7);
            for (i, row) in s.chunks(t).enumerate() {
                let sum: f32 = row[..=i].iter().sum();
                prop_assert!((sum - 1.0).abs() < 1e-5, "row {i} sums to {sum}");
                prop_assert!(row[..=i].iter().all(|&p| p >= 0.0));
                prop_assert!(row[i + 1..].iter().all(|&p| p == 0.0));
            }
        }
    }
}

//! Cross-entropy of the output projection over selected rows: the composed (autograd) version, chunked so the
//! `[rows, vocab]` logits never exist whole, and the row kernel the CPU engine uses.

use candle_core::{Result, Tensor};

use crate::decoder::nll_rows;

/// Rows per chunk of the output projection.
const CE_CHUNK: usize = 256;

/// Sum over rows of `-log softmax(h @ headᵀ)[target]`, composed from differentiable ops chunk by chunk.
/// `h` is `[N, H]`, `head` `[V, H]`, `targets` `[N]` (u32). The result is a scalar f32 tensor.
pub(crate) fn nll_sum_composed(h: &Tensor, head: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let n = h.dim(0)?;
    let mut total: Option<Tensor> = None;
    let mut start = 0;
    while start < n {
        let len = CE_CHUNK.min(n - start);
        let logits = h.narrow(0, start, len)?.matmul(&head.t()?)?;
        let part = nll_rows(&logits, &targets.narrow(0, start, len)?)?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + part)?,
            None => part,
        });
        start += len;
    }
    match total {
        Some(t) => Ok(t),
        None => Tensor::new(0f32, h.device()),
    }
}

/// Turns a row of logits into `softmax - onehot(t)` in place and returns the NLL of `t` (sums in f64).
pub(crate) fn softmax_minus_onehot(row: &mut [f32], t: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let x_t = row[t];
    let mut sum = 0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
    row[t] -= 1.0;
    ((sum.ln() + f64::from(max)) - f64::from(x_t)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `softmax - onehot` sums to 0 over the row and the NLL is `logsumexp - x_t`.
        #[test]
        fn softmax_minus_onehot_is_the_nll_gradient(row in prop::collection::vec(-30f32..30f32, 1..64), t in 0usize..64) {
            let t = t % row.len();
            let lse = row.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
            let mut g = row.clone();
            let nll = softmax_minus_onehot(&mut g, t);
            prop_assert!((f64::from(nll) - (lse - f64::from(row[t]))).abs() < 1e-4);
            prop_assert!(g.iter().map(|&v| f64::from(v)).sum::<f64>().abs() < 1e-5);
            prop_assert!(g[t] <= 0.0);
        }
    }
}

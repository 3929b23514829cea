//! Cross-entropy of the output projection over selected rows, chunked so the `[rows, vocab]` logits never exist
//! whole.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};

use std::sync::Mutex;

use rayon::prelude::*;

use crate::decoder::nll_rows;

/// Rows per chunk of the output projection.
pub(crate) const CE_CHUNK: usize = 256;

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

/// Per-row NLL of the output projection with a frozen `head`, computed chunk by chunk in forward and recomputed
/// chunk by chunk in backward (`dh = (softmax - onehot) * g @ head`), so no `[N, V]` tensor is kept.
struct FusedCe {
    head: Tensor,
    targets: Vec<u32>,
    /// `softmax - onehot` per chunk, kept from forward for backward when small enough (else recomputed).
    cache: Mutex<Vec<Vec<f32>>>,
    /// Largest `rows × vocab` to keep in `cache`.
    cache_limit: usize,
}

/// Largest `rows × vocab` whose `softmax - onehot` is kept between forward and backward (256 MB of f32); above
/// it the backward recomputes the logits chunk by chunk.
const CE_CACHE_MAX: usize = 64 << 20;

impl FusedCe {
    fn logits(&self, h: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        h.narrow(0, start, len)?.matmul(&self.head.t()?)
    }
}

impl CustomOp1 for FusedCe {
    fn name(&self) -> &'static str {
        "fused-chunked-ce"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("fused CE: only f32 is supported")
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("fused CE: input must be contiguous")
        };
        let h = Tensor::from_slice(&data[a..b], l.shape(), &Device::Cpu)?;
        let n = h.dim(0)?;
        let mut out = vec![0f32; n];
        let mut start = 0;
        while start < n {
            let len = CE_CHUNK.min(n - start);
            let logits = self
                .logits(&h, start, len)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let mut logits = logits;
            let vocab = logits.len() / len;
            let targets = &self.targets[start..start + len];
            let keep = n * vocab <= self.cache_limit;
            if keep {
                out[start..start + len]
                    .par_iter_mut()
                    .zip(logits.par_chunks_mut(vocab))
                    .zip(targets.par_iter())
                    .for_each(|((o, row), &t)| *o = softmax_minus_onehot(row, t as usize));
                self.cache
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("fused CE: poisoned cache".into()))?
                    .push(logits);
            } else {
                out[start..start + len]
                    .par_iter_mut()
                    .zip(logits.par_chunks(vocab))
                    .zip(targets.par_iter())
                    .for_each(|((o, row), &t)| {
                        let (max, sum) = max_and_sum_exp(row);
                        *o = ((sum.ln() + f64::from(max)) - f64::from(row[t as usize])) as f32;
                    });
            }
            start += len;
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let n = h.dim(0)?;
        let g = g.to_vec1::<f32>()?;
        let mut parts = Vec::new();
        let mut cached = std::mem::take(
            &mut *self
                .cache
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused CE: poisoned cache".into()))?,
        )
        .into_iter();
        let mut start = 0;
        while start < n {
            let len = CE_CHUNK.min(n - start);
            let targets = &self.targets[start..start + len];
            // d nll / d logits = softmax - onehot (kept from forward, or recomputed), times the row gradient.
            let mut p = match cached.next() {
                Some(p) => p,
                None => {
                    let mut p = self
                        .logits(h, start, len)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let vocab = p.len() / len;
                    p.par_chunks_mut(vocab)
                        .zip(targets.par_iter())
                        .for_each(|(row, &t)| {
                            softmax_minus_onehot(row, t as usize);
                        });
                    p
                }
            };
            let vocab = p.len() / len;
            let grads = &g[start..start + len];
            p.par_chunks_mut(vocab)
                .zip(grads.par_iter())
                .for_each(|(row, &gr)| row.iter_mut().for_each(|v| *v *= gr));
            let p = Tensor::from_vec(p, (len, vocab), h.device())?;
            parts.push(p.matmul(&self.head)?);
            start += len;
        }
        Ok(Some(Tensor::cat(&parts, 0)?))
    }
}

/// Turns a row of logits into `softmax - onehot(t)` in place and returns the NLL of `t`.
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

/// Row maximum and `Σ exp(x - max)` (accumulated in f64).
fn max_and_sum_exp(row: &[f32]) -> (f32, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = row.iter().map(|&v| f64::from((v - max).exp())).sum();
    (max, sum)
}

/// The training loss: the fused chunked op on CPU with a frozen head, else the composed version.
pub(crate) fn nll_sum(h: &Tensor, head: &Tensor, targets: &Tensor, fused: bool) -> Result<Tensor> {
    nll_sum_limited(h, head, targets, fused, CE_CACHE_MAX)
}

fn nll_sum_limited(
    h: &Tensor,
    head: &Tensor,
    targets: &Tensor,
    fused: bool,
    cache_limit: usize,
) -> Result<Tensor> {
    if !fused || !h.device().is_cpu() || head.track_op() {
        return nll_sum_composed(h, head, targets);
    }
    let op = FusedCe {
        head: head.clone(),
        targets: targets.to_vec1::<u32>()?,
        cache: Mutex::new(Vec::new()),
        cache_limit,
    };
    h.contiguous()?.apply_op1(op)?.sum_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::test_util::max_diff;
    use candle_core::Var;

    #[test]
    fn fused_ce_matches_composed_values_and_gradients() {
        let mut rng = Rng::new(5);
        let (n, hdim, v) = (CE_CHUNK + 37, 16, 300);
        let h = Var::from_vec(rng.uniform(n * hdim, -1.0, 1.0), (n, hdim), &Device::Cpu).unwrap();
        let head =
            Tensor::from_vec(rng.uniform(v * hdim, -1.0, 1.0), (v, hdim), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..n).map(|i| (i * 7 % v) as u32).collect();
        let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
        for limit in [CE_CACHE_MAX, 0] {
            let a = nll_sum_limited(h.as_tensor(), &head, &targets, true, limit).unwrap();
            let b = nll_sum_composed(h.as_tensor(), &head, &targets).unwrap();
            let (fa, fb) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
            assert!((fa - fb).abs() / fb.abs() < 1e-5, "{fa} vs {fb}");
            let ga = a.backward().unwrap();
            let gb = b.backward().unwrap();
            let d = max_diff(
                ga.get(h.as_tensor()).unwrap(),
                gb.get(h.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "gradients differ by {d} (cache limit {limit})");
        }
    }
}

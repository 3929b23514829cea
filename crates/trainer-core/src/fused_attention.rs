//! The attention probabilities in one op: `P = softmax(scale · S + causal mask)` over the last dimension of raw
//! scores `S = Q Kᵀ` `[B, H, T, T]`, with a hand-written backward `dS = scale · P ⊙ (G − Σ G ⊙ P)`.
//!
//! It replaces four element-wise passes of the composed version (scale, mask add, softmax, and in backward the
//! product, row sum, subtraction and product) by one pass each way, and never builds the masked score tensor.
//! Entries above the diagonal are exactly 0 in `P` and in `dS`, as with the composed `−inf` mask.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Runs `f` on the contiguous f32 data of a CPU tensor (copied only if `t` is not contiguous).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
        candle_core::bail!("fused op: only f32 tensors on the CPU are supported")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("fused op: input must be contiguous")
    };
    f(&v[start..end])
}

/// Softmax of `scale · s` over the first `i + 1` entries of each row of length `t`, where `i` is the row's query
/// position (row index modulo `t`); the masked tail is 0. The row sum is accumulated in f64.
struct CausalSoftmax {
    scale: f32,
}

impl CausalSoftmax {
    fn check(l: &Layout) -> Result<usize> {
        let dims = l.dims();
        let t = dims.last().copied().unwrap_or(0);
        if dims.len() < 2 || dims[dims.len() - 2] != t || t == 0 {
            candle_core::bail!("causal softmax: needs square [.., T, T] scores, got {dims:?}")
        }
        Ok(t)
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let t = Self::check(l)?;
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("causal softmax: only f32 is supported")
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("causal softmax: input must be contiguous")
        };
        let x = &v[start..end];
        let scale = self.scale;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(t)
            .zip(x.par_chunks(t))
            .enumerate()
            .for_each(|(r, (o, x))| {
                let n = r % t + 1;
                let (o, x) = (&mut o[..n], &x[..n]);
                let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
                let mut sum = 0f64;
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = (v * scale - max).exp();
                    sum += f64::from(*o);
                }
                let inv = (1.0 / sum) as f32;
                o.iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, p: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let t = p.dim(candle_core::D::Minus1)?;
        let scale = self.scale;
        let ds = with_f32(p, |pv| {
            with_f32(g, |gv| {
                let mut ds = vec![0f32; pv.len()];
                ds.par_chunks_mut(t)
                    .zip(pv.par_chunks(t).zip(gv.par_chunks(t)))
                    .enumerate()
                    .for_each(|(r, (d, (p, g)))| {
                        let n = r % t + 1;
                        let dot: f32 = p[..n].iter().zip(&g[..n]).map(|(p, g)| p * g).sum();
                        for ((d, &p), &g) in d[..n].iter_mut().zip(&p[..n]).zip(&g[..n]) {
                            *d = scale * p * (g - dot);
                        }
                    });
                Ok(ds)
            })
        })?;
        Ok(Some(Tensor::from_vec(ds, p.shape(), p.device())?))
    }
}

/// `softmax(scale · scores + causal mask)` over the last dimension of square `[.., T, T]` scores.
pub(crate) fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax {
        scale: scale as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;
    use crate::rng::Rng;
    use crate::test_util::{max_diff, rand};
    use candle_core::{Device, Var};

    fn composed(s: &Tensor, scale: f64) -> Tensor {
        let t = s.dim(candle_core::D::Minus1).unwrap();
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
        ops::softmax(&(s * scale).unwrap().broadcast_add(&mask).unwrap()).unwrap()
    }

    #[test]
    fn causal_softmax_matches_scale_mask_softmax_in_values_and_gradient() {
        let mut rng = Rng::new(21);
        let s = Var::from_tensor(&(rand(&mut rng, &[2, 3, 9, 9]) * 6.0).unwrap()).unwrap();
        let scale = 0.125;
        let yf = causal_softmax(s.as_tensor(), scale).unwrap();
        let yc = composed(s.as_tensor(), scale);
        assert!(
            max_diff(&yf, &yc) < 1e-5,
            "forward differs by {}",
            max_diff(&yf, &yc)
        );
        let proj = rand(&mut rng, yf.dims());
        let gf = (&yf * &proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (&yc * &proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (gf, gc) = (
            gf.get(s.as_tensor()).unwrap(),
            gc.get(s.as_tensor()).unwrap(),
        );
        assert!(
            max_diff(gf, gc) < 1e-5,
            "gradient differs by {}",
            max_diff(gf, gc)
        );
    }

    #[test]
    fn causal_softmax_rows_sum_to_one_and_never_look_ahead() {
        let s = rand(&mut Rng::new(5), &[1, 2, 6, 6]);
        let p = causal_softmax(&s, 1.0).unwrap();
        let v = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (r, row) in v.chunks(6).enumerate() {
            let i = r % 6;
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(
                row[i + 1..].iter().all(|&x| x == 0.0),
                "row {r} looks ahead"
            );
            assert!(row[..=i].iter().all(|&x| x > 0.0));
        }
    }

    #[test]
    fn causal_softmax_rejects_non_square_scores() {
        let s = rand(&mut Rng::new(6), &[2, 4, 5]);
        let err = causal_softmax(&s, 1.0).unwrap_err().to_string();
        assert!(err.contains("square"), "{err}");
    }
}

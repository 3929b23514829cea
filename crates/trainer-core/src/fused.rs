//! Fast CPU ops: candle's fused kernels (which have no backward) wrapped in `CustomOp1`s with hand-written
//! backward passes, plus a frozen linear whose backward computes only the input gradient (never dW).
//!
//! Each op is tested against its composed version in `ops.rs` (values and gradients to 1e-5).

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use crate::fused_attention::with_f32;

/// Wraps a CPU storage + layout as a graph-free tensor.
fn wrap(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("fused op: input must be contiguous")
    };
    let n = match s {
        CpuStorage::F32(v) => v.len(),
        _ => candle_core::bail!("fused op: only f32 is supported"),
    };
    let flat = Tensor::from_storage(Storage::Cpu(s.clone()), n, BackpropOp::none(), false);
    flat.narrow(0, start, end - start)?.reshape(l.shape())
}

/// The contiguous f32 data of a storage + layout and the length of its last dimension.
fn rows<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], usize)> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("fused op: only f32 is supported")
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("fused op: input must be contiguous")
    };
    let n = l.dims().last().copied().unwrap_or(1).max(1);
    Ok((&v[start..end], n))
}

/// Takes a result tensor's data back out as a contiguous CPU storage.
fn unwrap(t: &Tensor) -> Result<(CpuStorage, Shape)> {
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    Ok((CpuStorage::F32(data), t.shape().clone()))
}

/// `x wᵀ` straight from storages (no copy of `x`): `x` `[m, k]`, `w` `[n, k]`.
fn matmul_t(
    x: &CpuStorage,
    xl: &Layout,
    w: &CpuStorage,
    wl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (m, k) = xl.shape().dims2()?;
    let (n, k2) = wl.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("fused linear: input has {k} features, the weight expects {k2}")
    }
    let out = x.matmul(w, (1, m, n, k), xl, &wl.transpose(0, 1)?)?;
    Ok((out, Shape::from((m, n))))
}

/// [`matmul_t`] with the weight given as a tensor.
fn matmul_wt(x: &CpuStorage, xl: &Layout, w: &Tensor) -> Result<(CpuStorage, Shape)> {
    let (ws, wl) = w.storage_and_layout();
    let Storage::Cpu(wc) = &*ws else {
        candle_core::bail!("fused linear: the weight must be on the CPU")
    };
    matmul_t(x, xl, wc, wl)
}

/// `y = x @ wᵀ` with a frozen `w` `[out, in]`: backward gives only `dx = g @ w`.
struct FrozenLinear {
    w: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        matmul_wt(s, l, &self.w)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.matmul(&self.w)?))
    }
}

/// RMSNorm with a frozen weight; backward `dx = r (g ⊙ w) − x r³ mean(g ⊙ w ⊙ x)` in one pass per row.
struct RmsNorm {
    w: Tensor,
    eps: f64,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rmsnorm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, n) = rows(s, l)?;
        let w = self.w.to_vec1::<f32>()?;
        if w.len() != n {
            candle_core::bail!(
                "fused rmsnorm: weight has {} entries for rows of {n}",
                w.len()
            )
        }
        let eps = self.eps as f32;
        let mut out = x.to_vec();
        // Same order as transformers' LlamaRMSNorm: x * rsqrt(mean(x²) + eps), then weight * that; the sum of
        // squares is accumulated in f64.
        out.par_chunks_mut(n).for_each(|row| {
            let ss: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let r = 1.0 / ((ss / n as f64) as f32 + eps).sqrt();
            row.iter_mut()
                .zip(&w)
                .for_each(|(v, wi)| *v = wi * (*v * r));
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let w = self.w.to_vec1::<f32>()?;
        let n = w.len();
        let eps = self.eps as f32;
        // One pass per row: r = 1/sqrt(mean(x²) + eps) (as in the forward), m = mean(g ⊙ w ⊙ x) in f64.
        let dx = with_f32(x, |xv| {
            with_f32(g, |gv| {
                let mut dx = vec![0f32; xv.len()];
                dx.par_chunks_mut(n)
                    .zip(xv.par_chunks(n).zip(gv.par_chunks(n)))
                    .for_each(|(d, (x, g))| {
                        let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                        let r = 1.0 / ((ss / n as f64) as f32 + eps).sqrt();
                        let m: f64 = x
                            .iter()
                            .zip(g)
                            .zip(&w)
                            .map(|((&x, &g), &w)| f64::from(g * w) * f64::from(x))
                            .sum();
                        let c = r * r * r * (m / n as f64) as f32;
                        for (((d, &x), &g), &w) in d.iter_mut().zip(x).zip(g).zip(&w) {
                            *d = r * (g * w) - x * c;
                        }
                    });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Half-split RoPE on `[B, H, T, D]` with `cos`/`sin` `[T, D/2]`; backward `dx = rope(g, cos, −sin)`.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        unwrap(&candle_nn::rotary_emb::rope(
            &wrap(s, l)?,
            &self.cos,
            &self.sin,
        )?)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(candle_nn::rotary_emb::rope(
            &g.contiguous()?,
            &self.cos,
            &self.sin.neg()?,
        )?))
    }
}

/// A LoRA linear in one op: `y = x wᵀ (+ bias) + B (s · A (x ⊙ mask))ᵀ`, args `(x [N, in], A [r, in], B [out, r])`.
/// Backward returns `dx = g w + s ((g B) A) ⊙ mask`, `dA = s (g B)ᵀ (x ⊙ mask)`, `dB = s gᵀ (A (x ⊙ mask))` and never
/// keeps the `[N, out]` intermediates of the composed version.
struct LoraLinear {
    w: Tensor,
    bias: Option<Tensor>,
    scale: f64,
    mask: Option<Tensor>,
}

impl LoraLinear {
    fn dropped(&self, x: &Tensor) -> Result<Tensor> {
        match &self.mask {
            Some(m) => x.mul(m),
            None => Ok(x.clone()),
        }
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "fused-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        // x is read in place (never copied): y = x wᵀ is written straight into the output buffer, then
        // (y + bias) + s·(x Aᵀ) Bᵀ is added row by row.
        let (y, shape) = matmul_wt(s1, l1, &self.w)?;
        let CpuStorage::F32(mut y) = y else {
            candle_core::bail!("fused lora linear: only f32 is supported")
        };
        let u = match &self.mask {
            Some(m) => wrap(s1, l1)?.mul(m)?.matmul(&wrap(s2, l2)?.t()?)?,
            None => {
                let (u, u_shape) = matmul_t(s1, l1, s2, l2)?;
                Tensor::from_storage(Storage::Cpu(u), u_shape, BackpropOp::none(), false)
            }
        };
        let delta = (u * self.scale)?.matmul(&wrap(s3, l3)?.t()?)?;
        let n = shape.dims()[1];
        let bias = self.bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
        with_f32(&delta, |d| {
            y.par_chunks_mut(n)
                .zip(d.par_chunks(n))
                .for_each(|(y, d)| match &bias {
                    Some(b) => y
                        .iter_mut()
                        .zip(d)
                        .zip(b)
                        .for_each(|((y, d), b)| *y = (*y + b) + d),
                    None => y.iter_mut().zip(d).for_each(|(y, d)| *y += d),
                });
            Ok(())
        })?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b, g) = (x.detach(), a.detach(), b.detach(), g.detach());
        let xd = self.dropped(&x)?;
        let gb = g.matmul(&b)?; // [N, r]
        let da = (gb.t()?.matmul(&xd)? * self.scale)?;
        let db = (g.t()?.matmul(&xd.matmul(&a.t()?)?)? * self.scale)?;
        let dx_lora = (gb.matmul(&a)? * self.scale)?;
        let dx = (g.matmul(&self.w)? + self.dropped(&dx_lora)?)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// [`LoraLinear`] for `x` of any rank ≥ 2.
pub(crate) fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = dims[dims.len() - 1];
    let rows = x.elem_count() / inner.max(1);
    let op = LoraLinear {
        w: w.clone(),
        bias: bias.cloned(),
        scale,
        mask: mask.map(|m| m.reshape((rows, inner))).transpose()?,
    };
    let x2 = x.reshape((rows, inner))?.contiguous()?;
    let y = x2.apply_op3(&a.contiguous()?, &b.contiguous()?, op)?;
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = w.dim(0)?;
    y.reshape(out)
}

/// SwiGLU `silu(gate) ⊙ up` in one pass; backward `d_up = g ⊙ silu(gate)`,
/// `d_gate = g ⊙ up ⊙ σ(gate) (1 + gate (1 − σ(gate)))`. Keeps only its inputs, not `silu(gate)`.
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((gate, _), (up, _)) = (rows(s1, l1)?, rows(s2, l2)?);
        if gate.len() != up.len() {
            candle_core::bail!("fused swiglu: gate and up differ in size")
        }
        let mut out = vec![0f32; gate.len()];
        out.par_chunks_mut(4096)
            .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
            .for_each(|(o, (g, u))| {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let shape = gate.shape().clone();
        let (d_gate, d_up) = with_f32(gate, |gv| {
            with_f32(up, |uv| with_f32(g, |dv| Ok(swiglu_bwd(gv, uv, dv))))
        })?;
        let dev = gate.device();
        Ok((
            Some(Tensor::from_vec(d_gate, shape.clone(), dev)?),
            Some(Tensor::from_vec(d_up, shape, dev)?),
        ))
    }
}

/// `(d_gate, d_up)` of SwiGLU for inputs `gv`, `uv` and output gradient `dv`.
fn swiglu_bwd(gv: &[f32], uv: &[f32], dv: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut d_gate = vec![0f32; gv.len()];
    let mut d_up = vec![0f32; gv.len()];
    d_gate
        .par_chunks_mut(4096)
        .zip(d_up.par_chunks_mut(4096))
        .zip(
            gv.par_chunks(4096)
                .zip(uv.par_chunks(4096))
                .zip(dv.par_chunks(4096)),
        )
        .for_each(|((dg, du), ((x, u), d))| {
            for i in 0..dg.len() {
                let sig = 1.0 / (1.0 + (-x[i]).exp());
                du[i] = d[i] * x[i] * sig;
                dg[i] = d[i] * u[i] * sig * (1.0 + x[i] * (1.0 - sig));
            }
        });
    (d_gate, d_up)
}

/// `silu(gate) ⊙ up`.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// `x @ wᵀ (+ bias)` through [`FrozenLinear`], for `x` of any rank ≥ 2.
pub(crate) fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = dims[dims.len() - 1];
    let rows = x.elem_count() / inner.max(1);
    let y = x
        .reshape((rows, inner))?
        .contiguous()?
        .apply_op1(FrozenLinear { w: w.clone() })?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = w.dim(0)?;
    y.reshape(out)
}

/// RMSNorm over the last dimension with frozen `w`.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(RmsNorm { w: w.clone(), eps })
}

/// Half-split RoPE; `cos`/`sin` are the full `[T, D]` tables used by the composed version.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = cos.dim(1)? / 2;
    let op = Rope {
        cos: cos.narrow(1, 0, half)?.contiguous()?,
        sin: sin.narrow(1, 0, half)?.contiguous()?,
    };
    x.contiguous()?.apply_op1(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;
    use crate::rng::Rng;
    use crate::test_util::{max_diff, rand};
    use candle_core::backprop::GradStore;

    /// Gradients of the scalar `sum(t * proj)`: a random projection turns any output into a loss.
    fn projected_grads(t: &Tensor, proj: &Tensor) -> GradStore {
        (t * proj).unwrap().sum_all().unwrap().backward().unwrap()
    }
    use candle_core::{Device, Var};

    /// Compares forward values and input gradients (through a random projection loss) of two implementations.
    fn check(
        shape: &[usize],
        fused: impl Fn(&Tensor) -> Result<Tensor>,
        composed: impl Fn(&Tensor) -> Result<Tensor>,
    ) {
        let mut rng = Rng::new(shape.iter().sum::<usize>() as u64);
        let x = Var::from_tensor(&rand(&mut rng, shape)).unwrap();
        let yf = fused(x.as_tensor()).unwrap();
        let yc = composed(x.as_tensor()).unwrap();
        assert!(
            max_diff(&yf, &yc) < 1e-5,
            "forward differs by {}",
            max_diff(&yf, &yc)
        );
        let proj = rand(&mut rng, yf.dims());
        let gf = projected_grads(&yf, &proj);
        let gc = projected_grads(&yc, &proj);
        let (gf, gc) = (
            gf.get(x.as_tensor()).unwrap(),
            gc.get(x.as_tensor()).unwrap(),
        );
        assert!(
            max_diff(gf, gc) < 1e-5,
            "gradient differs by {}",
            max_diff(gf, gc)
        );
    }

    #[test]
    fn frozen_linear_matches_matmul() {
        let w = rand(&mut Rng::new(1), &[24, 16]);
        let b = rand(&mut Rng::new(2), &[24]);
        check(
            &[2, 5, 16],
            |x| linear(x, &w, Some(&b)),
            |x| ops::linear(x, &w, Some(&b)),
        );
    }

    #[test]
    fn lora_linear_matches_composed_for_x_a_and_b() {
        let mut rng = Rng::new(9);
        let w = rand(&mut rng, &[24, 16]);
        let bias = rand(&mut rng, &[24]);
        let a = Var::from_tensor(&rand(&mut rng, &[3, 16])).unwrap();
        let b = Var::from_tensor(&rand(&mut rng, &[24, 3])).unwrap();
        let x = Var::from_tensor(&rand(&mut rng, &[2, 5, 16])).unwrap();
        let mask = Tensor::from_vec(
            (0..160)
                .map(|i| if i % 3 == 0 { 0.0 } else { 1.5 })
                .collect::<Vec<f32>>(),
            (2, 5, 16),
            &Device::Cpu,
        )
        .unwrap();
        for m in [None, Some(&mask)] {
            let fused = lora_linear(
                x.as_tensor(),
                &w,
                Some(&bias),
                a.as_tensor(),
                b.as_tensor(),
                1.7,
                m,
            )
            .unwrap();
            let xd = match m {
                Some(mk) => x.as_tensor().mul(mk).unwrap(),
                None => x.as_tensor().clone(),
            };
            let delta = ops::linear(
                &ops::linear(&xd, a.as_tensor(), None).unwrap(),
                b.as_tensor(),
                None,
            )
            .unwrap();
            let composed = (ops::linear(x.as_tensor(), &w, Some(&bias)).unwrap()
                + (delta * 1.7).unwrap())
            .unwrap();
            assert!(max_diff(&fused, &composed) < 1e-5);
            let proj = rand(&mut rng, fused.dims());
            let gf = projected_grads(&fused, &proj);
            let gc = projected_grads(&composed, &proj);
            for v in [&x, &a, &b] {
                let d = max_diff(
                    gf.get(v.as_tensor()).unwrap(),
                    gc.get(v.as_tensor()).unwrap(),
                );
                assert!(d < 1e-5, "gradient differs by {d}");
            }
        }
    }

    #[test]
    fn swiglu_matches_composed_for_both_inputs() {
        let mut rng = Rng::new(13);
        let gate = Var::from_tensor(&(rand(&mut rng, &[3, 5, 40]) * 4.0).unwrap()).unwrap();
        let up = Var::from_tensor(&rand(&mut rng, &[3, 5, 40])).unwrap();
        let fused = swiglu(gate.as_tensor(), up.as_tensor()).unwrap();
        let composed = (candle_nn::ops::silu(gate.as_tensor()).unwrap() * up.as_tensor()).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        let proj = rand(&mut rng, fused.dims());
        let gf = projected_grads(&fused, &proj);
        let gc = projected_grads(&composed, &proj);
        for v in [&gate, &up] {
            let d = max_diff(
                gf.get(v.as_tensor()).unwrap(),
                gc.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "gradient differs by {d}");
        }
    }

    #[test]
    fn rms_norm_matches_composed() {
        let w = rand(&mut Rng::new(3), &[32]);
        check(
            &[2, 6, 32],
            |x| rms_norm(x, &w, 1e-5),
            |x| ops::rms_norm(x, &w, 1e-5),
        );
    }

    #[test]
    fn rope_matches_composed() {
        let (t, d) = (6, 8);
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for p in 0..t {
            for i in 0..d {
                let f = 1.0 / 10_000f32.powf((2 * (i % (d / 2))) as f32 / d as f32);
                cos.push((p as f32 * f).cos());
                sin.push((p as f32 * f).sin());
            }
        }
        let cos = Tensor::from_vec(cos, (t, d), &Device::Cpu).unwrap();
        let sin = Tensor::from_vec(sin, (t, d), &Device::Cpu).unwrap();
        check(
            &[2, 3, t, d],
            |x| rope(x, &cos, &sin),
            |x| ops::rope(x, &cos, &sin),
        );
    }
}

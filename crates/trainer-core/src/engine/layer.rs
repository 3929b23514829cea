//! One decoder layer of the engine: forward keeping what backward needs, and backward, on workspace buffers.

use candle_core::Result;

use super::attention::{attention, attention_backward};
use super::gemm::{matmul, Mode, Threads, View};
use super::kernels;
use super::product::{g_w, x_wt, LAYER_PANEL};
use super::workspace::{Buf, LoraSaved, Saved, Scratch, Tmp};
use crate::decoder::Noise;
use crate::matrix::MatrixRef;

/// Sizes of one micro-batch through the model.
pub(crate) struct Dims {
    pub b: usize,
    pub t: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub inter: usize,
    pub eps: f32,
}

impl Dims {
    pub fn n(&self) -> usize {
        self.b * self.t
    }
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Per-micro-batch constants shared by all layers.
pub(crate) struct Context<'a> {
    pub dims: &'a Dims,
    /// `[t, head_dim / 2]` RoPE tables.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// A trained (or applied) LoRA pair of one module.
pub(crate) struct Lora<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub rank: usize,
    pub scale: f32,
    /// Where its gradients go (training only).
    pub grad_a: usize,
    pub grad_b: usize,
}

/// One layer's frozen weights (`[out, in]` linears in the order q, k, v, o, gate, up, down) and LoRA pairs.
pub(crate) struct LayerWeights<'a> {
    pub input_norm: &'a [f32],
    pub linears: [MatrixRef<'a>; 7],
    pub bias: Option<[&'a [f32]; 3]>,
    pub post_norm: &'a [f32],
    pub lora: [Option<Lora<'a>>; 7],
}

/// `y = x Wᵀ (+ LoRA) (+ bias)` for module `m` into `y`; keeps what the LoRA backward needs in `ls`.
#[allow(clippy::too_many_arguments)]
fn project(
    ctx: &Context,
    w: &LayerWeights,
    m: usize,
    x: &[f32],
    y: &mut Buf,
    ls: &mut LoraSaved,
    tmp: &mut Tmp,
    noise: Option<&mut Noise>,
) -> Result<()> {
    let n = ctx.dims.n();
    let Tmp { xm, panel, .. } = tmp;
    let lora_in: &[f32] = match w.lora[m] {
        Some(_) => {
            ls.dropout = noise.and_then(|nz| nz.dropout());
            match &ls.dropout {
                Some(d) => {
                    let xm = xm.fit(x.len());
                    d.apply_into(x, xm);
                    xm
                }
                None => x,
            }
        }
        None => x,
    };
    lora_linear(
        w,
        m,
        x,
        lora_in,
        n,
        y.fit(n * w.linears[m].rows),
        &mut ls.u,
        panel,
    )
}

/// `y[n, out] = x Wᵀ + scale · (lora_in Aᵀ) Bᵀ (+ bias)` for module `m`, with `u = lora_in Aᵀ` left in `u`: the
/// product of a frozen linear and its LoRA pair, shared by training (`lora_in` is `x` after dropout) and
/// generation.
#[allow(clippy::too_many_arguments)]
pub(super) fn lora_linear(
    w: &LayerWeights,
    m: usize,
    x: &[f32],
    lora_in: &[f32],
    n: usize,
    y: &mut [f32],
    u: &mut Buf,
    panel: &mut Buf,
) -> Result<()> {
    let weight = w.linears[m];
    let (out, inp) = (weight.rows, weight.cols);
    x_wt(y, x, weight, n, (Mode::Set, 1.0), panel, LAYER_PANEL)?;
    if let Some(l) = &w.lora[m] {
        let r = l.rank;
        let u = u.fit(n * r);
        matmul(
            u,
            0,
            r,
            (n, r, inp),
            View::rows(lora_in, 0, inp),
            View::rows(l.a, 0, inp).t(),
            Mode::Set,
            1.0,
            Threads::Par,
        )?;
        matmul(
            y,
            0,
            out,
            (n, out, r),
            View::rows(u, 0, r),
            View::rows(l.b, 0, r).t(),
            Mode::Add,
            l.scale,
            Threads::Par,
        )?;
    }
    if let (Some(bias), 0..=2) = (&w.bias, m) {
        kernels::add_bias(y, bias[m]);
    }
    Ok(())
}

/// Backward of [`project`]: `d_in (=|+=) g W` plus the LoRA terms; adds the LoRA factors' gradients into `grads`.
#[allow(clippy::too_many_arguments)]
fn project_backward(
    ctx: &Context,
    w: &LayerWeights,
    m: usize,
    x: &[f32],
    ls: &LoraSaved,
    g: &[f32],
    d_in: &mut [f32],
    mode: Mode,
    tmp: &mut Tmp,
    grads: &mut [Vec<f32>],
) -> Result<()> {
    let n = ctx.dims.n();
    let weight = w.linears[m];
    let (out, inp) = (weight.rows, weight.cols);
    g_w(d_in, g, weight, n, (mode, 1.0), &mut tmp.panel, LAYER_PANEL)?;
    let Some(l) = &w.lora[m] else {
        return Ok(());
    };
    let r = l.rank;
    let du = tmp.du.fit(n * r);
    matmul(
        du,
        0,
        r,
        (n, r, out),
        View::rows(g, 0, out),
        View::rows(l.b, 0, r),
        Mode::Set,
        l.scale,
        Threads::Par,
    )?;
    let missing = || candle_core::Error::Msg("engine: missing gradient buffer (a bug)".into());
    let gb = grads.get_mut(l.grad_b).ok_or_else(missing)?;
    matmul(
        gb,
        0,
        r,
        (out, r, n),
        View::rows(g, 0, out).t(),
        View::rows(&ls.u, 0, r),
        Mode::Add,
        l.scale,
        Threads::Par,
    )?;
    let xm: &[f32] = match &ls.dropout {
        Some(d) => {
            let xm = tmp.xm.fit(x.len());
            d.apply_into(x, xm);
            xm
        }
        None => x,
    };
    let ga = grads.get_mut(l.grad_a).ok_or_else(missing)?;
    matmul(
        ga,
        0,
        inp,
        (r, inp, n),
        View::rows(du, 0, r).t(),
        View::rows(xm, 0, inp),
        Mode::Add,
        1.0,
        Threads::Par,
    )?;
    match &ls.dropout {
        Some(d) => {
            let dx = tmp.dx.fit(n * inp);
            matmul(
                dx,
                0,
                inp,
                (n, inp, r),
                View::rows(du, 0, r),
                View::rows(l.a, 0, inp),
                Mode::Set,
                1.0,
                Threads::Par,
            )?;
            d.add_masked(d_in, dx);
        }
        None => matmul(
            d_in,
            0,
            inp,
            (n, inp, r),
            View::rows(du, 0, r),
            View::rows(l.a, 0, inp),
            Mode::Add,
            1.0,
            Threads::Par,
        )?,
    }
    Ok(())
}

/// One layer forward from its input `x` into `out`, keeping the activations for backward in `s` (with `train`:
/// also the attention probabilities, and LoRA dropout drawn from `noise`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    ctx: &Context,
    w: &LayerWeights,
    x: &[f32],
    out: &mut Buf,
    s: &mut Saved,
    sc: &mut Scratch,
    mut noise: Option<&mut Noise>,
    train: bool,
) -> Result<()> {
    let d = ctx.dims;
    let n = d.n();
    let rot = |y: &mut [f32], heads: usize| {
        kernels::rope(
            y,
            heads * d.head_dim,
            d.head_dim,
            d.t,
            ctx.cos,
            ctx.sin,
            false,
        )
    };
    kernels::rms_forward(x, w.input_norm, d.eps, sc.h.fit(x.len()), s.inv1.fit(n));
    let [lq, lk, lv, lo, lg, lu, ld] = &mut s.lora;
    let tmp = &mut sc.tmp;
    project(ctx, w, 0, &sc.h, &mut s.q, lq, tmp, noise.as_deref_mut())?;
    project(ctx, w, 1, &sc.h, &mut s.k, lk, tmp, noise.as_deref_mut())?;
    project(ctx, w, 2, &sc.h, &mut s.v, lv, tmp, noise.as_deref_mut())?;
    rot(&mut s.q, d.heads);
    rot(&mut s.k, d.kv_heads);
    let probs = if train { Some(&mut s.probs) } else { None };
    // The attention output is needed again only as a LoRA input of o_proj.
    let attn = if train && w.lora[3].is_some() {
        &mut s.attn
    } else {
        s.attn.fit(0);
        &mut sc.attn
    };
    attention(
        ctx,
        (&s.q, &s.k, &s.v),
        probs,
        &mut sc.heads,
        attn.fit(n * d.q_width()),
    )?;
    project(ctx, w, 3, attn, &mut s.x2, lo, tmp, noise.as_deref_mut())?;
    kernels::add_assign(&mut s.x2, x);
    kernels::rms_forward(&s.x2, w.post_norm, d.eps, sc.h.fit(x.len()), s.inv2.fit(n));
    project(ctx, w, 4, &sc.h, &mut s.gate, lg, tmp, noise.as_deref_mut())?;
    project(ctx, w, 5, &sc.h, &mut s.up, lu, tmp, noise.as_deref_mut())?;
    kernels::swiglu(&s.gate, &s.up, sc.act.fit(n * d.inter));
    project(ctx, w, 6, &sc.act, out, ld, tmp, noise)?;
    kernels::add_assign(out, &s.x2);
    Ok(())
}

/// One layer backward: turns `dy` (the gradient at the layer's output) into the gradient at its input `x` in
/// place, adding the LoRA gradients into `grads`.
pub(crate) fn backward(
    ctx: &Context,
    w: &LayerWeights,
    x: &[f32],
    s: &Saved,
    dy: &mut [f32],
    sc: &mut Scratch,
    grads: &mut [Vec<f32>],
) -> Result<()> {
    let d = ctx.dims;
    let n = d.n();
    let l = &s.lora;
    let has = |ms: &[usize]| ms.iter().any(|&m| w.lora[m].is_some());
    let tmp = &mut sc.tmp;
    // MLP: out = x2 + down(silu(gate) · up). Its input, silu(gate) · up, is needed only by a LoRA pair on down_proj.
    if has(&[6]) {
        kernels::swiglu(&s.gate, &s.up, sc.act.fit(n * d.inter));
    }
    let d_gate = sc.d_gate.fit(n * d.inter);
    project_backward(ctx, w, 6, &sc.act, &l[6], dy, d_gate, Mode::Set, tmp, grads)?;
    let d_up = sc.d_up.fit(n * d.inter);
    kernels::swiglu_backward(&s.gate, &s.up, d_gate, d_up);
    if has(&[4, 5]) {
        kernels::rms_apply(&s.x2, &s.inv2, w.post_norm, sc.h.fit(n * d.hidden));
    }
    let d_h = sc.d_h.fit(n * d.hidden);
    project_backward(ctx, w, 4, &sc.h, &l[4], d_gate, d_h, Mode::Set, tmp, grads)?;
    project_backward(ctx, w, 5, &sc.h, &l[5], d_up, d_h, Mode::Add, tmp, grads)?;
    kernels::rms_backward(d_h, &s.x2, &s.inv2, w.post_norm, dy);
    // Attention: x2 = x + o(attn(q, k, v)).
    let d_attn = sc.d_attn.fit(n * d.q_width());
    project_backward(ctx, w, 3, &s.attn, &l[3], dy, d_attn, Mode::Set, tmp, grads)?;
    attention_backward(ctx, s, sc)?;
    let inv_rope = |y: &mut [f32], width: usize| {
        kernels::rope(y, width, d.head_dim, d.t, ctx.cos, ctx.sin, true)
    };
    inv_rope(&mut sc.dq, d.q_width());
    inv_rope(&mut sc.dk, d.kv_width());
    if has(&[0, 1, 2]) {
        kernels::rms_apply(x, &s.inv1, w.input_norm, sc.h.fit(n * d.hidden));
    }
    let tmp = &mut sc.tmp;
    let d_h = sc.d_h.fit(n * d.hidden);
    project_backward(ctx, w, 0, &sc.h, &l[0], &sc.dq, d_h, Mode::Set, tmp, grads)?;
    project_backward(ctx, w, 1, &sc.h, &l[1], &sc.dk, d_h, Mode::Add, tmp, grads)?;
    project_backward(ctx, w, 2, &sc.h, &l[2], &sc.dv, d_h, Mode::Add, tmp, grads)?;
    kernels::rms_backward(d_h, x, &s.inv1, w.input_norm, dy);
    Ok(())
}

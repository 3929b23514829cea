//! One decoder layer of the engine: forward keeping what backward needs, and backward.

use candle_core::Result;

use super::attention::{attention, attention_backward};
use super::gemm::{matmul, Mode, Threads, View};
use super::kernels;
use crate::decoder::Noise;
use crate::dropout::Dropout;

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

/// A trained LoRA pair of one module.
pub(crate) struct Lora<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub rank: usize,
    pub scale: f32,
    pub grad_a: usize,
    pub grad_b: usize,
}

/// One layer's frozen weights (`[out, in]` linears in the order q, k, v, o, gate, up, down) and LoRA pairs.
pub(crate) struct LayerWeights<'a> {
    pub input_norm: &'a [f32],
    pub linears: [&'a [f32]; 7],
    pub bias: Option<[&'a [f32]; 3]>,
    pub post_norm: &'a [f32],
    pub lora: &'a [Option<Lora<'a>>; 7],
}

/// What a LoRA pair's backward needs: `u = (x ∘ mask) Aᵀ` and the dropout mask (its key: the mask is
/// regenerated, never stored).
#[derive(Default)]
struct LoraSaved {
    u: Vec<f32>,
    dropout: Option<Dropout>,
}

/// The activations of one layer kept for its backward.
pub(crate) struct Saved {
    x: Vec<f32>,
    inv1: Vec<f32>,
    h1: Vec<f32>,
    /// After RoPE.
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// `[b, heads, t, t]`.
    pub probs: Vec<f32>,
    attn: Vec<f32>,
    x2: Vec<f32>,
    inv2: Vec<f32>,
    h2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    lora: [Option<LoraSaved>; 7],
}

/// `y = x Wᵀ (+ LoRA) (+ bias)` for module `m`; returns `y` and what the LoRA backward needs.
fn project(
    ctx: &Context,
    w: &LayerWeights,
    m: usize,
    x: &[f32],
    noise: &mut Noise,
) -> Result<(Vec<f32>, Option<LoraSaved>)> {
    let n = ctx.dims.n();
    let weight = w.linears[m];
    let inp = x.len() / n.max(1);
    let out = weight.len() / inp.max(1);
    let mut y = vec![0f32; n * out];
    matmul(
        &mut y,
        0,
        out,
        (n, out, inp),
        View::rows(x, 0, inp),
        View::rows(weight, 0, inp).t(),
        Mode::Set,
        1.0,
        Threads::Par,
    )?;
    let saved = match &w.lora[m] {
        Some(l) => {
            let dropout = noise.dropout();
            let xm = Dropout::masked(dropout.as_ref(), x);
            let r = l.rank;
            let mut u = vec![0f32; n * r];
            matmul(
                &mut u,
                0,
                r,
                (n, r, inp),
                View::rows(&xm, 0, inp),
                View::rows(l.a, 0, inp).t(),
                Mode::Set,
                1.0,
                Threads::Par,
            )?;
            matmul(
                &mut y,
                0,
                out,
                (n, out, r),
                View::rows(&u, 0, r),
                View::rows(l.b, 0, r).t(),
                Mode::Add,
                l.scale,
                Threads::Par,
            )?;
            Some(LoraSaved { u, dropout })
        }
        None => None,
    };
    if let (Some(bias), 0..=2) = (&w.bias, m) {
        kernels::add_bias(&mut y, bias[m]);
    }
    Ok((y, saved))
}

/// Backward of [`project`]: `d_in (=|+=) g W` plus the LoRA terms; adds the LoRA factors' gradients into `grads`.
#[allow(clippy::too_many_arguments)]
fn project_backward(
    ctx: &Context,
    w: &LayerWeights,
    m: usize,
    x: &[f32],
    saved: Option<&LoraSaved>,
    g: &[f32],
    d_in: &mut [f32],
    mode: Mode,
    grads: &mut [Vec<f32>],
) -> Result<()> {
    let n = ctx.dims.n();
    let weight = w.linears[m];
    let inp = x.len() / n.max(1);
    let out = weight.len() / inp.max(1);
    matmul(
        d_in,
        0,
        inp,
        (n, inp, out),
        View::rows(g, 0, out),
        View::rows(weight, 0, inp),
        mode,
        1.0,
        Threads::Par,
    )?;
    let (Some(l), Some(s)) = (&w.lora[m], saved) else {
        return Ok(());
    };
    let r = l.rank;
    let mut du = vec![0f32; n * r];
    matmul(
        &mut du,
        0,
        r,
        (n, r, out),
        View::rows(g, 0, out),
        View::rows(l.b, 0, r),
        Mode::Set,
        l.scale,
        Threads::Par,
    )?;
    let gb = grads
        .get_mut(l.grad_b)
        .ok_or_else(|| candle_core::Error::Msg("engine: missing gradient buffer (a bug)".into()))?;
    matmul(
        gb,
        0,
        r,
        (out, r, n),
        View::rows(g, 0, out).t(),
        View::rows(&s.u, 0, r),
        Mode::Add,
        l.scale,
        Threads::Par,
    )?;
    let xm = Dropout::masked(s.dropout.as_ref(), x);
    let ga = grads
        .get_mut(l.grad_a)
        .ok_or_else(|| candle_core::Error::Msg("engine: missing gradient buffer (a bug)".into()))?;
    matmul(
        ga,
        0,
        inp,
        (r, inp, n),
        View::rows(&du, 0, r).t(),
        View::rows(&xm, 0, inp),
        Mode::Add,
        1.0,
        Threads::Par,
    )?;
    match &s.dropout {
        Some(d) => {
            let mut dx = vec![0f32; n * inp];
            matmul(
                &mut dx,
                0,
                inp,
                (n, inp, r),
                View::rows(&du, 0, r),
                View::rows(l.a, 0, inp),
                Mode::Set,
                1.0,
                Threads::Par,
            )?;
            d.add_masked(d_in, &dx);
        }
        None => {
            matmul(
                d_in,
                0,
                inp,
                (n, inp, r),
                View::rows(&du, 0, r),
                View::rows(l.a, 0, inp),
                Mode::Add,
                1.0,
                Threads::Par,
            )?;
        }
    }
    Ok(())
}

/// One layer forward from its input `x`; returns the output and the activations for backward.
pub(crate) fn forward(
    ctx: &Context,
    w: &LayerWeights,
    x: Vec<f32>,
    noise: &mut Noise,
) -> Result<(Vec<f32>, Saved)> {
    let d = ctx.dims;
    let rot = |y: &mut Vec<f32>, heads: usize| {
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
    let mut h1 = vec![0f32; x.len()];
    let inv1 = kernels::rms_forward(&x, w.input_norm, d.eps, &mut h1);
    let (mut q, lq) = project(ctx, w, 0, &h1, noise)?;
    let (mut k, lk) = project(ctx, w, 1, &h1, noise)?;
    let (v, lv) = project(ctx, w, 2, &h1, noise)?;
    rot(&mut q, d.heads);
    rot(&mut k, d.kv_heads);
    let (probs, attn) = attention(ctx, &q, &k, &v)?;
    let (mut x2, lo) = project(ctx, w, 3, &attn, noise)?;
    kernels::add_assign(&mut x2, &x);
    let mut h2 = vec![0f32; x.len()];
    let inv2 = kernels::rms_forward(&x2, w.post_norm, d.eps, &mut h2);
    let (gate, lg) = project(ctx, w, 4, &h2, noise)?;
    let (up, lu) = project(ctx, w, 5, &h2, noise)?;
    let mut act = vec![0f32; gate.len()];
    kernels::swiglu(&gate, &up, &mut act);
    let (mut out, ld) = project(ctx, w, 6, &act, noise)?;
    kernels::add_assign(&mut out, &x2);
    let saved = Saved {
        x,
        inv1,
        h1,
        q,
        k,
        v,
        probs,
        attn,
        x2,
        inv2,
        h2,
        gate,
        up,
        act,
        lora: [lq, lk, lv, lo, lg, lu, ld],
    };
    Ok((out, saved))
}

/// One layer backward: turns `dy` (the gradient at the layer's output) into the gradient at its input, adding the
/// LoRA gradients into `grads`.
pub(crate) fn backward(
    ctx: &Context,
    w: &LayerWeights,
    s: &Saved,
    mut dy: Vec<f32>,
    grads: &mut [Vec<f32>],
) -> Result<Vec<f32>> {
    let d = ctx.dims;
    let n = d.n();
    let lora = |m: usize| s.lora[m].as_ref();
    // MLP: out = x2 + down(silu(gate) · up).
    let mut d_gate = vec![0f32; n * d.inter];
    project_backward(
        ctx,
        w,
        6,
        &s.act,
        lora(6),
        &dy,
        &mut d_gate,
        Mode::Set,
        grads,
    )?;
    let mut d_up = vec![0f32; n * d.inter];
    kernels::swiglu_backward(&s.gate, &s.up, &mut d_gate, &mut d_up);
    let mut d_h2 = vec![0f32; n * d.hidden];
    project_backward(
        ctx,
        w,
        4,
        &s.h2,
        lora(4),
        &d_gate,
        &mut d_h2,
        Mode::Set,
        grads,
    )?;
    project_backward(
        ctx,
        w,
        5,
        &s.h2,
        lora(5),
        &d_up,
        &mut d_h2,
        Mode::Add,
        grads,
    )?;
    drop((d_gate, d_up));
    kernels::rms_backward(&d_h2, &s.x2, &s.inv2, w.post_norm, &mut dy);
    // Attention: x2 = x + o(attn(q, k, v)).
    let mut d_attn = vec![0f32; n * d.q_width()];
    project_backward(
        ctx,
        w,
        3,
        &s.attn,
        lora(3),
        &dy,
        &mut d_attn,
        Mode::Set,
        grads,
    )?;
    let (mut dq, mut dk, dv) = attention_backward(ctx, s, &d_attn)?;
    kernels::rope(
        &mut dq,
        d.q_width(),
        d.head_dim,
        d.t,
        ctx.cos,
        ctx.sin,
        true,
    );
    kernels::rope(
        &mut dk,
        d.kv_width(),
        d.head_dim,
        d.t,
        ctx.cos,
        ctx.sin,
        true,
    );
    let mut d_h1 = d_h2;
    project_backward(ctx, w, 0, &s.h1, lora(0), &dq, &mut d_h1, Mode::Set, grads)?;
    project_backward(ctx, w, 1, &s.h1, lora(1), &dk, &mut d_h1, Mode::Add, grads)?;
    project_backward(ctx, w, 2, &s.h1, lora(2), &dv, &mut d_h1, Mode::Add, grads)?;
    kernels::rms_backward(&d_h1, &s.x, &s.inv1, w.input_norm, &mut dy);
    Ok(dy)
}

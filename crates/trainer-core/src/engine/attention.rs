//! Causal grouped-query attention of the engine, forward and backward, on `[n, heads · head_dim]` row layouts.
//!
//! Each (sequence, head) is one parallel task working on its own `[t, t]` probability block. Query rows are taken
//! in blocks of [`BLOCK`], and each block's products stop at its last key, so the masked upper triangle is
//! (mostly) never computed: about 40% fewer attention FLOPs at t = 256.

use candle_core::Result;
use rayon::prelude::*;

use super::gemm::{matmul, Mode, Threads, View};
use super::kernels;
use super::layer::Context;
use super::workspace::{Buf, Saved, Scratch};

/// Query rows per block of the causal products.
const BLOCK: usize = 64;

/// `(start, end)` of each query-row block of a sequence of length `t`.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(BLOCK)
        .map(move |i0| (i0, (i0 + BLOCK).min(t)))
}

/// Copies per-head blocks `[b, heads, t, hd]` into rows `[b · t, heads · hd]` of `out`.
fn heads_to_rows(src: &[f32], t: usize, heads: usize, hd: usize, out: &mut [f32]) {
    let width = heads * hd;
    out.par_chunks_mut(width).enumerate().for_each(|(row, o)| {
        let (bi, ti) = (row / t, row % t);
        for (hi, dst) in o.chunks_mut(hd).enumerate() {
            dst.copy_from_slice(&src[((bi * heads + hi) * t + ti) * hd..][..hd]);
        }
    });
}

/// One (sequence, head) of the forward: the probabilities row block by row block into `p` (the whole `[t, t]`
/// block when `keep`, else a `[BLOCK, t]` scratch reused per block), and the head's output `[t, hd]` into `o`.
#[allow(clippy::too_many_arguments)]
fn attend(
    ctx: &Context,
    (q, k, v): (&[f32], &[f32], &[f32]),
    bh: usize,
    p: &mut [f32],
    keep: bool,
    o: &mut [f32],
) -> Result<()> {
    let d = ctx.dims;
    let (t, hd, nh) = (d.t, d.head_dim, d.heads);
    let (qw, kw) = (d.q_width(), d.kv_width());
    let rep = nh / d.kv_heads.max(1);
    let scale = 1.0 / (hd as f32).sqrt();
    let (bi, hi) = (bh / nh, bh % nh);
    let g = hi / rep;
    let (q_off, kv_off) = (bi * t * qw + hi * hd, bi * t * kw + g * hd);
    for (i0, i1) in blocks(t) {
        let pb = if keep {
            &mut p[i0 * t..i1 * t]
        } else {
            &mut p[..(i1 - i0) * t]
        };
        matmul(
            pb,
            0,
            t,
            (i1 - i0, i1, hd),
            View::rows(q, q_off + i0 * qw, qw),
            View::rows(k, kv_off, kw).t(),
            Mode::Set,
            1.0,
            Threads::Seq,
        )?;
        kernels::causal_softmax(pb, t, i0, scale);
        matmul(
            o,
            i0 * hd,
            hd,
            (i1 - i0, hd, i1),
            View::rows(pb, 0, t),
            View::rows(v, kv_off, kw),
            Mode::Set,
            1.0,
            Threads::Seq,
        )?;
    }
    Ok(())
}

/// Causal attention of rotated `q` `[n, heads·hd]`, `k`, `v` `[n, kv_heads·hd]` into `out` `[n, heads·hd]`. With
/// `probs`, the probabilities `[b, heads, t, t]` (upper triangle 0) are kept there for the backward.
pub(crate) fn attention(
    ctx: &Context,
    qkv: (&[f32], &[f32], &[f32]),
    probs: Option<&mut Buf>,
    heads: &mut Buf,
    out: &mut [f32],
) -> Result<()> {
    let d = ctx.dims;
    let (t, hd, nh) = (d.t, d.head_dim, d.heads);
    let heads = heads.fit(d.b * nh * t * hd);
    match probs {
        Some(probs) => probs
            .fit(d.b * nh * t * t)
            .par_chunks_mut(t * t)
            .zip(heads.par_chunks_mut(t * hd))
            .enumerate()
            .try_for_each(|(bh, (p, o))| attend(ctx, qkv, bh, p, true, o))?,
        None => heads.par_chunks_mut(t * hd).enumerate().try_for_each_init(
            || vec![0f32; BLOCK.min(t) * t],
            |p, (bh, o)| attend(ctx, qkv, bh, p, false, o),
        )?,
    }
    heads_to_rows(heads, t, nh, hd, out);
    Ok(())
}

/// Backward of [`attention`] given `d_attn` `[n, heads·hd]`: writes `dq` (before the inverse RoPE), `dk`, `dv` as
/// rows into the scratch.
pub(crate) fn attention_backward(ctx: &Context, s: &Saved, sc: &mut Scratch) -> Result<()> {
    let d = ctx.dims;
    let (t, hd, nh, nkv) = (d.t, d.head_dim, d.heads, d.kv_heads);
    let (qw, kw) = (d.q_width(), d.kv_width());
    let rep = nh / nkv.max(1);
    let scale = 1.0 / (hd as f32).sqrt();
    let dq_heads = sc.dq_h.fit(d.b * nh * t * hd);
    let dk_heads = sc.dk_h.fit(d.b * nkv * t * hd);
    let dv_heads = sc.dv_h.fit(d.b * nkv * t * hd);
    let dps = sc.dp.fit(d.b * nkv * t * t);
    let d_attn: &[f32] = &sc.d_attn;
    let (q, k, v, probs): (&[f32], &[f32], &[f32], &[f32]) = (&s.q, &s.k, &s.v, &s.probs);
    // One task per (sequence, kv head): it owns that kv head's dK, dV and the dQ of the query heads sharing it.
    dq_heads
        .par_chunks_mut(rep * t * hd)
        .zip(
            dk_heads
                .par_chunks_mut(t * hd)
                .zip(dv_heads.par_chunks_mut(t * hd)),
        )
        .zip(dps.par_chunks_mut(t * t))
        .enumerate()
        .try_for_each(|(bg, ((dq, (dk, dv)), dp))| -> Result<()> {
            let (bi, g) = (bg / nkv, bg % nkv);
            let kv_off = bi * t * kw + g * hd;
            for j in 0..rep {
                let hi = g * rep + j;
                let p = &probs[(bi * nh + hi) * t * t..][..t * t];
                let q_off = bi * t * qw + hi * hd;
                let mode = if j == 0 { Mode::Set } else { Mode::Add };
                for (i0, i1) in blocks(t) {
                    // dP = dO Vᵀ (columns past the block's last key are never read).
                    let d_o = View::rows(d_attn, q_off + i0 * qw, qw);
                    let vt = View::rows(v, kv_off, kw).t();
                    matmul(
                        dp,
                        i0 * t,
                        t,
                        (i1 - i0, i1, hd),
                        d_o,
                        vt,
                        Mode::Set,
                        1.0,
                        Threads::Seq,
                    )?;
                    // dV[keys i0..i1] (+)= P[queries i0.., keys i0..i1]ᵀ dO[queries i0..].
                    let pt = View::rows(p, i0 * t + i0, t).t();
                    let d_o = View::rows(d_attn, q_off + i0 * qw, qw);
                    matmul(
                        dv,
                        i0 * hd,
                        hd,
                        (i1 - i0, hd, t - i0),
                        pt,
                        d_o,
                        mode,
                        1.0,
                        Threads::Seq,
                    )?;
                }
                kernels::causal_softmax_backward(dp, p, t, scale);
                for (i0, i1) in blocks(t) {
                    // dQ[queries i0..i1] = dS[.., keys ..i1] K[..i1].
                    let ds = View::rows(dp, i0 * t, t);
                    let kv = View::rows(k, kv_off, kw);
                    matmul(
                        dq,
                        j * t * hd + i0 * hd,
                        hd,
                        (i1 - i0, hd, i1),
                        ds,
                        kv,
                        Mode::Set,
                        1.0,
                        Threads::Seq,
                    )?;
                    // dK[keys i0..i1] (+)= dS[queries i0.., keys i0..i1]ᵀ Q[queries i0..].
                    let dst = View::rows(dp, i0 * t + i0, t).t();
                    let qv = View::rows(q, q_off + i0 * qw, qw);
                    matmul(
                        dk,
                        i0 * hd,
                        hd,
                        (i1 - i0, hd, t - i0),
                        dst,
                        qv,
                        mode,
                        1.0,
                        Threads::Seq,
                    )?;
                }
            }
            Ok(())
        })?;
    let n = d.b * t;
    heads_to_rows(dq_heads, t, nh, hd, sc.dq.fit(n * qw));
    heads_to_rows(dk_heads, t, nkv, hd, sc.dk.fit(n * kw));
    heads_to_rows(dv_heads, t, nkv, hd, sc.dv.fit(n * kw));
    Ok(())
}

//! The CPU engine: a hand-written forward and backward pass of the whole decoder on plain f32 buffers, without
//! candle's autograd. It is the one CPU implementation of the model: training (LoRA pairs, and trained
//! `lm_head`/`embed_tokens` copies), evaluation, logits and perplexity all run through it.
//!
//! The forward keeps exactly the activations the backward needs, in a [`Workspace`] reused across layers,
//! micro-batches and steps; the frozen weights are read in the form they are stored in (f32 in place, packed
//! types expanded a panel at a time, `product.rs`); the input gradients and the trained tensors' gradients are
//! accumulated straight into their buffers by the matrix products (`gemm`'s `dst += a·b`); and all parallel work,
//! products and element-wise kernels alike, runs on one rayon pool. The tests compare it with candle's autograd
//! over the composed ops of `decoder.rs`.

mod attention;
pub mod bench;
mod bf16;
mod decode;
mod gemm;
mod head;
mod kernels;
mod layer;
mod net;
mod product;
mod workspace;

pub(crate) use decode::{step as decode_step, KvCache};
pub(crate) use net::{AdapterPins, Extras, Net, PairRef, Pins};
pub(crate) use workspace::Workspace;

use candle_core::Result;

use crate::decoder::Noise;
use layer::{Context, Dims};

/// What one micro-batch needs besides the model.
pub(crate) struct Batch<'a> {
    /// `[b, t]` token ids (right-padded), row-major.
    pub ids: &'a [u32],
    pub b: usize,
    pub t: usize,
    /// Flat row indices `bi * t + pos` whose next token is scored.
    pub rows: &'a [u32],
    /// The label of each scored row.
    pub targets: &'a [u32],
    /// The loss is `Σ nll / total` (all scored tokens of the optimizer step).
    pub total: usize,
}

fn dims(net: &Net, b: usize, t: usize) -> Dims {
    let cfg = net.cfg;
    Dims {
        b,
        t,
        hidden: cfg.hidden_size,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        inter: cfg.intermediate_size,
        eps: cfg.rms_norm_eps as f32,
    }
}

/// The embeddings of `ids` into `ws.xs[0]`, with NEFTune noise when `noise` asks for it (drawn in the autograd
/// path's order: one uniform value per element, row-major).
fn embed(
    net: &Net,
    ids: &[u32],
    t: usize,
    noise: Option<&mut Noise>,
    ws: &mut Workspace,
) -> Result<()> {
    let h = net.cfg.hidden_size;
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= net.embed.rows) {
        candle_core::bail!(
            "engine: token id {bad} is outside the vocabulary of {}",
            net.embed.rows
        )
    }
    let x = ws.xs[0].fit(ids.len() * h);
    net.embed.gather_rows(ids, x)?;
    if let Some((n, alpha)) = noise.and_then(|n| n.neftune_alpha.map(|a| (n, a))) {
        // NEFTune (transformers `neftune_post_forward_hook`): U(-mag, mag), mag = alpha / sqrt(T * H).
        let mag = (alpha / ((t * h) as f64).sqrt()) as f32;
        ws.noise.resize(x.len(), 0.0);
        n.rng.fill_uniform(&mut ws.noise, -mag, mag);
        x.iter_mut().zip(&ws.noise).for_each(|(x, e)| *x += e);
    }
    Ok(())
}

/// Forward and backward of one micro-batch. Adds `d(Σ nll / total)/dθ` into `grads` (one buffer per trained
/// tensor, indexed as the net's extras say) and returns `Σ nll` over the scored rows. With `checkpointing`, only
/// each layer's input is kept and the layer is recomputed in backward (its dropout masks replayed from the RNG).
pub(crate) fn micro_batch(
    net: &Net,
    batch: &Batch,
    noise: &mut Noise,
    checkpointing: bool,
    grads: &mut [Vec<f32>],
    ws: &mut Workspace,
) -> Result<f64> {
    let (b, t) = (batch.b, batch.t);
    let dims = dims(net, b, t);
    let layers = net.layers.len();
    let (cos, sin) = net.rope_half_tables(t);
    let ctx = Context {
        dims: &dims,
        cos: &cos,
        sin: &sin,
    };
    ws.layout(layers, if checkpointing { 1 } else { layers });
    embed(net, batch.ids, t, Some(&mut *noise), ws)?;

    // Forward.
    let mut rng_before = Vec::with_capacity(if checkpointing { layers } else { 0 });
    for (li, lw) in net.layers.iter().enumerate() {
        if checkpointing {
            rng_before.push(noise.rng.clone());
        }
        let (inp, out) = ws.xs.split_at_mut(li + 1);
        let s = &mut ws.saved[if checkpointing { 0 } else { li }];
        layer::forward(
            &ctx,
            lw,
            &inp[li],
            &mut out[0],
            s,
            &mut ws.scratch,
            Some(&mut *noise),
            true,
        )?;
    }
    let rng_after = noise.rng.clone();

    // Loss and its gradient at the last layer's output.
    let nll = head::loss_backward(
        net,
        &dims,
        &ws.xs[layers],
        (batch.rows, batch.targets, batch.total),
        &mut ws.head,
        &mut ws.scratch.tmp.panel,
        &mut ws.dy,
        grads,
    )?;

    // Backward.
    for (li, lw) in net.layers.iter().enumerate().rev() {
        let (inp, out) = ws.xs.split_at_mut(li + 1);
        let x = &inp[li];
        let s = if checkpointing {
            *noise.rng = rng_before[li].clone();
            let s = &mut ws.saved[0];
            layer::forward(
                &ctx,
                lw,
                x,
                &mut out[0],
                s,
                &mut ws.scratch,
                Some(&mut *noise),
                true,
            )?;
            &ws.saved[0]
        } else {
            &ws.saved[li]
        };
        layer::backward(&ctx, lw, x, s, &mut ws.dy, &mut ws.scratch, grads)?;
    }
    *noise.rng = rng_after;

    if let Some(gi) = net.embed_grad {
        let h = dims.hidden;
        let g = grads.get_mut(gi).ok_or_else(|| {
            candle_core::Error::Msg("engine: missing embed_tokens gradient buffer (a bug)".into())
        })?;
        for (&id, row) in batch.ids.iter().zip(ws.dy.chunks(h)) {
            let dst = &mut g[id as usize * h..(id as usize + 1) * h];
            dst.iter_mut().zip(row).for_each(|(d, r)| *d += r);
        }
    }
    Ok(nll)
}

/// The forward pass alone (no dropout, no noise, nothing kept for a backward) of `[b, t]` ids; leaves the last
/// layer's output in the last residual buffer.
fn forward(net: &Net, ids: &[u32], b: usize, t: usize, ws: &mut Workspace) -> Result<Dims> {
    let dims = dims(net, b, t);
    let (cos, sin) = net.rope_half_tables(t);
    let ctx = Context {
        dims: &dims,
        cos: &cos,
        sin: &sin,
    };
    // Two residual buffers, used in turn.
    ws.layout(1, 1);
    embed(net, ids, t, None, ws)?;
    for (li, lw) in net.layers.iter().enumerate() {
        let (first, second) = ws.xs.split_at_mut(1);
        let (inp, out) = if li % 2 == 0 {
            (&first[0], &mut second[0])
        } else {
            (&second[0], &mut first[0])
        };
        layer::forward(
            &ctx,
            lw,
            inp,
            out,
            &mut ws.saved[0],
            &mut ws.scratch,
            None,
            false,
        )?;
    }
    if net.layers.len() % 2 == 1 {
        ws.xs.swap(0, 1);
    }
    Ok(dims)
}

/// `Σ nll` of the scored `rows` (flat `bi * t + pos`, labels `targets`) of `[b, t]` ids, forward only.
pub(crate) fn nll_sum(
    net: &Net,
    (ids, b, t): (&[u32], usize, usize),
    rows: &[u32],
    targets: &[u32],
    ws: &mut Workspace,
) -> Result<f64> {
    let dims = forward(net, ids, b, t, ws)?;
    head::nll_sum(
        net,
        &dims,
        &ws.xs[0],
        (rows, targets),
        &mut ws.head,
        &mut ws.scratch.tmp.panel,
    )
}

/// The logits `[t, vocab]` of one sequence, forward only.
pub(crate) fn logits(net: &Net, ids: &[u32], ws: &mut Workspace) -> Result<Vec<f32>> {
    let dims = forward(net, ids, 1, ids.len(), ws)?;
    head::logits(
        net,
        &dims,
        &ws.xs[0],
        &mut ws.head,
        &mut ws.scratch.tmp.panel,
    )
}

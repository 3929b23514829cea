//! The CPU training engine: a hand-written forward and backward pass of the whole decoder for one micro-batch,
//! on plain f32 buffers, without candle's autograd.
//!
//! candle's backprop keeps a graph node per op, starts every gradient as `zeros_like` and adds into it, and runs
//! element-wise ops on its own spinning thread pool that competes with the matrix-product threads. Here the
//! forward keeps exactly the activations the backward needs, the frozen weights' input gradients and the LoRA
//! gradients are accumulated straight into their buffers by the matrix products (`gemm`'s `dst += a·b`), and all
//! parallel work, products and element-wise kernels alike, runs on one rayon pool. The math is that of the fused
//! candle ops (`fused.rs`, `fused_attention.rs`, `loss.rs`), which the tests compare it with.
//!
//! Used for training on the CPU with f32 weights when only LoRA pairs are trained (a trained `lm_head` or
//! `embed_tokens` copy goes through candle's autograd).

mod attention;
mod gemm;
mod kernels;
mod layer;

use candle_core::{CpuStorage, Result, Storage, StorageRef, Tensor};

use crate::decoder::{Decoder, Noise};
use crate::lora::LoraWeights;
use crate::rng::Rng;
use gemm::{matmul, Mode, Threads, View};
use layer::{Dims, LayerWeights, Lora, Saved};
use rayon::prelude::*;

/// Rows of the output projection computed at once (the `[rows, vocab]` logits buffer).
const HEAD_CHUNK: usize = 256;

/// One LoRA pair's factors as the engine reads them, and where its gradients go.
pub(crate) struct PairParams {
    pub layer: usize,
    pub module: usize,
    /// `[r, in]`.
    pub a: Vec<f32>,
    /// `[out, r]`.
    pub b: Vec<f32>,
    /// Index of A's and B's gradient buffers in the result.
    pub grad_a: usize,
    pub grad_b: usize,
}

/// What one micro-batch needs besides the model.
pub(crate) struct Batch<'a> {
    /// `[b, t]` token ids (right-padded).
    pub ids: &'a Tensor,
    /// Flat row indices `bi * t + pos` whose next token is scored.
    pub rows: &'a [u32],
    /// The label of each scored row.
    pub targets: &'a [u32],
    /// The loss is `Σ nll / total` (all scored tokens of the optimizer step).
    pub total: usize,
}

/// A tensor's contiguous CPU f32 data, kept borrowed for the micro-batch.
struct Borrowed<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> Borrowed<'a> {
    fn new(t: &'a Tensor) -> Option<Self> {
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))).then_some(Self { guard, start, end })
    }

    fn slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.end],
            // `new` admits only CPU f32 storages.
            _ => &[],
        }
    }
}

/// [`Borrowed::new`] or an error.
fn borrow(t: &Tensor) -> Result<Borrowed<'_>> {
    Borrowed::new(t).ok_or_else(|| {
        candle_core::Error::Msg("engine: a weight is not contiguous f32 on the CPU".into())
    })
}

/// Whether the engine can train this model and adapter: CPU, contiguous f32 weights, only LoRA pairs trained
/// (whether it should, the caller decides: `Model::engine_enabled`).
pub(crate) fn supports(d: &Decoder, lw: &LoraWeights) -> bool {
    let w = d.w;
    let mut tensors: Vec<&Tensor> = vec![&w.embed, &w.norm, d.head(Some(lw))];
    for l in &w.layers {
        tensors.extend([&l.input_norm, &l.post_norm]);
        tensors.extend(l.linears.iter());
        tensors.extend(l.qkv_bias.iter().flatten());
    }
    lw.lm_head.is_none()
        && lw.embed_tokens.is_none()
        && tensors
            .iter()
            .all(|t| t.device().is_cpu() && Borrowed::new(t).is_some())
}

/// Forward and backward of one micro-batch. Adds `d(Σ nll / total)/dθ` into `grads` (one buffer per parameter,
/// indexed by `PairParams::grad_a`/`grad_b`) and returns `Σ nll` over the scored rows. With `checkpointing`, only
/// each layer's input is kept and the layer is recomputed in backward (its dropout masks replayed from the RNG).
pub(crate) fn micro_batch(
    d: &Decoder,
    lw: &LoraWeights,
    pairs: &[PairParams],
    batch: &Batch,
    noise: &mut Noise,
    checkpointing: bool,
    grads: &mut [Vec<f32>],
) -> Result<f64> {
    let cfg = d.cfg;
    let (b, t) = batch.ids.dims2()?;
    let dims = Dims {
        b,
        t,
        hidden: cfg.hidden_size,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        inter: cfg.intermediate_size,
        eps: cfg.rms_norm_eps as f32,
    };
    let x0 = d
        .embed(batch.ids, Some(lw), Some(&mut *noise))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (cos, sin) = d.rope_half_tables(t)?;

    let guards: Vec<[Borrowed; 9]> =
        d.w.layers
            .iter()
            .map(|l| {
                Ok([
                    borrow(&l.input_norm)?,
                    borrow(&l.linears[0])?,
                    borrow(&l.linears[1])?,
                    borrow(&l.linears[2])?,
                    borrow(&l.linears[3])?,
                    borrow(&l.linears[4])?,
                    borrow(&l.linears[5])?,
                    borrow(&l.linears[6])?,
                    borrow(&l.post_norm)?,
                ])
            })
            .collect::<Result<_>>()?;
    let bias_guards: Vec<Option<[Borrowed; 3]>> =
        d.w.layers
            .iter()
            .map(|l| {
                l.qkv_bias
                    .as_ref()
                    .map(|bs| Ok([borrow(&bs[0])?, borrow(&bs[1])?, borrow(&bs[2])?]))
                    .transpose()
            })
            .collect::<Result<_>>()?;
    let mut lora: Vec<[Option<Lora>; 7]> =
        (0..d.w.layers.len()).map(|_| Default::default()).collect();
    for p in pairs {
        lora[p.layer][p.module] = Some(Lora {
            a: &p.a,
            b: &p.b,
            rank: p.a.len() / d.w.layers[p.layer].linears[p.module].dim(1)?.max(1),
            scale: lw.scale as f32,
            grad_a: p.grad_a,
            grad_b: p.grad_b,
        });
    }
    let layers: Vec<LayerWeights> = guards
        .iter()
        .zip(&bias_guards)
        .zip(&lora)
        .map(|((g, bias), lora)| LayerWeights {
            input_norm: g[0].slice(),
            linears: [
                g[1].slice(),
                g[2].slice(),
                g[3].slice(),
                g[4].slice(),
                g[5].slice(),
                g[6].slice(),
                g[7].slice(),
            ],
            bias: bias
                .as_ref()
                .map(|b| [b[0].slice(), b[1].slice(), b[2].slice()]),
            post_norm: g[8].slice(),
            lora,
        })
        .collect();
    let ctx = layer::Context {
        dims: &dims,
        cos: &cos,
        sin: &sin,
    };

    // Forward.
    let mut x = x0;
    let mut saved: Vec<Saved> = Vec::with_capacity(layers.len());
    let mut rng_before: Vec<Rng> = Vec::new();
    let mut inputs: Vec<Vec<f32>> = Vec::new();
    for lwts in &layers {
        if checkpointing {
            rng_before.push(noise.rng.clone());
            inputs.push(x.clone());
            x = layer::forward(&ctx, lwts, x, noise)?.0;
        } else {
            let (out, s) = layer::forward(&ctx, lwts, x, noise)?;
            saved.push(s);
            x = out;
        }
    }
    let rng_after = noise.rng.clone();

    // Loss and its gradient at the last hidden state.
    let final_norm = borrow(&d.w.norm)?;
    let head = borrow(d.head(Some(lw)))?;
    let (nll, mut dy) = head_loss(&dims, &x, final_norm.slice(), head.slice(), batch)?;
    drop(x);

    // Backward.
    for li in (0..layers.len()).rev() {
        let s = if checkpointing {
            *noise.rng = rng_before[li].clone();
            let input = std::mem::take(&mut inputs[li]);
            layer::forward(&ctx, &layers[li], input, noise)?.1
        } else {
            saved.pop().ok_or_else(|| {
                candle_core::Error::Msg("engine: missing saved layer (a bug)".into())
            })?
        };
        dy = layer::backward(&ctx, &layers[li], &s, dy, grads)?;
    }
    *noise.rng = rng_after;
    Ok(nll)
}

/// Final RMSNorm, the output projection of the scored rows chunk by chunk and the cross-entropy; returns `Σ nll`
/// and the gradient of `Σ nll / total` at the last layer's output. The `[rows, vocab]` logits exist one chunk at a
/// time, and because the head is frozen each chunk's input gradient is taken right away.
fn head_loss(
    dims: &Dims,
    x: &[f32],
    norm: &[f32],
    head: &[f32],
    batch: &Batch,
) -> Result<(f64, Vec<f32>)> {
    let h = dims.hidden;
    let vocab = head.len() / h.max(1);
    let mut hf = vec![0f32; x.len()];
    let inv = kernels::rms_forward(x, norm, dims.eps, &mut hf);
    let scale = 1.0 / batch.total as f32;
    let mut d_hf = vec![0f32; x.len()];
    let mut logits = vec![0f32; HEAD_CHUNK.min(batch.rows.len()) * vocab];
    let mut rows_in = vec![0f32; HEAD_CHUNK.min(batch.rows.len()) * h];
    let mut rows_out = vec![0f32; rows_in.len()];
    if let Some(&bad) = batch.targets.iter().find(|&&tg| tg as usize >= vocab) {
        candle_core::bail!("engine: label {bad} is outside the vocabulary of {vocab}")
    }
    let mut nll = 0f64;
    for (rows, targets) in batch
        .rows
        .chunks(HEAD_CHUNK)
        .zip(batch.targets.chunks(HEAD_CHUNK))
    {
        let len = rows.len();
        for (dst, &r) in rows_in.chunks_mut(h).zip(rows) {
            let r = r as usize;
            let src = hf.get(r * h..(r + 1) * h).ok_or_else(|| {
                candle_core::Error::Msg(format!("engine: scored row {r} outside the batch (a bug)"))
            })?;
            dst.copy_from_slice(src);
        }
        let logits = &mut logits[..len * vocab];
        matmul(
            logits,
            0,
            vocab,
            (len, vocab, h),
            View::rows(&rows_in, 0, h),
            View::rows(head, 0, h).t(),
            Mode::Set,
            1.0,
            Threads::Par,
        )?;
        nll += logits
            .par_chunks_mut(vocab)
            .zip(targets.par_iter())
            .map(|(row, &tg)| {
                let l = crate::loss::softmax_minus_onehot(row, tg as usize);
                row.iter_mut().for_each(|v| *v *= scale);
                f64::from(l)
            })
            .sum::<f64>();
        matmul(
            &mut rows_out,
            0,
            h,
            (len, h, vocab),
            View::rows(logits, 0, vocab),
            View::rows(head, 0, h),
            Mode::Set,
            1.0,
            Threads::Par,
        )?;
        for (src, &r) in rows_out.chunks(h).zip(rows) {
            let r = r as usize;
            d_hf[r * h..(r + 1) * h].copy_from_slice(src);
        }
    }
    let mut dx = vec![0f32; x.len()];
    kernels::rms_backward(&d_hf, x, &inv, norm, &mut dx);
    Ok((nll, dx))
}

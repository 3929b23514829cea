//! The engine's buffers, owned by the caller (the trainer, or one inference call) and reused across layers,
//! micro-batches and steps: a buffer grows to the largest size asked of it and then stays, so a step allocates
//! (and the kernel faults in and zeroes) nothing new once the largest micro-batch has been seen.

use std::ops::{Deref, DerefMut};

use crate::dropout::Dropout;

/// A reusable f32 buffer: [`Buf::fit`] sets its length, growing the storage only when needed. Its contents are
/// whatever the last user left there; every user writes before it reads (or zeroes explicitly).
#[derive(Default)]
pub(crate) struct Buf {
    data: Vec<f32>,
    len: usize,
}

impl Buf {
    /// The buffer with length `n` (growing the storage if needed; new storage is zeroed once).
    pub(crate) fn fit(&mut self, n: usize) -> &mut [f32] {
        if self.data.len() < n {
            self.data.resize(n, 0.0);
        }
        self.len = n;
        &mut self.data[..n]
    }

    /// Bytes held (the storage, not the current length).
    pub(crate) fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

impl Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data[..self.len]
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.len]
    }
}

/// What a LoRA pair's backward needs: `u = (x ∘ mask) Aᵀ` and the dropout mask (its key: the mask is
/// regenerated, never stored).
#[derive(Default)]
pub(crate) struct LoraSaved {
    pub u: Buf,
    pub dropout: Option<Dropout>,
}

/// The activations of one layer kept for its backward (its input is kept by the caller). The normalized inputs
/// and `silu(gate) · up` are not kept: they are recomputed from what is (cheap element-wise work) when a LoRA pair
/// needs them as its input, and the attention output is kept only for a LoRA pair on `o_proj`.
#[derive(Default)]
pub(crate) struct Saved {
    pub inv1: Buf,
    /// After RoPE.
    pub q: Buf,
    pub k: Buf,
    pub v: Buf,
    /// `[b, heads, t, t]` (only when training).
    pub probs: Buf,
    /// Only with a LoRA pair on `o_proj` (else empty).
    pub attn: Buf,
    pub x2: Buf,
    pub inv2: Buf,
    pub gate: Buf,
    pub up: Buf,
    pub lora: [LoraSaved; 7],
}

impl Saved {
    fn bytes(&self) -> usize {
        [
            &self.inv1,
            &self.q,
            &self.k,
            &self.v,
            &self.probs,
            &self.attn,
            &self.x2,
            &self.inv2,
            &self.gate,
            &self.up,
        ]
        .iter()
        .map(|b| b.bytes())
        .sum::<usize>()
            + self.lora.iter().map(|l| l.u.bytes()).sum::<usize>()
    }
}

/// Temporaries of the projections: a masked input, the LoRA intermediates and the expanded weight panel.
#[derive(Default)]
pub(crate) struct Tmp {
    /// `x ∘ mask` (LoRA dropout).
    pub xm: Buf,
    /// `g B` of a LoRA pair.
    pub du: Buf,
    /// The LoRA input gradient before masking.
    pub dx: Buf,
    /// A weight panel expanded to f32.
    pub panel: Buf,
}

/// Temporaries of one layer's forward and backward, shared by all layers.
#[derive(Default)]
pub(crate) struct Scratch {
    pub tmp: Tmp,
    /// A normalized input (`h1`, then `h2`), computed in forward and recomputed in backward.
    pub h: Buf,
    /// The attention output when it is not kept.
    pub attn: Buf,
    /// `silu(gate) · up`, computed in forward and recomputed in backward.
    pub act: Buf,
    /// Attention output per head, `[b, heads, t, hd]`.
    pub heads: Buf,
    pub d_gate: Buf,
    pub d_up: Buf,
    /// Gradient at a normalized input (`h2`, then `h1`).
    pub d_h: Buf,
    pub d_attn: Buf,
    /// q/k/v gradients per head, then as rows.
    pub dq_h: Buf,
    pub dk_h: Buf,
    pub dv_h: Buf,
    pub dq: Buf,
    pub dk: Buf,
    pub dv: Buf,
    /// Probability gradients, one `[t, t]` block per (sequence, kv head) task.
    pub dp: Buf,
}

impl Scratch {
    fn bytes(&self) -> usize {
        [
            &self.tmp.xm,
            &self.tmp.du,
            &self.tmp.dx,
            &self.tmp.panel,
            &self.h,
            &self.attn,
            &self.act,
            &self.heads,
            &self.d_gate,
            &self.d_up,
            &self.d_h,
            &self.d_attn,
            &self.dq_h,
            &self.dk_h,
            &self.dv_h,
            &self.dq,
            &self.dk,
            &self.dv,
            &self.dp,
        ]
        .iter()
        .map(|b| b.bytes())
        .sum()
    }
}

/// Buffers of the output projection and the loss.
#[derive(Default)]
pub(crate) struct HeadBufs {
    /// The final RMSNorm's output and `1/rms` per row.
    pub hf: Buf,
    pub inv: Buf,
    /// Gradient at `hf`.
    pub d_hf: Buf,
    /// One chunk of logits (then of `softmax - onehot`).
    pub logits: Buf,
    /// The chunk's input rows and their gradient.
    pub rows_in: Buf,
    pub rows_out: Buf,
}

/// Everything one forward and backward of a micro-batch needs, kept between micro-batches and steps.
#[derive(Default)]
pub(crate) struct Workspace {
    /// The residual stream: the input of each layer, then the last layer's output.
    pub xs: Vec<Buf>,
    /// Per layer (one when checkpointing or running inference).
    pub saved: Vec<Saved>,
    pub scratch: Scratch,
    pub head: HeadBufs,
    /// Gradient of the residual stream.
    pub dy: Buf,
    /// NEFTune noise.
    pub noise: Vec<f32>,
}

impl Workspace {
    /// Makes room for `layers + 1` residual buffers and `saved` sets of layer activations.
    pub(crate) fn layout(&mut self, layers: usize, saved: usize) {
        if self.xs.len() < layers + 1 {
            self.xs.resize_with(layers + 1, Buf::default);
        }
        if self.saved.len() < saved {
            self.saved.resize_with(saved, Saved::default);
        }
    }

    /// Bytes held by all buffers.
    pub(crate) fn bytes(&self) -> usize {
        self.xs.iter().map(Buf::bytes).sum::<usize>()
            + self.saved.iter().map(Saved::bytes).sum::<usize>()
            + self.scratch.bytes()
            + [
                &self.head.hf,
                &self.head.inv,
                &self.head.d_hf,
                &self.head.logits,
                &self.head.rows_in,
                &self.head.rows_out,
                &self.dy,
            ]
            .iter()
            .map(|b| b.bytes())
            .sum::<usize>()
            + self.noise.len() * 4
    }
}

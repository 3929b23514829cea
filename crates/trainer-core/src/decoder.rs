//! The Llama-family decoder (llama, mistral, qwen2) in Hugging Face weight layout, differentiable end to end.
//!
//! Reference: transformers `models/llama/modeling_llama.py` (and qwen2's q/k/v bias). Built only from ops that
//! have a backward (see `ops.rs`), so LoRA Vars anywhere in it receive gradients.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::config::ModelConfig;
use crate::lora::{LoraPair, LoraWeights};
use crate::ops;
use crate::rng::Rng;

/// Frozen weights of one decoder layer, `[out, in]` linear weights.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub input_norm: Tensor,
    /// q, k, v, o, gate, up, down (the order of `lora::MODULES`).
    pub linears: [Tensor; 7],
    /// q, k, v biases (qwen2).
    pub qkv_bias: Option<[Tensor; 3]>,
    pub post_norm: Tensor,
}

/// All frozen weights.
#[derive(Debug, Clone)]
pub(crate) struct Weights {
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Tensor>,
    /// Per-frequency RoPE divisors from a GGUF `rope_freqs.weight` (llama3-style), if present.
    pub rope_freq_factors: Option<Vec<f64>>,
}

/// Training-time randomness: LoRA dropout and NEFTune noise, drawn from the trainer's seeded RNG.
pub(crate) struct Noise<'a> {
    pub rng: &'a mut Rng,
    pub lora_dropout: f64,
    pub neftune_alpha: Option<f64>,
}

impl Noise<'_> {
    fn dropout(&mut self, x: &Tensor) -> Result<Tensor> {
        let p = self.lora_dropout;
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if f64::from(self.rng.next_f32()) < p { 0.0 } else { keep })
            .collect();
        x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)
    }
}

pub(crate) struct Decoder<'a> {
    pub cfg: &'a ModelConfig,
    pub w: &'a Weights,
}

impl Decoder<'_> {
    fn rope_tables(&self, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let mut inv = self.cfg.inv_freq();
        if let Some(f) = &self.w.rope_freq_factors {
            for (v, d) in inv.iter_mut().zip(f) {
                *v /= d;
            }
        }
        let half = inv.len();
        let hd = 2 * half;
        let mut cos = vec![0f32; t * hd];
        let mut sin = vec![0f32; t * hd];
        for pos in 0..t {
            for (i, f) in inv.iter().enumerate() {
                // Match torch: freqs computed in f32 (inv_freq f32 times position f32).
                let angle = (*f as f32) * pos as f32;
                for j in [i, i + half] {
                    cos[pos * hd + j] = angle.cos();
                    sin[pos * hd + j] = angle.sin();
                }
            }
        }
        Ok((Tensor::from_vec(cos, (t, hd), device)?, Tensor::from_vec(sin, (t, hd), device)?))
    }

    fn proj(
        &self,
        x: &Tensor,
        layer: usize,
        m: usize,
        lora: Option<&LoraWeights>,
        noise: &mut Option<&mut Noise>,
    ) -> Result<Tensor> {
        let l = &self.w.layers[layer];
        let bias = match (&l.qkv_bias, m) {
            (Some(b), 0..=2) => Some(&b[m]),
            _ => None,
        };
        let y = ops::linear(x, &l.linears[m], bias)?;
        let Some(lw) = lora else { return Ok(y) };
        let Some(LoraPair { a, b }) = &lw.layers[layer][m] else { return Ok(y) };
        let xin = match noise {
            Some(n) => n.dropout(x)?,
            None => x.clone(),
        };
        let delta = ops::linear(&ops::linear(&xin, a, None)?, b, None)?;
        y + (delta * lw.scale)?
    }

    /// Final hidden states `[B, T, H]` (after the last RMSNorm) for token ids `[B, T]` (u32).
    pub(crate) fn hidden(
        &self,
        ids: &Tensor,
        lora: Option<&LoraWeights>,
        mut noise: Option<&mut Noise>,
    ) -> Result<Tensor> {
        let cfg = self.cfg;
        let (b, t) = ids.dims2()?;
        let device = ids.device();
        let embed = lora.and_then(|l| l.embed_tokens.as_ref()).unwrap_or(&self.w.embed);
        let mut x = embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, cfg.hidden_size))?;
        if let Some(n) = noise.as_deref_mut() {
            if let Some(alpha) = n.neftune_alpha {
                // NEFTune (transformers `neftune_post_forward_hook`): U(-mag, mag), mag = alpha / sqrt(T * H).
                let mag = (alpha / ((t * cfg.hidden_size) as f64).sqrt()) as f32;
                let noise_v = n.rng.uniform(x.elem_count(), -mag, mag);
                let noise_t = Tensor::from_vec(noise_v, x.shape(), device)?;
                x = (x + noise_t)?;
            }
        }
        let (cos, sin) = self.rope_tables(t, device)?;
        let mask = causal_mask(t, device)?;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, layer) in self.w.layers.iter().enumerate() {
            let h = ops::rms_norm(&x, &layer.input_norm, cfg.rms_norm_eps)?;
            let q = self.proj(&h, li, 0, lora, &mut noise)?;
            let k = self.proj(&h, li, 1, lora, &mut noise)?;
            let v = self.proj(&h, li, 2, lora, &mut noise)?;
            let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
            let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = ops::rope(&q, &cos, &sin)?;
            let k = repeat_kv(&ops::rope(&k, &cos, &sin)?, nh / nkv)?;
            let v = repeat_kv(&v, nh / nkv)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let probs = ops::softmax(&scores)?;
            let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
            let o = self.proj(&attn, li, 3, lora, &mut noise)?;
            x = (x + o)?;
            let h = ops::rms_norm(&x, &layer.post_norm, cfg.rms_norm_eps)?;
            let gate = self.proj(&h, li, 4, lora, &mut noise)?;
            let up = self.proj(&h, li, 5, lora, &mut noise)?;
            let mlp = self.proj(&(candle_nn::ops::silu(&gate)? * up)?, li, 6, lora, &mut noise)?;
            x = (x + mlp)?;
        }
        ops::rms_norm(&x, &self.w.norm, cfg.rms_norm_eps)
    }

    /// The output projection `[V, H]` in effect: a modules_to_save `lm_head`, else the base lm_head, else the
    /// base embeddings when tied (PEFT's default `ensure_weight_tying=false`: a trained `embed_tokens` copy does
    /// not move the tied head).
    pub(crate) fn head<'b>(&'b self, lora: Option<&'b LoraWeights>) -> &'b Tensor {
        lora.and_then(|l| l.lm_head.as_ref())
            .or(self.w.lm_head.as_ref())
            .unwrap_or(&self.w.embed)
    }
}

/// `[T, T]` additive mask: 0 on and below the diagonal, -inf above.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(v, (t, t), device)
}

/// `[B, KV, T, D]` -> `[B, KV * rep, T, D]`, each kv head repeated `rep` times (HF `repeat_kv`).
fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kv, rep, t, d))?.contiguous()?.reshape((b, kv * rep, t, d))
}

/// Log-probabilities `[N, V]` -> per-row NLL of `targets` `[N]` (u32), no masking.
pub(crate) fn nll_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    lsm.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}

/// Converts a flat id list into a `[1, T]` u32 tensor.
pub(crate) fn ids_tensor(ids: &[u32], device: &Device) -> Result<Tensor> {
    Tensor::from_slice(ids, (1, ids.len()), device)?.to_dtype(DType::U32)
}

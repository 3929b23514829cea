//! The model's weights, and the Llama-family decoder (llama, mistral, qwen2) in Hugging Face weight layout
//! composed from candle ops, differentiable end to end: the path for CUDA and the oracle the CPU engine is tested
//! against.
//!
//! Reference: transformers `models/llama/modeling_llama.py` (and qwen2's q/k/v bias). Built only from ops that
//! have a backward (see `ops.rs`), so LoRA Vars anywhere in it receive gradients.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::config::ModelConfig;
use crate::dropout::Dropout;
use crate::lora::{LoraPair, LoraWeights};
use crate::matrix::Matrix;
use crate::ops;
use crate::rng::Rng;

/// Frozen weights of one decoder layer, `[out, in]` linear weights.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// f32 norm weight.
    pub input_norm: Tensor,
    /// q, k, v, o, gate, up, down (the order of `lora::MODULES`), each as stored.
    pub linears: [Matrix; 7],
    /// q, k, v biases (qwen2).
    pub qkv_bias: Option<[Tensor; 3]>,
    pub post_norm: Tensor,
}

/// All frozen weights.
#[derive(Debug, Clone)]
pub(crate) struct Weights {
    pub embed: Matrix,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Matrix>,
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
    /// A dropout mask for a tensor of shape `shape` (kept entries scaled by `1/(1-p)`), or `None` when p = 0.
    fn dropout_mask(&mut self, x: &Tensor) -> Result<Option<Tensor>> {
        self.dropout()
            .map(|d| Tensor::from_vec(d.values(x.elem_count()), x.shape(), x.device()))
            .transpose()
    }

    /// The next LoRA dropout mask (one key drawn from the RNG), or `None` when p = 0.
    pub(crate) fn dropout(&mut self) -> Option<Dropout> {
        let p = self.lora_dropout;
        (p > 0.0).then(|| Dropout::new(self.rng.next_u64(), p))
    }
}

/// The first halves of the RoPE tables (half-split layout), `[t, head_dim / 2]` each: the other halves repeat
/// them. `factors` are per-frequency divisors (a GGUF `rope_freqs.weight`).
pub(crate) fn rope_half_tables(
    cfg: &ModelConfig,
    factors: Option<&[f64]>,
    t: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut inv = cfg.inv_freq();
    if let Some(f) = factors {
        for (v, d) in inv.iter_mut().zip(f) {
            *v /= d;
        }
    }
    let half = inv.len();
    let mut cos = vec![0f32; t * half];
    let mut sin = vec![0f32; t * half];
    for pos in 0..t {
        for (i, f) in inv.iter().enumerate() {
            // Match torch: freqs computed in f32 (inv_freq f32 times position f32).
            let angle = (*f as f32) * pos as f32;
            cos[pos * half + i] = angle.cos();
            sin[pos * half + i] = angle.sin();
        }
    }
    (cos, sin)
}

/// The candle decoder over the model's weights (packed weights are expanded as each op needs them).
pub(crate) struct Decoder<'a> {
    pub cfg: &'a ModelConfig,
    pub w: &'a Weights,
}

impl Decoder<'_> {
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, w, self.cfg.rms_norm_eps)
    }

    fn rope_tables(&self, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let (c, s) = rope_half_tables(self.cfg, self.w.rope_freq_factors.as_deref(), t);
        let half = c.len() / t.max(1);
        let full = |v: &[f32]| -> Vec<f32> {
            v.chunks(half.max(1))
                .flat_map(|row| row.iter().chain(row.iter()).copied())
                .collect()
        };
        Ok((
            Tensor::from_vec(full(&c), (t, 2 * half), device)?,
            Tensor::from_vec(full(&s), (t, 2 * half), device)?,
        ))
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
        let pair = lora.and_then(|lw| lw.layers[layer][m].as_ref().map(|p| (p, lw.scale)));
        let w = l.linears[m].to_tensor(x.device())?;
        let Some((LoraPair { a, b }, scale)) = pair else {
            return ops::linear(x, &w, bias);
        };
        let mask = match noise {
            Some(n) => n.dropout_mask(x)?,
            None => None,
        };
        let y = ops::linear(x, &w, bias)?;
        let xin = match &mask {
            Some(mk) => x.mul(mk)?,
            None => x.clone(),
        };
        let delta = ops::linear(&ops::linear(&xin, a, None)?, b, None)?;
        y + (delta * scale)?
    }

    /// Embeddings `[B, T, H]` of token ids `[B, T]` (u32), with NEFTune noise when training asks for it.
    pub(crate) fn embed(
        &self,
        ids: &Tensor,
        lora: Option<&LoraWeights>,
        noise: Option<&mut Noise>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let hsize = self.cfg.hidden_size;
        let embed = match lora.and_then(|l| l.embed_tokens.as_ref()) {
            Some(e) => e.clone(),
            None => self.w.embed.to_tensor(ids.device())?,
        };
        let x = embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, hsize))?;
        match noise.and_then(|n| n.neftune_alpha.map(|a| (n, a))) {
            Some((n, alpha)) => {
                // NEFTune (transformers `neftune_post_forward_hook`): U(-mag, mag), mag = alpha / sqrt(T * H).
                let mag = (alpha / ((t * hsize) as f64).sqrt()) as f32;
                let noise_v = n.rng.uniform(x.elem_count(), -mag, mag);
                let noise_t = Tensor::from_vec(noise_v, x.shape(), ids.device())?;
                x + noise_t
            }
            None => Ok(x),
        }
    }

    /// RoPE tables and the causal mask for sequences of length `t`.
    pub(crate) fn tables(&self, t: usize, device: &Device) -> Result<Tables> {
        let (cos, sin) = self.rope_tables(t, device)?;
        Ok(Tables {
            cos,
            sin,
            mask: causal_mask(t, device)?,
        })
    }

    /// One decoder layer on `[B, T, H]`.
    pub(crate) fn layer(
        &self,
        li: usize,
        x: &Tensor,
        tables: &Tables,
        lora: Option<&LoraWeights>,
        noise: &mut Option<&mut Noise>,
    ) -> Result<Tensor> {
        let cfg = self.cfg;
        let layer = &self.w.layers[li];
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let scale = 1.0 / (hd as f64).sqrt();
        let Tables { cos, sin, mask } = tables;
        let h = self.rms_norm(x, &layer.input_norm)?;
        let q = self.proj(&h, li, 0, lora, noise)?;
        let k = self.proj(&h, li, 1, lora, noise)?;
        let v = self.proj(&h, li, 2, lora, noise)?;
        let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let q = ops::rope(&q, cos, sin)?;
        let k = repeat_kv(&ops::rope(&k, cos, sin)?, nh / nkv)?;
        let v = repeat_kv(&v, nh / nkv)?;
        let scores = q.matmul(&k.t()?)?;
        let probs = ops::softmax(&(scores * scale)?.broadcast_add(mask)?)?;
        let attn = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        let o = self.proj(&attn, li, 3, lora, noise)?;
        let x = (x + o)?;
        let h = self.rms_norm(&x, &layer.post_norm)?;
        let gate = self.proj(&h, li, 4, lora, noise)?;
        let up = self.proj(&h, li, 5, lora, noise)?;
        let act = (candle_nn::ops::silu(&gate)? * up)?;
        let mlp = self.proj(&act, li, 6, lora, noise)?;
        x + mlp
    }

    /// The final RMSNorm.
    pub(crate) fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.rms_norm(x, &self.w.norm)
    }

    /// Final hidden states `[B, T, H]` (after the last RMSNorm) for token ids `[B, T]` (u32).
    pub(crate) fn hidden(
        &self,
        ids: &Tensor,
        lora: Option<&LoraWeights>,
        mut noise: Option<&mut Noise>,
    ) -> Result<Tensor> {
        let mut x = self.embed(ids, lora, noise.as_deref_mut())?;
        let tables = self.tables(ids.dim(1)?, ids.device())?;
        for li in 0..self.w.layers.len() {
            x = self.layer(li, &x, &tables, lora, &mut noise)?;
        }
        self.final_norm(&x)
    }

    /// The output projection `[V, H]` in effect: a modules_to_save `lm_head`, else the base lm_head, else the
    /// base embeddings when tied (PEFT's default `ensure_weight_tying=false`: a trained `embed_tokens` copy does
    /// not move the tied head).
    pub(crate) fn head(&self, lora: Option<&LoraWeights>, device: &Device) -> Result<Tensor> {
        match lora.and_then(|l| l.lm_head.as_ref()) {
            Some(h) => Ok(h.clone()),
            None => self
                .w
                .lm_head
                .as_ref()
                .unwrap_or(&self.w.embed)
                .to_tensor(device),
        }
    }
}

/// Per-sequence-length constants of the forward pass.
pub(crate) struct Tables {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
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
    x.unsqueeze(2)?
        .broadcast_as((b, kv, rep, t, d))?
        .contiguous()?
        .reshape((b, kv * rep, t, d))
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

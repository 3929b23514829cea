//! The model as the engine reads it: every frozen weight pinned in place (f32 borrowed from its tensor, packed
//! rows as stored), plus the LoRA pairs and trained embedding/head copies of a trainer or an adapter.

use candle_core::Result;

use super::layer::{LayerWeights, Lora};
use crate::config::ModelConfig;
use crate::decoder::Weights;
use crate::lora::LoraWeights;
use crate::matrix::{F32Pin, MatrixPin, MatrixRef};

/// A LoRA pair as the engine reads it: `a` `[r, in]`, `b` `[out, r]`, and where its gradients go (training).
pub(crate) struct PairRef<'a> {
    pub layer: usize,
    pub module: usize,
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub grad_a: usize,
    pub grad_b: usize,
}

/// What is applied on top of the frozen weights.
pub(crate) struct Extras<'a> {
    pub scale: f64,
    pub pairs: Vec<PairRef<'a>>,
    /// A replacement embedding `[vocab, hidden]` (modules_to_save `embed_tokens`) and its gradient buffer.
    pub embed: Option<(&'a [f32], usize)>,
    /// A replacement output projection `[vocab, hidden]` (modules_to_save `lm_head`) and its gradient buffer.
    pub head: Option<(&'a [f32], usize)>,
}

impl Extras<'_> {
    /// Nothing on top of the frozen weights.
    pub(crate) fn none() -> Self {
        Self {
            scale: 0.0,
            pairs: Vec::new(),
            embed: None,
            head: None,
        }
    }
}

/// The frozen weights pinned for one call.
pub(crate) struct Pins<'a> {
    rope_factors: Option<&'a [f64]>,
    layers: Vec<LayerPins<'a>>,
    embed: MatrixPin<'a>,
    norm: F32Pin<'a>,
    head: Option<MatrixPin<'a>>,
}

struct LayerPins<'a> {
    input_norm: F32Pin<'a>,
    linears: [MatrixPin<'a>; 7],
    bias: Option<[F32Pin<'a>; 3]>,
    post_norm: F32Pin<'a>,
}

impl<'a> Pins<'a> {
    /// Pins every frozen weight of `w`; fails unless all are on the CPU.
    pub(crate) fn new(w: &'a Weights) -> Result<Self> {
        let layers = w
            .layers
            .iter()
            .map(|l| {
                let lin = |m: usize| l.linears[m].pin();
                Ok(LayerPins {
                    input_norm: F32Pin::new(&l.input_norm)?,
                    linears: [
                        lin(0)?,
                        lin(1)?,
                        lin(2)?,
                        lin(3)?,
                        lin(4)?,
                        lin(5)?,
                        lin(6)?,
                    ],
                    bias: l
                        .qkv_bias
                        .as_ref()
                        .map(|b| {
                            Ok::<_, candle_core::Error>([
                                F32Pin::new(&b[0])?,
                                F32Pin::new(&b[1])?,
                                F32Pin::new(&b[2])?,
                            ])
                        })
                        .transpose()?,
                    post_norm: F32Pin::new(&l.post_norm)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            rope_factors: w.rope_freq_factors.as_deref(),
            layers,
            embed: w.embed.pin()?,
            norm: F32Pin::new(&w.norm)?,
            head: w.lm_head.as_ref().map(|h| h.pin()).transpose()?,
        })
    }
}

/// The whole model as the engine reads it.
pub(crate) struct Net<'a> {
    pub cfg: &'a ModelConfig,
    rope_factors: Option<&'a [f64]>,
    pub layers: Vec<LayerWeights<'a>>,
    /// The embedding looked up (a trained copy when there is one).
    pub embed: MatrixRef<'a>,
    pub embed_grad: Option<usize>,
    pub norm: &'a [f32],
    /// The output projection in effect: a trained copy, else the base lm_head, else the base embedding (tied;
    /// PEFT's default `ensure_weight_tying = false`: a trained `embed_tokens` copy does not move the tied head).
    pub head: MatrixRef<'a>,
    pub head_grad: Option<usize>,
}

impl<'a> Net<'a> {
    /// The view of pinned weights `p` with `extras` applied.
    pub(crate) fn new(cfg: &'a ModelConfig, p: &'a Pins<'a>, extras: Extras<'a>) -> Result<Self> {
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let mut lora: Vec<[Option<Lora>; 7]> =
            (0..p.layers.len()).map(|_| Default::default()).collect();
        for pair in extras.pairs {
            let inp = p
                .layers
                .get(pair.layer)
                .map(|l| l.linears[pair.module].view().cols)
                .ok_or_else(|| {
                    candle_core::Error::Msg("engine: LoRA pair of a missing layer (a bug)".into())
                })?;
            lora[pair.layer][pair.module] = Some(Lora {
                a: pair.a,
                b: pair.b,
                rank: pair.a.len() / inp.max(1),
                scale: extras.scale as f32,
                grad_a: pair.grad_a,
                grad_b: pair.grad_b,
            });
        }
        let layers = p
            .layers
            .iter()
            .zip(lora)
            .map(|(l, lora)| LayerWeights {
                input_norm: l.input_norm.slice(),
                linears: std::array::from_fn(|m| l.linears[m].view()),
                bias: l
                    .bias
                    .as_ref()
                    .map(|b| [b[0].slice(), b[1].slice(), b[2].slice()]),
                post_norm: l.post_norm.slice(),
                lora,
            })
            .collect();
        let check = |what: &str, s: &[f32]| {
            if s.len() == v * h {
                Ok(())
            } else {
                Err(candle_core::Error::Msg(format!(
                    "engine: the trained {what} has {} values, expected {v} x {h} (a bug)",
                    s.len()
                )))
            }
        };
        let (embed, embed_grad) = match extras.embed {
            Some((e, g)) => {
                check("embed_tokens", e)?;
                (MatrixRef::f32(e, v, h), Some(g))
            }
            None => (p.embed.view(), None),
        };
        let (head, head_grad) = match (extras.head, &p.head) {
            (Some((hd, g)), _) => {
                check("lm_head", hd)?;
                (MatrixRef::f32(hd, v, h), Some(g))
            }
            (None, Some(hp)) => (hp.view(), None),
            (None, None) => (p.embed.view(), None),
        };
        Ok(Self {
            cfg,
            rope_factors: p.rope_factors,
            layers,
            embed,
            embed_grad,
            norm: p.norm.slice(),
            head,
            head_grad,
        })
    }
}

impl Net<'_> {
    /// The first halves of the RoPE tables for positions `0..t`, `[t, head_dim / 2]` each.
    pub(crate) fn rope_half_tables(&self, t: usize) -> (Vec<f32>, Vec<f32>) {
        crate::decoder::rope_half_tables(self.cfg, self.rope_factors, t)
    }
}

/// An adapter's tensors pinned for the engine.
pub(crate) struct AdapterPins<'a> {
    scale: f64,
    pairs: Vec<(usize, usize, F32Pin<'a>, F32Pin<'a>)>,
    embed: Option<F32Pin<'a>>,
    head: Option<F32Pin<'a>>,
}

impl<'a> AdapterPins<'a> {
    pub(crate) fn new(lw: &'a LoraWeights) -> Result<Self> {
        let mut pairs = Vec::new();
        for (l, mods) in lw.layers.iter().enumerate() {
            for (m, p) in mods.iter().enumerate() {
                if let Some(p) = p {
                    pairs.push((l, m, F32Pin::new(&p.a)?, F32Pin::new(&p.b)?));
                }
            }
        }
        Ok(Self {
            scale: lw.scale,
            pairs,
            embed: lw.embed_tokens.as_ref().map(F32Pin::new).transpose()?,
            head: lw.lm_head.as_ref().map(F32Pin::new).transpose()?,
        })
    }

    /// The adapter as engine extras (no gradients).
    pub(crate) fn extras(&'a self) -> Extras<'a> {
        Extras {
            scale: self.scale,
            pairs: self
                .pairs
                .iter()
                .map(|(layer, module, a, b)| PairRef {
                    layer: *layer,
                    module: *module,
                    a: a.slice(),
                    b: b.slice(),
                    grad_a: usize::MAX,
                    grad_b: usize::MAX,
                })
                .collect(),
            embed: self.embed.as_ref().map(|e| (e.slice(), usize::MAX)),
            head: self.head.as_ref().map(|h| (h.slice(), usize::MAX)),
        }
    }
}

//! Forward and backward of one micro-batch through candle's autograd over the composed decoder: the training
//! path on CUDA and the oracle the CPU engine is tested against. Trainable tensors become `Var`s for the
//! micro-batch; their gradients are added into the trainer's plain buffers.

use candle_core::{Tensor, Var};

use crate::decoder::Noise;
use crate::error::{Error, Result};
use crate::lora::{LoraPair, LoraWeights};
use crate::loss;
use crate::model::Model;
use crate::rng::Rng;

/// Where each trainable tensor lives in the trainer's parameter list.
pub(crate) enum Slot {
    Pair {
        layer: usize,
        module: usize,
        a: usize,
        b: usize,
    },
    LmHead(usize),
    Embed(usize),
}

/// The trainer's state the autograd path reads and advances.
pub(crate) struct State<'a> {
    pub model: &'a Model,
    pub scale: f64,
    pub slots: &'a [Slot],
    /// Parameter values and shapes.
    pub params: &'a [(&'a [f32], &'a [usize])],
    pub rng: &'a mut Rng,
    pub lora_dropout: f64,
    pub neftune_alpha: Option<f64>,
}

/// Adds `d(Σ nll / total)/dθ` of one micro-batch into `grads` and returns `Σ nll`. With `checkpointing`, each
/// layer is recomputed in backward from its saved input (the RNG state replayed so dropout masks repeat).
pub(crate) fn micro_batch(
    st: State,
    mb: &crate::engine::Batch,
    checkpointing: bool,
    grads: &mut [Vec<f32>],
) -> Result<f64> {
    let dev = st.model.device().clone();
    let vars = st
        .params
        .iter()
        .map(|(v, shape)| Ok(Var::from_tensor(&Tensor::from_slice(v, *shape, &dev)?)?))
        .collect::<Result<Vec<Var>>>()?;
    let lw = lora_weights(st.model, st.scale, st.slots, &vars);
    let ids = Tensor::from_slice(mb.ids, (mb.b, mb.t), &dev)?;
    let rows = Tensor::new(mb.rows, &dev)?;
    let targets = Tensor::new(mb.targets, &dev)?;
    let d = st.model.decoder();
    let hidden = st.model.config.hidden_size;
    let head = d.head(Some(&lw), &dev)?;
    let (dropout, neftune) = (st.lora_dropout, st.neftune_alpha);
    let rng = st.rng;
    let mut seen = vec![false; vars.len()];
    let grads = &mut Gathered {
        grads,
        seen: &mut seen,
    };
    let nll_sum = if !checkpointing {
        let mut noise = Noise {
            rng,
            lora_dropout: dropout,
            neftune_alpha: neftune,
        };
        let h = d.hidden(&ids, Some(&lw), Some(&mut noise))?;
        let h = h.reshape((mb.b * mb.t, hidden))?.index_select(&rows, 0)?;
        let nll_sum = loss::nll_sum_composed(&h, &head, &targets)?;
        let store = (&nll_sum / mb.total as f64)?.backward()?;
        grads.collect(&vars, &store)?;
        nll_sum
    } else {
        let tables = d.tables(mb.t, &dev)?;
        let x0 = d.embed(
            &ids,
            Some(&lw),
            Some(&mut Noise {
                rng,
                lora_dropout: dropout,
                neftune_alpha: neftune,
            }),
        )?;
        let layers = st.model.config.num_hidden_layers;
        let mut inputs = Vec::with_capacity(layers);
        let mut states = Vec::with_capacity(layers);
        let mut x = x0.detach();
        for li in 0..layers {
            inputs.push(x.clone());
            states.push(rng.clone());
            let mut noise = Noise {
                rng,
                lora_dropout: dropout,
                neftune_alpha: neftune,
            };
            x = d
                .layer(li, &x, &tables, Some(&lw), &mut Some(&mut noise))?
                .detach();
        }
        let after = rng.clone();
        let top = Var::from_tensor(&x)?;
        let h = d
            .final_norm(top.as_tensor())?
            .reshape((mb.b * mb.t, hidden))?
            .index_select(&rows, 0)?;
        let nll_sum = loss::nll_sum_composed(&h, &head, &targets)?;
        let store = (&nll_sum / mb.total as f64)?.backward()?;
        grads.collect(&vars, &store)?;
        let mut g = store.get(top.as_tensor()).cloned().ok_or_else(|| {
            Error::tensor(
                "hidden states",
                "no gradient reached the last layer (a bug)",
            )
        })?;
        drop(store);
        for li in (0..layers).rev() {
            let xin = Var::from_tensor(&inputs[li])?;
            *rng = states[li].clone();
            let mut noise = Noise {
                rng,
                lora_dropout: dropout,
                neftune_alpha: neftune,
            };
            let out = d.layer(
                li,
                xin.as_tensor(),
                &tables,
                Some(&lw),
                &mut Some(&mut noise),
            )?;
            let store = (out * &g)?.sum_all()?.backward()?;
            grads.collect(&vars, &store)?;
            g = store.get(xin.as_tensor()).cloned().ok_or_else(|| {
                Error::tensor(
                    "hidden states",
                    format!("no gradient reached layer {li} (a bug)"),
                )
            })?;
        }
        *rng = after;
        if x0.track_op() {
            // A trained embed_tokens copy: push the input gradient into it.
            let store = (x0 * &g)?.sum_all()?.backward()?;
            grads.collect(&vars, &store)?;
        }
        nll_sum
    };
    if let Some(i) = grads.seen.iter().position(|s| !s) {
        return Err(Error::tensor(
            format!("trainable tensor {i}"),
            "received no gradient: the graph is cut between it and the loss (a bug)",
        ));
    }
    Ok(f64::from(nll_sum.to_scalar::<f32>()?))
}

/// The trainable tensors as the decoder consumes them.
fn lora_weights(model: &Model, scale: f64, slots: &[Slot], vars: &[Var]) -> LoraWeights {
    let mut out = LoraWeights {
        scale,
        layers: (0..model.config.num_hidden_layers)
            .map(|_| Default::default())
            .collect(),
        lm_head: None,
        embed_tokens: None,
    };
    for slot in slots {
        match *slot {
            Slot::Pair {
                layer,
                module,
                a,
                b,
            } => {
                out.layers[layer][module] = Some(LoraPair {
                    a: vars[a].as_tensor().clone(),
                    b: vars[b].as_tensor().clone(),
                });
            }
            Slot::LmHead(i) => out.lm_head = Some(vars[i].as_tensor().clone()),
            Slot::Embed(i) => out.embed_tokens = Some(vars[i].as_tensor().clone()),
        }
    }
    out
}

/// The trainer's gradient buffers, and which received a gradient.
struct Gathered<'a> {
    grads: &'a mut [Vec<f32>],
    seen: &'a mut [bool],
}

impl Gathered<'_> {
    /// Adds the gradients in `store` into the buffers (one per parameter).
    fn collect(&mut self, vars: &[Var], store: &candle_core::backprop::GradStore) -> Result<()> {
        for ((v, g), seen) in vars
            .iter()
            .zip(self.grads.iter_mut())
            .zip(self.seen.iter_mut())
        {
            if let Some(x) = store.get(v.as_tensor()) {
                let x = x.flatten_all()?.to_vec1::<f32>()?;
                g.iter_mut().zip(&x).for_each(|(g, x)| *g += x);
                *seen = true;
            }
        }
        Ok(())
    }
}

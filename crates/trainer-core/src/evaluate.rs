//! Evaluation loss: the masked mean next-token cross-entropy of a set of samples, forward only (no dropout, no
//! NEFTune noise, no gradients), batched with the same dynamic right padding as training. On the CPU it runs the
//! engine's forward (on the weights as stored); on other devices the composed decoder.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;

use crate::adapter::Adapter;
use crate::engine::{self, Workspace};
use crate::error::{Error, Result};
use crate::loss;
use crate::model::Model;
use crate::train::{Sample, IGNORE_INDEX};

/// The result of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    /// Mean cross-entropy over all scored tokens of the set (the training loss's definition).
    pub loss: f64,
    /// Scored tokens.
    pub tokens: usize,
    /// Samples evaluated.
    pub samples: usize,
}

/// The loss of `model` (with `adapter` applied, if any) on `samples`, in batches of `batch_size` right-padded with
/// `pad_id` (padding is never scored: it is masked by position). Returns [`Error::Cancelled`] when `cancel` is set.
pub fn evaluate(
    model: &Model,
    adapter: Option<&Adapter>,
    samples: &[Sample],
    batch_size: usize,
    pad_id: u32,
    cancel: &AtomicBool,
) -> Result<EvalStats> {
    if let Some(a) = adapter {
        a.check_fits(model)?;
    }
    let lora = adapter.map(Adapter::weights);
    let d = model.decoder();
    let dev = model.device().clone();
    let hidden = model.config.hidden_size;
    let mut ws = Workspace::default();
    let mut sum = 0f64;
    let mut total = 0usize;
    for (bi, batch) in samples.chunks(batch_size.max(1)).enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let t = batch.iter().map(|s| s.input_ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * t);
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (si, s) in batch.iter().enumerate() {
            let field = format!("eval sample {}", bi * batch_size.max(1) + si);
            model.check_ids(&s.input_ids, &field)?;
            if s.labels.len() != s.input_ids.len() {
                return Err(Error::input(field, "labels and input_ids differ in length"));
            }
            ids.extend_from_slice(&s.input_ids);
            ids.extend(std::iter::repeat_n(pad_id, t - s.input_ids.len()));
            for pos in 0..s.input_ids.len() - 1 {
                let label = s.labels[pos + 1];
                if label != IGNORE_INDEX {
                    let target = u32::try_from(label)
                        .ok()
                        .filter(|&l| (l as usize) < model.config.vocab_size)
                        .ok_or_else(|| {
                            Error::input(&field, format!("label {label} is not a token id"))
                        })?;
                    rows.push((si * t + pos) as u32);
                    targets.push(target);
                }
            }
        }
        if rows.is_empty() {
            continue;
        }
        if dev.is_cpu() {
            let bt = (ids.as_slice(), batch.len(), t);
            sum += model.with_net(adapter, |net| {
                Ok(engine::nll_sum(net, bt, &rows, &targets, &mut ws)?)
            })?;
        } else {
            let ids = Tensor::from_vec(ids, (batch.len(), t), &dev)?;
            let h = d.hidden(&ids, lora, None)?;
            let h = h
                .reshape((batch.len() * t, hidden))?
                .index_select(&Tensor::new(rows.as_slice(), &dev)?, 0)?;
            let head = d.head(lora, &dev)?;
            let nll = loss::nll_sum_composed(&h, &head, &Tensor::new(targets.as_slice(), &dev)?)?;
            sum += f64::from(nll.to_scalar::<f32>()?);
        }
        total += targets.len();
    }
    if total == 0 {
        return Err(Error::input(
            "samples",
            "no eval sample has a token to score",
        ));
    }
    Ok(EvalStats {
        loss: sum / total as f64,
        tokens: total,
        samples: samples.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use candle_core::{Device, D};

    fn tiny() -> Model {
        let config = ModelConfig {
            max_position_embeddings: 128,
            ..ModelConfig::tiny_llama(256, 32, 2, 4, 2)
        };
        Model::random(config, 5, &Device::Cpu).unwrap()
    }

    /// Sum of NLL over the scored positions of one sample, from `Model::logits` alone.
    fn reference(m: &Model, s: &Sample) -> (f64, usize) {
        let logits = m.logits(None, &s.input_ids).unwrap();
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut sum = 0f64;
        let mut n = 0;
        for (row, &l) in lsm.iter().zip(&s.labels[1..]) {
            if l != IGNORE_INDEX {
                sum -= f64::from(row[l as usize]);
                n += 1;
            }
        }
        (sum, n)
    }

    #[test]
    fn masked_mean_over_tokens_independent_of_batching_and_padding() {
        let m = tiny();
        let mut a = Sample::causal((10..30).collect());
        a.labels[..8].fill(IGNORE_INDEX);
        let b = Sample::causal(vec![3, 4, 5, 6, 7]);
        let c = Sample::causal((40..52).collect());
        let set = vec![a, b, c];
        let (sum, n) = set
            .iter()
            .map(|s| reference(&m, s))
            .fold((0.0, 0), |(s, n), (x, k)| (s + x, n + k));
        let never = AtomicBool::new(false);
        for bs in [1, 2, 3] {
            for pad in [0, 255] {
                let got = evaluate(&m, None, &set, bs, pad, &never).unwrap();
                assert_eq!((got.tokens, got.samples), (n, 3));
                assert!(
                    (got.loss - sum / n as f64).abs() < 1e-4,
                    "bs {bs}: {} vs {}",
                    got.loss,
                    sum / n as f64
                );
            }
        }
        let all_masked = Sample {
            input_ids: vec![1, 2],
            labels: vec![IGNORE_INDEX; 2],
        };
        assert!(evaluate(&m, None, &[all_masked], 1, 0, &never).is_err());
        assert!(matches!(
            evaluate(&m, None, &set, 1, 0, &AtomicBool::new(true)),
            Err(Error::Cancelled)
        ));
    }
}

//! The optimizers of the original's dropdown that change results, with the semantics and defaults the Hugging
//! Face Trainer gives them: AdamW (`torch.optim.AdamW`), SGD (`torch.optim.SGD`), Adagrad
//! (`torch.optim.Adagrad`) and Adafactor (`transformers.optimization.Adafactor`). The learning rate is given
//! per step (by the schedule); the weight decay is one setting for all of them ([`AdamWParams::weight_decay`],
//! the Trainer's `weight_decay`, which it hands to every optimizer through the parameter group).
//!
//! Every optimizer keeps its state in f32 buffers per trainable tensor ([`OptimState`]), exported into the
//! checkpoint's `optimizer.safetensors` so that a resumed run is exact. Both training backends update through
//! [`OptimState::update`].

mod names;
#[cfg(test)]
mod reference_tests;
mod state;

use serde::{Deserialize, Serialize};

pub use names::{ADAMW_ALIASES, OPTIMIZER_NAMES};
pub(crate) use state::OptimState;

/// AdamW hyper-parameters (the learning rate is given per step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    /// `(beta1, beta2)`.
    pub betas: (f64, f64),
    /// Added to the denominator after the square root.
    pub eps: f64,
    /// Weight decay, of every optimizer (the Trainer's `weight_decay`): decoupled for AdamW and Adafactor
    /// (`p -= lr * wd * p`), added to the gradient for SGD and Adagrad (`g += wd * p`), as torch does.
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    /// The Hugging Face Trainer defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.
    fn default() -> Self {
        Self {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// `torch.optim.SGD` settings other than the learning rate and weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SgdParams {
    /// Momentum factor (0: plain SGD, no momentum buffer; the Trainer's default for `optim="sgd"`).
    pub momentum: f64,
    /// Dampening of the momentum (torch default 0).
    pub dampening: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening 0, as in torch).
    pub nesterov: bool,
}

/// `torch.optim.Adagrad` settings other than the learning rate and weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdagradParams {
    /// Learning-rate decay: step `t` uses `lr / (1 + (t - 1) * lr_decay)` (torch default 0).
    pub lr_decay: f64,
    /// Added to the denominator after the square root (torch default 1e-10).
    pub eps: f64,
    /// Starting value of the sum of squared gradients (torch default 0).
    pub initial_accumulator_value: f64,
}

impl Default for AdagradParams {
    /// torch's defaults, which the Trainer keeps for `optim="adagrad"`.
    fn default() -> Self {
        Self {
            lr_decay: 0.0,
            eps: 1e-10,
            initial_accumulator_value: 0.0,
        }
    }
}

/// `transformers.optimization.Adafactor` settings other than the learning rate and weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdafactorParams {
    /// `(eps1, eps2)`: added to the squared gradient; lower bound of the parameter scale.
    pub eps: (f64, f64),
    /// Updates whose RMS exceeds this are scaled down to it.
    pub clip_threshold: f64,
    /// The second-moment decay at step `t` is `1 - t^decay_rate`.
    pub decay_rate: f64,
    /// First-moment coefficient (`None`: no first moment, Adafactor's default).
    pub beta1: Option<f64>,
    /// Multiply the step size by the parameter's RMS (at least `eps2`).
    pub scale_parameter: bool,
    /// Ignore the given learning rate and use `min(1e-2, 1/sqrt(t))` (or `min(1e-6 t, 1/sqrt(t))` with
    /// `warmup_init`).
    pub relative_step: bool,
    /// The warm-up form of the relative step (needs `relative_step`).
    pub warmup_init: bool,
}

impl Default for AdafactorParams {
    /// What the Trainer passes for `optim="adafactor"`: `scale_parameter=False`, `relative_step=False` (so
    /// the schedule's learning rate is used), and Adafactor's own defaults otherwise.
    fn default() -> Self {
        Self {
            eps: (1e-30, 1e-3),
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            scale_parameter: false,
            relative_step: false,
            warmup_init: false,
        }
    }
}

/// Which optimizer updates the trainable tensors, with its settings. AdamW's betas and eps, and every
/// optimizer's weight decay, are in [`AdamWParams`] (the trainer configuration's `adamw`).
///
/// Build it from the setting's text with [`Optimizer::from_name`] (and [`Optimizer::with_args`] for the
/// Trainer's `optim_args` string).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Optimizer {
    /// `torch.optim.AdamW` (bias-corrected moments, decoupled weight decay).
    #[default]
    AdamW,
    /// `torch.optim.SGD`.
    Sgd(SgdParams),
    /// `torch.optim.Adagrad`.
    Adagrad(AdagradParams),
    /// `transformers.optimization.Adafactor` (factored second moment for matrices).
    Adafactor(AdafactorParams),
}

impl Optimizer {
    /// How many f32 values of state this optimizer keeps for a trainable tensor of `shape` (what
    /// `optimizer.safetensors` holds for it): AdamW 2 per value; SGD 1 with momentum, else none; Adagrad 1;
    /// Adafactor rows + columns for a matrix (the whole size for a vector), plus 1 per value with `beta1`.
    pub fn state_values(&self, shape: &[usize]) -> usize {
        let n: usize = shape.iter().product();
        match self {
            Optimizer::AdamW => 2 * n,
            Optimizer::Sgd(p) => usize::from(p.momentum != 0.0) * n,
            Optimizer::Adagrad(_) => n,
            Optimizer::Adafactor(p) => {
                let second = match *shape {
                    [rows, cols] => rows + cols,
                    _ => n,
                };
                second + usize::from(p.beta1.is_some()) * n
            }
        }
    }
}

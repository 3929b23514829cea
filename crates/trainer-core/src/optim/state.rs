//! The optimizers' state per trainable tensor and their updates, numerically as torch's single-tensor paths
//! and transformers' Adafactor compute them in f32.

use crate::error::{Error, Result};
use crate::optim::{AdafactorParams, AdagradParams, AdamWParams, Optimizer, SgdParams};

/// One trainable tensor's optimizer state: flat f32 buffers, exported by [`OptimState::buffers`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OptimState {
    /// First and second moments.
    AdamW { m: Vec<f32>, v: Vec<f32> },
    /// The momentum buffer (none without momentum).
    Sgd { momentum: Option<Vec<f32>> },
    /// The sum of squared gradients.
    Adagrad { sum: Vec<f32> },
    /// The second moment, factored into row and column means for a matrix, and the optional first moment.
    Adafactor {
        second: Second,
        exp_avg: Option<Vec<f32>>,
    },
}

/// Adafactor's second moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Second {
    /// A matrix of `rows x cols`: per-row and per-column means of the squared gradient.
    Factored {
        row: Vec<f32>,
        col: Vec<f32>,
        cols: usize,
    },
    /// A vector: the full second moment.
    Full(Vec<f32>),
}

impl OptimState {
    /// Fresh state (as before the first step) for a tensor of `shape`.
    pub(crate) fn new(opt: &Optimizer, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        Ok(match opt {
            Optimizer::AdamW => OptimState::AdamW {
                m: vec![0.0; n],
                v: vec![0.0; n],
            },
            Optimizer::Sgd(p) => OptimState::Sgd {
                momentum: (p.momentum != 0.0).then(|| vec![0.0; n]),
            },
            Optimizer::Adagrad(p) => OptimState::Adagrad {
                sum: vec![p.initial_accumulator_value as f32; n],
            },
            Optimizer::Adafactor(p) => OptimState::Adafactor {
                second: match *shape {
                    [rows, cols] => Second::Factored {
                        row: vec![0.0; rows],
                        col: vec![0.0; cols],
                        cols,
                    },
                    [_] => Second::Full(vec![0.0; n]),
                    _ => {
                        return Err(Error::input(
                            "optimizer",
                            format!("adafactor updates vectors and matrices, not a tensor of shape {shape:?}"),
                        ))
                    }
                },
                exp_avg: p.beta1.map(|_| vec![0.0; n]),
            },
        })
    }

    /// The state's buffers as `(name, shape, values)`; checkpoint tensor `NAME.KEY` holds them for the tensor
    /// of PEFT key `KEY` (AdamW's `m` and `v` as before other optimizers existed).
    pub(crate) fn buffers(
        &mut self,
        shape: &[usize],
    ) -> Vec<(&'static str, Vec<usize>, &mut Vec<f32>)> {
        let all = shape.to_vec();
        match self {
            OptimState::AdamW { m, v } => vec![("m", all.clone(), m), ("v", all, v)],
            OptimState::Sgd { momentum } => momentum
                .iter_mut()
                .map(|b| ("momentum_buffer", all.clone(), b))
                .collect(),
            OptimState::Adagrad { sum } => vec![("sum", all, sum)],
            OptimState::Adafactor { second, exp_avg } => {
                let mut out = match second {
                    Second::Factored { row, col, .. } => vec![
                        ("exp_avg_sq_row", vec![row.len()], row),
                        ("exp_avg_sq_col", vec![col.len()], col),
                    ],
                    Second::Full(v) => vec![("exp_avg_sq", all.clone(), v)],
                };
                if let Some(e) = exp_avg {
                    out.push(("exp_avg", all, e));
                }
                out
            }
        }
    }

    /// One update of `param` with gradient `grad` at optimizer step `t` (1-based) and learning rate `lr`;
    /// `adamw` holds AdamW's betas and eps and every optimizer's weight decay.
    pub(crate) fn update(
        &mut self,
        opt: &Optimizer,
        adamw: &AdamWParams,
        param: &mut [f32],
        grad: &[f32],
        lr: f64,
        t: u64,
    ) {
        let wd = adamw.weight_decay;
        match (self, opt) {
            (OptimState::AdamW { m, v }, Optimizer::AdamW) => {
                adamw_update(m, v, param, grad, lr, t, adamw)
            }
            (OptimState::Sgd { momentum }, Optimizer::Sgd(p)) => {
                sgd_update(momentum.as_deref_mut(), param, grad, lr, t, wd, p)
            }
            (OptimState::Adagrad { sum }, Optimizer::Adagrad(p)) => {
                adagrad_update(sum, param, grad, lr, t, wd, p)
            }
            (OptimState::Adafactor { second, exp_avg }, Optimizer::Adafactor(p)) => {
                adafactor_update(second, exp_avg.as_deref_mut(), param, grad, lr, t, wd, p)
            }
            // The state is always made from the optimizer it is updated with (`Trainer` holds both).
            (state, opt) => unreachable!("{} state updated as {}", state_name(state), opt.name()),
        }
    }
}

fn state_name(s: &OptimState) -> &'static str {
    match s {
        OptimState::AdamW { .. } => "adamw",
        OptimState::Sgd { .. } => "sgd",
        OptimState::Adagrad { .. } => "adagrad",
        OptimState::Adafactor { .. } => "adafactor",
    }
}

/// `torch.optim.AdamW`, single-tensor path.
fn adamw_update(
    m: &mut [f32],
    v: &mut [f32],
    param: &mut [f32],
    grad: &[f32],
    lr: f64,
    t: u64,
    p: &AdamWParams,
) {
    let (b1, b2) = p.betas;
    let decay = (1.0 - lr * p.weight_decay) as f32;
    let bc1 = 1.0 - b1.powi(t as i32);
    let bc2_sqrt = (1.0 - b2.powi(t as i32)).sqrt() as f32;
    let step_size = (lr / bc1) as f32;
    let (w1, b2f, w2, eps) = (
        (1.0 - b1) as f32,
        b2 as f32,
        (1.0 - b2) as f32,
        p.eps as f32,
    );
    for i in 0..param.len() {
        let g = grad[i];
        param[i] *= decay;
        m[i] += w1 * (g - m[i]);
        v[i] = v[i] * b2f + w2 * g * g;
        let denom = v[i].sqrt() / bc2_sqrt + eps;
        param[i] -= step_size * m[i] / denom;
    }
}

/// `torch.optim.SGD`: `g += wd p`; with momentum `b = g` at the first step, then `b = momentum b + (1 -
/// dampening) g`, and `g = b` (or `g + momentum b` with Nesterov); `p -= lr g`.
fn sgd_update(
    buf: Option<&mut [f32]>,
    param: &mut [f32],
    grad: &[f32],
    lr: f64,
    t: u64,
    wd: f64,
    p: &SgdParams,
) {
    let (wd, lr) = (wd as f32, lr as f32);
    let (mom, damp) = (p.momentum as f32, (1.0 - p.dampening) as f32);
    match buf {
        None => {
            for (x, &g) in param.iter_mut().zip(grad) {
                let g = if wd != 0.0 { g + wd * *x } else { g };
                *x += -lr * g;
            }
        }
        Some(buf) => {
            for ((x, &g), b) in param.iter_mut().zip(grad).zip(buf.iter_mut()) {
                let g = if wd != 0.0 { g + wd * *x } else { g };
                *b = if t <= 1 { g } else { *b * mom + damp * g };
                let d = if p.nesterov { g + mom * *b } else { *b };
                *x += -lr * d;
            }
        }
    }
}

/// `torch.optim.Adagrad`: `g += wd p`; `sum += g²`; `p -= lr / (1 + (t-1) lr_decay) · g / (sqrt(sum) + eps)`.
fn adagrad_update(
    sum: &mut [f32],
    param: &mut [f32],
    grad: &[f32],
    lr: f64,
    t: u64,
    wd: f64,
    p: &AdagradParams,
) {
    let clr = lr / (1.0 + (t as f64 - 1.0) * p.lr_decay);
    let (wd, neg_clr, eps) = (wd as f32, -clr as f32, p.eps as f32);
    for ((x, &g), s) in param.iter_mut().zip(grad).zip(sum.iter_mut()) {
        let g = if wd != 0.0 { g + wd * *x } else { g };
        *s += g * g;
        let std = s.sqrt() + eps;
        *x += neg_clr * g / std;
    }
}

/// Root mean square of `v`.
fn rms(v: &[f32]) -> f64 {
    (v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// `transformers.optimization.Adafactor.step` for one tensor.
#[allow(clippy::too_many_arguments)]
fn adafactor_update(
    second: &mut Second,
    exp_avg: Option<&mut [f32]>,
    param: &mut [f32],
    grad: &[f32],
    lr: f64,
    t: u64,
    wd: f64,
    p: &AdafactorParams,
) {
    let step = t as f64;
    // The step size: the given lr, or the relative step; times the parameter's RMS with scale_parameter.
    let mut rel = lr;
    if p.relative_step {
        let min_step = if p.warmup_init { 1e-6 * step } else { 1e-2 };
        rel = min_step.min(1.0 / step.sqrt());
    }
    let scale = if p.scale_parameter {
        p.eps.1.max(f64::from(rms(param) as f32))
    } else {
        1.0
    };
    let lr = scale * rel;
    let beta2t = 1.0 - step.powf(p.decay_rate);
    let (keep, add) = (beta2t as f32, (1.0 - beta2t) as f32);
    let eps1 = p.eps.0 as f32;
    let mut update: Vec<f32> = grad.iter().map(|&g| g * g + eps1).collect();
    match second {
        Second::Factored { row, col, cols } => {
            let cols = *cols;
            let rows = row.len();
            for (r, rv) in row.iter_mut().enumerate() {
                let mean = update[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|&x| f64::from(x))
                    .sum::<f64>()
                    / cols as f64;
                *rv = *rv * keep + add * mean as f32;
            }
            for (c, cv) in col.iter_mut().enumerate() {
                let mean = (0..rows)
                    .map(|r| f64::from(update[r * cols + c]))
                    .sum::<f64>()
                    / rows as f64;
                *cv = *cv * keep + add * mean as f32;
            }
            let row_mean = (row.iter().map(|&x| f64::from(x)).sum::<f64>() / rows as f64) as f32;
            for ((rv, u), g) in row
                .iter()
                .zip(update.chunks_mut(cols))
                .zip(grad.chunks(cols))
            {
                let rf = 1.0 / (rv / row_mean).sqrt();
                for ((u, &g), cv) in u.iter_mut().zip(g).zip(col.iter()) {
                    *u = rf * (1.0 / cv.sqrt()) * g;
                }
            }
        }
        Second::Full(v) => {
            for ((u, s), &g) in update.iter_mut().zip(v.iter_mut()).zip(grad) {
                *s = *s * keep + add * *u;
                *u = (1.0 / s.sqrt()) * g;
            }
        }
    }
    let clip = ((rms(&update) as f32) / p.clip_threshold as f32).max(1.0);
    let lr32 = lr as f32;
    update.iter_mut().for_each(|u| *u = *u / clip * lr32);
    if let (Some(m), Some(b1)) = (exp_avg, p.beta1) {
        let (b1, w) = (b1 as f32, (1.0 - b1) as f32);
        for (u, e) in update.iter_mut().zip(m.iter_mut()) {
            *e = *e * b1 + w * *u;
            *u = *e;
        }
    }
    let decay = (-wd * lr) as f32;
    for (x, u) in param.iter_mut().zip(&update) {
        if wd != 0.0 {
            *x += *x * decay;
        }
        *x -= u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn adamw_state(n: usize) -> OptimState {
        OptimState::new(&Optimizer::AdamW, &[n]).unwrap()
    }

    proptest! {
        /// The first step moves each parameter by about lr * sign(g) (bias correction makes m/sqrt(v) = ±1).
        #[test]
        fn first_step_is_sign_sized(g in prop::collection::vec(-10f32..10f32, 1..32), lr in 1e-5f64..1e-2) {
            let n = g.len();
            let mut p = vec![0.5f32; n];
            adamw_state(n).update(&Optimizer::AdamW, &AdamWParams::default(), &mut p, &g, lr, 1);
            for (pi, gi) in p.iter().zip(&g) {
                if gi.abs() > 1e-3 {
                    let moved = 0.5 - pi;
                    prop_assert!((moved.abs() - lr as f32).abs() < lr as f32 * 1e-2, "moved {moved} for g {gi}");
                    prop_assert!(moved.signum() == gi.signum());
                }
            }
        }

        /// Adafactor's update is clipped: without weight decay a step moves the parameters by an RMS of at most
        /// lr * clip_threshold, whatever the gradient's size.
        #[test]
        fn adafactor_steps_are_clipped(g in prop::collection::vec(-1e3f32..1e3f32, 12), lr in 1e-4f64..1e-1) {
            let opt = Optimizer::Adafactor(AdafactorParams::default());
            let mut s = OptimState::new(&opt, &[3, 4]).unwrap();
            let mut p = vec![0.25f32; 12];
            s.update(&opt, &AdamWParams::default(), &mut p, &g, lr, 1);
            let moved: Vec<f32> = p.iter().map(|x| x - 0.25).collect();
            prop_assert!(rms(&moved) <= lr * 1.0001, "rms {} lr {lr}", rms(&moved));
        }
    }

    #[test]
    fn weight_decay_shrinks_with_zero_grad() {
        let mut p = vec![1.0f32];
        let params = AdamWParams {
            weight_decay: 0.1,
            ..AdamWParams::default()
        };
        adamw_state(1).update(&Optimizer::AdamW, &params, &mut p, &[0.0], 0.01, 1);
        assert!((p[0] - 0.999).abs() < 1e-7);
    }

    #[test]
    fn state_buffers_follow_the_optimizer_and_shape() {
        let names = |o: Optimizer, shape: &[usize]| -> Vec<(&'static str, Vec<usize>)> {
            OptimState::new(&o, shape)
                .unwrap()
                .buffers(shape)
                .into_iter()
                .map(|(n, s, v)| {
                    assert_eq!(v.len(), s.iter().product::<usize>());
                    (n, s)
                })
                .collect()
        };
        assert!(names(Optimizer::Sgd(SgdParams::default()), &[2, 3]).is_empty());
        let af = Optimizer::Adafactor(AdafactorParams {
            beta1: Some(0.9),
            ..AdafactorParams::default()
        });
        assert_eq!(
            names(af, &[2, 3]),
            [
                ("exp_avg_sq_row", vec![2]),
                ("exp_avg_sq_col", vec![3]),
                ("exp_avg", vec![2, 3])
            ]
        );
        assert_eq!(
            names(af, &[5]),
            [("exp_avg_sq", vec![5]), ("exp_avg", vec![5])]
        );
        assert!(OptimState::new(&af, &[2, 2, 2]).is_err());
    }

    proptest! {
        /// The state count the memory estimate uses is the state every optimizer keeps.
        #[test]
        fn state_values_count_the_buffers(
            rows in 1usize..40,
            cols in 1usize..40,
            matrix in any::<bool>(),
            which in 0usize..6,
        ) {
            let opt = [
                Optimizer::AdamW,
                Optimizer::Sgd(SgdParams::default()),
                Optimizer::Sgd(SgdParams { momentum: 0.9, ..SgdParams::default() }),
                Optimizer::Adagrad(AdagradParams::default()),
                Optimizer::Adafactor(AdafactorParams::default()),
                Optimizer::Adafactor(AdafactorParams { beta1: Some(0.9), ..AdafactorParams::default() }),
            ][which];
            let shape = if matrix { vec![rows, cols] } else { vec![rows] };
            let kept: usize = OptimState::new(&opt, &shape)
                .unwrap()
                .buffers(&shape)
                .iter()
                .map(|(_, _, v)| v.len())
                .sum();
            prop_assert_eq!(opt.state_values(&shape), kept);
        }
    }
}

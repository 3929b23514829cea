//! AdamW with exportable state, numerically the same as `torch.optim.AdamW` (single-tensor path).

use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (the learning rate is given per step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    /// `(beta1, beta2)`.
    pub betas: (f64, f64),
    /// Added to the denominator after the square root.
    pub eps: f64,
    /// Decoupled weight decay.
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

/// First and second moments of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl Moments {
    pub(crate) fn zeros(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// One AdamW update of `param` with gradient `grad` at optimizer step `t` (1-based).
    pub(crate) fn update(
        &mut self,
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
            self.m[i] += w1 * (g - self.m[i]);
            self.v[i] = self.v[i] * b2f + w2 * g * g;
            let denom = self.v[i].sqrt() / bc2_sqrt + eps;
            param[i] -= step_size * self.m[i] / denom;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The first step moves each parameter by about lr * sign(g) (bias correction makes m/sqrt(v) = ±1).
        #[test]
        fn first_step_is_sign_sized(g in prop::collection::vec(-10f32..10f32, 1..32), lr in 1e-5f64..1e-2) {
            let n = g.len();
            let mut p = vec![0.5f32; n];
            let mut mo = Moments::zeros(n);
            mo.update(&mut p, &g, lr, 1, &AdamWParams::default());
            for (pi, gi) in p.iter().zip(&g) {
                if gi.abs() > 1e-3 {
                    let moved = 0.5 - pi;
                    prop_assert!((moved.abs() - lr as f32).abs() < lr as f32 * 1e-2, "moved {moved} for g {gi}");
                    prop_assert!(moved.signum() == gi.signum());
                }
            }
        }
    }

    #[test]
    fn weight_decay_shrinks_with_zero_grad() {
        let mut p = vec![1.0f32];
        let mut mo = Moments::zeros(1);
        let params = AdamWParams {
            weight_decay: 0.1,
            ..AdamWParams::default()
        };
        mo.update(&mut p, &[0.0], 0.01, 1, &params);
        assert!((p[0] - 0.999).abs() < 1e-7);
    }
}

//! What the user configures; every field can change during a run.

use serde::{Deserialize, Serialize};

use crate::Error;

/// How much a loss must improve over the last loss-threshold save before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Improvement {
    /// A true relative drop: the next save needs `loss <= last * (1 - fraction)`. The default,
    /// `Relative(0.10)`, is what the original's "Save at 10% Loss change" label promises.
    Relative(f64),
    /// The original's rule: `loss <= round(last, 2) - drop`, `drop >= 0.01` (the original uses 0.09).
    Absolute(f64),
}

/// Loss-threshold saves: a checkpoint once the training loss has stayed at or under `threshold` for
/// `patience` consecutive steps, then again on each further improvement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSave {
    /// First save at `loss <= threshold` (the original's slider, default 1.8).
    pub threshold: f64,
    /// Improvement needed for each further save.
    pub improvement: Improvement,
    /// Consecutive qualifying steps needed (the original uses 4 with gradient accumulation 1, else 3).
    pub patience: u32,
    /// No loss-threshold saves at or before this optimizer step (the original: 10% of an epoch, at
    /// least 2; see [`LossSave::original_min_step`]).
    pub min_step: u64,
}

impl LossSave {
    /// The original's `min_steps`: `max(2, steps_per_epoch / 10)` optimizer steps.
    #[must_use]
    pub fn original_min_step(steps_per_epoch: u64) -> u64 {
        (steps_per_epoch / 10).max(2)
    }
}

impl Default for LossSave {
    fn default() -> Self {
        LossSave {
            threshold: 1.8,
            improvement: Improvement::Relative(0.10),
            patience: 3,
            min_step: 0,
        }
    }
}

/// The checkpoint and stop settings. `Default` mirrors the original's defaults (loss-threshold saves
/// at 1.8 on, everything else off) with its bugs fixed. Steps are optimizer steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Save `checkpoint-{step}` every this many optimizer steps (`None` = off).
    pub save_every: Option<u64>,
    /// No periodic saves until the training loss has once been under this value (`None` = no gate).
    pub save_every_below_loss: Option<f64>,
    /// Loss-threshold saves (`None` = off).
    pub loss_save: Option<LossSave>,
    /// Save `checkpoint-{step}-epoch-{n}` at every epoch end, the last one included.
    pub save_each_epoch: bool,
    /// Save `checkpoint-{step}-best-{eval}` whenever an eval loss beats every earlier one.
    pub save_best_eval: bool,
    /// Save `checkpoint-{step}-final` when the run finishes (unless that step was already saved).
    pub save_final: bool,
    /// Stop once the (smoothed) training loss is `<=` this value (`None` = off).
    pub stop_at_loss: Option<f64>,
    /// Steps in the moving average used by `stop_at_loss` (1 = the raw per-step loss).
    pub stop_loss_window: u32,
    /// Stop at the first step whose whole epoch count reaches this value (`None` = off).
    pub stop_at_epoch: Option<u64>,
    /// Stop when the training loss is NaN or infinite.
    pub stop_on_non_finite: bool,
    /// Keep only the newest `k` policy saves (user and final saves are never deleted).
    pub keep_last: Option<usize>,
    /// Keep the `k` best policy saves: those with an eval loss first, lowest eval loss first, then
    /// the rest by training loss. With `keep_last` too, a checkpoint is kept if either rule keeps
    /// it; the newest save is always kept.
    pub keep_best: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            save_every: None,
            save_every_below_loss: None,
            loss_save: Some(LossSave::default()),
            save_each_epoch: false,
            save_best_eval: false,
            save_final: true,
            stop_at_loss: None,
            stop_loss_window: 1,
            stop_at_epoch: None,
            stop_on_non_finite: true,
            keep_last: None,
            keep_best: None,
        }
    }
}

fn positive(field: &'static str, v: f64, expected: &'static str) -> Result<(), Error> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(field, v, expected))
    }
}

impl Settings {
    /// Checks every field.
    ///
    /// # Errors
    /// The first invalid field, named.
    pub fn validate(&self) -> Result<(), Error> {
        if self.save_every == Some(0) {
            return Err(Error::invalid(
                "save_every",
                0,
                "a step count >= 1, or unset to disable",
            ));
        }
        if let Some(g) = self.save_every_below_loss {
            positive(
                "save_every_below_loss",
                g,
                "a finite loss > 0, or unset for no gate",
            )?;
        }
        if let Some(ls) = &self.loss_save {
            positive(
                "loss_save.threshold",
                ls.threshold,
                "a finite loss > 0 (the original's default is 1.8)",
            )?;
            match ls.improvement {
                Improvement::Relative(r) if !(r > 0.0 && r < 1.0) => {
                    return Err(Error::invalid(
                        "loss_save.improvement",
                        r,
                        "a relative drop in (0, 1), e.g. 0.10 for 10%",
                    ))
                }
                Improvement::Absolute(d) if !(d.is_finite() && d >= 0.01) => {
                    return Err(Error::invalid(
                        "loss_save.improvement",
                        d,
                        "an absolute drop >= 0.01, the rounding step of the rule (the original uses 0.09)",
                    ))
                }
                Improvement::Absolute(_) => {}
                Improvement::Relative(_) => {}
            }
            if ls.patience == 0 {
                return Err(Error::invalid("loss_save.patience", 0, "at least 1 step"));
            }
        }
        if let Some(l) = self.stop_at_loss {
            positive("stop_at_loss", l, "a finite loss > 0, or unset to disable")?;
        }
        if !(1..=100_000).contains(&self.stop_loss_window) {
            return Err(Error::invalid(
                "stop_loss_window",
                self.stop_loss_window,
                "a window of 1 (raw loss) to 100000 steps",
            ));
        }
        if self.stop_at_epoch == Some(0) {
            return Err(Error::invalid(
                "stop_at_epoch",
                0,
                "an epoch >= 1, or unset to disable",
            ));
        }
        if self.keep_last == Some(0) {
            return Err(Error::invalid(
                "keep_last",
                0,
                "at least 1, or unset to keep all",
            ));
        }
        if self.keep_best == Some(0) {
            return Err(Error::invalid(
                "keep_best",
                0,
                "at least 1, or unset to keep all",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let s = Settings::default();
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Settings>(&json).unwrap(), s);
        // Missing fields take defaults; unknown fields are an error naming them.
        let partial: Settings = serde_json::from_str(r#"{"save_every": 50}"#).unwrap();
        assert_eq!(partial.save_every, Some(50));
        assert!(serde_json::from_str::<Settings>(r#"{"save_evry": 50}"#)
            .unwrap_err()
            .to_string()
            .contains("save_evry"));
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    save_every: Some(0),
                    ..Settings::default()
                },
                "save_every",
            ),
            (
                Settings {
                    save_every_below_loss: Some(f64::NAN),
                    ..Settings::default()
                },
                "save_every_below_loss",
            ),
            (
                Settings {
                    loss_save: Some(LossSave {
                        improvement: Improvement::Relative(1.0),
                        ..LossSave::default()
                    }),
                    ..Settings::default()
                },
                "loss_save.improvement",
            ),
            (
                Settings {
                    loss_save: Some(LossSave {
                        improvement: Improvement::Absolute(0.005),
                        ..LossSave::default()
                    }),
                    ..Settings::default()
                },
                "loss_save.improvement",
            ),
            (
                Settings {
                    loss_save: Some(LossSave {
                        patience: 0,
                        ..LossSave::default()
                    }),
                    ..Settings::default()
                },
                "loss_save.patience",
            ),
            (
                Settings {
                    loss_save: Some(LossSave {
                        threshold: -1.0,
                        ..LossSave::default()
                    }),
                    ..Settings::default()
                },
                "loss_save.threshold",
            ),
            (
                Settings {
                    stop_at_loss: Some(0.0),
                    ..Settings::default()
                },
                "stop_at_loss",
            ),
            (
                Settings {
                    stop_loss_window: 0,
                    ..Settings::default()
                },
                "stop_loss_window",
            ),
            (
                Settings {
                    stop_at_epoch: Some(0),
                    ..Settings::default()
                },
                "stop_at_epoch",
            ),
            (
                Settings {
                    keep_last: Some(0),
                    ..Settings::default()
                },
                "keep_last",
            ),
            (
                Settings {
                    keep_best: Some(0),
                    ..Settings::default()
                },
                "keep_best",
            ),
        ];
        for (s, field) in cases {
            let msg = s.validate().unwrap_err().to_string();
            assert!(msg.contains(field), "{msg}");
        }
    }

    #[test]
    fn original_min_step() {
        assert_eq!(LossSave::original_min_step(5), 2);
        assert_eq!(LossSave::original_min_step(294), 29);
    }
}

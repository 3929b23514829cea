//! What the trainer tells the policy and what the policy answers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A finished optimizer step, as the trainer reports it to [`Policy::decide`](crate::Policy::decide).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Optimizer steps done (1 after the first update); strictly increasing over a run, and
    /// continuing the count after a resume.
    pub step: u64,
    /// Fractional epochs done (2.0 right after the second epoch ends).
    pub epoch: f64,
    /// Whether this step ended an epoch.
    pub epoch_ended: bool,
    /// Training loss of this step.
    pub loss: f64,
    /// Eval loss, when an evaluation ran at this step.
    pub eval_loss: Option<f64>,
    /// The user asked to save now.
    pub save_now: bool,
    /// The user asked to stop.
    pub stop: bool,
}

impl Event {
    /// An ordinary step: no epoch end, no eval, no user request.
    #[must_use]
    pub fn new(step: u64, epoch: f64, loss: f64) -> Self {
        Event {
            step,
            epoch,
            epoch_ended: false,
            loss,
            eval_loss: None,
            save_now: false,
            stop: false,
        }
    }

    /// Marks the step as the end of an epoch.
    #[must_use]
    pub fn with_epoch_end(mut self) -> Self {
        self.epoch_ended = true;
        self
    }

    /// Adds the eval loss measured at this step.
    #[must_use]
    pub fn with_eval_loss(mut self, eval_loss: f64) -> Self {
        self.eval_loss = Some(eval_loss);
        self
    }

    /// Adds a pending save-now request.
    #[must_use]
    pub fn with_save_now(mut self) -> Self {
        self.save_now = true;
        self
    }

    /// Adds a pending stop request.
    #[must_use]
    pub fn with_stop(mut self) -> Self {
        self.stop = true;
        self
    }
}

/// Why a checkpoint is saved; it names the folder (see [`SaveReason::folder_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveReason {
    /// Every `save_every` steps: `checkpoint-{step}`.
    Periodic,
    /// End of epoch `n`: `checkpoint-{step}-epoch-{n}`.
    Epoch(u64),
    /// Loss threshold reached or improved again: `checkpoint-{step}-loss-{loss:.2}`.
    Loss,
    /// A new best eval loss: `checkpoint-{step}-best-{eval:.2}`.
    Best,
    /// The user asked: `checkpoint-{step}-user`. Never deleted by retention.
    User,
    /// The run finished: `checkpoint-{step}-final`. Never deleted by retention.
    Final,
}

impl SaveReason {
    /// The folder name for a save at `step` with this reason; `loss` is the value the name shows
    /// (training loss for [`SaveReason::Loss`], eval loss for [`SaveReason::Best`]).
    #[must_use]
    pub fn folder_name(self, step: u64, loss: f64) -> String {
        match self {
            SaveReason::Periodic => format!("checkpoint-{step}"),
            SaveReason::Epoch(n) => format!("checkpoint-{step}-epoch-{n}"),
            SaveReason::Loss => format!("checkpoint-{step}-loss-{loss:.2}"),
            SaveReason::Best => format!("checkpoint-{step}-best-{loss:.2}"),
            SaveReason::User => format!("checkpoint-{step}-user"),
            SaveReason::Final => format!("checkpoint-{step}-final"),
        }
    }

    /// Whether retention may delete a save with this reason.
    #[must_use]
    pub fn retainable(self) -> bool {
        !matches!(self, SaveReason::User | SaveReason::Final)
    }
}

/// Why the run should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StopReason {
    /// The (smoothed) training loss reached `stop_at_loss`.
    AtLoss,
    /// The whole epoch count reached `stop_at_epoch`.
    AtEpoch,
    /// The user asked.
    User,
    /// The training loss is NaN or infinite.
    NonFiniteLoss,
    /// The run ended normally (returned by [`Policy::finish`](crate::Policy::finish) when nothing
    /// stopped it earlier).
    Finished,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::AtLoss => "the training loss reached stop_at_loss",
            StopReason::AtEpoch => "the epoch count reached stop_at_epoch",
            StopReason::User => "stopped by the user",
            StopReason::NonFiniteLoss => "the training loss is not finite (training diverged)",
            StopReason::Finished => "all steps done",
        })
    }
}

/// What the trainer must do, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Write a checkpoint folder `name` (inside the run's output folder) with the current state.
    Save {
        /// Why; also what the name says.
        reason: SaveReason,
        /// Folder name, unique within the run.
        name: String,
    },
    /// Delete the checkpoint folder `name` (retention); always one this policy saved earlier.
    Delete {
        /// Folder name.
        name: String,
    },
    /// Stop training after this step (the trainer then calls [`Policy::finish`](crate::Policy::finish)).
    Stop {
        /// Why.
        reason: StopReason,
    },
}

/// A checkpoint the policy saved and has not deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Folder name.
    pub name: String,
    /// Optimizer step it was saved at.
    pub step: u64,
    /// Fractional epoch it was saved at.
    #[serde(with = "any_f64")]
    pub epoch: f64,
    /// Why it was saved.
    pub reason: SaveReason,
    /// Training loss at that step (NaN or infinite when a diverged step was saved, e.g. by a
    /// save-now request; stored as `"NaN"`, `"inf"` or `"-inf"`).
    #[serde(with = "any_f64")]
    pub loss: f64,
    /// Eval loss at that step, if an evaluation ran.
    #[serde(default, with = "any_f64_opt")]
    pub eval_loss: Option<f64>,
}

/// Serde for an `f64` that may be NaN or infinite. JSON has no such numbers (`serde_json` writes
/// them as `null`, which does not read back as an `f64`), so they are written as the strings
/// `"NaN"`, `"inf"` and `"-inf"`; a policy saved after a diverged step then resumes exactly.
mod any_f64 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Repr {
        Number(f64),
        Text(String),
    }

    impl Repr {
        pub(super) fn value<E: de::Error>(self) -> Result<f64, E> {
            match self {
                Repr::Number(x) => Ok(x),
                Repr::Text(t) => match t.as_str() {
                    "NaN" => Ok(f64::NAN),
                    "inf" => Ok(f64::INFINITY),
                    "-inf" => Ok(f64::NEG_INFINITY),
                    _ => Err(E::invalid_value(
                        de::Unexpected::Str(&t),
                        &"a number, \"NaN\", \"inf\" or \"-inf\"",
                    )),
                },
            }
        }
    }

    pub(super) fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else if x.is_nan() {
            s.serialize_str("NaN")
        } else if *x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Repr::deserialize(d)?.value()
    }
}

/// [`any_f64`] for an optional value (`null` = absent).
mod any_f64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::any_f64::{self, Repr};

    // `with` passes `&Option<f64>`: the signature is serde's.
    pub(super) fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match x {
            Some(x) => any_f64::serialize(x, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<Repr>::deserialize(d)?.map(Repr::value).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_with_non_finite_losses_round_trip() {
        // Found by the `policy` fuzz target: a save at a diverged step (NaN loss) wrote a policy
        // whose JSON did not read back, and a NaN eval loss read back as no eval.
        for (loss, eval) in [
            (f64::NAN, Some(f64::NAN)),
            (f64::INFINITY, Some(f64::NEG_INFINITY)),
            (1.25, None),
            (0.5, Some(0.75)),
        ] {
            let c = Checkpoint {
                name: "checkpoint-3-user".into(),
                step: 3,
                epoch: 0.5,
                reason: SaveReason::User,
                loss,
                eval_loss: eval,
            };
            let json = serde_json::to_string(&c).unwrap();
            let back: Checkpoint = serde_json::from_str(&json).unwrap();
            assert_eq!(format!("{back:?}"), format!("{c:?}"), "{json}");
        }
        // Older files: plain numbers, and a missing eval loss.
        let back: Checkpoint = serde_json::from_str(
            r#"{"name":"checkpoint-2","step":2,"epoch":1,"reason":"periodic","loss":1.5}"#,
        )
        .unwrap();
        assert_eq!((back.loss, back.eval_loss, back.epoch), (1.5, None, 1.0));
        let err = serde_json::from_str::<Checkpoint>(
            r#"{"name":"c","step":2,"epoch":1,"reason":"periodic","loss":"lots"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"NaN\""), "{err}");
    }
}

//! The policy: settings plus the run state it needs for exact resume.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{
    retention, Action, Checkpoint, Error, Event, Improvement, SaveReason, Settings, StopReason,
};

/// Epoch values within this of the next whole number count as reaching it (float noise in
/// `step / steps_per_epoch`).
const EPOCH_EPSILON: f64 = 1e-9;

/// What the policy remembers between steps. Serialized with the policy for exact resume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// Last step seen by `decide`.
    last_step: Option<u64>,
    /// Last step a save was issued at.
    last_save_step: Option<u64>,
    /// Consecutive steps qualifying for a loss-threshold save.
    loss_streak: u32,
    /// Training loss of the last loss-threshold save.
    last_loss_save: Option<f64>,
    /// Lowest finite eval loss seen.
    best_eval: Option<f64>,
    /// Whether the periodic-save loss gate has opened.
    gate_open: bool,
    /// The last `stop_loss_window` finite training losses.
    loss_window: VecDeque<f64>,
    /// The first stop issued.
    stopped: Option<StopReason>,
    /// Saves not deleted yet, oldest first.
    checkpoints: Vec<Checkpoint>,
}

/// Checkpoint and stop decisions for one run: call [`Policy::decide`] after every optimizer step and
/// [`Policy::finish`] once at the end, and carry out the returned [`Action`]s in order.
///
/// When several rules want a save at one step, one checkpoint is written, named by the first of
/// user > loss > best > epoch > periodic; every rule that fired counts as served. At most one save is
/// issued per step, and a step not greater than the last one seen never saves.
///
/// The whole policy (settings and state) is `Serialize`/`Deserialize`: store it in each checkpoint
/// and restore it on resume to continue exactly (settings are validated on restore).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PolicyRepr")]
pub struct Policy {
    settings: Settings,
    state: State,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyRepr {
    settings: Settings,
    state: State,
}

impl TryFrom<PolicyRepr> for Policy {
    type Error = Error;

    fn try_from(r: PolicyRepr) -> Result<Self, Error> {
        r.settings.validate()?;
        Ok(Policy {
            settings: r.settings,
            state: r.state,
        })
    }
}

/// Float tolerance of the absolute improvement rule (far below its 0.01 minimum drop).
const ABSOLUTE_TOLERANCE: f64 = 1e-9;

/// The number of the epoch that just ended: the nearest whole number when `epoch` is one (up to
/// float noise), else the epoch in progress (a partial last epoch of a 2.5-epoch run is epoch 3).
fn epoch_number(epoch: f64) -> u64 {
    let nearest = epoch.round();
    let n = if (epoch - nearest).abs() < 1e-6 {
        nearest
    } else {
        epoch.ceil()
    };
    n.max(1.0) as u64
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Policy {
    /// A policy for a new run.
    ///
    /// # Errors
    /// An invalid setting (see [`Settings::validate`]).
    pub fn new(settings: Settings) -> Result<Self, Error> {
        settings.validate()?;
        Ok(Policy {
            settings,
            state: State::default(),
        })
    }

    /// The current settings.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Replaces the settings mid-run (the original lets users change stop-at-loss live). Run state is
    /// kept: loss-threshold saves still need to beat the last one, and a new retention limit applies
    /// from the next save.
    ///
    /// # Errors
    /// An invalid setting; the old settings stay in force.
    pub fn update(&mut self, settings: Settings) -> Result<(), Error> {
        settings.validate()?;
        let window = settings.stop_loss_window as usize;
        while self.state.loss_window.len() > window {
            self.state.loss_window.pop_front();
        }
        self.settings = settings;
        Ok(())
    }

    /// The saves not deleted yet, oldest first.
    #[must_use]
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.state.checkpoints
    }

    /// The first stop issued, if any.
    #[must_use]
    pub fn stopped(&self) -> Option<StopReason> {
        self.state.stopped
    }

    /// The loss a loss-threshold save needs now (`None` when those saves are off).
    #[must_use]
    pub fn loss_save_threshold(&self) -> Option<f64> {
        let ls = self.settings.loss_save.as_ref()?;
        let improved = self.state.last_loss_save.map(|last| match ls.improvement {
            Improvement::Relative(r) => last * (1.0 - r),
            // The tolerance keeps 1.61 qualifying after 1.70 with a 0.09 drop (1.70 - 0.09 is
            // 1.6099999999999999 in binary floating point).
            Improvement::Absolute(d) => round2(last) - d + ABSOLUTE_TOLERANCE,
        });
        Some(improved.map_or(ls.threshold, |i| i.min(ls.threshold)))
    }

    /// Decides what to do after the optimizer step described by `event`: at most one
    /// [`Action::Save`], then any [`Action::Delete`]s it causes, then at most one [`Action::Stop`].
    pub fn decide(&mut self, event: &Event) -> Vec<Action> {
        let mut actions = Vec::new();
        let fresh = self.state.last_step.is_none_or(|last| event.step > last);
        if !fresh {
            if event.stop {
                self.stop(&mut actions, StopReason::User);
            }
            return actions;
        }
        self.state.last_step = Some(event.step);
        let loss = event.loss;
        let finite = loss.is_finite();
        if finite {
            let window = self.settings.stop_loss_window as usize;
            self.state.loss_window.push_back(loss);
            while self.state.loss_window.len() > window {
                self.state.loss_window.pop_front();
            }
            if self
                .settings
                .save_every_below_loss
                .is_none_or(|gate| loss < gate)
            {
                self.state.gate_open = true;
            }
        }
        let eval = event.eval_loss.filter(|e| e.is_finite());

        // Every rule is evaluated (and its state updated) whether or not it names the save.
        let loss_rule = self.loss_rule(event.step, loss);
        let best_rule = match eval {
            Some(e) if self.state.best_eval.is_none_or(|b| e < b) => {
                self.state.best_eval = Some(e);
                self.settings.save_best_eval
            }
            _ => false,
        };
        let epoch_rule = self.settings.save_each_epoch && event.epoch_ended;
        let periodic_rule = self
            .settings
            .save_every
            .is_some_and(|n| event.step > 0 && event.step.is_multiple_of(n))
            && (self.state.gate_open || self.settings.save_every_below_loss.is_none());

        let save = if event.save_now {
            Some((SaveReason::User, loss))
        } else if loss_rule {
            Some((SaveReason::Loss, loss))
        } else if best_rule {
            Some((SaveReason::Best, eval.unwrap_or(loss)))
        } else if epoch_rule {
            let n = epoch_number(event.epoch);
            Some((SaveReason::Epoch(n), loss))
        } else if periodic_rule {
            Some((SaveReason::Periodic, loss))
        } else {
            None
        };
        if let Some((reason, shown)) = save {
            self.save(&mut actions, reason, event, shown);
        }

        let stop = if !finite && self.settings.stop_on_non_finite {
            Some(StopReason::NonFiniteLoss)
        } else if event.stop {
            Some(StopReason::User)
        } else if self.stop_at_loss_reached() {
            Some(StopReason::AtLoss)
        } else if self
            .settings
            .stop_at_epoch
            .is_some_and(|e| (event.epoch + EPOCH_EPSILON).floor() >= e as f64)
        {
            Some(StopReason::AtEpoch)
        } else {
            None
        };
        if let Some(reason) = stop {
            self.stop(&mut actions, reason);
        }
        actions
    }

    /// Ends the run after its last optimizer step `step`: a [`SaveReason::Final`] save (when
    /// `save_final` is on and `step` was not saved already), then [`StopReason::Finished`] unless a
    /// stop was issued before. Calling it again does nothing more.
    pub fn finish(&mut self, step: u64, epoch: f64, loss: f64) -> Vec<Action> {
        let mut actions = Vec::new();
        let unsaved = self.state.last_save_step.is_none_or(|s| step > s);
        if self.settings.save_final && unsaved {
            let event = Event::new(step, epoch, loss);
            self.save(&mut actions, SaveReason::Final, &event, loss);
        }
        self.state.last_step = Some(self.state.last_step.map_or(step, |s| s.max(step)));
        if self.state.stopped.is_none() {
            self.stop(&mut actions, StopReason::Finished);
        }
        actions
    }

    /// Updates the loss-threshold streak; true when a loss-threshold save is due.
    fn loss_rule(&mut self, step: u64, loss: f64) -> bool {
        let Some(ls) = self.settings.loss_save else {
            self.state.loss_streak = 0;
            return false;
        };
        let qualifies = loss.is_finite()
            && loss > 0.0
            && step > ls.min_step
            && self.loss_save_threshold().is_some_and(|thr| loss <= thr)
            // Each save beats the last even where the rule rounds away (a relative drop below
            // f64 precision, an absolute rule on a huge loss).
            && self.state.last_loss_save.is_none_or(|last| loss < last);
        if !qualifies {
            self.state.loss_streak = 0;
            return false;
        }
        self.state.loss_streak += 1;
        if self.state.loss_streak < ls.patience {
            return false;
        }
        self.state.loss_streak = 0;
        self.state.last_loss_save = Some(loss);
        true
    }

    fn stop_at_loss_reached(&self) -> bool {
        let Some(thr) = self.settings.stop_at_loss else {
            return false;
        };
        let w = &self.state.loss_window;
        if w.len() < self.settings.stop_loss_window as usize || w.is_empty() {
            return false;
        }
        w.iter().sum::<f64>() / w.len() as f64 <= thr
    }

    fn save(&mut self, actions: &mut Vec<Action>, reason: SaveReason, event: &Event, shown: f64) {
        let name = reason.folder_name(event.step, shown);
        actions.push(Action::Save {
            reason,
            name: name.clone(),
        });
        self.state.last_save_step = Some(event.step);
        self.state.checkpoints.push(Checkpoint {
            name,
            step: event.step,
            epoch: event.epoch,
            reason,
            loss: event.loss,
            eval_loss: event.eval_loss,
        });
        let gone = retention::deletions(
            &self.state.checkpoints,
            self.settings.keep_last,
            self.settings.keep_best,
        );
        if !gone.is_empty() {
            self.state.checkpoints.retain(|c| !gone.contains(&c.name));
            actions.extend(gone.into_iter().map(|name| Action::Delete { name }));
        }
    }

    fn stop(&mut self, actions: &mut Vec<Action>, reason: StopReason) {
        actions.push(Action::Stop { reason });
        if self.state.stopped.is_none() {
            self.state.stopped = Some(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LossSave;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn arb_settings() -> impl Strategy<Value = Settings> {
        (
            prop::option::of(1u64..20),
            prop::option::of(0.5f64..3.0),
            prop::option::of((0.3f64..3.0, prop::bool::ANY, 1u32..5, 0u64..10)),
            prop::bool::ANY,
            prop::bool::ANY,
            prop::option::of(1usize..4),
            prop::option::of(1usize..4),
        )
            .prop_map(|(every, gate, ls, epoch, best, last, keep_best)| Settings {
                save_every: every,
                save_every_below_loss: gate,
                loss_save: ls.map(|(threshold, relative, patience, min_step)| LossSave {
                    threshold,
                    improvement: if relative {
                        Improvement::Relative(0.1)
                    } else {
                        Improvement::Absolute(0.09)
                    },
                    patience,
                    min_step,
                }),
                save_each_epoch: epoch,
                save_best_eval: best,
                keep_last: last,
                keep_best,
                ..Settings::default()
            })
    }

    /// A run: (loss, eval loss, save-now) per step; 7 steps per epoch.
    fn arb_run() -> impl Strategy<Value = Vec<(f64, Option<f64>, bool)>> {
        prop::collection::vec(
            (
                0.05f64..3.5,
                prop::option::of(0.05f64..3.5),
                prop::bool::weighted(0.05),
            ),
            1..120,
        )
    }

    fn event(i: usize, (loss, eval, save_now): (f64, Option<f64>, bool)) -> Event {
        let step = i as u64 + 1;
        Event {
            step,
            epoch: step as f64 / 7.0,
            epoch_ended: step.is_multiple_of(7),
            loss,
            eval_loss: eval,
            save_now,
            stop: false,
        }
    }

    #[test]
    fn loss_saves_strictly_improve_with_a_tiny_relative_drop() {
        // Found by the `policy` fuzz target: with a relative improvement below f64 precision,
        // `last * (1 - r) == last`, and an equal loss saved again.
        let mut p = Policy::new(Settings {
            loss_save: Some(LossSave {
                threshold: 2.0,
                improvement: Improvement::Relative(1e-300),
                patience: 1,
                min_step: 0,
            }),
            ..Settings::default()
        })
        .unwrap();
        let saved = |p: &mut Policy, step, loss| {
            p.decide(&Event::new(step, 0.0, loss)).iter().any(|a| {
                matches!(
                    a,
                    Action::Save {
                        reason: SaveReason::Loss,
                        ..
                    }
                )
            })
        };
        assert!(saved(&mut p, 1, 1.5));
        assert!(!saved(&mut p, 2, 1.5));
        assert!(saved(&mut p, 3, 1.25));
    }

    #[test]
    fn resumes_after_saving_a_diverged_step() {
        // Found by the `policy` fuzz target: a save-now at a NaN loss left a policy whose JSON
        // (stored in the checkpoint for resume) did not read back.
        let mut p = Policy::new(Settings::default()).unwrap();
        let actions = p.decide(
            &Event::new(1, 0.1, f64::NAN)
                .with_save_now()
                .with_eval_loss(f64::NAN),
        );
        assert!(matches!(
            actions[0],
            Action::Save {
                reason: SaveReason::User,
                ..
            }
        ));
        let json = serde_json::to_string(&p).unwrap();
        let back: Policy = serde_json::from_str(&json).unwrap();
        assert_eq!(format!("{back:?}"), format!("{p:?}"), "{json}");
    }

    #[test]
    fn epoch_numbers() {
        assert_eq!(epoch_number(1.0), 1);
        assert_eq!(epoch_number(0.999_999_999_9), 1);
        assert_eq!(epoch_number(2.000_000_000_1), 2);
        assert_eq!(epoch_number(2.5), 3);
        assert_eq!(epoch_number(0.0), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        // C1: at most one save per step, unique names, deletes only name earlier saves, and the
        // retained list matches what was saved minus what was deleted.
        #[test]
        fn c1_one_save_per_step_unique_names(settings in arb_settings(), run in arb_run()) {
            let mut p = Policy::new(settings).unwrap();
            let mut names = HashSet::new();
            let mut live = Vec::new();
            let n = run.len();
            for (i, r) in run.into_iter().enumerate() {
                let actions = p.decide(&event(i, r));
                let saves = actions.iter().filter(|a| matches!(a, Action::Save { .. })).count();
                prop_assert!(saves <= 1);
                // A repeated step never saves.
                let again = p.decide(&event(i, r));
                let resaved = again.iter().any(|a| matches!(a, Action::Save { .. }));
                prop_assert!(!resaved, "step {} saved twice", i + 1);
                for a in actions {
                    match a {
                        Action::Save { name, .. } => {
                            prop_assert!(names.insert(name.clone()), "duplicate {}", name);
                            live.push(name);
                        }
                        Action::Delete { name } => {
                            let pos = live.iter().position(|x| *x == name);
                            prop_assert!(pos.is_some(), "deleted unknown {}", name);
                            live.remove(pos.unwrap());
                        }
                        Action::Stop { .. } => {}
                    }
                }
            }
            for a in p.finish(n as u64, n as f64 / 7.0, 1.0) {
                match a {
                    Action::Save { name, .. } => {
                        prop_assert!(names.insert(name.clone()));
                        live.push(name);
                    }
                    Action::Delete { name } => prop_assert!(false, "finish deleted {}", name),
                    Action::Stop { .. } => {}
                }
            }
            let kept: Vec<String> = p.checkpoints().iter().map(|c| c.name.clone()).collect();
            prop_assert_eq!(kept, live);
        }

        // C2: loss-threshold saves strictly improve by the configured rule and never come at or
        // before min_step.
        #[test]
        fn c2_loss_saves_strictly_improve(settings in arb_settings(), run in arb_run()) {
            prop_assume!(settings.loss_save.is_some());
            let ls = settings.loss_save.unwrap();
            let mut p = Policy::new(settings).unwrap();
            let mut last: Option<f64> = None;
            for (i, r) in run.into_iter().enumerate() {
                let ev = event(i, r);
                for a in p.decide(&ev) {
                    if let Action::Save { reason: SaveReason::Loss, .. } = a {
                        prop_assert!(ev.step > ls.min_step);
                        prop_assert!(ev.loss <= ls.threshold);
                        if let Some(prev) = last {
                            prop_assert!(ev.loss < prev);
                            match ls.improvement {
                                Improvement::Relative(f) => prop_assert!(ev.loss <= prev * (1.0 - f)),
                                Improvement::Absolute(d) => prop_assert!(ev.loss <= round2(prev) - d + 1e-9),
                            }
                        }
                        last = Some(ev.loss);
                    }
                }
            }
        }

        // C3: periodic saves (without a gate or competing rules) at exactly the multiples of n.
        #[test]
        fn c3_periodic_at_multiples(n in 1u64..15, steps in 1u64..200) {
            let mut p = Policy::new(Settings {
                save_every: Some(n),
                loss_save: None,
                save_final: false,
                ..Settings::default()
            }).unwrap();
            for step in 1..=steps {
                let saved = p.decide(&Event::new(step, step as f64 / 10.0, 1.0))
                    .iter().any(|a| matches!(a, Action::Save { reason: SaveReason::Periodic, .. }));
                prop_assert_eq!(saved, step % n == 0);
            }
        }

        // C4: stop-at-loss fires at the first loss <= thr; stop-at-epoch at the first step whose
        // whole epoch count reaches E.
        #[test]
        fn c4_stops_fire_first_time(losses in prop::collection::vec(0.1f64..3.0, 1..100),
                                    thr in 0.2f64..2.0, e in 1u64..5, per_epoch in 1u64..9) {
            let mut p = Policy::new(Settings { stop_at_loss: Some(thr), ..Settings::default() }).unwrap();
            let first = losses.iter().position(|&l| l <= thr);
            let mut fired = None;
            for (i, &l) in losses.iter().enumerate() {
                let stop = p.decide(&Event::new(i as u64 + 1, 0.0, l)).iter()
                    .any(|a| matches!(a, Action::Stop { reason: StopReason::AtLoss }));
                if stop && fired.is_none() {
                    fired = Some(i);
                }
            }
            prop_assert_eq!(fired, first);

            let mut p = Policy::new(Settings { stop_at_epoch: Some(e), ..Settings::default() }).unwrap();
            let mut fired = None;
            for step in 1..=(e + 1) * per_epoch {
                let epoch = step as f64 / per_epoch as f64;
                let stop = p.decide(&Event::new(step, epoch, 5.0)).iter()
                    .any(|a| matches!(a, Action::Stop { reason: StopReason::AtEpoch }));
                if stop && fired.is_none() {
                    fired = Some(step);
                }
            }
            prop_assert_eq!(fired, Some(e * per_epoch));
        }

        // Resume: serializing the policy at any step and continuing gives the same decisions.
        #[test]
        fn resume_is_exact(settings in arb_settings(), run in arb_run(), cut in 0usize..120) {
            let mut whole = Policy::new(settings).unwrap();
            let mut resumed = whole.clone();
            let cut = cut.min(run.len());
            let mut a = Vec::new();
            let mut b = Vec::new();
            for (i, r) in run.iter().enumerate() {
                a.push(whole.decide(&event(i, *r)));
                if i == cut {
                    let json = serde_json::to_string(&resumed).unwrap();
                    resumed = serde_json::from_str(&json).unwrap();
                }
                b.push(resumed.decide(&event(i, *r)));
            }
            prop_assert_eq!(a, b);
            prop_assert_eq!(whole, resumed);
        }
    }
}

//! Arbitrary checkpoint settings and an arbitrary run (steps out of order, NaN losses, eval
//! losses, user requests, settings changed mid-run): no panic, and the invariants of
//! `crates/checkpoint-policy` (C1-C4) hold, plus exact resume through JSON.
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use checkpoint_policy::{
    Action, Event, Improvement, LossSave, Policy, SaveReason, Settings, StopReason,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, Copy, Arbitrary)]
struct ArbLossSave {
    threshold: f64,
    relative: bool,
    improvement: f64,
    patience: u8,
    min_step: u8,
}

#[derive(Debug, Clone, Arbitrary)]
struct ArbSettings {
    save_every: Option<u8>,
    save_every_below_loss: Option<f64>,
    loss_save: Option<ArbLossSave>,
    save_each_epoch: bool,
    save_best_eval: bool,
    save_final: bool,
    stop_at_loss: Option<f64>,
    stop_loss_window: u8,
    stop_at_epoch: Option<u8>,
    stop_on_non_finite: bool,
    keep_last: Option<u8>,
    keep_best: Option<u8>,
}

impl ArbSettings {
    fn build(&self) -> Settings {
        Settings {
            save_every: self.save_every.map(u64::from),
            save_every_below_loss: self.save_every_below_loss,
            loss_save: self.loss_save.map(|l| LossSave {
                threshold: l.threshold,
                improvement: if l.relative {
                    Improvement::Relative(l.improvement)
                } else {
                    Improvement::Absolute(l.improvement)
                },
                patience: u32::from(l.patience),
                min_step: u64::from(l.min_step),
            }),
            save_each_epoch: self.save_each_epoch,
            save_best_eval: self.save_best_eval,
            save_final: self.save_final,
            stop_at_loss: self.stop_at_loss,
            stop_loss_window: u32::from(self.stop_loss_window),
            stop_at_epoch: self.stop_at_epoch.map(u64::from),
            stop_on_non_finite: self.stop_on_non_finite,
            keep_last: self.keep_last.map(usize::from),
            keep_best: self.keep_best.map(usize::from),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
enum Step {
    /// The next step (step + 1), with its loss; `per_epoch` steps per epoch.
    Next {
        loss: f64,
        eval: Option<f64>,
        save_now: bool,
        stop: bool,
    },
    /// An arbitrary event (a step that goes back or jumps, any epoch).
    Raw {
        step: u16,
        epoch: f64,
        epoch_ended: bool,
        loss: f64,
        eval: Option<f64>,
        save_now: bool,
        stop: bool,
    },
    /// New settings mid-run.
    Update(ArbSettings),
    /// Serialize the policy and continue from the restored copy.
    Resume,
}

#[derive(Debug, Arbitrary)]
struct Input {
    settings: ArbSettings,
    per_epoch: u8,
    steps: Vec<Step>,
    finish_loss: f64,
}

fuzz_target!(|input: Input| {
    let Ok(mut p) = Policy::new(input.settings.build()) else {
        assert!(input.settings.build().validate().is_err());
        return;
    };
    let per_epoch = u64::from(input.per_epoch.max(1));
    let mut names: HashSet<String> = HashSet::new();
    let mut live: Vec<String> = Vec::new();
    let mut last_step: Option<u64> = None;
    let mut last_loss_save: Option<f64> = None;
    let mut window: Vec<f64> = Vec::new();
    let mut stopped = false;
    for s in input.steps.iter().take(400) {
        let ev = match *s {
            Step::Next {
                loss,
                eval,
                save_now,
                stop,
            } => {
                let step = last_step.map_or(1, |l| l + 1);
                Event {
                    step,
                    epoch: step as f64 / per_epoch as f64,
                    epoch_ended: step % per_epoch == 0,
                    loss,
                    eval_loss: eval,
                    save_now,
                    stop,
                }
            }
            Step::Raw {
                step,
                epoch,
                epoch_ended,
                loss,
                eval,
                save_now,
                stop,
            } => Event {
                step: u64::from(step),
                epoch,
                epoch_ended,
                loss,
                eval_loss: eval,
                save_now,
                stop,
            },
            Step::Update(ref a) => {
                let new = a.build();
                let valid = new.validate().is_ok();
                let before = p.clone();
                assert_eq!(p.update(new).is_ok(), valid);
                if !valid {
                    assert_eq!(
                        format!("{p:?}"),
                        format!("{before:?}"),
                        "a rejected update changed the policy"
                    );
                } else {
                    let w = p.settings().stop_loss_window as usize;
                    if window.len() > w {
                        window.drain(..window.len() - w);
                    }
                }
                continue;
            }
            Step::Resume => {
                let json = serde_json::to_string(&p).expect("policy serializes");
                let back: Policy = serde_json::from_str(&json)
                    .unwrap_or_else(|e| panic!("policy JSON does not read back: {e}\n{json}"));
                assert_eq!(
                    format!("{back:?}"),
                    format!("{p:?}"),
                    "resume changed the policy"
                );
                p = back;
                continue;
            }
        };
        let settings = p.settings().clone();
        let threshold = p.loss_save_threshold();
        let fresh = last_step.is_none_or(|l| ev.step > l);
        let actions = p.decide(&ev);
        if fresh {
            last_step = Some(ev.step);
            if ev.loss.is_finite() {
                window.push(ev.loss);
                let w = settings.stop_loss_window as usize;
                if window.len() > w {
                    window.drain(..window.len() - w);
                }
            }
        }
        // C1: at most one save, first; deletes name live saves; stops last.
        let saves: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Save { reason, name } => Some((*reason, name.clone())),
                _ => None,
            })
            .collect();
        assert!(saves.len() <= 1, "{actions:?}");
        assert!(
            fresh || saves.is_empty(),
            "a repeated or older step saved: {ev:?}"
        );
        if !saves.is_empty() {
            assert!(matches!(actions[0], Action::Save { .. }), "{actions:?}");
        }
        let mut seen_stop = false;
        for a in &actions {
            match a {
                Action::Save { name, .. } => {
                    assert!(names.insert(name.clone()), "duplicate name {name}");
                    live.push(name.clone());
                }
                Action::Delete { name } => {
                    assert!(!seen_stop);
                    let pos = live.iter().position(|x| x == name);
                    let pos = pos.unwrap_or_else(|| panic!("deleted unknown {name}"));
                    live.remove(pos);
                }
                Action::Stop { .. } => {
                    assert!(!seen_stop, "two stops in one step: {actions:?}");
                    seen_stop = true;
                }
            }
        }
        let kept: Vec<&str> = p.checkpoints().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(kept, live.iter().map(String::as_str).collect::<Vec<_>>());
        // Retention never deletes a user or final save.
        for (reason, _) in &saves {
            if !reason.retainable() {
                assert!(p
                    .checkpoints()
                    .iter()
                    .any(|c| c.reason == *reason && c.step == ev.step));
            }
        }
        // C2: loss-threshold saves need a finite loss under the threshold in force, after
        // min_step, and strictly improve on the previous one.
        if let Some((SaveReason::Loss, _)) = saves.first() {
            let ls = settings.loss_save.expect("a loss save with loss saves off");
            let thr = threshold.expect("a threshold");
            assert!(
                ev.loss.is_finite() && ev.loss > 0.0 && ev.loss <= thr,
                "{ev:?} thr {thr}"
            );
            assert!(
                ev.loss <= ls.threshold && ev.step > ls.min_step,
                "{ev:?} {ls:?}"
            );
            if let Some(prev) = last_loss_save {
                assert!(ev.loss < prev, "loss save {} after {prev}", ev.loss);
            }
            last_loss_save = Some(ev.loss);
        }
        // C3: a fresh step at a multiple of save_every (no gate) is saved, by some rule;
        // a periodic save only comes at a multiple.
        if let Some(n) = settings.save_every {
            if fresh && ev.step > 0 && ev.step % n == 0 && settings.save_every_below_loss.is_none()
            {
                assert_eq!(saves.len(), 1, "step {} (every {n}) not saved", ev.step);
            }
        }
        if let Some((SaveReason::Periodic, _)) = saves.first() {
            let n = settings
                .save_every
                .expect("periodic save with save_every off");
            assert_eq!(ev.step % n, 0);
        }
        // C4: a fresh finite step that reaches stop_at_loss (smoothed over a full window) or
        // stop_at_epoch stops; a non-finite loss stops when asked to; a stop request stops.
        let reached_loss = settings.stop_at_loss.is_some_and(|thr| {
            window.len() == settings.stop_loss_window as usize
                && window.iter().sum::<f64>() / window.len() as f64 <= thr
        });
        let reached_epoch = settings
            .stop_at_epoch
            .is_some_and(|e| (ev.epoch + 1e-9).floor() >= e as f64);
        let must_stop = ev.stop
            || (fresh
                && ((!ev.loss.is_finite() && settings.stop_on_non_finite)
                    || reached_loss
                    || reached_epoch));
        assert_eq!(
            seen_stop, must_stop,
            "{ev:?} {settings:?} window {window:?}"
        );
        if seen_stop {
            stopped = true;
        }
        if let Some(Action::Stop { reason }) = actions.last() {
            if !ev.loss.is_finite() && fresh && settings.stop_on_non_finite {
                assert_eq!(*reason, StopReason::NonFiniteLoss);
            }
        }
    }
    // finish: at most one final save, never a duplicate, Finished only when nothing stopped.
    let step = last_step.unwrap_or(1);
    let actions = p.finish(step, step as f64 / per_epoch as f64, input.finish_loss);
    for a in &actions {
        match a {
            Action::Save { reason, name } => {
                assert_eq!(*reason, SaveReason::Final);
                assert!(names.insert(name.clone()), "duplicate final {name}");
                live.push(name.clone());
            }
            Action::Delete { name } => {
                let pos = live.iter().position(|x| x == name);
                live.remove(pos.unwrap_or_else(|| panic!("finish deleted unknown {name}")));
            }
            Action::Stop { reason } => {
                assert_eq!(*reason, StopReason::Finished);
                assert!(!stopped);
            }
        }
    }
    let kept: Vec<&str> = p.checkpoints().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(kept, live.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(p
        .finish(step, 0.0, 1.0)
        .iter()
        .all(|a| !matches!(a, Action::Save { .. } | Action::Stop { .. })));
});

use checkpoint_policy::{
    Action, Event, Improvement, LossSave, Policy, SaveReason, Settings, StopReason,
};

fn save(reason: SaveReason, name: &str) -> Action {
    Action::Save {
        reason,
        name: name.to_string(),
    }
}

fn delete(name: &str) -> Action {
    Action::Delete {
        name: name.to_string(),
    }
}

fn stop(reason: StopReason) -> Action {
    Action::Stop { reason }
}

fn off() -> Settings {
    Settings {
        loss_save: None,
        save_final: false,
        ..Settings::default()
    }
}

/// Runs `events` and returns the non-empty action lists with their step.
fn run(settings: Settings, events: &[Event]) -> Vec<(u64, Vec<Action>)> {
    let mut p = Policy::new(settings).expect("valid settings");
    events
        .iter()
        .map(|e| (e.step, p.decide(e)))
        .filter(|(_, a)| !a.is_empty())
        .collect()
}

/// Steps 1..=n with the given losses, 4 steps per epoch.
fn steps(losses: &[f64]) -> Vec<Event> {
    losses
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let step = i as u64 + 1;
            let e = Event::new(step, step as f64 / 4.0, l);
            if step.is_multiple_of(4) {
                e.with_epoch_end()
            } else {
                e
            }
        })
        .collect()
}

#[test]
fn table() {
    struct Row {
        what: &'static str,
        settings: Settings,
        events: Vec<Event>,
        want: Vec<(u64, Vec<Action>)>,
    }
    let rows = vec![
        Row {
            what: "periodic saves every 3 steps",
            settings: Settings {
                save_every: Some(3),
                ..off()
            },
            events: steps(&[2.0; 7]),
            want: vec![
                (3, vec![save(SaveReason::Periodic, "checkpoint-3")]),
                (6, vec![save(SaveReason::Periodic, "checkpoint-6")]),
            ],
        },
        Row {
            what: "periodic saves wait for the loss gate, then keep going above it",
            settings: Settings {
                save_every: Some(2),
                save_every_below_loss: Some(1.5),
                ..off()
            },
            events: steps(&[2.0, 2.0, 1.4, 1.6, 1.7, 1.8]),
            want: vec![
                (4, vec![save(SaveReason::Periodic, "checkpoint-4")]),
                (6, vec![save(SaveReason::Periodic, "checkpoint-6")]),
            ],
        },
        Row {
            what: "loss saves: patience 2, then each 10% relative improvement",
            settings: Settings {
                loss_save: Some(LossSave {
                    threshold: 1.8,
                    patience: 2,
                    ..LossSave::default()
                }),
                ..off()
            },
            // 1.7 1.7 -> save (1.70); next needs <= 1.53: 1.6 no; 1.5 1.5 -> save (1.50);
            // next needs <= 1.35: 1.36 no, 1.35 1.30 -> save at the second.
            events: steps(&[1.9, 1.7, 1.7, 1.6, 1.5, 1.5, 1.36, 1.35, 1.30]),
            want: vec![
                (3, vec![save(SaveReason::Loss, "checkpoint-3-loss-1.70")]),
                (6, vec![save(SaveReason::Loss, "checkpoint-6-loss-1.50")]),
                (9, vec![save(SaveReason::Loss, "checkpoint-9-loss-1.30")]),
            ],
        },
        Row {
            what: "loss saves: the original's absolute 0.09 rule and min_step gate",
            settings: Settings {
                loss_save: Some(LossSave {
                    threshold: 1.8,
                    improvement: Improvement::Absolute(0.09),
                    patience: 1,
                    min_step: 2,
                }),
                ..off()
            },
            // Steps 1-2 are gated; 1.70 saves; next needs <= 1.61: 1.62 no, 1.61 yes.
            events: steps(&[1.0, 1.0, 1.70, 1.62, 1.61]),
            want: vec![
                (3, vec![save(SaveReason::Loss, "checkpoint-3-loss-1.70")]),
                (5, vec![save(SaveReason::Loss, "checkpoint-5-loss-1.61")]),
            ],
        },
        Row {
            what: "epoch saves include the last epoch",
            settings: Settings {
                save_each_epoch: true,
                ..off()
            },
            events: steps(&[2.0; 8]),
            want: vec![
                (4, vec![save(SaveReason::Epoch(1), "checkpoint-4-epoch-1")]),
                (8, vec![save(SaveReason::Epoch(2), "checkpoint-8-epoch-2")]),
            ],
        },
        Row {
            what: "one save per step: user beats loss beats epoch beats periodic",
            settings: Settings {
                save_every: Some(4),
                save_each_epoch: true,
                loss_save: Some(LossSave {
                    threshold: 1.0,
                    patience: 1,
                    ..LossSave::default()
                }),
                ..off()
            },
            events: vec![
                Event::new(4, 1.0, 2.0).with_epoch_end(),
                Event::new(8, 2.0, 0.9).with_epoch_end(),
                Event::new(12, 3.0, 0.5).with_epoch_end().with_save_now(),
                Event::new(16, 4.0, 0.5),
            ],
            want: vec![
                (4, vec![save(SaveReason::Epoch(1), "checkpoint-4-epoch-1")]),
                (8, vec![save(SaveReason::Loss, "checkpoint-8-loss-0.90")]),
                (12, vec![save(SaveReason::User, "checkpoint-12-user")]),
                (16, vec![save(SaveReason::Periodic, "checkpoint-16")]),
            ],
        },
        Row {
            what: "best eval saves only on a new best eval loss",
            settings: Settings {
                save_best_eval: true,
                ..off()
            },
            events: vec![
                Event::new(1, 0.1, 2.0).with_eval_loss(2.5),
                Event::new(2, 0.2, 1.0),
                Event::new(3, 0.3, 2.0).with_eval_loss(2.6),
                Event::new(4, 0.4, 2.0).with_eval_loss(2.25),
                Event::new(5, 0.5, 2.0).with_eval_loss(f64::NAN),
            ],
            want: vec![
                (1, vec![save(SaveReason::Best, "checkpoint-1-best-2.50")]),
                (4, vec![save(SaveReason::Best, "checkpoint-4-best-2.25")]),
            ],
        },
        Row {
            what: "keep-last-2 deletes the oldest periodic save but never user saves",
            settings: Settings {
                save_every: Some(1),
                keep_last: Some(2),
                ..off()
            },
            events: vec![
                Event::new(1, 0.1, 2.0),
                Event::new(2, 0.2, 2.0).with_save_now(),
                Event::new(3, 0.3, 2.0),
                Event::new(4, 0.4, 2.0),
            ],
            want: vec![
                (1, vec![save(SaveReason::Periodic, "checkpoint-1")]),
                (2, vec![save(SaveReason::User, "checkpoint-2-user")]),
                (3, vec![save(SaveReason::Periodic, "checkpoint-3")]),
                (
                    4,
                    vec![
                        save(SaveReason::Periodic, "checkpoint-4"),
                        delete("checkpoint-1"),
                    ],
                ),
            ],
        },
        Row {
            what: "keep-best-1 by training loss keeps the best and the newest",
            settings: Settings {
                save_every: Some(1),
                keep_best: Some(1),
                ..off()
            },
            events: steps(&[2.0, 1.0, 1.5, 1.2]),
            want: vec![
                (1, vec![save(SaveReason::Periodic, "checkpoint-1")]),
                (
                    2,
                    vec![
                        save(SaveReason::Periodic, "checkpoint-2"),
                        delete("checkpoint-1"),
                    ],
                ),
                (3, vec![save(SaveReason::Periodic, "checkpoint-3")]),
                (
                    4,
                    vec![
                        save(SaveReason::Periodic, "checkpoint-4"),
                        delete("checkpoint-3"),
                    ],
                ),
            ],
        },
        Row {
            what: "stop at loss on the raw loss",
            settings: Settings {
                stop_at_loss: Some(1.0),
                ..off()
            },
            events: steps(&[1.5, 1.0, 0.8]),
            want: vec![
                (2, vec![stop(StopReason::AtLoss)]),
                (3, vec![stop(StopReason::AtLoss)]),
            ],
        },
        Row {
            what: "stop at loss on a 3-step moving average ignores one lucky step",
            settings: Settings {
                stop_at_loss: Some(1.0),
                stop_loss_window: 3,
                ..off()
            },
            // Means: -, -, 1.17, 1.07, 1.2, 0.97 (the raw loss would stop at step 2).
            events: steps(&[1.5, 0.5, 1.5, 1.2, 0.9, 0.8]),
            want: vec![(6, vec![stop(StopReason::AtLoss)])],
        },
        Row {
            what: "stop at epoch 2 at the step that completes it",
            settings: Settings {
                stop_at_epoch: Some(2),
                ..off()
            },
            events: steps(&[2.0; 8]),
            want: vec![(8, vec![stop(StopReason::AtEpoch)])],
        },
        Row {
            what: "user stop and NaN loss",
            settings: off(),
            events: vec![
                Event::new(1, 0.1, 2.0).with_stop(),
                Event::new(2, 0.2, f64::NAN),
                Event::new(3, 0.3, f64::INFINITY),
            ],
            want: vec![
                (1, vec![stop(StopReason::User)]),
                (2, vec![stop(StopReason::NonFiniteLoss)]),
                (3, vec![stop(StopReason::NonFiniteLoss)]),
            ],
        },
        Row {
            what: "defaults: the original's 1.8 loss threshold (patience 3)",
            settings: Settings::default(),
            events: steps(&[2.0, 1.8, 1.79, 1.75, 1.7]),
            want: vec![(4, vec![save(SaveReason::Loss, "checkpoint-4-loss-1.75")])],
        },
    ];
    for row in rows {
        let got = run(row.settings, &row.events);
        assert_eq!(got, row.want, "{}", row.what);
    }
}

#[test]
fn finish_saves_once_and_reports_why() {
    let mut p = Policy::new(Settings {
        save_each_epoch: true,
        ..off()
    })
    .unwrap();
    p.update(Settings {
        save_each_epoch: true,
        save_final: true,
        ..off()
    })
    .unwrap();
    assert_eq!(
        p.decide(&Event::new(4, 1.0, 1.0).with_epoch_end()),
        vec![save(SaveReason::Epoch(1), "checkpoint-4-epoch-1")]
    );
    // The last step was saved as an epoch checkpoint: no extra final folder.
    assert_eq!(p.finish(4, 1.0, 1.0), vec![stop(StopReason::Finished)]);
    assert_eq!(p.finish(4, 1.0, 1.0), vec![]);

    let mut p = Policy::new(Settings {
        save_final: true,
        ..off()
    })
    .unwrap();
    assert_eq!(
        p.decide(&Event::new(5, 1.0, 1.0).with_stop()),
        vec![stop(StopReason::User)]
    );
    assert_eq!(
        p.finish(5, 1.0, 1.0),
        vec![save(SaveReason::Final, "checkpoint-5-final")]
    );
    assert_eq!(p.stopped(), Some(StopReason::User));
}

#[test]
fn live_settings_change() {
    let mut p = Policy::new(off()).unwrap();
    assert!(p.decide(&Event::new(1, 0.1, 1.2)).is_empty());
    // The user lowers stop_at_loss live, as the original allows.
    p.update(Settings {
        stop_at_loss: Some(1.0),
        ..off()
    })
    .unwrap();
    assert!(p.decide(&Event::new(2, 0.2, 1.1)).is_empty());
    assert_eq!(
        p.decide(&Event::new(3, 0.3, 0.95)),
        vec![stop(StopReason::AtLoss)]
    );
    // An invalid update is refused and changes nothing.
    let err = p
        .update(Settings {
            keep_last: Some(0),
            ..off()
        })
        .unwrap_err();
    assert!(err.to_string().contains("keep_last"), "{err}");
    assert_eq!(p.settings().stop_at_loss, Some(1.0));
    // Loss saves switched on mid-run: the threshold applies from now on.
    p.update(Settings {
        loss_save: Some(LossSave {
            threshold: 1.0,
            patience: 1,
            ..LossSave::default()
        }),
        ..off()
    })
    .unwrap();
    assert_eq!(p.loss_save_threshold(), Some(1.0));
    assert_eq!(
        p.decide(&Event::new(4, 0.4, 0.9)),
        vec![save(SaveReason::Loss, "checkpoint-4-loss-0.90")]
    );
    assert!((p.loss_save_threshold().unwrap() - 0.81).abs() < 1e-12);
}

#[test]
fn restore_validates_settings() {
    let p = Policy::new(Settings {
        save_every: Some(5),
        ..off()
    })
    .unwrap();
    let json = serde_json::to_string(&p).unwrap();
    let bad = json.replace("\"save_every\":5", "\"save_every\":0");
    assert_ne!(bad, json);
    let err = serde_json::from_str::<Policy>(&bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("save_every"), "{err}");
}

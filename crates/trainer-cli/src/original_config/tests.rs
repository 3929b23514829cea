//! Tests of the mapping of Training PRO's `training_parameters.json`, on the fixture
//! `testdata/training_parameters.json` and variants of it.

use super::rules::{Rule, RULES};
use super::*;
use crate::settings::{RunFlags, SettingFlags};
use crate::sources::Resolved;

/// The fixture: a training_parameters.json as the original writes it, with its defaults.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/training_parameters.json")
}

/// The fixture with `changes` (key, JSON value; `null` removes the key) written to a temporary folder.
fn variant(dir: &Path, changes: &[(&str, Value)]) -> PathBuf {
    let text = std::fs::read_to_string(fixture()).unwrap();
    let mut map: Map<String, Value> = serde_json::from_str(&text).unwrap();
    for (k, v) in changes {
        if v.is_null() {
            map.remove(*k);
        } else {
            map.insert(k.to_string(), v.clone());
        }
    }
    let path = dir.join("training_parameters.json");
    std::fs::write(&path, serde_json::to_string_pretty(&map).unwrap()).unwrap();
    path
}

fn resolve(configs: &[PathBuf], run: RunFlags) -> Result<Resolved> {
    let flags = SettingFlags {
        run,
        ..SettingFlags::default()
    };
    Resolved::new(configs, &flags, None)
}

fn listing(r: &Resolved) -> String {
    r.originals[0].listing(&r.settings, &r.sources)
}

/// The line of `key` in the listing.
fn line<'a>(listing: &'a str, key: &str) -> &'a str {
    listing
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no line for {key} in\n{listing}"))
}

#[test]
fn the_rules_follow_the_fixtures_key_order_and_name_real_settings() {
    let text = std::fs::read_to_string(fixture()).unwrap();
    // The file's key order (serde_json sorts its map, so read the keys off the text).
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.split_once('"').map(|(k, _)| k))
        .collect();
    let rules: Vec<&str> = RULES.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, rules);
    let mut s = Settings::default();
    for (key, rule) in RULES {
        match rule {
            Rule::Key(ours, _, _) => {
                let v = s
                    .value_of(ours)
                    .unwrap_or_else(|| panic!("{key}: no setting {ours}"));
                s.set_key(ours, v).unwrap();
            }
            Rule::No(_) => {}
        }
    }
}

#[test]
fn the_original_defaults_map_to_these_settings() {
    let r = resolve(&[fixture()], RunFlags::default()).unwrap();
    let s = &r.settings;
    assert_eq!(s.rank, 32);
    assert_eq!(s.alpha, 64.0);
    assert!(!s.rslora);
    assert_eq!(s.dropout, 0.05);
    assert_eq!(s.cutoff, 256);
    assert_eq!(s.batch_size, 4);
    assert_eq!(s.grad_accum, 1);
    assert_eq!(s.epochs, 3.0);
    assert_eq!(s.learning_rate, 3e-4);
    assert_eq!(s.scheduler.0.to_string(), "linear");
    assert_eq!(s.warmup_steps, 100);
    assert_eq!(s.warmup_ratio, 0.0);
    assert_eq!(s.eval_steps, 100);
    assert_eq!(s.save_every, 0);
    assert!(
        !s.save_each_epoch,
        "the original saved epochs only with save_steps > 0"
    );
    assert_eq!(s.save_under_loss, 1.8);
    assert_eq!(s.stop_at_loss, 0.0);
    assert_eq!(s.stop_at_epoch, 0);
    assert_eq!(s.hard_cut, "\\n\\n\\n");
    assert_eq!(s.train_only_after, "");
    assert_eq!(s.eos.0.to_string(), "every-block");
    assert!(s.bos);
    assert!(s.overlap);
    assert_eq!(s.mode.0.to_string(), "precise");
    assert_eq!(s.min_chars, 0);
    assert_eq!(s.targets.0.to_string(), "q-v");
    assert_eq!(s.neftune_alpha, 0.0);
    assert!(!s.group_by_length && !s.eliminate_long && !s.train_head);
    assert!(!s.gradient_checkpointing);
    assert_eq!((s.hybrid_data_ratio, s.hybrid_text_ratio), (100.0, 100.0));
    // Every mapped key is recorded with its source; the data names are not settings.
    assert_eq!(
        *r.sources.get("rank"),
        Source::Original {
            file: fixture(),
            key: "lora_rank".into()
        }
    );
    assert_eq!(*r.sources.get("text"), Source::Default);
    let l = listing(&r);
    assert_eq!(l.lines().count(), 1 + RULES.len(), "{l}");
    for (key, expected) in [
        ("lora_rank", "-> rank = 32"),
        (
            "warmup_steps",
            "-> warmup_steps = 100 (100 micro-steps: ceil(100 / grad_accum 1)",
        ),
        (
            "learning_rate",
            "-> learning_rate = 0.0003 (text read as a number)",
        ),
        ("add_eos_token", "-> eos = \"every-block\""),
        ("add_eos_token_type", "no effect: combined into eos"),
        ("lora_RS_alpha", "no effect: lora_RS is off"),
        ("batch_size", "no effect: the legacy batch size"),
        (
            "eval_stepsJSONL",
            "no effect: used only with a JSONL dataset",
        ),
        ("raw_text_file", "no equivalent: the original stored a name"),
        ("lora_name", "no equivalent: the adapter's name"),
        ("optimizer", "-> optimizer = \"adamw_torch\""),
        (
            "report_to",
            "-> report_to = \"\" (the original's None meant every installed integration",
        ),
        ("sliding_window", "-> mode = \"precise\""),
        (
            "save_steps",
            "save_every = 0 (0: off); save_each_epoch = false",
        ),
    ] {
        assert!(line(&l, key).contains(expected), "{key}: {}", line(&l, key));
    }
    r.validate().unwrap();
}

#[test]
fn micro_steps_become_optimizer_steps_with_the_originals_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let path = variant(
        dir.path(),
        &[
            ("grad_accumulation", 4.into()),
            ("warmup_steps", 100.0.into()),
            ("save_steps", 10.0.into()),
            ("eval_steps", 6.into()),
        ],
    );
    let r = resolve(std::slice::from_ref(&path), RunFlags::default()).unwrap();
    let s = &r.settings;
    assert_eq!(s.grad_accum, 4);
    assert_eq!(s.warmup_steps, 25);
    assert_eq!(s.save_every, 3, "ceil(10 / 4)");
    assert!(s.save_each_epoch);
    assert_eq!(s.eval_steps, 2, "ceil(6 / 4)");
    let l = listing(&r);
    assert!(
        line(&l, "save_steps").contains("ceil(10 / grad_accum 4)"),
        "{l}"
    );

    // The run's grad_accum wins: the micro-steps are converted with it.
    let r = resolve(
        &[path],
        RunFlags {
            grad_accum: Some(3),
            ..RunFlags::default()
        },
    )
    .unwrap();
    assert_eq!(
        (
            r.settings.warmup_steps,
            r.settings.save_every,
            r.settings.eval_steps
        ),
        (34, 4, 2)
    );
    let l = listing(&r);
    assert!(
        line(&l, "warmup_steps").contains("ceil(100 / grad_accum 3)"),
        "{l}"
    );
    assert!(
        line(&l, "grad_accumulation").contains("overridden by the command line"),
        "{l}"
    );

    // A JSONL dataset: eval_stepsJSONL is the cadence, eval_steps unused.
    let path = variant(
        dir.path(),
        &[
            ("grad_accumulation", 2.into()),
            ("datasetJSONL", "chat".into()),
            ("eval_steps", 100.into()),
            ("eval_stepsJSONL", 7.into()),
        ],
    );
    let r = resolve(&[path], RunFlags::default()).unwrap();
    assert_eq!(r.settings.eval_steps, 4, "ceil(7 / 2)");
    assert!(line(&listing(&r), "eval_steps").contains("replaced by eval_stepsJSONL"));
}

#[test]
fn legacy_batch_size_sets_grad_accum() {
    let dir = tempfile::tempdir().unwrap();
    let path = variant(
        dir.path(),
        &[
            ("batch_size", 16.into()),
            ("micro_batch_size", 4.into()),
            ("grad_accumulation", 1.into()),
            ("warmup_steps", 10.into()),
        ],
    );
    let r = resolve(&[path], RunFlags::default()).unwrap();
    assert_eq!((r.settings.grad_accum, r.settings.warmup_steps), (4, 3));
    assert!(line(&listing(&r), "grad_accumulation").contains("fix_old_version"));
    let path = variant(dir.path(), &[("batch_size", 2.into())]);
    let err = resolve(&[path], RunFlags::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`batch_size`") && err.contains("set batch_size to 0"),
        "{err}"
    );
}

#[test]
fn rslora_takes_lora_rs_alpha_clamped_or_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = variant(
        dir.path(),
        &[
            ("lora_RS", true.into()),
            ("lora_RS_alpha", 8.into()),
            ("lora_alpha", 128.into()),
        ],
    );
    let r = resolve(&[path], RunFlags::default()).unwrap();
    assert!(r.settings.rslora);
    assert_eq!(r.settings.alpha, 8.0);
    let l = listing(&r);
    assert!(
        line(&l, "lora_alpha").contains("no effect: lora_RS is on"),
        "{l}"
    );
    let path = variant(
        dir.path(),
        &[("lora_RS", true.into()), ("lora_RS_alpha", 0.5.into())],
    );
    assert_eq!(
        resolve(&[path], RunFlags::default())
            .unwrap()
            .settings
            .alpha,
        1.0
    );
    // No lora_RS_alpha in the file: the original's default 16.
    let path = variant(
        dir.path(),
        &[("lora_RS", true.into()), ("lora_RS_alpha", Value::Null)],
    );
    let r = resolve(&[path], RunFlags::default()).unwrap();
    assert_eq!(r.settings.alpha, 16.0);
    assert_eq!(*r.sources.get("alpha"), Source::RsloraDefault);
}

#[test]
fn the_command_line_wins_and_the_listing_says_so() {
    let r = resolve(
        &[fixture()],
        RunFlags {
            rank: Some(8),
            ..RunFlags::default()
        },
    )
    .unwrap();
    assert_eq!(r.settings.rank, 8);
    assert_eq!(*r.sources.get("rank"), Source::CommandLine);
    let l = listing(&r);
    assert!(
        line(&l, "lora_rank").contains("rank = 32, overridden by the command line: rank = 8"),
        "{l}"
    );
}

#[test]
fn a_toml_file_and_the_original_combine_in_the_order_given() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("run.toml");
    std::fs::write(&toml, "rank = 4\nseed = 9\n").unwrap();
    let r = resolve(&[toml.clone(), fixture()], RunFlags::default()).unwrap();
    assert_eq!((r.settings.rank, r.settings.seed), (32, 9));
    let r = resolve(&[fixture(), toml.clone()], RunFlags::default()).unwrap();
    assert_eq!(r.settings.rank, 4);
    assert_eq!(*r.sources.get("rank"), Source::Toml(toml));
}

#[test]
fn bad_files_and_values_are_errors_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("training_parameters.json");
    for (text, wanted) in [
        ("lora_rank = 8", "not JSON"),
        ("[1, 2]", "not a list"),
        ("{\"lora_rank\": \"abc\"}", "key `lora_rank` = \"abc\""),
        ("{\"lora_rank\": 8.5}", "key `lora_rank` = 8.5"),
        ("{\"learning_rate\": \"fast\"}", "`fast` is not a number"),
        (
            "{\"lr_scheduler_type\": \"sometimes\"}",
            "key `lr_scheduler_type`",
        ),
        (
            "{\"training_projection\": \"q-z\"}",
            "key `training_projection`",
        ),
        ("{\"warmup_steps\": -5}", "key `warmup_steps` = -5"),
        ("{\"add_eos_token_type\": \"Always\"}", "\"Every Block\""),
        ("{\"sliding_window\": \"yes\"}", "expected true or false"),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = resolve(std::slice::from_ref(&path), RunFlags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{text}: {err}");
        assert!(err.contains(wanted), "{text}: {err}");
        assert!(!err.contains('\n'), "{err:?}");
    }
    // Out of range: refused by the settings' validation, naming the original key and the file.
    std::fs::write(&path, "{\"lora_dropout\": 1.5, \"lora_rank\": 0}").unwrap();
    let r = resolve(std::slice::from_ref(&path), RunFlags::default()).unwrap();
    let err = r.validate().unwrap_err().to_string();
    assert!(
        err.contains("`dropout` is 1.5")
            && err.contains(&format!("key `lora_dropout` of {}", path.display())),
        "{err}"
    );
    assert!(err.contains("key `lora_rank`"), "{err}");
    // Unknown keys (other versions) and nulls are listed, not refused.
    std::fs::write(
        &path,
        "{\"lora_rank\": 8, \"new_knob\": 3, \"lora_alpha\": null}",
    )
    .unwrap();
    let r = resolve(&[path], RunFlags::default()).unwrap();
    assert_eq!((r.settings.rank, r.settings.alpha), (8, 64.0));
    let l = listing(&r);
    assert!(line(&l, "new_knob").contains("unknown key"), "{l}");
    assert!(line(&l, "lora_alpha").contains("null"), "{l}");
}

#[test]
fn eos_bos_projection_and_report_to_choices() {
    let dir = tempfile::tempdir().unwrap();
    for (changes, eos) in [
        (vec![("add_eos_token", false.into())], "none"),
        (
            vec![("add_eos_token_type", "Hard Cut Blocks Only".into())],
            "hard-cut",
        ),
        (
            vec![
                ("add_eos_token", Value::Null),
                ("add_eos_token_type", "Hard Cut Blocks Only".into()),
            ],
            "hard-cut",
        ),
    ] {
        let path = variant(dir.path(), &changes);
        let r = resolve(&[path], RunFlags::default()).unwrap();
        assert_eq!(r.settings.eos.0.to_string(), eos, "{changes:?}");
    }
    let path = variant(
        dir.path(),
        &[
            ("add_bos_token", false.into()),
            ("training_projection", "k-v-down".into()),
            ("sliding_window", true.into()),
            ("lr_scheduler_type", "FP_low_epoch_annealing".into()),
            ("min_chars", (-3).into()),
            ("report_to", "wandb".into()),
        ],
    );
    let r = resolve(&[path], RunFlags::default()).unwrap();
    let s = &r.settings;
    assert!(!s.bos);
    assert_eq!(s.targets.0.to_string(), "k-v-down");
    assert_eq!(s.mode.0.to_string(), "dementor");
    assert_eq!(s.scheduler.0.to_string(), "FP_low_epoch_annealing");
    assert_eq!(s.min_chars, 0);
    let l = listing(&r);
    assert!(
        line(&l, "report_to").contains("Weights & Biases is not supported"),
        "{l}"
    );
    assert!(line(&l, "min_chars").contains("negative becomes 0"), "{l}");

    // The optimizer and the report go through the settings' own names and checks.
    let path = variant(
        dir.path(),
        &[
            ("optimizer", "adagrad".into()),
            ("report_to", "tensorboard".into()),
        ],
    );
    let r = resolve(&[path], RunFlags::default()).unwrap();
    assert_eq!(r.settings.optimizer, "adagrad");
    assert!(r.settings.report_to().unwrap().tensorboard);
    assert_eq!(r.settings.optimizer().unwrap().0.name(), "adagrad");
    let path = variant(dir.path(), &[("optimizer", "adamw_8bit".into())]);
    let e = resolve(&[path], RunFlags::default())
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("key `optimizer`") && e.contains("use `adamw`"),
        "{e}"
    );
}

//! Instruction and chat datasets through `check`, `train --dry-run`, `--dump-dataset` and a real training run with
//! an eval set; every malformed input exits 2 with one line naming the file and record.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{
    assert_clean_error, cli, model, repo, run_ok, sample_text, tempdir, tiny_train,
};

fn fixture(name: &str) -> PathBuf {
    repo().join("crates/trainer-core/tests/fixtures").join(name)
}

/// `check` on the real model with `extra` flags.
fn check(extra: &[&str]) -> Command {
    let mut c = cli();
    c.arg("check").arg("--model").arg(model()).args(extra);
    c
}

fn alpaca_flags() -> Vec<String> {
    vec![
        "--dataset".into(),
        fixture("alpaca.json").display().to_string(),
        "--format".into(),
        fixture("alpaca-format.json").display().to_string(),
        "--cutoff".into(),
        "64".into(),
    ]
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn str_args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn check_reports_masks_and_dump_marks_them() {
    let d = tempdir("ds-dump");
    let dump = d.join("dump.jsonl");
    let mut flags = alpaca_flags();
    flags.extend(["--train-only-after".into(), "### Response:\\n".into()]);
    let out = run_ok(check(&str_args(&flags)).arg("--dump-dataset").arg(&dump));
    let text = stdout(&out);
    assert!(
        text.contains("records:        3 (3 samples kept)"),
        "{text}"
    );
    assert!(text.contains("(8 learned, the rest masked)"), "{text}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["record"], 1);
    assert_eq!(
        lines[0]["segments"],
        serde_json::json!([
            {"learned": false, "text": "<|im_start|>### Instruction:\nName the capital of France.\n\n### Response:\n"},
            {"learned": true, "text": "Paris.<|im_end|>"}
        ])
    );
}

/// The dump of `chat.jsonl` (or its ShareGPT twin) under SmolLM2's template: the expected texts, replies learned.
fn assert_chat_dump(dump: &Path, what: &str) {
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dump)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{what}");
    for (n, line) in lines.iter().enumerate() {
        let want =
            std::fs::read_to_string(fixture(&format!("chat-expected-{}.txt", n + 1))).unwrap();
        assert_eq!(line["text"], want.as_str(), "{what}");
        let learned: Vec<&str> = line["segments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["learned"] == true)
            .map(|s| s["text"].as_str().unwrap())
            .collect();
        let want_learned: &[&str] = if n == 0 {
            &["Paris.<|im_end|>"]
        } else {
            &["5<|im_end|>", "8<|im_end|>"]
        };
        assert_eq!(learned, want_learned, "{what}");
    }
}

#[test]
fn chat_dataset_uses_the_model_template_or_the_given_one() {
    let d = tempdir("ds-chat");
    for (i, template) in [
        None,
        Some(repo().join("testdata/smollm2-chat_template.jinja")),
    ]
    .into_iter()
    .enumerate()
    {
        let dump = d.join(format!("dump{i}.jsonl"));
        let mut c = check(&["--cutoff", "128"]);
        c.arg("--dataset")
            .arg(fixture("chat.jsonl"))
            .arg("--dump-dataset")
            .arg(&dump);
        if let Some(t) = &template {
            c.arg("--chat-template").arg(t);
        }
        run_ok(&mut c);
        assert_chat_dump(&dump, &format!("template {template:?}"));
    }
}

#[test]
fn sharegpt_dataset_reads_as_its_messages_twin() {
    let d = tempdir("ds-sharegpt");
    let dump = d.join("dump.jsonl");
    let mut c = check(&["--cutoff", "128"]);
    c.arg("--dataset")
        .arg(fixture("chat-sharegpt.jsonl"))
        .arg("--dump-dataset")
        .arg(&dump);
    run_ok(&mut c);
    assert_chat_dump(&dump, "chat-sharegpt.jsonl");
}

#[test]
fn hybrid_takes_seeded_samples_of_both() {
    let mut flags = alpaca_flags();
    flags.extend([
        "--hybrid-text-ratio".into(),
        "10".into(),
        "--hybrid-data-ratio".into(),
        "50".into(),
    ]);
    let out = run_ok(check(&str_args(&flags)).arg("--text").arg(sample_text()));
    let text = stdout(&out);
    // 264 blocks at cutoff 64: floor(264 * 10 / 100) = 26; floor(3 * 50 / 100) = 1.
    assert!(
        text.contains("hybrid:         1 of 3 dataset samples (50%) + 26 of 264 text blocks (10%)"),
        "{text}"
    );
    assert!(text.contains("training:       27 samples"), "{text}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn malformed_datasets_are_clean_errors() {
    let d = tempdir("ds-errors");
    let fmt = fixture("alpaca-format.json");
    let (mixed, alpaca, chat) = (
        fixture("mixed.jsonl"),
        fixture("alpaca.json"),
        fixture("chat.jsonl"),
    );
    let bad_json = write(
        &d,
        "bad.jsonl",
        "{\"instruction\":\"a\",\"output\":\"b\"}\n{\"instruction\":\n",
    );
    let not_object = write(
        &d,
        "arr.json",
        "[{\"instruction\":\"a\",\"output\":\"b\"}, \"text\"]",
    );
    let bad_fmt = write(&d, "fmt.json", "{\"instruction,output\": 3}");
    let bad_tpl = write(&d, "t.jinja", "{% for m in messages %}");
    let no_content = write(&d, "chat.jsonl", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n{\"messages\":[{\"role\":\"user\"}]}\n");
    let bad_role = write(&d, "sharegpt.jsonl", "{\"conversations\":[{\"from\":\"human\",\"value\":\"hi\"}]}\n{\"conversations\":[{\"from\":\"human\",\"value\":\"hi\"},{\"from\":\"narrator\",\"value\":\"then\"}]}\n");
    let cases: Vec<(Vec<&Path>, Vec<&str>, &str)> = vec![
        (vec![&mixed, &fmt], vec![], "record 2 (line 3)"),
        (vec![&bad_json, &fmt], vec![], "bad.jsonl: line 2"),
        (vec![&not_object, &fmt], vec![], "record 2 is a string"),
        (vec![&alpaca, &bad_fmt], vec![], "must be a string"),
        (
            vec![&no_content],
            vec![],
            "record 2 (line 2): message 1 has no `content`",
        ),
        (
            vec![&bad_role],
            vec![],
            "sharegpt.jsonl: record 2 (line 2): turn 2: `from` \"narrator\"",
        ),
        (
            vec![&chat],
            vec!["--train-only-after", "x"],
            "train_only_after",
        ),
        (vec![&chat], vec!["--train-on", "prompts"], "train_on"),
        (
            vec![&chat],
            vec!["--eval-split", "0.5", "--eval-dataset", "e.json"],
            "eval_split",
        ),
        (vec![&chat], vec!["--eval-split", "0.9"], "leaves an empty"),
    ];
    for (files, extra, needle) in cases {
        let mut c = check(&["--cutoff", "64"]);
        c.arg("--dataset").arg(files[0]);
        if let Some(f) = files.get(1) {
            c.arg("--format").arg(f);
        }
        c.args(&extra);
        assert_clean_error(&c.output().unwrap(), needle);
    }
    let mut c = check(&[]);
    c.arg("--dataset")
        .arg(fixture("chat.jsonl"))
        .arg("--chat-template")
        .arg(&bad_tpl);
    assert_clean_error(&c.output().unwrap(), "t.jinja");
    // A record without `messages` and no format names the fix.
    let mut c = check(&[]);
    c.arg("--dataset").arg(fixture("alpaca.json"));
    assert_clean_error(&c.output().unwrap(), "--format");
}

fn train_chat(out: &Path, dataset: &Path, extra: &[&str]) -> Command {
    let mut c = tiny_train(out, "96");
    c.arg("--dataset")
        .arg(dataset)
        .arg("--eval-dataset")
        .arg(fixture("chat.jsonl"))
        .args(extra);
    c
}

#[test]
fn eval_loss_reaches_the_log_keep_best_and_resume_checks_the_data() {
    let d = tempdir("ds-train");
    let out = d.join("run");
    run_ok(&mut train_chat(
        &out,
        &fixture("chat.jsonl"),
        &[
            "--eval-steps",
            "1",
            "--keep-best",
            "1",
            "--epochs",
            "2",
            "--group-by-length",
            "true",
        ],
    ));
    let log: Vec<serde_json::Value> = std::fs::read_to_string(out.join("training_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len(), 2);
    let evals: Vec<f64> = log
        .iter()
        .map(|r| r["eval_loss"].as_f64().unwrap())
        .collect();
    assert!(evals.iter().all(|e| e.is_finite() && *e > 0.0), "{evals:?}");
    // Step 1 runs at learning rate 0 (warmup) from B = 0: the eval set equals the training set, so the eval
    // loss equals the training loss.
    assert!(
        (evals[0] - log[0]["loss"].as_f64().unwrap()).abs() < 1e-4,
        "{log:?}"
    );
    assert!(evals[1] < evals[0], "{evals:?}");
    // keep-best = 1 keeps only the best-eval checkpoint.
    let ckpts: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(
        ckpts,
        [format!("checkpoint-2-best-{:.2}", evals[1])],
        "{ckpts:?}"
    );

    // Resuming on a changed dataset is refused.
    let changed = write(
        &d,
        "changed.jsonl",
        &std::fs::read_to_string(fixture("chat.jsonl"))
            .unwrap()
            .replace("Paris.", "Lyon."),
    );
    let mut c = train_chat(
        &out,
        &changed,
        &["--eval-steps", "1", "--keep-best", "1", "--epochs", "3"],
    );
    c.args(["--resume", "latest"]);
    assert_clean_error(&c.output().unwrap(), "other data");

    // Each checkpoint records the label-mask rule. One saved before it was recorded (rule 1) whose data's labels
    // differ now is refused with a message naming the rule change and what to do...
    let state_file = out.join(&ckpts[0]).join("run_state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(state["label_mask_rule"], 2);
    state.as_object_mut().unwrap().remove("label_mask_rule");
    std::fs::write(&state_file, state.to_string()).unwrap();
    let mut c = train_chat(
        &out,
        &changed,
        &["--eval-steps", "1", "--keep-best", "1", "--epochs", "3"],
    );
    c.args(["--resume", "latest"]);
    let refused = c.output().unwrap();
    assert_clean_error(&refused, "older label-mask rule (rule 1");
    assert_clean_error(&refused, "start a new run on this data");
    // ...while one whose labels are unchanged passes the data check (and here stops: nothing is left to train).
    let mut c = train_chat(
        &out,
        &fixture("chat.jsonl"),
        &[
            "--eval-steps",
            "1",
            "--keep-best",
            "1",
            "--epochs",
            "2",
            "--group-by-length",
            "true",
        ],
    );
    c.args(["--resume", "latest"]);
    assert_clean_error(&c.output().unwrap(), "nothing left to train");
}

#[test]
fn check_learns_the_word_after_a_marker_ending_in_a_space_and_says_so() {
    let d = tempdir("ds-marker");
    let data = write(
        &d,
        "qa.jsonl",
        "{\"instruction\": \"Capital of France?\", \"output\": \"Paris\"}\n",
    );
    let format = write(
        &d,
        "qa-format.json",
        r####"{"instruction,output": "### Q: %instruction%\n### A: %output%"}"####,
    );
    let dump = d.join("dump.jsonl");
    let out = run_ok(
        check(&["--cutoff", "64", "--train-only-after", "### A: "])
            .arg("--dataset")
            .arg(&data)
            .arg("--format")
            .arg(&format)
            .arg("--dump-dataset")
            .arg(&dump),
    );
    let text = stdout(&out);
    assert!(
        text.contains("note:           1 samples: the learned text starts inside a token"),
        "{text}"
    );
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&dump).unwrap().trim()).unwrap();
    assert_eq!(
        line["segments"],
        serde_json::json!([
            {"learned": false, "text": "<|im_start|>### Q: Capital of France?\n### A:"},
            {"learned": true, "text": " Paris<|im_end|>"}
        ])
    );
}

#[test]
fn tools_write_json_lines_that_train() {
    let d = tempdir("ds-tools");
    let alpaca = d.join("alpaca.json");
    std::fs::copy(fixture("alpaca.json"), &alpaca).unwrap();
    run_ok(
        cli()
            .args(["tools", "json-to-jsonl"])
            .arg(&alpaca)
            .args(["--system", ""]),
    );
    let chat = d.join("alpaca.jsonl");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&chat)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[1]["messages"][0]["content"],
        "Add the numbers.\n\n2 and 3"
    );
    // Not replaced without --overwrite.
    let again = cli()
        .args(["tools", "json-to-jsonl"])
        .arg(&alpaca)
        .output()
        .unwrap();
    assert_clean_error(&again, "--overwrite");

    run_ok(
        cli()
            .args(["tools", "split", "--eval-percent", "34"])
            .arg(&chat),
    );
    let count = |p: PathBuf| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!(
        (
            count(d.join("alpaca_train.jsonl")),
            count(d.join("alpaca_eval.jsonl"))
        ),
        (1, 2)
    );

    let txt = write(&d, "poems.txt", "First poem.\n\n\nSecond poem.\n");
    run_ok(cli().args(["tools", "txt-to-jsonl"]).arg(&txt));
    // The converted files train as chat datasets.
    let out = run_ok(
        check(&["--cutoff", "64"])
            .arg("--dataset")
            .arg(d.join("poems.jsonl"))
            .arg("--eval-dataset")
            .arg(&chat),
    );
    let text = stdout(&out);
    assert!(
        text.contains("records:        2 (2 samples kept)"),
        "{text}"
    );
    assert!(text.contains("eval:           3 samples"), "{text}");

    let bad = write(&d, "bad.json", "[{\"instruction\": \"x\"}]");
    let out = cli()
        .args(["tools", "json-to-jsonl"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_clean_error(&out, "record 1 has no string `output`");
}

//! The user guide matches `--help`: every flag a subcommand's `--help` lists is in the guide's section of
//! that subcommand (its usage block or tables; for `train`, the Settings tables too), and every flag there
//! exists.

use std::collections::BTreeSet;

use crate::common::{cli, repo};

/// The `--flags` in `text`.
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at;
        let before_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'-');
        let end = start
            + 2
            + text[start + 2..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
                .unwrap_or(text.len() - start - 2);
        if before_ok && end > start + 2 && b[start + 2].is_ascii_lowercase() {
            out.insert(text[start..end].trim_end_matches('-').to_string());
        }
        i = end.max(start + 2);
    }
    out.retain(|f| f != "--help" && f != "--version");
    out
}

/// The flags `trainer-cli ARGS --help` lists.
fn help_flags(args: &[&str]) -> BTreeSet<String> {
    let out = cli().args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{args:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let options: String = text
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .map(|l| {
            l.split("  ")
                .find(|p| !p.trim().is_empty())
                .unwrap_or("")
                .to_string()
                + "\n"
        })
        .collect();
    flags_in(&options)
}

/// The text from `start` to the next heading of the same or a higher level.
fn section<'a>(guide: &'a str, start: &str) -> &'a str {
    let at = guide
        .find(start)
        .unwrap_or_else(|| panic!("no `{start}` in the guide"));
    let rest = &guide[at + start.len()..];
    let level = start.chars().take_while(|&c| c == '#').count();
    let end = rest
        .match_indices("\n#")
        .find(|(i, _)| rest[i + 1..].chars().take_while(|&c| c == '#').count() <= level)
        .map_or(rest.len(), |(i, _)| i);
    &rest[..end]
}

/// The flags a section documents for subcommand `sub`: its table rows, and in its code blocks the command
/// lines of `sub` with their continuation lines (prose may mention old spellings, and examples other commands).
fn documented(text: &str, sub: &str) -> BTreeSet<String> {
    let mut kept = String::new();
    let (mut in_code, mut continues) = (false, false);
    let command = format!("trainer-cli {sub}");
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        continues = in_code && (line.starts_with(&command) || (continues && line.starts_with(' ')));
        if continues || (!in_code && line.starts_with('|')) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    flags_in(&kept)
}

fn assert_same(what: &str, help: &BTreeSet<String>, guide: &BTreeSet<String>) {
    let missing: Vec<_> = help.difference(guide).collect();
    let stale: Vec<_> = guide.difference(help).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{what}: in --help but not in the guide: {missing:?}; in the guide but not in --help: {stale:?}"
    );
}

#[test]
fn the_user_guide_documents_exactly_the_flags_of_help() {
    let guide = std::fs::read_to_string(repo().join("docs/user-guide.md")).unwrap();
    let mut train = documented(section(&guide, "### `train`"), "train");
    train.extend(documented(section(&guide, "## Settings"), "train"));
    let train_help = help_flags(&["train"]);
    assert!(
        train_help.contains("--max-steps") && train_help.contains("--mode"),
        "{train_help:?}"
    );
    assert_same("train", &train_help, &train);
    assert_same(
        "check (the same flags as train)",
        &help_flags(&["check"]),
        &train_help,
    );
    for sub in [
        "chunk",
        "schedule",
        "plot",
        "eval",
        "generate",
        "convert",
        "merge",
        "control",
        "export-gguf",
        "ui",
    ] {
        let guide_flags = documented(section(&guide, &format!("### `{sub}`")), sub);
        assert_same(sub, &help_flags(&[sub]), &guide_flags);
    }
    let mut tools = help_flags(&["tools"]);
    for t in ["split", "json-to-jsonl", "txt-to-jsonl"] {
        tools.extend(help_flags(&["tools", t]));
    }
    assert_same(
        "tools",
        &tools,
        &documented(section(&guide, "### `tools`"), "tools"),
    );
}

#[test]
fn flags_are_found_in_text() {
    let f = flags_in("| `--cutoff 256` | x--y `--bos true|false` [--no-bos] --");
    assert_eq!(
        f.into_iter().collect::<Vec<_>>(),
        ["--bos", "--cutoff", "--no-bos"]
    );
}

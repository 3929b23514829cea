//! The repository is self-contained: no tracked file reads or points to data outside it, and every file in
//! `testdata/` is described in `testdata/README.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::repo;

/// Paths that only exist beside a development checkout. Built with `concat!` so that this file does not
/// match itself.
const OUTSIDE: [&str; 3] = [
    concat!("..", "/shared"),
    concat!("shared", "/data"),
    concat!("shared", "/docs"),
];

/// Directories that never hold project files (build output, the fetched model, fuzzing state, runs).
const NOT_PROJECT: [&str; 7] = [
    ".git",
    "target",
    "models",
    "runs",
    "fuzz/target",
    "fuzz/corpus",
    "fuzz/artifacts",
];

/// The repository's files, relative to its root: `git ls-files` where this is a git checkout, else every file
/// of the tree outside the directories that never hold project files.
fn project_files() -> Vec<PathBuf> {
    let root = repo();
    if let Ok(out) = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["ls-files", "-z"])
        .output()
    {
        if out.status.success() && !out.stdout.is_empty() {
            return out
                .stdout
                .split(|&b| b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
                .collect();
        }
    }
    let mut files = Vec::new();
    walk(&root, Path::new(""), &mut files);
    files
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let path = rel.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            if !NOT_PROJECT.iter().any(|d| path == Path::new(d)) {
                walk(root, &path, out);
            }
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

#[test]
fn no_file_reads_or_points_outside_the_repository() {
    let root = repo();
    let files = project_files();
    assert!(
        files.iter().any(|f| f == Path::new("README.md")),
        "the repository's files were not found from {}",
        root.display()
    );
    let mut found = Vec::new();
    for file in &files {
        // A tracked file deleted in the working tree has nothing to check.
        let Ok(bytes) = std::fs::read(root.join(file)) else {
            continue;
        };
        for pattern in OUTSIDE {
            let p = pattern.as_bytes();
            for (i, w) in bytes.windows(p.len()).enumerate() {
                if w == p {
                    let line = 1 + bytes[..i].iter().filter(|&&b| b == b'\n').count();
                    found.push(format!("{}:{line}: {pattern}", file.display()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "files that read or point outside the repository (use testdata/, see testdata/README.md):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_test_data_file_is_described_in_its_readme() {
    let readme = std::fs::read_to_string(repo().join("testdata/README.md")).unwrap();
    let data: Vec<PathBuf> = project_files()
        .into_iter()
        .filter(|f| f.starts_with("testdata") && f != Path::new("testdata/README.md"))
        .collect();
    assert!(
        data.iter()
            .any(|f| f.ends_with("peft-reference-qv/reference.safetensors")),
        "testdata/ is incomplete: {data:?}"
    );
    for file in data {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            readme.contains(&format!("`{name}`")),
            "testdata/README.md does not describe {}",
            file.display()
        );
    }
}

//! Helpers shared by the integration tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The output-folder lock file (the binary's `lock::LOCK_FILE`).
pub const LOCK_FILE: &str = ".trainer-cli.lock";

/// The binary under test.
pub fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer-cli"))
}

/// `train` on the real model into `out` at tiny settings (rank 4, alpha 8, batch 2, lr 1e-3, no loss-threshold
/// saves, JSON-lines progress) with the given cutoff; callers add the data and further flags.
pub fn tiny_train(out: &Path, cutoff: &str) -> Command {
    let mut c = cli();
    c.arg("train")
        .arg("--model")
        .arg(model())
        .arg("--output")
        .arg(out)
        .args(["--cutoff", cutoff, "--rank", "4", "--alpha", "8"])
        .args(["--batch-size", "2", "--learning-rate", "1e-3"])
        .args(["--save-under-loss", "0", "--progress", "jsonl"]);
    c
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The bundled sample text.
pub fn sample_text() -> PathBuf {
    repo().join("crates/trainer-cli/data/joseph.txt")
}

/// The real test model: `TRAINER_TEST_MODEL`, else `models/` of the repo.
/// Fails (never skips) when it is missing: `.ci/fetch-model.sh models` fetches it.
/// The first ~3 KB of the sample text (whole lines), written to `dir/small.txt`: a few optimizer steps at
/// cutoff 64.
pub fn small_text(dir: &Path) -> PathBuf {
    let full = fs::read_to_string(sample_text()).unwrap();
    let mut end = 3000;
    while !full.is_char_boundary(end) || !full[..end].ends_with('\n') {
        end += 1;
    }
    let p = dir.join("small.txt");
    fs::write(&p, &full[..end]).unwrap();
    p
}

pub fn model() -> PathBuf {
    if let Some(p) = std::env::var_os("TRAINER_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let p = repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "the real-model tests need SmolLM2-135M-Instruct.Q4_1.gguf: run `.ci/fetch-model.sh models` or set TRAINER_TEST_MODEL"
    );
    p
}

/// A fresh, empty temporary folder for one test, removed when dropped (`tempfile::TempDir`); it derefs to
/// its path.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// Keeps the folder after the test (for a run shared by several tests through a static).
    pub fn keep(self) -> PathBuf {
        self.0.keep()
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

/// A fresh, empty temporary folder for one test (`tag` names it, to find it while the test runs).
pub fn tempdir(tag: &str) -> TempDir {
    TempDir(
        tempfile::Builder::new()
            .prefix(&format!("trainer-cli-it-{tag}-"))
            .tempdir()
            .unwrap(),
    )
}

/// Asserts a run failed the way users should see failures: exit code 2,
/// one `error:` line naming `needle`, and no panic.
pub fn assert_clean_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "want one error line, got: {stderr}");
    assert!(
        errors[0].contains(needle),
        "`{needle}` not in: {}",
        errors[0]
    );
}

/// Runs `c`, asserting it succeeded (showing its stderr otherwise).
pub fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file under `dir`, with its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

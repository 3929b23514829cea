//! The output-folder lock: a `train` into a folder another process writes
//! into is refused, naming the holder, before it loads the model or changes
//! anything; once the holder is gone (released or killed), the folder works
//! again and its leftover lock file counts for nothing.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    assert_clean_error, cli, run_ok, sample_text, small_text, snapshot, tempdir, tiny_train,
    LOCK_FILE,
};

/// Holds the lock of output folder `dir` from this process, as a running
/// `train` does, recording this process as the holder.
fn hold(dir: &Path) -> File {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .unwrap();
    f.try_lock().unwrap();
    f.set_len(0).unwrap();
    writeln!(
        f,
        "{{\"pid\":{},\"started\":\"2026-01-02 03:04:05\"}}",
        std::process::id()
    )
    .unwrap();
    f
}

/// The PID recorded in `dir`'s lock file.
fn recorded_pid(dir: &Path) -> Option<u64> {
    let text = fs::read_to_string(dir.join(LOCK_FILE)).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["pid"].as_u64()
}

/// Runs `c`, returning its output and its PID.
fn run_with_pid(c: &mut Command) -> (Output, u32) {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

/// Asserts `res` was refused because `dir` is in use by `pid`, before the model was loaded.
fn assert_refused(res: &Output, dir: &Path, pid: u32) {
    assert_clean_error(res, &format!("is in use by another trainer-cli (PID {pid}"));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
    assert!(stderr.contains("choose another --output"), "{stderr}");
    assert!(
        !stderr.contains("loaded "),
        "the model was loaded: {stderr}"
    );
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_folder_in_use_is_refused_and_left_byte_identical() {
    let d = tempdir("lock-held");
    let text = small_text(&d);
    let out = d.join("out");
    let train = |extra: &[&str]| {
        let mut c = tiny_train(&out, "64");
        c.arg("--text").arg(&text).args(["--warmup-ratio", "0"]);
        c.args(extra);
        c
    };
    run_ok(&mut train(&["--epochs", "0.2", "--save-every", "1"]));
    // A leftover that a resume cleans up, and that an overwrite deletes: both must wait for the lock.
    fs::create_dir(out.join(".checkpoint-99.tmp-1")).unwrap();
    fs::write(out.join(".checkpoint-99.tmp-1/x"), "half").unwrap();

    let lock = hold(&out);
    let before = snapshot(&out);
    let mut resume = cli();
    resume.arg("train").arg("--output").arg(&out).args([
        "--resume",
        "latest",
        "--progress",
        "jsonl",
    ]);
    for (what, mut c) in [
        ("a new run", train(&["--epochs", "0.2"])),
        ("--overwrite", train(&["--epochs", "0.2", "--overwrite"])),
        ("--resume latest", resume),
    ] {
        let res = c.output().unwrap();
        assert_refused(&res, &out, std::process::id());
        assert!(snapshot(&out) == before, "{what} changed the folder");
    }
    // --dry-run takes no lock: it writes only the LR preview.
    run_ok(&mut train(&["--epochs", "0.2", "--dry-run"]));
    assert!(out.join("lr_preview.png").is_file());

    // Released: the run continues, after cleaning the leftover, and records itself as the holder.
    drop(lock);
    let mut more = cli();
    more.arg("train").arg("--output").arg(&out).args([
        "--resume",
        "latest",
        "--epochs",
        "0.3",
        "--progress",
        "jsonl",
    ]);
    let (res, pid) = run_with_pid(&mut more);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(stderr.contains(".checkpoint-99.tmp-1"), "{stderr}");
    assert!(stderr.contains("finished"), "{stderr}");
    assert_eq!(recorded_pid(&out), Some(u64::from(pid)));
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn a_live_holder_is_named_and_a_killed_one_blocks_nothing() {
    let d = tempdir("lock-live");
    let out = d.join("out");
    let missing_model = d.join("no-model.gguf");
    // The holder blocks reading a FIFO as its text, right after taking the lock.
    let fifo = d.join("text.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let train = |text: &Path| {
        let mut c = cli();
        c.arg("train")
            .arg("--model")
            .arg(&missing_model)
            .arg("--text")
            .arg(text)
            .arg("--output")
            .arg(&out);
        c
    };
    let holder = Holder(
        train(&fifo)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = holder.0.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded_pid(&out) != Some(u64::from(pid)) {
        assert!(Instant::now() < deadline, "the holder never took the lock");
        std::thread::sleep(Duration::from_millis(5));
    }

    let before = snapshot(&out);
    let mut overwrite = train(&sample_text());
    overwrite.arg("--overwrite");
    let mut resume = train(&sample_text());
    resume.args(["--resume", "latest"]);
    for mut c in [train(&sample_text()), overwrite, resume] {
        assert_refused(&c.output().unwrap(), &out, pid);
        assert!(snapshot(&out) == before);
    }

    // Killed (kill -9): the lock goes with the process; the lock file it
    // leaves is neither a lock nor a training run, so a new run (without
    // --overwrite) and a resume go on to their own checks.
    drop(holder);
    assert_clean_error(
        &train(&sample_text()).output().unwrap(),
        "cannot load model",
    );
    let mut resume = train(&sample_text());
    resume.args(["--resume", "latest"]);
    assert_clean_error(
        &resume.output().unwrap(),
        "has no complete checkpoint to resume from",
    );
    let _ = fs::remove_dir_all(&d);
}

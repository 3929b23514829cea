//! `mpirun -n 2 trainer-cli train` (feature `distributed`) as users run it: one job on two processes writes the
//! adapter of one process byte for byte; checkpoints move between process counts; `control stop`, Ctrl-C, a
//! killed and a hung process; processes with different data refused before training.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{cli, run_ok, sample_text, tempdir, tiny_train};

/// The job every test runs: 6 steps of 2 micro-batches (one per process on 2), LoRA dropout on, a checkpoint
/// after every step.
fn job(out: &Path, steps: &str) -> Command {
    let mut c = tiny_train(out, "64");
    c.arg("--text")
        .arg(sample_text())
        .args(["--grad-accum", "2", "--max-steps", steps])
        .args(["--dropout", "0.1", "--save-every", "1"]);
    c
}

/// `--resume latest` of the run in `out`.
fn resume(out: &Path) -> Command {
    let mut c = cli();
    c.arg("train")
        .arg("--output")
        .arg(out)
        .args(["--resume", "latest", "--progress", "jsonl"]);
    c
}

/// `mpirun -n 2` (one thread per process, allowed as root: CI runs in a container) running `args`'s program
/// and arguments, with `mca` options before them.
fn mpirun_2(args: &Command, mca: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-n", "2", "--oversubscribe", "--bind-to", "none"])
        .args(mca)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .arg(args.get_program())
        .args(args.get_args());
    c
}

/// The 6-step job run by one process (shared by the tests).
fn straight() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = tempdir("mpi-straight").keep().join("run");
        run_ok(&mut job(&out, "6"));
        out
    })
}

/// Asserts `out`'s final adapter is the straight run's, byte for byte.
fn assert_straight(out: &Path, what: &str) {
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        let a = fs::read(straight().join(file)).unwrap();
        let b = fs::read(out.join(file)).unwrap();
        assert!(a == b, "{what}: {file} differs from one process's run");
    }
}

/// The highest step logged in `out` so far.
fn logged_step(out: &Path) -> u64 {
    fs::read_to_string(out.join("training_log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| r["step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Waits until `out` has logged step `step` (the run must not end first).
fn wait_for_step(child: &mut Child, out: &Path, step: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while logged_step(out) < step {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before step {step}");
        }
        assert!(Instant::now() < deadline, "step {step} never logged");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` at most `limit`, returning its output and how long it took.
fn finish_within(child: Child, limit: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => (out.unwrap(), t0.elapsed()),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the job did not end within {limit:?}");
        }
    }
}

/// The process id of rank `rank` among `mpirun`'s children (the rank Open MPI gave it in its environment).
fn rank_pid(mpirun: u32, rank: u32) -> u32 {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The parent pid is the 2nd field after the command's closing parenthesis.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let env = fs::read(entry.path().join("environ")).unwrap_or_default();
            if parent == Some(mpirun) && env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no process of rank {rank} under mpirun {mpirun}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

#[test]
fn two_ranks_write_the_adapter_of_one_process() {
    let tmp = tempdir("mpi");
    let two = tmp.join("two");
    let out = run_ok(&mut mpirun_2(&job(&two, "6"), &[]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("finished after 6 of 6 steps").count(),
        1,
        "process 0 alone reports the run:\n{stderr}"
    );
    assert_eq!(
        stderr.matches("loaded ").count(),
        1,
        "the other process loads the model quietly:\n{stderr}"
    );
    assert!(
        stderr.contains("process 1 of 2: followed process 0 to step 6 of 6 (finished)"),
        "{stderr}"
    );
    for rank in 0..2 {
        assert!(
            stderr.contains(&format!("process {rank} of 2: "))
                && stderr.contains("collectives, sent"),
            "process {rank}'s traffic line:\n{stderr}"
        );
    }
    assert_straight(&two, "2 processes");
    // Every checkpoint too, and every logged loss and gradient norm.
    for step in 1..=5 {
        let name = format!("checkpoint-{step}/adapter_model.safetensors");
        assert!(
            fs::read(straight().join(&name)).unwrap() == fs::read(two.join(&name)).unwrap(),
            "{name} differs"
        );
    }
    let log = |dir: &Path| {
        fs::read_to_string(dir.join("training_log.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|r| (r["step"].clone(), r["loss"].clone(), r["grad_norm"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(log(straight()), log(&two), "the logged losses differ");
}

#[test]
fn a_killed_process_ends_the_job_naming_it_and_one_process_resumes_exactly() {
    let tmp = tempdir("mpi-kill");
    let out = tmp.join("run");
    let mut child = spawn(mpirun_2(&job(&out, "6"), &[]));
    wait_for_step(&mut child, &out, 2);
    let (rank0, rank1) = (rank_pid(child.id(), 0), rank_pid(child.id(), 1));
    signal(rank1, "-KILL");
    let (ended, took) = finish_within(child, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(!ended.status.success(), "{stderr}");
    assert!(
        stderr.contains("rank 1"),
        "the error names the process:\n{stderr}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    // mpirun may return before process 0 is gone (measured: 1.5 s after it); it still holds the folder's lock.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{rank0}")).exists() {
        assert!(
            Instant::now() < deadline,
            "process 0 outlived mpirun by a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // 2 processes -> 1: the last checkpoint continues to the straight run's adapter.
    run_ok(&mut resume(&out));
    assert_straight(&out, "killed on 2 processes, resumed on 1");
}

#[test]
fn a_checkpoint_of_one_process_resumes_on_two() {
    let tmp = tempdir("mpi-grow");
    let out = tmp.join("run");
    let mut child = spawn(job(&out, "6"));
    wait_for_step(&mut child, &out, 2);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let resumed = run_ok(&mut mpirun_2(&resume(&out), &[]));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("resuming from"), "{stderr}");
    assert!(
        stderr.contains("process 1 of 2: followed process 0 to step 6 of 6 (finished)"),
        "{stderr}"
    );
    assert_straight(&out, "killed on 1 process, resumed on 2");
}

#[test]
fn control_stop_stops_both_processes_at_the_same_step() {
    let tmp = tempdir("mpi-stop");
    let out = tmp.join("run");
    let mut child = spawn(mpirun_2(&job(&out, "40"), &[]));
    wait_for_step(&mut child, &out, 2);
    run_ok(cli().arg("control").arg(&out).arg("stop"));
    let (ended, _) = finish_within(child, Duration::from_secs(300));
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(ended.status.success(), "{stderr}");
    let step = logged_step(&out);
    assert!((2..40).contains(&step), "stopped at {step}");
    assert!(
        stderr.contains(&format!("stopped on request after {step} of 40 steps")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "process 1 of 2: followed process 0 to step {step} of 40 (stopped on request)"
        )),
        "{stderr}"
    );
}

#[test]
fn ctrl_c_to_mpirun_saves_a_checkpoint_that_resumes() {
    let tmp = tempdir("mpi-int");
    let out = tmp.join("run");
    // Open MPI does not pass SIGINT on: it sends SIGTERM to the processes after odls_base_sigkill_timeout
    // seconds and SIGKILL after as long again, the time they have to finish the step and save.
    let mca = ["--mca", "odls_base_sigkill_timeout", "4"];
    let mut child = spawn(mpirun_2(&job(&out, "30"), &mca));
    wait_for_step(&mut child, &out, 2);
    signal(child.id(), "-INT");
    let (ended, _) = finish_within(child, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(!ended.status.success(), "{stderr}");
    assert!(stderr.contains("--resume latest"), "{stderr}");
    let step = logged_step(&out);
    assert!((2..30).contains(&step), "interrupted at {step}:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "process 1 of 2: followed process 0 to step {step} of 30 (interrupted)"
        )),
        "{stderr}"
    );
    let resumed = run_ok(&mut mpirun_2(&resume(&out), &[]));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        stderr.contains(&format!("at step {step}")) && stderr.contains("finished after 30 of 30"),
        "{stderr}"
    );
}

#[test]
fn a_hung_process_stops_the_job_after_the_timeout_and_the_checkpoint_resumes() {
    let tmp = tempdir("mpi-hang");
    let out = tmp.join("run");
    let mut c = job(&out, "6");
    c.args(["--collective-timeout", "5"]);
    let mut child = spawn(mpirun_2(&c, &[]));
    wait_for_step(&mut child, &out, 2);
    let rank1 = rank_pid(child.id(), 1);
    signal(rank1, "-STOP");
    let (ended, took) = finish_within(child, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(!ended.status.success(), "{stderr}");
    assert!(
        stderr.contains("error: process 0: no answer from the other processes for 5 s"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    run_ok(&mut resume(&out));
    assert_straight(&out, "hung on 2 processes, resumed on 1");
}

#[test]
fn processes_with_different_data_are_refused_before_training() {
    let tmp = tempdir("mpi-mismatch");
    // The same relative path names another file in each process's folder, as on two machines.
    for (dir, bytes) in [("a", 40_000), ("b", 3_000)] {
        let text = fs::read_to_string(sample_text()).unwrap();
        let mut end = bytes.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        fs::create_dir_all(tmp.join(dir)).unwrap();
        fs::write(tmp.join(dir).join("data.txt"), &text[..end]).unwrap();
    }
    let out = tmp.join("run");
    let mut one = tiny_train(&out, "64");
    one.args([
        "--text",
        "data.txt",
        "--grad-accum",
        "2",
        "--max-steps",
        "4",
    ]);
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--bind-to", "none"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    for (i, dir) in ["a", "b"].iter().enumerate() {
        if i > 0 {
            c.arg(":");
        }
        c.args(["-n", "1", "-wdir"])
            .arg(tmp.join(dir))
            .arg(one.get_program())
            .args(one.get_args());
    }
    let (ended, _) = finish_within(spawn(c), Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert_eq!(ended.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("process 1 (settings, data fingerprint) differ(s) from process 0"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(logged_step(&out), 0, "nothing trained");
    assert!(!out.join("adapter_model.safetensors").exists());
}

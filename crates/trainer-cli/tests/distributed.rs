//! `mpirun -n 2 trainer-cli train` (feature `distributed`): one job on two processes writes the same adapter,
//! byte for byte, as one process, and only rank 0 writes or prints the run's results.

use std::fs;
use std::process::Command;

use crate::common::{run_ok, sample_text, tempdir, tiny_train};

/// `mpirun -n 2` running the binary under test with `args`; allowed as root (CI runs in a container).
fn mpirun_2(args: &Command) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-n", "2", "--oversubscribe", "--bind-to", "none"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .arg(env!("CARGO_BIN_EXE_trainer-cli"))
        .args(args.get_args());
    c
}

#[test]
fn two_ranks_write_the_adapter_of_one_process() {
    let tmp = tempdir("mpi");
    let job = |out: &std::path::Path| {
        let mut c = tiny_train(out, "64");
        c.arg("--text")
            .arg(sample_text())
            .args(["--grad-accum", "2", "--max-steps", "2"])
            .args(["--dropout", "0.1"]);
        c
    };
    let one = tmp.join("one");
    let two = tmp.join("two");
    run_ok(&mut job(&one));
    let out = run_ok(&mut mpirun_2(&job(&two)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("finished after 2 of 2 steps").count(),
        1,
        "rank 0 alone reports the run:\n{stderr}"
    );
    assert_eq!(
        stderr.matches("loaded ").count(),
        1,
        "the other rank loads the model quietly:\n{stderr}"
    );
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        let a = fs::read(one.join(file)).unwrap();
        let b = fs::read(two.join(file)).unwrap();
        assert!(a == b, "{file} differs between 1 and 2 processes");
    }
    let log = |dir: &std::path::Path| {
        fs::read_to_string(dir.join("training_log.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"step\":2"))
            .map(|l| l.split("\"tokens_per_s\"").next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(log(&one), log(&two), "step 2's loss and grad norm differ");
}

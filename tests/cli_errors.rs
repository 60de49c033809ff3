//! The CLI on its own: the embedded mini cluster, and clear errors for bad job files, bad
//! configuration and unreachable JobManagers.

mod common;

use common::*;

fn run(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = weir(dir, &args);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn run_without_a_jobmanager_uses_the_embedded_mini_cluster() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        "name: gen\npipeline:\n  - source: datagen\n    number-of-rows: 100000\n    fields:\n      - {name: k, kind: random, min: 0, max: 999}\n  - key_by: k\n  - count: {}\n  - sink: blackhole\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = run(dir.path(), &["run", "job.yaml", "-p", "2", "--output", "json"]);
    assert!(ok, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["state"], "FINISHED");
    assert_eq!(status["vertices"][0]["records_out"], 100_000);
    assert_eq!(status["vertices"][1]["records_in"], 100_000);
}

/// The TaskManager's network memory bounds what its channels may hold: a job that needs more
/// fails at deployment with an error that says how much it needs and which key to raise, and
/// runs once the key is raised.
#[test]
fn a_job_that_needs_more_network_memory_than_the_taskmanager_has_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        "name: gen\npipeline:\n  - source: datagen\n    number-of-rows: 1000\n    fields:\n      - {name: k, kind: random, min: 0, max: 99}\n  - key_by: k\n  - count: {}\n  - sink: blackhole\n",
    )
    .unwrap();
    // 4 count subtasks × 4 input channels × 4 buffers + 16 output channels = 80 buffers of 64 KiB.
    let args = ["run", "job.yaml", "-p", "4", "-D", "restart-strategy.type=none"];
    let (ok, _, stderr) = run(dir.path(), &[&args[..], &["-D", "taskmanager.memory.network.max=1mb"]].concat());
    assert!(!ok, "the job ran with too little network memory");
    assert!(
        stderr.contains("not enough network memory: the tasks need 5 MiB")
            && stderr.contains("16 input channels × 4 buffers")
            && stderr.contains("raise taskmanager.memory.network.max"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(dir.path(), &[&args[..], &["-D", "taskmanager.memory.network.max=6mb"]].concat());
    assert!(ok, "{stderr}");
}

#[test]
fn print_sink_prefixes_rows_with_the_subtask_like_flink() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "hello world\nweir flows\n").unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        "name: up\npipeline:\n  - source: file\n    path: in.txt\n    parallelism: 1\n  - upper: {}\n    parallelism: 2\n  - sink: print\n    parallelism: 2\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = run(dir.path(), &["run", "job.yaml"]);
    assert!(ok, "{stderr}");
    let mut lines: Vec<&str> = stdout.lines().map(|l| l.split_once("> ").map(|(_, v)| v).unwrap_or(l)).collect();
    lines.sort();
    assert_eq!(lines, vec!["HELLO WORLD", "WEIR FLOWS"], "{stdout}");
    assert!(stdout.lines().all(|l| l.starts_with("1> ") || l.starts_with("2> ")), "{stdout}");
}

#[test]
fn malformed_job_files_give_errors_naming_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("bad-yaml.yaml", "name: [unclosed\n", "not a valid job file"),
        (
            "unknown-op.yaml",
            "pipeline:\n  - source: datagen\n    fields: [{name: a, kind: sequence}]\n  - frobnicate: {}\n  - sink: print\n",
            "step 2 (frobnicate): unknown operator",
        ),
        ("unknown-source.yaml", "pipeline:\n  - source: kafka\n  - sink: print\n", "step 1 (kafka): unknown source"),
        (
            "bad-column.yaml",
            "pipeline:\n  - source: file\n    path: x\n  - key_by: word\n  - count: {}\n  - sink: print\n",
            "no column 'word'",
        ),
        ("bad-config.yaml", "config:\n  execution.checkpointing.interval: often\npipeline: []\n", "execution.checkpointing.interval"),
    ];
    for (file, text, expected) in cases {
        std::fs::write(dir.path().join(file), text).unwrap();
        let (ok, _, stderr) = run(dir.path(), &["run", file]);
        assert!(!ok, "{file} must be rejected");
        assert!(stderr.contains(file) && stderr.contains(expected), "{file}: expected {expected:?} in {stderr:?}");
    }
    let (ok, _, stderr) = run(dir.path(), &["run", "missing.yaml"]);
    assert!(!ok && stderr.contains("cannot read job file missing.yaml"), "{stderr}");
}

#[test]
fn unknown_configuration_keys_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.yaml"), "pipeline:\n  - source: file\n    path: x\n  - sink: print\n").unwrap();
    let (ok, _, stderr) = run(dir.path(), &["run", "job.yaml", "-D", "parallelism.defualt=2"]);
    assert!(!ok && stderr.contains("unknown configuration key 'parallelism.defualt'"), "{stderr}");
    std::fs::write(dir.path().join("config.yaml"), "taskmanager.numberOfTaskSlots: lots\n").unwrap();
    let (ok, _, stderr) = run(dir.path(), &["--config", "config.yaml", "run", "job.yaml"]);
    assert!(!ok && stderr.contains("taskmanager.numberOfTaskSlots") && stderr.contains("config.yaml"), "{stderr}");
    // Keys valid one by one, refused together, naming the key.
    let args =
        ["run", "job.yaml", "-D", "execution.checkpointing.unaligned.enabled=true", "-D", "execution.checkpointing.mode=AT_LEAST_ONCE"];
    let (ok, _, stderr) = run(dir.path(), &args);
    assert!(!ok && stderr.contains("execution.checkpointing.unaligned.enabled") && stderr.contains("EXACTLY_ONCE"), "{stderr}");
}

#[test]
fn an_unreachable_jobmanager_is_an_error_not_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        "pipeline:\n  - source: datagen\n    number-of-rows: 10\n    fields: [{name: a, kind: sequence}]\n  - sink: blackhole\n",
    )
    .unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    for args in [
        vec!["run", "job.yaml", "--jobmanager", &address],
        vec!["list", "--jobmanager", &address],
        vec!["status", "0123", "--jobmanager", &address],
        vec!["cancel", "0123", "--jobmanager", &address],
        vec!["savepoint", "0123", "/tmp/sp", "--jobmanager", &address],
        vec!["stop", "0123", "--jobmanager", &address],
        vec!["savepoints", "dispose", "/tmp/sp/savepoint-0123-0", "--jobmanager", &address],
    ] {
        let (ok, _, stderr) = run(dir.path(), &args);
        assert!(!ok, "{args:?} must fail");
        assert!(stderr.contains(&format!("cannot reach the JobManager at {address}")), "{args:?}: {stderr}");
    }
    // The configured address is used the same way.
    let (ok, _, stderr) = run(
        dir.path(),
        &["list", "-D", "jobmanager.rpc.address=127.0.0.1", "-D", &format!("jobmanager.rpc.port={}", address.rsplit(':').next().unwrap())],
    );
    assert!(!ok && stderr.contains("cannot reach the JobManager"), "{stderr}");
    let (ok, _, stderr) = run(dir.path(), &["list"]);
    assert!(!ok && stderr.contains("no JobManager configured"), "{stderr}");
}

/// `weir … | head` must not panic when the reader goes away before the output is written: the
/// process ends quietly, as Unix tools do on a closed pipe.
#[test]
fn a_closed_stdout_pipe_ends_the_cli_quietly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        "name: gen\npipeline:\n  - source: datagen\n    number-of-rows: 1000\n    fields:\n      - {name: k, kind: sequence, start: 0}\n  - sink: blackhole\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(WEIR)
        .current_dir(dir.path())
        .args(["run", "job.yaml", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the job ends and its status is printed.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

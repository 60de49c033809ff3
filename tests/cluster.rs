//! End-to-end tests of a real cluster: a `weir jobmanager` and `weir taskmanager` processes
//! on loopback, jobs submitted with the real CLI, TaskManagers killed with SIGKILL.

mod common;

use common::*;

fn read_committed_lines(dir: &std::path::Path) -> Vec<String> {
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.starts_with('.') && !name.starts_with('_'), "uncommitted file {name} left after the job finished");
    }
    committed_lines(dir)
}

#[test]
fn wordcount_at_parallelism_4_across_two_taskmanagers_gives_exact_counts() {
    wordcount_across_two_taskmanagers("hashmap");
}

#[test]
fn wordcount_with_rocksdb_state_gives_the_same_exact_counts() {
    wordcount_across_two_taskmanagers("rocksdb");
}

fn wordcount_across_two_taskmanagers(backend: &str) {
    let cluster = Cluster::start(2, 2, &[]);
    let text = generate_text(20_000, 7);
    cluster.write("input.txt", &text);
    let out_dir = cluster.dir.path().join("out");
    let job = cluster.write(
        "wordcount.yaml",
        &format!(
            "name: wordcount\npipeline:\n  - source: file\n    path: {}\n  - split: {{}}\n  - key_by: word\n  - count: {{}}\n  - sink: file\n    path: {}\n",
            cluster.dir.path().join("input.txt").display(),
            out_dir.display()
        ),
    );
    // Attached run: waits for the job and exits 0 when it finished.
    let backend_key = format!("state.backend.type={backend}");
    let out = cluster.weir(&["run", job.to_str().unwrap(), "-p", "4", "--output", "json", "-D", &backend_key]);
    assert!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "FINISHED");
    assert_eq!(status["vertices"][1]["parallelism"], 4);

    let files = std::fs::read_dir(&out_dir).unwrap().count();
    assert_eq!(files, 4, "one part file per sink subtask");
    assert_eq!(read_committed_lines(&out_dir), expected_wordcount_lines(&text));

    // Both TaskManagers ran subtasks: each offered 2 slots and the job needed 4.
    let list = cluster.weir(&["list", "--output", "json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    assert_eq!(jobs[0]["id"], status["id"]);
    assert_eq!(jobs[0]["name"], "wordcount");
}

const ENDLESS: &str = "name: endless\npipeline:\n  - source: datagen\n    rows-per-second: 2000\n    fields:\n      - {name: k, kind: random, min: 0, max: 99}\n  - key_by: k\n  - count: {}\n  - sink: blackhole\n";

#[test]
fn a_taskmanager_started_later_adds_its_slots_to_the_cluster() {
    let mut cluster = Cluster::start(2, 2, &[]);
    let job = cluster.write("endless.yaml", ENDLESS);
    let first = cluster.submit(&job, &["-p", "4"]);
    cluster.wait_for_state(&first, "RUNNING");

    // No free slot is left: a second job waits.
    let second = cluster.submit(&job, &["-p", "2"]);
    assert_eq!(cluster.job_status(&second)["state"], "CREATED");

    cluster.add_taskmanager();
    let tms = cluster.wait_for_taskmanagers(3);
    let slots: u64 = tms.iter().map(|t| t["slots"].as_u64().unwrap()).sum();
    assert_eq!(slots, 6);
    cluster.wait_for_state(&second, "RUNNING");

    for id in [&first, &second] {
        let out = cluster.weir(&["cancel", id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        cluster.wait_for_state(id, "CANCELED");
    }
    let tms = cluster.wait_for_taskmanagers(3);
    let free: u64 = tms.iter().map(|t| t["free_slots"].as_u64().unwrap()).sum();
    assert_eq!(free, 6, "canceled jobs give their slots back");
}

#[test]
fn killing_a_taskmanager_fails_its_job_naming_the_lost_taskmanager() {
    let mut cluster = Cluster::start(2, 2, &[]);
    let job = cluster.write("endless.yaml", ENDLESS);
    let id = cluster.submit(&job, &["-p", "4"]);
    cluster.wait_for_state(&id, "RUNNING");
    let tms = cluster.wait_for_taskmanagers(2);

    cluster.tms[1].kill(); // SIGKILL
    let status = wait_for("the job to fail", || {
        let s = cluster.job_status(&id);
        (s["state"] == "FAILED").then_some(s)
    });
    let failure = status["failure"].as_str().unwrap();
    assert!(failure.contains("TaskManager") && failure.contains("lost"), "{failure}");
    let lost = tms.iter().map(|t| t["id"].as_str().unwrap()).find(|tm| failure.contains(tm));
    assert!(lost.is_some(), "the failure names the lost TaskManager: {failure}");
    // The survivor stays registered, the dead one is removed.
    cluster.wait_for_taskmanagers(1);
}

/// `docker-compose stop` and Kubernetes send SIGTERM: the TaskManager deregisters, so the
/// JobManager drops it and fails over its job at once, not after `heartbeat.timeout` (an hour
/// here, so nothing but the deregistration can explain it), and the process exits cleanly.
#[test]
fn a_taskmanager_stopped_with_sigterm_deregisters_at_once() {
    let mut cluster = Cluster::start(2, 2, &["heartbeat.timeout=1h"]);
    let job = cluster.write("endless.yaml", ENDLESS);
    let id = cluster.submit(&job, &["-p", "4"]);
    cluster.wait_for_state(&id, "RUNNING");
    cluster.wait_for_taskmanagers(2);

    let pid = cluster.tms[1].child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = wait_for("the TaskManager to exit", || cluster.tms[1].child.try_wait().unwrap());
    assert!(exit.success(), "the TaskManager exited with {exit}");
    cluster.wait_for_taskmanagers(1);
    let status = wait_for("the job to fail over", || {
        let s = cluster.job_status(&id);
        (s["state"] == "FAILED").then_some(s)
    });
    let failure = status["failure"].as_str().unwrap();
    assert!(failure.contains("deregistered") && failure.contains("SIGTERM"), "{failure}");
}

#[test]
fn a_job_without_enough_slots_fails_after_the_slot_request_timeout() {
    let cluster = Cluster::start(1, 1, &["slot.request.timeout=1s"]);
    let job = cluster.write("endless.yaml", ENDLESS);
    let out = cluster.weir(&["run", job.to_str().unwrap(), "-p", "3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not get 3 slots") && err.contains("slot.request.timeout"), "{err}");
}

#[test]
fn a_new_job_starts_from_a_retained_checkpoint_and_bad_paths_are_named() {
    let chk = tempfile::tempdir().unwrap();
    let dir = format!("execution.checkpointing.dir=file://{}", chk.path().display());
    let cluster = Cluster::start(1, 4, &["execution.checkpointing.interval=200ms", &dir, "execution.checkpointing.num-retained=2"]);
    let job = cluster.write("endless.yaml", ENDLESS);
    let first = cluster.submit(&job, &["-p", "2"]);
    cluster.wait_for_state(&first, "RUNNING");
    let checkpoint = wait_for("a completed checkpoint", || {
        let out = cluster.weir(&["checkpoints", &first, "--output", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?.iter().find(|c| c["status"] == "COMPLETED").map(|c| c["id"].as_u64().unwrap())
    });
    let out = cluster.weir(&["cancel", &first]);
    assert!(out.status.success());
    cluster.wait_for_state(&first, "CANCELED");

    let path = chk.path().join(&first).join(format!("chk-{checkpoint}"));
    let second = cluster.submit(&job, &["-p", "2", "-s", path.to_str().unwrap()]);
    cluster.wait_for_state(&second, "RUNNING");

    // A checkpoint that does not exist, and one whose _metadata is damaged, are named.
    let missing = chk.path().join(&first).join("chk-999999");
    let out = cluster.weir(&["run", job.to_str().unwrap(), "--detached", "-s", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chk-999999"), "{err}");
    let meta = path.join("_metadata");
    let mut bytes = std::fs::read(&meta).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&meta, &bytes).unwrap();
    let out = cluster.weir(&["run", job.to_str().unwrap(), "--detached", "-s", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("_metadata") && err.contains("corrupted"), "{err}");
    cluster.weir(&["cancel", &second]);
}

#[test]
fn cancel_ends_a_job_in_every_state_and_its_exit_code_says_so() {
    let cluster = Cluster::start(1, 1, &[]);
    let cancel = |id: &str| {
        let out = cluster.weir(&["cancel", id, "--timeout", "2min"]);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let endless = cluster.write("endless.yaml", ENDLESS);
    let running = cluster.submit(&endless, &[]);
    cluster.wait_for_state(&running, "RUNNING");

    // Waiting for a slot (CREATED): ends at once, the running job is untouched.
    let waiting = cluster.submit(&endless, &[]);
    assert_eq!(cluster.job_status(&waiting)["state"], "CREATED");
    let (code, out) = cancel(&waiting);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("Job {waiting} canceled.")), "{out}");
    assert_eq!(cluster.job_status(&waiting)["state"], "CANCELED");
    assert_eq!(cluster.job_status(&running)["state"], "RUNNING");

    // RUNNING: the command returns once its tasks stopped.
    let (code, out) = cancel(&running);
    assert_eq!((code, cluster.job_status(&running)["state"].as_str()), (Some(0), Some("CANCELED")), "{out}");

    // RESTARTING: a source that cannot connect, and an hour between restarts.
    let port = free_port();
    let failing = cluster.write(
        "failing.yaml",
        &format!(
            "name: failing\nconfig:\n  restart-strategy.type: fixed-delay\n  restart-strategy.fixed-delay.delay: 1h\n\
             pipeline:\n  - source: socket\n    host: 127.0.0.1\n    port: {port}\n  - sink: blackhole\n"
        ),
    );
    let restarting = cluster.submit(&failing, &[]);
    cluster.wait_for_state(&restarting, "RESTARTING");
    let (code, out) = cancel(&restarting);
    assert_eq!((code, cluster.job_status(&restarting)["state"].as_str()), (Some(0), Some("CANCELED")), "{out}");

    // A job that already FINISHED is not canceled: exit code 1, and the state is named.
    let bounded = cluster.write(
        "bounded.yaml",
        "name: bounded\npipeline:\n  - source: datagen\n    number-of-rows: 10\n    fields:\n      - {name: k, kind: sequence, start: 1, end: 10}\n  - sink: blackhole\n",
    );
    let out = cluster.weir(&["run", bounded.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let finished = cluster.weir(&["list", "--output", "json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&finished.stdout).unwrap();
    let finished = jobs.as_array().unwrap().iter().find(|j| j["name"] == "bounded").unwrap()["id"].as_str().unwrap().to_string();
    let (code, out) = cancel(&finished);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FINISHED"), "{out}");
    let out = cluster.weir(&["cancel", &finished, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["state"].as_str(), v["canceled"].as_bool()), (Some("FINISHED"), Some(false)));
}

/// A job of 240 000 `upper` steps (~3 MiB), as in the issue that found it: it compiles off the
/// JobManager's async runtime in linear time and is refused because its deployment would not
/// fit in a message; a running job and the TaskManagers are not disturbed. A job over
/// `jobmanager.job.max-size` is refused naming the key.
#[test]
fn an_oversized_job_is_refused_and_does_not_stall_the_cluster() {
    let cluster = Cluster::start(1, 2, &["jobmanager.job.max-size=8mb"]);
    let endless = cluster.write("endless.yaml", ENDLESS);
    let running = cluster.submit(&endless, &[]);
    cluster.wait_for_state(&running, "RUNNING");

    let mut huge = String::from("name: huge\npipeline:\n  - source: datagen\n    fields:\n      - {name: w, kind: random, length: 4}\n");
    for _ in 0..240_000 {
        huge.push_str("  - upper: {}\n");
    }
    huge.push_str("  - sink: blackhole\n");
    let huge_path = cluster.write("huge.yaml", &huge);
    let out = cluster.weir(&["run", huge_path.to_str().unwrap(), "--detached"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("deployment") && err.contains("split it"), "{err}");

    // The TaskManager stayed registered and the running job kept running.
    cluster.wait_for_taskmanagers(1);
    assert_eq!(cluster.job_status(&running)["state"], "RUNNING");
    assert_eq!(cluster.job_status(&running)["restarts"], 0);

    let small_limit = Cluster::start(0, 1, &["jobmanager.job.max-size=1kb"]);
    let mut big = String::from("name: big\npipeline:\n  - source: datagen\n    fields:\n      - {name: w, kind: random, length: 4}\n");
    big.push_str(&"  - upper: {}\n".repeat(100));
    big.push_str("  - sink: blackhole\n");
    let path = small_limit.write("big.yaml", &big);
    let out = small_limit.weir(&["run", path.to_str().unwrap(), "--detached"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("jobmanager.job.max-size") && err.contains("bytes"), "{err}");
}

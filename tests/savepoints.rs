//! End-to-end tests of the savepoint lifecycle users drive from the CLI (issue 9): `weir
//! savepoint`, `weir stop [--drain]`, `weir run -s` at another parallelism or with a changed
//! job, `weir checkpoints` marking savepoints, `weir savepoints dispose`, on real JobManager
//! and TaskManager processes.
//!
//! The jobs count keyed rows into the transactional file sink: a throttled `datagen` source
//! with ONE subtask (so rows leave it in row order) → `key_by` → `count` → `file`. Each row
//! yields one committed line `key,count`, so the committed output of the first `m` rows is known
//! exactly: for each key, the lines `key,1` .. `key,c` where `c` is how often the key occurs
//! among those rows. A savepoint taken at any moment cuts the row sequence at some `m`, which
//! is why committed output can be checked against "exactly the first m rows" without knowing
//! `m` beforehand. (The source stays at parallelism 1 across rescales: `datagen` positions do
//! not redistribute; the keyed `count` and the sink's operator state do.)

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use weir_core::graph::OperatorSpec;
use weir_core::operator::{SourcePoll, SubtaskInfo};

/// The counting job: `rows` rows (unbounded if None) at `rate` rows/s into the file sink at
/// `out`. With `count` false the job has no `key_by`/`count` (a stateful step removed); with
/// `uids` false no step sets a `uid`.
fn job_yaml(out: &Path, rows: Option<u64>, rate: u64, count: bool, uids: bool) -> String {
    let uid = |u: &str| if uids { format!("    uid: {u}\n") } else { String::new() };
    let rows = rows.map(|n| format!("    number-of-rows: {n}\n")).unwrap_or_default();
    let counting = if count { format!("  - key_by: key\n  - count: {{}}\n{}", uid("counter")) } else { String::new() };
    format!(
        "name: counting\npipeline:\n  - source: datagen\n{}    parallelism: 1\n    rows-per-second: {rate}\n{rows}    seed: 5\n    fields:\n      - {{name: id, kind: sequence, start: 0}}\n      - {{name: key, kind: random, min: 0, max: 49}}\n{counting}  - sink: file\n{}    path: {}\n",
        uid("numbers"),
        uid("committer"),
        out.display()
    )
}

/// The lines the counting job commits for each of its first `limit` rows, in row order.
fn lines_in_row_order(yaml: &str, limit: u64) -> Vec<String> {
    let (graph, _) = weir_core::job::compile_job(yaml, "job", &Default::default(), &Default::default()).unwrap();
    let op = &graph.vertices[0].operators[0];
    let OperatorSpec::DatagenSource(spec) = &op.spec else { panic!("datagen expected") };
    let mut spec = spec.clone();
    spec.rows_per_second = None;
    spec.number_of_rows = Some(spec.number_of_rows.map_or(limit, |n| n.min(limit)));
    let info =
        SubtaskInfo { job_id: "x".into(), attempt: 0, vertex: 0, vertex_name: "d".into(), index: 0, parallelism: 1, max_parallelism: 128 };
    let mut reader = weir_connectors::datagen_reader(&spec, &info, op.output_schema.clone());
    let mut counts: HashMap<i64, u64> = HashMap::new();
    let mut lines = Vec::new();
    loop {
        match reader.poll_next().unwrap() {
            SourcePoll::Batch(b) => {
                let keys = b.column(1).as_any().downcast_ref::<arrow_array::Int64Array>().unwrap();
                for key in keys.values() {
                    let c = counts.entry(*key).or_default();
                    *c += 1;
                    lines.push(format!("{key},{c}"));
                }
            }
            SourcePoll::Idle(_) => {}
            SourcePoll::End => break,
        }
    }
    lines
}

/// Asserts that the committed output is exactly that of the first `m` rows, for the `m` its
/// length says (one line per row), and returns `m`.
fn assert_exact_prefix(committed: &[String], in_row_order: &[String], when: &str) -> usize {
    let m = committed.len();
    assert!(m <= in_row_order.len(), "{when}: {m} committed lines, more than the job's {} rows", in_row_order.len());
    let mut expected = in_row_order[..m].to_vec();
    expected.sort();
    if committed != expected {
        fn count(v: &[String]) -> BTreeMap<&str, i32> {
            let mut m = BTreeMap::new();
            for l in v {
                *m.entry(l.as_str()).or_default() += 1;
            }
            m
        }
        let (g, e) = (count(committed), count(&expected));
        let missing: Vec<_> = e.iter().filter(|(l, n)| g.get(*l).copied().unwrap_or(0) < **n).take(5).collect();
        let extra: Vec<_> = g.iter().filter(|(l, n)| e.get(*l).copied().unwrap_or(0) < **n).take(5).collect();
        panic!("{when}: the {m} committed lines are not the output of the first {m} rows; missing e.g. {missing:?}; extra or twice e.g. {extra:?}");
    }
    m
}

/// Runs a CLI command that must succeed; returns its stdout.
fn weir_ok(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.weir(args);
    assert!(out.status.success(), "weir {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a CLI command that must fail; returns its stderr.
fn weir_err(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.weir(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "weir {args:?} should have failed; stdout {}", String::from_utf8_lossy(&out.stdout));
    stderr
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Lines in the sink's pending files (`.part-<job>-<attempt>-<i>-<s>.pending`): pre-committed at a barrier,
/// invisible until a checkpoint (or the restore of a savepoint listing them) commits them.
fn pending_lines(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') && name.ends_with(".pending") {
            n += std::fs::read_to_string(entry.path()).unwrap_or_default().lines().count();
        }
    }
    n
}

/// Waits until the job (still RUNNING) has committed at least `lines` lines. Task metrics are
/// only reported when a task changes state, so committed output is the progress signal.
fn wait_for_committed(cluster: &Cluster, id: &str, out: &Path, lines: usize) {
    wait_for(&format!("job {id} to commit {lines} lines"), || {
        let s = cluster.job_status(id);
        assert_eq!(s["state"], "RUNNING", "job {id} must still run: {s}");
        (committed_lines(out).len() >= lines).then_some(())
    });
}

/// `weir savepoint ID DIR --output json` → (path, checkpoint id).
fn take_savepoint(cluster: &Cluster, id: &str, dir: &Path, extra: &[&str]) -> (String, u64) {
    let mut args = vec!["savepoint", id, dir.to_str().unwrap(), "--output", "json"];
    args.extend_from_slice(extra);
    let v = json(&weir_ok(cluster, &args));
    (v["path"].as_str().unwrap().to_string(), v["checkpoint_id"].as_u64().unwrap())
}

/// The local folder of a `file://` savepoint URL.
fn local(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("file://").unwrap_or(url))
}

fn cancel(cluster: &Cluster, id: &str) {
    weir_ok(cluster, &["cancel", id]);
    cluster.wait_for_state(id, "CANCELED");
}

fn job_count(cluster: &Cluster) -> usize {
    json(&weir_ok(cluster, &["list", "--output", "json"])).as_array().unwrap().len()
}

/// Every file under `dir` (relative paths), sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for file in files_under(from) {
        std::fs::create_dir_all(to.join(&file).parent().unwrap()).unwrap();
        std::fs::copy(from.join(&file), to.join(&file)).unwrap();
    }
}

const ROWS: u64 = 3000;
const RATE: u64 = 300;
/// Rows each of the first two runs must have emitted before it is savepointed.
const STEP: u64 = 300;

/// The whole rescale lifecycle with exact committed output: run at p=2 → `weir savepoint` →
/// resume at p=3 → `weir stop` (stop with savepoint) → move the savepoint folder → resume at p=1
/// → the job finishes. RocksDB with incremental checkpoints, so a savepoint that referenced the
/// job's shared files would break once they are gone (the test deletes the checkpoint folders).
///
/// Why this is exactly-once, and what each step checks:
/// - An intermediate savepoint (`weir savepoint`) commits nothing (Flink 1.15+ semantics): the
///   sink's files pending at its barrier are in the savepoint's state and are committed by the
///   job that resumes from it. But rows the first job processes *after* the savepoint and
///   commits through a later checkpoint would be committed again by the resumed job, which
///   replays them: resuming from an intermediate savepoint of a job that went on committing
///   duplicates output, in Flink as in Weir. The exactly-once procedure is `weir stop`. So the
///   first run takes one periodic checkpoint only (the first is due at once, the next after its
///   1h interval) and is canceled after the savepoint: what it committed is a prefix of the rows
///   before the savepoint, and the rest up to the savepoint is committed by the second run's
///   restore. Task metrics are reported only on state changes, so the first run shows progress
///   through its savepoints: it takes them until the sink's committed and pending files (written
///   before the last barrier) hold STEP rows, and the second run resumes from that last one.
/// - `weir stop` commits exactly up to its savepoint (the sources stop after its barrier): after
///   it the committed output is exactly the first m rows, for an m past both runs' progress.
/// - The third run resumes from the moved savepoint (its old folder and the jobs' checkpoint
///   folders are gone) at parallelism 1 and runs to the end: the committed output is every row's
///   line exactly once.
#[test]
fn a_job_rescaled_from_2_to_3_to_1_through_savepoints_commits_every_row_exactly_once() {
    let checkpoints = tempfile::tempdir().unwrap();
    let savepoints = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        2,
        2,
        &[
            &format!("execution.checkpointing.dir=file://{}", checkpoints.path().display()),
            &format!("execution.checkpointing.savepoint-dir=file://{}", savepoints.path().display()),
            "execution.checkpointing.interval=300ms",
            "execution.checkpointing.incremental=true",
            "state.backend.type=rocksdb",
            "restart-strategy.type=none",
        ],
    );
    let out = cluster.dir.path().join("out");
    let yaml = job_yaml(&out, Some(ROWS), RATE, true, true);
    let all = lines_in_row_order(&yaml, ROWS);
    let job = cluster.write("counting.yaml", &yaml);

    // Run 1 at p=2 with one checkpoint only (at its start: the first is due at once, the next
    // after 1h); savepoints to the configured directory until one covers STEP rows.
    let first = cluster.submit(&job, &["-p", "2", "-D", "execution.checkpointing.interval=1h"]);
    cluster.wait_for_state(&first, "RUNNING");
    let completed = || json(&weir_ok(&cluster, &["checkpoints", &first, "--output", "json"]));
    wait_for("the first run's first checkpoint", || {
        completed().as_array().unwrap().iter().any(|c| c["status"] == "COMPLETED" && c["savepoint"] == false).then_some(())
    });
    let (sp1, covered) = wait_for(&format!("a savepoint covering {STEP} rows"), || {
        let sp = json(&weir_ok(&cluster, &["savepoint", &first, "--output", "json"]));
        let sp = sp["path"].as_str().unwrap().to_string();
        // What the sink wrote before the barrier is committed or pre-committed (pending).
        let covered = committed_lines(&out).len() + pending_lines(&out);
        (covered as u64 >= STEP).then_some((sp, covered))
    });
    assert!(local(&sp1).starts_with(savepoints.path()), "{sp1} is under execution.checkpointing.savepoint-dir");
    assert!(local(&sp1).join("_metadata").is_file(), "{sp1}/_metadata");
    cancel(&cluster, &first);
    let m1 = assert_exact_prefix(&committed_lines(&out), &all, "after the first run");
    assert!(m1 < covered, "intermediate savepoints commit nothing: {m1} lines committed, the savepoint covers {covered}");

    // Run 2 at p=3 from the savepoint; then stop with a savepoint.
    let second = cluster.submit(&job, &["-p", "3", "-s", &sp1]);
    let status = cluster.wait_for_state(&second, "RUNNING");
    assert_eq!(status["vertices"][1]["parallelism"], 3, "{status}");
    wait_for_committed(&cluster, &second, &out, covered + STEP as usize);
    let stopped = json(&weir_ok(&cluster, &["stop", &second, "--output", "json"]));
    let sp2 = stopped["path"].as_str().unwrap().to_string();
    assert!(stopped["checkpoint_id"].as_u64().is_some(), "{stopped}");
    let status = cluster.job_status(&second);
    assert_eq!((&status["state"], status["savepoint_path"].as_str()), (&json!("FINISHED"), Some(sp2.as_str())), "{status}");
    let m2 = assert_exact_prefix(&committed_lines(&out), &all, "after stop with savepoint");
    assert!(m2 >= covered + STEP as usize, "the stop committed everything up to its savepoint: {m2} rows (first savepoint {covered})");
    assert!((m2 as u64) < ROWS, "the job was stopped before its end");

    // Move the savepoint, remove every checkpoint folder: the savepoint stands alone.
    let moved = cluster.dir.path().join("moved").join("upgrade-savepoint");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(local(&sp2), &moved).unwrap();
    for job_id in [&first, &second] {
        let _ = std::fs::remove_dir_all(checkpoints.path().join(job_id));
    }

    // Run 3 at p=1 from the moved folder (a plain local path), to the end.
    let third = cluster.submit(&job, &["-p", "1", "-s", moved.to_str().unwrap()]);
    let status = cluster.wait_for_state(&third, "FINISHED");
    assert_eq!(status["vertices"][1]["parallelism"], 1, "{status}");
    let committed = committed_lines(&out);
    assert_eq!(assert_exact_prefix(&committed, &all, "after the last run"), ROWS as usize);
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.starts_with('_'))
        // The canceled first run's uncommitted files are its own: no other job touches them.
        .filter(|n| !n.starts_with(&format!(".part-{first}-")))
        .collect();
    assert!(leftovers.is_empty(), "uncommitted files left after the job finished: {leftovers:?}");
}

/// A cluster running the counting job (p=1, hashmap state, unbounded) with a canonical
/// savepoint taken and the job canceled: (cluster, the job file, the savepoint path).
fn cluster_with_a_savepoint() -> (Cluster, PathBuf, String) {
    let cluster = Cluster::start(1, 2, &["execution.checkpointing.interval=300ms", "restart-strategy.type=none"]);
    let yaml = job_yaml(&cluster.dir.path().join("out"), None, 500, true, true);
    let job = cluster.write("counting.yaml", &yaml);
    let id = cluster.submit(&job, &[]);
    cluster.wait_for_state(&id, "RUNNING");
    wait_for_committed(&cluster, &id, &cluster.dir.path().join("out"), 100);
    let (path, _) = take_savepoint(&cluster, &id, &cluster.dir.path().join("savepoints"), &[]);
    cancel(&cluster, &id);
    (cluster, job, path)
}

#[test]
fn state_of_a_removed_step_is_refused_naming_its_uid_unless_allowed() {
    let (cluster, _, savepoint) = cluster_with_a_savepoint();
    // The new job has no key_by/count: the state of uid `counter` has no operator.
    let without_count = cluster.write("without-count.yaml", &job_yaml(&cluster.dir.path().join("out"), None, 500, false, true));
    let file = without_count.to_str().unwrap();
    let err = weir_err(&cluster, &["run", file, "--detached", "-s", &savepoint]);
    assert!(err.contains("counter"), "the refusal names the operator's uid: {err}");
    assert_eq!(job_count(&cluster), 1, "nothing was added");

    let out = cluster.weir(&["run", file, "--detached", "--output", "json", "-s", &savepoint, "--allow-non-restored-state"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = json(&String::from_utf8_lossy(&out.stdout))["id"].as_str().unwrap().to_string();
    cluster.wait_for_state(&id, "RUNNING");
    cancel(&cluster, &id);

    // Stateful steps without an explicit uid are accepted with a warning for each.
    let no_uids = cluster.write("no-uids.yaml", &job_yaml(&cluster.dir.path().join("out-2"), None, 500, true, false));
    let out = cluster.weir(&["run", no_uids.to_str().unwrap(), "--detached"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert!(!warnings.is_empty() && warnings.iter().all(|w| w.contains("uid")), "a warning per stateful step without a uid: {stderr}");
    cancel(&cluster, String::from_utf8_lossy(&out.stdout).trim());
}

#[test]
fn a_corrupted_savepoint_file_is_named_and_nothing_starts() {
    let (cluster, job, savepoint) = cluster_with_a_savepoint();
    let folder = local(&savepoint);
    let files = files_under(&folder);
    // Corrupt the keyed state in the savepoint, and the operator state in a copy of it.
    let copy = cluster.dir.path().join("copied-savepoint");
    copy_dir(&folder, &copy);
    for (dir, name) in [(&folder, "keyed-state"), (&copy, "operator-state")] {
        let file = files.iter().find(|f| f.file_name().is_some_and(|n| n == name)).unwrap_or_else(|| panic!("no {name} in {files:?}"));
        let path = dir.join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(&path, &bytes).unwrap();

        let err = weir_err(&cluster, &["run", job.to_str().unwrap(), "--detached", "-s", dir.to_str().unwrap()]);
        assert!(err.contains(file.to_str().unwrap()), "the error names {}: {err}", file.display());
        assert_eq!(job_count(&cluster), 1, "nothing was added after {err}");
    }
}

/// Periodic checkpoints every 200 ms on RocksDB (incremental) go on completing around
/// savepoints of both formats; `weir checkpoints` marks the savepoints with their paths; the
/// job shows its last one; `weir savepoints dispose` removes one and refuses what is not one.
#[test]
fn savepoints_taken_while_checkpoints_run_are_marked_and_disposable() {
    let checkpoints = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        1,
        2,
        &[
            &format!("execution.checkpointing.dir=file://{}", checkpoints.path().display()),
            "execution.checkpointing.interval=200ms",
            "execution.checkpointing.incremental=true",
            "state.backend.type=rocksdb",
            "restart-strategy.type=none",
        ],
    );
    let job = cluster.write("counting.yaml", &job_yaml(&cluster.dir.path().join("out"), None, 1000, true, true));
    let id = cluster.submit(&job, &["-p", "2"]);
    cluster.wait_for_state(&id, "RUNNING");
    let list = || json(&weir_ok(&cluster, &["checkpoints", &id, "--output", "json"])).as_array().unwrap().clone();
    let completed = |savepoint: bool| -> Vec<u64> {
        list().iter().filter(|c| c["status"] == "COMPLETED" && c["savepoint"] == savepoint).map(|c| c["id"].as_u64().unwrap()).collect()
    };
    wait_for("two completed checkpoints", || (completed(false).len() >= 2).then_some(()));

    // No directory given and none configured: the error names the key.
    let err = weir_err(&cluster, &["savepoint", &id]);
    assert!(err.contains("execution.checkpointing.savepoint-dir"), "{err}");

    let dir = cluster.dir.path().join("savepoints");
    let out = weir_ok(&cluster, &["savepoint", &id, dir.to_str().unwrap()]);
    let canonical = out.trim().strip_prefix("Savepoint completed. Path: ").unwrap_or_else(|| panic!("{out}")).to_string();
    assert!(local(&canonical).starts_with(&dir) && local(&canonical).join("_metadata").is_file(), "{canonical}");
    let (native, native_id) = take_savepoint(&cluster, &id, &dir, &["--type", "native"]);
    assert_eq!(cluster.job_status(&id)["savepoint_path"], json!(native), "the job shows its last savepoint");

    // Checkpoints go on completing after the savepoints, and none failed.
    wait_for("a checkpoint after the savepoints", || completed(false).iter().any(|c| *c > native_id).then_some(()));
    let rows = list();
    let failed: Vec<&Value> = rows.iter().filter(|c| c["status"] == "FAILED").collect();
    assert!(failed.is_empty(), "savepoints disturb no checkpoint: {failed:?}");
    let marked: Vec<(&str, &str)> =
        rows.iter().filter(|c| c["savepoint"] == true).map(|c| (c["status"].as_str().unwrap(), c["path"].as_str().unwrap_or(""))).collect();
    assert_eq!(marked, [("COMPLETED", canonical.as_str()), ("COMPLETED", native.as_str())], "{rows:?}");
    assert!(rows.iter().filter(|c| c["savepoint"] == false).all(|c| c["path"].is_null()), "{rows:?}");
    let text = weir_ok(&cluster, &["checkpoints", &id]);
    assert!(text.lines().any(|l| l.contains(" savepoint ") && l.ends_with(canonical.as_str())), "{text}");
    assert!(text.lines().any(|l| l.contains(" checkpoint ")), "{text}");
    cancel(&cluster, &id);

    // Dispose: the folder goes; a folder that is no savepoint (any more) is refused, named.
    let disposed = json(&weir_ok(&cluster, &["savepoints", "dispose", &canonical, "--output", "json"]));
    assert!(disposed["files_deleted"].as_u64().unwrap() >= 1, "{disposed}");
    assert!(!local(&canonical).exists(), "{canonical} is gone");
    let err = weir_err(&cluster, &["savepoints", "dispose", &canonical]);
    assert!(err.contains(local(&canonical).to_str().unwrap()), "{err}");
    let not_a_savepoint = cluster.dir.path().join("not-a-savepoint");
    std::fs::create_dir_all(&not_a_savepoint).unwrap();
    std::fs::write(not_a_savepoint.join("data"), "x").unwrap();
    let err = weir_err(&cluster, &["savepoints", "dispose", not_a_savepoint.to_str().unwrap()]);
    assert!(err.contains(not_a_savepoint.to_str().unwrap()), "{err}");
    assert!(not_a_savepoint.join("data").exists(), "what is not a savepoint is left alone");
    assert!(local(&native).join("_metadata").is_file(), "the other savepoint stays");
}

/// `weir stop --drain` on a bounded job still running: the sources end early, everything they
/// emitted is committed by the savepoint that ends the job, and the job FINISHED with it.
#[test]
fn stop_with_drain_commits_everything_emitted_and_finishes_with_the_savepoint() {
    let cluster = Cluster::start(1, 2, &["execution.checkpointing.interval=300ms", "restart-strategy.type=none"]);
    let out = cluster.dir.path().join("out");
    let rows = 100_000;
    let yaml = job_yaml(&out, Some(rows), 500, true, true);
    let job = cluster.write("counting.yaml", &yaml);
    let id = cluster.submit(&job, &["-p", "2"]);
    cluster.wait_for_state(&id, "RUNNING");
    wait_for_committed(&cluster, &id, &out, 200);

    let dir = cluster.dir.path().join("savepoints");
    let stopped = json(&weir_ok(&cluster, &["stop", &id, "--drain", "--savepoint-dir", dir.to_str().unwrap(), "--output", "json"]));
    let path = stopped["path"].as_str().unwrap().to_string();
    assert!(local(&path).starts_with(&dir) && local(&path).join("_metadata").is_file(), "{stopped}");
    let status = cluster.job_status(&id);
    assert_eq!((&status["state"], &status["savepoint_path"]), (&json!("FINISHED"), &json!(path)), "{status}");
    let emitted = status["vertices"][0]["records_out"].as_u64().unwrap();
    let m = assert_exact_prefix(&committed_lines(&out), &lines_in_row_order(&yaml, rows), "after stop --drain");
    assert_eq!(m as u64, emitted, "every row the source emitted is committed");
    assert!(emitted >= 200 && emitted < rows, "the source ended early, at {emitted}");
    let list = weir_ok(&cluster, &["list"]);
    assert!(list.lines().any(|l| l.contains(&id) && l.contains("FINISHED") && l.ends_with(path.as_str())), "{list}");
}

/// Migration between stores and backends: a job checkpointing to local files on the hashmap
/// backend is stopped with a savepoint into S3 (a real S3-compatible server on loopback), then
/// resumed from there on RocksDB at another parallelism: a canonical savepoint moves between
/// `file://` and `s3://` and between backends, and the committed output stays exact.
#[test]
fn a_job_stopped_into_s3_resumes_from_there_on_rocksdb_with_exact_output() {
    let s3 = S3Server::start("weir-savepoints");
    let mut config = s3.config();
    config.extend(["execution.checkpointing.interval=300ms".to_string(), "restart-strategy.type=none".to_string()]);
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    let cluster = Cluster::start(1, 2, &config);
    let out = cluster.dir.path().join("out");
    let rows = 1500;
    let yaml = job_yaml(&out, Some(rows), 500, true, true);
    let all = lines_in_row_order(&yaml, rows);
    let job = cluster.write("counting.yaml", &yaml);
    let first = cluster.submit(&job, &["-p", "2", "-D", "state.backend.type=hashmap"]);
    cluster.wait_for_state(&first, "RUNNING");
    wait_for_committed(&cluster, &first, &out, 100);

    let stopped = json(&weir_ok(&cluster, &["stop", &first, "--savepoint-dir", "s3://weir-savepoints/savepoints", "--output", "json"]));
    let path = stopped["path"].as_str().unwrap().to_string();
    assert!(path.starts_with("s3://weir-savepoints/savepoints/savepoint-"), "{stopped}");
    let m = assert_exact_prefix(&committed_lines(&out), &all, "after the stop into S3");
    assert!(m >= 100 && (m as u64) < rows, "stopped midway, at {m}");

    let second = cluster.submit(&job, &["-p", "1", "-s", &path, "-D", "state.backend.type=rocksdb"]);
    cluster.wait_for_state(&second, "FINISHED");
    assert_eq!(assert_exact_prefix(&committed_lines(&out), &all, "after the resumed run"), rows as usize);
}

/// Rescaling the file source itself: a word count reading 10 files with 2 source subtasks is
/// stopped with a savepoint mid-way and resumed with 3 (the unread parts of its byte ranges
/// are dealt over the new subtasks). Every word's committed lines are `word,1` .. `word,n`,
/// each exactly once, for its n occurrences in the input: no line read twice or skipped.
#[test]
fn a_file_source_rescaled_from_2_to_3_reads_every_line_exactly_once() {
    let cluster = Cluster::start(2, 3, &["execution.checkpointing.interval=300ms", "restart-strategy.type=none"]);
    let input = cluster.dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut expected: HashMap<String, u64> = HashMap::new();
    // The source emits batches of up to 4096 lines, which the throttle lets pass whole and then
    // pauses: 40 000 lines at 4000 lines/s per subtask make about 5 s at parallelism 2.
    for i in 0..10 {
        let text = generate_text(3500 + 100 * i, i as u64 + 7);
        for w in text.split_whitespace() {
            *expected.entry(w.to_string()).or_default() += 1;
        }
        std::fs::write(input.join(format!("part-{i}.txt")), text).unwrap();
    }
    let out = cluster.dir.path().join("out");
    let yaml = format!(
        "name: words\npipeline:\n  - source: file\n    uid: lines\n    path: {}\n  - throttle: {{rows-per-second: 4000}}\n  - split: {{}}\n  - key_by: word\n  - count: {{}}\n    uid: counts\n  - sink: file\n    uid: committer\n    path: {}\n",
        input.display(),
        out.display()
    );
    let job = cluster.write("words.yaml", &yaml);
    let first = cluster.submit(&job, &["-p", "2"]);
    cluster.wait_for_state(&first, "RUNNING");
    wait_for_committed(&cluster, &first, &out, 300);
    let dir = cluster.dir.path().join("savepoints");
    let stopped = json(&weir_ok(&cluster, &["stop", &first, "--savepoint-dir", dir.to_str().unwrap(), "--output", "json"]));
    let savepoint = stopped["path"].as_str().unwrap().to_string();
    let at_stop = committed_lines(&out).len();

    let second = cluster.submit(&job, &["-p", "3", "-s", &savepoint]);
    let status = cluster.wait_for_state(&second, "FINISHED");
    assert_eq!(status["vertices"][0]["parallelism"], 3, "the source itself runs at 3: {status}");
    let committed = committed_lines(&out);
    let total: u64 = expected.values().sum();
    assert!(at_stop > 0 && (at_stop as u64) < total, "stopped mid-way: {at_stop} of {total} words committed");
    let mut want: Vec<String> = expected.iter().flat_map(|(w, n)| (1..=*n).map(move |c| format!("{w},{c}"))).collect();
    want.sort();
    if committed != want {
        let (g, e): (std::collections::HashSet<&String>, std::collections::HashSet<&String>) =
            (committed.iter().collect(), want.iter().collect());
        let missing: Vec<_> = e.difference(&g).take(5).collect();
        let extra: Vec<_> = g.difference(&e).take(5).collect();
        panic!("{} committed lines, expected {}; missing e.g. {missing:?}; extra e.g. {extra:?}", committed.len(), want.len());
    }
}

//! The exactly-once check: a deterministic datagen source → key_by → keyed sum on RocksDB →
//! transactional file sink, checkpointing every 300 ms, while TaskManagers are SIGKILLed (and
//! replaced). The committed output must equal the output of an undisturbed run exactly:
//! nothing lost, nothing twice. The AT_LEAST_ONCE variant asserts that nothing is lost.

mod common;

use common::*;
use std::collections::{BTreeMap, HashMap};

const ROWS: u64 = 40_000;

/// The job with `extra` steps between the keyed sum and the sink (a throttle, for backpressure).
fn job_yaml_with(out: &std::path::Path, source_parallelism: u32, extra: &str) -> String {
    format!(
        r#"name: exactly-once
pipeline:
  - source: datagen
    parallelism: {source_parallelism}
    rows-per-second: 8000
    number-of-rows: {ROWS}
    seed: 11
    fields:
      - {{name: id, kind: sequence, start: 0}}
      - {{name: key, kind: random, min: 0, max: 199}}
      - {{name: v, kind: random, min: 1, max: 1000}}
  - key_by: key
  - sum: v
    parallelism: 4
{extra}  - sink: file
    path: {}
    parallelism: 4
"#,
        out.display()
    )
}

/// The lines an undisturbed run writes: for each row in order, `key,running sum`. With one
/// source subtask, each key's rows reach its sum subtask in generation order. (With more, the
/// rows are the same but their interleaving per key is not fixed.)
fn expected_lines(yaml: &str) -> Vec<String> {
    let mut sums: HashMap<i64, i64> = HashMap::new();
    let mut lines = Vec::new();
    for b in datagen_batches(yaml) {
        let keys = b.column(1).as_any().downcast_ref::<arrow_array::Int64Array>().unwrap();
        let vals = b.column(2).as_any().downcast_ref::<arrow_array::Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            let s = sums.entry(keys.value(i)).or_default();
            *s += vals.value(i);
            lines.push(format!("{},{}", keys.value(i), s));
        }
    }
    assert_eq!(lines.len() as u64, ROWS);
    lines.sort();
    lines
}

/// Runs the job, killing a TaskManager `kills` times (each after a further checkpoint
/// completed, starting a replacement), and the JobManager once if `kill_jm`; returns the
/// committed lines, the expected ones, the job's final status and its checkpoints.
fn run_with_kills(
    mode: &str,
    source_parallelism: u32,
    kills: usize,
    kill_jm: bool,
    s3: Option<&S3Server>,
) -> (Vec<String>, Vec<String>, serde_json::Value, serde_json::Value) {
    run_job_with_kills(mode, source_parallelism, kills, kill_jm, s3, &[], "", false)
}

/// [`run_with_kills`] with extra configuration and extra steps before the sink; with
/// `savepoints`, a savepoint (`weir savepoint`, into the cluster's folder `savepoints`) is
/// taken before every kill, and must complete.
#[allow(clippy::too_many_arguments)]
fn run_job_with_kills(
    mode: &str,
    source_parallelism: u32,
    kills: usize,
    kill_jm: bool,
    s3: Option<&S3Server>,
    extra_config: &[&str],
    extra_steps: &str,
    savepoints: bool,
) -> (Vec<String>, Vec<String>, serde_json::Value, serde_json::Value) {
    let chk = tempfile::tempdir().unwrap();
    let catalog = tempfile::tempdir().unwrap();
    let dir = match s3 {
        Some(_) => "s3://weir-exactly-once/checkpoints".to_string(),
        None => format!("file://{}", chk.path().display()),
    };
    let mut cfg = vec![
        format!("jobmanager.catalog.dir={}", catalog.path().display()),
        "execution.checkpointing.interval=300ms".to_string(),
        format!("execution.checkpointing.dir={dir}"),
        format!("execution.checkpointing.mode={mode}"),
        "state.backend.type=rocksdb".to_string(),
        "restart-strategy.type=fixed-delay".to_string(),
        "restart-strategy.fixed-delay.attempts=50".to_string(),
        "restart-strategy.fixed-delay.delay=200ms".to_string(),
    ];
    if let Some(s3) = s3 {
        cfg.extend(s3.config());
    }
    cfg.extend(extra_config.iter().map(|c| c.to_string()));
    let cfg_refs: Vec<&str> = cfg.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start(3, 2, &cfg_refs);
    let out_dir = cluster.dir.path().join("out");
    let yaml = job_yaml_with(&out_dir, source_parallelism, extra_steps);
    let job = cluster.write("job.yaml", &yaml);
    let id = cluster.submit(&job, &[]);
    cluster.wait_for_state(&id, "RUNNING");

    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for k in 0..kills {
        let before = cluster.completed_checkpoints(&id);
        wait_for("a further completed checkpoint", || (cluster.completed_checkpoints(&id) > before).then_some(()));
        if cluster.try_job_status(&id).is_some_and(|s| s["state"] == "FINISHED") {
            break;
        }
        if savepoints {
            let dir = cluster.dir.path().join("savepoints");
            let out = cluster.weir(&["savepoint", &id, dir.to_str().unwrap(), "--output", "json"]);
            assert!(out.status.success(), "savepoint {k} failed: {}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            eprintln!("savepoint {k}: {}", v["path"]);
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let alive: Vec<usize> = (0..cluster.tms.len()).filter(|i| cluster.tms[*i].child.try_wait().ok().flatten().is_none()).collect();
        let victim = alive[(rng as usize) % alive.len()];
        eprintln!("kill {k}: SIGKILL {}", cluster.tms[victim].name);
        cluster.tms[victim].kill();
        cluster.add_taskmanager();
        if kill_jm && k == 0 {
            let before = cluster.completed_checkpoints(&id);
            wait_for("a checkpoint before the JobManager dies", || (cluster.completed_checkpoints(&id) > before).then_some(()));
            eprintln!("SIGKILL the JobManager");
            cluster.restart_jobmanager();
            wait_for("the recovered job to run", || {
                cluster.try_job_status(&id).filter(|s| s["state"] == "RUNNING" || s["state"] == "FINISHED").map(|_| ())
            });
        }
    }
    let status = cluster.wait_until_finished(&id);
    let checkpoints: serde_json::Value = serde_json::from_slice(&cluster.weir(&["checkpoints", &id, "--output", "json"]).stdout).unwrap();
    (committed_lines(&out_dir), expected_lines(&yaml), status, checkpoints)
}

#[test]
fn exactly_once_output_survives_taskmanager_kills() {
    let (got, expected, status, checkpoints) = run_with_kills("EXACTLY_ONCE", 1, 3, true, None);
    assert!(status["attempt"].as_u64().unwrap() >= 2, "the job restarted: {status}");
    let completed = checkpoints.as_array().unwrap().iter().filter(|c| c["status"] == "COMPLETED").count();
    assert!(completed >= 1, "{checkpoints}");
    assert_same_output(&got, &expected);
}

#[test]
fn exactly_once_output_survives_taskmanager_kills_with_s3_checkpoints() {
    let s3 = S3Server::start("weir-exactly-once");
    let (got, expected, status, _) = run_with_kills("EXACTLY_ONCE", 1, 2, false, Some(&s3));
    assert!(status["restarts"].as_u64().unwrap() >= 1, "the job restarted: {status}");
    assert_same_output(&got, &expected);
}

fn assert_same_output(got: &[String], expected: &[String]) {
    if got != expected {
        fn count(v: &[String]) -> BTreeMap<&str, i32> {
            let mut m = BTreeMap::new();
            for l in v {
                *m.entry(l.as_str()).or_default() += 1;
            }
            m
        }
        let (g, e) = (count(got), count(expected));
        let missing: Vec<_> = e.iter().filter(|(l, n)| g.get(*l).copied().unwrap_or(0) < **n).take(5).collect();
        let extra: Vec<_> = g.iter().filter(|(l, n)| e.get(*l).copied().unwrap_or(0) < **n).take(5).collect();
        panic!(
            "committed output differs: {} lines, expected {}; missing e.g. {missing:?}; extra e.g. {extra:?}",
            got.len(),
            expected.len()
        );
    }
}

#[test]
fn at_least_once_output_loses_nothing_across_taskmanager_kills() {
    // Two source subtasks: their positions are restored per subtask.
    let (got, expected, _, _) = run_with_kills("AT_LEAST_ONCE", 2, 2, false, None);
    // Replays may add rows (so later sums grow), never drop them: every key has at least as
    // many updates, and a final sum at least the expected one.
    let summarize = |lines: &[String]| {
        let mut m: HashMap<String, (usize, i64)> = HashMap::new();
        for l in lines {
            let (k, v) = l.split_once(',').unwrap();
            let e = m.entry(k.to_string()).or_default();
            e.0 += 1;
            e.1 = e.1.max(v.parse().unwrap());
        }
        m
    };
    let (g, e) = (summarize(&got), summarize(&expected));
    for (k, (n, max)) in &e {
        let (gn, gmax) = g.get(k).copied().unwrap_or_default();
        assert!(gn >= *n && gmax >= *max, "key {k}: {gn} updates up to {gmax}, expected at least {n} up to {max}");
    }
}

/// A throttle behind the shuffle at half the source's rate: the job is backpressured for its
/// whole run, so barriers have in-flight data to overtake.
const THROTTLE: &str = "  - throttle: {rows-per-second: 1000}\n    parallelism: 4\n";

/// Checkpoints of `kind` that completed, and the in-flight bytes they persisted.
fn completed_of_kind(checkpoints: &serde_json::Value, kind: &str) -> (usize, u64) {
    let of_kind: Vec<&serde_json::Value> =
        checkpoints.as_array().unwrap().iter().filter(|c| c["status"] == "COMPLETED" && c["kind"] == kind).collect();
    (of_kind.len(), of_kind.iter().map(|c| c["inflight_bytes"].as_u64().unwrap_or(0)).sum())
}

#[test]
fn unaligned_checkpoints_keep_exactly_once_under_backpressure_and_kills() {
    let cfg = ["execution.checkpointing.unaligned.enabled=true", "execution.checkpointing.max-concurrent-checkpoints=2"];
    let (got, expected, status, checkpoints) = run_job_with_kills("EXACTLY_ONCE", 1, 3, false, None, &cfg, THROTTLE, false);
    assert!(status["attempt"].as_u64().unwrap() >= 2, "the job restarted: {status}");
    let (unaligned, inflight) = completed_of_kind(&checkpoints, "UNALIGNED");
    assert!(unaligned >= 1, "unaligned checkpoints completed: {checkpoints}");
    assert!(inflight > 0, "under backpressure barriers overtook in-flight data: {checkpoints}");
    assert_same_output(&got, &expected);
}

#[test]
fn aligned_checkpoints_switch_to_unaligned_after_the_timeout_and_keep_exactly_once() {
    let cfg = [
        "execution.checkpointing.unaligned.enabled=true",
        "execution.checkpointing.aligned-checkpoint-timeout=30ms",
        "execution.checkpointing.max-concurrent-checkpoints=2",
    ];
    let (got, expected, status, checkpoints) = run_job_with_kills("EXACTLY_ONCE", 1, 2, false, None, &cfg, THROTTLE, false);
    assert!(status["restarts"].as_u64().unwrap() >= 1, "the job restarted: {status}");
    let (switched, _) = completed_of_kind(&checkpoints, "TIMED_OUT_TO_UNALIGNED");
    assert!(switched >= 1, "some checkpoints switched to unaligned: {checkpoints}");
    assert_same_output(&got, &expected);
}

/// Past Flink's limits: aligned savepoints taken while concurrent unaligned checkpoints run
/// under backpressure, with TaskManagers killed after each. Every savepoint completes, aligned
/// and without in-flight data; the unaligned checkpoints go on around them; and the committed
/// output is exact (an intermediate savepoint commits nothing, so it cannot duplicate a row).
#[test]
fn aligned_savepoints_beside_unaligned_checkpoints_keep_exactly_once() {
    let cfg = ["execution.checkpointing.unaligned.enabled=true", "execution.checkpointing.max-concurrent-checkpoints=2"];
    let (got, expected, status, checkpoints) = run_job_with_kills("EXACTLY_ONCE", 1, 2, false, None, &cfg, THROTTLE, true);
    assert!(status["restarts"].as_u64().unwrap() >= 1, "the job restarted: {status}");
    let all = checkpoints.as_array().unwrap();
    let savepoints: Vec<&serde_json::Value> = all.iter().filter(|c| c["savepoint"] == true && c["status"] == "COMPLETED").collect();
    assert!(!savepoints.is_empty(), "savepoints completed: {checkpoints}");
    for sp in &savepoints {
        assert_eq!(sp["kind"], "ALIGNED", "a savepoint is aligned: {sp}");
        assert_eq!(sp["inflight_bytes"].as_u64(), Some(0), "a savepoint stores no in-flight data: {sp}");
        assert!(sp["path"].as_str().unwrap().contains("/savepoints/savepoint-"), "its folder: {sp}");
    }
    let (unaligned, _) = completed_of_kind(&checkpoints, "UNALIGNED");
    assert!(unaligned >= 1, "unaligned checkpoints completed beside the savepoints: {checkpoints}");
    assert_same_output(&got, &expected);
}

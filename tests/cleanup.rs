//! Checkpoint storage is cleaned: a job that checkpoints often (incremental RocksDB, 100 ms,
//! `num-retained` 2) and then ends keeps exactly its retained `chk-<n>/` folders, and `shared/`
//! holds exactly the files their `_metadata` reference, with no empty directory anywhere; the
//! same when checkpoints keep timing out (their uploads are orphans no acknowledgement names),
//! and on S3 (moto).

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// A keyed sum on RocksDB over an unbounded datagen source, with `extra` steps before the sink.
fn job_yaml(extra: &str) -> String {
    format!(
        r#"name: cleanup
pipeline:
  - source: datagen
    rows-per-second: 4000
    fields:
      - {{name: key, kind: random, min: 0, max: 999}}
      - {{name: v, kind: random, min: 1, max: 100}}
  - key_by: key
  - sum: v
    uid: sum
    parallelism: 2
{extra}  - sink: blackhole
"#
    )
}

fn config(dir: &str, extra: &[&str]) -> Vec<String> {
    let mut cfg = vec![
        "execution.checkpointing.interval=100ms".to_string(),
        "execution.checkpointing.num-retained=2".to_string(),
        format!("execution.checkpointing.dir={dir}"),
        "state.backend.type=rocksdb".to_string(),
        "execution.checkpointing.incremental=true".to_string(),
    ];
    cfg.extend(extra.iter().map(|s| s.to_string()));
    cfg
}

/// The job's checkpoint history (`weir checkpoints`).
fn checkpoints(cluster: &Cluster, id: &str) -> Vec<Value> {
    let out = cluster.weir(&["checkpoints", id, "--output", "json"]);
    serde_json::from_slice::<Value>(&out.stdout).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

fn with_status(history: &[Value], status: &str) -> Vec<u64> {
    history.iter().filter(|c| c["status"] == status && c["savepoint"] != true).filter_map(|c| c["id"].as_u64()).collect()
}

/// Runs the job until `enough` says the checkpoint history shows what the test needs, cancels
/// it, and returns the ids of the checkpoints that completed.
fn run_and_cancel(cluster: &Cluster, extra_steps: &str, enough: impl Fn(&[Value]) -> bool) -> (String, Vec<u64>) {
    let job = cluster.write("job.yaml", &job_yaml(extra_steps));
    let id = cluster.submit(&job, &[]);
    cluster.wait_for_state(&id, "RUNNING");
    wait_for("the checkpoints the test needs", || enough(&checkpoints(cluster, &id)).then_some(()));
    let out = cluster.weir(&["cancel", &id]);
    assert!(out.status.success(), "cancel failed: {}", String::from_utf8_lossy(&out.stderr));
    cluster.wait_for_state(&id, "CANCELED");
    let mut completed = with_status(&checkpoints(cluster, &id), "COMPLETED");
    completed.sort_unstable();
    (id, completed)
}

/// The newest two: what `num-retained` 2 keeps.
fn retained(completed: &[u64]) -> BTreeSet<u64> {
    completed.iter().rev().take(2).copied().collect()
}

/// What a job's checkpoint storage holds, as relative paths under the job's folder.
#[derive(Debug, PartialEq, Eq)]
struct Listing {
    checkpoints: BTreeSet<u64>,
    shared: BTreeSet<String>,
    others: BTreeSet<String>,
}

impl Listing {
    fn of(files: &[String]) -> Listing {
        let mut l = Listing { checkpoints: BTreeSet::new(), shared: BTreeSet::new(), others: BTreeSet::new() };
        for f in files {
            if let Some(chk) = f.strip_prefix("chk-") {
                l.checkpoints.insert(chk.split('/').next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX));
            } else if f.starts_with("shared/") {
                l.shared.insert(f.clone());
            } else {
                l.others.insert(f.clone());
            }
        }
        l
    }
}

/// The body of a framed `_metadata` (magic, version, length, JSON, CRC-32; see
/// `weir_state::format`), parsed.
fn metadata_json(bytes: &[u8]) -> Value {
    assert_eq!(&bytes[..8], b"WEIRMETA", "not a _metadata file");
    let len = u64::from_be_bytes(bytes[10..18].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[18..18 + len]).expect("_metadata holds JSON")
}

/// Every `path` in a `_metadata` that lies in the job's `shared/`, relative to the job folder.
fn shared_references(meta: &Value, job: &str, out: &mut BTreeSet<String>) {
    match meta {
        Value::Object(m) => {
            if let Some(Value::String(p)) = m.get("path") {
                if let Some(rel) = p.strip_prefix(&format!("{job}/")).filter(|r| r.starts_with("shared/")) {
                    out.insert(rel.to_string());
                }
            }
            m.values().for_each(|v| shared_references(v, job, out));
        }
        Value::Array(a) => a.iter().for_each(|v| shared_references(v, job, out)),
        _ => {}
    }
}

/// Files (relative) and empty directories under `root`.
fn walk(root: &Path) -> (Vec<String>, Vec<String>) {
    fn go(root: &Path, dir: &Path, files: &mut Vec<String>, empty: &mut Vec<String>) {
        let entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        if entries.is_empty() && dir != root {
            empty.push(dir.strip_prefix(root).unwrap().display().to_string());
        }
        for e in entries {
            if e.file_type().unwrap().is_dir() {
                go(root, &e.path(), files, empty);
            } else {
                files.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let (mut files, mut empty) = (Vec::new(), Vec::new());
    if root.exists() {
        go(root, root, &mut files, &mut empty);
    }
    (files, empty)
}

/// Waits until the job's folder in local checkpoint storage holds exactly the retained
/// checkpoints and the shared files they reference, and no empty directory. Cleanup after the
/// job ended runs in the background, so the test waits for it (with the usual deadline) and,
/// on failure, reports what was left.
fn assert_only_retained_left(root: &Path, job: &str, retained: &BTreeSet<u64>) {
    let dir = root.join(job);
    let start = std::time::Instant::now();
    loop {
        let (files, empty) = walk(&dir);
        let listing = Listing::of(&files);
        let mut referenced = BTreeSet::new();
        for n in &listing.checkpoints {
            if let Ok(bytes) = std::fs::read(dir.join(format!("chk-{n}/_metadata"))) {
                shared_references(&metadata_json(&bytes), job, &mut referenced);
            }
        }
        if &listing.checkpoints == retained
            && listing.shared == referenced
            && listing.others.is_empty()
            && empty.is_empty()
            && retained.iter().all(|n| dir.join(format!("chk-{n}/_metadata")).is_file())
        {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "checkpoint storage not clean: checkpoints {:?} (retained {retained:?}); shared files not referenced {:?}, referenced but missing {:?}; other files {:?}; empty directories {empty:?}",
            listing.checkpoints,
            listing.shared.difference(&referenced).collect::<Vec<_>>(),
            referenced.difference(&listing.shared).collect::<Vec<_>>(),
            listing.others
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn ended_job_keeps_exactly_its_retained_checkpoints_and_their_shared_files() {
    let chk = tempfile::tempdir().unwrap();
    let cfg = config(&format!("file://{}", chk.path().display()), &[]);
    let cfg: Vec<&str> = cfg.iter().map(String::as_str).collect();
    let cluster = Cluster::start(1, 4, &cfg);
    let (id, completed) = run_and_cancel(&cluster, "", |h| with_status(h, "COMPLETED").len() >= 10);
    assert!(completed.len() >= 10, "{completed:?}");
    assert_only_retained_left(chk.path(), &id, &retained(&completed));
}

#[test]
fn timed_out_checkpoints_leave_no_orphans() {
    let chk = tempfile::tempdir().unwrap();
    // A throttle behind the sum at a quarter of the source's rate: aligned barriers wait behind
    // the backlog and most checkpoints expire; their tasks uploaded files no one acknowledged.
    let cfg = config(
        &format!("file://{}", chk.path().display()),
        &["execution.checkpointing.timeout=30ms", "execution.checkpointing.tolerable-failed-checkpoints=1000000"],
    );
    let cfg: Vec<&str> = cfg.iter().map(String::as_str).collect();
    let cluster = Cluster::start(1, 4, &cfg);
    let throttle = "  - throttle: {rows-per-second: 1000}\n    parallelism: 2\n";
    let (id, completed) = run_and_cancel(&cluster, throttle, |h| with_status(h, "FAILED").len() >= 8);
    let failed = with_status(&checkpoints(&cluster, &id), "FAILED");
    assert!(failed.len() >= 8, "the checkpoints were meant to time out: {failed:?}");
    assert_only_retained_left(chk.path(), &id, &retained(&completed));
}

/// A minimal S3 client for moto: ListObjectsV2 and GetObject with a dummy signature (moto
/// checks none).
fn s3_get(port: u16, path_and_query: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // moto checks no signature, but serves objects only to a request that carries one.
    write!(
        s,
        "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: AWS testing:unchecked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP response");
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "GET {path_and_query}: {head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "chunked responses are not handled: {head}");
    resp[split + 4..].to_vec()
}

fn s3_list(port: u16, bucket: &str, prefix: &str) -> Vec<String> {
    let body = String::from_utf8(s3_get(port, &format!("/{bucket}?list-type=2&max-keys=100000&prefix={prefix}"))).unwrap();
    body.split("<Key>").skip(1).filter_map(|k| k.split("</Key>").next()).map(str::to_string).collect()
}

#[test]
fn ended_job_keeps_exactly_its_retained_checkpoints_on_s3() {
    let s3 = S3Server::start("weir-cleanup");
    let mut cfg = config("s3://weir-cleanup/checkpoints", &[]);
    cfg.extend(s3.config());
    let cfg: Vec<&str> = cfg.iter().map(String::as_str).collect();
    let cluster = Cluster::start(1, 4, &cfg);
    let (id, completed) = run_and_cancel(&cluster, "", |h| with_status(h, "COMPLETED").len() >= 10);
    let retained = retained(&completed);
    let prefix = format!("checkpoints/{id}/");
    wait_for("S3 checkpoint storage to hold only the retained checkpoints", || {
        let files: Vec<String> = s3_list(s3.port, "weir-cleanup", &prefix).iter().map(|k| k[prefix.len()..].to_string()).collect();
        let listing = Listing::of(&files);
        let mut referenced = BTreeSet::new();
        for n in &listing.checkpoints {
            if files.contains(&format!("chk-{n}/_metadata")) {
                let bytes = s3_get(s3.port, &format!("/weir-cleanup/{prefix}chk-{n}/_metadata"));
                shared_references(&metadata_json(&bytes), &id, &mut referenced);
            }
        }
        (listing.checkpoints == retained && listing.shared == referenced && listing.others.is_empty()).then_some(())
    });
}

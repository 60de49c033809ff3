//! The users' compose deployment, end to end: `deploy/docker-compose.yml` with the test override
//! (an S3 server built here instead of MinIO), 3 TaskManager containers, a checkpointed word
//! count submitted from the `weir` CLI on the host, one TaskManager container killed
//! (`docker kill`: SIGKILL) while checkpoints run, the job recovering from its S3 checkpoint, a
//! fourth TaskManager added while it runs, and the committed output in the host's data folder
//! exact. Runs where a Docker engine answers (see `crates/weir-cli/build.rs`); reported as
//! ignored elsewhere. Everything it starts is torn down, also when it fails.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
/// The image built from the binary under test (the users' file takes it from WEIR_IMAGE).
const IMAGE: &str = "weir:compose-test";
const S3_IMAGE: &str = "weir-s3-test:latest";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One compose project (its own name, ports and data folder), taken down when dropped.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
    jobmanager: String,
}

impl Compose {
    fn cmd(&self, args: &[&str]) -> Command {
        let deploy = Path::new(REPO).join("deploy");
        let mut c = Command::new("docker-compose");
        c.arg("-p").arg(&self.project);
        c.arg("-f").arg(deploy.join("docker-compose.yml")).arg("-f").arg(deploy.join("docker-compose.test.yml"));
        c.args(args).envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    /// The `weir` CLI on the host, against the published JobManager port.
    fn weir(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--jobmanager", &self.jobmanager]);
        run(Command::new(WEIR).args(&all))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.weir(&all);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The keys under `prefix` in the S3 server's `weir` bucket, listed from inside its container.
    fn s3_objects(&self, prefix: &str) -> Vec<String> {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='http://localhost:9000', region_name='us-east-1', \
             aws_access_key_id='weir', aws_secret_access_key='weir-secret')\n\
             for page in s3.get_paginator('list_objects_v2').paginate(Bucket='weir', Prefix='{prefix}'):\n    \
             [print(o['Key']) for o in page.get('Contents', [])]\n"
        );
        ok(&mut self.cmd(&["exec", "-T", "minio", "/usr/local/bin/python3", "-c", &script])).lines().map(str::to_string).collect()
    }

    /// Container ids of the running TaskManagers.
    fn taskmanager_containers(&self) -> Vec<String> {
        ok(&mut self.cmd(&["ps", "-q", "taskmanager"])).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(out) = self.cmd(&["logs", "--no-color", "--tail", "60"]).output() {
                eprintln!("--- compose logs (last lines per service):\n{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        let _ = self.cmd(&["down", "-v", "--remove-orphans", "-t", "5"]).output();
    }
}

/// Builds the images the test needs: Weir's from the binary under test, the S3 server's once.
fn build_images() {
    let script = Path::new(REPO).join("deploy/image/build.py");
    ok(Command::new("python3").arg(&script).args(["weir", "--binary", WEIR, "--tag", IMAGE]));
    ok(Command::new("python3").arg(&script).args(["s3-test", "--tag", S3_IMAGE, "--if-stale"]));
}

/// The word count: seeded random one-letter words from a rate-limited source (so checkpoints run
/// while it does), counted per word, every count change written by the transactional file sink.
const JOB: &str = "name: compose-word-count
parallelism: 2
config:
  execution.checkpointing.interval: 500ms
pipeline:
  - source: datagen
    uid: words
    parallelism: 1
    rows-per-second: 300
    number-of-rows: 9000
    seed: 7
    fields:
      - {name: word, kind: string, length: 1}
  - key_by: word
  - count: {}
    uid: counts
  - sink: file
    uid: out
    path: /data/out
";

/// The lines an exactly-once run commits: `word,n` for n from 1 to the word's count, from the
/// same seeded generator the job's source runs.
fn expected_lines() -> Vec<String> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for b in datagen_batches(JOB) {
        let words = b.column(0).as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
        for w in words.iter() {
            *counts.entry(w.unwrap().to_string()).or_default() += 1;
        }
    }
    let mut lines: Vec<String> = counts.iter().flat_map(|(w, n)| (1..=*n).map(move |i| format!("{w},{i}"))).collect();
    lines.sort();
    lines
}

fn completed_checkpoints(c: &Compose, job: &str) -> Vec<Value> {
    let v = c.json(&["checkpoints", job]);
    v.as_array().map(|a| a.iter().filter(|c| c["status"] == "COMPLETED").cloned().collect()).unwrap_or_default()
}

#[test]
#[cfg_attr(not(docker_engine), ignore = "no Docker engine answers here (docker info, docker-compose version)")]
fn compose_cluster_survives_a_killed_taskmanager_and_scales_with_exact_output() {
    build_images();
    let data = tempfile::tempdir().unwrap();
    let expected = expected_lines();
    let job_file = data.path().join("job.yaml");
    std::fs::write(&job_file, JOB).unwrap();

    let (jm_port, rest_port, s3_port) = (free_port(), free_port(), free_port());
    let compose = Compose {
        project: format!("weirtest{}", std::process::id()),
        env: vec![
            ("WEIR_IMAGE".into(), IMAGE.into()),
            ("WEIR_DATA".into(), data.path().display().to_string()),
            ("WEIR_JOBMANAGER_PORT".into(), jm_port.to_string()),
            ("WEIR_REST_PORT".into(), rest_port.to_string()),
            ("WEIR_S3_PORT".into(), s3_port.to_string()),
        ],
        jobmanager: format!("127.0.0.1:{jm_port}"),
    };
    ok(&mut compose.cmd(&["up", "-d", "--scale", "taskmanager=3"]));
    wait_for("3 TaskManagers registered", || (compose.json(&["cluster"]).as_array().map_or(0, Vec::len) == 3).then_some(()));
    // The JobManager's REST API is published on the host.
    let (status, overview) = http(rest_port, "GET", "/overview", "", &[]);
    assert_eq!((status, overview["taskmanagers"].as_u64()), (200, Some(3)), "{overview}");

    let out = compose.weir(&["run", job_file.to_str().unwrap(), "--detached"]);
    assert!(out.status.success(), "submission failed: {}", String::from_utf8_lossy(&out.stderr));
    let job = String::from_utf8_lossy(&out.stdout).split_whitespace().find(|w| w.len() == 32).expect("a job id").to_string();

    // Kill a TaskManager that runs the job's tasks, once a checkpoint is in S3.
    wait_for("a completed checkpoint", || completed_checkpoints(&compose, &job).into_iter().next());
    let objects = compose.s3_objects(&format!("checkpoints/{job}/"));
    assert!(objects.iter().any(|k| k.ends_with("/_metadata")), "no checkpoint in the S3 bucket: {objects:?}");
    let busy: Vec<String> = compose
        .json(&["cluster"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|tm| tm["free_slots"].as_u64() < tm["slots"].as_u64())
        .map(|tm| tm["rpc_address"].as_str().unwrap().rsplit_once(':').unwrap().0.to_string())
        .collect();
    let victim = compose
        .taskmanager_containers()
        .into_iter()
        .find(|id| {
            let ip = ok(Command::new("docker").args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id]));
            busy.contains(&ip.trim().to_string())
        })
        .expect("a TaskManager container that runs tasks of the job");
    let status = compose.json(&["status", &job]);
    assert_eq!(status["state"], "RUNNING", "the job ended before the kill: {status}");
    ok(Command::new("docker").args(["kill", &victim]));

    // The job restarts from its checkpoint on the TaskManagers left.
    wait_for("the job to restart after the kill", || {
        let s = compose.json(&["status", &job]);
        (s["restarts"].as_u64() >= Some(1) && s["state"] == "RUNNING").then_some(())
    });
    let restored = completed_checkpoints(&compose, &job).len();
    assert!(restored >= 1);

    // Add a TaskManager while the job runs (compose may also start the killed container again).
    ok(&mut compose.cmd(&["up", "-d", "--no-recreate", "--scale", "taskmanager=4"]));
    wait_for("3 live TaskManagers after scaling", || (compose.json(&["cluster"]).as_array().map_or(0, Vec::len) >= 3).then_some(()));
    let status = compose.json(&["status", &job]);
    let ended = matches!(status["state"].as_str(), Some("FINISHED" | "FAILED" | "CANCELED"));
    assert!(!ended, "the job ended before the scale-out: {status}");

    let status = wait_for("the job to finish", || {
        let s = compose.json(&["status", &job]);
        matches!(s["state"].as_str(), Some("FINISHED" | "FAILED" | "CANCELED")).then_some(s)
    });
    assert_eq!(status["state"], "FINISHED", "{status}");
    let got = committed_lines(&PathBuf::from(data.path()).join("out"));
    assert_eq!(got.len(), expected.len(), "committed {} lines, expected {}", got.len(), expected.len());
    assert_eq!(got, expected, "the committed output is not exact");
}

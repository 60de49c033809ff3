//! The JobManager's REST API against a real cluster (separate processes), over plain HTTP:
//! every route of `/openapi.json` answers, a job submitted through it runs, checkpoints and
//! takes a savepoint, bad requests get 4xx with a message, and a cluster token guards what
//! changes something.

mod common;

use common::*;
use serde_json::{json, Value};

/// A checkpointed job that runs until canceled.
const ENDLESS: &str = "name: endless\nconfig:\n  execution.checkpointing.interval: 1h\npipeline:\n  - source: datagen\n    rows-per-second: 2000\n    fields:\n      - {name: k, kind: random, min: 0, max: 99}\n  - key_by: k\n  - count: {}\n  - sink: blackhole\n";

fn get(port: u16, path: &str) -> Value {
    let (status, body) = http(port, "GET", path, "", &[]);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

#[test]
fn a_job_is_submitted_watched_checkpointed_saved_and_canceled_through_rest() {
    let rest = free_port();
    let cluster = Cluster::start(1, 2, &[&format!("rest.port={rest}")]);

    let overview = get(rest, "/overview");
    assert_eq!((overview["taskmanagers"].as_u64(), overview["slots-total"].as_u64()), (Some(1), Some(2)), "{overview}");
    assert_eq!(get(rest, "/taskmanagers")["taskmanagers"].as_array().unwrap().len(), 1);

    // Submission: the YAML job file as the body.
    let (status, submitted) = http(rest, "POST", "/jobs", ENDLESS, &["Content-Type: application/yaml"]);
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["jobid"].as_str().unwrap().to_string();
    let job = wait_for("the job to run with all its tasks", || {
        let j = get(rest, &format!("/jobs/{id}"));
        (j["state"] == "RUNNING" && j["vertices"].as_array()?.iter().all(|v| v["status"] == "RUNNING")).then_some(j)
    });
    assert_eq!(job["name"], "endless");
    assert!(!job["vertices"].as_array().unwrap().is_empty());
    let listed = get(rest, "/jobs/overview");
    assert!(listed["jobs"].as_array().unwrap().iter().any(|j| j["jid"] == id.as_str() && j["state"] == "RUNNING"), "{listed}");

    // The first checkpoint comes at once, the next only after an hour.
    let checkpoints = wait_for("a completed checkpoint", || {
        let c = get(rest, &format!("/jobs/{id}/checkpoints"));
        (c["counts"]["completed"].as_u64()? >= 1).then_some(c)
    });
    let latest = &checkpoints["latest"]["completed"];
    assert_eq!(latest["status"], "COMPLETED");
    assert_eq!(latest["checkpoint_type"], "CHECKPOINT");
    assert_eq!(latest["num_acknowledged_subtasks"], latest["num_subtasks"]);
    assert!(latest["state_size"].as_u64().unwrap() > 0, "{latest}");
    let config = get(rest, &format!("/jobs/{id}/checkpoints/config"));
    assert_eq!((config["interval"].as_u64(), config["mode"].as_str()), (Some(3_600_000), Some("exactly_once")), "{config}");

    // A checkpoint on demand.
    let (status, triggered) = http(rest, "POST", &format!("/jobs/{id}/checkpoints"), "", &[]);
    assert_eq!(status, 202, "{triggered}");
    let n = triggered["checkpoint-id"].as_u64().unwrap();
    wait_for("the triggered checkpoint to complete", || {
        (get(rest, &format!("/jobs/{id}/checkpoints/details/{n}"))["status"] == "COMPLETED").then_some(())
    });

    // A new interval for the running job: the next checkpoints follow it.
    let (status, err) = http(rest, "PATCH", &format!("/jobs/{id}/checkpoints/config"), r#"{"state.backend.type": "rocksdb"}"#, &[]);
    assert_eq!(status, 400, "{err}");
    assert!(err["errors"][0].as_str().unwrap().contains("'state.backend.type' cannot change while the job runs"), "{err}");
    let (status, err) =
        http(rest, "PATCH", &format!("/jobs/{id}/checkpoints/config"), r#"{"execution.checkpointing.interval": "soon"}"#, &[]);
    assert_eq!(status, 400, "{err}");
    let (status, config) =
        http(rest, "PATCH", &format!("/jobs/{id}/checkpoints/config"), r#"{"execution.checkpointing.interval": "100ms"}"#, &[]);
    assert_eq!((status, config["interval"].as_u64()), (200, Some(100)), "{config}");
    let checkpoints = wait_for("checkpoints every 100 ms", || {
        let c = get(rest, &format!("/jobs/{id}/checkpoints"));
        (c["counts"]["completed"].as_u64()? >= n + 3).then_some(c)
    });
    let change = &checkpoints["config_changes"][0];
    assert_eq!(change["changes"]["execution.checkpointing.interval"], "100ms", "{checkpoints}");
    // The same from the CLI.
    let out = cluster.weir(&["config", &id, "-D", "execution.checkpointing.timeout=30s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("execution.checkpointing.timeout = 30s"), "{stdout}");
    assert_eq!(get(rest, &format!("/jobs/{id}/checkpoints/config"))["timeout"], 30_000);
    let out = cluster.weir(&["config", &id, "-D", "execution.checkpointing.mode=AT_LEAST_ONCE"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("'execution.checkpointing.mode' cannot change while the job runs"), "{stderr}");
    // Unaligned on: the barriers of the next checkpoints overtake the data (Flink cannot change
    // this without a restart).
    let (status, config) = http(
        rest,
        "PATCH",
        &format!("/jobs/{id}/checkpoints/config"),
        r#"{"execution.checkpointing.unaligned.enabled": true}"#,
        &["Content-Type: application/json"],
    );
    assert_eq!((status, &config["unaligned_checkpoints"]), (200, &json!(true)), "{config}");
    let since = get(rest, &format!("/jobs/{id}/checkpoints"))["history"][0]["id"].as_u64().unwrap();
    wait_for("an unaligned checkpoint after the change", || {
        let c = get(rest, &format!("/jobs/{id}/checkpoints"));
        c["history"]
            .as_array()?
            .iter()
            .any(|h| h["id"].as_u64() > Some(since) && h["status"] == "COMPLETED" && h["checkpoint_type"] == "UNALIGNED_CHECKPOINT")
            .then_some(())
    });

    // A savepoint: accepted at once, completed later, its folder holds `_metadata`.
    let target = cluster.dir.path().join("savepoints");
    let body = json!({ "target-directory": target.display().to_string() }).to_string();
    let (status, trigger) = http(rest, "POST", &format!("/jobs/{id}/savepoints"), &body, &["Content-Type: application/json"]);
    assert_eq!(status, 202, "{trigger}");
    let request = trigger["request-id"].as_str().unwrap().to_string();
    let done = wait_for("the savepoint to complete", || {
        let s = get(rest, &format!("/jobs/{id}/savepoints/{request}"));
        (s["status"]["id"] == "COMPLETED").then_some(s)
    });
    let location = done["operation"]["location"].as_str().unwrap_or_else(|| panic!("{done}"));
    let folder = location.strip_prefix("file://").unwrap_or(location);
    assert!(std::path::Path::new(folder).join("_metadata").is_file(), "{done}");
    let savepoint = wait_for("the savepoint in the history", || {
        let c = get(rest, &format!("/jobs/{id}/checkpoints"));
        c["latest"]["savepoint"].is_object().then(|| c["latest"]["savepoint"].clone())
    });
    assert_eq!(savepoint["checkpoint_type"], "SAVEPOINT");

    // Bad requests: 4xx with a message naming the problem; nothing changes.
    let (status, err) = http(rest, "GET", "/jobs/nope", "", &[]);
    assert_eq!((status, err["errors"][0].as_str().unwrap()), (404, "no job with id nope"));
    let (status, err) = http(rest, "POST", "/jobs", "name: [broken", &[]);
    assert_eq!(status, 400, "{err}");
    assert!(!err["errors"][0].as_str().unwrap().is_empty());
    let (status, err) = http(rest, "PATCH", &format!("/jobs/{id}?mode=frobnicate"), "", &[]);
    assert_eq!(status, 400, "{err}");
    assert!(err["errors"][0].as_str().unwrap().contains("unknown mode 'frobnicate'"), "{err}");
    let (status, err) = http(rest, "POST", &format!("/jobs/{id}/savepoints"), "{not json", &[]);
    assert_eq!(status, 400, "{err}");
    let (status, err) = http(rest, "GET", "/nowhere", "", &[]);
    assert_eq!(status, 404, "{err}");
    assert!(err["errors"][0].as_str().unwrap().contains("no route GET /nowhere"), "{err}");
    assert_eq!(get(rest, &format!("/jobs/{id}"))["state"], "RUNNING");

    // Cancel.
    let (status, body) = http(rest, "PATCH", &format!("/jobs/{id}?mode=cancel"), "", &[]);
    assert_eq!(status, 202, "{body}");
    wait_for("the job to be canceled", || (get(rest, &format!("/jobs/{id}"))["state"] == "CANCELED").then_some(()));
    let exceptions = get(rest, &format!("/jobs/{id}/exceptions"));
    assert!(exceptions["root-exception"].is_null(), "{exceptions}");
}

/// Every route `/openapi.json` lists is served: none answers with the "no route" error.
#[test]
fn every_route_of_the_openapi_document_answers() {
    let rest = free_port();
    let _cluster = Cluster::start(1, 1, &[&format!("rest.port={rest}")]);
    let doc = get(rest, "/openapi.json");
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{doc}");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/rest.md")).unwrap();
    for (path, methods) in paths {
        for method in methods.as_object().unwrap().keys() {
            let route = format!("`{} {path}`", method.to_uppercase());
            assert!(docs.contains(&route), "docs/rest.md does not document {route}");
        }
    }
    for (path, methods) in paths {
        for method in methods.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "0123").replace("{request}", "4567");
            let (status, _, body) = http_text(rest, &method.to_uppercase(), &concrete, "", &[]);
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
            let message = body["errors"][0].as_str().unwrap_or("");
            assert!(!message.starts_with("no route"), "{method} {path} is listed but not served: {status} {body}");
            assert_ne!(status, 405, "{method} {path}: {body}");
        }
    }
}

/// With `security.token`, requests that change something need it; reads do not.
#[test]
fn the_cluster_token_guards_requests_that_change_something() {
    let rest = free_port();
    let token = "s3cr3t-token";
    // A JobManager alone: the job waits for slots, which is enough to cancel it.
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = ["jobmanager", "-D", &format!("jobmanager.rpc.port={}", free_port()), "-D", &format!("rest.port={rest}")]
        .iter()
        .map(|s| s.to_string())
        .chain(["-D".to_string(), format!("security.token={token}")])
        .collect();
    let _jm = spawn(dir.path(), "jobmanager", &args);
    wait_for("the REST API to listen", || std::net::TcpStream::connect(("127.0.0.1", rest)).ok());
    assert_eq!(get(rest, "/overview")["taskmanagers"], 0);
    let (status, err) = http(rest, "POST", "/jobs", ENDLESS, &[]);
    assert_eq!(status, 401, "{err}");
    assert!(err["errors"][0].as_str().unwrap().contains("security.token"), "{err}");
    let (status, _) = http(rest, "POST", "/jobs", ENDLESS, &["Authorization: Bearer wrong"]);
    assert_eq!(status, 401);
    assert!(get(rest, "/jobs")["jobs"].as_array().unwrap().is_empty(), "a refused submission must not create a job");
    let bearer = format!("Authorization: Bearer {token}");
    let (status, submitted) = http(rest, "POST", "/jobs", ENDLESS, &[&bearer]);
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["jobid"].as_str().unwrap();
    let (status, _) = http(rest, "PATCH", &format!("/jobs/{id}?mode=cancel"), "", &[&bearer]);
    assert_eq!(status, 202);
    wait_for("the job to be canceled", || (get(rest, &format!("/jobs/{id}"))["state"] == "CANCELED").then_some(()));
}

/// A SQL script posted to the JobManager is compiled there, with its `SET`s: the job runs
/// with the script's checkpoint interval; a bad script is a 400 naming its line.
#[test]
fn a_sql_script_is_submitted_through_rest() {
    let rest = free_port();
    let _cluster = Cluster::start(1, 2, &[&format!("rest.port={rest}")]);
    let script = "SET 'execution.checkpointing.interval' = '250ms';\n\
        CREATE TABLE events (k BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '1000', 'fields.k.max' = '99');\n\
        CREATE TABLE counts (k BIGINT, n BIGINT) WITH ('connector' = 'blackhole');\n\
        INSERT INTO counts SELECT k, COUNT(*) FROM events GROUP BY k;\n";
    let (status, submitted) = http(rest, "POST", "/jobs", script, &["Content-Type: application/sql"]);
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["jobid"].as_str().unwrap().to_string();
    assert_eq!(submitted["jobids"].as_array().map(Vec::len), Some(1), "{submitted}");
    assert_eq!(get(rest, &format!("/jobs/{id}/checkpoints/config"))["interval"], 250, "the script's SET applies");
    wait_for("two checkpoints of the SQL job", || {
        (get(rest, &format!("/jobs/{id}/checkpoints"))["counts"]["completed"].as_u64()? >= 2).then_some(())
    });
    // The JSON form, with configuration on top of the script's.
    let body = json!({ "sql": script, "config": { "execution.checkpointing.interval": "1h" } }).to_string();
    let (status, submitted) = http(rest, "POST", "/jobs", &body, &["Content-Type: application/json"]);
    assert_eq!(status, 202, "{submitted}");
    let second = submitted["jobid"].as_str().unwrap();
    assert_eq!(get(rest, &format!("/jobs/{second}/checkpoints/config"))["interval"], 3_600_000, "config overrides the script");
    // Bad scripts: nothing is submitted.
    let (status, err) = http(rest, "POST", "/jobs", "SELEC 1;", &["Content-Type: application/sql"]);
    assert_eq!(status, 400, "{err}");
    let (status, err) = http(
        rest,
        "POST",
        "/jobs",
        "CREATE TABLE t (k BIGINT) WITH ('connector' = 'nowhere');\nINSERT INTO t SELECT 1;",
        &["Content-Type: application/sql"],
    );
    assert_eq!(status, 400, "{err}");
    assert!(err["errors"][0].as_str().unwrap().contains("nowhere"), "{err}");
    assert_eq!(get(rest, "/jobs")["jobs"].as_array().unwrap().len(), 2);
}

//! Helpers for end-to-end tests: start real `weir` processes on free loopback ports in a
//! temporary directory, talk to them through the real CLI, and kill them (SIGKILL) on drop.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Generous: the machine may be a loaded 2-core box.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `cond` until it returns Some, or panics with `what` after `DEADLINE`.
pub fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process that is SIGKILLed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL on unix
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for Cluster {
    /// A failing test keeps the cluster's directory (logs of every process) and says where.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("cluster logs kept in {}", dir.keep().display());
        }
    }
}

/// A JobManager and TaskManagers as separate `weir` processes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub jm_port: u16,
    pub jm: Proc,
    pub tms: Vec<Proc>,
    pub config: Vec<String>,
    jm_args: Vec<String>,
    next_tm: usize,
}

impl Cluster {
    /// Starts a JobManager and `tms` TaskManagers with `slots` slots each. `config` are extra
    /// `key=value` settings for every process.
    pub fn start(tms: usize, slots: u32, config: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let jm_port = free_port();
        let mut cfg: Vec<String> =
            vec!["heartbeat.interval=200ms".into(), "heartbeat.timeout=5s".into(), format!("taskmanager.numberOfTaskSlots={slots}")];
        cfg.extend(config.iter().map(|s| s.to_string()));
        let mut args = vec!["jobmanager".to_string(), "-D".into(), format!("jobmanager.rpc.port={jm_port}")];
        args.extend(cfg.iter().flat_map(|c| ["-D".to_string(), c.clone()]));
        let jm = spawn(dir.path(), "jobmanager", &args);
        let mut cluster = Cluster { dir, jm_port, jm, tms: Vec::new(), config: cfg, jm_args: args, next_tm: 0 };
        wait_for("the JobManager to listen", || std::net::TcpStream::connect(("127.0.0.1", jm_port)).ok());
        for _ in 0..tms {
            cluster.add_taskmanager();
        }
        cluster.wait_for_taskmanagers(tms);
        cluster
    }

    /// SIGKILLs the JobManager and starts it again with the same configuration and port.
    pub fn restart_jobmanager(&mut self) {
        self.jm.kill();
        self.jm = spawn(self.dir.path(), "jobmanager-restarted", &self.jm_args);
        let port = self.jm_port;
        wait_for("the restarted JobManager to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    }

    /// The job's status, or None while the JobManager does not answer.
    pub fn try_job_status(&self, id: &str) -> Option<Value> {
        let out = self.weir(&["status", id, "--output", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.jm_port)
    }

    /// Starts one more TaskManager (without waiting for it to register).
    pub fn add_taskmanager(&mut self) {
        let mut args = vec!["taskmanager".to_string(), "--jobmanager".into(), self.address()];
        args.extend(self.config.iter().flat_map(|c| ["-D".to_string(), c.clone()]));
        let name = format!("taskmanager-{}", self.next_tm);
        self.next_tm += 1;
        let p = spawn(self.dir.path(), &name, &args);
        self.tms.push(p);
    }

    /// Waits until exactly `n` TaskManagers are registered; returns the overview.
    pub fn wait_for_taskmanagers(&self, n: usize) -> Vec<Value> {
        wait_for(&format!("{n} registered TaskManagers"), || {
            let out = self.weir(&["cluster", "--output", "json"]);
            if !out.status.success() {
                return None;
            }
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            let tms = v.as_array()?.clone();
            (tms.len() == n).then_some(tms)
        })
    }

    /// Runs a CLI command against this cluster.
    pub fn weir(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.push("--jobmanager".into());
        all.push(self.address());
        weir(self.dir.path(), &all)
    }

    pub fn job_status(&self, id: &str) -> Value {
        let out = self.weir(&["status", id, "--output", "json"]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until the job is in `state`; returns its status.
    pub fn wait_for_state(&self, id: &str, state: &str) -> Value {
        wait_for(&format!("job {id} to be {state}"), || {
            let s = self.job_status(id);
            let now = s["state"].as_str().unwrap_or("").to_string();
            if now == state {
                return Some(s);
            }
            let terminal = ["FINISHED", "FAILED", "CANCELED"];
            assert!(!terminal.contains(&now.as_str()), "job ended {now} while waiting for {state}: {s}");
            None
        })
    }

    /// Submits a job file (detached); returns its id.
    pub fn submit(&self, job: &Path, extra: &[&str]) -> String {
        let mut args = vec!["run", job.to_str().unwrap(), "--detached", "--output", "json"];
        args.extend_from_slice(extra);
        let out = self.weir(&args);
        assert!(out.status.success(), "submit failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    /// Waits until the job FINISHED (riding out moments when the JobManager does not answer);
    /// returns its status. A job that FAILED or was CANCELED fails the test.
    pub fn wait_until_finished(&self, id: &str) -> Value {
        wait_for("the job to finish", || {
            let s = self.try_job_status(id)?;
            match s["state"].as_str() {
                Some("FINISHED") => Some(s),
                Some("FAILED") | Some("CANCELED") => panic!("job ended {}: {}", s["state"], s["failure"]),
                _ => None,
            }
        })
    }

    /// How many of the job's checkpoints completed (0 while the JobManager does not answer).
    pub fn completed_checkpoints(&self, id: &str) -> usize {
        let out = self.weir(&["checkpoints", id, "--output", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v.as_array().map_or(0, |a| a.iter().filter(|c| c["status"] == "COMPLETED").count())
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

pub fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
    // JobManagers of tests running side by side would all want the REST API's default port.
    let mut args = args.to_vec();
    if args.first().is_some_and(|a| a == "jobmanager") && !args.iter().any(|a| a.starts_with("rest.port=")) {
        args.extend(["-D".to_string(), "rest.port=0".to_string()]);
    }
    if args.first().is_some_and(|a| a == "taskmanager") && !args.iter().any(|a| a.starts_with("metrics.port=")) {
        args.extend(["-D".to_string(), "metrics.port=0".to_string()]);
    }
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let out = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
    let child = Command::new(WEIR)
        .args(&args)
        .current_dir(dir)
        .env_remove("WEIR_CONF_DIR")
        .env_remove("WEIR_PROPERTIES")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {WEIR}: {e}"));
    Proc { child, name: name.to_string() }
}

/// Runs the CLI to completion in `dir`.
pub fn weir(dir: &Path, args: &[String]) -> Output {
    Command::new(WEIR)
        .args(args)
        .current_dir(dir)
        .env_remove("WEIR_CONF_DIR")
        .env_remove("WEIR_PROPERTIES")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// [`weir`] with extra environment variables (e.g. `WEIR_SECURITY_TOKEN`).
pub fn weir_with_env(dir: &Path, args: &[String], env: &[(&str, &str)]) -> Output {
    Command::new(WEIR)
        .args(args)
        .current_dir(dir)
        .env_remove("WEIR_CONF_DIR")
        .env_remove("WEIR_PROPERTIES")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Deterministic text: `lines` lines of words drawn from a small vocabulary.
pub fn generate_text(lines: usize, seed: u64) -> String {
    const WORDS: &[&str] = &[
        "stream",
        "weir",
        "barrier",
        "checkpoint",
        "state",
        "key",
        "flink",
        "river",
        "water",
        "flow",
        "credit",
        "buffer",
        "Stream",
        "STATE",
        "align",
        "task",
        "slot",
        "job",
        "manager",
        "record",
    ];
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = String::new();
    for _ in 0..lines {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let n = 1 + (x >> 60) as usize % 9;
        for w in 0..n {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if w > 0 {
                out.push(' ');
            }
            out.push_str(WORDS[(x >> 33) as usize % WORDS.len()]);
        }
        out.push('\n');
    }
    out
}

/// A real S3-compatible server (moto) on a free loopback port, killed on drop.
pub struct S3Server {
    pub proc: Proc,
    pub port: u16,
}

impl S3Server {
    /// Starts moto (installed by `make test`: `pip install 'moto[server]'`) and creates `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        use std::io::{Read, Write};
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server: install it with `pip install 'moto[server]'` (make test does)");
        let mut server = S3Server { proc: Proc { child, name: "moto".into() }, port };
        wait_for("moto to listen", || {
            if let Ok(Some(status)) = server.proc.child.try_wait() {
                panic!("moto exited ({status}): install it with `pip install 'moto[server]'`");
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.contains(" 200 "), "bucket creation failed: {resp}");
        server.port = port;
        server
    }

    /// The `s3.*` settings that point Weir at this server.
    pub fn config(&self) -> Vec<String> {
        vec![
            format!("s3.endpoint=http://127.0.0.1:{}", self.port),
            "s3.access-key=testing".into(),
            "s3.secret-key=testing".into(),
            "s3.path.style.access=true".into(),
        ]
    }
}

/// The exact output of the word count: for a word seen n times, the lines `word,1` ..
/// `word,n` (each update of its count), sorted.
pub fn expected_wordcount_lines(text: &str) -> Vec<String> {
    let mut counts: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut lines = Vec::new();
    for w in text.split_whitespace() {
        let c = counts.entry(w).or_default();
        *c += 1;
        lines.push(format!("{w},{c}"));
    }
    lines.sort();
    lines
}

/// The committed lines of a file sink's directory, sorted. Names starting with '.' or '_' are
/// in progress or pending, not output; a directory that does not exist holds none.
pub fn committed_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with('.') && !name.starts_with('_') {
            lines.extend(std::fs::read_to_string(entry.path()).unwrap().lines().map(str::to_string));
        }
    }
    lines.sort();
    lines
}

/// Every batch a job's first operator, a datagen source run as its one subtask, emits without
/// its rate limit: what an undisturbed run's source produces, to compute expected output from.
pub fn datagen_batches(yaml: &str) -> Vec<arrow_array::RecordBatch> {
    use weir_core::graph::OperatorSpec;
    use weir_core::operator::{SourcePoll, SubtaskInfo};
    let (graph, _) = weir_core::job::compile_job(yaml, "job", &Default::default(), &Default::default()).unwrap();
    let op = &graph.vertices[0].operators[0];
    let OperatorSpec::DatagenSource(spec) = &op.spec else { panic!("datagen expected") };
    let mut spec = spec.clone();
    spec.rows_per_second = None;
    let info =
        SubtaskInfo { job_id: "x".into(), attempt: 0, vertex: 0, vertex_name: "d".into(), index: 0, parallelism: 1, max_parallelism: 128 };
    let mut reader = weir_connectors::datagen_reader(&spec, &info, op.output_schema.clone());
    let mut batches = Vec::new();
    loop {
        match reader.poll_next().unwrap() {
            SourcePoll::Batch(b) => batches.push(b),
            SourcePoll::Idle(_) => {}
            SourcePoll::End => return batches,
        }
    }
}

/// One HTTP/1.1 request to `127.0.0.1:port`: (status, JSON body). `headers` are extra lines.
pub fn http(port: u16, method: &str, path: &str, body: &str, headers: &[&str]) -> (u16, Value) {
    let (status, _, body) = http_text(port, method, path, body, headers);
    let json = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body}"))
    };
    (status, json)
}

/// One HTTP/1.1 request to `127.0.0.1:port`: (status, head, body as text).
pub fn http_text(port: u16, method: &str, path: &str, body: &str, headers: &[&str]) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    // Read until the body is complete: some servers (chromedriver) keep the connection open
    // whatever `Connection: close` asks.
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
        if response_complete(&response) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP response: {text}"));
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {head}"));
    // Bodies come whole or chunked; a chunked body's JSON sits between its size lines.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    (status, head.to_string(), body)
}

/// Whether `response` holds a whole HTTP response: its head, and a body of its
/// `Content-Length` or ending with the last chunk.
fn response_complete(response: &[u8]) -> bool {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let body = &response[end + 4..];
    if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok()) {
        return body.len() >= len;
    }
    head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n")
}

pub fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else { return out };
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

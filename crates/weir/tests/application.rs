//! Application mode end to end, with real processes: the word count application
//! (`src/bin/weir_wordcount_app.rs`) started as its own JobManager and TaskManagers, its job
//! submitted with `run --jobmanager`, a TaskManager SIGKILLed while checkpoints run, and the
//! committed output exact; and a session cluster (`weir jobmanager`/`weir taskmanager`)
//! refusing the program's job, naming a function it lacks.
//!
//! The `weir` binary is the workspace's other binary, found beside the application's in the
//! target directory (cargo hands a test only its own package's binaries): build the
//! workspace's tests (`cargo test --workspace`) so that it is there and current.

mod support;

use support::*;

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const APP: &str = env!("CARGO_BIN_EXE_weir-wordcount-app");

/// Generous: the machine may be a loaded 2-core box.
const DEADLINE: Duration = Duration::from_secs(180);

fn weir_binary() -> PathBuf {
    let path = Path::new(APP).with_file_name(format!("weir{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is missing: build the workspace's tests (cargo test --workspace --no-run)", path.display());
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `cond` until it returns Some, or panics with `what` after `DEADLINE`.
fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
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
struct Proc {
    child: Child,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The processes' directory, the word count's environment, and the JobManager's port.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    env: Vec<(String, String)>,
}

impl Setup {
    fn new(lines: &str, line_delay_us: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("input.txt"), lines).unwrap();
        let env = vec![
            ("WORDCOUNT_INPUT".to_string(), dir.path().join("input.txt").display().to_string()),
            ("WORDCOUNT_OUTPUT".to_string(), dir.path().join("out").display().to_string()),
            ("WORDCOUNT_LINE_DELAY_US".to_string(), line_delay_us.to_string()),
        ];
        Setup { dir, port: free_port(), env }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn command(&self, program: &Path, args: &[String]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("WEIR_CONF_DIR")
            .env_remove("WEIR_PROPERTIES")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    /// Starts `program args` in the background, its stdout and stderr in `<name>.out`/`.log`.
    fn spawn(&self, program: &Path, name: &str, args: &[String]) -> Proc {
        // JobManagers of tests running side by side would all want the REST API's default port.
        let mut args = args.to_vec();
        if args.first().is_some_and(|a| a == "jobmanager") && !args.iter().any(|a| a.starts_with("rest.port=")) {
            args.extend(["-D".to_string(), "rest.port=0".to_string()]);
        }
        if args.first().is_some_and(|a| a == "taskmanager") && !args.iter().any(|a| a.starts_with("metrics.port=")) {
            args.extend(["-D".to_string(), "metrics.port=0".to_string()]);
        }
        let args = &args;
        let out = std::fs::File::create(self.dir.path().join(format!("{name}.out"))).unwrap();
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = self.command(program, args).stdout(out).stderr(log).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child }
    }

    fn output_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.out"))).unwrap_or_default()
    }

    /// Runs `program args` to completion.
    fn run(&self, program: &Path, args: &[String]) -> Output {
        self.command(program, args).output().unwrap()
    }

    /// A `weir` client command against the JobManager, as JSON (None if it failed).
    fn weir_json(&self, args: &[&str]) -> Option<Value> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--jobmanager".to_string(), self.address(), "--output".into(), "json".into()]);
        let out = self.run(&weir_binary(), &all);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    fn wait_for_taskmanagers(&self, n: usize) {
        wait_for(&format!("{n} registered TaskManagers"), || {
            self.weir_json(&["cluster"]).and_then(|v| (v.as_array()?.len() == n).then_some(()))
        });
    }

    fn wait_for_jobmanager(&self) {
        let port = self.port;
        wait_for("the JobManager to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    }

    fn completed_checkpoints(&self, id: &str) -> usize {
        self.weir_json(&["checkpoints", id])
            .and_then(|v| v.as_array().map(|a| a.iter().filter(|c| c["status"] == "COMPLETED").count()))
            .unwrap_or(0)
    }
}

impl Drop for Setup {
    /// A failing test keeps the directory (logs of every process) and says where.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("application test logs kept in {}", dir.keep().display());
        }
    }
}

fn dynamic(settings: &[String]) -> Vec<String> {
    settings.iter().flat_map(|s| ["-D".to_string(), s.clone()]).collect()
}

/// `lines` lines of words from a small vocabulary, deterministic.
fn text(lines: usize) -> String {
    const WORDS: &[&str] = &["to", "be", "or", "not", "that", "is", "the", "question", "sleep", "dream"];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = String::new();
    for _ in 0..lines {
        for i in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i > 0 {
                out.push(' ');
            }
            out.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        }
        out.push('\n');
    }
    out
}

/// Every running count the word count emits: `word n` for n in 1..=count(word), sorted.
fn expected_running_counts(text: &str) -> Vec<String> {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for w in text.split_whitespace() {
        *counts.entry(w).or_default() += 1;
    }
    let mut lines: Vec<String> = counts.iter().flat_map(|(w, n)| (1..=*n).map(move |i| format!("{w} {i}"))).collect();
    lines.sort();
    lines
}

#[test]
fn application_word_count_is_exact_after_a_taskmanager_kill() {
    let input = text(60_000);
    let setup = Setup::new(&input, 150);
    let app = Path::new(APP);
    let cluster =
        vec!["heartbeat.interval=200ms".to_string(), "heartbeat.timeout=5s".to_string(), "taskmanager.numberOfTaskSlots=2".to_string()];
    let mut jm_args = vec!["jobmanager".to_string(), "-D".into(), format!("jobmanager.rpc.port={}", setup.port)];
    jm_args.extend(dynamic(&cluster));
    let _jm = setup.spawn(app, "jobmanager", &jm_args);
    setup.wait_for_jobmanager();
    let mut tm_args = vec!["taskmanager".to_string(), "--jobmanager".into(), setup.address()];
    tm_args.extend(dynamic(&cluster));
    let mut tms = vec![setup.spawn(app, "taskmanager-0", &tm_args), setup.spawn(app, "taskmanager-1", &tm_args)];
    setup.wait_for_taskmanagers(2);

    let job = vec![
        format!("execution.checkpointing.dir=file://{}", setup.dir.path().join("checkpoints").display()),
        "restart-strategy.type=fixed-delay".to_string(),
        "restart-strategy.fixed-delay.attempts=20".to_string(),
        "restart-strategy.fixed-delay.delay=200ms".to_string(),
    ];
    let mut run_args = vec!["run".to_string(), "--jobmanager".into(), setup.address()];
    run_args.extend(dynamic(&job));
    let mut run = setup.spawn(app, "run", &run_args);
    let id = wait_for("the job to be submitted", || {
        let out = setup.output_of("run");
        out.lines().find_map(|l| l.strip_prefix("Job ").and_then(|r| r.strip_suffix(" submitted")).map(str::to_string))
    });

    wait_for("a completed checkpoint", || (setup.completed_checkpoints(&id) > 0).then_some(()));
    let status = setup.weir_json(&["status", &id]).expect("the job's status");
    assert_eq!(status["state"], "RUNNING", "the job must still run when the TaskManager is killed: {status}");
    tms[0].kill();
    tms.push(setup.spawn(app, "taskmanager-2", &tm_args));

    let exit = wait_for("the run command to return", || run.child.try_wait().unwrap());
    let status = setup.weir_json(&["status", &id]).expect("the job's status");
    assert!(exit.success(), "run failed: {}\n{status}", std::fs::read_to_string(setup.dir.path().join("run.log")).unwrap());
    assert_eq!(status["state"], "FINISHED", "{status}");
    assert!(status["restarts"].as_u64().unwrap() >= 1, "the kill must have restarted the job: {status}");
    assert!(setup.output_of("run").contains(&format!("job {id} FINISHED")), "{}", setup.output_of("run"));
    assert_eq!(committed_lines(&setup.dir.path().join("out")), expected_running_counts(&input));
}

/// The application's JobManager records the program's graph in its catalog: SIGKILLed after a
/// checkpoint and started again, it resumes the job from that checkpoint once the
/// application's TaskManagers registered again, and the output is exact. The waiting `run`
/// client rides out the JobManager's absence.
#[test]
fn application_job_resumes_after_a_jobmanager_restart() {
    let input = text(60_000);
    let setup = Setup::new(&input, 150);
    let app = Path::new(APP);
    let cluster = vec![
        "heartbeat.interval=200ms".to_string(),
        "heartbeat.timeout=5s".to_string(),
        "taskmanager.numberOfTaskSlots=2".to_string(),
        format!("jobmanager.catalog.dir={}", setup.dir.path().join("catalog").display()),
    ];
    let mut jm_args = vec!["jobmanager".to_string(), "-D".into(), format!("jobmanager.rpc.port={}", setup.port)];
    jm_args.extend(dynamic(&cluster));
    let mut jm = setup.spawn(app, "jobmanager", &jm_args);
    setup.wait_for_jobmanager();
    let mut tm_args = vec!["taskmanager".to_string(), "--jobmanager".into(), setup.address()];
    tm_args.extend(dynamic(&cluster));
    let _tm = setup.spawn(app, "taskmanager", &tm_args);
    setup.wait_for_taskmanagers(1);

    let mut run_args = vec!["run".to_string(), "--jobmanager".into(), setup.address(), "-D".into()];
    run_args.push(format!("execution.checkpointing.dir=file://{}", setup.dir.path().join("checkpoints").display()));
    let mut run = setup.spawn(app, "run", &run_args);
    let id = wait_for("the job to be submitted", || {
        let out = setup.output_of("run");
        out.lines().find_map(|l| l.strip_prefix("Job ").and_then(|r| r.strip_suffix(" submitted")).map(str::to_string))
    });
    wait_for("a completed checkpoint", || (setup.completed_checkpoints(&id) > 0).then_some(()));
    let status = setup.weir_json(&["status", &id]).expect("the job's status");
    assert_eq!(status["state"], "RUNNING", "the job must still run when the JobManager is killed: {status}");
    jm.kill();
    let _jm = setup.spawn(app, "jobmanager-restarted", &jm_args);
    setup.wait_for_jobmanager();

    let exit = wait_for("the run command to return", || run.child.try_wait().unwrap());
    let status = setup.weir_json(&["status", &id]).expect("the recovered job's status");
    assert!(exit.success(), "run failed: {}\n{status}", std::fs::read_to_string(setup.dir.path().join("run.log")).unwrap());
    assert_eq!(status["state"], "FINISHED", "{status}");
    assert!(status["attempt"].as_u64().unwrap() >= 1, "the job must have been recovered as a new attempt: {status}");
    assert_eq!(committed_lines(&setup.dir.path().join("out")), expected_running_counts(&input));
}

/// A program job stopped with a savepoint (`weir stop`) starts again from it with
/// `run -s`: its sources, keyed state and sink continue where the savepoint left them, and
/// the two runs' output together is exact.
#[test]
fn application_job_resumes_from_a_stop_savepoint_with_run_s() {
    let input = text(60_000);
    let setup = Setup::new(&input, 150);
    let app = Path::new(APP);
    let cluster =
        vec!["heartbeat.interval=200ms".to_string(), "heartbeat.timeout=5s".to_string(), "taskmanager.numberOfTaskSlots=2".to_string()];
    let mut jm_args = vec!["jobmanager".to_string(), "-D".into(), format!("jobmanager.rpc.port={}", setup.port)];
    jm_args.extend(dynamic(&cluster));
    let _jm = setup.spawn(app, "jobmanager", &jm_args);
    setup.wait_for_jobmanager();
    let mut tm_args = vec!["taskmanager".to_string(), "--jobmanager".into(), setup.address()];
    tm_args.extend(dynamic(&cluster));
    let _tm = setup.spawn(app, "taskmanager", &tm_args);
    setup.wait_for_taskmanagers(1);
    let checkpoints = format!("execution.checkpointing.dir=file://{}", setup.dir.path().join("checkpoints").display());

    let out = setup.run(app, &["run", "--jobmanager", &setup.address(), "--detached", "-D", &checkpoints].map(String::from));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.lines().find_map(|l| l.strip_prefix("Job ").and_then(|r| r.strip_suffix(" submitted"))).expect("the job id");
    wait_for("a completed checkpoint", || (setup.completed_checkpoints(id) > 0).then_some(()));
    let savepoints = setup.dir.path().join("savepoints");
    let stop = setup.weir_json(&["stop", id, "--savepoint-dir", savepoints.to_str().unwrap()]).expect("stop with a savepoint");
    let savepoint = stop["path"].as_str().expect("the savepoint's path").to_string();
    let status = wait_for("the stopped job to finish", || {
        setup.weir_json(&["status", id]).filter(|s| s["state"] == "FINISHED" || s["state"] == "FAILED")
    });
    assert_eq!(status["state"], "FINISHED", "{status}");
    let partial = committed_lines(&setup.dir.path().join("out"));
    let expected = expected_running_counts(&input);
    assert!(!partial.is_empty() && partial.len() < expected.len(), "the stop must cut the input: {} lines", partial.len());

    let out = setup.run(app, &["run", "--jobmanager", &setup.address(), "-s", &savepoint, "-D", &checkpoints].map(String::from));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(committed_lines(&setup.dir.path().join("out")), expected);
}

/// A session cluster (`weir jobmanager`, `weir taskmanager`) refuses the program's job, first
/// for want of any TaskManager, then naming a function its TaskManager lacks; once one of the
/// application's TaskManagers joins, the job runs there only, beside the session TaskManager.
#[test]
fn a_session_cluster_refuses_a_program_job_naming_its_function() {
    let input = "to be or not to be\nthat is the question\n";
    let setup = Setup::new(input, 0);
    let weir = weir_binary();
    let app = Path::new(APP);
    let _jm = setup.spawn(&weir, "jobmanager", &["jobmanager".to_string(), "-D".into(), format!("jobmanager.rpc.port={}", setup.port)]);
    setup.wait_for_jobmanager();
    let run_args = vec!["run".to_string(), "--jobmanager".into(), setup.address()];

    let out = setup.run(app, &run_args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no TaskManager is registered") && err.contains("taskmanager --jobmanager"), "{err}");

    let _session_tm = setup.spawn(&weir, "taskmanager", &["taskmanager".to_string(), "--jobmanager".into(), setup.address()]);
    setup.wait_for_taskmanagers(1);
    let out = setup.run(app, &run_args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a session TaskManager cannot run the program's functions");
    assert!(err.contains("no registered TaskManager carries the program's function 'counts'"), "{err}");
    assert!(err.contains("weir taskmanager"), "{err}");
    assert_eq!(setup.weir_json(&["list"]).map(|v| v.as_array().map_or(0, Vec::len)), Some(0), "no job was added");

    // The job needs 2 slots: the application's TaskManager offers them, the session
    // TaskManager's free slot is skipped (a subtask deployed there would fail the job).
    let app_tm = ["taskmanager", "--jobmanager", &setup.address(), "-D", "taskmanager.numberOfTaskSlots=2"].map(String::from);
    let _app_tm = setup.spawn(app, "app-taskmanager", &app_tm);
    setup.wait_for_taskmanagers(2);
    let tms = setup.weir_json(&["cluster"]).expect("the TaskManagers");
    let mut carried: Vec<usize> = tms.as_array().unwrap().iter().map(|t| t["functions"].as_array().unwrap().len()).collect();
    carried.sort();
    assert!(carried[0] == 0 && carried[1] > 0, "weir cluster shows which TaskManager carries the functions: {tms}");
    let out = setup.run(app, &run_args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let jobs = setup.weir_json(&["list"]).expect("the job list");
    assert_eq!(jobs[0]["state"], "FINISHED", "{jobs}");
    assert_eq!(jobs[0]["restarts"], 0, "{jobs}");
    assert_eq!(committed_lines(&setup.dir.path().join("out")), expected_running_counts(input));
}

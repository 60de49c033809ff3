//! End-to-end tests of the control plane's security: a cluster started with `security.token`
//! refuses every client and TaskManager without it; with `security.ssl.internal.*` every gRPC
//! path is mutual TLS (certificates made here with rcgen); a JobManager binds the address it is
//! configured with, and says so loudly when it listens beyond loopback without a token.
//! See docs/security.md.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

const TOKEN: &str = "tok-5f1d0c-never-logged";

/// A JobManager and TaskManagers started with the same `-D` settings, and a CLI that passes
/// the settings it is given (so each test chooses what the client knows).
struct SecureCluster {
    dir: tempfile::TempDir,
    jm_port: u16,
    _jm: Proc,
    tms: Vec<Proc>,
    config: Vec<String>,
}

impl SecureCluster {
    /// Starts the JobManager on 127.0.0.1 only, then `tms` TaskManagers (2 slots each), without
    /// waiting for them to register.
    fn start(tms: usize, config: &[String]) -> SecureCluster {
        let dir = tempfile::tempdir().unwrap();
        let jm_port = free_port();
        let mut cfg: Vec<String> = vec![
            "jobmanager.rpc.address=127.0.0.1".into(),
            "heartbeat.interval=200ms".into(),
            "heartbeat.timeout=5s".into(),
            "taskmanager.numberOfTaskSlots=2".into(),
        ];
        cfg.extend(config.iter().cloned());
        let mut args = vec!["jobmanager".to_string(), "-D".into(), format!("jobmanager.rpc.port={jm_port}")];
        args.extend(defines(&cfg));
        let jm = spawn(dir.path(), "jobmanager", &args);
        wait_for("the JobManager to listen", || std::net::TcpStream::connect(("127.0.0.1", jm_port)).ok());
        let mut cluster = SecureCluster { dir, jm_port, _jm: jm, tms: Vec::new(), config: cfg };
        for _ in 0..tms {
            let config = cluster.config.clone();
            cluster.add_taskmanager(&config);
        }
        cluster
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.jm_port)
    }

    /// Starts a TaskManager with `config` (not necessarily the cluster's).
    fn add_taskmanager(&mut self, config: &[String]) {
        let mut args = vec!["taskmanager".to_string(), "--jobmanager".into(), self.address()];
        args.extend(defines(config));
        let name = format!("taskmanager-{}", self.tms.len());
        self.tms.push(spawn(self.dir.path(), &name, &args));
    }

    /// Runs the CLI against this cluster with the settings `client` (as `-D`).
    fn weir(&self, client: &[String], args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--jobmanager".to_string(), self.address()]);
        all.extend(defines(client));
        weir(self.dir.path(), &all)
    }

    /// The registered TaskManagers, as the CLI with `client` settings lists them.
    fn taskmanagers(&self, client: &[String]) -> Option<Vec<Value>> {
        let out = self.weir(client, &["cluster", "--output", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<Value>(&out.stdout).ok()?.as_array().cloned()
    }

    fn wait_for_taskmanagers(&self, client: &[String], n: usize) {
        wait_for(&format!("{n} registered TaskManagers"), || self.taskmanagers(client).filter(|tms| tms.len() == n));
    }

    /// Writes the word count over `text` reading `<name>.txt` and writing `<name>-out/`.
    fn wordcount(&self, name: &str, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let input = self.dir.path().join(format!("{name}.txt"));
        std::fs::write(&input, text).unwrap();
        let out = self.dir.path().join(format!("{name}-out"));
        let job = self.dir.path().join(format!("{name}.yaml"));
        let yaml = format!(
            "name: {name}\npipeline:\n  - source: file\n    path: {}\n  - split: {{}}\n  - key_by: word\n  - count: {{}}\n  - sink: file\n    path: {}\n",
            input.display(),
            out.display()
        );
        std::fs::write(&job, yaml).unwrap();
        (job, out)
    }

    /// Everything the JobManager and TaskManagers logged so far.
    fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log" || e == "out") {
                all.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
        all
    }
}

impl Drop for SecureCluster {
    /// A failing test keeps the cluster's directory (logs of every process) and says where.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("cluster logs kept in {}", dir.keep().display());
        }
    }
}

fn defines(config: &[String]) -> Vec<String> {
    config.iter().flat_map(|c| ["-D".to_string(), c.clone()]).collect()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs the word count attached through `run` and checks it FINISHED with exact output.
fn assert_wordcount_finishes(name: &str, out_dir: &Path, input: &str, run: Output) {
    assert!(run.status.success(), "{name}: run failed: {}", text(&run));
    let status: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(status["state"], "FINISHED", "{name}: {status}");
    assert_eq!(committed_lines(out_dir), expected_wordcount_lines(input), "{name}");
}

#[test]
fn a_cluster_with_a_token_refuses_clients_without_it_and_serves_those_with_it() {
    let token = format!("security.token={TOKEN}");
    let catalog = tempfile::tempdir().unwrap();
    let cluster = SecureCluster::start(1, &[token.clone(), format!("jobmanager.catalog.dir={}", catalog.path().display())]);
    let with_token = [token.clone()];
    cluster.wait_for_taskmanagers(&with_token, 1);

    // No token: refused, naming the key, for every kind of call.
    for args in [&["list"][..], &["cluster"], &["status", "0123"], &["cancel", "0123"]] {
        let out = cluster.weir(&[], args);
        assert!(!out.status.success(), "{args:?} without a token succeeded: {}", text(&out));
        let msg = text(&out);
        assert!(msg.contains("authentication") && msg.contains("security.token"), "{args:?}: {msg}");
    }
    // A wrong token: refused, and neither token is shown.
    let out = cluster.weir(&["security.token=guessed-wrong".into()], &["list"]);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("wrong token") && msg.contains("security.token"), "{msg}");
    assert!(!msg.contains("guessed-wrong") && !msg.contains(TOKEN), "{msg}");
    // A submission without the token starts nothing.
    let input = generate_text(400, 11);
    let (job, _) = cluster.wordcount("refused", &input);
    let out = cluster.weir(&[], &["run", job.to_str().unwrap(), "--detached"]);
    assert!(!out.status.success() && text(&out).contains("security.token"), "{}", text(&out));

    // The token from -D: the job runs to FINISHED with exact output.
    let (job, out_dir) = cluster.wordcount("by-define", &input);
    let run = cluster.weir(&with_token, &["run", job.to_str().unwrap(), "--output", "json"]);
    assert_wordcount_finishes("token by -D", &out_dir, &input, run);

    // The token from WEIR_SECURITY_TOKEN.
    let (job, out_dir) = cluster.wordcount("by-env", &input);
    let args: Vec<String> =
        ["run", job.to_str().unwrap(), "--output", "json", "--jobmanager", &cluster.address()].iter().map(|s| s.to_string()).collect();
    let run = weir_with_env(cluster.dir.path(), &args, &[("WEIR_SECURITY_TOKEN", TOKEN)]);
    assert_wordcount_finishes("token by WEIR_SECURITY_TOKEN", &out_dir, &input, run);

    let jobs = cluster.weir(&with_token, &["list", "--output", "json"]);
    let jobs: Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 2, "only the two authenticated submissions exist: {jobs}");
    // Bound to loopback with a token: no warning; and the token is never logged, nor part of a
    // job's configuration (the catalog records it).
    let logs = cluster.logs();
    assert!(!logs.contains("WITHOUT AUTHENTICATION"), "{logs}");
    assert!(!logs.contains(TOKEN), "the token appears in a log");
    let mut recorded = 0;
    for entry in std::fs::read_dir(catalog.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        recorded += usize::from(text.contains("by-define") || text.contains("by-env"));
        assert!(!text.contains(TOKEN), "the token is in the job catalog: {text}");
    }
    assert_eq!(recorded, 2, "both jobs are in the catalog");
}

#[test]
fn a_taskmanager_with_a_wrong_token_cannot_register() {
    let token = format!("security.token={TOKEN}");
    let mut cluster = SecureCluster::start(0, std::slice::from_ref(&token));
    let mut wrong = cluster.config.clone();
    wrong.retain(|c| !c.starts_with("security.token="));
    wrong.push("security.token=not-the-cluster-token".into());
    cluster.add_taskmanager(&wrong);
    wait_for("the TaskManager to log its refusal", || {
        let log = std::fs::read_to_string(cluster.dir.path().join("taskmanager-0.log")).ok()?;
        (log.contains("cannot register with the JobManager") && log.contains("security.token")).then_some(())
    });
    assert_eq!(cluster.taskmanagers(&[token.clone()]).expect("the cluster answers with the token"), Vec::<Value>::new());

    // A TaskManager without any token is refused the same way; one with it joins.
    let mut none = cluster.config.clone();
    none.retain(|c| !c.starts_with("security.token="));
    cluster.add_taskmanager(&none);
    wait_for("the tokenless TaskManager to log its refusal", || {
        let log = std::fs::read_to_string(cluster.dir.path().join("taskmanager-1.log")).ok()?;
        log.contains("security.token").then_some(())
    });
    let config = cluster.config.clone();
    cluster.add_taskmanager(&config);
    cluster.wait_for_taskmanagers(&[token], 1);
    assert!(!cluster.logs().contains("not-the-cluster-token"), "a token appears in a log");
}

/// A CA and one certificate for every node (SAN `127.0.0.1` and `localhost`), as PEM files
/// in `dir`; returns the `security.ssl.internal.*` settings that use them.
fn make_certificates(dir: &Path, name: &str) -> Vec<String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
    let ca = ca.self_signed(&ca_key).unwrap();
    let node_key = KeyPair::generate().unwrap();
    let mut node = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    node.distinguished_name.push(DnType::CommonName, format!("{name} node"));
    node.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let node = node.signed_by(&node_key, &ca, &ca_key).unwrap();
    let path = |file: &str| dir.join(format!("{name}-{file}")).display().to_string();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("node.pem"), node.pem()).unwrap();
    std::fs::write(path("node.key"), node_key.serialize_pem()).unwrap();
    vec![
        "security.ssl.internal.enabled=true".into(),
        format!("security.ssl.internal.cert={}", path("node.pem")),
        format!("security.ssl.internal.key={}", path("node.key")),
        format!("security.ssl.internal.trust-cert={}", path("ca.pem")),
    ]
}

#[test]
fn a_tls_cluster_runs_a_job_across_two_taskmanagers_and_refuses_plaintext_and_foreign_clients() {
    let certs = tempfile::tempdir().unwrap();
    let mut security = make_certificates(certs.path(), "cluster");
    security.push(format!("security.token={TOKEN}"));
    let cluster = SecureCluster::start(2, &security);
    cluster.wait_for_taskmanagers(&security, 2);

    // Parallelism 2 over two TaskManagers of 2 slots each: the keyed exchange crosses them.
    let input = generate_text(2_000, 5);
    let (job, out_dir) = cluster.wordcount("tls", &input);
    let run = cluster.weir(&security, &["run", job.to_str().unwrap(), "-p", "2", "--output", "json"]);
    assert_wordcount_finishes("TLS cluster", &out_dir, &input, run);

    // A plaintext client (with the right token) gets a clear error, not a hang.
    let plaintext = [format!("security.token={TOKEN}")];
    let out = cluster.weir(&plaintext, &["list"]);
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("cannot reach the JobManager") && msg.contains("security.ssl.internal.enabled"), "{msg}");

    // A client whose certificate another CA signed is refused by the JobManager, and does not
    // trust the JobManager's certificate either.
    let mut foreign = make_certificates(certs.path(), "foreign");
    foreign.push(format!("security.token={TOKEN}"));
    let out = cluster.weir(&foreign, &["list"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cannot reach the JobManager"), "{}", text(&out));

    // A TLS client of a cluster without TLS is told what to check.
    let plain_cluster = SecureCluster::start(0, &[]);
    let out = plain_cluster.weir(&security, &["list"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("uses TLS"), "{}", text(&out));
}

#[test]
fn tls_files_that_cannot_be_read_are_named_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let args: Vec<String> = [
        "list",
        "--jobmanager",
        "127.0.0.1:1",
        "-D",
        "security.ssl.internal.enabled=true",
        "-D",
        &format!("security.ssl.internal.cert={missing}"),
        "-D",
        &format!("security.ssl.internal.key={missing}"),
        "-D",
        &format!("security.ssl.internal.trust-cert={missing}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = weir(dir.path(), &args);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("security.ssl.internal.cert") && msg.contains("missing.pem"), "{msg}");

    // TLS enabled without its files: the missing key is named.
    let args: Vec<String> =
        ["list", "--jobmanager", "127.0.0.1:1", "-D", "security.ssl.internal.enabled=true"].iter().map(|s| s.to_string()).collect();
    let msg = text(&weir(dir.path(), &args));
    assert!(msg.contains("security.ssl.internal.cert"), "{msg}");
}

#[test]
fn the_jobmanager_binds_its_rpc_address_and_warns_when_open_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args: Vec<String> = ["jobmanager", "-D", "jobmanager.rpc.address=127.0.0.1", "-D", &format!("jobmanager.rpc.port={port}")]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let _jm = spawn(dir.path(), "loopback", &args);
    let listening = wait_for("the JobManager to say where it listens", || {
        let out = std::fs::read_to_string(dir.path().join("loopback.out")).ok()?;
        out.lines().find(|l| l.starts_with("JobManager listening on")).map(str::to_string)
    });
    assert_eq!(listening, format!("JobManager listening on 127.0.0.1:{port}"));
    // Another loopback address of this machine reaches a server bound to 0.0.0.0, not this one.
    #[cfg(target_os = "linux")]
    assert!(std::net::TcpStream::connect(("127.0.0.2", port)).is_err(), "the JobManager answers on 127.0.0.2");
    let log = std::fs::read_to_string(dir.path().join("loopback.log")).unwrap();
    assert!(!log.contains("WITHOUT AUTHENTICATION"), "{log}");

    // Bound to every interface without a token: a loud warning naming the key.
    let port = free_port();
    let args: Vec<String> = ["jobmanager", "-D", "jobmanager.bind-host=0.0.0.0", "-D", &format!("jobmanager.rpc.port={port}")]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let _open = spawn(dir.path(), "open", &args);
    let warning = wait_for("the warning of an open JobManager", || {
        let log = std::fs::read_to_string(dir.path().join("open.log")).ok()?;
        log.lines().find(|l| l.contains("WITHOUT AUTHENTICATION")).map(str::to_string)
    });
    assert!(warning.contains("WARN") && warning.contains("security.token") && warning.contains(&format!("0.0.0.0:{port}")), "{warning}");
}

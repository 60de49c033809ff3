//! A running cluster watched from outside, as an operator does: live task metrics through the
//! REST API, Prometheus scrapes of the JobManager and of a TaskManager parsed by a Prometheus
//! text-format parser, and the web UI in a real headless browser (Debian's `chromium` driven
//! through `chromedriver` over the WebDriver protocol) that opens a backpressured job, watches
//! its checkpoints tab fill, triggers a checkpoint and changes the job's checkpoint interval
//! with the configure dialog. The browser test saves screenshots as test artifacts, under
//! `$CARGO_TARGET_TMPDIR/web-ui/`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};

/// A job whose source is backpressured: rows are keyed to another task that counts them and
/// passes at most `rate` a second on, so the source's output channels stay full.
fn backpressured_job(interval: &str, unaligned: bool, rate: u32) -> String {
    format!(
        "name: backpressured\nconfig:\n  execution.checkpointing.interval: {interval}\n  execution.checkpointing.unaligned.enabled: {unaligned}\n\
         pipeline:\n  - source: datagen\n    fields:\n      - {{name: k, kind: random, min: 0, max: 999}}\n  - key_by: k\n\
         \x20 - count: {{}}\n  - throttle: {{rows-per-second: {rate}}}\n  - sink: blackhole\n"
    )
}

fn get(port: u16, path: &str) -> Value {
    let (status, body) = http(port, "GET", path, "", &[]);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

fn submit(rest: u16, job: &str) -> String {
    let (status, submitted) = http(rest, "POST", "/jobs", job, &["Content-Type: application/yaml"]);
    assert_eq!(status, 202, "{submitted}");
    submitted["jobid"].as_str().unwrap().to_string()
}

/// Scrapes `/metrics` on `port` and parses it as Prometheus does.
fn scrape(port: u16) -> prometheus_parse::Scrape {
    let (status, head, body) = http_text(port, "GET", "/metrics", "", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap_or_else(|e| panic!("not Prometheus text ({e}): {body}"))
}

fn value(v: &prometheus_parse::Value) -> f64 {
    match v {
        prometheus_parse::Value::Counter(x) | prometheus_parse::Value::Gauge(x) | prometheus_parse::Value::Untyped(x) => *x,
        other => panic!("unexpected sample {other:?}"),
    }
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(|s| value(&s.value))
}

/// Buffer debloating as a user sees it: a keyed job backpressured across two TaskManagers asks
/// its senders for small buffers (`debloatedBufferSize`), and its unaligned checkpoints persist
/// much less in-flight data than the same job with debloating off.
#[test]
fn buffer_debloating_shrinks_the_in_flight_data_of_a_backpressured_job() {
    // Mean persisted bytes of four unaligned checkpoints, and the buffer size the counting task
    // asked for, with debloating on or off.
    let run = |debloat: bool| -> (f64, u64) {
        let rest = free_port();
        let settings = [
            format!("rest.port={rest}"),
            format!("taskmanager.network.memory.buffer-debloat.enabled={debloat}"),
            "taskmanager.network.memory.buffer-debloat.target=100ms".to_string(),
        ];
        let _cluster = Cluster::start(2, 1, &settings.iter().map(String::as_str).collect::<Vec<_>>());
        let job = backpressured_job("200ms", true, 20_000).replacen("config:\n", "config:\n  parallelism.default: 2\n", 1);
        let id = submit(rest, &job);
        let size = wait_for("the counting task to be backpressured (and to ask for small buffers)", || {
            let j = get(rest, &format!("/jobs/{id}"));
            let (source, count) = (&j["vertices"][0]["metrics"], &j["vertices"][1]["metrics"]);
            let size = count["debloatedBufferSize"].as_u64()?;
            let backpressured = source["backPressuredTimeMsPerSecond"].as_f64()? > 500.0;
            (backpressured && (!debloat || (size > 0 && size < 64 << 10))).then_some(size)
        });
        // Give what was queued before the sizes shrank 20 checkpoint intervals to drain, then
        // measure four checkpoints that started after.
        let history = get(rest, &format!("/jobs/{id}/checkpoints"))["history"].clone();
        let first = history.as_array().unwrap().iter().filter_map(|c| c["id"].as_u64()).max().unwrap_or(0) + 20;
        let persisted = wait_for("four more unaligned checkpoints", || {
            let h = get(rest, &format!("/jobs/{id}/checkpoints"))["history"].clone();
            let done: Vec<u64> = h
                .as_array()?
                .iter()
                .filter(|c| c["status"] == "COMPLETED" && c["id"].as_u64().is_some_and(|i| i > first))
                .map(|c| c["persisted_data"].as_u64().unwrap_or(0))
                .collect();
            (done.len() >= 4).then(|| done.iter().sum::<u64>() as f64 / done.len() as f64)
        });
        (persisted, size)
    };
    let (on, size) = run(true);
    let (off, none) = run(false);
    assert_eq!(none, 0, "without debloating the senders are never asked for a size");
    assert!(size < 64 << 10, "a backpressured gate asked for less than a segment (64 KiB): {size}");
    assert!(off > 0.0, "the backpressured job had in-flight data to persist");
    assert!(on * 2.0 < off, "debloating persisted {on:.0} bytes per checkpoint, without it {off:.0}");
}

#[test]
fn live_metrics_of_a_backpressured_job_reach_rest_and_prometheus() {
    let rest = free_port();
    let _cluster = Cluster::start(1, 2, &[&format!("rest.port={rest}")]);
    let id = submit(rest, &backpressured_job("300ms", true, 2000));

    // The source is backpressured, the throttle's input queue is full, and rows flow.
    let job = wait_for("the source to report backpressure", || {
        let j = get(rest, &format!("/jobs/{id}"));
        let source = &j["vertices"][0]["metrics"];
        (source["backPressuredTimeMsPerSecond"].as_f64()? > 500.0 && j["vertices"][1]["metrics"]["inputQueueLength"].as_u64()? > 0)
            .then_some(j)
    });
    let (source, throttle) = (&job["vertices"][0]["metrics"], &job["vertices"][1]["metrics"]);
    assert!(source["numRecordsOutPerSecond"].as_f64().unwrap() > 0.0, "{job}");
    assert!(source["numBytesOut"].as_u64().unwrap() > 0, "{job}");
    assert!(throttle["numRecordsIn"].as_u64().unwrap() > 0 && throttle["numBytesIn"].as_u64().unwrap() > 0, "{job}");
    assert!(throttle["busyTimeMsPerSecond"].as_f64().is_some() && throttle["idleTimeMsPerSecond"].as_f64().is_some(), "{job}");
    let plan = &job["plan"];
    assert_eq!((plan["nodes"].as_array().unwrap().len(), plan["edges"][0]["ship_strategy"].as_str()), (2, Some("HASH(k)")), "{plan}");

    // Every task reports its last checkpoint.
    let job = wait_for("every vertex to report a checkpoint", || {
        let j = get(rest, &format!("/jobs/{id}"));
        j["vertices"].as_array()?.iter().all(|v| v["metrics"]["lastCheckpointId"].as_u64().is_some_and(|n| n >= 1)).then_some(j)
    });
    assert!(job["vertices"][0]["metrics"]["stateSize"].as_u64().unwrap() > 0, "the source's position is state: {job}");
    let vertex = get(rest, &format!("/jobs/{id}/vertices/1"));
    let subtasks = vertex["subtasks"].as_array().unwrap();
    assert_eq!(subtasks.len(), 1, "{vertex}");
    assert!(subtasks[0]["taskmanager-id"].as_str().unwrap().starts_with("tm-"), "{vertex}");
    let checkpoints = get(rest, &format!("/jobs/{id}/checkpoints"));
    let latest = &checkpoints["latest"]["completed"];
    assert!(latest["sync_duration"].is_u64() && latest["async_duration"].is_u64(), "{latest}");
    let history = wait_for("three seconds of history", || {
        let h = get(rest, &format!("/jobs/{id}/metrics/history"));
        (h["points"].as_array()?.len() >= 3).then_some(h)
    });
    assert_eq!(history["points"][0]["vertices"].as_array().unwrap().len(), 2, "{history}");

    // The JobManager's /metrics: the cluster, the job and its tasks.
    let jm = wait_for("backpressure in the JobManager's scrape", || {
        let s = scrape(rest);
        (sample(&s, "weir_task_backpressured_seconds_total", &[("job_id", &id), ("task_name", "datagen")])? > 0.0).then_some(s)
    });
    assert_eq!(sample(&jm, "weir_taskmanagers", &[]), Some(1.0));
    assert_eq!(sample(&jm, "weir_slots_total", &[]), Some(2.0));
    assert_eq!(sample(&jm, "weir_jobs", &[("state", "RUNNING")]), Some(1.0));
    assert!(sample(&jm, "weir_job_checkpoints", &[("job_id", &id), ("status", "completed")]).unwrap() >= 1.0);
    let records_in = sample(&jm, "weir_task_records_in_total", &[("job_id", &id), ("task_name", "count -> throttle -> blackhole")]);
    assert!(records_in.unwrap() > 0.0, "{records_in:?}");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md")).unwrap();
    for s in &jm.samples {
        assert!(docs.contains(&format!("`{}`", s.metric)), "docs/metrics.md does not list {}", s.metric);
    }

    // A TaskManager's own /metrics, found through the REST API.
    let tms = get(rest, "/taskmanagers");
    let tm = &tms["taskmanagers"][0];
    let tm_id = tm["id"].as_str().unwrap();
    let port: u16 = tm["metricsAddress"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    let tm_scrape = wait_for("the TaskManager's scrape to show rows", || {
        let s = scrape(port);
        (sample(&s, "weir_task_records_out_total", &[("job_id", &id), ("task_name", "datagen"), ("taskmanager_id", tm_id)])? > 0.0)
            .then_some(s)
    });
    let tasks: std::collections::BTreeSet<&str> =
        tm_scrape.samples.iter().filter(|s| s.metric == "weir_task_busy_seconds_total").filter_map(|s| s.labels.get("task_name")).collect();
    assert_eq!(tasks.len(), 2, "one series per task: {tasks:?}");
}

/// chromedriver on a free port, killed on drop; one browser session in it. Chromium's
/// profile and singleton files go to a temporary directory, removed on drop.
struct Browser {
    port: u16,
    session: String,
    driver: Child,
    _tmp: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let tmp = tempfile::tempdir().unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}): install Debian's chromium and chromium-driver (make deps)"));
        let mut browser = Browser { port, session: String::new(), driver, _tmp: tmp };
        wait_for("chromedriver to be ready", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            (http(port, "GET", "/status", "", &[]).1["value"]["ready"] == true).then_some(())
        });
        let capabilities = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"] } } } });
        let session = browser.call("POST", "/session", capabilities);
        browser.session = session["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {session}")).to_string();
        browser
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, reply) = match body {
            Value::Null => http(self.port, method, path, "", &[]),
            body => http(self.port, method, path, &body.to_string(), &["Content-Type: application/json"]),
        };
        assert_eq!(status, 200, "WebDriver {method} {path}: {reply}");
        reply["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.session_call("POST", "/url", json!({ "url": url }));
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        let found = self.session_call("POST", "/elements", json!({ "using": "css selector", "value": css }));
        found.as_array().unwrap().iter().map(|e| e[ELEMENT].as_str().unwrap().to_string()).collect()
    }

    /// Waits for an element matching `css` and returns it.
    fn element(&self, css: &str) -> String {
        wait_for(&format!("an element {css}"), || self.find_all(css).into_iter().next())
    }

    /// A real click (WebDriver's), on an element the page does not redraw (the dialog's).
    fn click(&self, css: &str) {
        let e = self.element(css);
        self.session_call("POST", &format!("/element/{e}/click"), json!({}));
    }

    /// A click on an element of the page's main part, which redraws every second: found and
    /// clicked in one script, so it cannot go stale in between.
    fn click_live(&self, css: &str) {
        let js = format!("const e = document.querySelector({}); if (!e || e.disabled) return false; e.click(); return true;", json!(css));
        wait_for(&format!("{css} to be clickable"), || (self.script(&js) == true).then_some(()));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.session_call("POST", &format!("/element/{e}/clear"), json!({}));
        self.session_call("POST", &format!("/element/{e}/value"), json!({ "text": text }));
    }

    fn script(&self, js: &str) -> Value {
        self.session_call("POST", "/execute/sync", json!({ "script": js, "args": [] }))
    }

    fn screenshot(&self, name: &str) -> std::path::PathBuf {
        use base64::Engine;
        let png = self.session_call("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                http(self.port, "DELETE", &format!("/session/{}", self.session), "", &[])
            }));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_web_ui_shows_a_backpressured_job_and_changes_its_checkpoint_interval() {
    let rest = free_port();
    let _cluster = Cluster::start(1, 2, &[&format!("rest.port={rest}")]);
    // Aligned checkpoints: the first comes at once, the next only after an hour, so more come
    // only from the UI's button and its configure dialog.
    let id = submit(rest, &backpressured_job("1h", false, 20_000));
    wait_for("the job to run", || (get(rest, &format!("/jobs/{id}"))["state"] == "RUNNING").then_some(()));
    let browser = Browser::start();

    // The cluster overview lists the job.
    browser.open(&format!("http://127.0.0.1:{rest}/"));
    browser.element(&format!("#jobs-table a[href='#/jobs/{id}']"));
    assert_eq!(browser.find_all("#taskmanagers-table tbody tr").len(), 1);

    // The job page: its graph, one box per vertex, the source coloured by its backpressure.
    browser.click_live(&format!("#jobs-table a[href='#/jobs/{id}']"));
    browser.element("#job-graph g.vertex");
    assert_eq!(browser.find_all("#job-graph g.vertex").len(), 2);
    wait_for("the graph to show the source backpressured", || {
        let text =
            browser.script("const e = document.querySelector('#job-graph g.vertex[data-vertex=\"0\"]'); return e ? e.textContent : null");
        let pct: u32 = text.as_str()?.split("backpressured ").nth(1)?.split('%').next()?.parse().ok()?;
        (pct > 50).then_some(())
    });
    wait_for("three seconds of throughput in the plot", || {
        let points = browser.script(
            "const l = document.querySelector('#records-out-plot polyline'); return l ? l.getAttribute('points').trim().split(' ').length : 0",
        );
        (points.as_u64()? >= 3).then_some(())
    });
    assert_eq!(browser.find_all("#subtasks-table tbody tr").len(), 2, "one row per subtask");
    browser.screenshot("job-overview.png");

    // The checkpoints tab fills: the first checkpoint, then one triggered from its button, both
    // aligned.
    let completed = |kind: &str| {
        let js = format!(
            "return [...document.querySelectorAll('#checkpoint-history tbody tr')].filter(r => r.textContent.includes('COMPLETED') && r.querySelector('.kind').textContent.startsWith('{kind}')).length"
        );
        browser.script(&js).as_u64().unwrap_or(0)
    };
    browser.click_live("a[data-tab=checkpoints]");
    wait_for("the first checkpoint in the history table", || (completed("CHECKPOINT") >= 1).then_some(()));
    browser.click_live("#trigger-checkpoint");
    wait_for("the triggered checkpoint in the history table", || (completed("CHECKPOINT") >= 2).then_some(()));
    let before = get(rest, &format!("/jobs/{id}/checkpoints"))["counts"]["completed"].as_u64().unwrap();

    // The configure dialog: a bad value is refused in the dialog, a good one applies.
    browser.click_live("#configure-button");
    wait_for("the dialog to open", || (browser.script("return document.querySelector('#configure-dialog').open") == true).then_some(()));
    browser.type_into("input[name='execution.checkpointing.interval']", "soon");
    browser.click("#configure-save");
    wait_for("the refusal in the dialog", || {
        let msg = browser.script("return document.querySelector('#configure-message').textContent");
        msg.as_str()?.contains("execution.checkpointing.interval").then_some(())
    });
    browser.type_into("input[name='execution.checkpointing.interval']", "200ms");
    browser.click("input[name='execution.checkpointing.unaligned.enabled']");
    browser.click("#configure-save");
    wait_for("the dialog to close", || (browser.script("return document.querySelector('#configure-dialog').open") == false).then_some(()));

    // The next checkpoints follow the new interval, unaligned, and the page shows them and the
    // change.
    let checkpoints = wait_for("checkpoints every 200 ms", || {
        let c = get(rest, &format!("/jobs/{id}/checkpoints"));
        (c["counts"]["completed"].as_u64()? >= before + 3).then_some(c)
    });
    let change = &checkpoints["config_changes"][0]["changes"];
    assert_eq!(change["execution.checkpointing.interval"], "200ms", "{checkpoints}");
    assert_eq!(change["execution.checkpointing.unaligned.enabled"], "true", "{checkpoints}");
    wait_for("the change and the new, unaligned checkpoints on the page", || {
        (completed("UNALIGNED_CHECKPOINT") >= 3 && !browser.find_all("#config-changes tr").is_empty()).then_some(())
    });
    browser.element("#checkpoint-duration-plot rect");
    let shot = browser.screenshot("job-checkpoints.png");
    eprintln!("screenshots in {}", shot.parent().unwrap().display());
}

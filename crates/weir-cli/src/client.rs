//! The gRPC client side of the CLI: submit, wait, list, status, cancel, savepoint, stop,
//! dispose a savepoint, checkpoints, cluster.
//!
//! Every listing is a `#[derive(Serialize)]` row struct built once from the RPC answer:
//! `--output json` serializes the rows, `--output text` renders the same rows as a table. The
//! JSON keys are the row structs' field names, which scripts and the end-to-end tests read.

use crate::Output;
use anyhow::{anyhow, Result};
use comfy_table::{presets, CellAlignment, Table};
use serde::Serialize;
use std::time::Duration;
use weir_core::config::Config;
use weir_core::settings::{is_cluster_only_key, SecurityConfig};
use weir_proto::job_manager_service_client::JobManagerServiceClient;
use weir_proto::security::{Dialer, GrpcChannel, SecurityError, Timeouts};
use weir_proto::*;

/// How long an ordinary request may take; savepoints get their own, longer deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The JobManager a command calls, and how: its address and this command's `security.*`
/// (token and TLS files from the configuration file, `WEIR_PROPERTIES`, `-D` or
/// `WEIR_SECURITY_TOKEN`). Shows as its address.
pub struct JobManagerEndpoint {
    pub address: String,
    pub security: SecurityConfig,
}

impl std::fmt::Display for JobManagerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.address)
    }
}

/// Connects to the JobManager, failing clearly if it does not answer.
async fn connect(address: &JobManagerEndpoint) -> Result<JobManagerServiceClient<GrpcChannel>> {
    connect_with_timeout(address, REQUEST_TIMEOUT).await
}

/// [`connect`] with a per-request deadline of `timeout`.
async fn connect_with_timeout(address: &JobManagerEndpoint, timeout: Duration) -> Result<JobManagerServiceClient<GrpcChannel>> {
    let dialer = Dialer::new(&address.security)?;
    let channel = match dialer.connect(&address.address, Timeouts { connect: Duration::from_secs(5), request: timeout }).await {
        Ok(channel) => channel,
        Err(SecurityError::Connect { source: e, .. }) => {
            // A TLS server drops a plaintext client, a plaintext server fails a TLS handshake:
            // both look like an unreachable JobManager, so say which setting to check (unless
            // nothing listens there at all).
            let hint = if connection_refused(&e) { "" } else { tls_hint(address) };
            return Err(anyhow!("cannot reach the JobManager at {address}: {}{hint}", weir_core::error_chain(&e)));
        }
        Err(SecurityError::Address(_)) => return Err(anyhow!("bad JobManager address '{address}'")),
        Err(e) => return Err(e.into()),
    };
    Ok(JobManagerServiceClient::new(channel))
}

/// What to check when a connection broke before any answer: a TLS server drops a plaintext
/// client, and a plaintext server fails a TLS handshake.
fn tls_hint(address: &JobManagerEndpoint) -> &'static str {
    match &address.security.tls {
        Some(_) => {
            "; check that the JobManager uses TLS, and that its certificate names this address and chains to \
             security.ssl.internal.trust-cert"
        }
        None => "; if the cluster uses TLS, set security.ssl.internal.enabled and its files",
    }
}

/// Nothing listens at the address: the OS refused the connection.
fn connection_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether `e` or one of its sources is an `E`.
fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn rpc_error(address: &JobManagerEndpoint, status: tonic::Status) -> anyhow::Error {
    // A status with a source was made on this side from a broken connection (an HTTP/2 or
    // transport error, whatever code it got), not answered by the JobManager; a timeout is
    // one too, but says so itself.
    let broken = std::error::Error::source(&status).filter(|cause| !caused_by::<tonic::TimeoutExpired>(*cause)).map(weir_core::error_chain);
    match status.code() {
        tonic::Code::Unauthenticated => anyhow!("authentication refused by the JobManager at {address}: {}", status.message()),
        _ if broken.is_some() => {
            anyhow!("cannot reach the JobManager at {address}: {}{}", broken.unwrap_or_default(), tls_hint(address))
        }
        tonic::Code::Unavailable => anyhow!("cannot reach the JobManager at {address}: {}", status.message()),
        tonic::Code::Unimplemented => {
            anyhow!("the JobManager at {address} does not support this request (is it an older Weir?): {}", status.message())
        }
        _ => anyhow!("{}", status.message()),
    }
}

use weir_proto::job_state_name as state_name;

fn checkpoint_status_name(s: i32) -> &'static str {
    match CheckpointStatus::try_from(s).unwrap_or(CheckpointStatus::Unspecified) {
        CheckpointStatus::InProgress => "IN_PROGRESS",
        CheckpointStatus::Completed => "COMPLETED",
        CheckpointStatus::CheckpointFailed => "FAILED",
        CheckpointStatus::Unspecified => "UNKNOWN",
    }
}

/// The proto enum's own names; `UNKNOWN` while the JobManager has not decided (no subtask
/// acknowledged yet) or for a kind this CLI does not know.
fn checkpoint_kind_name(k: i32) -> &'static str {
    match CheckpointKind::try_from(k).unwrap_or(CheckpointKind::Unspecified) {
        CheckpointKind::Aligned => "ALIGNED",
        CheckpointKind::Unaligned => "UNALIGNED",
        CheckpointKind::TimedOutToUnaligned => "TIMED_OUT_TO_UNALIGNED",
        CheckpointKind::Unspecified => "UNKNOWN",
    }
}

/// RFC 3339, or None (JSON `null`) for a time not set (0).
fn rfc3339(ms: i64) -> Option<String> {
    if ms <= 0 {
        return None;
    }
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339())
}

/// A reason, or None (JSON `null`) when there is none.
fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A row of a listing: its text columns. The JSON form is the row's `Serialize`.
trait TextRow {
    /// Column titles and alignments (numbers right).
    const COLUMNS: &'static [(&'static str, CellAlignment)];
    /// One text cell per column.
    fn cells(&self) -> Vec<String>;
}

const LEFT: CellAlignment = CellAlignment::Left;
const RIGHT: CellAlignment = CellAlignment::Right;

/// The rows as a table: a header, then one line per row, columns aligned and two spaces apart.
fn table<R: TextRow>(rows: &[R]) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(R::COLUMNS.iter().map(|(title, _)| *title).collect::<Vec<_>>());
    table.add_rows(rows.iter().map(TextRow::cells));
    for (column, (_, align)) in table.column_iter_mut().zip(R::COLUMNS) {
        column.set_padding((0, 2));
        column.set_cell_alignment(*align);
    }
    table.trim_fmt()
}

/// Prints a listing: a JSON array, or a table (`empty` instead when there are no rows).
fn print_rows<R: TextRow + Serialize>(rows: &[R], output: Output, empty: &str) -> Result<()> {
    match output {
        Output::Json => outln!("{}", serde_json::to_string(rows)?),
        Output::Text if rows.is_empty() => outln!("{empty}"),
        Output::Text => outln!("{}", table(rows)),
    }
    Ok(())
}

/// A job, as `run --output json`, `status` and each element of `list` print it.
#[derive(Debug, Serialize)]
struct JobRow {
    id: String,
    name: String,
    state: &'static str,
    failure: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
    /// Start to end, or to `now` for a job that has not ended.
    duration_ms: i64,
    parallelism: u32,
    attempt: u32,
    restarts: u32,
    /// The job's last completed savepoint (`weir stop`, `weir savepoint`), to resume from.
    savepoint_path: Option<String>,
    vertices: Vec<VertexRow>,
}

impl JobRow {
    fn new(j: &JobStatus, now_ms: i64) -> Self {
        let end = if j.end_time_ms > 0 { j.end_time_ms } else { now_ms };
        JobRow {
            id: j.job_id.clone(),
            name: j.name.clone(),
            state: state_name(j.state),
            failure: non_empty(&j.failure),
            start_time: rfc3339(j.start_time_ms),
            end_time: rfc3339(j.end_time_ms),
            duration_ms: (end - j.start_time_ms).max(0),
            parallelism: j.parallelism,
            attempt: j.attempt,
            restarts: j.restarts,
            savepoint_path: non_empty(&j.savepoint_path),
            vertices: j.vertices.iter().map(VertexRow::from).collect(),
        }
    }

    fn now(j: &JobStatus) -> Self {
        Self::new(j, chrono::Utc::now().timestamp_millis())
    }
}

impl TextRow for JobRow {
    const COLUMNS: &'static [(&'static str, CellAlignment)] = &[("id", LEFT), ("state", LEFT), ("name", LEFT), ("savepoint", LEFT)];

    fn cells(&self) -> Vec<String> {
        vec![self.id.clone(), self.state.to_string(), self.name.clone(), self.savepoint_path.clone().unwrap_or_default()]
    }
}

/// One vertex of a job (a chain of operators and its subtasks).
#[derive(Debug, Serialize)]
struct VertexRow {
    name: String,
    parallelism: u32,
    running: u32,
    finished: u32,
    records_in: u64,
    records_out: u64,
}

impl From<&VertexStatus> for VertexRow {
    fn from(v: &VertexStatus) -> Self {
        VertexRow {
            name: v.name.clone(),
            parallelism: v.parallelism,
            running: v.running,
            finished: v.finished,
            records_in: v.records_in,
            records_out: v.records_out,
        }
    }
}

impl TextRow for VertexRow {
    const COLUMNS: &'static [(&'static str, CellAlignment)] =
        &[("vertex", LEFT), ("parallelism", RIGHT), ("running", RIGHT), ("finished", RIGHT), ("records in", RIGHT), ("records out", RIGHT)];

    fn cells(&self) -> Vec<String> {
        let numbers = [self.parallelism.into(), self.running.into(), self.finished.into(), self.records_in, self.records_out];
        std::iter::once(self.name.clone()).chain(numbers.iter().map(u64::to_string)).collect()
    }
}

/// One checkpoint or savepoint of a job, as `weir checkpoints` prints it.
#[derive(Debug, Serialize)]
struct CheckpointRow {
    id: u64,
    /// A savepoint (`weir savepoint`, `weir stop`) rather than a periodic checkpoint.
    savepoint: bool,
    status: &'static str,
    /// `ALIGNED`, `UNALIGNED` or `TIMED_OUT_TO_UNALIGNED`.
    kind: &'static str,
    trigger_time: Option<String>,
    duration_ms: u64,
    size_bytes: u64,
    /// In-flight data persisted as channel state (unaligned checkpoints).
    inflight_bytes: u64,
    alignment_ms: u64,
    acknowledged: u32,
    total: u32,
    failure: Option<String>,
    /// A savepoint's folder, once it completed.
    path: Option<String>,
}

impl From<&CheckpointInfo> for CheckpointRow {
    fn from(c: &CheckpointInfo) -> Self {
        CheckpointRow {
            id: c.id,
            savepoint: c.savepoint,
            status: checkpoint_status_name(c.status),
            kind: checkpoint_kind_name(c.kind),
            trigger_time: rfc3339(c.trigger_time_ms),
            duration_ms: c.duration_ms,
            size_bytes: c.size_bytes,
            inflight_bytes: c.inflight_bytes,
            alignment_ms: c.alignment_ms,
            acknowledged: c.acknowledged,
            total: c.total,
            failure: non_empty(&c.failure),
            path: non_empty(&c.path),
        }
    }
}

impl TextRow for CheckpointRow {
    const COLUMNS: &'static [(&'static str, CellAlignment)] = &[
        ("id", RIGHT),
        ("type", LEFT),
        ("status", LEFT),
        ("kind", LEFT),
        ("trigger time", LEFT),
        ("duration", RIGHT),
        ("size", RIGHT),
        ("in-flight", RIGHT),
        ("alignment", RIGHT),
        ("acks", RIGHT),
        ("failure", LEFT),
        ("path", LEFT),
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            if self.savepoint { "savepoint" } else { "checkpoint" }.to_string(),
            self.status.to_string(),
            self.kind.to_string(),
            self.trigger_time.clone().unwrap_or_default(),
            format!("{}ms", self.duration_ms),
            self.size_bytes.to_string(),
            self.inflight_bytes.to_string(),
            format!("{}ms", self.alignment_ms),
            format!("{}/{}", self.acknowledged, self.total),
            self.failure.clone().unwrap_or_default(),
            self.path.clone().unwrap_or_default(),
        ]
    }
}

/// One registered TaskManager, as `weir cluster` prints it.
#[derive(Debug, Serialize)]
struct TaskManagerRow {
    id: String,
    rpc_address: String,
    data_address: String,
    slots: u32,
    free_slots: u32,
    /// The program functions it carries: empty for a session TaskManager (`weir
    /// taskmanager`), an application's function ids for its own TaskManagers.
    functions: Vec<String>,
}

impl From<&TaskManagerInfo> for TaskManagerRow {
    fn from(t: &TaskManagerInfo) -> Self {
        TaskManagerRow {
            id: t.taskmanager_id.clone(),
            rpc_address: t.rpc_address.clone(),
            data_address: t.data_address.clone(),
            slots: t.slots,
            free_slots: t.free_slots,
            functions: t.user_functions.clone(),
        }
    }
}

impl TextRow for TaskManagerRow {
    const COLUMNS: &'static [(&'static str, CellAlignment)] =
        &[("id", LEFT), ("rpc address", LEFT), ("data address", LEFT), ("free slots", RIGHT), ("slots", RIGHT), ("functions", RIGHT)];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.rpc_address.clone(),
            self.data_address.clone(),
            self.free_slots.to_string(),
            self.slots.to_string(),
            self.functions.len().to_string(),
        ]
    }
}

/// What `weir run --detached --output json` prints.
#[derive(Serialize)]
struct Submitted<'a> {
    id: &'a str,
}

/// What `weir cancel --output json` prints.
#[derive(Serialize)]
struct Canceled<'a> {
    id: &'a str,
    /// The state the job ended in: CANCELED, or FINISHED/FAILED when it ended first.
    state: &'a str,
    canceled: bool,
}

/// What `weir savepoint --output json` and `weir stop --output json` print.
#[derive(Serialize)]
struct SavepointCompleted<'a> {
    path: &'a str,
    checkpoint_id: u64,
}

/// What `weir savepoints dispose --output json` prints.
#[derive(Serialize)]
struct SavepointDisposed<'a> {
    path: &'a str,
    files_deleted: u32,
}

fn is_terminal(state: i32) -> bool {
    matches!(JobState::try_from(state), Ok(JobState::Finished | JobState::Failed | JobState::Canceled))
}

/// What `weir run` submits.
pub struct Submit<'a> {
    pub text: &'a str,
    pub origin: &'a str,
    pub overrides: &'a Config,
    pub restore: Option<&'a str>,
    pub allow_non_restored_state: bool,
}

/// Submits a job; unless detached, waits for it to end and returns the exit code.
pub async fn run_job(address: &JobManagerEndpoint, submit: Submit<'_>, detached: bool, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    let req = SubmitJobRequest {
        job_definition: submit.text.to_string(),
        // The token and TLS files are this client's, never part of the job.
        config: submit.overrides.explicit().iter().filter(|(k, _)| !is_cluster_only_key(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        source_name: submit.origin.to_string(),
        restore_path: submit.restore.unwrap_or_default().to_string(),
        allow_non_restored_state: submit.allow_non_restored_state,
        job_graph: String::new(),
    };
    let id = submit_request(&mut client, address, req).await?;
    if detached {
        print_submitted(&id, output)?;
        return Ok(0);
    }
    eprintln!("Job {id} submitted to {address}");
    Ok(if wait_for_job(&mut client, address, &id, output).await? { 0 } else { 1 })
}

/// One job of a SQL script, compiled by this client: its graph and its job-level settings
/// (the script's `SET`s, the job options of WITH clauses, `-D`).
pub struct GraphSubmit {
    pub graph: weir_core::graph::JobGraph,
    pub settings: std::collections::BTreeMap<String, String>,
}

/// Submits the jobs of a SQL script, in order (the first one from `restore` if given); unless
/// detached, waits for all of them and returns 0 if every one finished.
pub async fn run_graphs(
    address: &JobManagerEndpoint,
    jobs: Vec<GraphSubmit>,
    origin: &str,
    restore: Option<&str>,
    allow_non_restored_state: bool,
    detached: bool,
    output: Output,
) -> Result<i32> {
    let mut client = connect(address).await?;
    let mut ids = Vec::new();
    for (i, job) in jobs.into_iter().enumerate() {
        let req = SubmitJobRequest {
            job_definition: String::new(),
            config: job.settings.into_iter().filter(|(k, _)| !is_cluster_only_key(k)).collect(),
            source_name: origin.to_string(),
            restore_path: if i == 0 { restore.unwrap_or_default().to_string() } else { String::new() },
            allow_non_restored_state,
            job_graph: String::from_utf8_lossy(&job.graph.to_json()).into_owned(),
        };
        let id = submit_request(&mut client, address, req).await?;
        if detached {
            print_submitted(&id, output)?;
        } else {
            eprintln!("Job {id} ({}) submitted to {address}", job.graph.name);
        }
        ids.push(id);
    }
    if detached {
        return Ok(0);
    }
    let mut all_finished = true;
    for id in &ids {
        all_finished &= wait_for_job(&mut client, address, id, output).await?;
    }
    Ok(if all_finished { 0 } else { 1 })
}

/// Sends a submission; prints its warnings and returns the new job's id.
async fn submit_request(
    client: &mut JobManagerServiceClient<GrpcChannel>,
    address: &JobManagerEndpoint,
    req: SubmitJobRequest,
) -> Result<String> {
    let SubmitJobResponse { job_id: id, warnings } = client.submit_job(req).await.map_err(|e| rpc_error(address, e))?.into_inner();
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    Ok(id)
}

fn print_submitted(id: &str, output: Output) -> Result<()> {
    match output {
        Output::Json => outln!("{}", serde_json::to_string(&Submitted { id })?),
        Output::Text => outln!("{id}"),
    }
    Ok(())
}

/// Polls job `id` until it ends and reports how it ended; whether it FINISHED.
async fn wait_for_job(
    client: &mut JobManagerServiceClient<GrpcChannel>,
    address: &JobManagerEndpoint,
    id: &str,
    output: Output,
) -> Result<bool> {
    let status = loop {
        let s = client.get_job(GetJobRequest { job_id: id.to_string() }).await.map_err(|e| rpc_error(address, e))?.into_inner();
        if is_terminal(s.state) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ok = JobState::try_from(status.state) == Ok(JobState::Finished);
    let job = JobRow::now(&status);
    match output {
        Output::Json => outln!("{}", serde_json::to_string(&job)?),
        Output::Text => {
            let secs = job.duration_ms as f64 / 1000.0;
            eprintln!("Job {} ({}) {} after {secs:.3}s", job.name, job.id, job.state);
            if let Some(cause) = &job.failure {
                eprintln!("Cause: {cause}");
            }
        }
    }
    if !ok && output == Output::Json {
        eprintln!("Job {} {}: {}", job.id, job.state, job.failure.as_deref().unwrap_or_default());
    }
    Ok(ok)
}

pub async fn list(address: &JobManagerEndpoint, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    let jobs = client.list_jobs(ListJobsRequest {}).await.map_err(|e| rpc_error(address, e))?.into_inner().jobs;
    let rows: Vec<JobRow> = jobs.iter().map(JobRow::now).collect();
    print_rows(&rows, output, "No jobs.")?;
    Ok(0)
}

pub async fn status(address: &JobManagerEndpoint, job_id: &str, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    let j = client.get_job(GetJobRequest { job_id: job_id.to_string() }).await.map_err(|e| rpc_error(address, e))?.into_inner();
    let job = JobRow::now(&j);
    match output {
        Output::Json => outln!("{}", serde_json::to_string(&job)?),
        Output::Text => outln!("{}", status_text(&job)),
    }
    Ok(0)
}

/// `weir status` for people: the job, its state and failure, then its vertices as a table.
fn status_text(job: &JobRow) -> String {
    let mut text = format!("Job {} ({})\nState: {}", job.name, job.id, job.state);
    if let Some(failure) = &job.failure {
        text.push_str(&format!("\nFailure: {failure}"));
    }
    if let Some(path) = &job.savepoint_path {
        text.push_str(&format!("\nSavepoint: {path}"));
    }
    if !job.vertices.is_empty() {
        text.push('\n');
        text.push_str(&table(&job.vertices));
    }
    text
}

/// `weir config`: changes checkpoint settings of a running job, then prints every setting a
/// running job can change, as it is now.
pub async fn update_config(address: &JobManagerEndpoint, job_id: &str, changes: Vec<(String, String)>, output: Output) -> Result<i32> {
    if changes.is_empty() {
        return Err(anyhow!("nothing to change: give the new settings as -D key=value (e.g. -D execution.checkpointing.interval=200ms)"));
    }
    let mut client = connect(address).await?;
    let request = UpdateCheckpointConfigRequest { job_id: job_id.to_string(), config: changes.into_iter().collect() };
    let now = client.update_checkpoint_config(request).await.map_err(|e| rpc_error(address, e))?.into_inner().checkpoint_config;
    let sorted: std::collections::BTreeMap<String, String> = now.into_iter().collect();
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&sorted)?),
        Output::Text => {
            outln!("checkpoint settings of job {job_id}, from its next checkpoint on:");
            for (k, v) in &sorted {
                outln!("  {k} = {v}");
            }
        }
    }
    Ok(0)
}

pub async fn cancel(address: &JobManagerEndpoint, job_id: &str, timeout: Duration, output: Output) -> Result<i32> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut client = connect_with_timeout(address, timeout).await?;
    client.cancel_job(CancelJobRequest { job_id: job_id.to_string() }).await.map_err(|e| rpc_error(address, e))?;
    // The request is only the start: wait until the job ended, and say how.
    let status = loop {
        let s = client.get_job(GetJobRequest { job_id: job_id.to_string() }).await.map_err(|e| rpc_error(address, e))?.into_inner();
        if is_terminal(s.state) {
            break s;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "cancellation of job {job_id} requested, but it is still {} after {}",
                state_name(s.state),
                humanize(timeout)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let canceled = JobState::try_from(status.state) == Ok(JobState::Canceled);
    match output {
        Output::Json => {
            outln!("{}", serde_json::to_string(&Canceled { id: job_id, state: state_name(status.state), canceled })?)
        }
        Output::Text if canceled => outln!("Job {job_id} canceled."),
        Output::Text => {
            let cause = non_empty(&status.failure).map(|f| format!(": {f}")).unwrap_or_default();
            eprintln!("Job {job_id} ended {} before the cancellation took effect{cause}", state_name(status.state));
        }
    }
    Ok(if canceled { 0 } else { 1 })
}

/// What `weir savepoint` and `weir stop` ask for.
pub struct SavepointRequest<'a> {
    pub job_id: &'a str,
    /// Empty: the job's `execution.checkpointing.savepoint-dir`.
    pub directory: &'a str,
    pub format: SavepointFormat,
}

/// A savepoint request failed: the JobManager's reason, or that it did not answer in time.
fn savepoint_error(address: &JobManagerEndpoint, job_id: &str, timeout: Duration, status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => anyhow!(
            "no answer from the JobManager at {address} within {} for the savepoint of job {job_id}; it may still complete \
             (see `weir checkpoints {job_id}`), or pass a longer --timeout",
            humanize(timeout)
        ),
        _ => rpc_error(address, status),
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn print_savepoint(done: &SavepointResponse, output: Output) -> Result<()> {
    match output {
        Output::Json => outln!("{}", serde_json::to_string(&SavepointCompleted { path: &done.path, checkpoint_id: done.checkpoint_id })?),
        Output::Text => outln!("Savepoint completed. Path: {}", done.path),
    }
    Ok(())
}

/// `weir savepoint`: answers once the savepoint's `_metadata` is written.
pub async fn savepoint(address: &JobManagerEndpoint, request: SavepointRequest<'_>, timeout: Duration, output: Output) -> Result<i32> {
    let mut client = connect_with_timeout(address, timeout).await?;
    let req = TriggerSavepointRequest {
        job_id: request.job_id.to_string(),
        directory: request.directory.to_string(),
        format: request.format as i32,
    };
    let done = client.trigger_savepoint(req).await.map_err(|e| savepoint_error(address, request.job_id, timeout, e))?.into_inner();
    print_savepoint(&done, output)?;
    Ok(0)
}

/// `weir stop`: the savepoint, then the wait until the job ended (it finishes on its own after
/// the savepoint). A job that ends otherwise than FINISHED is an error, though the savepoint
/// itself completed and is named; so is a job that restarted after the savepoint (it then runs
/// on, restored from the savepoint, instead of finishing).
pub async fn stop(
    address: &JobManagerEndpoint,
    request: SavepointRequest<'_>,
    drain: bool,
    timeout: Duration,
    output: Output,
) -> Result<i32> {
    let deadline = tokio::time::Instant::now() + timeout;
    let job_id = request.job_id;
    let mut client = connect_with_timeout(address, timeout).await?;
    let req = StopJobRequest { job_id: job_id.to_string(), directory: request.directory.to_string(), drain, format: request.format as i32 };
    let done = client.stop_job(req).await.map_err(|e| savepoint_error(address, job_id, timeout, e))?.into_inner();
    if output == Output::Text {
        print_savepoint(&done, output)?;
    }
    let mut attempt = None;
    let status = loop {
        let s = client.get_job(GetJobRequest { job_id: job_id.to_string() }).await.map_err(|e| rpc_error(address, e))?.into_inner();
        if is_terminal(s.state) {
            break s;
        }
        if *attempt.get_or_insert(s.attempt) != s.attempt {
            return Err(anyhow!(
                "savepoint {} completed, but job {job_id} restarted (attempt {}) before it finished: it runs on from the savepoint; \
                 stop it again",
                done.path,
                s.attempt
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "savepoint {} completed, but job {job_id} is still {} after {}",
                done.path,
                state_name(s.state),
                humanize(timeout)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if JobState::try_from(status.state) != Ok(JobState::Finished) {
        let cause = non_empty(&status.failure).map(|f| format!(": {f}")).unwrap_or_default();
        return Err(anyhow!("savepoint {} completed, but job {job_id} ended {}{cause}", done.path, state_name(status.state)));
    }
    match output {
        Output::Json => print_savepoint(&done, output)?,
        Output::Text => eprintln!("Job {job_id} stopped (FINISHED)."),
    }
    Ok(0)
}

/// `weir savepoints dispose`.
pub async fn dispose_savepoint(address: &JobManagerEndpoint, path: &str, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    let done =
        client.dispose_savepoint(DisposeSavepointRequest { path: path.to_string() }).await.map_err(|e| rpc_error(address, e))?.into_inner();
    match output {
        Output::Json => outln!("{}", serde_json::to_string(&SavepointDisposed { path, files_deleted: done.files_deleted })?),
        Output::Text => outln!("Savepoint {path} disposed ({} files deleted).", done.files_deleted),
    }
    Ok(0)
}

pub async fn checkpoints(address: &JobManagerEndpoint, job_id: &str, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    let list = client
        .list_checkpoints(ListCheckpointsRequest { job_id: job_id.to_string() })
        .await
        .map_err(|e| rpc_error(address, e))?
        .into_inner()
        .checkpoints;
    let rows: Vec<CheckpointRow> = list.iter().map(CheckpointRow::from).collect();
    print_rows(&rows, output, "No checkpoints.")?;
    Ok(0)
}

pub async fn cluster(address: &JobManagerEndpoint, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    let tms = client.cluster_overview(ClusterOverviewRequest {}).await.map_err(|e| rpc_error(address, e))?.into_inner().taskmanagers;
    let rows: Vec<TaskManagerRow> = tms.iter().map(TaskManagerRow::from).collect();
    print_rows(&rows, output, "No TaskManagers registered.")?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> JobStatus {
        JobStatus {
            job_id: "3f2c".into(),
            name: "wordcount".into(),
            state: JobState::Failed as i32,
            failure: "TaskManager tm-1 lost".into(),
            start_time_ms: 1_735_732_800_000,
            end_time_ms: 1_735_732_801_250,
            parallelism: 4,
            vertices: vec![VertexStatus {
                name: "file -> split".into(),
                parallelism: 4,
                running: 0,
                finished: 4,
                records_in: 80,
                records_out: 512,
            }],
            attempt: 2,
            restarts: 1,
            savepoint_path: String::new(),
        }
    }

    fn checkpoint(id: u64, status: CheckpointStatus, kind: CheckpointKind, failure: &str) -> CheckpointInfo {
        CheckpointInfo {
            id,
            status: status as i32,
            trigger_time_ms: if id == 0 { 0 } else { 1_795_000_000_000 + id as i64 },
            duration_ms: 41,
            size_bytes: 183_467,
            alignment_ms: 2,
            failure: failure.into(),
            acknowledged: 9,
            total: 9,
            kind: kind as i32,
            inflight_bytes: 4096,
            savepoint: false,
            path: String::new(),
            sync_ms: 1,
            async_ms: 30,
        }
    }

    /// The keys and value formats scripts rely on (docs/configuration.md shows them).
    #[test]
    fn a_job_serializes_with_the_documented_keys_and_formats() {
        let value = serde_json::to_value(JobRow::new(&job(), 0)).expect("serializes");
        assert_eq!(
            value,
            json!({
                "id": "3f2c", "name": "wordcount", "state": "FAILED", "failure": "TaskManager tm-1 lost",
                "start_time": "2025-01-01T12:00:00+00:00", "end_time": "2025-01-01T12:00:01.250+00:00",
                "duration_ms": 1250, "parallelism": 4, "attempt": 2, "restarts": 1, "savepoint_path": null,
                "vertices": [{"name": "file -> split", "parallelism": 4, "running": 0, "finished": 4,
                              "records_in": 80, "records_out": 512}]
            })
        );
        // A running job: no end time, no failure, the duration so far.
        let running = JobStatus { state: JobState::Running as i32, failure: String::new(), end_time_ms: 0, ..job() };
        let value = serde_json::to_value(JobRow::new(&running, 1_735_732_805_000)).expect("serializes");
        assert_eq!(value["end_time"], json!(null));
        assert_eq!(value["failure"], json!(null));
        assert_eq!(value["duration_ms"], 5000);
        assert_eq!(value["state"], "RUNNING");
    }

    #[test]
    fn a_checkpoint_serializes_with_its_kind_and_inflight_bytes() {
        let row = CheckpointRow::from(&checkpoint(3, CheckpointStatus::Completed, CheckpointKind::TimedOutToUnaligned, ""));
        assert_eq!(
            serde_json::to_value(&row).expect("serializes"),
            json!({
                "id": 3, "savepoint": false, "status": "COMPLETED", "kind": "TIMED_OUT_TO_UNALIGNED",
                "trigger_time": "2026-11-18T11:06:40.003+00:00", "duration_ms": 41, "size_bytes": 183467,
                "inflight_bytes": 4096, "alignment_ms": 2, "acknowledged": 9, "total": 9, "failure": null, "path": null
            })
        );
        let failed = CheckpointRow::from(&checkpoint(0, CheckpointStatus::CheckpointFailed, CheckpointKind::Unspecified, "declined"));
        let value = serde_json::to_value(&failed).expect("serializes");
        assert_eq!((&value["status"], &value["kind"], &value["trigger_time"]), (&json!("FAILED"), &json!("UNKNOWN"), &json!(null)));
        assert_eq!(value["failure"], "declined");
    }

    #[test]
    fn checkpoints_render_as_an_aligned_table_with_kind_and_inflight_columns() {
        let rows = [
            CheckpointRow::from(&checkpoint(1, CheckpointStatus::Completed, CheckpointKind::Aligned, "")),
            CheckpointRow::from(&checkpoint(12, CheckpointStatus::CheckpointFailed, CheckpointKind::Unaligned, "job restarting")),
        ];
        let text = table(&rows);
        let expected = [
            "id  type        status     kind       trigger time                   duration    size  in-flight  alignment  acks  failure         path",
            " 1  checkpoint  COMPLETED  ALIGNED    2026-11-18T11:06:40.001+00:00      41ms  183467       4096        2ms   9/9",
            "12  checkpoint  FAILED     UNALIGNED  2026-11-18T11:06:40.012+00:00      41ms  183467       4096        2ms   9/9  job restarting",
        ];
        assert_eq!(text, expected.join("\n"));
    }

    fn savepoint(id: u64) -> CheckpointInfo {
        CheckpointInfo {
            savepoint: true,
            path: format!("file:///sp/savepoint-3f2c-{id:012x}"),
            ..checkpoint(id, CheckpointStatus::Completed, CheckpointKind::Aligned, "")
        }
    }

    #[test]
    fn a_savepoint_serializes_marked_with_its_path() {
        let value = serde_json::to_value(CheckpointRow::from(&savepoint(7))).expect("serializes");
        assert_eq!((&value["savepoint"], &value["path"]), (&json!(true), &json!("file:///sp/savepoint-3f2c-000000000007")));
        // One still in progress has no path yet.
        let pending = CheckpointInfo { path: String::new(), status: CheckpointStatus::InProgress as i32, ..savepoint(8) };
        let value = serde_json::to_value(CheckpointRow::from(&pending)).expect("serializes");
        assert_eq!((&value["savepoint"], &value["path"]), (&json!(true), &json!(null)));
    }

    #[test]
    fn savepoints_are_marked_among_checkpoints_in_the_table() {
        let rows = [
            CheckpointRow::from(&checkpoint(6, CheckpointStatus::Completed, CheckpointKind::Aligned, "")),
            CheckpointRow::from(&savepoint(7)),
        ];
        let expected = [
            "id  type        status     kind     trigger time                   duration    size  in-flight  alignment  acks  failure  path",
            " 6  checkpoint  COMPLETED  ALIGNED  2026-11-18T11:06:40.006+00:00      41ms  183467       4096        2ms   9/9",
            " 7  savepoint   COMPLETED  ALIGNED  2026-11-18T11:06:40.007+00:00      41ms  183467       4096        2ms   9/9           file:///sp/savepoint-3f2c-000000000007",
        ];
        assert_eq!(table(&rows), expected.join("\n"));
    }

    #[test]
    fn a_stopped_job_shows_its_savepoint_in_status_list_and_json() {
        let stopped = JobStatus {
            state: JobState::Finished as i32,
            failure: String::new(),
            savepoint_path: "file:///sp/savepoint-3f2c-00000000000c".into(),
            vertices: vec![],
            ..job()
        };
        let row = JobRow::new(&stopped, 0);
        assert_eq!(serde_json::to_value(&row).expect("serializes")["savepoint_path"], "file:///sp/savepoint-3f2c-00000000000c");
        assert_eq!(status_text(&row), "Job wordcount (3f2c)\nState: FINISHED\nSavepoint: file:///sp/savepoint-3f2c-00000000000c");
        let running = JobRow::new(&JobStatus { state: JobState::Running as i32, job_id: "77aa".into(), ..job() }, 0);
        let expected = [
            "id    state     name       savepoint",
            "3f2c  FINISHED  wordcount  file:///sp/savepoint-3f2c-00000000000c",
            "77aa  RUNNING   wordcount",
        ];
        assert_eq!(table(&[row, running]), expected.join("\n"));
    }

    #[test]
    fn savepoint_answers_serialize_with_path_and_checkpoint_id() {
        let done = SavepointCompleted { path: "file:///sp/savepoint-3f2c-00000000000c", checkpoint_id: 12 };
        assert_eq!(
            serde_json::to_value(&done).expect("serializes"),
            json!({"path": "file:///sp/savepoint-3f2c-00000000000c", "checkpoint_id": 12})
        );
        let disposed = SavepointDisposed { path: "file:///sp/savepoint-3f2c-00000000000c", files_deleted: 5 };
        assert_eq!(
            serde_json::to_value(&disposed).expect("serializes"),
            json!({"path": "file:///sp/savepoint-3f2c-00000000000c", "files_deleted": 5})
        );
    }

    #[test]
    fn status_text_names_the_job_and_lists_its_vertices() {
        let text = status_text(&JobRow::new(&job(), 0));
        let expected = [
            "Job wordcount (3f2c)",
            "State: FAILED",
            "Failure: TaskManager tm-1 lost",
            "vertex         parallelism  running  finished  records in  records out",
            "file -> split            4        0         4          80          512",
        ];
        assert_eq!(text, expected.join("\n"));
    }

    #[test]
    fn taskmanagers_serialize_with_their_slots() {
        let tm = TaskManagerInfo {
            taskmanager_id: "tm-1".into(),
            rpc_address: "127.0.0.1:1".into(),
            data_address: "127.0.0.1:2".into(),
            slots: 4,
            free_slots: 1,
            user_functions: vec!["counts".into()],
            metrics_address: "127.0.0.1:3".into(),
        };
        let rows = [TaskManagerRow::from(&tm)];
        assert_eq!(
            serde_json::to_value(&rows).expect("serializes"),
            json!([{"id": "tm-1", "rpc_address": "127.0.0.1:1", "data_address": "127.0.0.1:2", "slots": 4, "free_slots": 1, "functions": ["counts"]}])
        );
        assert_eq!(
            table(&rows),
            "id    rpc address  data address  free slots  slots  functions\ntm-1  127.0.0.1:1  127.0.0.1:2            1      4          1"
        );
    }
}

/// Submits one SQL job's graph (detached); returns its id. For the interactive SQL client.
pub async fn submit_graph(address: &JobManagerEndpoint, job: GraphSubmit, origin: &str) -> Result<String> {
    let mut client = connect(address).await?;
    let req = SubmitJobRequest {
        job_definition: String::new(),
        config: job.settings.into_iter().filter(|(k, _)| !is_cluster_only_key(k)).collect(),
        source_name: origin.to_string(),
        restore_path: String::new(),
        allow_non_restored_state: false,
        job_graph: String::from_utf8_lossy(&job.graph.to_json()).into_owned(),
    };
    submit_request(&mut client, address, req).await
}

/// A job's state name (`RUNNING`, `FINISHED`, ...) and its failure, if it failed.
pub async fn job_state(address: &JobManagerEndpoint, job_id: &str) -> Result<(&'static str, Option<String>)> {
    let mut client = connect(address).await?;
    let s = client.get_job(GetJobRequest { job_id: job_id.to_string() }).await.map_err(|e| rpc_error(address, e))?.into_inner();
    Ok((state_name(s.state), non_empty(&s.failure)))
}

/// Asks the JobManager to cancel a job, without waiting for it to end.
pub async fn request_cancel(address: &JobManagerEndpoint, job_id: &str) -> Result<()> {
    let mut client = connect(address).await?;
    client.cancel_job(CancelJobRequest { job_id: job_id.to_string() }).await.map_err(|e| rpc_error(address, e))?;
    Ok(())
}

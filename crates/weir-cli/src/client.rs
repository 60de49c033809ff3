//! The gRPC client side of the CLI: submit, wait, list, status, cancel, checkpoints, cluster.
//!
//! Every listing is a `#[derive(Serialize)]` row struct built once from the RPC answer:
//! `--output json` serializes the rows, `--output text` renders the same rows as a table. The
//! JSON keys are the row structs' field names, which scripts and the end-to-end tests read.

use crate::Output;
use anyhow::{anyhow, Result};
use comfy_table::{presets, CellAlignment, Table};
use serde::Serialize;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use weir_core::config::Config;
use weir_proto::job_manager_service_client::JobManagerServiceClient;
use weir_proto::*;

/// Connects to the JobManager, failing clearly if it does not answer.
async fn connect(address: &str) -> Result<JobManagerServiceClient<Channel>> {
    let uri = if address.starts_with("http://") { address.to_string() } else { format!("http://{address}") };
    let endpoint = Endpoint::from_shared(uri).map_err(|_| anyhow!("bad JobManager address '{address}'"))?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| anyhow!("cannot reach the JobManager at {address}: {}", source_chain(&e)))?;
    Ok(JobManagerServiceClient::new(channel))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg = format!("{msg}: {s}");
        cur = s.source();
    }
    msg
}

fn rpc_error(address: &str, status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable => anyhow!("cannot reach the JobManager at {address}: {}", status.message()),
        _ => anyhow!("{}", status.message()),
    }
}

fn state_name(s: i32) -> &'static str {
    match JobState::try_from(s).unwrap_or(JobState::Unspecified) {
        JobState::Created => "CREATED",
        JobState::Running => "RUNNING",
        JobState::Finished => "FINISHED",
        JobState::Failed => "FAILED",
        JobState::Canceling => "CANCELING",
        JobState::Canceled => "CANCELED",
        JobState::Restarting => "RESTARTING",
        JobState::Finishing => "FINISHING",
        JobState::Suspended => "SUSPENDED",
        JobState::Unspecified => "UNKNOWN",
    }
}

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
            vertices: j.vertices.iter().map(VertexRow::from).collect(),
        }
    }

    fn now(j: &JobStatus) -> Self {
        Self::new(j, chrono::Utc::now().timestamp_millis())
    }
}

impl TextRow for JobRow {
    const COLUMNS: &'static [(&'static str, CellAlignment)] = &[("id", LEFT), ("state", LEFT), ("name", LEFT)];

    fn cells(&self) -> Vec<String> {
        vec![self.id.clone(), self.state.to_string(), self.name.clone()]
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

/// One checkpoint of a job, as `weir checkpoints` prints it.
#[derive(Debug, Serialize)]
struct CheckpointRow {
    id: u64,
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
}

impl From<&CheckpointInfo> for CheckpointRow {
    fn from(c: &CheckpointInfo) -> Self {
        CheckpointRow {
            id: c.id,
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
        }
    }
}

impl TextRow for CheckpointRow {
    const COLUMNS: &'static [(&'static str, CellAlignment)] = &[
        ("id", RIGHT),
        ("status", LEFT),
        ("kind", LEFT),
        ("trigger time", LEFT),
        ("duration", RIGHT),
        ("size", RIGHT),
        ("in-flight", RIGHT),
        ("alignment", RIGHT),
        ("acks", RIGHT),
        ("failure", LEFT),
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.status.to_string(),
            self.kind.to_string(),
            self.trigger_time.clone().unwrap_or_default(),
            format!("{}ms", self.duration_ms),
            self.size_bytes.to_string(),
            self.inflight_bytes.to_string(),
            format!("{}ms", self.alignment_ms),
            format!("{}/{}", self.acknowledged, self.total),
            self.failure.clone().unwrap_or_default(),
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
}

impl From<&TaskManagerInfo> for TaskManagerRow {
    fn from(t: &TaskManagerInfo) -> Self {
        TaskManagerRow {
            id: t.taskmanager_id.clone(),
            rpc_address: t.rpc_address.clone(),
            data_address: t.data_address.clone(),
            slots: t.slots,
            free_slots: t.free_slots,
        }
    }
}

impl TextRow for TaskManagerRow {
    const COLUMNS: &'static [(&'static str, CellAlignment)] =
        &[("id", LEFT), ("rpc address", LEFT), ("data address", LEFT), ("free slots", RIGHT), ("slots", RIGHT)];

    fn cells(&self) -> Vec<String> {
        vec![self.id.clone(), self.rpc_address.clone(), self.data_address.clone(), self.free_slots.to_string(), self.slots.to_string()]
    }
}

/// What `weir run --detached --output json` prints.
#[derive(Serialize)]
struct Submitted<'a> {
    id: &'a str,
}

/// What `weir cancel --output json` prints.
#[derive(Serialize)]
struct CancelRequested<'a> {
    id: &'a str,
    cancel_requested: bool,
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
}

/// Submits a job; unless detached, waits for it to end and returns the exit code.
pub async fn run_job(address: &str, submit: Submit<'_>, detached: bool, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    let req = SubmitJobRequest {
        job_definition: submit.text.to_string(),
        config: submit.overrides.explicit().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        source_name: submit.origin.to_string(),
        restore_path: submit.restore.unwrap_or_default().to_string(),
    };
    let id = client.submit_job(req).await.map_err(|e| rpc_error(address, e))?.into_inner().job_id;
    if detached {
        match output {
            Output::Json => outln!("{}", serde_json::to_string(&Submitted { id: &id })?),
            Output::Text => outln!("{id}"),
        }
        return Ok(0);
    }
    eprintln!("Job {id} submitted to {address}");
    let status = loop {
        let s = client.get_job(GetJobRequest { job_id: id.clone() }).await.map_err(|e| rpc_error(address, e))?.into_inner();
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
    Ok(if ok { 0 } else { 1 })
}

pub async fn list(address: &str, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    let jobs = client.list_jobs(ListJobsRequest {}).await.map_err(|e| rpc_error(address, e))?.into_inner().jobs;
    let rows: Vec<JobRow> = jobs.iter().map(JobRow::now).collect();
    print_rows(&rows, output, "No jobs.")?;
    Ok(0)
}

pub async fn status(address: &str, job_id: &str, output: Output) -> Result<i32> {
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
    if !job.vertices.is_empty() {
        text.push('\n');
        text.push_str(&table(&job.vertices));
    }
    text
}

pub async fn cancel(address: &str, job_id: &str, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    client.cancel_job(CancelJobRequest { job_id: job_id.to_string() }).await.map_err(|e| rpc_error(address, e))?;
    match output {
        Output::Json => outln!("{}", serde_json::to_string(&CancelRequested { id: job_id, cancel_requested: true })?),
        Output::Text => outln!("Cancellation of job {job_id} requested."),
    }
    Ok(0)
}

pub async fn checkpoints(address: &str, job_id: &str, output: Output) -> Result<i32> {
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

pub async fn cluster(address: &str, output: Output) -> Result<i32> {
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
                "duration_ms": 1250, "parallelism": 4, "attempt": 2, "restarts": 1,
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
                "id": 3, "status": "COMPLETED", "kind": "TIMED_OUT_TO_UNALIGNED",
                "trigger_time": "2026-11-18T11:06:40.003+00:00", "duration_ms": 41, "size_bytes": 183467,
                "inflight_bytes": 4096, "alignment_ms": 2, "acknowledged": 9, "total": 9, "failure": null
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
            "id  status     kind       trigger time                   duration    size  in-flight  alignment  acks  failure",
            " 1  COMPLETED  ALIGNED    2026-11-18T11:06:40.001+00:00      41ms  183467       4096        2ms   9/9",
            "12  FAILED     UNALIGNED  2026-11-18T11:06:40.012+00:00      41ms  183467       4096        2ms   9/9  job restarting",
        ];
        assert_eq!(text, expected.join("\n"));
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
        };
        let rows = [TaskManagerRow::from(&tm)];
        assert_eq!(
            serde_json::to_value(&rows).expect("serializes"),
            json!([{"id": "tm-1", "rpc_address": "127.0.0.1:1", "data_address": "127.0.0.1:2", "slots": 4, "free_slots": 1}])
        );
        assert_eq!(table(&rows), "id    rpc address  data address  free slots  slots\ntm-1  127.0.0.1:1  127.0.0.1:2            1      4");
    }
}

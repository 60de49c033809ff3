//! The gRPC client side of the CLI: submit, wait, list, status, cancel, cluster.

use crate::Output;
use anyhow::{anyhow, Result};
use serde_json::{json, Value};
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

fn rfc3339(ms: i64) -> Value {
    if ms <= 0 {
        return Value::Null;
    }
    chrono::DateTime::from_timestamp_millis(ms).map(|t| Value::String(t.to_rfc3339())).unwrap_or(Value::Null)
}

fn job_json(j: &JobStatus) -> Value {
    let end = if j.end_time_ms > 0 { j.end_time_ms } else { chrono::Utc::now().timestamp_millis() };
    json!({
        "id": j.job_id,
        "name": j.name,
        "state": state_name(j.state),
        "failure": if j.failure.is_empty() { Value::Null } else { Value::String(j.failure.clone()) },
        "start_time": rfc3339(j.start_time_ms),
        "end_time": rfc3339(j.end_time_ms),
        "duration_ms": (end - j.start_time_ms).max(0),
        "parallelism": j.parallelism,
        "attempt": j.attempt,
        "restarts": j.restarts,
        "vertices": j.vertices.iter().map(|v| json!({
            "name": v.name,
            "parallelism": v.parallelism,
            "running": v.running,
            "finished": v.finished,
            "records_in": v.records_in,
            "records_out": v.records_out,
        })).collect::<Vec<_>>(),
    })
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
            Output::Json => println!("{}", json!({ "id": id })),
            Output::Text => println!("{id}"),
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
    match output {
        Output::Json => println!("{}", job_json(&status)),
        Output::Text => {
            let secs = (status.end_time_ms - status.start_time_ms) as f64 / 1000.0;
            eprintln!("Job {} ({}) {} after {secs:.3}s", status.name, status.job_id, state_name(status.state));
            if !status.failure.is_empty() {
                eprintln!("Cause: {}", status.failure);
            }
        }
    }
    if !ok && output == Output::Json {
        eprintln!("Job {} {}: {}", status.job_id, state_name(status.state), status.failure);
    }
    Ok(if ok { 0 } else { 1 })
}

pub async fn list(address: &str, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    let jobs = client.list_jobs(ListJobsRequest {}).await.map_err(|e| rpc_error(address, e))?.into_inner().jobs;
    match output {
        Output::Json => println!("{}", Value::Array(jobs.iter().map(job_json).collect())),
        Output::Text => {
            if jobs.is_empty() {
                println!("No jobs.");
            }
            for j in &jobs {
                println!("{}  {:<9}  {}", j.job_id, state_name(j.state), j.name);
            }
        }
    }
    Ok(0)
}

pub async fn status(address: &str, job_id: &str, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    let j = client.get_job(GetJobRequest { job_id: job_id.to_string() }).await.map_err(|e| rpc_error(address, e))?.into_inner();
    match output {
        Output::Json => println!("{}", job_json(&j)),
        Output::Text => {
            println!("Job {} ({})", j.name, j.job_id);
            println!("State: {}", state_name(j.state));
            if !j.failure.is_empty() {
                println!("Failure: {}", j.failure);
            }
            for v in &j.vertices {
                println!(
                    "  {:<30} parallelism {:>3}  running {:>3}  finished {:>3}  in {:>12}  out {:>12}",
                    v.name, v.parallelism, v.running, v.finished, v.records_in, v.records_out
                );
            }
        }
    }
    Ok(0)
}

pub async fn cancel(address: &str, job_id: &str, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    client.cancel_job(CancelJobRequest { job_id: job_id.to_string() }).await.map_err(|e| rpc_error(address, e))?;
    match output {
        Output::Json => println!("{}", json!({ "id": job_id, "cancel_requested": true })),
        Output::Text => println!("Cancellation of job {job_id} requested."),
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
    let status = |s: i32| match CheckpointStatus::try_from(s).unwrap_or(CheckpointStatus::Unspecified) {
        CheckpointStatus::InProgress => "IN_PROGRESS",
        CheckpointStatus::Completed => "COMPLETED",
        CheckpointStatus::CheckpointFailed => "FAILED",
        CheckpointStatus::Unspecified => "UNKNOWN",
    };
    match output {
        Output::Json => {
            let rows: Vec<Value> = list
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "status": status(c.status),
                        "trigger_time": rfc3339(c.trigger_time_ms),
                        "duration_ms": c.duration_ms,
                        "size_bytes": c.size_bytes,
                        "alignment_ms": c.alignment_ms,
                        "acknowledged": c.acknowledged,
                        "total": c.total,
                        "failure": if c.failure.is_empty() { Value::Null } else { Value::String(c.failure.clone()) },
                    })
                })
                .collect();
            println!("{}", Value::Array(rows));
        }
        Output::Text => {
            if list.is_empty() {
                println!("No checkpoints.");
            }
            println!(
                "{:>6}  {:<11}  {:<29}  {:>9}  {:>12}  {:>9}  {:>7}",
                "id", "status", "trigger time", "duration", "size", "alignment", "acks"
            );
            for c in &list {
                let trigger = rfc3339(c.trigger_time_ms).as_str().unwrap_or("").to_string();
                println!(
                    "{:>6}  {:<11}  {:<29}  {:>7}ms  {:>12}  {:>7}ms  {:>3}/{:<3}{}",
                    c.id,
                    status(c.status),
                    trigger,
                    c.duration_ms,
                    c.size_bytes,
                    c.alignment_ms,
                    c.acknowledged,
                    c.total,
                    if c.failure.is_empty() { String::new() } else { format!("  {}", c.failure) }
                );
            }
        }
    }
    Ok(0)
}

pub async fn cluster(address: &str, output: Output) -> Result<i32> {
    let mut client = connect(address).await?;
    let tms = client.cluster_overview(ClusterOverviewRequest {}).await.map_err(|e| rpc_error(address, e))?.into_inner().taskmanagers;
    match output {
        Output::Json => println!(
            "{}",
            Value::Array(
                tms.iter()
                    .map(|t| json!({"id": t.taskmanager_id, "rpc_address": t.rpc_address, "data_address": t.data_address, "slots": t.slots, "free_slots": t.free_slots}))
                    .collect()
            )
        ),
        Output::Text => {
            if tms.is_empty() {
                println!("No TaskManagers registered.");
            }
            for t in &tms {
                println!("{}  rpc {}  data {}  slots {}/{} free", t.taskmanager_id, t.rpc_address, t.data_address, t.free_slots, t.slots);
            }
        }
    }
    Ok(0)
}

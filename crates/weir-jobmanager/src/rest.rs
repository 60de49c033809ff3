//! The REST API on `rest.port`, in the shape of Flink's: the same JSON field names where Flink
//! has the concept, so scripts written against Flink's REST API need few changes.
//!
//! Every handler only translates: it calls the gRPC service's methods ([`JobManagerRpc`]), which
//! decide, and turns their answers into JSON and their errors into HTTP statuses (`400` bad
//! input, `404` unknown job or route, `409` a job in the wrong state, `401` a missing token, `500`
//! the rest), each with Flink's error body `{"errors": ["message"]}`.
//!
//! Savepoints and stops take as long as their savepoint: as in Flink, `POST` answers at once
//! with a `request-id`, and `GET /jobs/{id}/savepoints/{request-id}` says whether it is still
//! `IN_PROGRESS` or `COMPLETED` (with the folder or the failure). Requests are kept for the
//! JobManager's lifetime, at most [`MAX_TRIGGERS`] of them.
//!
//! With `security.token` set, every request that changes something (`POST`, `PATCH`, `DELETE`)
//! must carry `Authorization: Bearer <token>`; reads are open, as the web UI's are.
//!
//! [`ROUTES`] lists every route with a summary: `/openapi.json` is generated from it, and a
//! test checks that every route it lists answers.

use crate::clock::now_ms;
use crate::coordinator::StopMode;
use crate::metrics::{metrics_json, SubtaskMetrics};
use crate::service::JobManagerRpc;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tonic::{Code, Request};
use weir_core::settings::{CheckpointingMode, JobSettings};
use weir_proto::job_manager_service_server::JobManagerService;
use weir_proto::*;

/// Savepoint and stop requests kept for `GET /jobs/{id}/savepoints/{request-id}`.
const MAX_TRIGGERS: usize = 1000;

/// Every route: method, path (axum's syntax), what it does. `/openapi.json` is built from it.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/overview", "The cluster: TaskManagers, slots, and jobs by state."),
    ("GET", "/config", "The web UI's settings and Weir's version."),
    ("GET", "/jobmanager/config", "The JobManager's configuration, as key/value pairs (secrets left out)."),
    ("GET", "/taskmanagers", "The registered TaskManagers with their slots."),
    ("GET", "/jobs", "Every job's id and state."),
    ("POST", "/jobs", "Submits a YAML job file or (Content-Type: application/sql) a SQL script as the body, or a JSON object {\"job\" or \"sql\": text, \"config\": {...}, \"savepointPath\": ..., \"allowNonRestoredState\": ...}."),
    ("GET", "/jobs/overview", "Every job with its name, state, times and task counts."),
    ("GET", "/jobs/{id}", "One job: state, times, attempt, restarts, failure, its vertices with parallelism, state and live metrics, and its plan (vertices and edges)."),
    ("GET", "/jobs/{id}/vertices/{vertex}", "One vertex with the live metrics of each of its subtasks."),
    ("GET", "/jobs/{id}/metrics/history", "Each vertex's rates and queues, one point a second over the last five minutes."),
    ("PATCH", "/jobs/{id}", "`?mode=cancel`: cancels the job."),
    ("GET", "/jobs/{id}/checkpoints", "Checkpoint counts, the latest completed, failed and savepoint, and the history, newest first."),
    ("POST", "/jobs/{id}/checkpoints", "Triggers a checkpoint now; answers its id."),
    ("GET", "/jobs/{id}/checkpoints/details/{checkpoint}", "One checkpoint of the history."),
    ("GET", "/jobs/{id}/checkpoints/config", "The job's checkpoint settings."),
    ("PATCH", "/jobs/{id}/checkpoints/config", "Changes checkpoint settings of the running job: a JSON object of configuration keys and values."),
    ("GET", "/jobs/{id}/exceptions", "The job's failure, if it has one."),
    ("POST", "/jobs/{id}/savepoints", "Triggers a savepoint: {\"target-directory\", \"cancel-job\", \"formatType\": CANONICAL|NATIVE}; answers a request-id."),
    ("GET", "/jobs/{id}/savepoints/{request}", "Where a savepoint or stop request stands."),
    ("POST", "/jobs/{id}/stop", "Stops the job with a savepoint: {\"targetDirectory\", \"drain\", \"formatType\"}; answers a request-id."),
    ("GET", "/openapi.json", "This API as an OpenAPI 3 document."),
    ("GET", "/metrics", "Prometheus metrics of the cluster, its jobs and every task (OpenMetrics text)."),
    ("GET", "/", "The web UI."),
    ("GET", "/ui/{file}", "The web UI's script and style sheet."),
];

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Rest {
    rpc: Arc<JobManagerRpc>,
    token: weir_proto::security::TokenCheck,
    triggers: Arc<Mutex<Triggers>>,
    /// Compiles SQL scripts submitted with `POST /jobs`; `None`: they are refused.
    sql: Option<crate::SqlCompiler>,
}

/// Savepoint and stop requests by request id, oldest first.
#[derive(Default)]
struct Triggers {
    order: Vec<String>,
    outcomes: HashMap<String, (String, Option<Result<SavepointResponse, String>>)>,
}

/// An error answer: a status and Flink's `{"errors": [...]}`.
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "errors": [self.1] }))).into_response()
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        let status = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => StatusCode::CONFLICT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated | Code::PermissionDenied => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, s.message().to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

fn accepted(v: Value) -> ApiResult {
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

impl Rest {
    pub(crate) fn new(rpc: JobManagerRpc, token: weir_proto::security::TokenCheck, sql: Option<crate::SqlCompiler>) -> Self {
        Self { rpc: Arc::new(rpc), token, triggers: Arc::default(), sql }
    }

    /// The routes of [`ROUTES`] with their handlers.
    pub(crate) fn router(self) -> Router {
        Router::new()
            .route("/overview", get(overview))
            .route("/config", get(web_config))
            .route("/jobmanager/config", get(jobmanager_config))
            .route("/taskmanagers", get(taskmanagers))
            .route("/jobs", get(jobs).post(submit))
            .route("/jobs/overview", get(jobs_overview))
            .route("/jobs/{id}", get(job).patch(patch_job))
            .route("/jobs/{id}/vertices/{vertex}", get(vertex))
            .route("/jobs/{id}/metrics/history", get(metrics_history))
            .route("/jobs/{id}/checkpoints", get(checkpoints).post(trigger_checkpoint))
            .route("/jobs/{id}/checkpoints/details/{checkpoint}", get(checkpoint_details))
            .route("/jobs/{id}/checkpoints/config", get(checkpoint_config).patch(patch_checkpoint_config))
            .route("/jobs/{id}/exceptions", get(exceptions))
            .route("/jobs/{id}/savepoints", axum::routing::post(trigger_savepoint))
            .route("/jobs/{id}/savepoints/{request}", get(savepoint_status))
            .route("/jobs/{id}/stop", axum::routing::post(stop))
            .route("/openapi.json", get(openapi))
            .route("/metrics", get(prometheus))
            .route("/", get(crate::ui::index))
            .route("/ui/{file}", get(crate::ui::asset))
            .fallback(|method: Method, uri: axum::http::Uri| async move {
                ApiError(StatusCode::NOT_FOUND, format!("no route {method} {}: see /openapi.json", uri.path()))
            })
            .layer(axum::middleware::from_fn_with_state(self.clone(), authorize))
            .with_state(self)
    }

    /// Starts a savepoint (or stop) in the background; returns its request id.
    fn trigger(&self, job_id: &str, directory: String, native: bool, stop: Option<StopMode>) -> String {
        let request = uuid::Uuid::new_v4().simple().to_string();
        {
            let mut t = self.triggers.lock();
            if t.order.len() >= MAX_TRIGGERS {
                let oldest = t.order.remove(0);
                t.outcomes.remove(&oldest);
            }
            t.order.push(request.clone());
            t.outcomes.insert(request.clone(), (job_id.to_string(), None));
        }
        let (rest, id, job) = (self.clone(), request.clone(), job_id.to_string());
        tokio::spawn(async move {
            let outcome = rest.rpc.savepoint(&job, &directory, native, stop).await.map_err(|s| s.message().to_string());
            if let Some(entry) = rest.triggers.lock().outcomes.get_mut(&id) {
                entry.1 = Some(outcome);
            }
        });
        request
    }
}

/// With `security.token`, a request that changes something needs it as a bearer token.
async fn authorize(State(rest): State<Rest>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mutating = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if mutating {
        let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
        if let Err(status) = rest.token.check(&metadata) {
            return ApiError(StatusCode::UNAUTHORIZED, format!("{} (as 'Authorization: Bearer <token>')", status.message()))
                .into_response();
        }
    }
    next.run(request).await
}

/// Flink's `duration`: until the end, or until now for a job that has not ended.
fn duration(j: &weir_proto::JobStatus) -> i64 {
    let end = if j.end_time_ms > 0 { j.end_time_ms } else { now_ms() };
    (end - j.start_time_ms).max(0)
}

/// A vertex's state from its subtasks and the job's.
fn vertex_state(v: &VertexStatus, job: &str) -> &'static str {
    if v.parallelism > 0 && v.finished == v.parallelism {
        "FINISHED"
    } else if v.running + v.finished == v.parallelism && v.running > 0 {
        "RUNNING"
    } else {
        match job {
            "FAILED" => "FAILED",
            "CANCELED" | "CANCELING" => "CANCELED",
            _ => "CREATED",
        }
    }
}

async fn list(rest: &Rest) -> Result<Vec<weir_proto::JobStatus>, ApiError> {
    Ok(rest.rpc.list_jobs(Request::new(ListJobsRequest {})).await?.into_inner().jobs)
}

async fn status(rest: &Rest, id: &str) -> Result<weir_proto::JobStatus, ApiError> {
    Ok(rest.rpc.get_job(Request::new(GetJobRequest { job_id: id.to_string() })).await?.into_inner())
}

async fn overview(State(rest): State<Rest>) -> ApiResult {
    let tms = rest.rpc.state.overview();
    let jobs = list(&rest).await?;
    let count = |names: &[&str]| jobs.iter().filter(|j| names.contains(&job_state_name(j.state))).count();
    ok(json!({
        "taskmanagers": tms.len(),
        "slots-total": tms.iter().map(|t| t.slots).sum::<u32>(),
        "slots-available": tms.iter().map(|t| t.free_slots).sum::<u32>(),
        "jobs-running": count(&["CREATED", "RUNNING", "RESTARTING", "FINISHING", "CANCELING"]),
        "jobs-finished": count(&["FINISHED"]),
        "jobs-cancelled": count(&["CANCELED"]),
        "jobs-failed": count(&["FAILED"]),
        "jobs-suspended": count(&["SUSPENDED"]),
        "weir-version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn web_config() -> ApiResult {
    ok(json!({
        "refresh-interval": 1000,
        "timezone-name": "UTC",
        "timezone-offset": 0,
        "weir-version": env!("CARGO_PKG_VERSION"),
        "features": { "web-submit": false, "web-cancel": true },
    }))
}

async fn jobmanager_config(State(rest): State<Rest>) -> ApiResult {
    // The JobManager keeps the cluster's configuration without `security.*` for its jobs.
    let pairs: Vec<Value> = rest.rpc.state.config().explicit().iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
    ok(Value::Array(pairs))
}

async fn taskmanagers(State(rest): State<Rest>) -> ApiResult {
    let tms: Vec<Value> = rest
        .rpc
        .state
        .overview()
        .into_iter()
        .map(|t| {
            json!({
                "id": t.taskmanager_id,
                "path": t.rpc_address,
                "dataAddress": t.data_address,
                "slotsNumber": t.slots,
                "freeSlots": t.free_slots,
                "userFunctions": t.user_functions,
                "metricsAddress": t.metrics_address,
            })
        })
        .collect();
    ok(json!({ "taskmanagers": tms }))
}

async fn jobs(State(rest): State<Rest>) -> ApiResult {
    let jobs: Vec<Value> = list(&rest).await?.iter().map(|j| json!({ "id": j.job_id, "status": job_state_name(j.state) })).collect();
    ok(json!({ "jobs": jobs }))
}

async fn jobs_overview(State(rest): State<Rest>) -> ApiResult {
    let jobs: Vec<Value> = list(&rest)
        .await?
        .iter()
        .map(|j| {
            let total: u32 = j.vertices.iter().map(|v| v.parallelism).sum();
            let running: u32 = j.vertices.iter().map(|v| v.running).sum();
            let finished: u32 = j.vertices.iter().map(|v| v.finished).sum();
            json!({
                "jid": j.job_id,
                "name": j.name,
                "state": job_state_name(j.state),
                "start-time": j.start_time_ms,
                "end-time": if j.end_time_ms > 0 { j.end_time_ms } else { -1 },
                "duration": duration(j),
                "tasks": { "total": total, "running": running, "finished": finished },
            })
        })
        .collect();
    ok(json!({ "jobs": jobs }))
}

/// A vertex's metrics: Flink's `read-records`/`write-records` (final counts once its tasks
/// ended, as their last state reports said), then the live ones of its running subtasks.
fn vertex_metrics(v: &VertexStatus, live: &[&SubtaskMetrics]) -> Value {
    let mut m = json!({ "read-records": v.records_in, "write-records": v.records_out });
    if let (Value::Object(o), Value::Object(l)) = (&mut m, metrics_json(live.iter().copied())) {
        o.insert("read-bytes".into(), l["numBytesIn"].clone());
        o.insert("write-bytes".into(), l["numBytesOut"].clone());
        if !live.is_empty() {
            // Running tasks count further than their last state report.
            o.insert("read-records".into(), json!(v.records_in.max(l["numRecordsIn"].as_u64().unwrap_or(0))));
            o.insert("write-records".into(), json!(v.records_out.max(l["numRecordsOut"].as_u64().unwrap_or(0))));
        }
        o.extend(l);
    }
    m
}

/// The job graph as Flink's `plan`: nodes (vertices with their operators) and edges.
fn plan_json(graph: &weir_core::graph::JobGraph) -> Value {
    let nodes: Vec<Value> = graph
        .vertices
        .iter()
        .map(|v| {
            json!({
                "id": v.id.to_string(),
                "description": v.name,
                "parallelism": v.parallelism,
                "operators": v.operators.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let edges: Vec<Value> = graph
        .edges
        .iter()
        .map(|e| {
            let strategy = match &e.partitioning {
                weir_core::graph::Partitioning::Forward => "FORWARD".to_string(),
                weir_core::graph::Partitioning::Hash { key } => format!("HASH({key})"),
                weir_core::graph::Partitioning::Rebalance => "REBALANCE".to_string(),
                weir_core::graph::Partitioning::Broadcast => "BROADCAST".to_string(),
            };
            json!({ "source": e.source.to_string(), "target": e.target.to_string(), "ship_strategy": strategy })
        })
        .collect();
    json!({ "jid": Value::Null, "name": graph.name, "nodes": nodes, "edges": edges })
}

async fn job(State(rest): State<Rest>, Path(id): Path<String>) -> ApiResult {
    let j = status(&rest, &id).await?;
    let state = job_state_name(j.state);
    let live = rest.rpc.state.metrics().subtasks(&id);
    let vertices: Vec<Value> = j
        .vertices
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let subtasks: Vec<&SubtaskMetrics> = live.range((i as u32, 0)..=(i as u32, u32::MAX)).map(|(_, s)| s).collect();
            json!({
                "id": i.to_string(),
                "name": v.name,
                "parallelism": v.parallelism,
                "status": vertex_state(v, state),
                "tasks": { "running": v.running, "finished": v.finished },
                "metrics": vertex_metrics(v, &subtasks),
            })
        })
        .collect();
    let mut plan = rest.rpc.state.job_graph(&id).map(|g| plan_json(&g)).unwrap_or(Value::Null);
    if plan.is_object() {
        plan["jid"] = json!(j.job_id);
    }
    ok(json!({
        "jid": j.job_id,
        "name": j.name,
        "state": state,
        "start-time": j.start_time_ms,
        "end-time": if j.end_time_ms > 0 { j.end_time_ms } else { -1 },
        "duration": duration(&j),
        "now": now_ms(),
        "parallelism": j.parallelism,
        "attempt": j.attempt,
        "restarts": j.restarts,
        "failure": if j.failure.is_empty() { Value::Null } else { Value::String(j.failure.clone()) },
        "savepoint-path": if j.savepoint_path.is_empty() { Value::Null } else { Value::String(j.savepoint_path.clone()) },
        "vertices": vertices,
        "plan": plan,
    }))
}

async fn vertex(State(rest): State<Rest>, Path((id, vertex)): Path<(String, String)>) -> ApiResult {
    let j = status(&rest, &id).await?;
    let n: u32 = vertex.parse().map_err(|_| bad_request(format!("'{vertex}' is not a vertex id")))?;
    let v = j.vertices.get(n as usize).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("job {id} has no vertex {n}")))?;
    let live = rest.rpc.state.metrics().subtasks(&id);
    let subtasks: Vec<Value> = live
        .range((n, 0)..=(n, u32::MAX))
        .map(|((_, s), m)| json!({ "subtask": s, "taskmanager-id": m.taskmanager, "metrics": metrics_json([m]) }))
        .collect();
    ok(json!({
        "id": n.to_string(),
        "name": v.name,
        "parallelism": v.parallelism,
        "status": vertex_state(v, job_state_name(j.state)),
        "now": now_ms(),
        "subtasks": subtasks,
    }))
}

async fn metrics_history(State(rest): State<Rest>, Path(id): Path<String>) -> ApiResult {
    status(&rest, &id).await?;
    ok(json!({ "interval": 1000, "points": rest.rpc.state.metrics().history(&id) }))
}

/// `/metrics`: the cluster, each job, and every running task as the heartbeats last
/// reported it (see `docs/metrics.md`).
async fn prometheus(State(rest): State<Rest>) -> Result<Response, ApiError> {
    let jobs = list(&rest).await?;
    let state = &rest.rpc.state;
    let histories: HashMap<String, Vec<CheckpointInfo>> = jobs
        .iter()
        .filter(|j| j.end_time_ms == 0)
        .map(|j| (j.job_id.clone(), state.checkpoint_history(&j.job_id).unwrap_or_default()))
        .collect();
    let text = crate::metrics::prometheus(&state.overview(), &jobs, &histories, state.metrics(), now_ms());
    Ok(([(axum::http::header::CONTENT_TYPE, weir_proto::metrics::CONTENT_TYPE)], text).into_response())
}

#[derive(serde::Deserialize)]
struct PatchQuery {
    mode: Option<String>,
}

async fn patch_job(State(rest): State<Rest>, Path(id): Path<String>, Query(q): Query<PatchQuery>) -> ApiResult {
    match q.mode.as_deref().unwrap_or("cancel") {
        "cancel" => {
            rest.rpc.cancel_job(Request::new(CancelJobRequest { job_id: id })).await?;
            accepted(json!({}))
        }
        other => {
            Err(bad_request(format!("unknown mode '{other}': PATCH /jobs/{{id}} takes ?mode=cancel (stop with POST /jobs/{{id}}/stop)")))
        }
    }
}

/// One checkpoint as Flink's history lists it.
fn checkpoint_json(c: &CheckpointInfo) -> Value {
    let status = match CheckpointStatus::try_from(c.status).unwrap_or(CheckpointStatus::Unspecified) {
        CheckpointStatus::InProgress => "IN_PROGRESS",
        CheckpointStatus::Completed => "COMPLETED",
        CheckpointStatus::CheckpointFailed => "FAILED",
        CheckpointStatus::Unspecified => "UNKNOWN",
    };
    let kind = weir_proto::CheckpointKind::try_from(c.kind).unwrap_or(weir_proto::CheckpointKind::Unspecified);
    let checkpoint_type = if c.savepoint {
        "SAVEPOINT"
    } else if matches!(kind, weir_proto::CheckpointKind::Unaligned | weir_proto::CheckpointKind::TimedOutToUnaligned) {
        "UNALIGNED_CHECKPOINT"
    } else {
        "CHECKPOINT"
    };
    json!({
        "id": c.id,
        "status": status,
        "is_savepoint": c.savepoint,
        "checkpoint_type": checkpoint_type,
        "timed_out_to_unaligned": kind == weir_proto::CheckpointKind::TimedOutToUnaligned,
        "trigger_timestamp": c.trigger_time_ms,
        "latest_ack_timestamp": if status == "IN_PROGRESS" { Value::Null } else { json!(c.trigger_time_ms + c.duration_ms as i64) },
        "end_to_end_duration": c.duration_ms,
        "state_size": c.size_bytes,
        "alignment_duration": c.alignment_ms,
        "sync_duration": c.sync_ms,
        "async_duration": c.async_ms,
        "persisted_data": c.inflight_bytes,
        "num_subtasks": c.total,
        "num_acknowledged_subtasks": c.acknowledged,
        "external_path": if c.path.is_empty() { Value::Null } else { Value::String(c.path.clone()) },
        "failure_message": if c.failure.is_empty() { Value::Null } else { Value::String(c.failure.clone()) },
    })
}

async fn trigger_checkpoint(State(rest): State<Rest>, Path(id): Path<String>) -> ApiResult {
    let (checkpoint, effects) = rest.rpc.state.trigger_checkpoint(&id)?;
    rest.rpc.executor.perform(effects);
    accepted(json!({ "request-id": checkpoint.to_string(), "checkpoint-id": checkpoint }))
}

async fn checkpoint_details(State(rest): State<Rest>, Path((id, checkpoint)): Path<(String, String)>) -> ApiResult {
    let history = rest.rpc.list_checkpoints(Request::new(ListCheckpointsRequest { job_id: id.clone() })).await?.into_inner().checkpoints;
    let n: u64 = checkpoint.parse().map_err(|_| bad_request(format!("'{checkpoint}' is not a checkpoint id")))?;
    let c = history.iter().find(|c| c.id == n).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("job {id} has no checkpoint {n}")))?;
    ok(checkpoint_json(c))
}

async fn patch_checkpoint_config(State(rest): State<Rest>, Path(id): Path<String>, body: String) -> ApiResult {
    let config = config_pairs(&json_body(&body)?)?.into_iter().collect();
    rest.rpc.update_checkpoint_config(Request::new(UpdateCheckpointConfigRequest { job_id: id.clone(), config })).await?;
    checkpoint_config(State(rest), Path(id)).await
}

async fn checkpoints(State(rest): State<Rest>, Path(id): Path<String>) -> ApiResult {
    let changes: Vec<Value> = rest
        .rpc
        .state
        .config_changes(&id)
        .unwrap_or_default()
        .into_iter()
        .map(|(at, pairs)| json!({ "timestamp": at, "changes": pairs.into_iter().collect::<BTreeMap<_, _>>() }))
        .collect();
    let history = rest.rpc.list_checkpoints(Request::new(ListCheckpointsRequest { job_id: id })).await?.into_inner().checkpoints;
    let with = |s: CheckpointStatus| history.iter().filter(move |c| c.status == s as i32);
    let latest = |s: CheckpointStatus, savepoint: bool| {
        with(s).filter(|c| c.savepoint == savepoint).max_by_key(|c| c.id).map(checkpoint_json).unwrap_or(Value::Null)
    };
    ok(json!({
        "counts": {
            "total": history.len(),
            "in_progress": with(CheckpointStatus::InProgress).count(),
            "completed": with(CheckpointStatus::Completed).count(),
            "failed": with(CheckpointStatus::CheckpointFailed).count(),
        },
        "latest": {
            "completed": latest(CheckpointStatus::Completed, false),
            "savepoint": latest(CheckpointStatus::Completed, true),
            "failed": history.iter().filter(|c| c.status == CheckpointStatus::CheckpointFailed as i32).max_by_key(|c| c.id).map(checkpoint_json).unwrap_or(Value::Null),
        },
        "history": history.iter().rev().map(checkpoint_json).collect::<Vec<_>>(),
        "config_changes": changes,
    }))
}

async fn checkpoint_config(State(rest): State<Rest>, Path(id): Path<String>) -> ApiResult {
    let config = rest.rpc.state.job_config(&id).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no job with id {id}")))?;
    let s = JobSettings::from_config(&config).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let c = &s.checkpoint;
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    ok(json!({
        "mode": match c.mode { CheckpointingMode::ExactlyOnce => "exactly_once", CheckpointingMode::AtLeastOnce => "at_least_once" },
        "interval": c.interval.map(ms),
        "timeout": ms(c.timeout),
        "min_pause": ms(c.min_pause),
        "max_concurrent": c.max_concurrent,
        "unaligned_checkpoints": c.unaligned,
        "aligned_checkpoint_timeout": ms(c.aligned_timeout),
        "tolerable_failed_checkpoints": c.tolerable_failures,
        "num_retained": c.num_retained,
        "incremental": c.incremental,
        "state_backend": config.get(weir_core::config::keys::STATE_BACKEND),
        "checkpoint_storage": c.dir,
        "savepoint_directory": c.savepoint_dir,
    }))
}

async fn exceptions(State(rest): State<Rest>, Path(id): Path<String>) -> ApiResult {
    let j = status(&rest, &id).await?;
    let entries: Vec<Value> = if j.failure.is_empty() {
        Vec::new()
    } else {
        vec![json!({ "exceptionName": "JobFailure", "stacktrace": j.failure, "timestamp": j.end_time_ms.max(j.start_time_ms) })]
    };
    ok(json!({
        "root-exception": if j.failure.is_empty() { Value::Null } else { Value::String(j.failure.clone()) },
        "timestamp": if j.failure.is_empty() { Value::Null } else { json!(j.end_time_ms.max(j.start_time_ms)) },
        "restarts": j.restarts,
        "exceptionHistory": { "entries": entries, "truncated": false },
    }))
}

/// A JSON body, or an empty one as `{}`; anything else is a 400 naming the problem.
fn json_body(body: &str) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("the body must be a JSON object")),
        Err(e) => Err(bad_request(format!("the body is not JSON: {e}"))),
    }
}

fn text_field(m: &serde_json::Map<String, Value>, key: &str) -> Result<String, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(bad_request(format!("'{key}' must be a string, not {other}"))),
    }
}

fn bool_field(m: &serde_json::Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad_request(format!("'{key}' must be true or false, not {other}"))),
    }
}

/// A JSON object of configuration keys as (key, value) pairs: strings as they are, numbers
/// and booleans as written; anything else is a 400 naming the key.
fn config_pairs(m: &serde_json::Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    m.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
            other => Err(bad_request(format!("configuration key '{k}': {other} is not a value"))),
        })
        .collect()
}

fn native_format(m: &serde_json::Map<String, Value>) -> Result<bool, ApiError> {
    match text_field(m, "formatType")?.to_ascii_uppercase().as_str() {
        "" | "CANONICAL" => Ok(false),
        "NATIVE" => Ok(true),
        other => Err(bad_request(format!("'formatType' must be CANONICAL or NATIVE, not '{other}'"))),
    }
}

async fn submit(State(rest): State<Rest>, headers: HeaderMap, body: String) -> ApiResult {
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let is_json = content_type.starts_with("application/json");
    let mut request = SubmitJobRequest { source_name: "rest".into(), ..Default::default() };
    if content_type.starts_with("application/sql") || content_type.starts_with("text/x-sql") {
        return submit_sql(&rest, &body, Vec::new(), request).await;
    }
    if is_json {
        let m = json_body(&body)?;
        request.restore_path = text_field(&m, "savepointPath")?;
        request.allow_non_restored_state = bool_field(&m, "allowNonRestoredState")?;
        let config = match m.get("config") {
            None => Vec::new(),
            Some(Value::Object(pairs)) => config_pairs(pairs)?,
            Some(_) => return Err(bad_request("'config' must be an object of configuration keys")),
        };
        let sql = text_field(&m, "sql")?;
        if !sql.is_empty() {
            return submit_sql(&rest, &sql, config, request).await;
        }
        request.job_definition = text_field(&m, "job")?;
        if request.job_definition.is_empty() {
            return Err(bad_request("'job' (the job file's text) or 'sql' (a SQL script) is missing"));
        }
        request.config = config.into_iter().collect();
    } else {
        if body.trim().is_empty() {
            return Err(bad_request("the body is empty: send a YAML job file (or JSON with Content-Type: application/json)"));
        }
        request.job_definition = body;
    }
    let r = rest.rpc.submit_job(Request::new(request)).await?.into_inner();
    accepted(json!({ "jobid": r.job_id, "warnings": r.warnings }))
}

/// A SQL script: compiled here (its errors name line and column), then each job it defines
/// submitted as `weir run script.sql` does, the first one from `savepointPath` if given.
/// Answers every job's id, and what `SHOW`, `DESCRIBE` and `EXPLAIN` printed.
async fn submit_sql(rest: &Rest, script: &str, config: Vec<(String, String)>, template: SubmitJobRequest) -> ApiResult {
    let compile =
        rest.sql.as_ref().ok_or_else(|| bad_request("this JobManager was started without the SQL planner: submit SQL with weir run"))?;
    let overrides = weir_core::config::Config::from_pairs(config.iter().map(|(k, v)| (k, v))).map_err(|e| bad_request(e.to_string()))?;
    let compiled = compile(script, rest.rpc.state.config(), &overrides).map_err(bad_request)?;
    if compiled.jobs.iter().any(|j| j.query) {
        return Err(bad_request(
            "the script runs a query whose rows would come back to a client (SELECT without INSERT INTO): INSERT INTO a table, or use weir sql",
        ));
    }
    if !template.restore_path.is_empty() && compiled.jobs.len() > 1 {
        return Err(bad_request(format!(
            "savepointPath restores one job, and the script submits {} (one per INSERT): put the INSERTs into one EXECUTE STATEMENT SET",
            compiled.jobs.len()
        )));
    }
    let (mut ids, mut warnings) = (Vec::new(), compiled.notices.clone());
    for (i, job) in compiled.jobs.into_iter().enumerate() {
        let request = SubmitJobRequest {
            job_graph: job.graph_json,
            config: job.settings.into_iter().filter(|(k, _)| !weir_core::settings::is_cluster_only_key(k)).collect(),
            restore_path: if i == 0 { template.restore_path.clone() } else { String::new() },
            ..template.clone()
        };
        let r = rest.rpc.submit_job(Request::new(request)).await?.into_inner();
        ids.push(r.job_id);
        warnings.extend(r.warnings);
    }
    let body = json!({ "jobid": ids.first(), "jobids": ids, "warnings": warnings, "output": compiled.output });
    if ids.is_empty() {
        ok(body)
    } else {
        accepted(body)
    }
}

async fn trigger_savepoint(State(rest): State<Rest>, Path(id): Path<String>, body: String) -> ApiResult {
    let m = json_body(&body)?;
    status(&rest, &id).await?;
    let stop = bool_field(&m, "cancel-job")?.then_some(StopMode::Suspend);
    let request = rest.trigger(&id, text_field(&m, "target-directory")?, native_format(&m)?, stop);
    accepted(json!({ "request-id": request }))
}

async fn stop(State(rest): State<Rest>, Path(id): Path<String>, body: String) -> ApiResult {
    let m = json_body(&body)?;
    status(&rest, &id).await?;
    let mode = if bool_field(&m, "drain")? { StopMode::Drain } else { StopMode::Suspend };
    let request = rest.trigger(&id, text_field(&m, "targetDirectory")?, native_format(&m)?, Some(mode));
    accepted(json!({ "request-id": request }))
}

async fn savepoint_status(State(rest): State<Rest>, Path((id, request)): Path<(String, String)>) -> ApiResult {
    let triggers = rest.triggers.lock();
    let (job, outcome) = triggers
        .outcomes
        .get(&request)
        .filter(|(job, _)| *job == id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no savepoint request {request} for job {id}")))?;
    debug_assert_eq!(job, &id);
    ok(match outcome {
        None => json!({ "status": { "id": "IN_PROGRESS" } }),
        Some(Ok(r)) => json!({ "status": { "id": "COMPLETED" }, "operation": { "location": r.path, "checkpoint-id": r.checkpoint_id } }),
        Some(Err(why)) => {
            json!({ "status": { "id": "COMPLETED" }, "operation": { "failure-cause": { "class": "SavepointFailed", "stack-trace": why } } })
        }
    })
}

/// The OpenAPI 3 document of [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        let mut op = json!({
            "summary": summary,
            "responses": {
                "200": { "description": "OK (202 for requests that start something)", "content": { "application/json": {} } },
                "default": { "description": "An error: {\"errors\": [message]}", "content": { "application/json": {} } },
            },
        });
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        entry[method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Weir REST API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
    })
}

async fn openapi() -> ApiResult {
    ok(openapi_document())
}

/// Serves the API on `listener` until `shutdown` turns true.
pub(crate) async fn serve(listener: tokio::net::TcpListener, rest: Rest, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let app = rest.router();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("REST API server failed: {e}");
    }
}

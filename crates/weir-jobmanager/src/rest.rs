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

use crate::coordinator::StopMode;
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
    ("POST", "/jobs", "Submits a YAML job file (the body), or a JSON object {\"job\": text, \"config\": {...}, \"savepointPath\": ..., \"allowNonRestoredState\": ...}."),
    ("GET", "/jobs/overview", "Every job with its name, state, times and task counts."),
    ("GET", "/jobs/{id}", "One job: state, times, attempt, restarts, failure, and its vertices with parallelism, state and record counts."),
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
];

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Rest {
    rpc: Arc<JobManagerRpc>,
    token: weir_proto::security::TokenCheck,
    triggers: Arc<Mutex<Triggers>>,
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
    pub(crate) fn new(rpc: JobManagerRpc, token: weir_proto::security::TokenCheck) -> Self {
        Self { rpc: Arc::new(rpc), token, triggers: Arc::default() }
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
            .route("/jobs/{id}/checkpoints", get(checkpoints).post(trigger_checkpoint))
            .route("/jobs/{id}/checkpoints/details/{checkpoint}", get(checkpoint_details))
            .route("/jobs/{id}/checkpoints/config", get(checkpoint_config).patch(patch_checkpoint_config))
            .route("/jobs/{id}/exceptions", get(exceptions))
            .route("/jobs/{id}/savepoints", axum::routing::post(trigger_savepoint))
            .route("/jobs/{id}/savepoints/{request}", get(savepoint_status))
            .route("/jobs/{id}/stop", axum::routing::post(stop))
            .route("/openapi.json", get(openapi))
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

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
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

async fn job(State(rest): State<Rest>, Path(id): Path<String>) -> ApiResult {
    let j = status(&rest, &id).await?;
    let state = job_state_name(j.state);
    let vertices: Vec<Value> = j
        .vertices
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "id": i.to_string(),
                "name": v.name,
                "parallelism": v.parallelism,
                "status": vertex_state(v, state),
                "tasks": { "running": v.running, "finished": v.finished },
                "metrics": { "read-records": v.records_in, "write-records": v.records_out },
            })
        })
        .collect();
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
    }))
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
    let is_json =
        headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    let mut request = SubmitJobRequest { source_name: "rest".into(), ..Default::default() };
    if is_json {
        let m = json_body(&body)?;
        request.job_definition = text_field(&m, "job")?;
        if request.job_definition.is_empty() {
            return Err(bad_request("'job' (the job file's text) is missing"));
        }
        request.restore_path = text_field(&m, "savepointPath")?;
        request.allow_non_restored_state = bool_field(&m, "allowNonRestoredState")?;
        if let Some(config) = m.get("config") {
            let Value::Object(pairs) = config else { return Err(bad_request("'config' must be an object of configuration keys")) };
            request.config = config_pairs(pairs)?.into_iter().collect();
        }
    } else {
        if body.trim().is_empty() {
            return Err(bad_request("the body is empty: send a YAML job file (or JSON with Content-Type: application/json)"));
        }
        request.job_definition = body;
    }
    let r = rest.rpc.submit_job(Request::new(request)).await?.into_inner();
    accepted(json!({ "jobid": r.job_id, "warnings": r.warnings }))
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

//! The JobManager's gRPC service (`JobManagerService` in `proto/weir/v1/jobmanager.proto`).
//!
//! Two kinds of callers: TaskManagers (registration, heartbeats, task states, checkpoint
//! acknowledgements and declines) and the CLI (submit, list, status, cancel, checkpoints,
//! cluster). Every method only translates: it validates the request, calls the state, and hands
//! the effects the state returns to the executor. Bad input is `INVALID_ARGUMENT` naming what is
//! wrong; an unknown job asked for by the CLI is `NOT_FOUND` naming its id.
//!
//! TaskManager reports (task states, acknowledgements, declines) are answered with success
//! even when they no longer count: they carry their job id and attempt, and the state
//! ignores one of an older attempt, or of a job this JobManager does not know (say, one
//! submitted to an earlier JobManager without a catalog).

use crate::coordinator::StopMode;
use crate::coordinator::{AckStats, Event};
use crate::effects::Executor;
use crate::job::{DefinitionKind, JobDefinition, NewJob};
use crate::program;
use crate::savepoint;
use crate::state::JobManagerState;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use weir_core::config::Config;
use weir_core::graph::JobGraph;
use weir_core::settings::{resolve_checkpoint_dir, JobSettings};
use weir_proto::job_manager_service_server::JobManagerService;
use weir_proto::*;
use weir_state::metadata::SubtaskState;
use weir_state::CheckpointStorage;

/// The gRPC service: translates requests into calls on the state and hands the resulting
/// effects to the executor; it decides nothing itself.
pub(crate) struct JobManagerRpc {
    /// Where every request's decision is made.
    pub state: Arc<JobManagerState>,
    /// Performs the effects a decision returns: catalog entries are written before the RPC
    /// answers, RPCs to TaskManagers and storage calls go on after it.
    pub executor: Executor,
}

#[tonic::async_trait]
impl JobManagerService for JobManagerRpc {
    /// A TaskManager offers its slots; the answer tells it how often to heartbeat.
    ///
    /// Zero slots, or an RPC address that does not make an `http://` URI, is `INVALID_ARGUMENT`.
    /// Registering again under a known id replaces the entry (all its slots free again);
    /// schedulers waiting for slots look again at once.

    async fn register_task_manager(
        &self,
        request: Request<RegisterTaskManagerRequest>,
    ) -> Result<Response<RegisterTaskManagerResponse>, Status> {
        let r = request.into_inner();
        if r.slots == 0 {
            return Err(Status::invalid_argument("a TaskManager must offer at least one slot"));
        }
        self.state
            .register_tm(&r.taskmanager_id, [&r.rpc_address, &r.data_address, &r.metrics_address], r.slots, r.user_functions)
            .map_err(Status::invalid_argument)?;
        let interval = self.state.settings().heartbeat_interval;
        Ok(Response::new(RegisterTaskManagerResponse { cluster_id: String::new(), heartbeat_interval_ms: interval.as_millis() as u64 }))
    }

    /// A TaskManager is alive. `known = false` tells one that was declared lost (or that
    /// registered with an earlier JobManager) to cancel its tasks and register again.
    /// Only the time of the heartbeat is recorded; the executions it lists are not checked.

    async fn deregister_task_manager(
        &self,
        request: Request<DeregisterTaskManagerRequest>,
    ) -> Result<Response<DeregisterTaskManagerResponse>, Status> {
        let r = request.into_inner();
        let why = if r.reason.is_empty() { "it deregistered".to_string() } else { format!("it deregistered: {}", r.reason) };
        self.executor.perform(self.state.taskmanager_lost(&r.taskmanager_id, &why));
        Ok(Response::new(DeregisterTaskManagerResponse {}))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let r = request.into_inner();
        let known = self.state.heartbeat(&r.taskmanager_id);
        if known {
            self.state.metrics().report(&r.taskmanager_id, r.metrics, crate::clock::now_ms());
        }
        Ok(Response::new(HeartbeatResponse { known }))
    }

    /// A subtask changed state (running, finishing, finished, failed, canceled), with its record
    /// counters. A failure is probed before it fails the job (see `failover.rs`).
    ///
    /// Which job state a report moves to is decided by `JobManagerState::task_update`. A
    /// state number this JobManager does not know is recorded as `UNSPECIFIED`.

    async fn update_task_state(&self, request: Request<UpdateTaskStateRequest>) -> Result<Response<UpdateTaskStateResponse>, Status> {
        let r = request.into_inner();
        let e = r.execution.ok_or_else(|| Status::invalid_argument("missing execution"))?;
        let state = TaskState::try_from(r.state).unwrap_or(TaskState::Unspecified);
        let effects = self.state.task_update(
            &e.job_id,
            e.attempt,
            (e.vertex, e.subtask),
            state,
            (r.records_in, r.records_out),
            &r.taskmanager_id,
            &r.failure,
        );
        self.executor.perform(effects);
        Ok(Response::new(UpdateTaskStateResponse {}))
    }

    /// Compiles a job file under this JobManager's configuration plus the client's `-D`
    /// overrides, reads its typed settings once (a bad combination is refused here, naming the
    /// key), opens its checkpoint storage and, with `-s`, reads the checkpoint it starts from.
    /// The job is then scheduled by the driver.
    ///
    /// Every refusal is `INVALID_ARGUMENT`, and no job is added. With checkpointing on or
    /// `-s` given but no `execution.checkpointing.dir`, the directory defaults to
    /// `weir-checkpoints` in the JobManager's temporary directory. The answer (the new job's
    /// id) comes once the job is CREATED and its catalog entry (if any) written, not once it
    /// runs.

    async fn submit_job(&self, request: Request<SubmitJobRequest>) -> Result<Response<SubmitJobResponse>, Status> {
        let mut r = request.into_inner();
        let (kind, text, what) = match (r.job_definition.is_empty(), r.job_graph.is_empty()) {
            (_, true) => (DefinitionKind::JobFile, std::mem::take(&mut r.job_definition), "job definition"),
            (true, false) => (DefinitionKind::JobGraph, std::mem::take(&mut r.job_graph), "program's job graph"),
            (false, false) => return Err(Status::invalid_argument("a submission carries a job file or a program's job graph, not both")),
        };
        let limit = self.state.settings().job_max_size;
        if text.len() > limit {
            return Err(Status::invalid_argument(format!(
                "the {what} is {} bytes, more than {} allows ({limit} bytes)",
                text.len(),
                weir_core::config::keys::JOB_MAX_SIZE
            )));
        }
        let origin = if r.source_name.is_empty() { "job".to_string() } else { r.source_name.clone() };
        // Compilation is CPU work proportional to the job's size: it runs on the blocking
        // pool, a few at a time, so that heartbeats and every other RPC keep being answered.
        let _permit = COMPILING.acquire().await.map_err(|_| Status::unavailable("the JobManager is shutting down"))?;
        let (base, pairs, restoring) = (self.state.config().clone(), r.config.clone(), !r.restore_path.is_empty());
        let compiled = tokio::task::spawn_blocking(move || {
            let compiled = match kind {
                DefinitionKind::JobFile => compile_submission(&text, &origin, &base, &pairs, restoring),
                DefinitionKind::JobGraph => compile_program(&text, &origin, &base, &pairs, restoring),
            };
            compiled.map(|c| (c, text))
        })
        .await
        .map_err(|e| Status::internal(format!("job compilation panicked: {e}")))?
        .map_err(Status::invalid_argument)?;
        let (Compiled { graph, config, settings, origin, mut warnings }, text) = compiled;
        if let Some(why) = self.state.program_refusal(&graph) {
            return Err(Status::failed_precondition(format!("program job '{}' refused: {why}", graph.name)));
        }
        let storage = match &settings.checkpoint.dir {
            Some(url) => Some(CheckpointStorage::open(url, &config).map_err(|e| Status::invalid_argument(e.to_string()))?),
            None => None,
        };
        let restore = match restore_from(&r.restore_path, r.allow_non_restored_state, &graph, &config, &settings).await? {
            None => None,
            Some((info, mut restore_warnings)) => {
                restore_warnings.append(&mut warnings);
                warnings = restore_warnings;
                Some(info)
            }
        };
        for w in &warnings {
            // The client shows them to the user; the log keeps a record.
            tracing::info!("job {}: {w}", graph.name);
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = graph.name.clone();
        let new = NewJob {
            id: id.clone(),
            name: name.clone(),
            graph,
            config,
            settings,
            storage,
            definition: JobDefinition { kind, text, origin },
            restore,
            attempt: 0,
            next_checkpoint: 1,
        };
        tracing::info!(job = %id, name = %name, "job submitted");
        self.executor.perform(self.state.add_job(new));
        Ok(Response::new(SubmitJobResponse { job_id: id, warnings }))
    }

    /// Every job, in submission order.

    async fn list_jobs(&self, _request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        Ok(Response::new(ListJobsResponse { jobs: self.state.list_jobs() }))
    }

    /// One job's state, failure, attempt and per-vertex counters.

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<JobStatus>, Status> {
        let id = &request.get_ref().job_id;
        self.state.job_status(id).map(Response::new).ok_or_else(|| Status::not_found(format!("no job with id {id}")))
    }

    /// Cancels a job: at once if it runs no tasks, else once its tasks stopped.
    /// Canceling a job that already ended (or is being canceled) succeeds and changes nothing.

    async fn cancel_job(&self, request: Request<CancelJobRequest>) -> Result<Response<CancelJobResponse>, Status> {
        let effects = self.state.cancel_job(&request.get_ref().job_id).map_err(Status::not_found)?;
        self.executor.perform(effects);
        Ok(Response::new(CancelJobResponse {}))
    }

    /// A subtask took checkpoint n and uploaded its state: the handles go to the coordinator.
    ///
    /// The handles are JSON (`(operator uid, state)` pairs); handles that do not parse are
    /// `INVALID_ARGUMENT`. The last acknowledgement of n makes the coordinator write its
    /// `_metadata`. An unknown snapshot kind is counted as aligned.

    async fn acknowledge_checkpoint(
        &self,
        request: Request<AcknowledgeCheckpointRequest>,
    ) -> Result<Response<AcknowledgeCheckpointResponse>, Status> {
        let r = request.into_inner();
        let e = r.execution.ok_or_else(|| Status::invalid_argument("missing execution"))?;
        let states: Vec<(String, SubtaskState)> =
            serde_json::from_slice(&r.state).map_err(|err| Status::invalid_argument(format!("state handles do not parse: {err}")))?;
        let event = Event::Acknowledged {
            attempt: e.attempt,
            id: r.checkpoint_id,
            subtask: (e.vertex, e.subtask),
            states,
            stats: AckStats {
                alignment_ms: r.alignment_ms,
                size: r.size_bytes,
                inflight_bytes: r.inflight_bytes,
                kind: weir_proto::CheckpointKind::try_from(r.kind).unwrap_or(weir_proto::CheckpointKind::Aligned),
                sync_ms: r.sync_ms,
                async_ms: r.async_ms,
            },
        };
        self.executor.perform(self.state.checkpoint_event(&e.job_id, event));
        Ok(Response::new(AcknowledgeCheckpointResponse {}))
    }

    /// A subtask could not take checkpoint n: the coordinator fails n at once.

    async fn decline_checkpoint(
        &self,
        request: Request<DeclineCheckpointRequest>,
    ) -> Result<Response<AcknowledgeCheckpointResponse>, Status> {
        let r = request.into_inner();
        let e = r.execution.ok_or_else(|| Status::invalid_argument("missing execution"))?;
        let event = Event::Declined { attempt: e.attempt, id: r.checkpoint_id, reason: r.reason };
        self.executor.perform(self.state.checkpoint_event(&e.job_id, event));
        Ok(Response::new(AcknowledgeCheckpointResponse {}))
    }

    /// The rows of `weir checkpoints`.

    async fn list_checkpoints(&self, request: Request<ListCheckpointsRequest>) -> Result<Response<ListCheckpointsResponse>, Status> {
        let id = &request.get_ref().job_id;
        let checkpoints = self.state.checkpoint_history(id).ok_or_else(|| Status::not_found(format!("no job with id {id}")))?;
        Ok(Response::new(ListCheckpointsResponse { checkpoints }))
    }

    /// Takes a savepoint into a new folder under the given directory (or the job's
    /// `execution.checkpointing.savepoint-dir`) and answers once its `_metadata` is written.
    /// A job that is not RUNNING is `FAILED_PRECONDITION`; a savepoint that fails (declined,
    /// expired, the job restarted meanwhile) is `ABORTED` with the reason.

    async fn trigger_savepoint(&self, request: Request<TriggerSavepointRequest>) -> Result<Response<SavepointResponse>, Status> {
        let r = request.into_inner();
        let native = r.format == SavepointFormat::Native as i32;
        self.savepoint(&r.job_id, &r.directory, native, None).await.map(Response::new)
    }

    /// Stops a job with a savepoint: answers once the savepoint is complete; the job then
    /// ends FINISHED on its own (after a final checkpoint). Errors as for `trigger_savepoint`;
    /// a stop that fails leaves the job running.

    async fn stop_job(&self, request: Request<StopJobRequest>) -> Result<Response<SavepointResponse>, Status> {
        let r = request.into_inner();
        let native = r.format == SavepointFormat::Native as i32;
        let mode = if r.drain { StopMode::Drain } else { StopMode::Suspend };
        self.savepoint(&r.job_id, &r.directory, native, Some(mode)).await.map(Response::new)
    }

    /// Deletes a savepoint folder; refused for anything whose `_metadata` is not a savepoint's.

    async fn dispose_savepoint(&self, request: Request<DisposeSavepointRequest>) -> Result<Response<DisposeSavepointResponse>, Status> {
        let files_deleted = savepoint::dispose(&request.get_ref().path, self.state.config()).await?;
        tracing::info!(path = %request.get_ref().path, files = files_deleted, "savepoint disposed");
        Ok(Response::new(DisposeSavepointResponse { files_deleted }))
    }

    /// Changes checkpoint settings of a running job; answers every setting it can change, as
    /// it is now.

    async fn update_checkpoint_config(
        &self,
        request: Request<UpdateCheckpointConfigRequest>,
    ) -> Result<Response<UpdateCheckpointConfigResponse>, Status> {
        let r = request.into_inner();
        let mut pairs: Vec<(String, String)> = r.config.into_iter().collect();
        pairs.sort();
        let effects = self.state.update_checkpoint_config(&r.job_id, &pairs)?;
        self.executor.perform(effects);
        let config = self.state.job_config(&r.job_id).ok_or_else(|| Status::not_found(format!("no job with id {}", r.job_id)))?;
        let checkpoint_config = crate::job::LIVE_CHECKPOINT_KEYS.iter().map(|k| (k.to_string(), config.get(k).to_string())).collect();
        Ok(Response::new(UpdateCheckpointConfigResponse { checkpoint_config }))
    }

    /// The registered TaskManagers and their free slots.

    async fn cluster_overview(&self, _request: Request<ClusterOverviewRequest>) -> Result<Response<ClusterOverviewResponse>, Status> {
        Ok(Response::new(ClusterOverviewResponse { taskmanagers: self.state.overview() }))
    }
}

impl JobManagerRpc {
    /// A savepoint (with `stop`: a stop-with-savepoint) of a job, from the request to its outcome.
    pub(crate) async fn savepoint(
        &self,
        job_id: &str,
        directory: &str,
        native: bool,
        stop: Option<StopMode>,
    ) -> Result<SavepointResponse, Status> {
        let config = self.state.job_config(job_id).ok_or_else(|| Status::not_found(format!("no job with id {job_id}")))?;
        let location = savepoint::new_location(job_id, directory, &config)?;
        let (ticket, effects) = self.state.trigger_savepoint(job_id, location, native, stop)?;
        self.executor.perform(effects);
        match self.executor.savepoint_outcome(job_id, ticket).await {
            Ok((checkpoint_id, path)) => Ok(SavepointResponse { path, checkpoint_id }),
            Err(why) => Err(Status::aborted(format!("savepoint of job {job_id} failed: {why}"))),
        }
    }
}

/// Job compilations running at once; more submissions wait their turn (each holds a whole
/// job's parse tree in memory).
static COMPILING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The largest compiled JobGraph (JSON) a deployment may carry: a TaskManager accepts RPC
/// messages of up to [`weir_proto::MAX_MESSAGE_BYTES`], and the rest of the message (the
/// locations of every subtask, the checkpoint to restore) needs room beside the graph.
const MAX_GRAPH_BYTES: usize = weir_proto::MAX_MESSAGE_BYTES / 4;

/// A submission compiled: what `submit_job` needs to add the job.
struct Compiled {
    graph: weir_core::graph::JobGraph,
    config: Config,
    settings: JobSettings,
    origin: String,
    warnings: Vec<String>,
}

/// Accepts a JobGraph built by a DataStream program in this process (its embedded cluster),
/// under the cluster's configuration plus the program's `overrides`. The catalog records the
/// graph's JSON, from which a recovering JobManager builds the job again. It is not refused
/// for want of TaskManagers carrying its functions: the embedded cluster's TaskManagers may
/// not have registered yet (see `program.rs`). Errors name the bad key or the graph's size.
/// It starts from `execution.savepoint.path` if the program set it.
pub(crate) async fn submit_graph(
    state: &JobManagerState,
    executor: &Executor,
    graph: JobGraph,
    overrides: &Config,
) -> Result<(String, Vec<String>), String> {
    let (config, settings) = program::job_config(state.config(), overrides, false)?;
    let json = graph.to_json();
    check_graph_size(json.len())?;
    let (restore, warnings) = match restore_from("", false, &graph, &config, &settings).await.map_err(|s| s.message().to_string())? {
        Some((info, warnings)) => (Some(info), warnings),
        None => (None, Vec::new()),
    };
    for w in &warnings {
        tracing::info!("job {}: {w}", graph.name);
    }
    let storage = match &settings.checkpoint.dir {
        Some(url) => Some(CheckpointStorage::open(url, &config).map_err(|e| e.to_string())?),
        None => None,
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = graph.name.clone();
    let definition = JobDefinition {
        kind: DefinitionKind::JobGraph,
        text: String::from_utf8_lossy(&json).into_owned(),
        origin: format!("program '{name}'"),
    };
    let new = NewJob {
        id: id.clone(),
        name: name.clone(),
        graph,
        config,
        settings,
        storage,
        definition,
        restore,
        attempt: 0,
        next_checkpoint: 1,
    };
    tracing::info!(job = %id, name = %name, "program job submitted");
    executor.perform(state.add_job(new));
    Ok((id, warnings))
}

/// The checkpoint or savepoint a submitted job starts from: `path` (`-s`), else the job's
/// `execution.savepoint.path`; read, checked against the job's graph and backend, and its files
/// verified. `None` when the job starts empty. `allow_non_restored` (`-n`, or
/// `execution.savepoint.ignore-unclaimed-state`) lets state without an operator be dropped,
/// with a warning.
async fn restore_from(
    path: &str,
    allow_non_restored: bool,
    graph: &JobGraph,
    config: &Config,
    settings: &JobSettings,
) -> Result<Option<(weir_state::metadata::RestoreInfo, Vec<String>)>, Status> {
    use weir_core::config::keys;
    let (path, allow) = match (path.is_empty(), config.text(keys::SAVEPOINT_PATH)) {
        (false, _) => (path.to_string(), allow_non_restored),
        (true, Some(p)) => (p.to_string(), allow_non_restored || config.get(keys::SAVEPOINT_IGNORE_UNCLAIMED) == "true"),
        (true, None) => return Ok(None),
    };
    let (storage, mut info) = savepoint::read_metadata(&path, config).await?;
    let warnings = savepoint::check_restore(&path, graph, settings.state_backend, &mut info, allow)?;
    savepoint::verify_files(&path, &storage, &info).await?;
    Ok(Some((info, warnings)))
}

/// A program's graph of `bytes` JSON bytes fits in a deployment, or the error says its size.
fn check_graph_size(bytes: usize) -> Result<(), String> {
    if bytes > MAX_GRAPH_BYTES {
        return Err(format!(
            "the program's graph is {} KiB, more than a TaskManager deployment carries ({} KiB)",
            bytes / 1024,
            MAX_GRAPH_BYTES / 1024
        ));
    }
    Ok(())
}

/// The [`compile_submission`] of a program's JobGraph (JSON, as `my-job run --jobmanager`
/// sends it): parse it, check that its vertices and edges hold together (a graph from the
/// network is input like a job file), and read its configuration: the cluster's with the
/// program's `pairs` over it. Errors are the message of an `INVALID_ARGUMENT`.
fn compile_program(
    json: &str,
    origin: &str,
    base: &Config,
    pairs: &std::collections::HashMap<String, String>,
    restoring: bool,
) -> Result<Compiled, String> {
    check_graph_size(json.len())?;
    let graph = JobGraph::from_json(json.as_bytes()).map_err(|e| format!("the program's job graph ({origin}) does not parse: {e}"))?;
    check_graph(&graph).map_err(|e| format!("the program's job graph ({origin}) is not valid: {e}"))?;
    let mut program = Config::new();
    for (k, v) in pairs {
        if weir_core::settings::is_cluster_only_key(k) {
            return Err(format!("'{k}' is a cluster setting: it cannot be set for one job"));
        }
        program.set(k, v, origin).map_err(|e| e.to_string())?;
    }
    let (config, settings) = program::job_config(base, &program, restoring)?;
    Ok(Compiled { graph, config, settings, origin: origin.to_string(), warnings: Vec::new() })
}

/// What the JobManager relies on in a graph it did not compile itself: vertex ids are their
/// positions, edges join existing vertices, parallelisms are within 1..=max parallelism.
fn check_graph(graph: &JobGraph) -> Result<(), String> {
    if graph.vertices.is_empty() {
        return Err("it has no vertices".into());
    }
    if graph.max_parallelism == 0 {
        return Err("its max parallelism is 0".into());
    }
    for (i, v) in graph.vertices.iter().enumerate() {
        if v.id as usize != i {
            return Err(format!("vertex {i} has id {}", v.id));
        }
        if v.operators.is_empty() {
            return Err(format!("vertex '{}' has no operators", v.name));
        }
        if v.parallelism == 0 || v.parallelism > graph.max_parallelism {
            return Err(format!("vertex '{}' has parallelism {} (max parallelism {})", v.name, v.parallelism, graph.max_parallelism));
        }
    }
    let n = graph.vertices.len() as u32;
    for e in &graph.edges {
        if e.source >= n || e.target >= n || e.source == e.target {
            return Err(format!("edge {} joins vertex {} to vertex {} (the graph has {n} vertices)", e.id, e.source, e.target));
        }
    }
    Ok(())
}

/// Everything in a submission that costs CPU in proportion to the job's size, run on the
/// blocking pool: parse and compile the job file under the cluster's configuration plus the
/// client's overrides, read its typed settings, check that its deployment fits in an RPC
/// message, and warn about stateful steps without a uid. Linear in the job's size. Errors are
/// the message of an `INVALID_ARGUMENT`.
fn compile_submission(
    text: &str,
    origin: &str,
    base: &Config,
    pairs: &std::collections::HashMap<String, String>,
    restoring: bool,
) -> Result<Compiled, String> {
    let mut overrides = Config::new();
    for (k, v) in pairs {
        if weir_core::settings::is_cluster_only_key(k) {
            return Err(format!("'{k}' is a cluster setting: it cannot be set for one job"));
        }
        overrides.set(k, v, "-D").map_err(|e| e.to_string())?;
    }
    let file = weir_core::job::JobFile::parse(text, origin).map_err(|e| e.to_string())?;
    let (graph, mut config) = file.compile_under(base, &overrides).map_err(|e| e.to_string())?;
    resolve_checkpoint_dir(&mut config, restoring).map_err(|e| e.to_string())?;
    let settings = JobSettings::from_config(&config).map_err(|e| e.to_string())?;
    let graph_bytes = graph.to_json().len();
    if graph_bytes > MAX_GRAPH_BYTES {
        return Err(format!(
            "the job compiles to a {} KiB graph, more than a TaskManager deployment carries ({} KiB): \
             it has {} steps in {} vertices; split it into smaller jobs",
            graph_bytes / 1024,
            MAX_GRAPH_BYTES / 1024,
            graph.vertices.iter().map(|v| v.operators.len()).sum::<usize>(),
            graph.vertices.len()
        ));
    }
    let mut warnings = Vec::new();
    if restoring || settings.checkpoint.enabled() {
        // Stateful steps whose uid Weir derived from their position.
        let derived: std::collections::HashSet<String> = file.derived_uids().into_iter().collect();
        for v in &graph.vertices {
            for op in v.operators.iter().filter(|o| derived.contains(&o.uid)) {
                if op.spec.is_stateful() || op.spec.is_source() || matches!(op.spec, weir_core::graph::OperatorSpec::FileSink { .. }) {
                    warnings.push(format!(
                        "step '{}' keeps state but has no uid: its state is matched by the derived uid '{}', which changes \
                         when steps are added or removed before it; set `uid:` on the step to keep its state across changes",
                        op.name, op.uid
                    ));
                }
            }
        }
    }
    Ok(Compiled { graph, config, settings, origin: origin.to_string(), warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const JOB: &str = "name: j\npipeline:\n  - source: socket\n    host: h\n    port: 1\n  - sink: blackhole\n";

    #[test]
    fn a_cluster_setting_in_the_overrides_is_refused_without_echoing_it() {
        let pairs = HashMap::from([("security.token".to_string(), "guess".to_string())]);
        let err = compile_submission(JOB, "j.yaml", &Config::new(), &pairs, false).err().unwrap();
        assert!(err.contains("'security.token' is a cluster setting") && !err.contains("guess"), "{err}");
        assert!(compile_submission(JOB, "j.yaml", &Config::new(), &HashMap::new(), false).is_ok());
    }

    #[test]
    fn a_graph_too_large_to_deploy_is_refused_with_its_size() {
        let mut text = String::from("name: j\npipeline:\n  - source: socket\n    host: h\n    port: 1\n");
        text.push_str(&"  - upper: {}\n".repeat(240_000));
        text.push_str("  - sink: blackhole\n");
        let err = compile_submission(&text, "j.yaml", &Config::new(), &HashMap::new(), false).err().unwrap();
        assert!(err.contains("more than a TaskManager deployment carries") && err.contains("240002 steps in 1 vertices"), "{err}");
    }

    /// A program's graph arrives from the network: it must parse and hold together, and its
    /// configuration obeys the same rules as a job file's overrides.
    #[test]
    fn a_program_graph_is_checked_before_it_is_accepted() {
        let (graph, _) = weir_core::job::compile_job(JOB, "j.yaml", &Config::new(), &Config::new()).unwrap();
        let json = String::from_utf8(graph.to_json()).unwrap();
        let ok = compile_program(&json, "program 'j'", &Config::new(), &HashMap::new(), false).ok().unwrap();
        assert_eq!(ok.graph, graph);
        let err = compile_program("{", "program 'j'", &Config::new(), &HashMap::new(), false).err().unwrap();
        assert!(err.contains("the program's job graph (program 'j') does not parse"), "{err}");
        let mut broken = graph.clone();
        let partitioning = weir_core::graph::Partitioning::Forward;
        broken.edges = vec![weir_core::graph::Edge { id: 0, source: 0, target: 7, partitioning }];
        let err =
            compile_program(&String::from_utf8(broken.to_json()).unwrap(), "p", &Config::new(), &HashMap::new(), false).err().unwrap();
        assert!(err.contains("is not valid: edge 0 joins vertex 0 to vertex 7"), "{err}");
        let pairs = HashMap::from([("security.token".to_string(), "guess".to_string())]);
        let err = compile_program(&json, "p", &Config::new(), &pairs, false).err().unwrap();
        assert!(err.contains("'security.token' is a cluster setting") && !err.contains("guess"), "{err}");
    }
}

//! The JobManager's gRPC service.

use crate::state::JobManagerState;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use weir_core::config::keys;
use weir_core::config::Config;
use weir_core::job::compile_job;
use weir_proto::job_manager_service_server::JobManagerService;
use weir_proto::*;
use weir_state::metadata::{split_checkpoint_path, CheckpointMetadata, RestoreInfo, SubtaskState};
use weir_state::CheckpointStorage;

/// Reads the `_metadata` of a retained checkpoint given as `<root>/<job>/chk-<n>[/_metadata]`.
async fn read_restore(path: &str, config: &Config) -> Result<RestoreInfo, Status> {
    let (root, rel) = split_checkpoint_path(path).ok_or_else(|| {
        Status::invalid_argument(format!(
            "'{path}' is not a checkpoint directory: expected <dir>/<job-id>/chk-<n>, e.g. file:///tmp/weir-checkpoints/<job-id>/chk-3"
        ))
    })?;
    let root = if root.contains("://") { root } else { format!("file://{root}") };
    let storage = CheckpointStorage::open(&root, config).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let metadata =
        CheckpointMetadata::read(&storage, &rel).await.map_err(|e| Status::invalid_argument(format!("cannot restore from {path}: {e}")))?;
    Ok(RestoreInfo { storage_url: root, metadata })
}

pub(crate) struct JobManagerRpc {
    pub state: Arc<JobManagerState>,
}

#[tonic::async_trait]
impl JobManagerService for JobManagerRpc {
    async fn register_task_manager(
        &self,
        request: Request<RegisterTaskManagerRequest>,
    ) -> Result<Response<RegisterTaskManagerResponse>, Status> {
        let r = request.into_inner();
        if r.slots == 0 {
            return Err(Status::invalid_argument("a TaskManager must offer at least one slot"));
        }
        self.state.register_tm(&r.taskmanager_id, &r.rpc_address, &r.data_address, r.slots).map_err(Status::invalid_argument)?;
        let interval = self.state.config.duration(weir_core::config::keys::HEARTBEAT_INTERVAL);
        Ok(Response::new(RegisterTaskManagerResponse { cluster_id: String::new(), heartbeat_interval_ms: interval.as_millis() as u64 }))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let known = self.state.heartbeat(&request.get_ref().taskmanager_id);
        Ok(Response::new(HeartbeatResponse { known }))
    }

    async fn update_task_state(&self, request: Request<UpdateTaskStateRequest>) -> Result<Response<UpdateTaskStateResponse>, Status> {
        let r = request.into_inner();
        let e = r.execution.ok_or_else(|| Status::invalid_argument("missing execution"))?;
        let state = TaskState::try_from(r.state).unwrap_or(TaskState::Unspecified);
        let outcome = self.state.task_update(&e.job_id, e.attempt, (e.vertex, e.subtask), state, (r.records_in, r.records_out));
        if let Some((JobState::Failed, _)) = outcome {
            let name = self
                .state
                .inner
                .lock()
                .jobs
                .get(&e.job_id)
                .map(|j| {
                    let v = j.graph.vertex(e.vertex);
                    format!("{} ({}/{})", v.name, e.subtask + 1, v.parallelism)
                })
                .unwrap_or_default();
            let reason = format!("task {name} on {} failed: {}", r.taskmanager_id, r.failure);
            tokio::spawn(self.state.clone().handle_task_failure(e.job_id.clone(), e.attempt, reason));
        }
        Ok(Response::new(UpdateTaskStateResponse {}))
    }

    async fn submit_job(&self, request: Request<SubmitJobRequest>) -> Result<Response<SubmitJobResponse>, Status> {
        let r = request.into_inner();
        let mut overrides = Config::new();
        for (k, v) in &r.config {
            overrides.set(k, v, "-D").map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let origin = if r.source_name.is_empty() { "job" } else { r.source_name.as_str() };
        let (graph, mut config) =
            compile_job(&r.job_definition, origin, &self.state.config, &overrides).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Checkpoints need storage: without execution.checkpointing.dir, a local directory
        // (fine for one machine; a cluster needs shared or object storage).
        if !config.is_set(keys::CHECKPOINT_DIR)
            && (config.optional_duration(keys::CHECKPOINT_INTERVAL).is_some() || !r.restore_path.is_empty())
        {
            let dir = std::env::temp_dir().join("weir-checkpoints");
            config
                .set(keys::CHECKPOINT_DIR, &format!("file://{}", dir.display()), "default")
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let restore = if r.restore_path.is_empty() { None } else { Some(read_restore(&r.restore_path, &config).await?) };
        let name = graph.name.clone();
        let id = self
            .state
            .add_job(name.clone(), graph, config, restore, (r.job_definition.clone(), origin.to_string()))
            .map_err(Status::invalid_argument)?;
        tracing::info!(job = %id, name = %name, "job submitted");
        tokio::spawn(crate::scheduler::schedule(self.state.clone(), id.clone()));
        tokio::spawn(crate::coordinate::coordinator_loop(self.state.clone(), id.clone()));
        Ok(Response::new(SubmitJobResponse { job_id: id }))
    }

    async fn list_jobs(&self, _request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        Ok(Response::new(ListJobsResponse { jobs: self.state.list_jobs() }))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<JobStatus>, Status> {
        let id = &request.get_ref().job_id;
        self.state.job_status(id).map(Response::new).ok_or_else(|| Status::not_found(format!("no job with id {id}")))
    }

    async fn cancel_job(&self, request: Request<CancelJobRequest>) -> Result<Response<CancelJobResponse>, Status> {
        self.state.cancel_job(&request.get_ref().job_id).map_err(Status::not_found)?;
        Ok(Response::new(CancelJobResponse {}))
    }

    async fn acknowledge_checkpoint(
        &self,
        request: Request<AcknowledgeCheckpointRequest>,
    ) -> Result<Response<AcknowledgeCheckpointResponse>, Status> {
        let r = request.into_inner();
        let e = r.execution.ok_or_else(|| Status::invalid_argument("missing execution"))?;
        let states: Vec<(String, SubtaskState)> =
            serde_json::from_slice(&r.state).map_err(|err| Status::invalid_argument(format!("state handles do not parse: {err}")))?;
        crate::coordinate::acknowledge(
            &self.state,
            &e.job_id,
            e.attempt,
            (e.vertex, e.subtask),
            r.checkpoint_id,
            states,
            r.alignment_ms,
            r.size_bytes,
        );
        Ok(Response::new(AcknowledgeCheckpointResponse {}))
    }

    async fn decline_checkpoint(
        &self,
        request: Request<DeclineCheckpointRequest>,
    ) -> Result<Response<AcknowledgeCheckpointResponse>, Status> {
        let r = request.into_inner();
        let e = r.execution.ok_or_else(|| Status::invalid_argument("missing execution"))?;
        crate::coordinate::decline(&self.state, &e.job_id, e.attempt, r.checkpoint_id, r.reason);
        Ok(Response::new(AcknowledgeCheckpointResponse {}))
    }

    async fn list_checkpoints(&self, request: Request<ListCheckpointsRequest>) -> Result<Response<ListCheckpointsResponse>, Status> {
        let id = &request.get_ref().job_id;
        let inner = self.state.inner.lock();
        let job = inner.jobs.get(id).ok_or_else(|| Status::not_found(format!("no job with id {id}")))?;
        let checkpoints = job.coordinator.history.iter().map(|r| r.info()).collect();
        Ok(Response::new(ListCheckpointsResponse { checkpoints }))
    }

    async fn cluster_overview(&self, _request: Request<ClusterOverviewRequest>) -> Result<Response<ClusterOverviewResponse>, Status> {
        Ok(Response::new(ClusterOverviewResponse { taskmanagers: self.state.overview() }))
    }
}

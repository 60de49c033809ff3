//! The JobManager's gRPC service.

use crate::state::JobManagerState;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use weir_core::config::Config;
use weir_core::job::compile_job;
use weir_proto::job_manager_service_server::JobManagerService;
use weir_proto::*;

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
            tokio::spawn(self.state.clone().handle_task_failure(e.job_id.clone(), reason));
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
        let (graph, config) =
            compile_job(&r.job_definition, origin, &self.state.config, &overrides).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let name = graph.name.clone();
        let id = self.state.add_job(name.clone(), graph, config);
        tracing::info!(job = %id, name = %name, "job submitted");
        tokio::spawn(crate::scheduler::schedule(self.state.clone(), id.clone()));
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

    async fn cluster_overview(&self, _request: Request<ClusterOverviewRequest>) -> Result<Response<ClusterOverviewResponse>, Status> {
        Ok(Response::new(ClusterOverviewResponse { taskmanagers: self.state.overview() }))
    }
}

//! The TaskManager's gRPC service (deploy, cancel, ping), called by the JobManager.

use crate::Shared;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use weir_proto::task_manager_service_server::TaskManagerService;
use weir_proto::*;
use weir_runtime::buffer::Barrier;
use weir_runtime::task::TaskCommand;

pub(crate) struct TaskManagerRpc {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl TaskManagerService for TaskManagerRpc {
    async fn deploy_tasks(&self, request: Request<DeployTasksRequest>) -> Result<Response<DeployTasksResponse>, Status> {
        let req = request.into_inner();
        let shared = self.shared.clone();
        // Building tasks opens files and sockets: keep it off the async workers.
        tokio::task::spawn_blocking(move || crate::deploy::deploy(&shared, req))
            .await
            .map_err(|e| Status::internal(format!("deployment panicked: {e}")))?
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(DeployTasksResponse {}))
    }

    async fn cancel_job(&self, request: Request<CancelTasksRequest>) -> Result<Response<CancelTasksResponse>, Status> {
        let req = request.into_inner();
        self.shared.cancel_job(&req.job_id, req.attempt, "job canceled");
        Ok(Response::new(CancelTasksResponse {}))
    }

    async fn ping(&self, _request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse { taskmanager_id: self.shared.settings.id.clone() }))
    }

    async fn trigger_checkpoint(&self, request: Request<CheckpointRequest>) -> Result<Response<CheckpointResponse>, Status> {
        let r = request.into_inner();
        let barrier = Barrier::new(r.checkpoint_id, r.timestamp_ms, r.savepoint);
        self.shared.for_tasks(&r.job_id, r.attempt, |t| {
            if r.final_checkpoint {
                t.command(TaskCommand::FinalCheckpoint(r.checkpoint_id));
            } else if t.is_source() {
                t.command(TaskCommand::TriggerCheckpoint(barrier));
            }
        });
        Ok(Response::new(CheckpointResponse {}))
    }

    async fn notify_checkpoint_complete(&self, request: Request<CheckpointRequest>) -> Result<Response<CheckpointResponse>, Status> {
        let r = request.into_inner();
        self.shared.for_tasks(&r.job_id, r.attempt, |t| t.command(TaskCommand::NotifyCheckpointComplete(r.checkpoint_id)));
        Ok(Response::new(CheckpointResponse {}))
    }

    async fn abort_checkpoint(&self, request: Request<CheckpointRequest>) -> Result<Response<CheckpointResponse>, Status> {
        let r = request.into_inner();
        self.shared.for_tasks(&r.job_id, r.attempt, |t| t.command(TaskCommand::AbortCheckpoint(r.checkpoint_id)));
        Ok(Response::new(CheckpointResponse {}))
    }
}

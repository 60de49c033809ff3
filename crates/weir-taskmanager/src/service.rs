//! The TaskManager's gRPC service (deploy, cancel, ping, and the checkpoint calls), called by
//! the JobManager.
//!
//! A `CheckpointRequest` becomes one [`TaskCommand`] per task of the job attempt:
//! - trigger: sources get `TriggerCheckpoint(barrier)`; with `stop`, `StopWithSavepoint(barrier)`
//!   (the sources stop after the savepoint's barrier and end their input once it completed);
//!   with `end_input`, `EndInput` (stop with drain; the id means nothing then);
//! - trigger with `final_checkpoint`: every task gets `FinalCheckpoint(barrier)`;
//! - notify and abort: every task gets `NotifyCheckpointComplete(id)` / `AbortCheckpoint(id)`.
//!
//! The barrier is a savepoint's when `savepoint_location` is set: it carries that folder and
//! the format (`native`), and every task writes its snapshot there, acknowledging paths
//! relative to it.

use crate::Shared;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use weir_proto::task_manager_service_server::TaskManagerService;
use weir_proto::*;
use weir_runtime::barrier::AlignmentPolicy;
use weir_runtime::buffer::{Barrier, SavepointFormat, SavepointOptions};
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

    /// Maps a trigger to the tasks' commands: a final checkpoint goes to every task; otherwise
    /// only sources act: `end_input` ends their input (stop with drain), `stop` takes the
    /// savepoint and stops after it, and anything else is a plain trigger.
    async fn trigger_checkpoint(&self, request: Request<CheckpointRequest>) -> Result<Response<CheckpointResponse>, Status> {
        let r = request.into_inner();
        let barrier = barrier(&r)?;
        self.shared.for_tasks(&r.job_id, r.attempt, |t| {
            if let Some(command) = trigger_command(&r, &barrier, t.is_source()) {
                t.command(command);
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

/// What a trigger asks of one task (see the module header); `None`: nothing (a non-source
/// task, unless it is the final checkpoint).
fn trigger_command(r: &CheckpointRequest, barrier: &Barrier, is_source: bool) -> Option<TaskCommand> {
    Some(match (r.final_checkpoint, is_source) {
        (true, _) => TaskCommand::FinalCheckpoint(barrier.clone()),
        (false, false) => return None,
        (false, true) if r.end_input => TaskCommand::EndInput,
        (false, true) if r.stop => TaskCommand::StopWithSavepoint(barrier.clone()),
        (false, true) => TaskCommand::TriggerCheckpoint(barrier.clone()),
    })
}

/// The barrier a trigger asks for: a savepoint's (with its folder and format) when
/// `savepoint_location` is set. A savepoint without a folder, or a folder URL too long for the
/// barrier's encoding, is refused.
fn barrier(r: &CheckpointRequest) -> Result<Barrier, Status> {
    let policy = match Alignment::try_from(r.alignment).unwrap_or(Alignment::Unspecified) {
        Alignment::Unspecified => None,
        Alignment::Aligned => Some(AlignmentPolicy::Aligned),
        Alignment::Unaligned => Some(AlignmentPolicy::Unaligned),
        Alignment::AlignedThenUnaligned => Some(AlignmentPolicy::AlignedThenUnaligned(Duration::from_millis(r.aligned_timeout_ms))),
    };
    let with_policy = |b: Barrier| match policy {
        Some(p) => b.with_alignment(p),
        None => b,
    };
    if r.savepoint_location.is_empty() {
        if r.savepoint {
            return Err(Status::invalid_argument(format!("savepoint {} names no savepoint_location", r.checkpoint_id)));
        }
        return Ok(with_policy(Barrier::new(r.checkpoint_id, r.timestamp_ms)));
    }
    if r.savepoint_location.len() > u16::MAX as usize {
        return Err(Status::invalid_argument(format!(
            "the savepoint location of checkpoint {} is {} bytes long; at most {} are supported",
            r.checkpoint_id,
            r.savepoint_location.len(),
            u16::MAX
        )));
    }
    let format = if r.native { SavepointFormat::Native } else { SavepointFormat::Canonical };
    Ok(with_policy(Barrier::savepoint(
        r.checkpoint_id,
        r.timestamp_ms,
        SavepointOptions { location: r.savepoint_location.clone(), format },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(savepoint_location: &str) -> CheckpointRequest {
        CheckpointRequest {
            job_id: "j".into(),
            checkpoint_id: 7,
            timestamp_ms: 1000,
            savepoint_location: savepoint_location.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_savepoint_location_makes_a_savepoint_barrier_with_its_format() {
        let plain = barrier(&request("")).unwrap();
        assert_eq!(plain, Barrier::new(7, 1000));
        let canonical = barrier(&request("s3://b/sp/savepoint-1")).unwrap();
        let options = canonical.savepoint.as_deref().expect("a savepoint");
        assert_eq!((options.location.as_str(), options.format), ("s3://b/sp/savepoint-1", SavepointFormat::Canonical));
        let native = barrier(&CheckpointRequest { native: true, ..request("file:///sp") }).unwrap();
        assert_eq!(native.savepoint.as_deref().map(|o| o.format), Some(SavepointFormat::Native));
        assert!(!native.unaligned, "savepoints are aligned");
        let timed =
            barrier(&CheckpointRequest { alignment: Alignment::AlignedThenUnaligned as i32, aligned_timeout_ms: 250, ..request("") })
                .unwrap();
        assert_eq!(timed.alignment, Some(AlignmentPolicy::AlignedThenUnaligned(Duration::from_millis(250))));
        assert_eq!(plain.alignment, None, "unspecified: as deployed");

        let no_folder = barrier(&CheckpointRequest { savepoint: true, ..request("") }).unwrap_err();
        assert!(no_folder.message().contains("savepoint_location"), "{no_folder}");
        let too_long = barrier(&request(&"x".repeat(70_000))).unwrap_err();
        assert!(too_long.message().contains("70000 bytes"), "{too_long}");
    }

    #[test]
    fn triggers_map_to_source_commands_and_final_checkpoints_to_every_task() {
        let b = barrier(&request("file:///sp")).unwrap();
        let cmd = |r: CheckpointRequest, source: bool| trigger_command(&r, &b, source);
        assert!(matches!(cmd(request(""), true), Some(TaskCommand::TriggerCheckpoint(x)) if x == b));
        assert!(cmd(request(""), false).is_none());
        assert!(matches!(cmd(CheckpointRequest { stop: true, ..request("") }, true), Some(TaskCommand::StopWithSavepoint(x)) if x == b));
        assert!(cmd(CheckpointRequest { stop: true, ..request("") }, false).is_none());
        assert!(matches!(cmd(CheckpointRequest { end_input: true, ..request("") }, true), Some(TaskCommand::EndInput)));
        assert!(cmd(CheckpointRequest { end_input: true, ..request("") }, false).is_none());
        for source in [true, false] {
            let r = CheckpointRequest { final_checkpoint: true, ..request("") };
            assert!(matches!(cmd(r, source), Some(TaskCommand::FinalCheckpoint(x)) if x == b));
        }
    }
}

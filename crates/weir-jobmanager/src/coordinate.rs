//! Drives each job's CheckpointCoordinator (`checkpoint.rs`): the periodic trigger loop, and
//! the handling of acknowledgements, declines and completions, with the gRPC calls to the
//! TaskManagers made outside the JobManager's lock.

use crate::state::{now_ms, JobManagerState};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_proto::task_manager_service_client::TaskManagerServiceClient;
use weir_proto::{CheckpointRequest, JobState, TaskState};
use weir_state::metadata::{CheckpointMetadata, SubtaskState};
use weir_state::storage::layout;

type Calls = Vec<(TaskManagerServiceClient<tonic::transport::Channel>, CheckpointRequest)>;

/// The TaskManagers of a job attempt: those running sources, or all of them.
fn tms_of(state: &JobManagerState, job_id: &str, sources_only: bool) -> Vec<TaskManagerServiceClient<tonic::transport::Channel>> {
    let inner = state.inner.lock();
    let Some(job) = inner.jobs.get(job_id) else { return Vec::new() };
    let mut tms: Vec<String> = Vec::new();
    for (slot, tm) in job.slots.iter().enumerate() {
        let hosts = job
            .graph
            .vertices
            .iter()
            .any(|v| (slot as u32) < v.parallelism && (!sources_only || job.graph.inputs_of(v.id).next().is_none()));
        if hosts && !tms.contains(tm) {
            tms.push(tm.clone());
        }
    }
    tms.iter().filter_map(|t| inner.tms.get(t).map(|e| e.client.clone())).collect()
}

fn call(calls: Calls, what: &'static str) {
    for (mut client, req) in calls {
        tokio::spawn(async move {
            let result = match what {
                "trigger" => client.trigger_checkpoint(req).await,
                "notify" => client.notify_checkpoint_complete(req).await,
                _ => client.abort_checkpoint(req).await,
            };
            if let Err(e) = result {
                tracing::debug!("checkpoint {what} call failed: {}", e.message());
            }
        });
    }
}

fn request(job_id: &str, attempt: u32, id: u64) -> CheckpointRequest {
    CheckpointRequest {
        job_id: job_id.to_string(),
        attempt,
        checkpoint_id: id,
        timestamp_ms: now_ms(),
        savepoint: false,
        final_checkpoint: false,
    }
}

/// Periodically triggers checkpoints of one job and expires overdue ones; ends with the job.
pub(crate) async fn coordinator_loop(state: Arc<JobManagerState>, job_id: String) {
    let interval = {
        let inner = state.inner.lock();
        match inner.jobs.get(&job_id).and_then(|j| j.coordinator.settings.clone()) {
            Some(s) => s.interval,
            None => return,
        }
    };
    let tick = (interval / 10).clamp(Duration::from_millis(5), Duration::from_millis(200));
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let (trigger, final_trigger, expired, attempt) = {
            let mut inner = state.inner.lock();
            let Some(job) = inner.jobs.get_mut(&job_id) else { return };
            if job.is_terminal() {
                return;
            }
            // Only a fully running attempt can take a checkpoint: every subtask must hear the
            // barrier and acknowledge.
            let all_running =
                job.state == JobState::Running && !job.tasks.is_empty() && job.tasks.values().all(|t| t.state == TaskState::TaskRunning);
            let expired = job.coordinator.expired(now);
            let trigger = if all_running && job.coordinator.due(now) {
                let total = job.tasks.len();
                Some(job.coordinator.start(job.attempt, total, now, now_ms()))
            } else {
                None
            };
            // Every task reached the end of its input: the final checkpoint commits the rest.
            let finishing = job.tasks.values().filter(|t| t.state == TaskState::TaskFinishing).count();
            let all_ended = job.tasks.values().all(|t| matches!(t.state, TaskState::TaskFinishing | TaskState::TaskFinished));
            // Once per attempt: `final_id` stays set from the trigger until it completes (its
            // `_metadata` is written) or fails (then it is cleared and triggered again).
            let final_trigger = if job.state == JobState::Running
                && finishing > 0
                && all_ended
                && job.coordinator.final_id.is_none()
                && !job.coordinator.final_completed
            {
                // Periodic checkpoints still in flight can no longer complete: their barriers
                // cannot pass tasks whose input ended.
                job.coordinator.abort_all("subsumed by the final checkpoint (the job's input ended)");
                let id = job.coordinator.start(job.attempt, finishing, now, now_ms());
                job.coordinator.final_id = Some(id);
                Some(id)
            } else {
                None
            };
            (trigger, final_trigger, expired, job.attempt)
        };
        if let Some(id) = final_trigger {
            tracing::info!(job = %job_id, checkpoint = id, "input ended everywhere: triggering the final checkpoint");
            let calls = tms_of(&state, &job_id, false)
                .into_iter()
                .map(|c| (c, CheckpointRequest { final_checkpoint: true, ..request(&job_id, attempt, id) }))
                .collect();
            call(calls, "trigger");
        }
        for id in expired {
            decline(&state, &job_id, attempt, id, "checkpoint expired before completing (execution.checkpointing.timeout)".into());
        }
        if let Some(id) = trigger {
            let calls = tms_of(&state, &job_id, true).into_iter().map(|c| (c, request(&job_id, attempt, id))).collect();
            call(calls, "trigger");
        }
    }
}

/// A subtask acknowledged checkpoint `id` with its state.
#[allow(clippy::too_many_arguments)]
pub(crate) fn acknowledge(
    state: &Arc<JobManagerState>,
    job_id: &str,
    attempt: u32,
    key: (u32, u32),
    id: u64,
    states: Vec<(String, SubtaskState)>,
    alignment_ms: u64,
    size: u64,
) {
    let (meta, storage) = {
        let mut inner = state.inner.lock();
        let Some(job) = inner.jobs.get_mut(job_id) else { return };
        if job.attempt != attempt || job.coordinator.pending.get(&id).is_none_or(|p| p.attempt != attempt) {
            return;
        }
        let graph = job.graph.clone();
        match job.coordinator.acknowledge(job_id, &graph, id, key, states, alignment_ms, size, now_ms()) {
            Some(meta) => (meta, job.coordinator.storage.clone()),
            None => return,
        }
    };
    let Some(storage) = storage else { return };
    let state = state.clone();
    let job_id = job_id.to_string();
    tokio::spawn(async move { complete(state, job_id, attempt, meta, storage).await });
}

/// Writes `_metadata` (last), then marks the checkpoint complete, notifies the tasks, and
/// discards what is no longer retained.
async fn complete(
    state: Arc<JobManagerState>,
    job_id: String,
    attempt: u32,
    meta: CheckpointMetadata,
    storage: weir_state::CheckpointStorage,
) {
    let id = meta.checkpoint_id;
    if let Err(e) = meta.write(&storage).await {
        decline(&state, &job_id, attempt, id, format!("cannot write _metadata: {e}"));
        return;
    }
    let outcome = {
        let mut inner = state.inner.lock();
        let Some(job) = inner.jobs.get_mut(&job_id) else { return };
        // Only a checkpoint of the running attempt completes: a restart that already picked
        // its restore point must not see a newer checkpoint appear behind it.
        if job.attempt != attempt || job.state != JobState::Running {
            None
        } else {
            let (discard, subsumed) = job.coordinator.completed(meta, Instant::now());
            let unreferenced: Vec<String> = discard.iter().flat_map(|d| job.coordinator.registry.release(*d)).collect();
            Some((discard, subsumed, unreferenced))
        }
    };
    let Some((discard, subsumed, unreferenced)) = outcome else {
        let _ = storage.delete_prefix(&layout::checkpoint_dir(&job_id, id)).await;
        return;
    };
    tracing::info!(job = %job_id, checkpoint = id, "checkpoint completed");
    let calls = tms_of(&state, &job_id, false).into_iter().map(|c| (c, request(&job_id, attempt, id))).collect();
    call(calls, "notify");
    for s in subsumed {
        let calls = tms_of(&state, &job_id, true).into_iter().map(|c| (c, request(&job_id, attempt, s))).collect();
        call(calls, "abort");
    }
    for p in unreferenced {
        let _ = storage.delete(&p).await;
    }
    for d in discard {
        if let Err(e) = storage.delete_prefix(&layout::checkpoint_dir(&job_id, d)).await {
            tracing::warn!(job = %job_id, checkpoint = d, "cannot delete a discarded checkpoint: {e}");
        }
    }
}

/// Checkpoint `id` cannot complete: mark it failed, abort it at the sources, and fail the job
/// if failures in a row exceed `tolerable-failed-checkpoints`.
pub(crate) fn decline(state: &Arc<JobManagerState>, job_id: &str, attempt: u32, id: u64, reason: String) {
    let fail_job = {
        let mut inner = state.inner.lock();
        let Some(job) = inner.jobs.get_mut(job_id) else { return };
        if !job.coordinator.pending.contains_key(&id) {
            // Acknowledged by everyone but its _metadata could not be written: a final
            // checkpoint must then be triggered again.
            if job.coordinator.final_id == Some(id) {
                job.coordinator.final_id = None;
            }
            return;
        }
        tracing::warn!(job = job_id, checkpoint = id, "checkpoint failed: {reason}");
        job.coordinator.fail(id, &reason)
    };
    let calls = tms_of(state, job_id, true).into_iter().map(|c| (c, request(job_id, attempt, id))).collect();
    call(calls, "abort");
    if fail_job {
        state.fail_job(
            job_id,
            Some(attempt),
            &format!("exceeded execution.checkpointing.tolerable-failed-checkpoints; last failure of checkpoint {id}: {reason}"),
        );
    }
}

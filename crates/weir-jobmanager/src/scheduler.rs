//! Scheduling: a job waits for enough free slots (`slot.request.timeout`), takes them spread
//! over the TaskManagers, then is deployed. With slot sharing, slot i runs subtask i of
//! every vertex, so a job needs as many slots as its highest parallelism.

use crate::clock::humanize;
use crate::effects::{Executor, Followup};
use crate::state::{Allocation, JobManagerState};
use std::sync::Arc;
use std::time::Instant;

/// Waits for slots, allocates them and deploys the job's current attempt. Runs as its own
/// task per attempt; a job that cannot get its slots or whose deployment fails fails.
pub(crate) async fn schedule(state: Arc<JobManagerState>, executor: Executor, job_id: String) {
    let timeout = state.settings().slot_request_timeout;
    let deadline = Instant::now() + timeout;
    let fail = |reason: String| executor.send(Followup::FailJob { job_id: job_id.clone(), attempt: None, reason });
    let calls = loop {
        // Registered before the check, so that slots freed between the check and the wait
        // still wake this loop.
        let notified = state.slots_changed().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match state.allocate(&job_id) {
            Allocation::NotWaiting => return,
            Allocation::Deploy(calls) => break calls,
            Allocation::Waiting { needed, free, total, taskmanagers } => {
                if Instant::now() >= deadline {
                    return fail(format!(
                        "could not get {needed} slots within slot.request.timeout ({}): {free} free of {total} on {taskmanagers} TaskManager(s)",
                        humanize(timeout),
                    ));
                }
            }
        }
        let _ = tokio::time::timeout_at(deadline.into(), notified).await;
    };
    tracing::info!(job = %job_id, taskmanagers = calls.len(), "deploying");
    let handles: Vec<_> = calls
        .into_iter()
        .map(|call| {
            tokio::spawn(async move {
                let mut client = call.taskmanager.client;
                client
                    .deploy_tasks(call.request)
                    .await
                    .map_err(|e| format!("deploying to TaskManager {} failed: {}", call.taskmanager.id, e.message()))
            })
        })
        .collect();
    // Every TaskManager must take its part: one refusal fails the attempt (the others are
    // canceled when it restarts or ends).
    for h in handles {
        match h.await {
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => return fail(reason),
            Err(e) => return fail(format!("deployment call panicked: {e}")),
        }
    }
}

//! Scheduling: a job waits for enough free slots (`slot.request.timeout`), takes them spread
//! over the TaskManagers, then is deployed. With slot sharing, slot i runs subtask i of
//! every vertex, so a job needs as many slots as its highest parallelism.
//!
//! The decision is not made here: [`JobManagerState::allocate`] picks the slots, moves the job
//! CREATED → RUNNING and builds the deployment requests under the state's lock, so two
//! schedulers (or a scheduler and a cancel) can never both act on one attempt. This module
//! only waits and performs: it sleeps on `slots_changed` until `allocate` says `Deploy`, then
//! sends one `DeployTasks` per TaskManager. Whatever goes wrong comes back to the state as a
//! [`Followup::FailJob`], where the restart strategy decides between RESTARTING and FAILED.

use crate::clock::humanize;
use crate::effects::{Executor, Followup};
use crate::state::{Allocation, JobManagerState};
use std::sync::Arc;
use std::time::Instant;

/// Waits for slots, allocates them and deploys the job's current attempt. Runs as its own
/// task per attempt; a job that cannot get its slots or whose deployment fails fails.
///
/// Spawned by the driver on [`Followup::JobAdded`] (a submitted or recovered job) and on
/// [`Followup::Schedule`] (a restarted job's new attempt). `slot.request.timeout` counts from
/// the start of this task, so a recovered job whose TaskManagers do not register again in
/// time fails (or restarts) like any other. It ends quietly once the job no longer waits for
/// slots (canceled, failed, or already deployed). The failures it reports carry no attempt
/// (`attempt: None`): they apply to whichever attempt runs when the driver handles them.
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
            // Canceled, failed or deployed meanwhile: nothing left to do for this attempt.
            Allocation::NotWaiting => return,
            Allocation::Deploy(calls) => break calls,
            Allocation::Waiting { needed, free, total, taskmanagers, program_functions } => {
                if Instant::now() >= deadline {
                    let which = match program_functions {
                        0 => "",
                        _ => " carrying the program's functions (started from the application's binary)",
                    };
                    return fail(format!(
                        "could not get {needed} slots within slot.request.timeout ({}): {free} free of {total} on {taskmanagers} TaskManager(s){which}",
                        humanize(timeout),
                    ));
                }
            }
        }
        // Woken by freed slots or by the deadline; either way the loop asks `allocate` again,
        // so a last look at the slots comes before the timeout fails the job.
        let _ = tokio::time::timeout_at(deadline.into(), notified).await;
    };
    // The job is RUNNING from here on and holds its slots; its tasks report DEPLOYING until
    // their TaskManager starts them. The calls run in parallel, one per TaskManager.
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

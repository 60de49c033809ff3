//! Failure detection: the heartbeat monitor that declares silent TaskManagers lost, and the
//! probe that runs before a task failure fails its job, so that the job fails naming the
//! TaskManager that died rather than the peer that noticed a broken connection.
//!
//! A TaskManager is declared lost in three ways: the heartbeat monitor finds it silent for
//! `heartbeat.timeout`; it does not answer the probe that follows a failed checkpoint RPC
//! ([`crate::effects::Followup::Probe`]); or it does not answer the probe that precedes a
//! task failure. All three end in [`JobManagerState::taskmanager_lost`], which removes it
//! and fails every job with a subtask on it (RESTARTING or FAILED, by the restart strategy;
//! a CANCELLING job is CANCELED instead). The TaskManager itself learns it at its next
//! heartbeat (`known = false`): it cancels its tasks and registers again. This module only
//! detects; the decisions are the state's.

use crate::clock::humanize;
use crate::effects::{Executor, TmTarget};
use crate::state::JobManagerState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use weir_proto::PingRequest;

/// How long a probed TaskManager has to answer. A task failure waits for these probes, one
/// TaskManager after the other, before it fails its job.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Pings a TaskManager; declares it lost if it does not answer.
///
/// Spawned by the driver for [`crate::effects::Followup::Probe`] (a checkpoint RPC to `tm`
/// failed) and awaited by [`task_failed`]. An answer changes nothing: a TaskManager that
/// answers a ping keeps its jobs, whatever RPC failed before.
pub(crate) async fn probe(state: &JobManagerState, executor: &Executor, mut tm: TmTarget) {
    let why = match tokio::time::timeout(PROBE_TIMEOUT, tm.client.ping(PingRequest {})).await {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => format!("unreachable ({})", e.message()),
        Err(_) => format!("unreachable (no answer within {})", humanize(PROBE_TIMEOUT)),
    };
    executor.perform(state.taskmanager_lost(&tm.id, &why));
}

/// After a task failure: probes the job's TaskManagers, declares the unreachable ones lost,
/// then fails the job with the task's reason if that attempt still runs.
///
/// Spawned by the driver for [`crate::effects::Followup::TaskFailed`]. If a probe finds a
/// dead TaskManager, `taskmanager_lost` has already failed the job naming it, and the
/// task's own failure that follows is moot: the job is RESTARTING (or ended) by then, or,
/// after a restart delay of zero, runs a newer attempt than `attempt`.
pub(crate) async fn task_failed(state: Arc<JobManagerState>, executor: Executor, job_id: String, attempt: u32, reason: String) {
    for tm in state.job_taskmanagers(&job_id) {
        probe(&state, &executor, tm).await;
    }
    executor.perform(state.fail_job(&job_id, Some(attempt), &reason));
}

/// Declares TaskManagers lost when they miss heartbeats for `heartbeat.timeout`.
///
/// Spawned once by [`crate::start`], after recovery; it returns when the JobManager shuts
/// down. It looks every tenth of the timeout (within 20..500 ms), so a TaskManager is
/// declared lost at most one look after its timeout passed.
pub(crate) async fn heartbeat_monitor(state: Arc<JobManagerState>, executor: Executor, mut shutdown: watch::Receiver<bool>) {
    let timeout = state.settings().heartbeat_timeout;
    let tick = (timeout / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        for tm in state.silent_taskmanagers(timeout) {
            executor.perform(state.taskmanager_lost(&tm, &format!("no heartbeat for {}", humanize(timeout))));
        }
    }
}

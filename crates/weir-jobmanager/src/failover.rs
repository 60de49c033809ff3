//! Failure detection: the heartbeat monitor that declares silent TaskManagers lost, and the
//! probe that runs before a task failure fails its job, so that the job fails naming the
//! TaskManager that died rather than the peer that noticed a broken connection.

use crate::clock::humanize;
use crate::effects::{Executor, TmTarget};
use crate::state::JobManagerState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use weir_proto::PingRequest;

/// How long a probed TaskManager has to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Pings a TaskManager; declares it lost if it does not answer.
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
pub(crate) async fn task_failed(state: Arc<JobManagerState>, executor: Executor, job_id: String, attempt: u32, reason: String) {
    for tm in state.job_taskmanagers(&job_id) {
        probe(&state, &executor, tm).await;
    }
    executor.perform(state.fail_job(&job_id, Some(attempt), &reason));
}

/// Declares TaskManagers lost when they miss heartbeats for `heartbeat.timeout`.
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

//! The JobManager's driver: routes every [`Followup`] (outcomes of effects, timers) back to
//! the state, and runs the per-job tasks (scheduling, the checkpoint timer). It is the only
//! module that knows all the others; below it, the state decides and the executor performs.
//!
//! A follow-up either asks for a decision, made here at once (one call on the state, whose
//! effects go straight to the executor), or for something that waits (slots, deployment
//! RPCs, probes, the checkpoint timer), which runs as a task of its own so that one slow
//! TaskManager never holds up the decisions of other jobs:
//!
//! | follow-up | handled by |
//! |---|---|
//! | `JobAdded` | a checkpoint timer and a scheduler task |
//! | `Schedule` | a scheduler task (the new attempt of a restarted job) |
//! | `Checkpoint` | the job's coordinator, through `JobManagerState::checkpoint_event` |
//! | `FailJob` | `JobManagerState::fail_job`: RESTARTING or FAILED |
//! | `TaskFailed` | a task that probes the job's TaskManagers, then fails the job |
//! | `Probe` | a task that pings one TaskManager |
//! | `RestartDelayElapsed` | `JobManagerState::restart`: RESTARTING → CREATED, a new attempt |

use crate::effects::{Executor, Followup};
use crate::state::JobManagerState;
use crate::{failover, scheduler};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

/// Handles follow-ups until the JobManager shuts down. Follow-ups of one job are handled in
/// the order they were sent (one channel, one loop), so, for example, a checkpoint's
/// `TriggerFailed` is seen before a later `MetadataWritten` of the same checkpoint could be.
///
/// Spawned once by [`crate::start`], before recovery adds its jobs, so their `JobAdded`
/// follow-ups find it running. Returns at shutdown or when every sender is gone; follow-ups
/// still queued then are dropped (the jobs are SUSPENDED by then).
pub(crate) async fn run(
    state: Arc<JobManagerState>,
    executor: Executor,
    mut followups: UnboundedReceiver<Followup>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let followup = tokio::select! {
            f = followups.recv() => match f {
                Some(f) => f,
                None => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        // Decisions are quick (one lock, no I/O); anything that waits runs as its own task.
        match followup {
            Followup::JobAdded { job_id } => {
                tokio::spawn(checkpoint_timer(state.clone(), executor.clone(), job_id.clone()));
                tokio::spawn(scheduler::schedule(state.clone(), executor.clone(), job_id));
            }
            Followup::Schedule { job_id } => {
                tokio::spawn(scheduler::schedule(state.clone(), executor.clone(), job_id));
            }
            Followup::Checkpoint { job_id, event } => executor.perform(state.checkpoint_event(&job_id, event)),
            Followup::FailJob { job_id, attempt, reason } => executor.perform(state.fail_job(&job_id, attempt, &reason)),
            Followup::TaskFailed { job_id, attempt, reason } => {
                tokio::spawn(failover::task_failed(state.clone(), executor.clone(), job_id, attempt, reason));
            }
            Followup::Probe { taskmanager } => {
                let (state, executor) = (state.clone(), executor.clone());
                tokio::spawn(async move { failover::probe(&state, &executor, taskmanager).await });
            }
            Followup::RestartDelayElapsed { job_id } => executor.perform(state.restart(&job_id)),
        }
    }
}

/// Ticks the job's checkpoint coordinator (triggers and timeouts) until the job ends. The
/// timer lives as long as the job, across its restarts: the coordinator decides from the
/// task view whether a tick may trigger.
///
/// Started once per job, on `JobAdded`; a restart does not start another. It stops when
/// `checkpoint_tick` says the job ended or was suspended, which is also how it stops at
/// shutdown. With checkpointing off there is no period and it returns at once: the
/// coordinator never triggers, so nothing needs its ticks.
async fn checkpoint_timer(state: Arc<JobManagerState>, executor: Executor, job_id: String) {
    let Some(mut period) = state.checkpoint_tick_period(&job_id) else { return };
    loop {
        tokio::time::sleep(period).await;
        // The interval may change while the job runs (`PATCH /jobs/{id}/checkpoints/config`).
        period = state.checkpoint_tick_period(&job_id).unwrap_or(period);
        match state.checkpoint_tick(&job_id) {
            Some(effects) => executor.perform(effects),
            None => return,
        }
    }
}

//! Side effects of the JobManager's decisions, and the one place that performs them.
//!
//! The JobManager's state (`state.rs`) changes under one lock and never waits there: each
//! change returns the [`Effect`]s it calls for (RPCs to TaskManagers, writes and deletes in
//! checkpoint storage, catalog entries, timers). The [`Executor`] performs them after the lock
//! is released. Outcomes that need another decision (a trigger that could not be delivered, a
//! `_metadata` write that ended, a restart delay that passed) come back as [`Followup`]s on one
//! channel, which the driver (`driver.rs`) routes to the state again. So decisions and I/O
//! never mix, and no module below the driver needs to know the modules above it.

use crate::catalog::{Catalog, JobRecord};
use crate::coordinator::Event;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use weir_core::config::Config;
use weir_proto::task_manager_service_client::TaskManagerServiceClient;
use weir_proto::{CancelTasksRequest, CheckpointRequest};
use weir_state::cleanup::Sweep;
use weir_state::metadata::CheckpointMetadata;
use weir_state::storage::layout;
use weir_state::CheckpointStorage;

/// When a repeated sweep runs again, after the first: uploads of canceled tasks may still be
/// landing when an attempt ends.
const SWEEP_REPEATS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(20)];

/// A gRPC client of one TaskManager, built by `tm_client` in `state.rs`: connected lazily,
/// every call bounded, so an effect never waits forever on a dead TaskManager.
pub(crate) type TmClient = TaskManagerServiceClient<weir_proto::security::GrpcChannel>;

/// A TaskManager to call: its id (for errors and probes) and its client.
#[derive(Clone)]
pub(crate) struct TmTarget {
    pub id: String,
    pub client: TmClient,
}

/// The checkpoint RPCs of the TaskManager service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckpointCall {
    /// `TriggerCheckpoint`: sources inject a barrier (every task, for the final checkpoint).
    Trigger,
    /// `NotifyCheckpointComplete`: `_metadata` is written; two-phase-commit sinks commit.
    NotifyComplete,
    /// `AbortCheckpoint`: tasks drop what they collected for the checkpoint.
    Abort,
}

impl CheckpointCall {
    fn name(self) -> &'static str {
        match self {
            Self::Trigger => "trigger",
            Self::NotifyComplete => "notify-complete",
            Self::Abort => "abort",
        }
    }
}

/// Something the JobManager must do outside its lock.
pub(crate) enum Effect {
    /// A checkpoint RPC to each TaskManager in `to`, each call a task of its own. A failed
    /// call is logged and the TaskManager probed; a failed trigger also fails the checkpoint
    /// at once ([`Event::TriggerFailed`]) rather than at its timeout.
    CheckpointRpc { call: CheckpointCall, to: Vec<TmTarget>, request: CheckpointRequest },
    /// Write a checkpoint's `_metadata`; the outcome comes back as a follow-up.
    WriteMetadata { job_id: String, storage: CheckpointStorage, metadata: CheckpointMetadata },
    /// Delete a checkpoint's folder (`chk-<id>`, with everything under it; on `file://`
    /// storage its directories too). Failures are logged only, naming the path; note that a
    /// leftover folder with a `_metadata` is still a candidate when a restarted JobManager
    /// looks for the newest checkpoint (`recover.rs`), and a later sweep retries the rest.
    DeleteCheckpoint { job_id: String, storage: CheckpointStorage, id: u64 },
    /// Delete files (shared SSTs nothing references any more). Failures are logged only.
    DeleteFiles { storage: CheckpointStorage, paths: Vec<String> },
    /// Sweep the job's checkpoint storage of garbage (see `weir_state::cleanup`); with
    /// `repeat`, again after each of [`SWEEP_REPEATS`]. Failures are logged only.
    CollectGarbage { storage: CheckpointStorage, sweep: Sweep, repeat: bool },
    /// Write a savepoint's `_metadata` at the root of its folder (opened with the job's
    /// configuration); the outcome comes back as a follow-up, as for checkpoints.
    WriteSavepointMetadata { job_id: String, location: String, config: Config, metadata: CheckpointMetadata },
    /// Delete a failed savepoint's folder. Failures are logged only.
    DeleteSavepoint { location: String, config: Config },
    /// A savepoint request ended: hand the outcome to whoever waits for `ticket`.
    SavepointDone { job_id: String, ticket: u64, result: Result<(u64, String), String> },
    /// Cancel a job attempt's tasks on each TaskManager in `to`. The request names the
    /// attempt, so a TaskManager already running a newer one keeps it. Best effort: a failed
    /// call is logged at debug level, and a TaskManager that cannot be reached is left to the
    /// heartbeat monitor.
    CancelTasks { to: Vec<TmTarget>, request: CancelTasksRequest },
    /// Write the job's catalog entry (with its sequence number: an older entry never
    /// overwrites a newer one).
    SaveCatalog { record: JobRecord, seq: u64 },
    /// After `delay`, the restart of the job goes on ([`Followup::RestartDelayElapsed`]).
    RestartAfter { job_id: String, delay: Duration },
    /// Another decision to make right away.
    Followup(Followup),
}

/// Outcomes and timers that come back to the JobManager's state, routed by the driver.
///
/// Sent through [`Executor::send`] (by the executor's own tasks, the scheduler, or an
/// [`Effect::Followup`] a decision returned) and handled one at a time, in the order sent;
/// see `driver.rs` for what each one starts.
#[derive(Debug)]
pub(crate) enum Followup {
    /// A new job was added: schedule it and start its checkpoint timer.
    JobAdded { job_id: String },
    /// An attempt waits for slots.
    Schedule { job_id: String },
    /// Something happened to a checkpoint of the job.
    Checkpoint { job_id: String, event: Event },
    /// The job (attempt `attempt`, or whatever runs when `None`) failed.
    FailJob { job_id: String, attempt: Option<u32>, reason: String },
    /// A task failed: probe the job's TaskManagers first, so that a dead one is named.
    TaskFailed { job_id: String, attempt: u32, reason: String },
    /// A TaskManager did not answer an RPC: find out whether it is gone.
    Probe { taskmanager: TmTarget },
    /// The restart strategy's delay passed.
    RestartDelayElapsed { job_id: String },
}

impl std::fmt::Debug for TmTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TaskManager {}", self.id)
    }
}

/// Performs effects; sends follow-ups to the driver.
///
/// Cheap to clone (a channel sender and the catalog handle). RPCs and storage operations run
/// as tasks of their own and never block the caller; catalog entries are written before
/// `perform` returns, so the catalog never lags behind a state change that was reported.
#[derive(Clone)]
pub(crate) struct Executor {
    followups: UnboundedSender<Followup>,
    catalog: Option<Catalog>,
    savepoints: Arc<Mutex<SavepointWaiters>>,
}

/// The outcome of a savepoint request: `(checkpoint id, folder)` or why it failed.
pub(crate) type SavepointResult = Result<(u64, String), String>;

/// Callers waiting for savepoints (the `TriggerSavepoint` and `StopJob` RPCs), by (job,
/// ticket), and outcomes that arrived before their caller started waiting.
#[derive(Default)]
struct SavepointWaiters {
    waiting: HashMap<(String, u64), oneshot::Sender<SavepointResult>>,
    early: HashMap<(String, u64), SavepointResult>,
}

impl Executor {
    /// An executor that sends follow-ups to the driver's channel and, with
    /// `jobmanager.catalog.dir`, writes catalog entries to `catalog`.
    pub fn new(followups: UnboundedSender<Followup>, catalog: Option<Catalog>) -> Self {
        Self { followups, catalog, savepoints: Arc::default() }
    }

    /// Waits for the outcome of savepoint request `ticket` of `job_id` (which may already be
    /// known). Errs if the JobManager drops the request (it shuts down).
    pub async fn savepoint_outcome(&self, job_id: &str, ticket: u64) -> SavepointResult {
        let key = (job_id.to_string(), ticket);
        let rx = {
            let mut w = self.savepoints.lock();
            if let Some(result) = w.early.remove(&key) {
                return result;
            }
            let (tx, rx) = oneshot::channel();
            w.waiting.insert(key, tx);
            rx
        };
        rx.await.unwrap_or_else(|_| Err("the JobManager dropped the savepoint request".into()))
    }

    /// Queues a follow-up for the driver (dropped only when the JobManager shuts down).
    pub fn send(&self, followup: Followup) {
        let _ = self.followups.send(followup);
    }

    /// Performs every effect, in order for what is synchronous (catalog writes, follow-ups);
    /// RPCs and storage operations run as their own tasks.
    pub fn perform(&self, effects: Vec<Effect>) {
        for effect in effects {
            self.perform_one(effect);
        }
    }

    /// Performs one effect. Only `SaveCatalog` and `Followup` are done before this returns;
    /// everything else is spawned on the runtime and reports back, if at all, by follow-up.
    fn perform_one(&self, effect: Effect) {
        match effect {
            Effect::CheckpointRpc { call, to, request } => {
                for target in to {
                    let this = self.clone();
                    let request = request.clone();
                    tokio::spawn(async move { this.checkpoint_rpc(call, target, request).await });
                }
            }
            Effect::WriteMetadata { job_id, storage, metadata } => {
                let this = self.clone();
                tokio::spawn(async move {
                    let id = metadata.checkpoint_id;
                    let result = metadata.write(&storage).await.map_err(|e| e.to_string());
                    this.send(Followup::Checkpoint { job_id, event: Event::MetadataWritten { id, result } });
                });
            }
            Effect::DeleteCheckpoint { job_id, storage, id } => {
                tokio::spawn(async move {
                    let dir = layout::checkpoint_dir(&job_id, id);
                    match storage.delete_dir(&dir).await {
                        Ok(failed) => {
                            for (_, e) in failed {
                                tracing::warn!(job = %job_id, checkpoint = id, "cannot delete a file of a discarded checkpoint: {e}");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(job = %job_id, checkpoint = id, "cannot delete the discarded checkpoint {}: {e}", storage.display(&dir))
                        }
                    }
                });
            }
            Effect::DeleteFiles { storage, paths } => {
                tokio::spawn(async move {
                    for (_, e) in storage.delete_files(&paths).await {
                        tracing::warn!("cannot delete an unreferenced shared file: {e}");
                    }
                });
            }
            Effect::CollectGarbage { storage, sweep, repeat } => {
                tokio::spawn(async move {
                    collect_garbage(&storage, &sweep).await;
                    if repeat {
                        let mut waited = Duration::ZERO;
                        for after in SWEEP_REPEATS {
                            tokio::time::sleep(after - waited).await;
                            waited = after;
                            collect_garbage(&storage, &sweep).await;
                        }
                    }
                });
            }
            Effect::WriteSavepointMetadata { job_id, location, config, metadata } => {
                let this = self.clone();
                tokio::spawn(async move {
                    let id = metadata.checkpoint_id;
                    let result = match CheckpointStorage::open(&location, &config) {
                        Ok(storage) => metadata.write_at(&storage, "_metadata").await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    this.send(Followup::Checkpoint { job_id, event: Event::MetadataWritten { id, result } });
                });
            }
            Effect::DeleteSavepoint { location, config } => {
                tokio::spawn(async move {
                    if let Err(e) = crate::savepoint::delete_folder(&location, &config).await {
                        tracing::warn!(location = %location, "cannot delete a failed savepoint: {e}");
                    }
                });
            }
            Effect::SavepointDone { job_id, ticket, result } => {
                let key = (job_id, ticket);
                let mut w = self.savepoints.lock();
                match w.waiting.remove(&key) {
                    Some(tx) => {
                        let _ = tx.send(result);
                    }
                    None => {
                        w.early.insert(key, result);
                    }
                }
            }
            Effect::CancelTasks { to, request } => {
                for mut target in to {
                    let request = request.clone();
                    tokio::spawn(async move {
                        if let Err(e) = target.client.cancel_job(request).await {
                            tracing::debug!(taskmanager = %target.id, "cancel call failed: {}", e.message());
                        }
                    });
                }
            }
            Effect::SaveCatalog { record, seq } => {
                if let Some(c) = &self.catalog {
                    c.save(&record, seq);
                }
            }
            Effect::RestartAfter { job_id, delay } => {
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    this.send(Followup::RestartDelayElapsed { job_id });
                });
            }
            Effect::Followup(f) => self.send(f),
        }
    }

    /// One checkpoint RPC to one TaskManager. A failure is reported as a follow-up: a
    /// trigger that did not arrive fails its checkpoint, and any failed call asks for a probe,
    /// which declares the TaskManager lost if it no longer answers at all.
    async fn checkpoint_rpc(&self, call: CheckpointCall, mut target: TmTarget, request: CheckpointRequest) {
        let id = request.checkpoint_id;
        let job_id = request.job_id.clone();
        let result = match call {
            CheckpointCall::Trigger => target.client.trigger_checkpoint(request).await,
            CheckpointCall::NotifyComplete => target.client.notify_checkpoint_complete(request).await,
            CheckpointCall::Abort => target.client.abort_checkpoint(request).await,
        };
        let Err(e) = result else { return };
        tracing::warn!(job = %job_id, checkpoint = id, taskmanager = %target.id, "checkpoint {} call failed: {}", call.name(), e.message());
        if call == CheckpointCall::Trigger {
            // Downstream tasks would otherwise wait in alignment until the checkpoint timeout.
            let reason = format!("TaskManager {} did not take the trigger: {}", target.id, e.message());
            self.send(Followup::Checkpoint { job_id, event: Event::TriggerFailed { id, reason } });
        }
        self.send(Followup::Probe { taskmanager: target });
    }
}

/// Runs one sweep, logging what it deleted and, as warnings naming the path, what it could not.
async fn collect_garbage(storage: &CheckpointStorage, sweep: &Sweep) {
    match sweep.run(storage).await {
        Ok(outcome) => {
            if !outcome.deleted.is_empty() {
                tracing::debug!(job = %sweep.job, files = outcome.deleted.len(), "deleted leftover checkpoint files");
            }
            for (_, e) in outcome.failed {
                tracing::warn!(job = %sweep.job, "cannot delete a leftover checkpoint file: {e}");
            }
        }
        Err(e) => tracing::warn!(job = %sweep.job, "cannot list checkpoint storage for cleanup: {e}"),
    }
}

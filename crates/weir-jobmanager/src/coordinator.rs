//! The CheckpointCoordinator of one job, as a pure state machine.
//!
//! ## Protocol (long form: `docs/checkpointing.md`)
//! - **Trigger.** Every `execution.checkpointing.interval`, if every subtask of the attempt runs,
//!   fewer than `max-concurrent-checkpoints` checkpoints are pending and `min-pause` has passed
//!   since the last completion, checkpoint n is triggered at the source subtasks. Ids grow
//!   across restarts of the job, so a late message of an old attempt never counts for a new one.
//! - **Acknowledge.** Each subtask acknowledges n with its state handles once its snapshot is
//!   uploaded. When all have, n moves to *finalizing*: its `_metadata` is being written. A
//!   finalizing checkpoint is still pending: it counts against `max-concurrent-checkpoints`,
//!   and it can still fail.
//! - **Complete.** When `_metadata` is written (its presence is what makes n complete), n is
//!   filed as the newest retained checkpoint, the tasks are told (two-phase-commit sinks commit
//!   now), older pending checkpoints are subsumed, and retained checkpoints beyond
//!   `num-retained` are discarded with the shared files no retained checkpoint references.
//! - **Fail.** A checkpoint past `timeout`, declined by a subtask, whose trigger could not be
//!   delivered, or whose `_metadata` cannot be written, fails at once: every task is told to
//!   abort it and its files are discarded. More than `tolerable-failed-checkpoints` failures in
//!   a row fail the job; what says nothing about the job's ability to checkpoint (subsumed, the
//!   attempt ended, a TaskManager that the trigger did not reach) is not counted.
//! - **Final checkpoint.** When every task's input has ended, periodic checkpoints still
//!   collecting acknowledgements can no longer complete (their barriers cannot pass finished
//!   inputs): they are aborted and one final checkpoint is triggered on every task. Its
//!   completion lets the sinks commit the tail of the output and the tasks finish.
//! - **Savepoints.** A user's savepoint starts at once, whatever the interval, min-pause and
//!   max-concurrent say, beside the checkpoints already pending, which go on undisturbed. Its
//!   barrier is aligned and its files go to a folder of its own. While it is pending no
//!   periodic checkpoint starts, so no newer (possibly unaligned) barrier overtakes it: that
//!   is how the coordinator keeps an aligned savepoint apart from unaligned checkpoints. An
//!   intermediate savepoint commits nothing and is no restore point (as in Flink since 1.15);
//!   a stop-with-savepoint commits (the tasks are told) and stays the restore point until a
//!   newer checkpoint completes; with `--drain` the sources end first and the final checkpoint
//!   is the savepoint. A failed savepoint is answered, its folder deleted, and not counted
//!   against `tolerable-failed-checkpoints`.
//! - **Attempts.** When an attempt ends (failure, cancel), every pending checkpoint is void,
//!   finalizing ones included: a restart that already chose its restore point must never see a
//!   newer checkpoint appear behind it.
//!
//! ## Invariants (checked by the property test below)
//! - Pending checkpoints, finalizing ones included, never exceed `max-concurrent-checkpoints`
//!   (the final checkpoint aside, which is the only one then).
//! - Completed ids only grow: an older checkpoint never completes over a newer one, so the
//!   restore point ([`CheckpointCoordinator::latest`]) is always the newest completed.
//! - Tasks are told of a completion only after its `_metadata` is written, and only for the
//!   running attempt.
//!
//! The coordinator does no I/O and reads no clock: [`CheckpointCoordinator::handle`] takes an
//! [`Event`] and the time, and returns the [`Action`]s; `coordinate.rs` addresses them to
//! TaskManagers and storage as effects, which `effects.rs` performs. Concurrent unaligned
//! checkpoints need nothing special here (the tasks keep them apart); savepoints arrive as an
//! event and a kind, and settings changed at run time are meant to arrive the same way.
//!
//! Shared files (incremental SSTs, channel-state files) that no retained checkpoint references
//! are deleted only once every checkpoint that might still reference them has ended: with
//! concurrent checkpoints, one snapshotted before its task heard of a newer upload may. When the
//! attempt ends, nothing of it can reference anything any more (a restored task reuses no
//! uploaded file), so everything deferred goes then.
//!
//! ## Cleanup (long form: `docs/state.md`)
//! A discarded checkpoint's folder goes at once ([`Action::Discard`]), unreferenced shared files
//! as above ([`Action::DeleteSharedFiles`]). What no acknowledgement named (files a failed
//! checkpoint's tasks uploaded before it failed, uploads that landed after their checkpoint was
//! aborted) only a listing finds: a failure asks for a [`Sweep`] of the job's storage, sent once
//! no checkpoint is pending (a pending one may share a failed checkpoint's channel-state file),
//! and once more at the next such moment for uploads still landing during the first. Each
//! attempt's end and a JobManager's recovery sweep too, and again a little later (canceled
//! tasks may still be uploading). A sweep keeps the retained checkpoints and every shared file
//! the registry or a deferred deletion holds.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_core::graph::JobGraph;
use weir_core::settings::CheckpointConfig;
use weir_proto::{CheckpointInfo, CheckpointStatus};
use weir_state::cleanup::Sweep;
use weir_state::metadata::{CheckpointMetadata, OperatorState, SubtaskState};
use weir_state::registry::SharedStateRegistry;

/// The time an event happens at: a monotonic instant for intervals and timeouts, and the wall
/// clock (milliseconds since the epoch) for what users see.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub epoch_ms: i64,
}

/// A subtask: (vertex id, subtask index).
pub type SubtaskKey = (u32, u32);

/// What the coordinator needs to know of the job's tasks at a tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskView {
    /// The job is in a state that takes checkpoints (RUNNING or FINISHING).
    pub job_active: bool,
    pub total: usize,
    pub running: usize,
    /// Tasks whose input ended and that wait for the final checkpoint.
    pub finishing: usize,
    pub finished: usize,
}

impl TaskView {
    fn all_running(&self) -> bool {
        self.job_active && self.total > 0 && self.running == self.total
    }

    fn inputs_ended(&self) -> bool {
        self.job_active && self.finishing > 0 && self.finishing + self.finished == self.total
    }
}

/// Why a checkpoint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// Every `execution.checkpointing.interval`.
    Periodic,
    /// Once every task's input ended: commits the tail of the output.
    Final,
    /// Asked for by a user (`weir savepoint`, `weir stop`): always aligned, full and
    /// self-contained, written to its own folder.
    Savepoint,
}

/// How `weir stop` ends the job after its savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// The sources stop emitting right after the savepoint's barrier and end their input once
    /// it completed; should it fail, they go on.
    Suspend,
    /// `--drain`: the sources end their input first, the job flushes, and the final checkpoint
    /// is the savepoint.
    Drain,
}

/// A savepoint a user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavepointRequest {
    /// Identifies the request, so that its outcome finds the caller waiting for it.
    pub ticket: u64,
    /// The savepoint's own folder (a storage URL), created for it by the JobManager. Every
    /// path its `_metadata` records is relative to this folder.
    pub location: String,
    /// RocksDB writes its native files instead of the canonical key-group file.
    pub native: bool,
    /// `weir stop`: how the job ends after the savepoint.
    pub stop: Option<StopMode>,
}

/// A savepoint whose completion committed the sinks' output (a stop-with-savepoint): until a
/// newer checkpoint completes, it is the job's restore point, since restoring an older
/// checkpoint would replay rows the sinks already committed.
#[derive(Debug, Clone)]
pub struct SyncSavepoint {
    /// The savepoint's folder: the storage its metadata's paths resolve against.
    pub location: String,
    pub metadata: CheckpointMetadata,
}

/// Which tasks receive a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerTarget {
    /// The source subtasks: they inject the barrier that flows through the job.
    Sources,
    /// Every task (the final checkpoint: inputs have ended, so no barrier flows).
    AllTasks,
}

/// Why a checkpoint failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// Not complete within `execution.checkpointing.timeout`.
    Expired,
    /// A subtask could not take it.
    Declined(String),
    /// The trigger RPC did not reach a TaskManager.
    TriggerFailed(String),
    /// Every subtask acknowledged, but `_metadata` could not be written.
    MetadataWriteFailed(String),
    /// A newer checkpoint completed first.
    Subsumed { by: u64 },
    /// Every task's input ended: the final checkpoint takes over.
    InputEnded,
    /// The attempt it belonged to ended (the job restarts, is canceled or ended).
    AttemptEnded(String),
}

impl FailureReason {
    /// Whether this failure counts towards `tolerable-failed-checkpoints`: only failures that
    /// say something about the job's ability to checkpoint do. A trigger that does not reach a
    /// TaskManager says that the TaskManager is gone: the probe that follows fails the job
    /// over naming it, and counting the checkpoint too would fail it again, less clearly.
    pub fn counts_as_failure(&self) -> bool {
        matches!(self, Self::Expired | Self::Declined(_) | Self::MetadataWriteFailed(_))
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired => write!(f, "checkpoint expired before completing (execution.checkpointing.timeout)"),
            Self::Declined(why) => write!(f, "declined: {why}"),
            Self::TriggerFailed(why) => write!(f, "trigger failed: {why}"),
            Self::MetadataWriteFailed(why) => write!(f, "cannot write _metadata: {why}"),
            Self::Subsumed { by } => write!(f, "subsumed by checkpoint {by}"),
            Self::InputEnded => write!(f, "subsumed by the final checkpoint (the job's input ended)"),
            Self::AttemptEnded(why) => write!(f, "{why}"),
        }
    }
}

/// What happened, as the coordinator is told.
#[derive(Debug, Clone)]
pub enum Event {
    /// Time passed; `tasks` is the job's task view now. Triggers and expiries happen here.
    Tick(TaskView),
    /// The trigger of `id` could not be delivered.
    TriggerFailed { id: u64, reason: String },
    /// A subtask acknowledged `id` with its state handles.
    Acknowledged { attempt: u32, id: u64, subtask: SubtaskKey, states: Vec<(String, SubtaskState)>, stats: AckStats },
    /// A subtask could not take `id`.
    Declined { attempt: u32, id: u64, reason: String },
    /// The `_metadata` write of `id` ended.
    MetadataWritten { id: u64, result: Result<(), String> },
    /// The running attempt ended (failure, restart, cancel, end of the job): every pending
    /// checkpoint is void.
    AttemptEnded { reason: String },
    /// Attempt `attempt` is deployed: it may take (and finish with) checkpoints of its own.
    AttemptStarted { attempt: u32 },
    /// A user asked for a savepoint (with `stop`: to stop the job after it); `tasks` is the job's
    /// task view now. The outcome comes back as [`Action::SavepointDone`] with the request's
    /// ticket.
    TriggerSavepoint { request: SavepointRequest, tasks: TaskView },
    /// The job's checkpoint settings changed while it runs (`PATCH
    /// /jobs/{id}/checkpoints/config`): they apply from the next tick on; pending checkpoints
    /// keep going (the new timeout applies to them too).
    UpdateSettings(CoordinatorSettings),
    /// A user asked for a checkpoint now (`POST /jobs/{id}/checkpoints`); `tasks` is the job's
    /// task view now. It starts at once if every task runs and no stop or savepoint is under
    /// way, whatever the interval, min-pause and max-concurrent say.
    TriggerNow(TaskView),
    /// A recovered JobManager found these completed checkpoints of the job in its storage
    /// (`recover.rs`): they are retained again (the newest `num-retained`; older ones are
    /// discarded), their shared files registered, and the storage swept of what the previous
    /// JobManager left behind.
    Recovered { checkpoints: Vec<CheckpointMetadata> },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a trigger for `id` to `target`; a delivery failure comes back as
    /// [`Event::TriggerFailed`]. `savepoint` is set for a savepoint (its folder, format and
    /// whether the sources stop after it).
    Trigger { id: u64, attempt: u32, timestamp_ms: i64, kind: CheckpointKind, target: TriggerTarget, savepoint: Option<SavepointRequest> },
    /// Write this `_metadata` (into the savepoint's folder when `savepoint` is set, else into
    /// `chk-<n>/`); the outcome comes back as [`Event::MetadataWritten`].
    WriteMetadata { metadata: CheckpointMetadata, savepoint: Option<String> },
    /// `weir stop --drain`: tell the source tasks of `attempt` to end their input now.
    EndInput { attempt: u32 },
    /// A savepoint request ended: `Ok((checkpoint id, folder))` or why it failed.
    SavepointDone { ticket: u64, result: Result<(u64, String), String> },
    /// Delete a failed savepoint's folder, with everything under it.
    DiscardSavepoint { location: String },
    /// Tell every task again that stop savepoint `id` completed: a stopped source that missed
    /// the notice would otherwise wait for it forever (the notice is idempotent).
    RemindComplete { id: u64, attempt: u32 },
    /// Tell every task that `id` completed (two-phase-commit sinks commit).
    NotifyComplete { id: u64, attempt: u32 },
    /// Tell every task to abort `id` (each drops what it collected and forwards a cancellation
    /// marker downstream).
    Abort { id: u64, attempt: u32, reason: FailureReason },
    /// Delete the folder `chk-<id>` (a failed, void or no longer retained checkpoint).
    Discard { id: u64 },
    /// Delete shared files (incremental SSTs) no retained checkpoint references any more.
    DeleteSharedFiles(Vec<String>),
    /// List the job's checkpoint storage and delete what `sweep` calls garbage (see the module
    /// header's "Cleanup"). With `repeat` (an attempt ended, a JobManager recovered) the sweep
    /// runs again a little later, for uploads of canceled tasks still landing.
    CollectGarbage { sweep: Sweep, repeat: bool },
    /// Checkpoint failures exceeded `tolerable-failed-checkpoints`.
    FailJob(String),
}

/// Settings the coordinator needs, from [`CheckpointConfig`].
#[derive(Debug, Clone)]
pub struct CoordinatorSettings {
    /// Periodic checkpoints; `None`: checkpointing is off.
    pub interval: Option<Duration>,
    pub min_pause: Duration,
    pub max_concurrent: usize,
    pub timeout: Duration,
    pub tolerable_failures: u64,
    pub num_retained: usize,
}

impl From<&CheckpointConfig> for CoordinatorSettings {
    fn from(c: &CheckpointConfig) -> Self {
        Self {
            interval: c.interval,
            min_pause: c.min_pause,
            max_concurrent: c.max_concurrent.max(1),
            timeout: c.timeout,
            tolerable_failures: c.tolerable_failures,
            num_retained: c.num_retained.max(1),
        }
    }
}

/// Where a pending checkpoint stands.
#[derive(Debug)]
enum Phase {
    /// Waiting for the acknowledgements of `total` subtasks.
    Collecting { acks: HashMap<SubtaskKey, Vec<(String, SubtaskState)>>, total: usize },
    /// Every subtask acknowledged; this `_metadata` is being written.
    Finalizing(CheckpointMetadata),
}

#[derive(Debug)]
struct PendingCheckpoint {
    kind: CheckpointKind,
    /// Set for a savepoint (and for a final checkpoint that is `weir stop --drain`'s savepoint).
    savepoint: Option<SavepointRequest>,
    /// The attempt it was triggered for: acknowledgements of any other are ignored.
    attempt: u32,
    /// When it was triggered (the timeout counts from here).
    started: Instant,
    phase: Phase,
}

/// The final checkpoint of the running attempt: taken once, again only if it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FinalCheckpoint {
    /// Not triggered yet in this attempt (or the last one failed: it is triggered again).
    NotTaken,
    /// Triggered, not complete.
    InFlight(u64),
    /// Complete: the tasks may finish; never triggered again in this attempt.
    Completed(u64),
}

/// What a subtask's acknowledgement reports besides its state handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckStats {
    /// How long its barriers took to align (until the switch, for a timed-out one).
    pub alignment_ms: u64,
    /// Bytes it stored: state files, keyed handles and channel state.
    pub size: u64,
    /// Bytes of in-flight data it stored as channel state.
    pub inflight_bytes: u64,
    /// How it took the checkpoint.
    pub kind: SnapshotKind,
    /// Its synchronous part, and the asynchronous rest until it acknowledged.
    pub sync_ms: u64,
    pub async_ms: u64,
}

/// How a checkpoint was taken, as `weir checkpoints` shows it.
pub use weir_proto::CheckpointKind as SnapshotKind;

/// One row of `weir checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    pub id: u64,
    pub status: CheckpointStatus,
    pub trigger_ms: i64,
    pub duration_ms: u64,
    pub size: u64,
    pub alignment_ms: u64,
    pub failure: String,
    pub acknowledged: u32,
    pub total: u32,
    /// Aligned until a subtask reports otherwise: unaligned if any took it unaligned, timed out
    /// to unaligned if any switched.
    pub kind: SnapshotKind,
    /// In-flight bytes stored as channel state, over the subtasks that acknowledged.
    pub inflight_bytes: u64,
    /// A savepoint, and its folder once complete.
    pub savepoint: bool,
    pub path: String,
    /// The longest synchronous and asynchronous parts among the subtasks that acknowledged.
    pub sync_ms: u64,
    pub async_ms: u64,
}

impl CheckpointRecord {
    pub fn info(&self) -> CheckpointInfo {
        CheckpointInfo {
            id: self.id,
            status: self.status as i32,
            trigger_time_ms: self.trigger_ms,
            duration_ms: self.duration_ms,
            size_bytes: self.size,
            alignment_ms: self.alignment_ms,
            failure: self.failure.clone(),
            acknowledged: self.acknowledged,
            total: self.total,
            kind: self.kind as i32,
            inflight_bytes: self.inflight_bytes,
            sync_ms: self.sync_ms,
            async_ms: self.async_ms,
            savepoint: self.savepoint,
            path: self.path.clone(),
        }
    }
}

/// Where a `weir stop` of the running attempt stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopPhase {
    /// No stop asked for.
    Running,
    /// A stop under way, not answered yet; with `--drain` the final checkpoint is its savepoint.
    Requested(SavepointRequest),
    /// Its savepoint completed: the job is ending (until a restart, which runs the job on from
    /// that savepoint).
    Stopping,
}

/// The checkpoint coordinator of one job. See the module header for the protocol.
pub struct CheckpointCoordinator {
    /// The job, for `_metadata`.
    job_id: String,
    /// The job's graph: which operators (by uid) run in which vertex, at which parallelism.
    graph: Arc<JobGraph>,
    settings: CoordinatorSettings,
    /// The attempt whose tasks checkpoints belong to.
    attempt: u32,
    /// The id the next checkpoint gets; it only grows, across attempts and JobManager restarts.
    next_id: u64,
    /// Checkpoints in progress, collecting or finalizing, by id.
    pending: BTreeMap<u64, PendingCheckpoint>,
    /// When the last checkpoint was triggered (the interval counts from here).
    last_trigger: Option<Instant>,
    /// When the last checkpoint completed (min-pause counts from here).
    last_completion: Option<Instant>,
    /// Counted failures since the last completion (see [`FailureReason::counts_as_failure`]).
    consecutive_failures: u64,
    /// Completed checkpoints still retained, oldest first.
    retained: VecDeque<CheckpointMetadata>,
    /// Reference counts of the shared (incremental) files the retained checkpoints use.
    registry: SharedStateRegistry,
    /// One record per checkpoint ever triggered, for `weir checkpoints`.
    history: Vec<CheckpointRecord>,
    /// Where the running attempt's final checkpoint stands.
    final_checkpoint: FinalCheckpoint,
    /// Shared files no retained checkpoint references any more, not deleted yet: a checkpoint
    /// triggered before they became unreferenced (or the next one, whose snapshot may still
    /// race with the completion notice) may reference them. Each batch is deleted, minus what
    /// a checkpoint completed since registered again, once every checkpoint up to its id ended.
    deferred_deletes: Vec<(u64, Vec<String>)>,
    /// Checkpoint ids up to here belong to attempts that ended (or to a previous JobManager):
    /// no running task can reference what they released, so deferred deletions up to it are
    /// settled.
    attempt_floor: u64,
    /// Sweeps still owed for failed checkpoints, each sent at the next moment no checkpoint
    /// is pending (see the module header's "Cleanup").
    sweeps_due: u32,
    /// Where a `weir stop` stands; any but `Running` holds periodic checkpoints back.
    stop: StopPhase,
    /// The last stop-with-savepoint that completed (see [`SyncSavepoint`]).
    sync_savepoint: Option<SyncSavepoint>,
    /// The folder of the last savepoint that completed, for `weir list`.
    last_savepoint: Option<String>,
    /// Savepoints that failed while their `_metadata` was being written, by id: the answer of
    /// that write deletes their folder.
    void_savepoints: HashMap<u64, String>,
    /// When a stop last told the tasks to end their input (drain) or that its savepoint
    /// completed: repeated every [`STOP_REMINDER`] while tasks still run, since a lost call
    /// would otherwise leave the job waiting forever.
    stop_signal_at: Option<Instant>,
}

/// How often a stop repeats its signal to tasks that still run.
const STOP_REMINDER: Duration = Duration::from_secs(2);

/// Sweeps after a failed checkpoint: the first finds what its tasks uploaded, the second what
/// was still landing during the first.
const SWEEPS_AFTER_FAILURE: u32 = 2;

impl CheckpointCoordinator {
    /// A coordinator for `attempt` of the job, whose checkpoint ids continue at `next_id`.
    pub fn new(job_id: &str, graph: Arc<JobGraph>, settings: CoordinatorSettings, attempt: u32, next_id: u64) -> Self {
        Self {
            job_id: job_id.to_string(),
            graph,
            settings,
            attempt,
            next_id: next_id.max(1),
            pending: BTreeMap::new(),
            last_trigger: None,
            last_completion: None,
            consecutive_failures: 0,
            retained: VecDeque::new(),
            registry: SharedStateRegistry::new(),
            history: Vec::new(),
            final_checkpoint: FinalCheckpoint::NotTaken,
            deferred_deletes: Vec::new(),
            attempt_floor: 0,
            sweeps_due: 0,
            stop: StopPhase::Running,
            sync_savepoint: None,
            last_savepoint: None,
            void_savepoints: HashMap::new(),
            stop_signal_at: None,
        }
    }

    /// The newest completed checkpoint: the restore point of the next attempt (but see
    /// [`restore_point`](Self::restore_point)). Tests only: the job asks for the restore point.
    #[cfg(test)]
    pub fn latest(&self) -> Option<&CheckpointMetadata> {
        self.retained.back()
    }

    /// What the next attempt restores from: the newest completed checkpoint, or a newer
    /// stop-with-savepoint, whose completion committed the sinks' output. The location is
    /// `Some(folder)` for a savepoint, `None` for the job's checkpoint storage.
    pub fn restore_point(&self) -> Option<(Option<&str>, &CheckpointMetadata)> {
        let checkpoint = self.retained.back();
        match &self.sync_savepoint {
            Some(s) if checkpoint.is_none_or(|c| c.checkpoint_id < s.metadata.checkpoint_id) => {
                Some((Some(s.location.as_str()), &s.metadata))
            }
            _ => checkpoint.map(|c| (None, c)),
        }
    }

    /// The last completed stop-with-savepoint, while it is the restore point or was.
    pub fn sync_savepoint(&self) -> Option<&SyncSavepoint> {
        self.sync_savepoint.as_ref()
    }

    /// The folder of the last savepoint that completed.
    pub fn last_savepoint(&self) -> Option<&str> {
        self.last_savepoint.as_deref()
    }

    /// Every checkpoint of the job so far, oldest first.
    pub fn history(&self) -> &[CheckpointRecord] {
        &self.history
    }

    /// Ids of the checkpoints still pending (finalizing ones included).
    pub fn pending_ids(&self) -> Vec<u64> {
        self.pending.keys().copied().collect()
    }

    /// Whether periodic checkpoints are on.
    pub fn enabled(&self) -> bool {
        self.settings.interval.is_some()
    }

    /// The tick period the driver should use: a tenth of the interval, within 5..200 ms.
    pub fn tick_period(&self) -> Option<Duration> {
        self.settings.interval.map(|i| (i / 10).clamp(Duration::from_millis(5), Duration::from_millis(200)))
    }

    /// The transition function: applies `event` at `now`, returns what the driver must do.
    pub fn handle(&mut self, now: Now, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Tick(view) => self.tick(now, view, &mut out),
            Event::TriggerFailed { id, reason } => self.fail(now, id, FailureReason::TriggerFailed(reason), &mut out),
            Event::Acknowledged { attempt, id, subtask, states, stats } => {
                self.acknowledge(attempt, id, subtask, states, stats, now, &mut out)
            }
            Event::Declined { attempt, id, reason } => {
                if self.pending.get(&id).is_some_and(|p| p.attempt == attempt) {
                    self.fail(now, id, FailureReason::Declined(reason), &mut out);
                }
            }
            Event::MetadataWritten { id, result } => self.metadata_written(now, id, result, &mut out),
            Event::AttemptEnded { reason } => {
                for id in self.pending_ids() {
                    self.fail(now, id, FailureReason::AttemptEnded(reason.clone()), &mut out);
                }
                // A drain whose final savepoint had not started yet.
                self.end_stop_request(format!("the job's attempt ended before the stop completed ({reason})"), &mut out);
                self.attempt_ended(&mut out);
            }
            Event::AttemptStarted { attempt } => {
                for id in self.pending_ids() {
                    self.fail(now, id, FailureReason::AttemptEnded(format!("attempt {attempt} started")), &mut out);
                }
                self.attempt = attempt;
                self.final_checkpoint = FinalCheckpoint::NotTaken;
                // A drain whose sources ended in the failed attempt: the new one runs on.
                self.end_stop_request(format!("the job restarted (attempt {attempt}) before the stop completed"), &mut out);
                self.stop = StopPhase::Running;
            }
            Event::TriggerSavepoint { request, tasks } => self.trigger_savepoint(now, request, tasks, &mut out),
            Event::Recovered { checkpoints } => self.recovered(checkpoints, &mut out),
            Event::UpdateSettings(settings) => self.settings = settings,
            Event::TriggerNow(view) => {
                if self.enabled() && view.all_running() && !self.held_back() && self.final_checkpoint == FinalCheckpoint::NotTaken {
                    self.trigger_periodic(now, view.total, &mut out);
                }
            }
        }
        out
    }

    /// The attempt's tasks are gone: what its checkpoints released or left behind can go now,
    /// and a sweep (repeated) finds what no acknowledgement named.
    fn attempt_ended(&mut self, out: &mut Vec<Action>) {
        self.attempt_floor = self.attempt_floor.max(self.next_id);
        let owed = std::mem::take(&mut self.sweeps_due);
        self.delete_settled_files(out);
        // This sweep, repeated, replaces one the failures of the attempt's checkpoints asked for.
        out.retain(|a| !matches!(a, Action::CollectGarbage { repeat: false, .. }));
        if self.enabled() && (owed > 0 || !self.history.is_empty()) {
            out.push(Action::CollectGarbage { sweep: self.sweep(), repeat: true });
        }
    }

    /// Retains the checkpoints a recovered JobManager found (see [`Event::Recovered`]).
    fn recovered(&mut self, mut checkpoints: Vec<CheckpointMetadata>, out: &mut Vec<Action>) {
        checkpoints.sort_by_key(|m| m.checkpoint_id);
        for meta in checkpoints {
            let id = meta.checkpoint_id;
            if id >= self.next_id || meta.savepoint || self.retained.iter().any(|r| r.checkpoint_id == id) {
                continue;
            }
            self.registry.register_paths(id, meta.shared_paths());
            let at = self.retained.partition_point(|r| r.checkpoint_id < id);
            self.retained.insert(at, meta);
        }
        // The previous JobManager's tasks are not this JobManager's: nothing they run counts.
        self.attempt_floor = self.attempt_floor.max(self.next_id);
        self.discard_beyond_retention(out);
        self.delete_settled_files(out);
        out.push(Action::CollectGarbage { sweep: self.sweep(), repeat: true });
    }

    /// What a sweep now keeps: the retained checkpoints, every shared file the registry, a
    /// deferred deletion or a pending checkpoint's acknowledgement holds, and everything of the
    /// pending checkpoints and later ones.
    fn sweep(&self) -> Sweep {
        let below = self.pending.keys().next().copied().unwrap_or(self.next_id);
        let mut keep: std::collections::HashSet<String> = self.registry.referenced().cloned().collect();
        keep.extend(self.deferred_deletes.iter().flat_map(|(_, p)| p.iter().cloned()));
        for p in self.pending.values() {
            match &p.phase {
                Phase::Collecting { acks, .. } => {
                    for states in acks.values() {
                        keep.extend(states.iter().flat_map(|(_, s)| s.shared_paths()));
                    }
                }
                Phase::Finalizing(meta) => keep.extend(meta.shared_paths()),
            }
        }
        Sweep { job: self.job_id.clone(), below, retained: self.retained.iter().map(|m| m.checkpoint_id).collect(), keep }
    }

    /// Answers a stop still under way with `why` and ends it (a completed one stays `Stopping`).
    fn end_stop_request(&mut self, why: String, out: &mut Vec<Action>) {
        if let StopPhase::Requested(stop) = &self.stop {
            out.push(Action::SavepointDone { ticket: stop.ticket, result: Err(why) });
            self.stop = StopPhase::Running;
        }
    }

    /// The `--drain` stop under way, if any.
    fn drain_request(&self) -> Option<&SavepointRequest> {
        match &self.stop {
            StopPhase::Requested(s) if s.stop == Some(StopMode::Drain) => Some(s),
            _ => None,
        }
    }

    /// A savepoint (or stop-with-savepoint) request. Refused unless checkpointing is on, every
    /// task runs and no stop is under way. A savepoint starts at once, beside the pending
    /// checkpoints, which it does not count against `max-concurrent-checkpoints` and does not
    /// disturb; while it is pending no periodic checkpoint starts, so a newer (possibly
    /// unaligned) barrier never overtakes the savepoint's aligned one. `--drain` ends the
    /// sources' input first; its savepoint is the final checkpoint.
    fn trigger_savepoint(&mut self, now: Now, request: SavepointRequest, tasks: TaskView, out: &mut Vec<Action>) {
        let refuse = |why: &str, out: &mut Vec<Action>| {
            out.push(Action::SavepointDone { ticket: request.ticket, result: Err(why.to_string()) });
        };
        if !self.enabled() {
            return refuse("savepoints need checkpointing: set execution.checkpointing.interval", out);
        }
        if self.stop != StopPhase::Running {
            return refuse("the job is already stopping with a savepoint", out);
        }
        if !tasks.all_running() {
            return refuse("the job's tasks are not all running", out);
        }
        if request.stop.is_some() {
            self.stop = StopPhase::Requested(request.clone());
        }
        if request.stop == Some(StopMode::Drain) {
            self.stop_signal_at = Some(now.instant);
            out.push(Action::EndInput { attempt: self.attempt });
            return;
        }
        let id = self.start(CheckpointKind::Savepoint, tasks.total, now, Some(request.clone()));
        out.push(Action::Trigger {
            id,
            attempt: self.attempt,
            timestamp_ms: now.epoch_ms,
            kind: CheckpointKind::Savepoint,
            target: TriggerTarget::Sources,
            savepoint: Some(request),
        });
    }

    fn tick(&mut self, now: Now, view: TaskView, out: &mut Vec<Action>) {
        let expired: Vec<u64> =
            self.pending.iter().filter(|(_, p)| now.instant.duration_since(p.started) > self.settings.timeout).map(|(id, _)| *id).collect();
        for id in expired {
            self.fail(now, id, FailureReason::Expired, out);
        }
        if !self.enabled() {
            return;
        }
        self.remind_stop(now, view, out);
        if view.inputs_ended() && self.final_checkpoint == FinalCheckpoint::NotTaken {
            let collecting: Vec<u64> =
                self.pending.iter().filter(|(_, p)| matches!(p.phase, Phase::Collecting { .. })).map(|(id, _)| *id).collect();
            for id in collecting {
                self.fail(now, id, FailureReason::InputEnded, out);
            }
            // `weir stop --drain`: the final checkpoint is its savepoint.
            let savepoint = self.drain_request().cloned();
            let id = self.start(CheckpointKind::Final, view.finishing, now, savepoint.clone());
            self.final_checkpoint = FinalCheckpoint::InFlight(id);
            out.push(Action::Trigger {
                id,
                attempt: self.attempt,
                timestamp_ms: now.epoch_ms,
                kind: CheckpointKind::Final,
                target: TriggerTarget::AllTasks,
                savepoint,
            });
        } else if view.all_running() && self.due(now.instant) {
            self.trigger_periodic(now, view.total, out);
        }
    }

    /// Starts a checkpoint of the attempt's `total` subtasks at the sources.
    fn trigger_periodic(&mut self, now: Now, total: usize, out: &mut Vec<Action>) {
        let id = self.start(CheckpointKind::Periodic, total, now, None);
        out.push(Action::Trigger {
            id,
            attempt: self.attempt,
            timestamp_ms: now.epoch_ms,
            kind: CheckpointKind::Periodic,
            target: TriggerTarget::Sources,
            savepoint: None,
        });
    }

    /// A pending savepoint, or a stop under way, holds checkpoints back.
    fn held_back(&self) -> bool {
        self.stop != StopPhase::Running || self.pending.values().any(|p| p.kind == CheckpointKind::Savepoint)
    }

    /// Whether a periodic checkpoint is due: interval since the last trigger, min-pause since
    /// the last completion, and room under max-concurrent (finalizing checkpoints count).
    /// Repeats a stop's signal every [`STOP_REMINDER`] while tasks still run: `--drain`'s end of
    /// input until every input ended, and a completed stop savepoint's notice.
    fn remind_stop(&mut self, now: Now, view: TaskView, out: &mut Vec<Action>) {
        if view.running == 0 || !view.job_active || self.stop_signal_at.is_some_and(|t| now.instant < t + STOP_REMINDER) {
            return;
        }
        let draining = self.drain_request().is_some() && !view.inputs_ended();
        if draining {
            out.push(Action::EndInput { attempt: self.attempt });
        } else if let (StopPhase::Stopping, Some(s)) = (&self.stop, &self.sync_savepoint) {
            out.push(Action::RemindComplete { id: s.metadata.checkpoint_id, attempt: self.attempt });
        } else {
            return;
        }
        self.stop_signal_at = Some(now.instant);
    }

    /// A pending savepoint, or a stop under way, holds periodic checkpoints back (savepoints do
    /// not count against max-concurrent).
    fn due(&self, now: Instant) -> bool {
        let Some(interval) = self.settings.interval else { return false };
        if self.held_back() {
            return false;
        }
        if self.pending.values().filter(|p| p.kind != CheckpointKind::Savepoint).count() >= self.settings.max_concurrent {
            return false;
        }
        if self.last_completion.is_some_and(|t| now < t + self.settings.min_pause) {
            return false;
        }
        self.last_trigger.is_none_or(|t| now >= t + interval)
    }

    /// Starts checkpoint `id` (the next one) of `total` subtasks, a savepoint's with `savepoint`.
    fn start(&mut self, kind: CheckpointKind, total: usize, now: Now, savepoint: Option<SavepointRequest>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.last_trigger = Some(now.instant);
        let phase = Phase::Collecting { acks: HashMap::new(), total };
        let is_savepoint = savepoint.is_some();
        self.pending.insert(id, PendingCheckpoint { kind, savepoint, attempt: self.attempt, started: now.instant, phase });
        self.history.push(CheckpointRecord {
            id,
            status: CheckpointStatus::InProgress,
            trigger_ms: now.epoch_ms,
            duration_ms: 0,
            size: 0,
            alignment_ms: 0,
            failure: String::new(),
            acknowledged: 0,
            total: total as u32,
            kind: SnapshotKind::Aligned,
            inflight_bytes: 0,
            savepoint: is_savepoint,
            path: String::new(),
            sync_ms: 0,
            async_ms: 0,
        });
        id
    }

    fn record(&mut self, id: u64) -> Option<&mut CheckpointRecord> {
        self.history.iter_mut().rev().find(|r| r.id == id)
    }

    #[allow(clippy::too_many_arguments)]
    fn acknowledge(
        &mut self,
        attempt: u32,
        id: u64,
        subtask: SubtaskKey,
        states: Vec<(String, SubtaskState)>,
        stats: AckStats,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some(p) = self.pending.get_mut(&id) else { return };
        if p.attempt != attempt {
            return;
        }
        let Phase::Collecting { acks, total } = &mut p.phase else { return };
        if acks.contains_key(&subtask) {
            return;
        }
        acks.insert(subtask, states);
        let count = acks.len();
        let all_acknowledged = (count == *total).then(|| std::mem::take(acks));
        if let Some(r) = self.record(id) {
            r.acknowledged = count as u32;
            r.size += stats.size;
            r.alignment_ms = r.alignment_ms.max(stats.alignment_ms);
            r.inflight_bytes += stats.inflight_bytes;
            r.sync_ms = r.sync_ms.max(stats.sync_ms);
            r.async_ms = r.async_ms.max(stats.async_ms);
            // Aligned < unaligned < timed out to unaligned.
            r.kind = r.kind.max(stats.kind);
        }
        if let Some(acks) = all_acknowledged {
            let mut metadata = self.metadata(id, &acks, now.epoch_ms);
            let mut savepoint = None;
            if let Some(p) = self.pending.get_mut(&id) {
                savepoint = p.savepoint.as_ref().map(|s| s.location.clone());
                metadata.savepoint = savepoint.is_some();
                p.phase = Phase::Finalizing(metadata.clone());
            }
            out.push(Action::WriteMetadata { metadata, savepoint });
        }
    }

    /// The `_metadata` of checkpoint `id`: per operator (by uid), the state of every subtask.
    fn metadata(&self, id: u64, acks: &HashMap<SubtaskKey, Vec<(String, SubtaskState)>>, timestamp_ms: i64) -> CheckpointMetadata {
        let mut operators = Vec::new();
        for v in &self.graph.vertices {
            for op in &v.operators {
                let subtasks: Vec<SubtaskState> = (0..v.parallelism)
                    .map(|i| {
                        acks.get(&(v.id, i))
                            .and_then(|s| s.iter().find(|(uid, _)| uid == &op.uid))
                            .map(|(_, s)| s.clone())
                            .unwrap_or_default()
                    })
                    .collect();
                if subtasks
                    .iter()
                    .any(|s| !s.keyed.is_empty() || s.operator.is_some() || s.input_channels.is_some() || s.output_channels.is_some())
                {
                    operators.push(OperatorState {
                        uid: op.uid.clone(),
                        parallelism: v.parallelism,
                        max_parallelism: self.graph.max_parallelism,
                        subtasks,
                    });
                }
            }
        }
        CheckpointMetadata { job_id: self.job_id.clone(), checkpoint_id: id, timestamp_ms, savepoint: false, operators }
    }

    fn metadata_written(&mut self, now: Now, id: u64, result: Result<(), String>, out: &mut Vec<Action>) {
        let finalizing = self.pending.get(&id).map(|p| matches!(p.phase, Phase::Finalizing(_)));
        let discard = |c: &mut Self, id: u64| match c.void_savepoints.remove(&id) {
            Some(location) => Action::DiscardSavepoint { location },
            None => Action::Discard { id },
        };
        match (finalizing, result) {
            // Void meanwhile (subsumed, expired, its attempt ended): whatever was written goes.
            (None, _) => out.push(discard(self, id)),
            // Only a finalizing checkpoint has a write in flight.
            (Some(false), _) => {}
            (Some(true), Err(why)) => {
                self.fail(now, id, FailureReason::MetadataWriteFailed(why), out);
                out.push(discard(self, id));
            }
            (Some(true), Ok(())) => self.complete(now, id, out),
        }
    }

    fn complete(&mut self, now: Now, id: u64, out: &mut Vec<Action>) {
        let Some(p) = self.pending.remove(&id) else { return };
        let Phase::Finalizing(meta) = p.phase else { return };
        if p.kind == CheckpointKind::Final {
            self.final_checkpoint = FinalCheckpoint::Completed(id);
        }
        if let Some(request) = p.savepoint {
            return self.complete_savepoint(now, id, p.attempt, request, meta, out);
        }
        self.consecutive_failures = 0;
        self.last_completion = Some(now.instant);
        let size = meta.size();
        if let Some(r) = self.record(id) {
            r.status = CheckpointStatus::Completed;
            r.duration_ms = (now.epoch_ms - r.trigger_ms).max(0) as u64;
            r.size = size;
        }
        self.registry.register_paths(id, meta.shared_paths());
        self.retained.push_back(meta);
        out.push(Action::NotifyComplete { id, attempt: p.attempt });
        // A savepoint is not subsumed: it is not a restore point, and its user waits for it.
        let subsumed: Vec<u64> = self.pending.range(..id).filter(|(_, p)| p.kind != CheckpointKind::Savepoint).map(|(k, _)| *k).collect();
        for s in subsumed {
            self.fail(now, s, FailureReason::Subsumed { by: id }, out);
        }
        self.discard_beyond_retention(out);
        self.delete_settled_files(out);
    }

    /// Discards the oldest retained checkpoints beyond `num-retained`; the shared files only
    /// they referenced are deferred (see `deferred_deletes`).
    fn discard_beyond_retention(&mut self, out: &mut Vec<Action>) {
        while self.retained.len() > self.settings.num_retained {
            let Some(old) = self.retained.pop_front() else { break };
            let unreferenced = self.registry.release(old.checkpoint_id);
            if !unreferenced.is_empty() {
                // Up to the next checkpoint to be triggered: it too may have been snapshotted
                // before its task heard that these files were superseded.
                self.deferred_deletes.push((self.next_id, unreferenced));
            }
            out.push(Action::Discard { id: old.checkpoint_id });
        }
    }

    /// A savepoint's `_metadata` is written. An intermediate savepoint only answers its caller:
    /// it is not retained, subsumes nothing, and the tasks are not told, so sinks commit
    /// nothing for it (as in Flink since 1.15; the next checkpoint commits those rows) and
    /// failover never restores it. A stop-with-savepoint is different: the tasks are told (the
    /// sinks commit exactly up to it, and the stopped sources end their input) and it becomes
    /// the restore point until a newer checkpoint completes.
    fn complete_savepoint(
        &mut self,
        now: Now,
        id: u64,
        attempt: u32,
        request: SavepointRequest,
        meta: CheckpointMetadata,
        out: &mut Vec<Action>,
    ) {
        let size = meta.size();
        if let Some(r) = self.record(id) {
            r.status = CheckpointStatus::Completed;
            r.duration_ms = (now.epoch_ms - r.trigger_ms).max(0) as u64;
            r.size = size;
            r.path = request.location.clone();
        }
        self.last_savepoint = Some(request.location.clone());
        out.push(Action::SavepointDone { ticket: request.ticket, result: Ok((id, request.location.clone())) });
        if request.stop.is_some() {
            self.stop = StopPhase::Stopping;
            self.stop_signal_at = Some(now.instant);
            self.sync_savepoint = Some(SyncSavepoint { location: request.location, metadata: meta });
            out.push(Action::NotifyComplete { id, attempt });
            // Like a completed checkpoint, it subsumes the older ones: an older checkpoint never
            // completes over a newer restore point.
            let subsumed: Vec<u64> =
                self.pending.range(..id).filter(|(_, p)| p.kind != CheckpointKind::Savepoint).map(|(k, _)| *k).collect();
            for s in subsumed {
                self.fail(now, s, FailureReason::Subsumed { by: id }, out);
            }
        }
        self.delete_settled_files(out);
    }

    /// Deletes the deferred shared files whose checkpoints have all ended (see
    /// `deferred_deletes`), except those a checkpoint completed since references again; then,
    /// if a sweep is owed and no checkpoint is pending, asks for it.
    fn delete_settled_files(&mut self, out: &mut Vec<Action>) {
        let lowest_open = self.pending.keys().next().copied().unwrap_or(self.next_id);
        let floor = self.attempt_floor;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.deferred_deletes).into_iter().partition(|(upto, _)| *upto < lowest_open || *upto <= floor);
        // A path that became unreferenced again later waits for that later batch.
        let later: std::collections::HashSet<&String> = waiting.iter().flat_map(|(_, p)| p).collect();
        let paths: Vec<String> =
            ready.into_iter().flat_map(|(_, p)| p).filter(|p| !self.registry.is_referenced(p) && !later.contains(p)).collect();
        self.deferred_deletes = waiting;
        if !paths.is_empty() {
            out.push(Action::DeleteSharedFiles(paths));
        }
        if self.sweeps_due > 0 && self.pending.is_empty() {
            self.sweeps_due -= 1;
            out.push(Action::CollectGarbage { sweep: self.sweep(), repeat: false });
        }
    }

    /// Fails pending checkpoint `id` for `reason`.
    ///
    /// A failed savepoint answers its caller, deletes its folder, and counts as no checkpoint
    /// failure (it says nothing of the job's periodic checkpoints). A failed stop ends the stop:
    /// the sources go on.
    fn fail(&mut self, now: Now, id: u64, reason: FailureReason, out: &mut Vec<Action>) {
        let Some(p) = self.pending.remove(&id) else { return };
        if let Some(request) = &p.savepoint {
            if matches!(&self.stop, StopPhase::Requested(s) if s.ticket == request.ticket) {
                self.stop = StopPhase::Running;
            }
            out.push(Action::SavepointDone { ticket: request.ticket, result: Err(reason.to_string()) });
        }
        if self.final_checkpoint == FinalCheckpoint::InFlight(id) {
            self.final_checkpoint = FinalCheckpoint::NotTaken;
        }
        let message = reason.to_string();
        if let Some(r) = self.record(id) {
            r.status = CheckpointStatus::CheckpointFailed;
            r.failure = message.clone();
            r.duration_ms = now.instant.duration_since(p.started).as_millis() as u64;
        }
        // The tasks of an ended attempt are being canceled: there is nobody to tell.
        if !matches!(reason, FailureReason::AttemptEnded(_)) {
            out.push(Action::Abort { id, attempt: p.attempt, reason: reason.clone() });
        }
        // A finalizing checkpoint's `_metadata` may still be written: the answer of that write
        // discards it. Otherwise whatever the tasks uploaded goes now.
        match (&p.phase, &p.savepoint) {
            (Phase::Collecting { .. }, Some(s)) => out.push(Action::DiscardSavepoint { location: s.location.clone() }),
            (Phase::Collecting { .. }, None) => out.push(Action::Discard { id }),
            // The answer of the write in flight discards the folder.
            (Phase::Finalizing(_), Some(s)) => {
                self.void_savepoints.insert(id, s.location.clone());
            }
            (Phase::Finalizing(_), None) => {}
        }
        if p.savepoint.is_none() {
            // Its tasks may have uploaded shared files no acknowledgement named.
            self.sweeps_due = SWEEPS_AFTER_FAILURE;
        }
        self.delete_settled_files(out);
        if reason.counts_as_failure() && p.savepoint.is_none() {
            self.consecutive_failures += 1;
            if self.consecutive_failures > self.settings.tolerable_failures {
                out.push(Action::FailJob(format!(
                    "exceeded execution.checkpointing.tolerable-failed-checkpoints; last failure of checkpoint {id}: {message}"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const JOB: &str = "name: t\nparallelism: 2\npipeline:\n  - source: datagen\n    number-of-rows: 10\n    fields:\n      - {name: key, kind: sequence, start: 0}\n  - key_by: key\n  - count: {}\n  - sink: blackhole\n";
    const MS: Duration = Duration::from_millis(1);

    fn settings() -> CoordinatorSettings {
        CoordinatorSettings {
            interval: Some(100 * MS),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            timeout: 10_000 * MS,
            tolerable_failures: 0,
            num_retained: 1,
        }
    }

    /// The actions without the cleanup sweeps.
    fn sans_sweeps(actions: &[Action]) -> Vec<Action> {
        actions.iter().filter(|a| !matches!(a, Action::CollectGarbage { .. })).cloned().collect()
    }

    fn graph() -> Arc<JobGraph> {
        let (graph, _) = weir_core::job::compile_job(JOB, "test", &weir_core::Config::new(), &weir_core::Config::new()).unwrap();
        Arc::new(graph)
    }

    /// A coordinator and a clock that only moves when told to.
    struct Harness {
        c: CheckpointCoordinator,
        t0: Instant,
        elapsed: Duration,
        total: usize,
    }

    impl Harness {
        fn new(settings: CoordinatorSettings) -> Self {
            let g = graph();
            let total = g.vertices.iter().map(|v| v.parallelism as usize).sum();
            Self { c: CheckpointCoordinator::new("job", g, settings, 0, 1), t0: Instant::now(), elapsed: Duration::ZERO, total }
        }

        fn now(&self) -> Now {
            Now { instant: self.t0 + self.elapsed, epoch_ms: 1_000_000 + self.elapsed.as_millis() as i64 }
        }

        fn at(&mut self, ms: u64) -> &mut Self {
            self.elapsed = Duration::from_millis(ms);
            self
        }

        fn handle(&mut self, e: Event) -> Vec<Action> {
            let now = self.now();
            self.c.handle(now, e)
        }

        fn running(&self) -> TaskView {
            TaskView { job_active: true, total: self.total, running: self.total, finishing: 0, finished: 0 }
        }

        fn tick(&mut self) -> Vec<Action> {
            let view = self.running();
            self.handle(Event::Tick(view))
        }

        /// Every subtask acknowledges `id`; returns the actions of the last acknowledgement.
        fn ack_all(&mut self, id: u64) -> Vec<Action> {
            let mut last = Vec::new();
            for i in 0..self.total {
                last = self.handle(ack(0, id, i as u32));
            }
            last
        }
    }

    fn ack(attempt: u32, id: u64, subtask: u32) -> Event {
        Event::Acknowledged {
            attempt,
            id,
            subtask: (subtask, 0),
            states: Vec::new(),
            stats: AckStats { alignment_ms: 0, size: 10, inflight_bytes: 0, kind: SnapshotKind::Aligned, sync_ms: 0, async_ms: 0 },
        }
    }

    fn written(id: u64) -> Event {
        Event::MetadataWritten { id, result: Ok(()) }
    }

    fn triggered(actions: &[Action]) -> Vec<u64> {
        actions.iter().filter_map(|a| if let Action::Trigger { id, .. } = a { Some(*id) } else { None }).collect()
    }

    fn fails_job(actions: &[Action]) -> bool {
        actions.iter().any(|a| matches!(a, Action::FailJob(_)))
    }

    #[test]
    fn triggers_at_the_interval_only_while_every_task_runs() {
        let mut h = Harness::new(settings());
        let starting = TaskView { job_active: true, total: h.total, running: h.total - 1, finishing: 0, finished: 0 };
        assert!(h.handle(Event::Tick(starting)).is_empty());
        let actions = h.tick();
        assert_eq!(
            actions,
            [Action::Trigger {
                id: 1,
                attempt: 0,
                timestamp_ms: 1_000_000,
                kind: CheckpointKind::Periodic,
                target: TriggerTarget::Sources,
                savepoint: None,
            }]
        );
        h.ack_all(1);
        h.handle(written(1));
        assert!(h.at(50).tick().is_empty(), "the interval counts from the last trigger");
        assert_eq!(triggered(&h.at(100).tick()), [2]);
    }

    #[test]
    fn completes_after_every_ack_and_the_metadata_write() {
        let mut h = Harness::new(settings());
        h.tick();
        for i in 0..h.total - 1 {
            assert!(h.handle(ack(0, 1, i as u32)).is_empty());
        }
        // A duplicate acknowledgement counts once.
        assert!(h.handle(ack(0, 1, 0)).is_empty());
        let last = h.handle(ack(0, 1, h.total as u32 - 1));
        assert!(matches!(&last[..], [Action::WriteMetadata { metadata: m, savepoint: None }] if m.checkpoint_id == 1 && m.job_id == "job"));
        assert!(h.c.latest().is_none(), "not complete before _metadata is written");
        assert_eq!(h.handle(written(1)), [Action::NotifyComplete { id: 1, attempt: 0 }]);
        assert_eq!(h.c.latest().map(|m| m.checkpoint_id), Some(1));
        let record = &h.c.history()[0];
        assert_eq!((record.status, record.acknowledged, record.size), (CheckpointStatus::Completed, h.total as u32, 0));
    }

    /// The completion race of issue 7: a checkpoint whose `_metadata` is being written still
    /// counts against max-concurrent, so n+1 cannot be triggered (and complete first).
    #[test]
    fn a_metadata_write_in_flight_counts_as_pending() {
        let mut h = Harness::new(settings());
        h.tick();
        h.ack_all(1);
        assert!(h.at(500).tick().is_empty(), "checkpoint 1 is still finalizing");
        assert_eq!(h.c.pending_ids(), [1]);
        h.handle(written(1));
        assert_eq!(triggered(&h.at(600).tick()), [2]);
    }

    #[test]
    fn an_older_checkpoint_never_completes_over_a_newer_one() {
        let mut h = Harness::new(CoordinatorSettings { max_concurrent: 2, ..settings() });
        h.tick();
        assert_eq!(triggered(&h.at(100).tick()), [2]);
        h.ack_all(2);
        h.ack_all(1);
        let done = h.handle(written(2));
        assert!(done.contains(&Action::NotifyComplete { id: 2, attempt: 0 }));
        assert!(done.iter().any(|a| matches!(a, Action::Abort { id: 1, reason: FailureReason::Subsumed { by: 2 }, .. })));
        // 1's write ends after 2 completed: 1 is discarded, never filed.
        assert_eq!(h.handle(written(1)), [Action::Discard { id: 1 }]);
        assert_eq!(h.c.latest().map(|m| m.checkpoint_id), Some(2));
        assert!(!fails_job(&done), "a subsumed checkpoint is not a failure");
    }

    #[test]
    fn a_checkpoint_on_demand_ignores_the_interval_and_new_settings_apply_from_the_next_tick() {
        let mut h = Harness::new(CoordinatorSettings { interval: Some(3_600_000 * MS), ..settings() });
        assert_eq!(triggered(&h.tick()), [1], "the first checkpoint comes at once");
        h.ack_all(1);
        h.handle(written(1));
        assert!(h.at(1000).tick().is_empty(), "the next one is an hour away");
        let view = h.running();
        assert_eq!(triggered(&h.at(1100).handle(Event::TriggerNow(view))), [2], "on demand, whatever the interval");
        h.ack_all(2);
        h.handle(written(2));
        h.handle(Event::UpdateSettings(CoordinatorSettings { interval: Some(200 * MS), ..settings() }));
        assert!(h.at(1200).tick().is_empty(), "200 ms after the last trigger");
        assert_eq!(triggered(&h.at(1300).tick()), [3]);
    }

    #[test]
    fn min_pause_counts_from_the_last_completion() {
        let mut h = Harness::new(CoordinatorSettings { min_pause: 300 * MS, ..settings() });
        h.tick();
        h.at(250).ack_all(1);
        h.handle(written(1));
        assert!(h.at(400).tick().is_empty(), "250 + 300 ms not reached");
        assert_eq!(triggered(&h.at(550).tick()), [2]);
    }

    #[test]
    fn failures_in_a_row_beyond_the_tolerance_fail_the_job() {
        let mut h = Harness::new(CoordinatorSettings { tolerable_failures: 1, timeout: 1000 * MS, ..settings() });
        h.tick();
        let first = h.at(1001).tick();
        assert!(first.iter().any(|a| matches!(a, Action::Abort { id: 1, reason: FailureReason::Expired, .. })));
        assert!(first.contains(&Action::Discard { id: 1 }));
        assert!(!fails_job(&first), "one failure is tolerated");
        assert_eq!(triggered(&first), [2], "the next one is triggered at once");
        let second = h.handle(Event::Declined { attempt: 0, id: 2, reason: "disk full".into() });
        assert!(fails_job(&second));
        assert!(matches!(second.last(), Some(Action::FailJob(m)) if m.contains("tolerable-failed-checkpoints") && m.contains("disk full")));
    }

    #[test]
    fn a_completion_resets_the_failure_count() {
        let mut h = Harness::new(CoordinatorSettings { tolerable_failures: 1, ..settings() });
        h.tick();
        h.handle(Event::Declined { attempt: 0, id: 1, reason: "x".into() });
        h.at(100).tick();
        h.ack_all(2);
        h.handle(written(2));
        h.at(200).tick();
        assert!(!fails_job(&h.handle(Event::Declined { attempt: 0, id: 3, reason: "y".into() })));
    }

    #[test]
    fn a_failed_trigger_aborts_the_checkpoint_at_once() {
        let mut h = Harness::new(settings());
        h.tick();
        let actions = h.handle(Event::TriggerFailed { id: 1, reason: "connection refused".into() });
        assert!(!fails_job(&actions), "the TaskManager's loss fails the job, not the checkpoint");
        assert!(actions.iter().any(|a| matches!(a, Action::Abort { id: 1, reason: FailureReason::TriggerFailed(_), .. })));
        assert!(h.c.pending_ids().is_empty());
        assert!(h.c.history()[0].failure.contains("connection refused"));
    }

    #[test]
    fn a_failed_metadata_write_fails_the_checkpoint() {
        let mut h = Harness::new(CoordinatorSettings { tolerable_failures: 5, ..settings() });
        h.tick();
        h.ack_all(1);
        let actions = h.handle(Event::MetadataWritten { id: 1, result: Err("S3 unreachable".into()) });
        assert!(actions.iter().any(|a| matches!(a, Action::Abort { id: 1, reason: FailureReason::MetadataWriteFailed(_), .. })));
        assert!(actions.contains(&Action::Discard { id: 1 }));
        assert!(h.c.latest().is_none() && h.c.pending_ids().is_empty());
    }

    #[test]
    fn acknowledgements_of_another_attempt_are_ignored() {
        let mut h = Harness::new(settings());
        h.tick();
        for i in 0..h.total {
            assert!(h.handle(ack(7, 1, i as u32)).is_empty());
        }
        assert!(h.handle(Event::Declined { attempt: 7, id: 1, reason: "old".into() }).is_empty());
        assert_eq!(h.c.pending_ids(), [1]);
    }

    #[test]
    fn a_restart_in_the_middle_of_a_checkpoint_voids_it() {
        let mut h = Harness::new(CoordinatorSettings { max_concurrent: 2, ..settings() });
        h.tick();
        h.at(100).tick();
        h.ack_all(1); // 1 finalizing, 2 collecting
        let ended = h.handle(Event::AttemptEnded { reason: "job restarting".into() });
        assert!(!fails_job(&ended), "an ended attempt is not a checkpoint failure");
        assert!(!ended.iter().any(|a| matches!(a, Action::Abort { .. })), "nobody to tell");
        assert_eq!(sans_sweeps(&ended), [Action::Discard { id: 2 }]);
        let sweeps: Vec<&Action> = ended.iter().filter(|a| matches!(a, Action::CollectGarbage { .. })).collect();
        assert!(matches!(sweeps[..], [Action::CollectGarbage { repeat: true, .. }]), "one sweep, repeated: {sweeps:?}");
        // 1's _metadata lands after the restart chose its restore point: discarded, not filed.
        assert_eq!(h.handle(written(1)), [Action::Discard { id: 1 }]);
        assert!(h.c.latest().is_none());
        h.handle(Event::AttemptStarted { attempt: 1 });
        let next = h.at(200).tick();
        assert!(matches!(&next[..], [Action::Trigger { id: 3, attempt: 1, .. }]), "ids keep growing: {next:?}");
    }

    #[test]
    fn retained_checkpoints_beyond_num_retained_are_discarded() {
        let mut h = Harness::new(CoordinatorSettings { num_retained: 2, ..settings() });
        for (n, at) in [(1, 0), (2, 100), (3, 200)] {
            h.at(at).tick();
            h.ack_all(n);
            let done = h.handle(written(n));
            assert_eq!(done.contains(&Action::Discard { id: 1 }), n == 3, "checkpoint {n}: {done:?}");
        }
        assert_eq!(h.c.latest().map(|m| m.checkpoint_id), Some(3));
    }

    #[test]
    fn the_final_checkpoint_replaces_periodic_ones_and_is_taken_once() {
        let mut h = Harness::new(CoordinatorSettings { max_concurrent: 2, tolerable_failures: 5, ..settings() });
        h.tick();
        h.ack_all(1); // finalizing: may still complete
        h.at(100).tick(); // 2 collecting: can no longer complete
        let ended = TaskView { job_active: true, total: h.total, running: 0, finishing: h.total - 1, finished: 1 };
        let actions = h.at(150).handle(Event::Tick(ended));
        assert!(actions.iter().any(|a| matches!(a, Action::Abort { id: 2, reason: FailureReason::InputEnded, .. })));
        assert!(actions.contains(&Action::Trigger {
            id: 3,
            attempt: 0,
            timestamp_ms: 1_000_150,
            kind: CheckpointKind::Final,
            target: TriggerTarget::AllTasks,
            savepoint: None,
        }));
        assert!(!fails_job(&actions));
        assert!(h.at(300).handle(Event::Tick(ended)).is_empty(), "triggered once");
        // It fails: triggered again at the next tick.
        h.handle(Event::Declined { attempt: 0, id: 3, reason: "x".into() });
        assert_eq!(triggered(&h.at(310).handle(Event::Tick(ended))), [4]);
        for i in 0..h.total - 1 {
            h.handle(ack(0, 4, i as u32));
        }
        // Checkpoint 1 was still finalizing: the newer final checkpoint subsumes it.
        assert_eq!(
            sans_sweeps(&h.handle(written(4))),
            [Action::NotifyComplete { id: 4, attempt: 0 }, Action::Abort { id: 1, attempt: 0, reason: FailureReason::Subsumed { by: 4 } }]
        );
        assert!(h.at(400).handle(Event::Tick(ended)).is_empty(), "completed: never again in this attempt");
        // 1's late write is older than the completed 4: discarded, never filed.
        assert_eq!(h.handle(written(1)), [Action::Discard { id: 1 }]);
        assert_eq!(h.c.latest().map(|m| m.checkpoint_id), Some(4));
    }

    #[test]
    fn nothing_is_triggered_with_checkpointing_off() {
        let mut h = Harness::new(CoordinatorSettings { interval: None, ..settings() });
        assert!(h.tick().is_empty());
        assert!(h.c.tick_period().is_none());
    }

    /// One step of the property test's random schedule.
    #[derive(Debug, Clone)]
    enum Step {
        Tick(u64),
        Ack { pick: usize, subtask: u32 },
        Decline(usize),
        Write { pick: usize, ok: bool },
        Restart,
        Savepoint(Option<StopMode>),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u64..250).prop_map(Step::Tick),
            6 => (any::<usize>(), 0u32..4).prop_map(|(pick, subtask)| Step::Ack { pick, subtask }),
            1 => any::<usize>().prop_map(Step::Decline),
            3 => (any::<usize>(), prop::bool::weighted(0.85)).prop_map(|(pick, ok)| Step::Write { pick, ok }),
            1 => Just(Step::Restart),
            1 => prop_oneof![Just(None), Just(Some(StopMode::Suspend)), Just(Some(StopMode::Drain))].prop_map(Step::Savepoint),
        ]
    }

    fn savepoint(ticket: u64, stop: Option<StopMode>) -> SavepointRequest {
        SavepointRequest { ticket, location: format!("memory://sp-{ticket}"), native: false, stop }
    }

    fn outcome(actions: &[Action]) -> Option<Result<(u64, String), String>> {
        actions.iter().find_map(|a| if let Action::SavepointDone { result, .. } = a { Some(result.clone()) } else { None })
    }

    fn notified(actions: &[Action]) -> Vec<u64> {
        actions.iter().filter_map(|a| if let Action::NotifyComplete { id, .. } = a { Some(*id) } else { None }).collect()
    }

    #[test]
    fn a_savepoint_runs_beside_checkpoints_and_holds_new_ones_back() {
        let mut h = Harness::new(settings());
        assert_eq!(triggered(&h.tick()), [1]);
        let view = h.running();
        let actions = h.at(10).handle(Event::TriggerSavepoint { request: savepoint(7, None), tasks: view });
        assert!(
            matches!(&actions[..], [Action::Trigger { id: 2, kind: CheckpointKind::Savepoint, target: TriggerTarget::Sources, savepoint: Some(s), .. }] if s.ticket == 7),
            "started at once, beside checkpoint 1 and above max-concurrent 1: {actions:?}"
        );
        assert!(triggered(&h.at(300).tick()).is_empty(), "no periodic checkpoint while the savepoint is pending");
        // Checkpoint 1 completes and subsumes nothing: the newer savepoint is not its to subsume.
        h.ack_all(1);
        let done = h.handle(written(1));
        assert_eq!(notified(&done), [1]);
        assert!(!done.iter().any(|a| matches!(a, Action::Abort { .. })), "{done:?}");
        // The savepoint's metadata goes to its own folder.
        let last = h.ack_all(2);
        assert!(
            matches!(&last[..], [Action::WriteMetadata { metadata, savepoint: Some(l) }] if metadata.savepoint && l == "memory://sp-7"),
            "{last:?}"
        );
        let done = h.at(320).handle(written(2));
        assert_eq!(outcome(&done), Some(Ok((2, "memory://sp-7".to_string()))));
        assert!(notified(&done).is_empty(), "an intermediate savepoint commits nothing");
        assert!(!done.iter().any(|a| matches!(a, Action::Discard { .. })), "no retained checkpoint is discarded for it: {done:?}");
        assert_eq!(h.c.latest().map(|m| m.checkpoint_id), Some(1), "a savepoint is no failover restore point");
        assert_eq!(h.c.last_savepoint(), Some("memory://sp-7"));
        let record = h.c.history().iter().find(|r| r.id == 2).unwrap();
        assert!(record.savepoint && record.path == "memory://sp-7" && record.status == CheckpointStatus::Completed);
        assert_eq!(triggered(&h.at(400).tick()), [3], "periodic checkpoints go on");
    }

    #[test]
    fn a_failed_savepoint_answers_deletes_its_folder_and_fails_no_job() {
        let mut h = Harness::new(settings()); // tolerable failures: 0
        let view = h.running();
        h.handle(Event::TriggerSavepoint { request: savepoint(1, None), tasks: view });
        let actions = h.handle(Event::Declined { attempt: 0, id: 1, reason: "disk full".into() });
        assert!(matches!(outcome(&actions), Some(Err(why)) if why.contains("disk full")), "{actions:?}");
        assert!(actions.contains(&Action::DiscardSavepoint { location: "memory://sp-1".into() }));
        assert!(actions.iter().any(|a| matches!(a, Action::Abort { id: 1, .. })));
        assert!(!fails_job(&actions));
        // Failed while its metadata was written: the answer of that write deletes the folder.
        h.handle(Event::TriggerSavepoint { request: savepoint(2, None), tasks: view });
        h.ack_all(2);
        h.handle(Event::AttemptEnded { reason: "job restarting".into() });
        let late = h.handle(written(2));
        assert_eq!(late, [Action::DiscardSavepoint { location: "memory://sp-2".into() }]);
    }

    #[test]
    fn savepoints_are_refused_unless_every_task_runs_and_no_stop_is_under_way() {
        let mut h = Harness::new(settings());
        let starting = TaskView { job_active: true, total: h.total, running: 1, finishing: 0, finished: 0 };
        let actions = h.handle(Event::TriggerSavepoint { request: savepoint(1, None), tasks: starting });
        assert!(matches!(outcome(&actions), Some(Err(why)) if why.contains("not all running")), "{actions:?}");
        let view = h.running();
        h.handle(Event::TriggerSavepoint { request: savepoint(2, Some(StopMode::Suspend)), tasks: view });
        let actions = h.handle(Event::TriggerSavepoint { request: savepoint(3, None), tasks: view });
        assert!(matches!(outcome(&actions), Some(Err(why)) if why.contains("already stopping")), "{actions:?}");
        let mut off = Harness::new(CoordinatorSettings { interval: None, ..settings() });
        let actions = off.handle(Event::TriggerSavepoint { request: savepoint(4, None), tasks: view });
        assert!(matches!(outcome(&actions), Some(Err(why)) if why.contains("execution.checkpointing.interval")), "{actions:?}");
    }

    #[test]
    fn a_stop_savepoint_commits_and_is_the_restore_point_until_a_newer_checkpoint() {
        let mut h = Harness::new(settings());
        h.tick();
        h.ack_all(1);
        h.handle(written(1));
        let view = h.running();
        let actions = h.at(50).handle(Event::TriggerSavepoint { request: savepoint(9, Some(StopMode::Suspend)), tasks: view });
        assert!(matches!(&actions[..], [Action::Trigger { id: 2, savepoint: Some(s), .. }] if s.stop == Some(StopMode::Suspend)));
        h.ack_all(2);
        let done = h.at(60).handle(written(2));
        assert_eq!(notified(&done), [2], "the sinks commit exactly up to the stop savepoint");
        assert_eq!(outcome(&done), Some(Ok((2, "memory://sp-9".to_string()))));
        let (location, meta) = h.c.restore_point().unwrap();
        assert_eq!((location, meta.checkpoint_id), (Some("memory://sp-9"), 2));
        assert!(triggered(&h.at(500).tick()).is_empty(), "no periodic checkpoint once stopping");
        // A stopped source that missed the notice would wait forever: it is repeated while tasks run.
        assert_eq!(h.at(2_100).tick(), [Action::RemindComplete { id: 2, attempt: 0 }]);
        assert!(h.at(2_200).tick().is_empty());
        // The stopped sources end their input; the final checkpoint follows and takes over.
        let ended = TaskView { job_active: true, total: h.total, running: 0, finishing: h.total, finished: 0 };
        assert_eq!(triggered(&h.at(510).handle(Event::Tick(ended))), [3]);
        h.ack_all(3);
        h.handle(written(3));
        let (location, meta) = h.c.restore_point().unwrap();
        assert_eq!((location, meta.checkpoint_id), (None, 3));
    }

    #[test]
    fn a_drain_whose_attempt_ends_is_answered() {
        let mut h = Harness::new(settings());
        let view = h.running();
        h.handle(Event::TriggerSavepoint { request: savepoint(4, Some(StopMode::Drain)), tasks: view });
        let actions = h.handle(Event::AttemptEnded { reason: "job CANCELED".into() });
        assert!(matches!(outcome(&actions), Some(Err(why)) if why.contains("CANCELED")), "{actions:?}");
    }

    #[test]
    fn a_stop_savepoint_subsumes_older_pending_checkpoints() {
        let mut h = Harness::new(settings());
        assert_eq!(triggered(&h.tick()), [1]);
        let view = h.running();
        h.at(10).handle(Event::TriggerSavepoint { request: savepoint(3, Some(StopMode::Suspend)), tasks: view });
        h.ack_all(2);
        let done = h.at(20).handle(written(2));
        assert!(done.iter().any(|a| matches!(a, Action::Abort { id: 1, reason: FailureReason::Subsumed { by: 2 }, .. })), "{done:?}");
        // Its late acknowledgements change nothing: 1 never completes over the stop savepoint.
        assert!(notified(&h.ack_all(1)).is_empty());
        assert_eq!(h.c.restore_point().map(|(_, m)| m.checkpoint_id), Some(2));
    }

    #[test]
    fn a_drain_ends_the_input_and_the_final_checkpoint_is_its_savepoint() {
        let mut h = Harness::new(settings());
        let view = h.running();
        let actions = h.handle(Event::TriggerSavepoint { request: savepoint(5, Some(StopMode::Drain)), tasks: view });
        assert_eq!(actions, [Action::EndInput { attempt: 0 }]);
        // A lost call must not leave the job waiting: the end of input is repeated while tasks run.
        assert!(h.at(1_000).tick().is_empty());
        assert_eq!(h.at(2_100).tick(), [Action::EndInput { attempt: 0 }]);
        h.elapsed = Duration::ZERO;
        let ended = TaskView { job_active: true, total: h.total, running: 0, finishing: h.total, finished: 0 };
        let actions = h.at(10).handle(Event::Tick(ended));
        assert!(
            matches!(&actions[..], [Action::Trigger { id: 1, kind: CheckpointKind::Final, target: TriggerTarget::AllTasks, savepoint: Some(s), .. }] if s.ticket == 5),
            "{actions:?}"
        );
        let last = h.ack_all(1);
        assert!(matches!(&last[..], [Action::WriteMetadata { savepoint: Some(_), .. }]), "{last:?}");
        let done = h.handle(written(1));
        assert_eq!(notified(&done), [1]);
        assert_eq!(outcome(&done), Some(Ok((1, "memory://sp-5".to_string()))));
    }

    proptest! {
        /// Whatever the interleaving of ticks, acknowledgements, declines, `_metadata` writes,
        /// restarts and savepoints (plain, stop, drain): max-concurrent holds for checkpoints
        /// (finalizing included; savepoints come on top), completions only move forward, only
        /// written checkpoints of the running attempt complete, the restore point is the newest
        /// completion, every savepoint request is answered at most once, and a completed
        /// savepoint was written.
        #[test]
        fn invariants_hold_over_any_interleaving(
            max_concurrent in 1usize..4,
            steps in prop::collection::vec(step(), 1..120),
        ) {
            let mut h = Harness::new(CoordinatorSettings {
                max_concurrent,
                timeout: 400 * MS,
                tolerable_failures: u64::MAX,
                num_retained: 2,
                ..settings()
            });
            let mut attempt = 0u32;
            let mut clock = 0u64;
            let mut writes: Vec<u64> = Vec::new(); // _metadata writes in flight
            let mut last_completed = 0u64;
            let mut tickets = 0u64;
            let mut answered = std::collections::HashSet::new();
            for s in steps {
                let mut just_written = None;
                let actions = match s {
                    Step::Tick(dt) => {
                        clock += dt;
                        h.at(clock).tick()
                    }
                    Step::Ack { pick, subtask } => {
                        let pending = h.c.pending_ids();
                        if pending.is_empty() { continue; }
                        let id = pending[pick % pending.len()];
                        h.handle(ack(attempt, id, subtask % h.total as u32))
                    }
                    Step::Decline(pick) => {
                        let pending = h.c.pending_ids();
                        if pending.is_empty() { continue; }
                        let id = pending[pick % pending.len()];
                        h.handle(Event::Declined { attempt, id, reason: "x".into() })
                    }
                    Step::Write { pick, ok } => {
                        if writes.is_empty() { continue; }
                        let id = writes.remove(pick % writes.len());
                        just_written = ok.then_some(id);
                        let result = if ok { Ok(()) } else { Err("io".to_string()) };
                        h.handle(Event::MetadataWritten { id, result })
                    }
                    Step::Restart => {
                        let mut a = h.handle(Event::AttemptEnded { reason: "restart".into() });
                        attempt += 1;
                        a.extend(h.handle(Event::AttemptStarted { attempt }));
                        a
                    }
                    Step::Savepoint(stop) => {
                        tickets += 1;
                        let tasks = h.running();
                        h.handle(Event::TriggerSavepoint { request: savepoint(tickets, stop), tasks })
                    }
                };
                for a in &actions {
                    match a {
                        Action::WriteMetadata { metadata: m, .. } => writes.push(m.checkpoint_id),
                        Action::NotifyComplete { id, attempt: a } => {
                            prop_assert_eq!(Some(*id), just_written, "completed without its _metadata written");
                            prop_assert!(*id > last_completed, "checkpoint {} completed after {}", id, last_completed);
                            prop_assert_eq!(*a, attempt, "a checkpoint of an old attempt completed");
                            last_completed = *id;
                        }
                        Action::Discard { id } => prop_assert_ne!(Some(*id), h.c.restore_point().map(|(_, m)| m.checkpoint_id)),
                        Action::FailJob(_) => prop_assert!(false, "failures are tolerated here"),
                        Action::SavepointDone { ticket, result } => {
                            prop_assert!(answered.insert(*ticket), "savepoint request {} answered twice", ticket);
                            if let Ok((id, _)) = result {
                                prop_assert_eq!(Some(*id), just_written, "savepoint completed without its _metadata written");
                            }
                        }
                        _ => {}
                    }
                }
                let savepoints = h.c.history().iter().filter(|r| r.savepoint && r.status == CheckpointStatus::InProgress).count();
                prop_assert!(h.c.pending_ids().len() <= max_concurrent + savepoints);
                prop_assert_eq!(h.c.restore_point().map(|(_, m)| m.checkpoint_id), (last_completed > 0).then_some(last_completed));
            }
        }
    }

    /// With concurrent checkpoints, a shared file that the retained checkpoints stop referencing
    /// is not deleted while a checkpoint triggered before that moment (or the next one) may
    /// still reference it; once one that does completes, it is referenced again; it goes once
    /// nothing references it and every such checkpoint has ended.
    #[test]
    fn a_superseded_shared_file_outlives_the_checkpoints_that_may_still_reference_it() {
        use weir_state::handle::KeyedStateHandle;
        use weir_state::storage::StoredFile;
        let mut h = Harness::new(CoordinatorSettings { max_concurrent: 2, ..settings() });
        let count_uid = h.c.graph.vertices[1].operators[0].uid.clone();
        let count_vertex = h.c.graph.vertices[1].id;
        // Every subtask acknowledges; subtask 0 of the count references `files`.
        let ack_with = |h: &mut Harness, id: u64, files: &[&str]| -> Vec<Action> {
            let mut last = Vec::new();
            for i in 0..h.total as u32 {
                let mut e = ack(0, id, i);
                if let Event::Acknowledged { subtask, states, .. } = &mut e {
                    *subtask = (i, 0);
                    if (i, 0) == (count_vertex, 0) {
                        let shared = files.iter().map(|f| (f.to_string(), StoredFile { path: f.to_string(), size: 1, crc32: 0 })).collect();
                        let handle = KeyedStateHandle::Incremental {
                            range: weir_core::KeyGroupRange::new(0, 64),
                            max_parallelism: 128,
                            shared,
                            private: Vec::new(),
                        };
                        states.push((count_uid.clone(), SubtaskState { keyed: vec![handle], ..Default::default() }));
                    }
                }
                last = h.handle(e);
            }
            last
        };
        let deleted = |actions: &[Action]| -> Vec<String> {
            actions.iter().filter_map(|a| if let Action::DeleteSharedFiles(p) = a { Some(p.clone()) } else { None }).flatten().collect()
        };
        let mut all = Vec::new();
        assert_eq!(triggered(&h.at(0).tick()), vec![1]);
        assert_eq!(triggered(&h.at(100).tick()), vec![2]);
        ack_with(&mut h, 1, &["A"]);
        all.extend(deleted(&h.handle(written(1))));
        // Checkpoint 3 starts after 1 completed: its task may reuse A.
        assert_eq!(triggered(&h.at(200).tick()), vec![3]);
        ack_with(&mut h, 2, &["B"]);
        all.extend(deleted(&h.handle(written(2))));
        assert!(all.is_empty(), "A is unreferenced by the retained checkpoint 2, but 3 may still use it: {all:?}");
        ack_with(&mut h, 3, &["A"]);
        all.extend(deleted(&h.handle(written(3))));
        assert!(!all.contains(&"A".to_string()), "3 references A: {all:?}");
        for (id, t) in [(4, 300), (5, 400)] {
            assert_eq!(triggered(&h.at(t).tick()), vec![id]);
            ack_with(&mut h, id, &["C"]);
            all.extend(deleted(&h.handle(written(id))));
        }
        assert_eq!(triggered(&h.at(500).tick()), vec![6]);
        ack_with(&mut h, 6, &["C"]);
        all.extend(deleted(&h.handle(written(6))));
        all.sort();
        assert_eq!(all, vec!["A".to_string(), "B".to_string()], "once nothing can reference them, both go, once");
    }
}

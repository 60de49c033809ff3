//! The JobManager's cluster state: the registered TaskManagers with their slots, and the jobs
//! (`job.rs`). All of it sits behind one lock that is never held across an `.await`.
//!
//! Every method takes the lock, decides (job state changes through the lifecycle's
//! transition function, checkpoint decisions through the coordinator's), releases the lock
//! and returns the [`Effect`]s its decision calls for; the caller hands them to the
//! [`crate::effects::Executor`]. Nothing here does I/O or spawns tasks, so this module
//! depends on no module that drives it.
//!
//! ## Invariants
//! - A TaskManager's `used` slots are exactly the slots that jobs' current attempts hold:
//!   allocation takes them under the lock, and every way out of an attempt (end, restart,
//!   cancel) gives them back through one function (`release_slots`).
//! - A job changes state only through its lifecycle's transition function
//!   (`Job::apply`); an event that makes no sense in its state changes nothing.
//! - Every state change of a job that a restarted JobManager must know (submission, restart,
//!   end, suspension) writes its catalog entry, numbered, so that an older entry written
//!   later never overwrites a newer one.
//! - Messages of an older attempt (task states, acknowledgements, failures) are ignored: every
//!   one carries its attempt, and only the current one counts.
//! - Slots may have become free whenever a job ends, restarts or a TaskManager joins:
//!   `slots_changed` is notified, and schedulers waiting for slots look again.

use crate::clock::{self, humanize};
use crate::coordinate::{effects_of, Targets};
use crate::coordinator::{Event, Now, SavepointRequest, StopMode};
use crate::effects::{Effect, Followup, TmClient, TmTarget};
use crate::job::{Job, NewJob};
use crate::lifecycle::{JobStatus, LifecycleEvent};
use crate::metrics::MetricsStore;
use crate::program;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use weir_core::settings::JobManagerConfig;
use weir_core::Config;
use weir_proto::security::{Dialer, Timeouts};
use weir_proto::{CancelTasksRequest, CheckpointInfo, DeployTasksRequest, SubtaskLocation, SubtaskRef, TaskManagerInfo, TaskState};

/// A registered TaskManager.
struct TaskManagerEntry {
    /// `host:port` of its gRPC server.
    rpc_address: String,
    /// `host:port` of its data plane, handed to its peers in every deployment.
    data_address: String,
    /// `host:port` of its Prometheus endpoint (empty from a TaskManager that has none).
    metrics_address: String,
    /// Slots it offers, and how many of them jobs hold.
    slots: u32,
    used: u32,
    /// When it last heartbeated; silent for `heartbeat.timeout`, it is lost.
    last_heartbeat: Instant,
    /// Its gRPC client; every effect addressed to it gets a clone (they share one connection).
    client: TmClient,
    /// The ids of the program functions it runs (empty for a session TaskManager): program
    /// jobs are placed only where all of theirs are (see `program.rs`).
    functions: HashSet<String>,
}

/// Everything behind the lock.
#[derive(Default)]
struct Inner {
    /// Registered TaskManagers by id.
    tms: HashMap<String, TaskManagerEntry>,
    /// Every job this JobManager knows, ended ones included, by id.
    jobs: HashMap<String, Job>,
    /// Job ids in submission order.
    job_order: Vec<String>,
    /// The last savepoint request's ticket (tickets are unique per JobManager).
    next_ticket: u64,
}

/// The outcome of a slot request for a job.
pub(crate) enum Allocation {
    /// The job no longer waits for slots (canceled, ended, or unknown).
    NotWaiting,
    /// Not enough free slots yet; the numbers are for the message if the wait times out.
    /// For a program job, only the TaskManagers carrying its `program_functions` (> 0) count.
    Waiting { needed: u32, free: u32, total: u32, taskmanagers: usize, program_functions: usize },
    /// Slots taken and the job RUNNING: deploy these.
    Deploy(Vec<DeployCall>),
}

/// One deployment RPC.
pub(crate) struct DeployCall {
    pub taskmanager: TmTarget,
    /// The subtasks this TaskManager runs, with everything every TaskManager of the attempt
    /// gets alike: the graph, the configuration, where every subtask runs, the restore point.
    pub request: DeployTasksRequest,
}

/// What the JobManager knows, behind one lock. See the module header.
pub struct JobManagerState {
    /// The cluster configuration jobs are compiled under.
    config: Config,
    /// Heartbeat interval and timeout, slot request timeout, catalog directory.
    settings: JobManagerConfig,
    /// How it calls TaskManagers: the cluster's token and TLS files.
    dialer: Dialer,
    inner: Mutex<Inner>,
    /// Signalled when slots may have become free (a TaskManager joined, a job ended).
    slots_changed: Notify,
    /// The tasks' live metrics, with their own lock.
    metrics: MetricsStore,
}

/// A gRPC client for a TaskManager's RPC address (connected lazily). Connecting is bounded
/// by 3 s and every call by 30 s, so an RPC to a TaskManager that vanished fails instead of
/// hanging: a deployment then fails its attempt, a checkpoint RPC asks for a probe. `None`
/// if the address does not make a URI.
fn tm_client(dialer: &Dialer, rpc_address: &str) -> Option<TmClient> {
    let timeouts = Timeouts { connect: Duration::from_secs(3), request: Duration::from_secs(30) };
    dialer.connect_lazy(rpc_address, timeouts).ok().map(TmClient::new)
}

/// Picks `needed` slots, one at a time from the TaskManager with the most free slots, so
/// subtasks spread evenly over the cluster. None if there are not enough free slots.
fn pick_slots(free: &mut [(String, u32)], needed: u32) -> Option<Vec<String>> {
    let total: u32 = free.iter().map(|(_, f)| f).sum();
    if total < needed {
        return None;
    }
    let mut picked = Vec::with_capacity(needed as usize);
    for _ in 0..needed {
        // Most free slots first; ties broken by id so placement is deterministic.
        let best = free.iter_mut().filter(|(_, f)| *f > 0).max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))?;
        best.1 -= 1;
        picked.push(best.0.clone());
    }
    Some(picked)
}

/// The registered TaskManagers among `ids`, as RPC targets (a TaskManager lost meanwhile is
/// left out).
fn targets(tms: &HashMap<String, TaskManagerEntry>, ids: Vec<String>) -> Vec<TmTarget> {
    ids.into_iter().filter_map(|id| tms.get(&id).map(|e| TmTarget { client: e.client.clone(), id })).collect()
}

/// The effect that records the job's current state in the catalog.
fn save_catalog(job: &mut Job) -> Effect {
    let (record, seq) = job.catalog_record();
    Effect::SaveCatalog { record, seq }
}

/// Hands `event` to the job's coordinator and addresses the resulting actions.
///
/// Addresses are the job's TaskManagers as they are now (lost ones left out). The requests
/// carry the attempt the checkpoint belongs to, and a TaskManager acts only on the tasks of
/// that attempt.
///
/// A stop savepoint that completed is recorded in the catalog before the tasks hear of it
/// (the catalog entry is written before `perform` returns, the RPCs after): its notice commits
/// the sinks' output, so a JobManager recovered from then on must restore it.
fn checkpoint_event(tms: &HashMap<String, TaskManagerEntry>, job: &mut Job, now: Now, event: Event) -> Vec<Effect> {
    let sync_before = job.coordinator().sync_savepoint().map(|s| s.metadata.checkpoint_id);
    let actions = job.checkpoint(now, event);
    if actions.is_empty() {
        return Vec::new();
    }
    let mut effects = Vec::new();
    if job.coordinator().sync_savepoint().map(|s| s.metadata.checkpoint_id) != sync_before {
        effects.push(save_catalog(job));
    }
    let t = Targets {
        job_id: job.id(),
        attempt: job.attempt(),
        sources: targets(tms, job.source_taskmanagers()),
        all: targets(tms, job.taskmanagers()),
        storage: job.storage(),
        config: job.config(),
    };
    effects.extend(effects_of(actions, &t, now.epoch_ms));
    effects
}

/// Frees the slots of a job's current attempt; with `cancel`, one cancel call per TaskManager
/// that ran its tasks.
///
/// The one way slots go back (see the invariants). Slots on a TaskManager already removed
/// went with it and are not counted back; calling it twice frees nothing the second time,
/// since the job no longer holds them.
fn release_slots(tms: &mut HashMap<String, TaskManagerEntry>, job: &mut Job, cancel: bool) -> Vec<Effect> {
    let slots = job.take_slots();
    let mut to = Vec::new();
    let mut seen = HashSet::new();
    for tm in slots {
        if let Some(entry) = tms.get_mut(&tm) {
            entry.used = entry.used.saturating_sub(1);
            if cancel && seen.insert(tm.clone()) {
                to.push(TmTarget { id: tm, client: entry.client.clone() });
            }
        }
    }
    if to.is_empty() {
        return Vec::new();
    }
    vec![Effect::CancelTasks { to, request: CancelTasksRequest { job_id: job.id().to_string(), attempt: job.attempt() } }]
}

/// Moves a job to a terminal state by `event`: its checkpoints are void, its slots freed
/// (its tasks canceled unless they all finished), and its catalog entry written.
///
/// The events that get here: `AllTasksFinished` (→ FINISHED), `AllTasksStopped` and
/// `CancelRequested` (→ CANCELED), `Failed { restart: false }` (→ FAILED). An event the
/// job's state does not allow changes nothing and returns no effects. `failure` is empty
/// except for FAILED, and replaces the reason of the last restart.
fn end_job(tms: &mut HashMap<String, TaskManagerEntry>, job: &mut Job, event: LifecycleEvent, failure: &str, now: Now) -> Vec<Effect> {
    let Ok(to) = job.apply(event, now) else { return Vec::new() };
    job.set_failure(failure);
    let mut effects = checkpoint_event(tms, job, now, Event::AttemptEnded { reason: format!("job {to}") });
    effects.extend(release_slots(tms, job, to != JobStatus::Finished));
    effects.push(save_catalog(job));
    match to {
        JobStatus::Failed => tracing::warn!(job = %job.id(), "job failed: {failure}"),
        s => tracing::info!(job = %job.id(), "job {s}"),
    }
    effects
}

/// A failure of the job's running attempt: it restarts if its strategy allows, and otherwise
/// ends FAILED. A failure of a job that runs no attempt (restarting, cancelling, ended) is moot.
///
/// On restart (CREATED, RUNNING or FINISHING → RESTARTING) the attempt's pending checkpoints
/// are void (the coordinator's "Attempts" rule), its slots freed, its tasks canceled, its
/// catalog entry written, and a timer set for the strategy's delay. The attempt number stays
/// the same until the delay passed.
fn fail_job(tms: &mut HashMap<String, TaskManagerEntry>, job: &mut Job, reason: &str, now: Now) -> Vec<Effect> {
    if !matches!(job.status(), JobStatus::Created | JobStatus::Running | JobStatus::Finishing) {
        return Vec::new();
    }
    let Some(delay) = job.restart_delay(now) else {
        return end_job(tms, job, LifecycleEvent::Failed { restart: false }, reason, now);
    };
    if job.apply(LifecycleEvent::Failed { restart: true }, now).is_err() {
        return Vec::new();
    }
    job.set_failure(reason);
    tracing::warn!(job = %job.id(), attempt = job.attempt(), delay = %humanize(delay), "job failed, restarting: {reason}");
    let mut effects = checkpoint_event(tms, job, now, Event::AttemptEnded { reason: "job restarting".into() });
    effects.extend(release_slots(tms, job, true));
    effects.push(save_catalog(job));
    effects.push(Effect::RestartAfter { job_id: job.id().to_string(), delay });
    effects
}

impl JobManagerState {
    /// An empty cluster with the JobManager's configuration.
    pub(crate) fn new(config: Config, settings: JobManagerConfig, dialer: Dialer) -> Self {
        Self {
            config,
            settings,
            dialer,
            inner: Mutex::new(Inner::default()),
            slots_changed: Notify::new(),
            metrics: MetricsStore::default(),
        }
    }

    /// The tasks' live metrics, as the heartbeats brought them.
    pub(crate) fn metrics(&self) -> &MetricsStore {
        &self.metrics
    }

    /// A job's graph (vertices and edges), for the REST API's plan; `None` for an unknown id.
    pub(crate) fn job_graph(&self, id: &str) -> Option<std::sync::Arc<weir_core::graph::JobGraph>> {
        self.inner.lock().jobs.get(id).map(|j| j.graph().clone())
    }

    /// The cluster configuration jobs are compiled under.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The JobManager's typed settings.
    pub(crate) fn settings(&self) -> &JobManagerConfig {
        &self.settings
    }

    /// Notified when slots may have become free.
    pub(crate) fn slots_changed(&self) -> &Notify {
        &self.slots_changed
    }

    /// Registers (or re-registers) a TaskManager with its slots; waiting jobs may now get them.
    /// A re-registration replaces the entry: its slots count as free and its heartbeat clock
    /// starts again. Fails only for an RPC address that does not make a URI.
    pub(crate) fn register_tm(
        &self,
        id: &str,
        [rpc_address, data_address, metrics_address]: [&str; 3],
        slots: u32,
        functions: Vec<String>,
    ) -> Result<(), String> {
        let client = tm_client(&self.dialer, rpc_address).ok_or_else(|| format!("bad TaskManager RPC address '{rpc_address}'"))?;
        let entry = TaskManagerEntry {
            rpc_address: rpc_address.to_string(),
            data_address: data_address.to_string(),
            metrics_address: metrics_address.to_string(),
            slots,
            used: 0,
            last_heartbeat: Instant::now(),
            client,
            functions: functions.into_iter().collect(),
        };
        let carried = entry.functions.len();
        self.inner.lock().tms.insert(id.to_string(), entry);
        tracing::info!(taskmanager = id, rpc = rpc_address, slots, functions = carried, "TaskManager registered");
        self.slots_changed.notify_waiters();
        Ok(())
    }

    /// A heartbeat from TaskManager `id`; false if it is not (or no longer) registered.
    pub(crate) fn heartbeat(&self, id: &str) -> bool {
        match self.inner.lock().tms.get_mut(id) {
            Some(tm) => {
                tm.last_heartbeat = Instant::now();
                true
            }
            None => false,
        }
    }

    /// TaskManagers silent for longer than `timeout`.
    pub(crate) fn silent_taskmanagers(&self, timeout: Duration) -> Vec<String> {
        self.inner.lock().tms.iter().filter(|(_, t)| t.last_heartbeat.elapsed() > timeout).map(|(id, _)| id.clone()).collect()
    }

    /// Why a program job needing the functions of `graph` cannot be accepted now: no
    /// registered TaskManager carries them all (see `program.rs`). `None` if one does, or if
    /// the graph has no user operators.
    pub(crate) fn program_refusal(&self, graph: &weir_core::graph::JobGraph) -> Option<String> {
        let inner = self.inner.lock();
        program::refusal(&program::required_functions(graph), inner.tms.values().map(|t| &t.functions))
    }

    /// The registered TaskManagers and their free slots, for `weir cluster`.
    pub(crate) fn overview(&self) -> Vec<TaskManagerInfo> {
        let inner = self.inner.lock();
        let mut tms: Vec<_> = inner
            .tms
            .iter()
            .map(|(id, t)| TaskManagerInfo {
                taskmanager_id: id.clone(),
                rpc_address: t.rpc_address.clone(),
                data_address: t.data_address.clone(),
                slots: t.slots,
                free_slots: t.slots - t.used,
                user_functions: {
                    let mut functions: Vec<String> = t.functions.iter().cloned().collect();
                    functions.sort();
                    functions
                },
                metrics_address: t.metrics_address.clone(),
            })
            .collect();
        tms.sort_by(|a, b| a.taskmanager_id.cmp(&b.taskmanager_id));
        tms
    }

    /// Adds a job (CREATED); it is scheduled by the follow-up.
    ///
    /// Used by submission and by recovery. The effects write its first catalog entry and send
    /// `JobAdded`, on which the driver starts the job's scheduler and checkpoint timer.
    pub(crate) fn add_job(&self, new: NewJob) -> Vec<Effect> {
        let id = new.id.clone();
        let mut job = Job::new(new, clock::now());
        let effects = vec![save_catalog(&mut job), Effect::Followup(Followup::JobAdded { job_id: id.clone() })];
        let mut inner = self.inner.lock();
        inner.jobs.insert(id.clone(), job);
        inner.job_order.push(id);
        effects
    }

    /// One job as the CLI shows it.
    pub(crate) fn job_status(&self, id: &str) -> Option<weir_proto::JobStatus> {
        self.inner.lock().jobs.get(id).map(Job::status_view)
    }

    /// Every job, in submission order.
    pub(crate) fn list_jobs(&self) -> Vec<weir_proto::JobStatus> {
        let inner = self.inner.lock();
        inner.job_order.iter().filter_map(|id| inner.jobs.get(id)).map(Job::status_view).collect()
    }

    /// The rows of `weir checkpoints` for a job.
    pub(crate) fn checkpoint_history(&self, id: &str) -> Option<Vec<CheckpointInfo>> {
        self.inner.lock().jobs.get(id).map(|j| j.coordinator().history().iter().map(|r| r.info()).collect())
    }

    /// A subtask's state changed: records it and moves the job on.
    ///
    /// Reports of another attempt or of an unknown subtask are dropped; for an ended job the
    /// report is recorded (its counters show in `weir status`) but moves nothing. What moves
    /// the job (every check is over all subtasks of the attempt):
    /// - a failure while RUNNING or FINISHING: a `TaskFailed` follow-up, which probes the
    ///   job's TaskManagers before it fails the job (see `failover.rs`);
    /// - the last subtask FINISHED: RUNNING or FINISHING → FINISHED;
    /// - the last subtask to end its input (FINISHING or FINISHED; tasks report FINISHING
    ///   only with checkpointing on): RUNNING → FINISHING, and the coordinator's next tick
    ///   triggers the final checkpoint;
    /// - the last subtask stopped (in any way) while CANCELLING: → CANCELED.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn task_update(
        &self,
        job_id: &str,
        attempt: u32,
        key: (u32, u32),
        state: TaskState,
        records: (u64, u64),
        taskmanager: &str,
        failure: &str,
    ) -> Vec<Effect> {
        let now = clock::now();
        let mut guard = self.inner.lock();
        let Inner { tms, jobs, .. } = &mut *guard;
        let Some(job) = jobs.get_mut(job_id) else { return Vec::new() };
        if job.attempt() != attempt || !job.record_task(key, state, records, now) || job.status().is_terminal() {
            return Vec::new();
        }
        let ended = [TaskState::TaskFinished, TaskState::TaskCanceled, TaskState::TaskFailed];
        let effects = match (job.status(), state) {
            (JobStatus::Running | JobStatus::Finishing, TaskState::TaskFailed) => {
                let reason = format!("task {} on {taskmanager} failed: {failure}", job.subtask_name(key));
                vec![Effect::Followup(Followup::TaskFailed { job_id: job_id.to_string(), attempt, reason })]
            }
            (JobStatus::Running | JobStatus::Finishing, TaskState::TaskFinished) if job.all_tasks(&[TaskState::TaskFinished]) => {
                end_job(tms, job, LifecycleEvent::AllTasksFinished, "", now)
            }
            (JobStatus::Running, TaskState::TaskFinishing | TaskState::TaskFinished)
                if job.all_tasks(&[TaskState::TaskFinishing, TaskState::TaskFinished]) =>
            {
                let _ = job.apply(LifecycleEvent::InputsEnded, now);
                tracing::info!(job = job_id, "input ended everywhere: the final checkpoint commits the rest");
                vec![save_catalog(job)]
            }
            (JobStatus::Cancelling, _) if job.all_tasks(&ended) => end_job(tms, job, LifecycleEvent::AllTasksStopped, "", now),
            _ => Vec::new(),
        };
        drop(guard);
        if !effects.is_empty() {
            self.slots_changed.notify_waiters();
        }
        effects
    }

    /// The job failed (`attempt`: the attempt the failure belongs to; a failure of an older
    /// attempt is moot).
    ///
    /// Called by the driver for `FailJob` follow-ups (scheduling, deployment and checkpoint
    /// failures) and by `failover::task_failed`. `None` applies the failure to whatever
    /// attempt is current.
    pub(crate) fn fail_job(&self, job_id: &str, attempt: Option<u32>, reason: &str) -> Vec<Effect> {
        let mut guard = self.inner.lock();
        let Inner { tms, jobs, .. } = &mut *guard;
        let Some(job) = jobs.get_mut(job_id) else { return Vec::new() };
        if attempt.is_some_and(|a| a != job.attempt()) {
            return Vec::new();
        }
        let effects = fail_job(tms, job, reason, clock::now());
        drop(guard);
        self.slots_changed.notify_waiters();
        effects
    }

    /// The restart delay passed: a new attempt (CREATED) restoring the latest checkpoint.
    ///
    /// RESTARTING → CREATED, with the attempt number one higher. The coordinator is told the
    /// new attempt (older checkpoints still pending are void), the catalog entry records it,
    /// and the `Schedule` follow-up starts the wait for slots.
    pub(crate) fn restart(&self, job_id: &str) -> Vec<Effect> {
        let now = clock::now();
        let mut guard = self.inner.lock();
        let Inner { tms, jobs, .. } = &mut *guard;
        let Some(job) = jobs.get_mut(job_id) else { return Vec::new() };
        if job.apply(LifecycleEvent::RestartDelayElapsed, now).is_err() {
            return Vec::new(); // canceled meanwhile
        }
        job.next_attempt();
        let mut effects = checkpoint_event(tms, job, now, Event::AttemptStarted { attempt: job.attempt() });
        tracing::info!(job = job_id, attempt = job.attempt(), checkpoint = job.restore().map(|r| r.metadata.checkpoint_id), "redeploying");
        effects.push(save_catalog(job));
        effects.push(Effect::Followup(Followup::Schedule { job_id: job_id.to_string() }));
        effects
    }

    /// Cancels a job on the user's request.
    ///
    /// CREATED or RESTARTING → CANCELED at once (no tasks run; a pending restart timer finds
    /// the job ended). RUNNING or FINISHING → CANCELLING: the TaskManagers are asked to
    /// cancel the attempt, and the job holds its slots until every subtask reported that it
    /// stopped (or its TaskManager was lost). Any other state: nothing to do. Errs only for an
    /// unknown job.
    pub(crate) fn cancel_job(&self, job_id: &str) -> Result<Vec<Effect>, String> {
        let now = clock::now();
        let mut guard = self.inner.lock();
        let Inner { tms, jobs, .. } = &mut *guard;
        let job = jobs.get_mut(job_id).ok_or_else(|| format!("no job with id {job_id}"))?;
        let effects = match job.status() {
            // Not running tasks: ends at once.
            JobStatus::Created | JobStatus::Restarting => end_job(tms, job, LifecycleEvent::CancelRequested, "", now),
            JobStatus::Running | JobStatus::Finishing => {
                let _ = job.apply(LifecycleEvent::CancelRequested, now);
                let to = targets(tms, job.taskmanagers());
                vec![
                    save_catalog(job),
                    Effect::CancelTasks { to, request: CancelTasksRequest { job_id: job_id.to_string(), attempt: job.attempt() } },
                ]
            }
            _ => Vec::new(),
        };
        drop(guard);
        self.slots_changed.notify_waiters();
        Ok(effects)
    }

    /// Removes a TaskManager; every unfinished job with a subtask on it fails (or, when it was
    /// being canceled, is canceled).
    ///
    /// Called by the heartbeat monitor and by probes (`failover.rs`). The failure names the
    /// TaskManager and `why`, and goes through the restart strategy like any other. A
    /// TaskManager removed already (two probes racing) changes nothing. It learns that it was
    /// removed at its next heartbeat.
    pub(crate) fn taskmanager_lost(&self, tm_id: &str, why: &str) -> Vec<Effect> {
        let now = clock::now();
        let mut guard = self.inner.lock();
        let Inner { tms, jobs, .. } = &mut *guard;
        let Some(tm) = tms.remove(tm_id) else { return Vec::new() };
        tracing::warn!(taskmanager = tm_id, "TaskManager lost: {why}");
        let reason = format!("TaskManager {tm_id} ({}) lost: {why}", tm.rpc_address);
        let mut effects = Vec::new();
        for job in jobs.values_mut().filter(|j| !j.status().is_terminal() && j.runs_on(tm_id)) {
            effects.extend(match job.status() {
                JobStatus::Cancelling => end_job(tms, job, LifecycleEvent::AllTasksStopped, "", now),
                _ => fail_job(tms, job, &reason, now),
            });
        }
        drop(guard);
        self.slots_changed.notify_waiters();
        effects
    }

    /// The TaskManagers of a job's attempt, to probe after a task failure.
    pub(crate) fn job_taskmanagers(&self, job_id: &str) -> Vec<TmTarget> {
        let inner = self.inner.lock();
        let Some(job) = inner.jobs.get(job_id) else { return Vec::new() };
        targets(&inner.tms, job.taskmanagers())
    }

    /// Takes slots for a job waiting for them and moves it to RUNNING, or says why not.
    ///
    /// CREATED → RUNNING happens here, under the lock, together with taking the slots, so a
    /// job holds slots exactly while it is RUNNING, FINISHING or CANCELLING (or SUSPENDED, at
    /// shutdown). The slots are spread over the TaskManagers (see `pick_slots`), and one
    /// `DeployTasks` request is built per TaskManager, each with the locations of every
    /// subtask, so that tasks can reach their peers' data plane.
    pub(crate) fn allocate(&self, job_id: &str) -> Allocation {
        let mut guard = self.inner.lock();
        let Inner { tms, jobs, .. } = &mut *guard;
        let Some(job) = jobs.get_mut(job_id) else { return Allocation::NotWaiting };
        if job.status() != JobStatus::Created {
            return Allocation::NotWaiting;
        }
        let needed = job.graph().slots_needed();
        // A program job's subtasks go only to TaskManagers that carry its functions.
        let required = program::required_functions(job.graph());
        let eligible = || tms.iter().filter(|(_, t)| program::carries(&t.functions, &required));
        let mut free: Vec<(String, u32)> = eligible().map(|(id, t)| (id.clone(), t.slots - t.used)).collect();
        free.sort();
        let Some(slots) = pick_slots(&mut free, needed) else {
            return Allocation::Waiting {
                needed,
                free: free.iter().map(|(_, f)| f).sum(),
                total: eligible().map(|(_, t)| t.slots).sum(),
                taskmanagers: eligible().count(),
                program_functions: required.len(),
            };
        };
        if job.apply(LifecycleEvent::SlotsAllocated, clock::now()).is_err() {
            return Allocation::NotWaiting;
        }
        for tm in &slots {
            if let Some(e) = tms.get_mut(tm) {
                e.used += 1;
            }
        }
        job.assign_slots(slots);
        let mut locations = Vec::new();
        let mut per_tm: HashMap<String, Vec<SubtaskRef>> = HashMap::new();
        for v in &job.graph().vertices {
            for i in 0..v.parallelism {
                let tm = job.slot(i).unwrap_or_default().to_string();
                per_tm.entry(tm.clone()).or_default().push(SubtaskRef { vertex: v.id, subtask: i });
                let data_address = tms.get(&tm).map(|e| e.data_address.clone()).unwrap_or_default();
                locations.push(SubtaskLocation { vertex: v.id, subtask: i, data_address, taskmanager_id: tm });
            }
        }
        let job_graph = job.graph().to_json();
        let restore = job.restore().and_then(|r| serde_json::to_vec(r).ok()).unwrap_or_default();
        let config: HashMap<String, String> = job.config().explicit().clone().into_iter().collect();
        let calls = per_tm
            .into_iter()
            .filter_map(|(tm, subtasks)| {
                let client = tms.get(&tm)?.client.clone();
                let request = DeployTasksRequest {
                    job_id: job_id.to_string(),
                    attempt: job.attempt(),
                    job_graph: job_graph.clone(),
                    config: config.clone(),
                    locations: locations.clone(),
                    subtasks,
                    restore: restore.clone(),
                };
                Some(DeployCall { taskmanager: TmTarget { id: tm, client }, request })
            })
            .collect();
        Allocation::Deploy(calls)
    }

    /// A checkpoint timer tick of the job; `None` once the job ended or was suspended (the
    /// timer stops). Every tick expires overdue checkpoints; the task view it carries says
    /// whether a periodic or the final checkpoint may be triggered.
    pub(crate) fn checkpoint_tick(&self, job_id: &str) -> Option<Vec<Effect>> {
        let mut guard = self.inner.lock();
        let Inner { tms, jobs, .. } = &mut *guard;
        let job = jobs.get_mut(job_id)?;
        if job.status().is_terminal() || job.status() == JobStatus::Suspended {
            return None;
        }
        let view = job.task_view();
        Some(checkpoint_event(tms, job, clock::now(), Event::Tick(view)))
    }

    /// The effective configuration of a job.
    pub(crate) fn job_config(&self, job_id: &str) -> Option<Config> {
        self.inner.lock().jobs.get(job_id).map(|j| j.config().clone())
    }

    /// Asks the job's coordinator for a savepoint (`stop`: then to stop the job) into a new
    /// folder `location`; returns the request's ticket, whose outcome
    /// [`Executor::savepoint_outcome`](crate::effects::Executor::savepoint_outcome) waits for.
    /// A job that does not exist, or is not RUNNING, is refused naming its state.
    pub(crate) fn trigger_savepoint(
        &self,
        job_id: &str,
        location: String,
        native: bool,
        stop: Option<StopMode>,
    ) -> Result<(u64, Vec<Effect>), tonic::Status> {
        let mut guard = self.inner.lock();
        let Inner { tms, jobs, next_ticket, .. } = &mut *guard;
        let job = jobs.get_mut(job_id).ok_or_else(|| tonic::Status::not_found(format!("no job {job_id}")))?;
        if job.status() != JobStatus::Running {
            return Err(tonic::Status::failed_precondition(format!("job {job_id} is {}: a savepoint needs a RUNNING job", job.status())));
        }
        *next_ticket += 1;
        let ticket = *next_ticket;
        let request = SavepointRequest { ticket, location, native, stop };
        let tasks = job.task_view();
        let effects = checkpoint_event(tms, job, clock::now(), Event::TriggerSavepoint { request, tasks });
        Ok((ticket, effects))
    }

    /// Changes checkpoint settings of a running job (see [`Job::update_checkpoint_config`]);
    /// the catalog records the new configuration, so a recovered JobManager keeps it. An
    /// unknown job is `NOT_FOUND`, one that ended `FAILED_PRECONDITION`, a setting that cannot
    /// change `INVALID_ARGUMENT`, each naming what.
    pub(crate) fn update_checkpoint_config(&self, job_id: &str, pairs: &[(String, String)]) -> Result<Vec<Effect>, tonic::Status> {
        let mut guard = self.inner.lock();
        let job = guard.jobs.get_mut(job_id).ok_or_else(|| tonic::Status::not_found(format!("no job with id {job_id}")))?;
        if job.status().is_terminal() || job.status() == JobStatus::Suspended {
            return Err(tonic::Status::failed_precondition(format!("job {job_id} is {}: its settings no longer change", job.status())));
        }
        job.update_checkpoint_config(clock::now(), pairs).map_err(tonic::Status::invalid_argument)?;
        tracing::info!(job = %job_id, ?pairs, "checkpoint settings changed");
        Ok(vec![save_catalog(job)])
    }

    /// The checkpoint settings changes of a job, oldest first; `None` for an unknown job.
    pub(crate) fn config_changes(&self, job_id: &str) -> Option<Vec<(i64, Vec<(String, String)>)>> {
        self.inner.lock().jobs.get(job_id).map(|j| j.config_changes().to_vec())
    }

    /// Triggers a checkpoint of a running job now; returns its id. Refused (naming why) when
    /// the job is unknown, not RUNNING, has checkpointing off, or a stop or savepoint is under
    /// way.
    pub(crate) fn trigger_checkpoint(&self, job_id: &str) -> Result<(u64, Vec<Effect>), tonic::Status> {
        let mut guard = self.inner.lock();
        let Inner { tms, jobs, .. } = &mut *guard;
        let job = jobs.get_mut(job_id).ok_or_else(|| tonic::Status::not_found(format!("no job with id {job_id}")))?;
        if job.status() != JobStatus::Running {
            return Err(tonic::Status::failed_precondition(format!("job {job_id} is {}: a checkpoint needs a RUNNING job", job.status())));
        }
        if !job.coordinator().enabled() {
            return Err(tonic::Status::failed_precondition(format!(
                "job {job_id} runs without checkpoints: it needs {} set when it starts",
                weir_core::config::keys::CHECKPOINT_INTERVAL
            )));
        }
        let view = job.task_view();
        let before = job.coordinator().history().last().map(|r| r.id);
        let effects = checkpoint_event(tms, job, clock::now(), Event::TriggerNow(view));
        match job.coordinator().history().last().map(|r| r.id) {
            Some(id) if Some(id) != before => Ok((id, effects)),
            _ => Err(tonic::Status::failed_precondition(format!(
                "job {job_id} cannot take a checkpoint now: not every task runs, or a stop or savepoint is under way"
            ))),
        }
    }

    /// The tick period of the job's checkpoint timer; `None` when checkpointing is off.
    pub(crate) fn checkpoint_tick_period(&self, job_id: &str) -> Option<Duration> {
        self.inner.lock().jobs.get(job_id).and_then(|j| j.coordinator().tick_period())
    }

    /// Something happened to a checkpoint of the job: an acknowledgement or decline from a
    /// subtask (`service.rs`), or the outcome of a trigger or `_metadata` write (a follow-up).
    /// An unknown job changes nothing; the coordinator drops acknowledgements and declines
    /// of another attempt.
    pub(crate) fn checkpoint_event(&self, job_id: &str, event: Event) -> Vec<Effect> {
        let mut guard = self.inner.lock();
        let Inner { tms, jobs, .. } = &mut *guard;
        let Some(job) = jobs.get_mut(job_id) else { return Vec::new() };
        checkpoint_event(tms, job, clock::now(), event)
    }

    /// The JobManager shuts down: every unfinished job is SUSPENDED in the catalog, so that a
    /// JobManager started on it resumes them.
    ///
    /// Called by [`crate::JobManagerHandle::shutdown`]. Only the state and the catalog
    /// change: tasks are not canceled, slots not freed, checkpoints not aborted. Each
    /// TaskManager cancels its tasks once the JobManager has not answered its heartbeats for
    /// `heartbeat.timeout`.
    pub(crate) fn suspend_all(&self) -> Vec<Effect> {
        let now = clock::now();
        let mut inner = self.inner.lock();
        let mut effects = Vec::new();
        for job in inner.jobs.values_mut() {
            if job.apply(LifecycleEvent::Suspended, now).is_ok() {
                effects.push(save_catalog(job));
            }
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_spread_over_taskmanagers() {
        let mut free = vec![("a".to_string(), 4), ("b".to_string(), 4)];
        let picked = pick_slots(&mut free, 4).unwrap();
        assert_eq!(picked.iter().filter(|t| *t == "a").count(), 2);
        assert_eq!(picked.iter().filter(|t| *t == "b").count(), 2);
        assert!(pick_slots(&mut free, 5).is_none());
    }
}

//! One job as the JobManager keeps it: its graph and settings, its lifecycle state, the
//! subtasks of its current attempt, the slots they run in, its restart history and its
//! checkpoint coordinator. State changes go through [`Job::apply`] (the lifecycle's transition
//! function) and [`Job::checkpoint`] (the coordinator's); the JobManager's state
//! (`state.rs`) decides what to do around them.
//!
//! A job runs as a sequence of attempts. Each attempt gets its slots and its subtask table
//! afresh ([`Job::assign_slots`]) and restores from the newest completed checkpoint
//! ([`Job::next_attempt`]); the coordinator, restart history and catalog sequence number
//! live as long as the job. Nothing here does I/O, reads a clock or knows other jobs: free
//! slots, TaskManagers and effects are `state.rs`'s business.

use crate::catalog::JobRecord;
use crate::coordinator::{Action, CheckpointCoordinator, CoordinatorSettings, Event, Now, SubtaskKey, TaskView};
use crate::lifecycle::{transition, IllegalTransition, JobStatus, LifecycleEvent};
use crate::restart::RestartTracker;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use weir_core::config::Config;
use weir_core::graph::JobGraph;
use weir_core::settings::JobSettings;
use weir_proto::{TaskState, VertexStatus};
use weir_state::metadata::RestoreInfo;
use weir_state::CheckpointStorage;

/// What a job was submitted as, and where it came from (kept for the catalog, from which a
/// recovering JobManager builds the job again).
#[derive(Debug, Clone)]
pub(crate) struct JobDefinition {
    pub kind: DefinitionKind,
    /// The job file's text, or the program's JobGraph as JSON.
    pub text: String,
    /// Where the text came from (a file name, `job`, or `program '<name>'`), for errors.
    pub origin: String,
}

/// How a job's definition text reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DefinitionKind {
    /// A YAML job file, compiled again on recovery.
    #[default]
    JobFile,
    /// A JobGraph compiled by a DataStream program, as JSON; its user operators need
    /// TaskManagers that carry the program's functions.
    JobGraph,
}

/// Everything needed to add a job, built by a submission (`service.rs`) or by recovery
/// (`recover.rs`); both compile the job and read its settings before, so a job that exists
/// is one whose configuration was accepted.
pub(crate) struct NewJob {
    /// The job id; recovery keeps the id the job was submitted under.
    pub id: String,
    pub name: String,
    pub graph: JobGraph,
    /// The effective configuration (cluster, job file, `-D`).
    pub config: Config,
    /// Its typed settings: checkpointing, restart strategy, state backend.
    pub settings: JobSettings,
    /// Opened when `execution.checkpointing.dir` is set.
    pub storage: Option<CheckpointStorage>,
    pub definition: JobDefinition,
    /// What the first attempt restores from (`weir run -s`, or a recovered checkpoint).
    pub restore: Option<RestoreInfo>,
    /// The first attempt's number (recovered jobs continue counting).
    pub attempt: u32,
    /// The first checkpoint id (recovered jobs continue after their latest checkpoint).
    pub next_checkpoint: u64,
}

/// One subtask of the current attempt.
#[derive(Debug, Clone, Copy)]
struct TaskEntry {
    /// The last state its TaskManager reported (DEPLOYING until the first report).
    state: TaskState,
    /// Records it read and wrote so far, as last reported.
    records_in: u64,
    records_out: u64,
}

/// A job. Fields are private: the lifecycle changes only through [`Job::apply`], the
/// coordinator only through [`Job::checkpoint`].
pub(crate) struct Job {
    id: String,
    name: String,
    graph: Arc<JobGraph>,
    /// The effective configuration (cluster, job file, `-D`), as shipped to TaskManagers.
    config: Config,
    /// The job file as submitted, for the catalog.
    definition: JobDefinition,
    status: JobStatus,
    /// Why the job failed or last restarted; empty otherwise.
    failure: String,
    /// The current attempt (see [`Job::attempt`]).
    attempt: u32,
    /// Submission and end times (ms since the epoch; 0 = not ended).
    start_ms: i64,
    end_ms: i64,
    /// The subtasks of the current attempt and their last reported state.
    tasks: BTreeMap<SubtaskKey, TaskEntry>,
    /// The TaskManager of each allocated slot (slot i runs subtask i of every vertex).
    slots: Vec<String>,
    /// What the first attempt restored from: later attempts fall back to it while the job has
    /// no completed checkpoint of its own.
    initial_restore: Option<RestoreInfo>,
    /// What the current attempt restores from.
    restore: Option<RestoreInfo>,
    /// The restart strategy and the failures it has seen.
    restarts: RestartTracker,
    /// Since when every subtask of the attempt runs (exponential-delay resets after a long run).
    running_since: Instant,
    coordinator: CheckpointCoordinator,
    /// Checkpoint storage (`execution.checkpointing.dir`), when checkpointing or restoring.
    storage: Option<CheckpointStorage>,
    /// Sequence number of the catalog entries written for this job.
    catalog_seq: u64,
    /// Checkpoint settings changed while the job ran: when (ms since the epoch) and what.
    config_changes: Vec<(i64, Vec<(String, String)>)>,
}

/// Checkpoint settings a running job may change: the coordinator applies them from its next
/// trigger on, and every trigger carries how its barriers travel (unaligned, the aligned
/// timeout). The rest (state backend, storage, mode) is read by the TaskManagers when they
/// deploy the job's tasks.
pub(crate) const LIVE_CHECKPOINT_KEYS: &[&str] = &[
    weir_core::config::keys::CHECKPOINT_INTERVAL,
    weir_core::config::keys::CHECKPOINT_TIMEOUT,
    weir_core::config::keys::CHECKPOINT_MIN_PAUSE,
    weir_core::config::keys::CHECKPOINT_MAX_CONCURRENT,
    weir_core::config::keys::CHECKPOINT_TOLERABLE_FAILED,
    weir_core::config::keys::CHECKPOINT_NUM_RETAINED,
    weir_core::config::keys::CHECKPOINT_UNALIGNED,
    weir_core::config::keys::CHECKPOINT_ALIGNED_TIMEOUT,
];

impl Job {
    /// A new job in CREATED, submitted (or recovered) at `now`.
    pub fn new(j: NewJob, now: Now) -> Self {
        let graph = Arc::new(j.graph);
        let coordinator = CheckpointCoordinator::new(
            &j.id,
            graph.clone(),
            CoordinatorSettings::from(&j.settings.checkpoint),
            j.attempt,
            j.next_checkpoint,
        );
        Self {
            id: j.id,
            name: j.name,
            graph,
            config: j.config,
            definition: j.definition,
            status: JobStatus::Created,
            failure: String::new(),
            attempt: j.attempt,
            start_ms: now.epoch_ms,
            end_ms: 0,
            tasks: BTreeMap::new(),
            slots: Vec::new(),
            initial_restore: j.restore.clone(),
            restore: j.restore,
            restarts: RestartTracker::new(j.settings.restart),
            running_since: now.instant,
            coordinator,
            storage: j.storage,
            catalog_seq: 0,
            config_changes: Vec::new(),
        }
    }

    /// Changes checkpoint settings of the running job (`pairs`: configuration keys and values,
    /// each one of [`LIVE_CHECKPOINT_KEYS`]), effective from the coordinator's next tick. A key
    /// that cannot change while the job runs, a bad value, or turning checkpointing on or off
    /// is refused naming the key, and nothing changes.
    pub fn update_checkpoint_config(&mut self, now: Now, pairs: &[(String, String)]) -> Result<(), String> {
        if pairs.is_empty() {
            return Err("no setting to change: send configuration keys and values".into());
        }
        let mut config = self.config.clone();
        for (key, value) in pairs {
            if weir_core::config::Config::key_def(key).is_none() {
                return Err(format!("unknown configuration key '{key}'"));
            }
            if !LIVE_CHECKPOINT_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "'{key}' cannot change while the job runs (the TaskManagers read it when they deploy the job);                      a running job can change: {}",
                    LIVE_CHECKPOINT_KEYS.join(", ")
                ));
            }
            config.set(key, value, "the job's new checkpoint settings").map_err(|e| e.to_string())?;
        }
        let settings = JobSettings::from_config(&config).map_err(|e| e.to_string())?;
        if settings.checkpoint.interval.is_some() != self.coordinator.enabled() {
            return Err(format!(
                "'{}' cannot turn checkpointing on or off while the job runs: stop it with a savepoint and start it again",
                weir_core::config::keys::CHECKPOINT_INTERVAL
            ));
        }
        self.coordinator.handle(now, Event::UpdateSettings(CoordinatorSettings::from(&settings.checkpoint)));
        self.config = config;
        self.config_changes.push((now.epoch_ms, pairs.to_vec()));
        Ok(())
    }

    /// The checkpoint settings changed while the job ran, oldest first.
    pub fn config_changes(&self) -> &[(i64, Vec<(String, String)>)] {
        &self.config_changes
    }

    /// The job id (a UUID without dashes).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lifecycle state.
    pub fn status(&self) -> JobStatus {
        self.status
    }

    /// The current attempt: 0 for the first, one more per restart (and per JobManager recovery).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The compiled JobGraph.
    pub fn graph(&self) -> &Arc<JobGraph> {
        &self.graph
    }

    /// The job's effective configuration, shipped to TaskManagers with every deployment.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the current attempt restores from.
    pub fn restore(&self) -> Option<&RestoreInfo> {
        self.restore.as_ref()
    }

    /// Checkpoint storage, when checkpointing or restoring.
    pub fn storage(&self) -> Option<&CheckpointStorage> {
        self.storage.as_ref()
    }

    /// The checkpoint coordinator (read-only: events go through [`Job::checkpoint`]).
    pub fn coordinator(&self) -> &CheckpointCoordinator {
        &self.coordinator
    }

    /// The TaskManagers holding the attempt's slots, each once, in slot order.
    pub fn taskmanagers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for tm in &self.slots {
            if !out.contains(tm) {
                out.push(tm.clone());
            }
        }
        out
    }

    /// The TaskManagers running at least one source subtask.
    pub fn source_taskmanagers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (slot, tm) in self.slots.iter().enumerate() {
            let hosts_source =
                self.graph.vertices.iter().any(|v| (slot as u32) < v.parallelism && self.graph.inputs_of(v.id).next().is_none());
            if hosts_source && !out.contains(tm) {
                out.push(tm.clone());
            }
        }
        out
    }

    /// Whether a slot of the current attempt is on TaskManager `tm`.
    pub fn runs_on(&self, tm: &str) -> bool {
        self.slots.iter().any(|s| s == tm)
    }

    /// Moves the lifecycle on. On a terminal state the end time is set.
    ///
    /// An event the current state does not allow is refused and changes nothing; callers
    /// that reached the event by a race (a cancel meanwhile, say) treat that as moot. Only
    /// the state changes here: freeing slots, canceling tasks, telling the coordinator and
    /// writing the catalog are up to the caller, from the state returned.
    pub fn apply(&mut self, event: LifecycleEvent, now: Now) -> Result<JobStatus, IllegalTransition> {
        let to = transition(self.status, event)?;
        if to != self.status {
            tracing::debug!(job = %self.id, from = %self.status, to = %to, "job state change");
        }
        self.status = to;
        if to.is_terminal() {
            self.end_ms = now.epoch_ms;
        }
        Ok(to)
    }

    /// Records the failure that ended or restarts the job.
    pub fn set_failure(&mut self, reason: &str) {
        self.failure = reason.to_string();
    }

    /// Consults the restart strategy on a failure: the delay before the next attempt, if any.
    /// A delay counts as a restart granted. How long the attempt ran is measured from the last
    /// time every subtask ran (or from submission), which exponential-delay compares with its
    /// reset threshold.
    pub fn restart_delay(&mut self, now: Now) -> Option<std::time::Duration> {
        self.restarts.on_failure(now.instant, now.instant.duration_since(self.running_since))
    }

    /// Slots were allocated on these TaskManagers: the attempt's subtasks are deploying.
    /// `slots[i]` is the TaskManager of slot i, which runs subtask i of every vertex; every
    /// subtask starts DEPLOYING with zero counters.
    pub fn assign_slots(&mut self, slots: Vec<String>) {
        self.tasks.clear();
        for v in &self.graph.vertices {
            for i in 0..v.parallelism {
                self.tasks.insert((v.id, i), TaskEntry { state: TaskState::Deploying, records_in: 0, records_out: 0 });
            }
        }
        self.slots = slots;
    }

    /// Gives up the attempt's slots; returns the TaskManagers that held them (with repeats:
    /// one per slot).
    pub fn take_slots(&mut self) -> Vec<String> {
        std::mem::take(&mut self.slots)
    }

    /// The TaskManager of slot `i`.
    pub fn slot(&self, i: u32) -> Option<&str> {
        self.slots.get(i as usize).map(String::as_str)
    }

    /// A new attempt: restores the newest completed checkpoint (or what the job started from).
    ///
    /// Called by the state on RESTARTING → CREATED. The subtask table is emptied, so reports
    /// still arriving for the old attempt find nothing to update; the coordinator hears of
    /// the new attempt separately (`Event::AttemptStarted`). Until a checkpoint of its own
    /// completed (always, without checkpoint storage), the job restarts from what its first
    /// attempt restored, or from nothing.
    pub fn next_attempt(&mut self) {
        self.attempt += 1;
        self.tasks.clear();
        self.restore = match (self.coordinator.restore_point(), self.storage.as_ref()) {
            // A stop-with-savepoint that completed (its sinks committed): its own folder.
            (Some((Some(location), meta)), _) => Some(RestoreInfo { storage_url: location.to_string(), metadata: meta.clone() }),
            (Some((None, meta)), Some(storage)) => Some(RestoreInfo { storage_url: storage.url().to_string(), metadata: meta.clone() }),
            _ => self.initial_restore.clone(),
        };
    }

    /// Records a subtask's state; false if the subtask is not one of the attempt's.
    /// The last subtask to report RUNNING restarts the clock of how long the attempt ran
    /// (see [`Job::restart_delay`]).
    pub fn record_task(&mut self, key: SubtaskKey, state: TaskState, records: (u64, u64), now: Now) -> bool {
        let Some(t) = self.tasks.get_mut(&key) else { return false };
        *t = TaskEntry { state, records_in: records.0, records_out: records.1 };
        if state == TaskState::TaskRunning && self.all_tasks(&[TaskState::TaskRunning]) {
            self.running_since = now.instant;
        }
        true
    }

    /// Whether every subtask is in one of `states`.
    pub fn all_tasks(&self, states: &[TaskState]) -> bool {
        self.tasks.values().all(|t| states.contains(&t.state))
    }

    /// `name (i/p)` of a subtask, for messages.
    pub fn subtask_name(&self, key: SubtaskKey) -> String {
        let v = self.graph.vertex(key.0);
        format!("{} ({}/{})", v.name, key.1 + 1, v.parallelism)
    }

    /// What the checkpoint coordinator sees of the tasks.
    pub fn task_view(&self) -> TaskView {
        let count = |s: TaskState| self.tasks.values().filter(|t| t.state == s).count();
        TaskView {
            job_active: self.status.tasks_active(),
            total: self.tasks.len(),
            running: count(TaskState::TaskRunning),
            finishing: count(TaskState::TaskFinishing),
            finished: count(TaskState::TaskFinished),
        }
    }

    /// Hands an event to the checkpoint coordinator.
    pub fn checkpoint(&mut self, now: Now, event: Event) -> Vec<Action> {
        self.coordinator.handle(now, event)
    }

    /// The job's catalog entry, with the next sequence number. Every call takes a new
    /// number, so call it once per entry to be written, at the decision that calls for it:
    /// the order of the numbers is then the order of the decisions, whatever order the
    /// writes run in.
    pub fn catalog_record(&mut self) -> (JobRecord, u64) {
        self.catalog_seq += 1;
        let record = JobRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            definition: self.definition.text.clone(),
            kind: self.definition.kind,
            origin: self.definition.origin.clone(),
            config: self.config.explicit().clone(),
            attempt: self.attempt,
            state: self.status.name().to_string(),
            restore_savepoint: self.coordinator.sync_savepoint().map(|s| s.location.clone()),
        };
        (record, self.catalog_seq)
    }

    /// The job as the CLI shows it (`weir status`, `weir list`): per vertex, how many
    /// subtasks run and finished, and their summed record counters as last reported.
    pub fn status_view(&self) -> weir_proto::JobStatus {
        let vertices = self
            .graph
            .vertices
            .iter()
            .map(|v| {
                let tasks: Vec<_> = self.tasks.iter().filter(|((vid, _), _)| *vid == v.id).map(|(_, t)| t).collect();
                VertexStatus {
                    name: v.name.clone(),
                    parallelism: v.parallelism,
                    running: tasks.iter().filter(|t| t.state == TaskState::TaskRunning).count() as u32,
                    finished: tasks.iter().filter(|t| t.state == TaskState::TaskFinished).count() as u32,
                    records_in: tasks.iter().map(|t| t.records_in).sum(),
                    records_out: tasks.iter().map(|t| t.records_out).sum(),
                }
            })
            .collect();
        weir_proto::JobStatus {
            job_id: self.id.clone(),
            name: self.name.clone(),
            state: self.status.proto() as i32,
            failure: self.failure.clone(),
            start_time_ms: self.start_ms,
            end_time_ms: self.end_ms,
            parallelism: self.graph.slots_needed(),
            vertices,
            attempt: self.attempt,
            restarts: self.restarts.restarts(),
            savepoint_path: self.coordinator.last_savepoint().unwrap_or_default().to_string(),
        }
    }
}

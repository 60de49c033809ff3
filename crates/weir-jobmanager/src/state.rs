//! The JobManager's cluster state: registered TaskManagers with their slots, and jobs with
//! the state of each of their subtasks. Every transition of a job happens here, under one
//! lock; side effects that talk to TaskManagers are returned to the caller or spawned after
//! the lock is released.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};
use tonic::transport::{Channel, Endpoint};
use weir_core::config::keys;
use weir_core::config::Config;
use weir_core::graph::JobGraph;
use weir_proto::task_manager_service_client::TaskManagerServiceClient;
use weir_proto::{CancelTasksRequest, JobState, JobStatus, PingRequest, TaskManagerInfo, TaskState, VertexStatus};
use weir_state::metadata::RestoreInfo;
use weir_state::CheckpointStorage;

pub(crate) struct TaskManagerEntry {
    pub id: String,
    pub rpc_address: String,
    pub data_address: String,
    pub slots: u32,
    pub used: u32,
    pub last_heartbeat: Instant,
    pub client: TaskManagerServiceClient<Channel>,
}

pub(crate) struct TaskEntry {
    pub state: TaskState,
    pub records_in: u64,
    pub records_out: u64,
}

pub(crate) struct Job {
    /// The job file as submitted and its origin, for the catalog.
    pub definition: (String, String),
    pub coordinator: crate::checkpoint::Coordinator,
    /// What the first attempt restores from (`weir run -s`).
    pub initial_restore: Option<RestoreInfo>,
    /// What the current attempt restores from.
    pub restore: Option<RestoreInfo>,
    pub restarts: u32,
    pub failure_times: Vec<Instant>,
    pub backoff: Option<Duration>,
    pub running_since: Instant,
    pub id: String,
    pub name: String,
    pub graph: Arc<JobGraph>,
    pub config: Config,
    pub state: JobState,
    pub failure: String,
    pub attempt: u32,
    pub start_ms: i64,
    pub end_ms: i64,
    pub tasks: BTreeMap<(u32, u32), TaskEntry>,
    /// The TaskManager of each allocated slot (slot i runs subtask i of every vertex).
    pub slots: Vec<String>,
}

impl Job {
    pub fn is_terminal(&self) -> bool {
        matches!(self.state, JobState::Finished | JobState::Failed | JobState::Canceled)
    }

    pub fn status(&self) -> JobStatus {
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
        JobStatus {
            job_id: self.id.clone(),
            name: self.name.clone(),
            state: self.state as i32,
            failure: self.failure.clone(),
            start_time_ms: self.start_ms,
            end_time_ms: self.end_ms,
            parallelism: self.graph.slots_needed(),
            vertices,
            attempt: self.attempt,
            restarts: self.restarts,
        }
    }
}

#[derive(Default)]
pub(crate) struct Inner {
    /// Jobs that reached a terminal state since the catalog was last written.
    pub ended: Vec<String>,
    pub tms: HashMap<String, TaskManagerEntry>,
    pub jobs: HashMap<String, Job>,
    pub job_order: Vec<String>,
}

pub struct JobManagerState {
    pub(crate) config: Config,
    pub(crate) catalog: Option<crate::catalog::Catalog>,
    pub(crate) inner: Mutex<Inner>,
    /// Signalled when slots may have become free (a TaskManager joined, a job ended).
    pub(crate) slots_changed: Notify,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn tm_client(rpc_address: &str) -> Option<TaskManagerServiceClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{rpc_address}"))
        .ok()?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30));
    Some(TaskManagerServiceClient::new(endpoint.connect_lazy()))
}

impl JobManagerState {
    pub(crate) fn new(config: Config, catalog: Option<crate::catalog::Catalog>) -> Self {
        Self { config, catalog, inner: Mutex::new(Inner::default()), slots_changed: Notify::new() }
    }

    pub(crate) fn register_tm(&self, id: &str, rpc_address: &str, data_address: &str, slots: u32) -> Result<(), String> {
        let client = tm_client(rpc_address).ok_or_else(|| format!("bad TaskManager RPC address '{rpc_address}'"))?;
        let mut inner = self.inner.lock();
        inner.tms.insert(
            id.to_string(),
            TaskManagerEntry {
                id: id.to_string(),
                rpc_address: rpc_address.to_string(),
                data_address: data_address.to_string(),
                slots,
                used: 0,
                last_heartbeat: Instant::now(),
                client,
            },
        );
        drop(inner);
        tracing::info!(taskmanager = id, rpc = rpc_address, slots, "TaskManager registered");
        self.slots_changed.notify_waiters();
        Ok(())
    }

    pub(crate) fn heartbeat(&self, id: &str) -> bool {
        match self.inner.lock().tms.get_mut(id) {
            Some(tm) => {
                tm.last_heartbeat = Instant::now();
                true
            }
            None => false,
        }
    }

    pub(crate) fn overview(&self) -> Vec<TaskManagerInfo> {
        let inner = self.inner.lock();
        let mut tms: Vec<_> = inner
            .tms
            .values()
            .map(|t| TaskManagerInfo {
                taskmanager_id: t.id.clone(),
                rpc_address: t.rpc_address.clone(),
                data_address: t.data_address.clone(),
                slots: t.slots,
                free_slots: t.slots - t.used,
            })
            .collect();
        tms.sort_by(|a, b| a.taskmanager_id.cmp(&b.taskmanager_id));
        tms
    }

    pub(crate) fn add_job(
        &self,
        name: String,
        graph: JobGraph,
        config: Config,
        restore: Option<RestoreInfo>,
        definition: (String, String),
    ) -> Result<String, String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.insert_job(id, name, graph, config, restore, definition, 0, 1)
    }

    /// Adds a job under a given id (a new one, or one recovered from the catalog at `attempt`
    /// with checkpoint ids continuing at `next_checkpoint`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert_job(
        &self,
        id: String,
        name: String,
        graph: JobGraph,
        config: Config,
        restore: Option<RestoreInfo>,
        definition: (String, String),
        attempt: u32,
        next_checkpoint: u64,
    ) -> Result<String, String> {
        let settings = crate::checkpoint::CheckpointSettings::from_config(&config);
        let storage = match config.text(keys::CHECKPOINT_DIR) {
            Some(url) => Some(CheckpointStorage::open(url, &config).map_err(|e| e.to_string())?),
            None => None,
        };
        let mut coordinator = crate::checkpoint::Coordinator::new(settings, storage);
        coordinator.next_id = next_checkpoint;
        let job = Job {
            definition,
            coordinator,
            initial_restore: restore.clone(),
            restore,
            restarts: 0,
            failure_times: Vec::new(),
            backoff: None,
            running_since: Instant::now(),
            id: id.clone(),
            name,
            graph: Arc::new(graph),
            config,
            state: JobState::Created,
            failure: String::new(),
            attempt,
            start_ms: now_ms(),
            end_ms: 0,
            tasks: BTreeMap::new(),
            slots: Vec::new(),
        };
        self.persist(&job);
        let mut inner = self.inner.lock();
        inner.jobs.insert(id.clone(), job);
        inner.job_order.push(id.clone());
        Ok(id)
    }

    /// Writes the catalog entries of jobs that ended since the last call.
    pub(crate) fn persist_ended(&self) {
        if self.catalog.is_none() {
            return;
        }
        let mut inner = self.inner.lock();
        let ended = std::mem::take(&mut inner.ended);
        for id in ended {
            if let Some(job) = inner.jobs.get(&id) {
                self.persist(job);
            }
        }
    }

    /// Writes the job's catalog entry (if the JobManager keeps a catalog).
    pub(crate) fn persist(&self, job: &Job) {
        if let Some(c) = &self.catalog {
            c.save(&crate::catalog::JobRecord {
                id: job.id.clone(),
                name: job.name.clone(),
                definition: job.definition.0.clone(),
                origin: job.definition.1.clone(),
                config: job.config.explicit().clone(),
                attempt: job.attempt,
                state: job.state.as_str_name().to_string(),
            });
        }
    }

    pub(crate) fn job_status(&self, id: &str) -> Option<JobStatus> {
        self.inner.lock().jobs.get(id).map(Job::status)
    }

    pub(crate) fn list_jobs(&self) -> Vec<JobStatus> {
        let inner = self.inner.lock();
        inner.job_order.iter().filter_map(|id| inner.jobs.get(id)).map(Job::status).collect()
    }

    /// Records a subtask's state change and moves the job on. Returns true if the task failed
    /// and the job should fail (after the caller probed the TaskManagers involved).
    pub(crate) fn task_update(
        &self,
        job_id: &str,
        attempt: u32,
        key: (u32, u32),
        state: TaskState,
        records: (u64, u64),
    ) -> Option<(JobState, String)> {
        let mut inner = self.inner.lock();
        let job = inner.jobs.get_mut(job_id)?;
        if job.attempt != attempt {
            return None;
        }
        if let Some(t) = job.tasks.get_mut(&key) {
            t.state = state;
            t.records_in = records.0;
            t.records_out = records.1;
        }
        if job.is_terminal() {
            return None;
        }
        let all = |s: &[TaskState]| job.tasks.values().all(|t| s.contains(&t.state));
        match (job.state, state) {
            (JobState::Running, TaskState::TaskFailed) => Some((JobState::Failed, String::new())),
            (JobState::Running, TaskState::TaskRunning) if all(&[TaskState::TaskRunning]) => {
                job.running_since = Instant::now();
                None
            }
            (JobState::Running, TaskState::TaskFinished) if all(&[TaskState::TaskFinished]) => {
                Self::end_job(&mut inner, job_id, JobState::Finished, "");
                drop(inner);
                self.slots_changed.notify_waiters();
                Some((JobState::Finished, String::new()))
            }
            (JobState::Canceling, _) if all(&[TaskState::TaskFinished, TaskState::TaskCanceled, TaskState::TaskFailed]) => {
                Self::end_job(&mut inner, job_id, JobState::Canceled, "");
                drop(inner);
                self.slots_changed.notify_waiters();
                Some((JobState::Canceled, String::new()))
            }
            _ => None,
        }
    }

    /// Moves a job to a terminal state and frees its slots. Returns the TaskManagers that may
    /// still run its tasks, to cancel them.
    fn end_job(
        inner: &mut Inner,
        job_id: &str,
        state: JobState,
        failure: &str,
    ) -> Vec<(TaskManagerServiceClient<Channel>, CancelTasksRequest)> {
        let Some(job) = inner.jobs.get_mut(job_id) else { return Vec::new() };
        if job.is_terminal() {
            return Vec::new();
        }
        job.state = state;
        job.failure = failure.to_string();
        job.end_ms = now_ms();
        job.coordinator.abort_all(&format!("job {}", state.as_str_name()));
        inner.ended.push(job_id.to_string());
        let cancels = Self::release_slots(inner, job_id, state != JobState::Finished);
        match state {
            JobState::Failed => tracing::warn!(job = job_id, "job failed: {failure}"),
            s => tracing::info!(job = job_id, "job {}", s.as_str_name()),
        }
        cancels
    }

    /// A job failed: it restarts from its latest completed checkpoint if its restart strategy
    /// allows, and otherwise ends FAILED. Its remaining tasks are canceled either way.
    /// `attempt`: the attempt the failure belongs to (a failure of an older attempt is moot).
    pub(crate) fn fail_job(self: &Arc<Self>, job_id: &str, attempt: Option<u32>, reason: &str) {
        let mut inner = self.inner.lock();
        let delay = match inner.jobs.get_mut(job_id) {
            Some(job) if attempt.is_some_and(|a| a != job.attempt) => return,
            Some(job) if job.state == JobState::Running || job.state == JobState::Created => crate::restart::next_delay(job),
            _ => return,
        };
        let cancels = match delay {
            None => Self::end_job(&mut inner, job_id, JobState::Failed, reason),
            Some(delay) => {
                let cancels = Self::begin_restart(&mut inner, job_id, reason);
                let state = self.clone();
                let id = job_id.to_string();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    state.finish_restart(&id);
                });
                cancels
            }
        };
        drop(inner);
        self.slots_changed.notify_waiters();
        spawn_cancels(cancels);
    }

    /// RESTARTING: the attempt's tasks are canceled and its slots freed.
    fn begin_restart(inner: &mut Inner, job_id: &str, reason: &str) -> Vec<(TaskManagerServiceClient<Channel>, CancelTasksRequest)> {
        let Some(job) = inner.jobs.get_mut(job_id) else { return Vec::new() };
        job.state = JobState::Restarting;
        job.failure = reason.to_string();
        job.restarts += 1;
        job.coordinator.abort_all("job restarting");
        job.coordinator.reset_final();
        tracing::warn!(job = job_id, restarts = job.restarts, "job failed, restarting: {reason}");
        Self::release_slots(inner, job_id, true)
    }

    /// Frees the slots of a job's current attempt; with `cancel`, returns one cancel call per
    /// TaskManager that ran its tasks.
    fn release_slots(inner: &mut Inner, job_id: &str, cancel: bool) -> Vec<(TaskManagerServiceClient<Channel>, CancelTasksRequest)> {
        let Some(job) = inner.jobs.get_mut(job_id) else { return Vec::new() };
        let slots = std::mem::take(&mut job.slots);
        let attempt = job.attempt;
        let mut cancels = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for tm in &slots {
            if let Some(entry) = inner.tms.get_mut(tm) {
                entry.used = entry.used.saturating_sub(1);
                if cancel && seen.insert(tm.clone()) {
                    cancels.push((entry.client.clone(), CancelTasksRequest { job_id: job_id.to_string(), attempt }));
                }
            }
        }
        cancels
    }

    /// After the restart delay: a new attempt, restoring the latest completed checkpoint.
    fn finish_restart(self: &Arc<Self>, job_id: &str) {
        {
            let mut inner = self.inner.lock();
            let Some(job) = inner.jobs.get_mut(job_id) else { return };
            if job.state != JobState::Restarting {
                return;
            }
            job.attempt += 1;
            job.state = JobState::Created;
            job.tasks.clear();
            job.restore = match (job.coordinator.latest(), job.coordinator.storage.as_ref()) {
                (Some(meta), Some(storage)) => Some(RestoreInfo { storage_url: storage.url().to_string(), metadata: meta.clone() }),
                _ => job.initial_restore.clone(),
            };
            tracing::info!(
                job = job_id,
                attempt = job.attempt,
                checkpoint = job.restore.as_ref().map(|r| r.metadata.checkpoint_id),
                "redeploying"
            );
            self.persist(job);
        }
        tokio::spawn(crate::scheduler::schedule(self.clone(), job_id.to_string()));
    }

    /// Cancels a job on the user's request.
    pub(crate) fn cancel_job(&self, job_id: &str) -> Result<(), String> {
        let mut inner = self.inner.lock();
        let job = inner.jobs.get_mut(job_id).ok_or_else(|| format!("no job with id {job_id}"))?;
        match job.state {
            JobState::Created => {
                let cancels = Self::end_job(&mut inner, job_id, JobState::Canceled, "");
                drop(inner);
                spawn_cancels(cancels);
            }
            JobState::Running => {
                job.state = JobState::Canceling;
                let attempt = job.attempt;
                let tms: std::collections::HashSet<String> = job.slots.iter().cloned().collect();
                let cancels: Vec<_> = tms
                    .iter()
                    .filter_map(|tm| inner.tms.get(tm))
                    .map(|e| (e.client.clone(), CancelTasksRequest { job_id: job_id.to_string(), attempt }))
                    .collect();
                drop(inner);
                spawn_cancels(cancels);
            }
            _ => {}
        }
        self.slots_changed.notify_waiters();
        Ok(())
    }

    /// Removes a TaskManager and fails every unfinished job that has a subtask on it.
    pub(crate) fn taskmanager_lost(self: &Arc<Self>, tm_id: &str, why: &str) {
        let mut inner = self.inner.lock();
        let Some(tm) = inner.tms.remove(tm_id) else { return };
        tracing::warn!(taskmanager = tm_id, "TaskManager lost: {why}");
        let reason = format!("TaskManager {tm_id} ({}) lost: {why}", tm.rpc_address);
        let affected: Vec<String> =
            inner.jobs.values().filter(|j| !j.is_terminal() && j.slots.iter().any(|s| s == tm_id)).map(|j| j.id.clone()).collect();
        let mut cancels = Vec::new();
        let mut failed = Vec::new();
        for job in affected {
            if inner.jobs.get(&job).is_some_and(|j| j.state == JobState::Canceling) {
                cancels.extend(Self::end_job(&mut inner, &job, JobState::Canceled, ""));
            } else {
                failed.push(job);
            }
        }
        drop(inner);
        for job in failed {
            self.fail_job(&job, None, &reason);
        }
        self.slots_changed.notify_waiters();
        spawn_cancels(cancels);
    }

    /// After a task failure: probes the job's TaskManagers, declares the unreachable ones lost
    /// (so the job fails naming the TaskManager that died, not the peer that noticed), then
    /// fails the job with the task's reason if it is still running.
    pub(crate) async fn handle_task_failure(self: Arc<Self>, job_id: String, attempt: u32, reason: String) {
        let probes: Vec<_> = {
            let inner = self.inner.lock();
            let Some(job) = inner.jobs.get(&job_id) else { return };
            let tms: std::collections::HashSet<_> = job.slots.iter().cloned().collect();
            tms.into_iter().filter_map(|t| inner.tms.get(&t).map(|e| (t, e.client.clone()))).collect()
        };
        for (tm, mut client) in probes {
            let ping = tokio::time::timeout(Duration::from_secs(3), client.ping(PingRequest {})).await;
            match ping {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => self.taskmanager_lost(&tm, &format!("unreachable ({})", e.message())),
                Err(_) => self.taskmanager_lost(&tm, "unreachable (no answer within 3s)"),
            }
        }
        self.fail_job(&job_id, Some(attempt), &reason);
    }
}

fn spawn_cancels(cancels: Vec<(TaskManagerServiceClient<Channel>, CancelTasksRequest)>) {
    for (mut client, req) in cancels {
        tokio::spawn(async move {
            if let Err(e) = client.cancel_job(req).await {
                tracing::debug!("cancel call failed: {}", e.message());
            }
        });
    }
}

/// Declares TaskManagers lost when they miss heartbeats for `timeout`.
pub(crate) async fn heartbeat_monitor(state: Arc<JobManagerState>, timeout: Duration, mut shutdown: watch::Receiver<bool>) {
    let tick = (timeout / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        state.persist_ended();
        let lost: Vec<String> =
            state.inner.lock().tms.values().filter(|t| t.last_heartbeat.elapsed() > timeout).map(|t| t.id.clone()).collect();
        for tm in lost {
            state.taskmanager_lost(&tm, &format!("no heartbeat for {}", humanize(timeout)));
        }
    }
}

pub(crate) fn humanize(d: Duration) -> String {
    if d.as_millis() % 1000 == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

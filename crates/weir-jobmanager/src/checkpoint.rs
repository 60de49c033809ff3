//! The CheckpointCoordinator of one job.
//!
//! It triggers checkpoint n every `execution.checkpointing.interval` (respecting `min-pause`
//! after the last completion and `max-concurrent-checkpoints`), by a gRPC call to the
//! TaskManagers running the job's source subtasks. Every subtask acknowledges with its state
//! handles once its snapshot is uploaded. When all have, the coordinator writes `_metadata`
//! (last: its presence is what makes n complete), tells every TaskManager (two-phase-commit
//! sinks commit), subsumes older pending checkpoints, and deletes completed checkpoints beyond
//! `num-retained` together with the shared files no retained checkpoint references. A
//! checkpoint not complete within `timeout`, or declined by a subtask, fails; more than
//! `tolerable-failed-checkpoints` failures in a row fail the job.
//!
//! Checkpoint ids grow across restarts of the job, so a late acknowledgement of an old attempt
//! never counts for a new one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};
use weir_core::config::{keys, Config};
use weir_core::graph::JobGraph;
use weir_proto::{CheckpointInfo, CheckpointStatus};
use weir_state::metadata::{CheckpointMetadata, OperatorState, SubtaskState};
use weir_state::registry::SharedStateRegistry;
use weir_state::CheckpointStorage;

#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    pub interval: Duration,
    pub min_pause: Duration,
    pub max_concurrent: usize,
    pub timeout: Duration,
    pub tolerable_failures: u64,
    pub num_retained: usize,
}

impl CheckpointSettings {
    pub fn from_config(c: &Config) -> Option<Self> {
        Some(Self {
            interval: c.optional_duration(keys::CHECKPOINT_INTERVAL)?,
            min_pause: c.duration(keys::CHECKPOINT_MIN_PAUSE),
            max_concurrent: c.int(keys::CHECKPOINT_MAX_CONCURRENT) as usize,
            timeout: c.duration(keys::CHECKPOINT_TIMEOUT),
            tolerable_failures: c.int(keys::CHECKPOINT_TOLERABLE_FAILED),
            num_retained: c.int(keys::CHECKPOINT_NUM_RETAINED) as usize,
        })
    }
}

pub(crate) struct PendingCheckpoint {
    pub attempt: u32,
    pub started: Instant,
    pub acks: HashMap<(u32, u32), Vec<(String, SubtaskState)>>,
    pub total: usize,
}

/// One row of `weir checkpoints`.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointRecord {
    pub id: u64,
    pub status: CheckpointStatus,
    pub trigger_ms: i64,
    pub duration_ms: u64,
    pub size: u64,
    pub alignment_ms: u64,
    pub failure: String,
    pub acknowledged: u32,
    pub total: u32,
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
        }
    }
}

/// The coordinator's state, kept in the job under the JobManager's lock.
pub(crate) struct Coordinator {
    pub settings: Option<CheckpointSettings>,
    pub storage: Option<CheckpointStorage>,
    pub next_id: u64,
    pub pending: BTreeMap<u64, PendingCheckpoint>,
    pub last_trigger: Option<Instant>,
    pub last_completion: Option<Instant>,
    pub consecutive_failures: u64,
    /// Completed checkpoints still retained, oldest first.
    pub retained: VecDeque<CheckpointMetadata>,
    pub registry: SharedStateRegistry,
    pub history: Vec<CheckpointRecord>,
    /// The final checkpoint of the current attempt, once every task's input ended, and
    /// whether it completed (it is triggered once: tasks finish when it completes).
    pub final_id: Option<u64>,
    pub final_completed: bool,
}

impl Coordinator {
    pub fn new(settings: Option<CheckpointSettings>, storage: Option<CheckpointStorage>) -> Self {
        Self {
            settings,
            storage,
            next_id: 1,
            pending: BTreeMap::new(),
            last_trigger: None,
            last_completion: None,
            consecutive_failures: 0,
            retained: VecDeque::new(),
            registry: SharedStateRegistry::new(),
            history: Vec::new(),
            final_id: None,
            final_completed: false,
        }
    }

    pub fn record(&mut self, id: u64) -> Option<&mut CheckpointRecord> {
        self.history.iter_mut().rev().find(|r| r.id == id)
    }

    /// Whether a periodic checkpoint is due now.
    pub fn due(&self, now: Instant) -> bool {
        let Some(s) = &self.settings else { return false };
        if self.pending.len() >= s.max_concurrent {
            return false;
        }
        if self.last_completion.is_some_and(|t| now < t + s.min_pause) {
            return false;
        }
        self.last_trigger.is_none_or(|t| now >= t + s.interval)
    }

    /// Registers checkpoint `id` as triggered for `attempt` with `total` subtasks to hear from.
    pub fn start(&mut self, attempt: u32, total: usize, now: Instant, now_ms: i64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.last_trigger = Some(now);
        self.pending.insert(id, PendingCheckpoint { attempt, started: now, acks: HashMap::new(), total });
        self.history.push(CheckpointRecord {
            id,
            status: CheckpointStatus::InProgress,
            trigger_ms: now_ms,
            duration_ms: 0,
            size: 0,
            alignment_ms: 0,
            failure: String::new(),
            acknowledged: 0,
            total: total as u32,
        });
        id
    }

    /// Marks a pending checkpoint failed. Returns true if the job exceeded its tolerance.
    pub fn fail(&mut self, id: u64, reason: &str) -> bool {
        if self.final_id == Some(id) {
            self.final_id = None; // the final checkpoint is triggered again
        }
        let Some(p) = self.pending.remove(&id) else { return false };
        let elapsed = p.started.elapsed().as_millis() as u64;
        if let Some(r) = self.record(id) {
            r.status = CheckpointStatus::CheckpointFailed;
            r.failure = reason.to_string();
            r.duration_ms = elapsed;
        }
        if reason.starts_with("subsumed") || reason.starts_with("job ") {
            return false;
        }
        self.consecutive_failures += 1;
        let tolerable = self.settings.as_ref().map_or(0, |s| s.tolerable_failures);
        self.consecutive_failures > tolerable
    }

    /// A new attempt starts: it will take its own final checkpoint.
    pub fn reset_final(&mut self) {
        self.final_id = None;
        self.final_completed = false;
    }

    /// Fails every pending checkpoint (the job is restarting or ending).
    pub fn abort_all(&mut self, reason: &str) {
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            self.fail(id, reason);
        }
    }

    /// Checkpoints past their timeout.
    pub fn expired(&self, now: Instant) -> Vec<u64> {
        let Some(s) = &self.settings else { return Vec::new() };
        self.pending.iter().filter(|(_, p)| now.duration_since(p.started) > s.timeout).map(|(id, _)| *id).collect()
    }

    /// Adds an acknowledgement; returns the metadata to write if it was the last one.
    pub fn acknowledge(
        &mut self,
        job_id: &str,
        graph: &JobGraph,
        id: u64,
        key: (u32, u32),
        states: Vec<(String, SubtaskState)>,
        alignment_ms: u64,
        size: u64,
        now_ms: i64,
    ) -> Option<CheckpointMetadata> {
        let p = self.pending.get_mut(&id)?;
        if p.acks.insert(key, states).is_some() {
            return None;
        }
        let (count, total) = (p.acks.len(), p.total);
        if let Some(r) = self.record(id) {
            r.acknowledged = count as u32;
            r.size += size;
            r.alignment_ms = r.alignment_ms.max(alignment_ms);
        }
        if count < total {
            return None;
        }
        let p = self.pending.remove(&id).expect("present");
        let mut operators = Vec::new();
        for v in &graph.vertices {
            for op in &v.operators {
                let subtasks: Vec<SubtaskState> = (0..v.parallelism)
                    .map(|i| {
                        p.acks
                            .get(&(v.id, i))
                            .and_then(|s| s.iter().find(|(uid, _)| uid == &op.uid))
                            .map(|(_, s)| s.clone())
                            .unwrap_or_default()
                    })
                    .collect();
                if subtasks.iter().any(|s| !s.keyed.is_empty() || s.operator.is_some()) {
                    operators.push(OperatorState {
                        uid: op.uid.clone(),
                        parallelism: v.parallelism,
                        max_parallelism: graph.max_parallelism,
                        subtasks,
                    });
                }
            }
        }
        Some(CheckpointMetadata { job_id: job_id.to_string(), checkpoint_id: id, timestamp_ms: now_ms, savepoint: false, operators })
    }

    /// Records a completion whose `_metadata` is written; returns the checkpoints to discard
    /// (beyond num-retained) and the older pending ones it subsumes.
    pub fn completed(&mut self, meta: CheckpointMetadata, now: Instant) -> (Vec<u64>, Vec<u64>) {
        let id = meta.checkpoint_id;
        if self.final_id == Some(id) {
            self.final_completed = true;
        }
        self.consecutive_failures = 0;
        self.last_completion = Some(now);
        let size = meta.size();
        if let Some(r) = self.record(id) {
            r.status = CheckpointStatus::Completed;
            r.duration_ms = (weir_now_ms() - r.trigger_ms).max(0) as u64;
            r.size = size;
        }
        self.registry.register(id, meta.keyed_handles());
        self.retained.push_back(meta);
        let keep = self.settings.as_ref().map_or(1, |s| s.num_retained).max(1);
        let mut discard = Vec::new();
        while self.retained.len() > keep {
            if let Some(old) = self.retained.pop_front() {
                discard.push(old.checkpoint_id);
            }
        }
        let subsumed: Vec<u64> = self.pending.range(..id).map(|(k, _)| *k).collect();
        for s in &subsumed {
            self.fail(*s, &format!("subsumed by checkpoint {id}"));
        }
        (discard, subsumed)
    }

    pub fn latest(&self) -> Option<&CheckpointMetadata> {
        self.retained.back()
    }
}

fn weir_now_ms() -> i64 {
    crate::state::now_ms()
}

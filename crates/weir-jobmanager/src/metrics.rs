//! Live task metrics as the TaskManagers' heartbeats bring them (at least once a second), and a
//! short history per job for the web UI's plots.
//!
//! A heartbeat carries, for each running task, counters since the task started (rows, bytes,
//! busy/idle/backpressured time) and gauges (queues, credit, last checkpoint). Rates are
//! derived here from two readings of the same subtask at least [`RATE_WINDOW`] apart (in the
//! task's own uptime), as Flink's `MeterView` does: `numRecordsInPerSecond` is the difference
//! of the counters over the difference of the uptimes; `busyTimeMsPerSecond` the share of that
//! time spent busy, in ms per second. A window shorter than a second would show a task that
//! sends a large batch every few hundred ms as bursts and silences.
//!
//! Memory is bounded: readings of the current attempt only (an attempt's first report drops
//! the previous one's), at most [`HISTORY_POINTS`] points per job (one per second: five
//! minutes), and at most [`MAX_JOBS`] jobs (the least recently reported goes first). The store
//! has its own lock, never the cluster state's.

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};
use weir_proto::{CheckpointInfo, CheckpointStatus, JobStatus, TaskManagerInfo, TaskMetrics};

/// History points kept per job: one a second, five minutes.
pub(crate) const HISTORY_POINTS: usize = 300;
/// Jobs whose metrics are kept.
const MAX_JOBS: usize = 100;
/// One history point per job at most this often.
const HISTORY_EVERY: Duration = Duration::from_secs(1);
/// Rates are measured over at least this much of a task's uptime.
pub(crate) const RATE_WINDOW_MS: u64 = 1000;

/// What one subtask last reported, where from, and the rates since its reading before.
#[derive(Debug, Clone)]
pub(crate) struct SubtaskMetrics {
    pub taskmanager: String,
    pub latest: TaskMetrics,
    pub rates: Rates,
    /// The reading the current rate window started with.
    base: TaskMetrics,
}

/// Per-second rates of one subtask (or summed / maximised over a vertex's subtasks).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Rates {
    pub num_records_in_per_second: f64,
    pub num_records_out_per_second: f64,
    pub num_bytes_in_per_second: f64,
    pub num_bytes_out_per_second: f64,
    pub busy_time_ms_per_second: f64,
    pub idle_time_ms_per_second: f64,
    pub back_pressured_time_ms_per_second: f64,
}

impl Rates {
    /// The rates between two readings of one subtask (`before`: none, since the task started).
    fn between(before: Option<&TaskMetrics>, now: &TaskMetrics) -> Rates {
        let zero = TaskMetrics::default();
        let b = before.filter(|b| b.uptime_ms < now.uptime_ms).unwrap_or(&zero);
        let dt = (now.uptime_ms - b.uptime_ms).max(1) as f64;
        let per_s = |x: u64, y: u64| x.saturating_sub(y) as f64 * 1000.0 / dt;
        Rates {
            num_records_in_per_second: per_s(now.records_in, b.records_in),
            num_records_out_per_second: per_s(now.records_out, b.records_out),
            num_bytes_in_per_second: per_s(now.bytes_in, b.bytes_in),
            num_bytes_out_per_second: per_s(now.bytes_out, b.bytes_out),
            busy_time_ms_per_second: per_s(now.busy_ms, b.busy_ms).min(1000.0),
            idle_time_ms_per_second: per_s(now.idle_ms, b.idle_ms).min(1000.0),
            back_pressured_time_ms_per_second: per_s(now.backpressured_ms, b.backpressured_ms).min(1000.0),
        }
    }

    /// A vertex's rates: throughput summed over its subtasks, time shares of its busiest one
    /// (the most backpressured one for backpressure), as Flink's web UI colours a vertex.
    fn combine(rates: impl Iterator<Item = Rates>) -> Rates {
        rates.fold(Rates::default(), |a, r| Rates {
            num_records_in_per_second: a.num_records_in_per_second + r.num_records_in_per_second,
            num_records_out_per_second: a.num_records_out_per_second + r.num_records_out_per_second,
            num_bytes_in_per_second: a.num_bytes_in_per_second + r.num_bytes_in_per_second,
            num_bytes_out_per_second: a.num_bytes_out_per_second + r.num_bytes_out_per_second,
            busy_time_ms_per_second: a.busy_time_ms_per_second.max(r.busy_time_ms_per_second),
            idle_time_ms_per_second: a.idle_time_ms_per_second.max(r.idle_time_ms_per_second),
            back_pressured_time_ms_per_second: a.back_pressured_time_ms_per_second.max(r.back_pressured_time_ms_per_second),
        })
    }
}

/// One point of a job's history: each vertex's rates and queues at one instant.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HistoryPoint {
    /// Milliseconds since the epoch.
    pub time: i64,
    pub vertices: Vec<VertexPoint>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VertexPoint {
    pub id: u32,
    #[serde(flatten)]
    pub rates: Rates,
    pub input_queue_length: u64,
    pub output_queue_length: u64,
}

/// One job's metrics.
struct JobMetrics {
    attempt: u32,
    subtasks: BTreeMap<(u32, u32), SubtaskMetrics>,
    history: VecDeque<HistoryPoint>,
    last_point: Option<Instant>,
    updated: Instant,
}

/// The live metrics of every job (see the module header).
#[derive(Default)]
pub(crate) struct MetricsStore {
    jobs: Mutex<HashMap<String, JobMetrics>>,
}

impl MetricsStore {
    /// Takes one heartbeat's readings. A reading of an older attempt than the job's latest is
    /// dropped; one of a newer attempt starts the job's metrics afresh (history included).
    pub fn report(&self, taskmanager: &str, readings: Vec<TaskMetrics>, now_ms: i64) {
        let now = Instant::now();
        let mut jobs = self.jobs.lock();
        let mut touched = Vec::new();
        for m in readings {
            let Some(e) = m.execution.clone() else { continue };
            let job = jobs.entry(e.job_id.clone()).or_insert_with(|| JobMetrics {
                attempt: e.attempt,
                subtasks: BTreeMap::new(),
                history: VecDeque::new(),
                last_point: None,
                updated: now,
            });
            if e.attempt < job.attempt {
                continue;
            }
            if e.attempt > job.attempt {
                *job =
                    JobMetrics { attempt: e.attempt, subtasks: BTreeMap::new(), history: VecDeque::new(), last_point: None, updated: now };
            }
            let key = (e.vertex, e.subtask);
            let (rates, base) = match job.subtasks.get(&key) {
                // A window that is over: rates over it, and the next one starts here.
                Some(s) if m.uptime_ms >= s.base.uptime_ms + RATE_WINDOW_MS || m.uptime_ms < s.base.uptime_ms => {
                    (Rates::between(Some(&s.base), &m), m.clone())
                }
                Some(s) => (s.rates, s.base.clone()),
                None => (Rates::between(None, &m), m.clone()),
            };
            job.subtasks.insert(key, SubtaskMetrics { taskmanager: taskmanager.to_string(), latest: m, rates, base });
            job.updated = now;
            touched.push(e.job_id);
        }
        for id in touched {
            let Some(job) = jobs.get_mut(&id) else { continue };
            if job.last_point.is_some_and(|t| now.duration_since(t) < HISTORY_EVERY) {
                continue;
            }
            job.last_point = Some(now);
            let vertices = vertex_ids(&job.subtasks)
                .into_iter()
                .map(|v| {
                    let subtasks: Vec<&SubtaskMetrics> = job.subtasks.range((v, 0)..=(v, u32::MAX)).map(|(_, s)| s).collect();
                    VertexPoint {
                        id: v,
                        rates: Rates::combine(subtasks.iter().map(|s| s.rates)),
                        input_queue_length: subtasks.iter().map(|s| s.latest.input_queue).sum(),
                        output_queue_length: subtasks.iter().map(|s| s.latest.output_queue).sum(),
                    }
                })
                .collect();
            job.history.push_back(HistoryPoint { time: now_ms, vertices });
            while job.history.len() > HISTORY_POINTS {
                job.history.pop_front();
            }
        }
        while jobs.len() > MAX_JOBS {
            let oldest = jobs.iter().min_by_key(|(_, j)| j.updated).map(|(id, _)| id.clone()).expect("not empty");
            jobs.remove(&oldest);
        }
    }

    /// Every subtask's last reading of a job, by (vertex, subtask).
    pub fn subtasks(&self, job: &str) -> BTreeMap<(u32, u32), SubtaskMetrics> {
        self.jobs.lock().get(job).map(|j| j.subtasks.clone()).unwrap_or_default()
    }

    /// A job's history, oldest first.
    pub fn history(&self, job: &str) -> Vec<HistoryPoint> {
        self.jobs.lock().get(job).map(|j| j.history.iter().cloned().collect()).unwrap_or_default()
    }

    /// The readings of every job, for `/metrics`.
    pub fn all(&self) -> Vec<(String, BTreeMap<(u32, u32), SubtaskMetrics>)> {
        self.jobs.lock().iter().map(|(id, j)| (id.clone(), j.subtasks.clone())).collect()
    }
}

fn vertex_ids(subtasks: &BTreeMap<(u32, u32), SubtaskMetrics>) -> Vec<u32> {
    let mut ids: Vec<u32> = subtasks.keys().map(|(v, _)| *v).collect();
    ids.dedup();
    ids
}

/// The metrics of one subtask, or of a vertex's subtasks combined, in the REST API's JSON:
/// Flink's metric names (`numRecordsIn`, `busyTimeMsPerSecond`, …), see `docs/metrics.md`.
pub(crate) fn metrics_json<'a>(subtasks: impl IntoIterator<Item = &'a SubtaskMetrics>) -> Value {
    let subtasks: Vec<&SubtaskMetrics> = subtasks.into_iter().collect();
    let sum = |f: fn(&TaskMetrics) -> u64| subtasks.iter().map(|s| f(&s.latest)).sum::<u64>();
    let max = |f: fn(&TaskMetrics) -> u64| subtasks.iter().map(|s| f(&s.latest)).max().unwrap_or(0);
    let rates = Rates::combine(subtasks.iter().map(|s| s.rates));
    let mut v = json!({
        "numRecordsIn": sum(|m| m.records_in),
        "numRecordsOut": sum(|m| m.records_out),
        "numBytesIn": sum(|m| m.bytes_in),
        "numBytesOut": sum(|m| m.bytes_out),
        "inputQueueLength": sum(|m| m.input_queue),
        "inputCredit": sum(|m| m.input_credit),
        "outputQueueLength": sum(|m| m.output_queue),
        "outputCredit": sum(|m| m.output_credit),
        "debloatedBufferSize": max(|m| m.debloated_buffer_size),
        "stateSize": sum(|m| m.state_size),
        "lastCheckpointId": subtasks.iter().map(|s| s.latest.checkpoint_id).min().unwrap_or(0),
        "lastCheckpointSyncDuration": max(|m| m.checkpoint_sync_ms),
        "lastCheckpointAsyncDuration": max(|m| m.checkpoint_async_ms),
        "lastCheckpointAlignmentDuration": max(|m| m.checkpoint_alignment_ms),
        "lastCheckpointPersistedData": sum(|m| m.checkpoint_persisted_bytes),
    });
    if let (Value::Object(o), Ok(Value::Object(r))) = (&mut v, serde_json::to_value(rates)) {
        o.extend(r);
    }
    v
}

/// The JobManager's `/metrics` in the OpenMetrics text format: the cluster (TaskManagers and
/// slots), jobs by state, each running job (uptime, restarts, checkpoints from `histories`),
/// and every running task as the heartbeats last reported it (see `docs/metrics.md`).
pub(crate) fn prometheus(
    tms: &[TaskManagerInfo],
    jobs: &[JobStatus],
    histories: &HashMap<String, Vec<CheckpointInfo>>,
    store: &MetricsStore,
    now_ms: i64,
) -> String {
    use weir_proto::metrics::{render, task_families, task_labels, Family, TaskSeries, Value as M};
    let mut families = vec![
        Family { name: "weir_taskmanagers", help: "Registered TaskManagers.", series: vec![(vec![], M::Gauge(tms.len() as i64))] },
        Family {
            name: "weir_slots_total",
            help: "Task slots of the registered TaskManagers.",
            series: vec![(vec![], M::Gauge(tms.iter().map(|t| t.slots as i64).sum()))],
        },
        Family {
            name: "weir_slots_available",
            help: "Task slots no job holds.",
            series: vec![(vec![], M::Gauge(tms.iter().map(|t| t.free_slots as i64).sum()))],
        },
    ];
    let mut by_state: BTreeMap<&str, i64> = BTreeMap::new();
    for j in jobs {
        *by_state.entry(weir_proto::job_state_name(j.state)).or_default() += 1;
    }
    families.push(Family {
        name: "weir_jobs",
        help: "Jobs this JobManager knows, by state.",
        series: by_state.into_iter().map(|(s, n)| (vec![("state".to_string(), s.to_string())], M::Gauge(n))).collect(),
    });
    let labels = |j: &JobStatus| vec![("job_id".to_string(), j.job_id.clone()), ("job_name".to_string(), j.name.clone())];
    let running: Vec<&JobStatus> = jobs.iter().filter(|j| j.end_time_ms == 0).collect();
    let (mut uptime, mut restarts, mut checkpoints) = (Vec::new(), Vec::new(), Vec::new());
    let (mut last_duration, mut last_size, mut last_persisted) = (Vec::new(), Vec::new(), Vec::new());
    for j in &running {
        uptime.push((labels(j), M::GaugeF((now_ms - j.start_time_ms).max(0) as f64 / 1000.0)));
        restarts.push((labels(j), M::Counter(j.restarts as u64)));
        let history = histories.get(&j.job_id).map_or(&[][..], Vec::as_slice);
        for (status, name) in [
            (CheckpointStatus::Completed, "completed"),
            (CheckpointStatus::CheckpointFailed, "failed"),
            (CheckpointStatus::InProgress, "in_progress"),
        ] {
            let mut l = labels(j);
            l.push(("status".to_string(), name.to_string()));
            checkpoints.push((l, M::Gauge(history.iter().filter(|c| c.status == status as i32).count() as i64)));
        }
        if let Some(c) = history.iter().filter(|c| c.status == CheckpointStatus::Completed as i32 && !c.savepoint).max_by_key(|c| c.id) {
            last_duration.push((labels(j), M::GaugeF(c.duration_ms as f64 / 1000.0)));
            last_size.push((labels(j), M::Gauge(c.size_bytes as i64)));
            last_persisted.push((labels(j), M::Gauge(c.inflight_bytes as i64)));
        }
    }
    families.extend([
        Family { name: "weir_job_uptime_seconds", help: "Time since the job was submitted.", series: uptime },
        Family { name: "weir_job_restarts", help: "Times the job restarted after a failure.", series: restarts },
        Family { name: "weir_job_checkpoints", help: "The job's checkpoints in its history, by status.", series: checkpoints },
        Family {
            name: "weir_job_last_checkpoint_duration_seconds",
            help: "End-to-end duration of the job's last completed checkpoint.",
            series: last_duration,
        },
        Family { name: "weir_job_last_checkpoint_size_bytes", help: "Bytes of the job's last completed checkpoint.", series: last_size },
        Family {
            name: "weir_job_last_checkpoint_persisted_bytes",
            help: "In-flight bytes the job's last completed checkpoint persisted.",
            series: last_persisted,
        },
    ]);
    let by_id: HashMap<&str, &JobStatus> = running.iter().map(|j| (j.job_id.as_str(), *j)).collect();
    let mut tasks = Vec::new();
    for (job, subtasks) in store.all() {
        let Some(j) = by_id.get(job.as_str()) else { continue };
        for ((v, s), m) in subtasks {
            let vertex = j.vertices.get(v as usize).map_or("", |v| v.name.as_str());
            tasks.push(TaskSeries { labels: task_labels(&job, &j.name, vertex, s, &m.taskmanager), metrics: m.latest });
        }
    }
    families.extend(task_families(&tasks));
    render(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::ExecutionId;

    fn reading(attempt: u32, vertex: u32, subtask: u32, uptime_ms: u64, records_in: u64, backpressured_ms: u64) -> TaskMetrics {
        TaskMetrics {
            execution: Some(ExecutionId { job_id: "j".into(), attempt, vertex, subtask }),
            uptime_ms,
            records_in,
            backpressured_ms,
            ..Default::default()
        }
    }

    #[test]
    fn rates_come_from_two_readings_of_the_same_subtask() {
        let store = MetricsStore::default();
        store.report("tm", vec![reading(0, 0, 0, 1000, 500, 0)], 1);
        store.report("tm", vec![reading(0, 0, 0, 3000, 4500, 1000)], 2);
        let s = &store.subtasks("j")[&(0, 0)];
        assert_eq!(s.rates.num_records_in_per_second, 2000.0);
        assert_eq!(s.rates.back_pressured_time_ms_per_second, 500.0);
        assert_eq!(s.latest.records_in, 4500);
    }

    #[test]
    fn rates_cover_at_least_a_second_of_the_tasks_uptime() {
        let store = MetricsStore::default();
        store.report("tm", vec![reading(0, 0, 0, 1000, 1000, 0)], 1);
        // 200 ms later a burst: the rate stays the one of the last full window.
        store.report("tm", vec![reading(0, 0, 0, 1200, 9000, 0)], 2);
        assert_eq!(store.subtasks("j")[&(0, 0)].rates.num_records_in_per_second, 1000.0);
        assert_eq!(store.subtasks("j")[&(0, 0)].latest.records_in, 9000);
        // A second after the window started: the burst spread over it.
        store.report("tm", vec![reading(0, 0, 0, 2000, 9000, 0)], 3);
        assert_eq!(store.subtasks("j")[&(0, 0)].rates.num_records_in_per_second, 8000.0);
    }

    #[test]
    fn a_vertex_sums_throughput_and_takes_its_most_backpressured_subtask() {
        let store = MetricsStore::default();
        store.report("tm", vec![reading(0, 1, 0, 1000, 100, 900), reading(0, 1, 1, 1000, 300, 100)], 1);
        let subtasks = store.subtasks("j");
        let v = metrics_json(subtasks.values());
        assert_eq!(v["numRecordsIn"], 400);
        assert_eq!(v["numRecordsInPerSecond"], 400.0);
        assert_eq!(v["backPressuredTimeMsPerSecond"], 900.0);
    }

    #[test]
    fn a_new_attempt_starts_afresh_and_an_old_one_is_ignored() {
        let store = MetricsStore::default();
        store.report("tm", vec![reading(1, 0, 0, 1000, 500, 0), reading(1, 0, 1, 1000, 500, 0)], 1);
        store.report("tm", vec![reading(0, 0, 0, 5000, 9999, 0)], 2);
        assert_eq!(store.subtasks("j")[&(0, 0)].latest.records_in, 500);
        store.report("tm", vec![reading(2, 0, 0, 10, 1, 0)], 3);
        let subtasks = store.subtasks("j");
        assert_eq!((subtasks.len(), subtasks[&(0, 0)].latest.records_in), (1, 1));
        assert_eq!(store.history("j").len(), 1, "the history starts again too");
    }

    #[test]
    fn history_is_bounded() {
        let store = MetricsStore::default();
        for i in 0..(HISTORY_POINTS + 20) {
            store.report("tm", vec![reading(0, 0, 0, 1000 * (i as u64 + 1), 0, 0)], i as i64);
            // One point a second at most: age the last one instead of waiting.
            if let Some(j) = store.jobs.lock().get_mut("j") {
                j.last_point = None;
            }
        }
        let h = store.history("j");
        assert_eq!(h.len(), HISTORY_POINTS);
        assert_eq!(h.last().map(|p| p.time), Some((HISTORY_POINTS + 19) as i64));
    }
}

//! Live metrics of one task: counters its thread publishes while it runs, read by the
//! TaskManager for its heartbeat and its `/metrics` endpoint.
//!
//! The task thread keeps its row counters in plain fields (the hot path adds to them once per
//! batch) and copies them here before it waits and at most every [`PUBLISH_EVERY`] otherwise
//! (its output queues only at that pace), with `Relaxed` stores: a
//! reader sees values at most that old, never torn, and never costs the task a lock. Time is
//! split as Flink splits it: *idle* while the task waits for input (or an idle source),
//! *backpressured* while it waits for room on an output channel, *busy* the rest of its
//! life. A wait in progress counts up to the reading (a task blocked for seconds is
//! backpressured all along, not busy until it wakes): each wait's start and end take an
//! uncontended lock, which costs nothing beside the wait itself. Queue lengths and credit are read when sampled: the input side from the gate, the
//! output side as the task last published it. The last checkpoint's figures are written by
//! whoever learns them (the TaskManager, when it forwards the acknowledgement).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often a running task copies its counters into its [`TaskMetrics`] at most.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// The live counters of one task (see the module header).
#[derive(Debug)]
pub struct TaskMetrics {
    /// When the task started: busy time is the rest of its life after idle and backpressure.
    started: Instant,
    records_in: AtomicU64,
    records_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    waits: Mutex<Waits>,
    output_queue: AtomicU64,
    output_credit: AtomicU64,
    checkpoint: Mutex<Option<CheckpointFigures>>,
}

/// The task's time spent waiting, and the wait it is in.
#[derive(Debug, Default)]
struct Waits {
    idle: Duration,
    backpressured: Duration,
    /// Since when, and whether backpressured.
    current: Option<(Instant, bool)>,
}

/// One checkpoint as a task took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointFigures {
    pub id: u64,
    /// The synchronous part on the task thread: snapshots taken, barrier sent on.
    pub sync: Duration,
    /// From the end of the synchronous part to the acknowledgement: uploads, channel state.
    pub async_: Duration,
    /// Time the barriers took to align here.
    pub alignment: Duration,
    /// In-flight bytes persisted as channel state.
    pub persisted_bytes: u64,
    /// The bytes of the task's state in this checkpoint (channel state not included).
    pub state_size: u64,
}

/// The counters a task thread publishes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    pub records_in: u64,
    pub records_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A reading of a task's metrics at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskSample {
    /// The task's age: busy + idle + backpressured.
    pub uptime: Duration,
    pub records_in: u64,
    pub records_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub busy: Duration,
    pub idle: Duration,
    pub backpressured: Duration,
    /// Buffers queued on the input gate and the credit it has left for more.
    pub input_queue: u64,
    pub input_credit: u64,
    pub output_queue: u64,
    pub output_credit: u64,
    /// The buffer size the input gate last asked its senders for (buffer debloating); 0 before
    /// any. Set by [`crate::task::Task::sample`].
    pub debloated_buffer_size: u64,
    /// The last checkpoint this task acknowledged, if any.
    pub checkpoint: Option<CheckpointFigures>,
}

impl Default for TaskMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskMetrics {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            waits: Mutex::new(Waits::default()),
            output_queue: AtomicU64::new(0),
            output_credit: AtomicU64::new(0),
            checkpoint: Mutex::new(None),
        }
    }

    /// The task thread's copy of its counters.
    pub fn publish(&self, p: Published) {
        self.records_in.store(p.records_in, Relaxed);
        self.records_out.store(p.records_out, Relaxed);
        self.bytes_in.store(p.bytes_in, Relaxed);
        self.bytes_out.store(p.bytes_out, Relaxed);
    }

    /// The task thread's reading of its output channels: buffers waiting, room left.
    pub fn publish_queues(&self, queue: u64, credit: u64) {
        self.output_queue.store(queue, Relaxed);
        self.output_credit.store(credit, Relaxed);
    }

    /// The task thread starts waiting: backpressured (no room on an output) or idle.
    pub fn wait_started(&self, backpressured: bool) {
        self.waits.lock().current = Some((Instant::now(), backpressured));
    }

    /// The wait [`Self::wait_started`] began is over.
    pub fn wait_ended(&self) {
        let mut w = self.waits.lock();
        if let Some((since, backpressured)) = w.current.take() {
            let waited = since.elapsed();
            if backpressured {
                w.backpressured += waited;
            } else {
                w.idle += waited;
            }
        }
    }

    /// Records a checkpoint the task acknowledged; an older one than the last is ignored
    /// (acknowledgements of concurrent checkpoints may finish out of order).
    pub fn checkpointed(&self, figures: CheckpointFigures) {
        let mut last = self.checkpoint.lock();
        if last.is_none_or(|l| l.id <= figures.id) {
            *last = Some(figures);
        }
    }

    /// A reading now, with the input gate's queue and credit as the caller read them.
    pub fn sample(&self, input_queue: u64, input_credit: u64) -> TaskSample {
        let (idle, backpressured, uptime) = {
            let w = self.waits.lock();
            let now = Instant::now();
            let current = w.current.map(|(since, b)| (now.saturating_duration_since(since), b));
            let (idle, backpressured) = match current {
                Some((d, true)) => (w.idle, w.backpressured + d),
                Some((d, false)) => (w.idle + d, w.backpressured),
                None => (w.idle, w.backpressured),
            };
            (idle, backpressured, now.saturating_duration_since(self.started))
        };
        TaskSample {
            uptime,
            records_in: self.records_in.load(Relaxed),
            records_out: self.records_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            busy: uptime.saturating_sub(idle + backpressured),
            idle,
            backpressured,
            input_queue,
            input_credit,
            output_queue: self.output_queue.load(Relaxed),
            output_credit: self.output_credit.load(Relaxed),
            debloated_buffer_size: 0,
            checkpoint: *self.checkpoint.lock(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_is_what_waits_leave_of_the_tasks_life() {
        let m = TaskMetrics::new();
        m.wait_started(true);
        std::thread::sleep(Duration::from_millis(5));
        m.wait_ended();
        m.wait_started(false);
        std::thread::sleep(Duration::from_millis(3));
        m.wait_ended();
        std::thread::sleep(Duration::from_millis(10));
        let s = m.sample(0, 0);
        assert!(s.backpressured >= Duration::from_millis(5) && s.idle >= Duration::from_millis(3), "{s:?}");
        assert_eq!(s.busy + s.idle + s.backpressured, s.uptime);
        assert!(s.busy >= Duration::from_millis(10), "{s:?}");
    }

    #[test]
    fn a_wait_in_progress_counts_up_to_the_reading() {
        let m = TaskMetrics::new();
        m.wait_started(true);
        std::thread::sleep(Duration::from_millis(20));
        let first = m.sample(0, 0);
        assert!(first.backpressured >= Duration::from_millis(20), "{first:?}");
        std::thread::sleep(Duration::from_millis(5));
        let second = m.sample(0, 0);
        assert!(second.backpressured >= first.backpressured + Duration::from_millis(5), "still waiting: {second:?}");
        assert_eq!(second.busy, first.busy, "a waiting task is not busy");
        m.wait_ended();
        assert!(m.sample(0, 0).backpressured >= second.backpressured);
    }

    #[test]
    fn an_older_checkpoint_does_not_replace_a_newer_one() {
        let m = TaskMetrics::new();
        m.checkpointed(CheckpointFigures { id: 5, ..Default::default() });
        m.checkpointed(CheckpointFigures { id: 4, persisted_bytes: 9, ..Default::default() });
        assert_eq!(m.sample(0, 0).checkpoint.map(|c| (c.id, c.persisted_bytes)), Some((5, 0)));
        m.checkpointed(CheckpointFigures { id: 6, persisted_bytes: 7, ..Default::default() });
        assert_eq!(m.sample(0, 0).checkpoint.map(|c| c.id), Some(6));
    }
}

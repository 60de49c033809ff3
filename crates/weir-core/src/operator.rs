//! The batch-at-a-time operator interfaces. Every operator receives a whole Arrow
//! [`RecordBatch`] and emits zero or more batches to a [`Collector`]; nothing is called per
//! row across an interface boundary, so per-row cost is a loop inside one operator.
//!
//! Sources are pulled by their task's thread ([`SourceReader::poll_next`]); they never block
//! for long, so the task can flush output, react to cancellation and inject barriers between
//! two polls.
//!
//! This is the layer the runtime and the connectors share: the runtime runs operators and
//! builds the built-in transforms itself, and asks a [`ConnectorFactory`] (implemented by
//! `weir-connectors`, handed to it by the TaskManager) for sources and sinks, so it never
//! depends on the connectors.

use crate::graph::ChainedOperator;
use arrow_array::RecordBatch;
use std::time::Duration;

/// Why an operator could not be built or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{what} '{path}': {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A [`ConnectorFactory`] was asked for an operator it does not build.
    #[error("operator '{name}' (uid {uid}) is not a {expected} this connector factory builds")]
    NotAConnector { name: String, uid: String, expected: &'static str },
    #[error("{0}")]
    Failed(String),
}

impl OperatorError {
    pub fn io(what: &'static str, path: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { what, path: path.into(), source }
    }
}

pub type OpResult<T = ()> = Result<T, OperatorError>;

/// The watermark that ends event time: a bounded source emits it when its input ends, so every
/// event-time timer fires (as Flink's `Watermark.MAX_WATERMARK`).
pub const MAX_WATERMARK: i64 = i64::MAX;

/// Where an operator emits its output batches, and the watermarks it forwards or generates.
pub trait Collector {
    /// Takes one output batch (the next operator of the chain processes it at once).
    fn collect(&mut self, batch: RecordBatch) -> OpResult;

    /// Event time has reached `watermark` (milliseconds since the epoch): the rest of the chain
    /// sees it after every batch collected before it, then it travels downstream in order with
    /// the rows. Collectors that only gather rows (tests) ignore it.
    fn emit_watermark(&mut self, _watermark: i64) -> OpResult {
        Ok(())
    }

    /// The rows of this subtask stopped (`idle`) or started again: an idle subtask's watermark
    /// does not hold back its consumers' event time.
    fn emit_watermark_status(&mut self, _idle: bool) -> OpResult {
        Ok(())
    }
}

/// A transform or a sink: processes one batch at a time.
///
/// Checkpointing hooks: at a barrier the task calls [`Operator::snapshot_state`] on every
/// operator of its chain (synchronously, between two batches); when the checkpoint completes
/// everywhere, [`Operator::notify_checkpoint_complete`]; on a restore,
/// [`Operator::restore_state`] before the first batch. Operator state is a list of opaque
/// elements, redistributed round-robin when parallelism changes.
pub trait Operator: Send {
    /// Processes one input batch, emitting any output to `out`.
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult;

    /// End of input: emit what is buffered, commit what must be committed.
    fn finish(&mut self, _out: &mut dyn Collector) -> OpResult {
        Ok(())
    }

    /// Operator (non-keyed) state for checkpoint `checkpoint`, if the operator has any.
    fn snapshot_state(&mut self, _checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        Ok(None)
    }

    /// State from the checkpoint the job restarts from (`checkpoint`), possibly gathered from
    /// several old subtasks.
    fn restore_state(&mut self, _checkpoint: u64, _elements: Vec<Vec<u8>>) -> OpResult {
        Ok(())
    }

    /// The instant before which the operator wants no further input, if any (a throttle). The
    /// task then takes no input until that instant but still handles barriers, commands and
    /// timers: an operator never sleeps inside `process_batch`.
    fn ready_at(&self) -> Option<std::time::Instant> {
        None
    }

    /// Checkpoint `checkpoint` completed on every task: a two-phase-commit sink commits now.
    fn notify_checkpoint_complete(&mut self, _checkpoint: u64) -> OpResult {
        Ok(())
    }

    /// The instant the operator next wants [`Operator::on_time`] called, if any (its earliest
    /// processing-time timer). The task wakes up for it even when no input arrives, and calls
    /// `on_time` between two batches once the instant passed and its outputs have room.
    ///
    /// Timers fire only while the input runs: after the end of input they are dropped, as
    /// Flink drops pending processing-time timers when an operator finishes.
    fn next_timer(&self) -> Option<std::time::Instant> {
        None
    }

    /// The instant [`Operator::next_timer`] named has passed (`now`): fire what is due,
    /// emitting any output to `out` like [`Operator::process_batch`].
    fn on_time(&mut self, _now: std::time::Instant, _out: &mut dyn Collector) -> OpResult {
        Ok(())
    }

    /// Event time reached `watermark` at this operator: fire the event-time timers due at or
    /// before it (their output goes to `out` first), then forward the watermark with
    /// [`Collector::emit_watermark`], which is all the default does. An operator that makes its
    /// own watermarks (a watermark assigner) forwards none but [`MAX_WATERMARK`].
    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> OpResult {
        out.emit_watermark(watermark)
    }
}

/// What a source returns from one poll.
pub enum SourcePoll {
    /// Rows to push down the chain.
    Batch(RecordBatch),
    /// Nothing right now; poll again within the given time at the latest.
    Idle(Duration),
    /// The source is exhausted (bounded input fully read).
    End,
}

/// A source's reader for one subtask.
///
/// A replayable source snapshots its position at a barrier ([`SourceReader::snapshot_state`],
/// taken between two polls, so it covers exactly the rows emitted before the barrier) and
/// resumes from it on restore.
pub trait SourceReader: Send {
    /// The next rows, if any are ready; never blocks for long.
    fn poll_next(&mut self) -> OpResult<SourcePoll>;

    /// The reader's position, as operator state elements.
    fn snapshot_state(&mut self, _checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        Ok(None)
    }

    /// Resumes from positions taken by [`SourceReader::snapshot_state`] (of any subtasks whose
    /// elements were redistributed to this one).
    fn restore_state(&mut self, _elements: Vec<Vec<u8>>) -> OpResult {
        Ok(())
    }

    /// False for sources that cannot rewind (the socket source): checkpoints give them
    /// at-most-once semantics.
    fn is_replayable(&self) -> bool {
        true
    }
}

/// Builds the connectors a job names: the source at the head of a source vertex's chain and
/// the sinks at the end of chains. The runtime builds every other operator itself.
pub trait ConnectorFactory: Send + Sync {
    /// The reader of source `op` (an operator whose spec `is_source()`) for one subtask; it
    /// emits rows of `op.output_schema`.
    fn source(&self, op: &ChainedOperator, info: &SubtaskInfo) -> OpResult<Box<dyn SourceReader>>;

    /// Sink `op` (an operator whose spec `is_sink()`) for one subtask.
    fn sink(&self, op: &ChainedOperator, info: &SubtaskInfo) -> OpResult<Box<dyn Operator>>;
}

/// What a subtask knows about itself; handed to operators when they are built.
#[derive(Debug, Clone)]
pub struct SubtaskInfo {
    pub job_id: String,
    pub attempt: u32,
    pub vertex: u32,
    pub vertex_name: String,
    pub index: u32,
    pub parallelism: u32,
    pub max_parallelism: u32,
}

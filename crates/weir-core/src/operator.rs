//! The batch-at-a-time operator interfaces. Every operator receives a whole Arrow
//! [`RecordBatch`] and emits zero or more batches to a [`Collector`]; nothing is called per
//! row across an interface boundary, so per-row cost is a loop inside one operator.
//!
//! Sources are pulled by their task's thread ([`SourceReader::poll_next`]); they never block
//! for long, so the task can flush output, react to cancellation and (later) inject barriers
//! between two polls.

use arrow_array::RecordBatch;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{what} '{path}': {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("{0}")]
    Failed(String),
}

impl OperatorError {
    pub fn io(what: &'static str, path: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { what, path: path.into(), source }
    }
}

pub type OpResult<T = ()> = Result<T, OperatorError>;

/// Where an operator emits its output batches.
pub trait Collector {
    fn collect(&mut self, batch: RecordBatch) -> OpResult;
}

/// A transform or a sink: processes one batch at a time.
pub trait Operator: Send {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult;

    /// End of input: emit what is buffered, commit what must be committed.
    fn finish(&mut self, _out: &mut dyn Collector) -> OpResult {
        Ok(())
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
pub trait SourceReader: Send {
    fn poll_next(&mut self) -> OpResult<SourcePoll>;
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

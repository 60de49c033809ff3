//! A running subtask: one dedicated thread that pulls from its source (or its input gate),
//! pushes each batch through its operator chain, and hands the result to its
//! [`ResultPartition`]. Between batches it flushes output buffers whose timeout passed and
//! notices cancellation. It reports RUNNING, then exactly one of FINISHED, FAILED or
//! CANCELED.

use crate::buffer::{decode_batch, Event, Item};
use crate::gate::{GatePoll, InputGate};
use crate::operators::{build_chain, finish_chain, push_through, OperatorChain, StateConfig};
use crate::partition::ResultPartition;
use arrow_schema::SchemaRef;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use weir_core::graph::Vertex;
use weir_core::operator::{Collector, OpResult, OperatorError, SourcePoll, SubtaskInfo};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Running,
    Finished,
    Failed(String),
    Canceled,
}

/// A state change of a task, with its row counters.
#[derive(Debug, Clone)]
pub struct TaskEvent {
    pub vertex: u32,
    pub subtask: u32,
    pub state: TaskState,
    pub records_in: u64,
    pub records_out: u64,
}

/// Everything a task needs to run, built by the TaskManager.
pub struct TaskDescriptor {
    pub info: SubtaskInfo,
    pub vertex: Vertex,
    pub input_schema: SchemaRef,
    pub gate: Option<Arc<InputGate>>,
    pub partition: ResultPartition,
    pub state: StateConfig,
}

pub struct Task {
    cancelled: Arc<AtomicBool>,
    gate: Option<Arc<InputGate>>,
    thread: Option<JoinHandle<()>>,
}

impl Task {
    /// Starts the task's thread. `report` is called from that thread on every state change.
    pub fn spawn(desc: TaskDescriptor, report: Arc<dyn Fn(TaskEvent) + Send + Sync>) -> std::io::Result<Task> {
        let cancelled = Arc::new(AtomicBool::new(false));
        let gate = desc.gate.clone();
        let c = cancelled.clone();
        let name = format!("{} ({}/{})", desc.vertex.name, desc.info.index + 1, desc.info.parallelism);
        let thread = std::thread::Builder::new().name(name).spawn(move || run(desc, c, report))?;
        Ok(Task { cancelled, gate, thread: Some(thread) })
    }

    /// Asks the task to stop; it reports CANCELED unless it already ended.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(g) = &self.gate {
            g.fail("task canceled");
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the task's thread to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(desc: TaskDescriptor, cancelled: Arc<AtomicBool>, report: Arc<dyn Fn(TaskEvent) + Send + Sync>) {
    let (vertex, subtask) = (desc.info.vertex, desc.info.index);
    let event = |state, records_in, records_out| TaskEvent { vertex, subtask, state, records_in, records_out };
    report(event(TaskState::Running, 0, 0));
    let mut runner = Runner { partition: desc.partition, records_in: 0, cancelled: cancelled.clone() };
    let result = build_chain(&desc.vertex, &desc.info, desc.input_schema.clone(), &desc.state)
        .and_then(|chain| runner.run(chain, desc.gate.as_deref()));
    let state = match result {
        Ok(()) if cancelled.load(Ordering::SeqCst) => TaskState::Canceled,
        Ok(()) => TaskState::Finished,
        Err(_) if cancelled.load(Ordering::SeqCst) => TaskState::Canceled,
        Err(e) => {
            tracing::warn!(task = %desc.vertex.name, subtask, "task failed: {e}");
            TaskState::Failed(e.to_string())
        }
    };
    if let Some(g) = &desc.gate {
        // Release upstream senders that may still be blocked on this task's channels.
        g.fail("downstream task ended");
    }
    report(event(state, runner.records_in, runner.partition.records_out));
}

struct Runner {
    partition: ResultPartition,
    records_in: u64,
    cancelled: Arc<AtomicBool>,
}

/// Terminal collector of a chain: output goes to the partition (or nowhere, for a sink).
struct Output<'a>(&'a mut ResultPartition);

impl Collector for Output<'_> {
    fn collect(&mut self, batch: arrow_array::RecordBatch) -> OpResult {
        self.0.emit(batch)
    }
}

impl Runner {
    fn run(&mut self, mut chain: OperatorChain, gate: Option<&InputGate>) -> OpResult {
        match chain.source.take() {
            Some(mut source) => loop {
                if self.cancelled.load(Ordering::Relaxed) {
                    return Ok(());
                }
                match source.poll_next()? {
                    SourcePoll::Batch(b) => {
                        self.records_in += b.num_rows() as u64;
                        push_through(&mut chain.operators, b, &mut Output(&mut self.partition))?;
                        self.partition.flush_due(Instant::now())?;
                    }
                    SourcePoll::Idle(wait) => {
                        self.partition.flush_due(Instant::now())?;
                        let wait = match self.partition.next_flush() {
                            Some(t) => wait.min(t.saturating_duration_since(Instant::now())),
                            None => wait,
                        };
                        std::thread::sleep(wait.min(Duration::from_millis(100)));
                    }
                    SourcePoll::End => break,
                }
            },
            None => {
                let gate = gate.ok_or_else(|| OperatorError::Failed("a task without a source has no input".into()))?;
                loop {
                    match gate.poll(self.partition.next_flush()) {
                        GatePoll::Item(_, Item::Buffer(b)) => self.process(&mut chain, b)?,
                        GatePoll::Item(ch, Item::Encoded(bytes)) => {
                            let b = decode_batch(&bytes)
                                .map_err(|e| OperatorError::Failed(format!("corrupt buffer on input channel {ch}: {e}")))?;
                            self.process(&mut chain, b)?
                        }
                        GatePoll::Item(_, Item::Event(Event::EndOfPartition)) => {}
                        GatePoll::Timeout => self.partition.flush_due(Instant::now())?,
                        GatePoll::Finished => break,
                        GatePoll::Failed(reason) => {
                            if self.cancelled.load(Ordering::SeqCst) {
                                return Ok(());
                            }
                            return Err(OperatorError::Failed(reason));
                        }
                    }
                }
            }
        }
        finish_chain(&mut chain.operators, &mut Output(&mut self.partition))?;
        self.partition.finish()
    }

    fn process(&mut self, chain: &mut OperatorChain, batch: arrow_array::RecordBatch) -> OpResult {
        self.records_in += batch.num_rows() as u64;
        push_through(&mut chain.operators, batch, &mut Output(&mut self.partition))?;
        Ok(())
    }
}

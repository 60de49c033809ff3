//! A running subtask: one dedicated thread that pulls from its source (or its input gate),
//! pushes each batch through its operator chain, and hands the result to its
//! [`ResultPartition`]. Between batches it flushes output buffers whose timeout passed, takes
//! commands (checkpoint triggers for sources, checkpoint completion and aborts for everyone),
//! handles alignment timeouts and notices cancellation. It reports RUNNING, then exactly one of
//! FINISHED, FAILED or CANCELED.
//!
//! Checkpoints: a source task snapshots when the JobManager's trigger reaches it; any other
//! task when its [`BarrierHandler`] says so (aligned: once every barrier arrived; unaligned: on
//! the first). The snapshot is synchronous (operator state, the source position, the keyed
//! state's copy or RocksDB checkpoint), then the barrier goes downstream (behind the rows
//! emitted before it, or ahead of them for an unaligned checkpoint), then the files are uploaded
//! on the TaskManager's async runtime while the task goes on, and the task acknowledges. An
//! unaligned checkpoint also collects channel state — the in-flight buffers its barriers
//! overtook, and those taken from a channel before its barrier arrived — and acknowledges once
//! the last barrier arrived and that state is written too.
//!
//! ## Savepoints
//! A savepoint's barrier carries its folder (a storage URL) and format. Every task it reaches
//! takes its snapshot aligned and uploads it to a storage opened at that folder
//! ([`CheckpointSettings::open_storage`]), under `<uid>-<subtask>/`, so the acknowledged paths
//! are relative to the folder (see [`weir_state::snapshot`]); a folder that cannot be opened
//! declines the savepoint naming it. A savepoint's RocksDB files are never reused by later
//! checkpoints, and its completion only tells the operators (sinks commit), not the keyed
//! backends' reuse bookkeeping.
//!
//! ## Stopping a source
//! A source task runs through [`SourcePhase`]s. [`TaskCommand::StopWithSavepoint`] takes the
//! savepoint and emits its barrier like a trigger, then suspends the source: it is no longer
//! polled, while the task still takes commands, flushes and notices cancellation (new triggers
//! are declined). The savepoint's completion ends the input exactly as an exhausted source does
//! (below); its abort resumes polling. [`TaskCommand::EndInput`] ends the input at once (stop
//! with drain: the final checkpoint that follows is then the savepoint).
//!
//! ## The loop: availability-driven, never blocking
//! Like Flink's mailbox, a task never blocks inside an operator or a send. Each round it takes
//! its commands, switches alignments whose timeout passed, flushes what is due, and then takes
//! one input — but a batch (from the gate or the source) only if every output channel has room
//! ([`ResultPartition::is_available`]) and no operator of the chain asked for a pause
//! ([`Operator::ready_at`](weir_core::operator::Operator::ready_at), a throttle). A priority
//! event (unaligned barrier, cancellation marker) is taken whatever the outputs. With nothing
//! to do it waits on its [`Waker`], which its gate, its output channels (room regained) and
//! the TaskManager (commands, cancel) notify, until the next deadline at the latest: a buffer
//! flush, an alignment timeout, a throttle, an idle source's next poll, or an operator's next
//! processing-time timer ([`Operator::next_timer`](weir_core::operator::Operator::next_timer),
//! fired between two inputs when the outputs have room, whether or not input arrives). So a
//! barrier that arrives while the task is backpressured is seen at once. The output of the
//! one batch taken may overdraw a full channel (FLIP-227's overdraft), never more.
//!
//! With buffer debloating on, each round also gives the gate's
//! [`BufferDebloater`](crate::debloat::BufferDebloater) the bytes taken so far, and each wait
//! for input its length; once a period it may announce a new buffer size to the senders.
//!
//! ## Event time
//! Watermarks and watermark statuses arriving on the gate go through a
//! [`WatermarkValve`](crate::watermarks::WatermarkValve); when the task's event time advances,
//! the new watermark passes the chain (`Operator::on_watermark`: event-time timers fire, their
//! output flowing on) and leaves behind the rows emitted before it. A source task whose input
//! ends (or is drained) sends [`MAX_WATERMARK`] through its chain first. Watermarks are never
//! part of channel state: after a restore the assigners upstream send theirs again.
//!
//! ## Restore
//! An attempt that resumes from an unaligned checkpoint first re-sends its output channel state
//! through its partitioner, then processes its input channel state, and only then takes new
//! input (priority events included: the restored input comes before every channel's data).
//!
//! ## End of input
//! Without checkpointing the chain is finished (`Operator::finish` on each operator, in order)
//! and end of partition is sent. With checkpointing, end of partition is sent, the task
//! reports FINISHING, waits for [`TaskCommand::FinalCheckpoint`], snapshots (forwarding no
//! barrier: its outputs have ended), and finishes once that checkpoint or a later one
//! completed, like Flink's final checkpoint: the last output is committed by a checkpoint,
//! never by the end of input alone. `Operator::finish` is not called on that path, so an
//! operator that emits rows in `finish` would lose them there; the built-in ones emit none.
//!
//! ## Limitations
//! - A source's `poll_next` itself may block (a socket read); the built-in ones return `Idle`
//!   instead of waiting long.
//! - A buffer recorded for two unaligned checkpoints more than a few checkpoints apart is
//!   written twice (the channel-state writer remembers the last few).
//! - Restoring channel state at another parallelism is refused (restore a savepoint instead).

use crate::barrier::{Action, AlignmentPolicy, BarrierHandler, CheckpointingMode, Input, SnapshotKind};
use crate::buffer::{decode_batch, encode_batch, Barrier, Event, Item};
use crate::gate::{GatePoll, InputGate};
use crate::metrics::{Published, TaskMetrics, TaskSample, PUBLISH_EVERY};
use crate::operators::{build_chain, finish_chain, fire_timers, push_through, push_watermark, ChainOperator, OperatorChain, StateConfig};
use crate::partition::{OvertakenOutput, ResultPartition};
use crate::user::UserFunctions;
use crate::wake::Waker;
use crate::watermarks::{ValveOutput, WatermarkValve};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use weir_core::graph::Vertex;
use weir_core::operator::{Collector, ConnectorFactory, OpResult, OperatorError, SourcePoll, SubtaskInfo, MAX_WATERMARK};
use weir_core::KeyGroupRange;
use weir_state::channel_state::{ChannelBuffer, ChannelStateHandle, ChannelStatePart};
use weir_state::metadata::{CheckpointMetadata, SubtaskState};
use weir_state::storage::StoredFile;
use weir_state::{CheckpointStorage, KeyedStateHandle, PendingSnapshot, SnapshotTarget, SnapshotType, StateBackend};
/// The lifecycle of a task as it reports it: RUNNING, possibly FINISHING, then exactly one of
/// FINISHED, FAILED or CANCELED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// The thread started (reported before the chain is built and restored).
    Running,
    /// Input ended (checkpointing on): waiting for the final checkpoint to commit.
    Finishing,
    /// Ended normally: the input ended and, with checkpointing, the final checkpoint completed.
    Finished,
    /// Ended with an error (the operator's, the state layer's or the data plane's).
    Failed(String),
    /// Ended after [`Task::cancel`], whether cleanly or with an error the cancellation caused.
    Canceled,
}

/// A state change of a task, with its row counters.
#[derive(Debug, Clone)]
pub struct TaskEvent {
    /// The task's vertex id.
    pub vertex: u32,
    /// The task's subtask index.
    pub subtask: u32,
    /// The state entered.
    pub state: TaskState,
    /// Rows taken in so far: from the source, or from the gate.
    pub records_in: u64,
    /// Rows the chain emitted so far, counted before partitioning.
    pub records_out: u64,
}

/// Commands from the TaskManager to a running task, handed over by [`Task::command`] and
/// acted on between two batches.
#[derive(Debug, Clone)]
pub enum TaskCommand {
    /// Sources only: take checkpoint (or savepoint) `barrier.id` now and emit its barrier. Other
    /// tasks (their barriers come through the gate) and tasks past the end of their input ignore
    /// it; a source suspended by [`StopWithSavepoint`](Self::StopWithSavepoint) declines it.
    TriggerCheckpoint(Barrier),
    /// Sources only (stop with savepoint): take savepoint `barrier.id` and emit its barrier as
    /// for a trigger, then stop polling the source. Its completion (a
    /// [`NotifyCheckpointComplete`](Self::NotifyCheckpointComplete) of it or a later id) ends
    /// the input as if the source were exhausted; an [`AbortCheckpoint`](Self::AbortCheckpoint)
    /// of it resumes polling. Other tasks ignore it.
    StopWithSavepoint(Barrier),
    /// Sources only (stop with drain): end the input now, as if the source were exhausted. Other
    /// tasks ignore it.
    EndInput,
    /// Checkpoint `n` completed everywhere: the keyed backends learn which of their uploaded
    /// files later checkpoints may reference, then every operator is told (two-phase-commit sinks
    /// commit). Covers every checkpoint up to `n`.
    NotifyCheckpointComplete(u64),
    /// The coordinator aborted checkpoint `id` (every task of the attempt hears it). The task
    /// treats it as a cancellation marker: it stops aligning or collecting channel state for
    /// `id`, ignores its later barriers, and sends a cancellation marker downstream (a priority
    /// event).
    AbortCheckpoint(u64),
    /// Every task of the job reached the end of its input: snapshot for `barrier.id`, the final
    /// checkpoint, whose completion commits the last output (a savepoint when the barrier says
    /// so: stop with drain). No barrier flows: the outputs have ended. Only looked at once this
    /// task has reached the end of its input; one that arrives earlier is dropped.
    FinalCheckpoint(Barrier),
}

/// The result of one subtask's part of a checkpoint, reported through
/// [`CheckpointSettings::report`]: an acknowledgement with state handles, or a decline.
#[derive(Debug, Clone)]
pub struct CheckpointAck {
    /// The reporting task's vertex id.
    pub vertex: u32,
    /// The reporting task's subtask index.
    pub subtask: u32,
    /// The checkpoint id.
    pub checkpoint: u64,
    /// Ok: the state of each operator uid of the chain; Err: why it was declined.
    pub result: Result<Vec<(String, SubtaskState)>, String>,
    /// How long the barriers took to align here (zero for sources, final checkpoints and
    /// declines).
    pub alignment: Duration,
    /// Bytes of the operator-state files plus the sizes of the keyed state handles; zero when
    /// declined.
    pub size: u64,
    /// How this task took the checkpoint (aligned, unaligned, switched by the timeout).
    pub kind: SnapshotKind,
    /// Bytes of in-flight data persisted as channel state (Arrow IPC, as stored).
    pub inflight_bytes: u64,
    /// The synchronous part on the task thread (snapshots, barrier sent on), and the rest until
    /// this report (uploads, channel state); zero when declined.
    pub sync_duration: Duration,
    pub async_duration: Duration,
}

/// How this job checkpoints. A task without them (`TaskDescriptor::checkpointing` is `None`)
/// passes barriers on untouched and finishes as soon as its input ends.
#[derive(Clone)]
pub struct CheckpointSettings {
    /// `execution.checkpointing.mode`: whether the barrier handler aligns (exactly-once) or not.
    pub mode: CheckpointingMode,
    /// `unaligned.enabled` and `aligned-checkpoint-timeout`: how barriers travel.
    pub alignment: AlignmentPolicy,
    /// Where checkpoints are uploaded.
    pub storage: CheckpointStorage,
    /// Opens the storage at a savepoint's folder (a URL from its barrier) with the job's
    /// configuration (S3 endpoint and credentials); savepoints are uploaded there.
    pub open_storage: OpenStorage,
    /// `execution.checkpointing.incremental`: RocksDB uploads only files not uploaded before.
    pub incremental: bool,
    /// The TaskManager's async runtime: uploads run there, off the task thread.
    pub runtime: tokio::runtime::Handle,
    /// Called once per checkpoint this task took or declined: from the runtime when an upload is
    /// done, from the task thread for a decline.
    pub report: Arc<dyn Fn(CheckpointAck) + Send + Sync>,
}

/// Opens a checkpoint storage for a URL: [`CheckpointSettings::open_storage`].
pub type OpenStorage = Arc<dyn Fn(&str) -> Result<CheckpointStorage, weir_state::StateError> + Send + Sync>;

/// The checkpoint a restarted job resumes from.
#[derive(Clone)]
pub struct RestoreSettings {
    /// The `_metadata` of the checkpoint to resume from: every operator's state handles.
    pub metadata: Arc<CheckpointMetadata>,
    /// Where that checkpoint's files are.
    pub storage: CheckpointStorage,
    /// The runtime the task thread blocks on while it reads them.
    pub runtime: tokio::runtime::Handle,
}

/// Everything a task needs to run, built by the TaskManager.
pub struct TaskDescriptor {
    /// Which subtask of which job attempt this is.
    pub info: SubtaskInfo,
    /// The vertex, with its chain of operators.
    pub vertex: Vertex,
    /// The schema of the rows on the gate (from the [`ChannelPlan`](crate::wiring::ChannelPlan)).
    pub input_schema: SchemaRef,
    /// The input gate; `None` for a source vertex.
    pub gate: Option<Arc<InputGate>>,
    /// The output side, wired by the TaskManager from the channel plan.
    pub partition: ResultPartition,
    /// The state backend of keyed operators, and where it keeps local files.
    pub state: StateConfig,
    /// `None` when checkpointing is off for the job.
    pub checkpointing: Option<CheckpointSettings>,
    /// `Some` when this attempt resumes from a completed checkpoint.
    pub restore: Option<RestoreSettings>,
    /// Builds the chain's source and sinks.
    pub connectors: Arc<dyn ConnectorFactory>,
    /// Builds the functions of a DataStream program.
    pub functions: Arc<dyn UserFunctions>,
    /// Builds the operators of SQL plans.
    pub sql: Arc<dyn crate::sql::SqlOperators>,
}

/// The TaskManager's handle on a running task: it commands, cancels and joins it through
/// this. The task itself runs on its own thread.
pub struct Task {
    /// Set by [`Task::cancel`]; the thread checks it every round.
    cancelled: Arc<AtomicBool>,
    /// The task's gate, to fail it on cancel (releasing its senders).
    gate: Option<Arc<InputGate>>,
    /// The task thread's waker: commands and cancellation notify it.
    waker: Arc<Waker>,
    /// Commands to the task thread.
    commands: Mutex<Sender<TaskCommand>>,
    /// Whether the chain starts with a source.
    is_source: bool,
    /// The task thread; `None` once joined.
    thread: Option<JoinHandle<()>>,
    /// What the task thread publishes while it runs.
    metrics: Arc<TaskMetrics>,
}

impl Task {
    /// Starts the task's thread. `report` is called from that thread on every state change.
    ///
    /// The thread is named `<vertex> (<i>/<p>)`. It reports RUNNING, builds the chain, restores
    /// its state, runs it, and reports how it ended with its row counters. Fails only if the
    /// thread cannot be started.
    pub fn spawn(desc: TaskDescriptor, report: Arc<dyn Fn(TaskEvent) + Send + Sync>) -> std::io::Result<Task> {
        let cancelled = Arc::new(AtomicBool::new(false));
        let gate = desc.gate.clone();
        // A task with inputs wakes on its gate's waker; every output channel notifies it too.
        let waker = gate.as_ref().map_or_else(|| Arc::new(Waker::new()), |g| g.waker().clone());
        desc.partition.set_waker(&waker);
        let is_source = desc.vertex.operators.first().is_some_and(|o| o.spec.is_source());
        let (tx, rx) = std::sync::mpsc::channel();
        let (c, w) = (cancelled.clone(), waker.clone());
        let metrics = Arc::new(TaskMetrics::new());
        let m = metrics.clone();
        let name = format!("{} ({}/{})", desc.vertex.name, desc.info.index + 1, desc.info.parallelism);
        let thread = std::thread::Builder::new().name(name).spawn(move || run(desc, c, w, rx, report, m))?;
        Ok(Task { cancelled, gate, waker, commands: Mutex::new(tx), is_source, thread: Some(thread), metrics })
    }

    /// Whether the chain starts with a source: only such a task acts on checkpoint triggers.
    pub fn is_source(&self) -> bool {
        self.is_source
    }

    /// The task's live metrics, for recording what only the TaskManager learns (the last
    /// checkpoint's figures).
    pub fn metrics(&self) -> &Arc<TaskMetrics> {
        &self.metrics
    }

    /// A reading of the task's metrics now, with its gate's queue, credit and buffer size.
    pub fn sample(&self) -> TaskSample {
        let (queue, credit) = self.gate.as_ref().map_or((0, 0), |g| g.queue_and_credit());
        let mut sample = self.metrics.sample(queue as u64, credit as u64);
        sample.debloated_buffer_size = self.gate.as_ref().and_then(|g| g.buffer_size()).unwrap_or(0) as u64;
        sample
    }

    /// Hands the task a command; it acts on it within one batch (a waiting task wakes at once).
    pub fn command(&self, cmd: TaskCommand) {
        let _ = self.commands.lock().send(cmd);
        self.waker.notify();
    }

    /// Asks the task to stop; it reports CANCELED unless it already ended. It sees the flag
    /// within one batch; its gate is failed so that its upstream senders stop too.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(g) = &self.gate {
            g.fail("task canceled");
        }
        self.waker.notify();
    }

    /// Whether the task's thread has ended (or was joined).
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

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    a.into_iter().chain(b).min()
}

/// The task thread: builds the chain and restores its state, runs it, and reports how it
/// ended. Whatever the outcome, the gate is failed at the end, so upstream senders blocked on
/// this task's channels are released. The barrier handler's mode comes from the checkpoint
/// settings (exactly-once when checkpointing is off).
fn run(
    desc: TaskDescriptor,
    cancelled: Arc<AtomicBool>,
    waker: Arc<Waker>,
    commands: Receiver<TaskCommand>,
    report: Arc<dyn Fn(TaskEvent) + Send + Sync>,
    metrics: Arc<TaskMetrics>,
) {
    let (vertex, subtask) = (desc.info.vertex, desc.info.index);
    let event = |state, records_in, records_out| TaskEvent { vertex, subtask, state, records_in, records_out };
    report(event(TaskState::Running, 0, 0));
    let channels = desc.gate.as_ref().map_or(0, |g| g.num_channels());
    let mode = desc.checkpointing.as_ref().map_or(CheckpointingMode::ExactlyOnce, |c| c.mode);
    let policy = desc.checkpointing.as_ref().map_or(AlignmentPolicy::Aligned, |c| c.alignment);
    if let (Some(gate), true) = (&desc.gate, desc.checkpointing.is_some() && mode == CheckpointingMode::ExactlyOnce) {
        // The aligned-checkpoint timeout counts from a barrier's arrival, not from when the task
        // reaches it. Any checkpoint may carry one (a running job's setting may change).
        gate.set_announce(true);
    }
    let mut runner = Runner {
        report: report.clone(),
        final_checkpoint: None,
        info: desc.info.clone(),
        partition: desc.partition,
        records_in: 0,
        cancelled: cancelled.clone(),
        commands,
        checkpointing: desc.checkpointing,
        barriers: BarrierHandler::new(mode, policy, channels),
        policy,
        uploaded: Arc::new(Mutex::new(BTreeMap::new())),
        savepoints: BTreeSet::new(),
        waker,
        collecting: BTreeMap::new(),
        aligned_uploads: BTreeMap::new(),
        restored_input: VecDeque::new(),
        channel_writer: None,
        valve: WatermarkValve::new(channels),
        bytes_in: 0,
        metrics,
        published: Instant::now(),
    };
    let result = build_chain(
        &desc.vertex,
        &desc.info,
        desc.input_schema.clone(),
        &desc.state,
        desc.connectors.as_ref(),
        desc.functions.as_ref(),
        desc.sql.as_ref(),
    )
    .and_then(|mut chain| {
        if let Some(r) = &desc.restore {
            let channels = restore(&mut chain, &desc.info, &desc.state, r)?;
            // Output channel state goes out before anything new; input channel state is
            // processed before any new input.
            for batch in channels.output {
                runner.partition.emit_restored(batch)?;
            }
            runner.restored_input = channels.input.into();
        } else if desc.info.attempt > 0 {
            // A restart with no completed checkpoint: operators drop what the failed
            // attempt left behind (a transactional sink's uncommitted files).
            for op in chain.operators.iter_mut() {
                op.operator().restore_state(0, Vec::new())?;
            }
        }
        Ok(chain)
    })
    .and_then(|chain| runner.run(chain, desc.gate.as_deref()));
    runner.publish_now();
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

/// The channel state a restored task replays before anything new.
#[derive(Default)]
struct RestoredChannels {
    /// Its input channel state: processed before any new input.
    input: Vec<RecordBatch>,
    /// Its output channel state: re-sent through the partitioner before anything new.
    output: Vec<RecordBatch>,
}

/// Restores every operator of the chain that has state in the checkpoint: keyed state for its
/// key-group range (from every old subtask whose range overlaps), operator state dealt
/// round-robin over the new subtasks, and the task's channel state (unaligned checkpoints;
/// same parallelism only), which it returns.
///
/// Runs on the task thread, blocking on the TaskManager's runtime for reads. Every operator of
/// the chain gets `restore_state(n, elements)`, with no elements if the checkpoint has no
/// operator state for its uid; the source only if the checkpoint has its uid. Keyed handles
/// of a uid whose operator keeps no keyed state in the new chain are ignored.
fn restore(chain: &mut OperatorChain, info: &SubtaskInfo, state: &StateConfig, r: &RestoreSettings) -> OpResult<RestoredChannels> {
    let fail = |e: weir_state::StateError| OperatorError::Failed(format!("restoring checkpoint {}: {e}", r.metadata.checkpoint_id));
    let n = r.metadata.checkpoint_id;
    let operator_elements = |uid: &str| -> OpResult<Option<Vec<Vec<u8>>>> {
        let Some(op) = r.metadata.operators.iter().find(|o| o.uid == uid) else { return Ok(None) };
        let read = |s: &SubtaskState| -> OpResult<Vec<Vec<u8>>> {
            match &s.operator {
                Some(f) => r.runtime.block_on(weir_state::operator_state::read_list(&r.storage, f)).map_err(fail),
                None => Ok(Vec::new()),
            }
        };
        // At the same parallelism every subtask gets its own state back (as Flink does);
        // otherwise the elements of all old subtasks are dealt round-robin.
        if op.parallelism == info.parallelism {
            return match op.subtasks.get(info.index as usize) {
                Some(s) => read(s).map(Some),
                None => Ok(Some(Vec::new())),
            };
        }
        let mut all = Vec::new();
        for s in &op.subtasks {
            all.push(read(s)?);
        }
        let mut mine = weir_state::operator_state::redistribute_round_robin(all, info.parallelism as usize);
        Ok(Some(std::mem::take(&mut mine[info.index as usize])))
    };
    if let (Some(src), Some(uid)) = (chain.source.as_mut(), chain.source_uid.as_deref()) {
        if let Some(elements) = operator_elements(uid)? {
            src.restore_state(elements)?;
        }
    }
    for (op, uid) in chain.operators.iter_mut().zip(&chain.uids) {
        let elements = operator_elements(uid)?.unwrap_or_default();
        op.operator().restore_state(n, elements)?;
        let handles: Vec<KeyedStateHandle> = r
            .metadata
            .operators
            .iter()
            .filter(|o| &o.uid == uid)
            .flat_map(|o| o.subtasks.iter().flat_map(|s| s.keyed.iter().cloned()))
            .collect();
        if handles.is_empty() {
            continue;
        }
        if let Some(backend) = op.keyed_state() {
            let range = KeyGroupRange::for_subtask(info.max_parallelism, info.parallelism, info.index);
            let restored = r
                .runtime
                .block_on(StateBackend::restore(state.backend, &state.local_dir, info.max_parallelism, range, &r.storage, &handles))
                .map_err(fail)?;
            *backend = restored;
            backend.set_aggregate_cache(state.rocksdb_aggregate_cache).map_err(fail)?;
        }
    }
    // Channel state: input on the chain's first uid, output on its last.
    let mut channels = RestoredChannels::default();
    let head = chain.source_uid.clone().or_else(|| chain.uids.first().cloned());
    let tail = chain.uids.last().cloned().or_else(|| chain.source_uid.clone());
    for (uid, input) in [(head, true), (tail, false)] {
        let Some(uid) = uid else { continue };
        let Some(op) = r.metadata.operators.iter().find(|o| o.uid == uid) else { continue };
        let has_channel_state = op.subtasks.iter().any(|s| if input { s.input_channels.is_some() } else { s.output_channels.is_some() });
        if !has_channel_state {
            continue;
        }
        if op.parallelism != info.parallelism {
            return Err(OperatorError::Failed(format!(
                "checkpoint {n} holds in-flight data of '{uid}' (an unaligned checkpoint) taken at parallelism {}; it can only be \
                 restored at that parallelism, not {} (restore from an aligned checkpoint or a savepoint to rescale)",
                op.parallelism, info.parallelism
            )));
        }
        let Some(sub) = op.subtasks.get(info.index as usize) else { continue };
        let Some(handle) = (if input { &sub.input_channels } else { &sub.output_channels }) else { continue };
        let buffers = r.runtime.block_on(weir_state::channel_state::read_handle(&r.storage, handle)).map_err(fail)?;
        for b in buffers {
            let batch = decode_batch(&b.ipc).map_err(|e| {
                OperatorError::Failed(format!(
                    "restoring checkpoint {n}: an in-flight buffer in {} does not decode: {e}",
                    handle.paths().join(", ")
                ))
            })?;
            if input {
                channels.input.push(batch);
            } else {
                channels.output.push(batch);
            }
        }
    }
    Ok(channels)
}
/// An unaligned checkpoint this task snapshotted and whose channel state it still collects.
struct Collecting {
    /// Aligned time before the switch (zero when unaligned from the start).
    alignment: Duration,
    /// Unaligned from the first barrier, or switched by the timeout.
    kind: SnapshotKind,
    /// Input buffers of the checkpoint, with their gate channel, in the order they were taken
    /// or overtaken.
    input: Vec<(usize, Item)>,
    /// Output buffers its barrier overtook on remote channels.
    output: Vec<OvertakenOutput>,
    /// The upload of its operator and keyed state, started at the snapshot.
    upload: tokio::task::JoinHandle<Result<Uploaded, weir_state::StateError>>,
    /// The chain's first uid (input channel state is recorded there) and last (output).
    head_uid: String,
    tail_uid: String,
    /// An aligned snapshot under the aligned-checkpoint timeout whose barrier may still wait
    /// in a remote output queue: acknowledged once it left, or switched to unaligned (its
    /// overtaken output persisted) at this instant.
    awaiting_output: Option<Instant>,
    /// How long its synchronous part took, and when that ended.
    timing: Timing,
}

/// The synchronous part of a checkpoint: how long it took and when it ended (the asynchronous
/// part runs from there to the acknowledgement).
#[derive(Debug, Clone, Copy)]
struct Timing {
    sync: Duration,
    sync_end: Instant,
}

/// Where a source task is with its input ([`Runner::source_command`] is the transition
/// function; the end of the input is leaving the source loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourcePhase {
    /// Polling the source between commands.
    Polling,
    /// Stop with savepoint: the savepoint's barrier is out and the source is not polled until
    /// the savepoint completes (the input ends) or is aborted (polling resumes).
    Suspended { savepoint: u64 },
}

/// The task thread's working state while the chain runs.
struct Runner {
    /// Reports state changes (FINISHING, from here).
    report: Arc<dyn Fn(TaskEvent) + Send + Sync>,
    /// The final checkpoint this task snapshotted, once its input ended.
    final_checkpoint: Option<u64>,
    /// Which subtask this is.
    info: SubtaskInfo,
    /// The output side; its `records_out` is the task's output counter.
    partition: ResultPartition,
    /// Rows taken from the source or the gate.
    records_in: u64,
    /// Set by [`Task::cancel`].
    cancelled: Arc<AtomicBool>,
    /// Commands from the TaskManager.
    commands: Receiver<TaskCommand>,
    /// `None`: checkpointing is off.
    checkpointing: Option<CheckpointSettings>,
    /// Alignment state over the gate's channels (none for a source task).
    barriers: BarrierHandler,
    /// How this job's barriers travel when a barrier does not say (a source's trigger emits
    /// them accordingly).
    policy: AlignmentPolicy,
    /// Keyed handles uploaded per checkpoint, so RocksDB can reuse their files once complete.
    /// Never a savepoint's: its files are in the user's folder.
    uploaded: Arc<Mutex<BTreeMap<u64, Vec<(String, KeyedStateHandle)>>>>,
    /// Savepoints this task took that have not completed: their completion is not a
    /// checkpoint's for the keyed backends (see [`Runner::command`]).
    savepoints: BTreeSet<u64>,
    /// What the task waits on when it cannot go on.
    waker: Arc<Waker>,
    /// Unaligned checkpoints collecting channel state, by id.
    collecting: BTreeMap<u64, Collecting>,
    /// Uploads of aligned snapshots that may still run, by checkpoint id: an abort stops them.
    aligned_uploads: BTreeMap<u64, tokio::task::AbortHandle>,
    /// Input channel state of the checkpoint this attempt restored: processed first.
    restored_input: VecDeque<RecordBatch>,
    /// Where completed channel state goes to be written; started on first use.
    channel_writer: Option<tokio::sync::mpsc::UnboundedSender<(u64, Collecting)>>,
    /// Combines the watermarks of the gate's channels into the task's event time.
    valve: WatermarkValve,
    /// Bytes taken from the gate: Arrow's in-memory size of a local buffer, the encoded size
    /// of a remote one.
    bytes_in: u64,
    /// Where the counters are published, and when they last were.
    metrics: Arc<TaskMetrics>,
    published: Instant,
}

/// Terminal collector of a chain: output goes to the partition (or nowhere, for a sink).
struct Output<'a>(&'a mut ResultPartition);

impl Collector for Output<'_> {
    fn collect(&mut self, batch: RecordBatch) -> OpResult {
        self.0.emit(batch)
    }

    /// Behind the rows emitted before it: the rows still being batched are cut into a buffer
    /// first.
    fn emit_watermark(&mut self, watermark: i64) -> OpResult {
        self.0.flush_all()?;
        self.0.broadcast_event(Event::Watermark(watermark))
    }

    fn emit_watermark_status(&mut self, idle: bool) -> OpResult {
        self.0.flush_all()?;
        self.0.broadcast_event(Event::WatermarkStatus { idle })
    }
}

impl Runner {
    /// Runs the chain to the end of its input (the source loop or the gate loop), then ends it as
    /// the module header describes. Returns `Ok` also when the task was cancelled. Warns when
    /// checkpointing is on but the source cannot rewind.
    ///
    /// A cancelled gate task returns at once, but a cancelled source task goes down the
    /// end-of-input path like a source that ended: without checkpointing its chain is finished
    /// (a chained sink's `finish` runs) and end of partition is sent; with checkpointing it
    /// reports FINISHING before it stops.
    fn run(&mut self, mut chain: OperatorChain, gate: Option<&InputGate>) -> OpResult {
        if self.checkpointing.is_some() && chain.source.as_ref().is_some_and(|s| !s.is_replayable()) {
            tracing::warn!(task = %self.info.vertex_name, "this source cannot rewind: after a failure its rows are not replayed (at-most-once)");
        }
        match chain.source.take() {
            Some(mut source) => {
                let result = self.run_source(&mut chain, &mut source);
                chain.source = Some(source);
                result?;
            }
            None => {
                let gate = gate.ok_or_else(|| OperatorError::Failed("a task without a source has no input".into()))?;
                if !self.run_gate(&mut chain, gate)? {
                    return Ok(());
                }
            }
        }
        if self.checkpointing.is_none() {
            finish_chain(&mut chain.operators, &mut Output(&mut self.partition))?;
            return self.partition.finish();
        }
        // Exactly-once end of input (as Flink's final checkpoint): the output is not committed
        // by the end of input itself, but by a final checkpoint taken once every task of the
        // job has reached it. A failure before that checkpoint completes replays from the last
        // one, and the uncommitted tail is discarded, never duplicated.
        self.partition.finish()?;
        tracing::info!(task = %self.info.vertex_name, subtask = self.info.index, "input ended; waiting for the final checkpoint");
        (self.report)(TaskEvent {
            vertex: self.info.vertex,
            subtask: self.info.index,
            state: TaskState::Finishing,
            records_in: self.records_in,
            records_out: self.partition.records_out,
        });
        self.await_final_checkpoint(&mut chain)
    }

    /// After the end of input: takes the final checkpoint when told to, and returns once it
    /// completed (the sinks committed) or the task is cancelled.
    ///
    /// Polls its commands every 50 ms, so a cancellation is noticed. Other commands are
    /// ignored. If the command channel closes, the wait ends as if the checkpoint had
    /// completed, and the task reports FINISHED.
    fn await_final_checkpoint(&mut self, chain: &mut OperatorChain) -> OpResult {
        let mut source = chain.source.take();
        let result = loop {
            if self.cancelled.load(Ordering::SeqCst) {
                break Ok(());
            }
            match self.commands.recv_timeout(Duration::from_millis(50)) {
                Ok(TaskCommand::FinalCheckpoint(barrier)) => {
                    let id = barrier.id;
                    if let Err(e) = self.checkpoint(chain, source.as_mut(), barrier, Duration::ZERO, SnapshotKind::Aligned) {
                        break Err(e);
                    }
                    self.final_checkpoint = Some(id);
                }
                Ok(TaskCommand::NotifyCheckpointComplete(n)) => {
                    if let Err(e) = self.command(chain, None, TaskCommand::NotifyCheckpointComplete(n)) {
                        break Err(e);
                    }
                    if self.final_checkpoint.is_some_and(|f| n >= f) {
                        break Ok(());
                    }
                }
                Ok(other) => tracing::debug!(task = %self.info.vertex_name, "ignoring {other:?} after the end of input"),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
            }
        };
        chain.source = source;
        result
    }

    /// How checkpoint `b.id` travels: as its barrier says (the JobManager's setting when it was
    /// triggered), else as this task was deployed; always aligned at-least-once.
    fn policy_of(&self, b: &Barrier) -> AlignmentPolicy {
        match self.checkpointing.as_ref().map(|c| c.mode) {
            Some(CheckpointingMode::ExactlyOnce) => b.alignment.unwrap_or(self.policy),
            _ => AlignmentPolicy::Aligned,
        }
    }

    /// Copies the counters into the task's [`TaskMetrics`] if the last copy is
    /// [`PUBLISH_EVERY`] old (one comparison otherwise).
    fn publish(&mut self, now: Instant) {
        if now.saturating_duration_since(self.published) >= PUBLISH_EVERY {
            self.published = now;
            self.publish_now();
        }
    }

    /// Copies the counters, and the output queues and credit (which take the channels' locks).
    fn publish_now(&self) {
        self.publish_counters();
        let (queue, credit) = self.partition.queue_and_credit();
        self.metrics.publish_queues(queue, credit);
    }

    /// Copies the row and byte counters: a few stores, no lock.
    fn publish_counters(&self) {
        self.metrics.publish(Published {
            records_in: self.records_in,
            records_out: self.partition.records_out,
            bytes_in: self.bytes_in,
            bytes_out: self.partition.bytes_out(),
        });
    }

    /// Waits on the task's waker until `deadline` (or a wake), counting the time as
    /// backpressure (no room on an output) or idleness. The counters are published first (the
    /// wait may last, and readers should see what the task did before it); the queues only as
    /// often as [`PUBLISH_EVERY`], since reading them takes the channels' locks, which the task
    /// on the other side of each channel also takes.
    fn wait(&mut self, deadline: Option<Instant>, backpressured: bool) {
        self.publish_counters();
        self.publish(Instant::now());
        self.metrics.wait_started(backpressured);
        self.waker.wait(deadline);
        self.metrics.wait_ended();
    }

    /// Whether the task may take its next input batch: every output channel has room and no
    /// operator asked for a pause. Otherwise, when it may look again at the latest (`None`:
    /// when woken).
    fn input_allowed(&self, chain: &OperatorChain, now: Instant) -> Result<(), Option<Instant>> {
        if let Some(t) = ChainOperator::chain_ready_at(&chain.operators).filter(|t| *t > now) {
            return Err(Some(t));
        }
        if !self.partition.is_available() {
            return Err(None);
        }
        Ok(())
    }

    /// Fires the chain's due timers if the outputs have room; returns when the task must look
    /// again for the next one (`None`: no timer, or the outputs are full and the task is woken
    /// when they regain room).
    fn timers(&mut self, chain: &mut OperatorChain) -> OpResult<Option<Instant>> {
        if !self.partition.is_available() {
            return Ok(None);
        }
        let next = ChainOperator::chain_next_timer(&chain.operators);
        // Read the clock after the operators answered: a timer due "now" is due.
        if next.is_some_and(|t| t <= Instant::now()) {
            fire_timers(&mut chain.operators, &mut Output(&mut self.partition))?;
        }
        Ok(ChainOperator::chain_next_timer(&chain.operators))
    }

    /// The earliest of `deadlines` and the task's own: the next buffer flush and alignment
    /// timeout.
    fn deadline(&self, extra: Option<Instant>) -> Option<Instant> {
        // While an aligned barrier may wait in an output queue, look every few milliseconds
        // whether it left (nothing wakes the task when it does).
        let output =
            self.collecting.values().filter_map(|c| c.awaiting_output).min().map(|d| d.min(Instant::now() + Duration::from_millis(5)));
        [extra, self.partition.next_flush(), self.barriers.next_deadline(), output].into_iter().flatten().min()
    }

    /// Aligned snapshots under the aligned-checkpoint timeout whose barrier waited in a remote
    /// output queue: acknowledged once it left; switched to unaligned at the deadline (the
    /// barrier overtakes the buffers before it, which become output channel state).
    fn check_output_barriers(&mut self, now: Instant) {
        let waiting: Vec<(u64, Instant)> = self.collecting.iter().filter_map(|(id, c)| c.awaiting_output.map(|d| (*id, d))).collect();
        for (id, deadline) in waiting {
            if !self.partition.holds_barrier(id) {
                self.finish_channel_state(id);
            } else if now >= deadline {
                let output = self.partition.prioritize_barrier(id);
                if let Some(c) = self.collecting.get_mut(&id) {
                    c.output.extend(output);
                    c.kind = SnapshotKind::TimedOut;
                }
                self.finish_channel_state(id);
            }
        }
    }

    /// The work of every round before input: commands, alignment timeouts, due flushes.
    fn housekeeping(&mut self, chain: &mut OperatorChain, gate: Option<&InputGate>, now: Instant) -> OpResult {
        while let Ok(cmd) = self.commands.try_recv() {
            self.command(chain, gate, cmd)?;
        }
        if let Some(gate) = gate {
            if self.barriers.next_deadline().is_some_and(|d| d <= now) {
                self.barrier_input(chain, gate, Input::Tick, &[])?;
            }
        }
        self.check_output_barriers(now);
        self.partition.flush_due(now)
    }

    /// The source loop. Each round: stop if cancelled; take the commands ([`Runner::source_command`]:
    /// a trigger snapshots at once and emits the barrier, behind the rows emitted before it or
    /// ahead of them when unaligned); flush what is due; then, if the source is polling and the
    /// outputs have room, one `poll_next`: a batch goes through the chain, an idle source waits
    /// (see the module header), the end of the source returns. A suspended source only waits for
    /// its next command or deadline.
    fn run_source(&mut self, chain: &mut OperatorChain, source: &mut Box<dyn weir_core::operator::SourceReader>) -> OpResult {
        let mut phase = SourcePhase::Polling;
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Ok(());
            }
            while let Ok(cmd) = self.commands.try_recv() {
                match self.source_command(chain, source, phase, cmd)? {
                    Some(next) => phase = next,
                    None => return Ok(()),
                }
            }
            let now = Instant::now();
            self.publish(now);
            self.check_output_barriers(now);
            self.partition.flush_due(now)?;
            let timer = self.timers(chain)?;
            if let SourcePhase::Suspended { .. } = phase {
                self.wait(self.deadline(timer), false);
                continue;
            }
            match self.input_allowed(chain, now) {
                Err(until) => {
                    let backpressured = !self.partition.is_available();
                    self.wait(self.deadline(earliest(until, timer)), backpressured);
                    continue;
                }
                Ok(()) => {}
            }
            match source.poll_next()? {
                SourcePoll::Batch(b) => {
                    self.records_in += b.num_rows() as u64;
                    push_through(&mut chain.operators, b, &mut Output(&mut self.partition))?;
                }
                SourcePoll::Idle(wait) => {
                    let poll = Instant::now() + wait.min(Duration::from_millis(20));
                    self.wait(self.deadline(earliest(Some(poll), timer)), false);
                }
                SourcePoll::End => return self.end_of_event_time(chain),
            }
        }
    }

    /// A bounded input ended (or was drained): event time ends with it, so every event-time
    /// timer of the chain and downstream fires, behind every row.
    fn end_of_event_time(&mut self, chain: &mut OperatorChain) -> OpResult {
        push_watermark(&mut chain.operators, MAX_WATERMARK, &mut Output(&mut self.partition))
    }

    /// The source task's transition function: acts on one command in `phase` and returns the
    /// next phase, or `None` when the input ends here (stop with drain, or the completion of the
    /// savepoint a stop waited for).
    fn source_command(
        &mut self,
        chain: &mut OperatorChain,
        source: &mut Box<dyn weir_core::operator::SourceReader>,
        phase: SourcePhase,
        cmd: TaskCommand,
    ) -> OpResult<Option<SourcePhase>> {
        use SourcePhase::*;
        Ok(match (phase, cmd) {
            (Polling, TaskCommand::TriggerCheckpoint(b)) => {
                self.trigger(chain, source, b)?;
                Some(Polling)
            }
            (Polling, TaskCommand::StopWithSavepoint(b)) => {
                let savepoint = b.id;
                self.trigger(chain, source, b)?;
                Some(Suspended { savepoint })
            }
            (Suspended { savepoint }, TaskCommand::TriggerCheckpoint(b) | TaskCommand::StopWithSavepoint(b)) => {
                self.cannot_take(b.id, format!("the source is stopping with savepoint {savepoint}"))?;
                Some(phase)
            }
            (_, TaskCommand::EndInput) => {
                self.end_of_event_time(chain)?;
                None
            }
            (Suspended { savepoint }, TaskCommand::NotifyCheckpointComplete(n)) if n >= savepoint => {
                self.command(chain, None, TaskCommand::NotifyCheckpointComplete(n))?;
                tracing::info!(task = %self.info.vertex_name, subtask = self.info.index, "savepoint {savepoint} completed; stopping the source");
                None
            }
            (Suspended { savepoint }, TaskCommand::AbortCheckpoint(id)) if id == savepoint => {
                self.command(chain, None, TaskCommand::AbortCheckpoint(id))?;
                tracing::info!(task = %self.info.vertex_name, subtask = self.info.index, "savepoint {savepoint} aborted; the source goes on");
                Some(Polling)
            }
            (phase, other) => {
                self.command(chain, None, other)?;
                Some(phase)
            }
        })
    }

    /// A source takes checkpoint (or savepoint) `b.id` and emits its barrier: unaligned under an
    /// unaligned policy, except for savepoints, which are always aligned.
    fn trigger(&mut self, chain: &mut OperatorChain, source: &mut Box<dyn weir_core::operator::SourceReader>, b: Barrier) -> OpResult {
        let unaligned = self.policy_of(&b) == AlignmentPolicy::Unaligned && !b.is_savepoint();
        let kind = if unaligned { SnapshotKind::Unaligned } else { SnapshotKind::Aligned };
        let id = b.id;
        self.checkpoint(chain, Some(source), b, Duration::ZERO, kind)?;
        if kind == SnapshotKind::Unaligned {
            // A source has no input: its channel state is complete at once.
            self.finish_channel_state(id);
        }
        Ok(())
    }

    /// The gate loop (see the module header). Returns true once every input ended, false when
    /// the task was cancelled. Any other gate failure, or a buffer that does not decode, is an
    /// error naming the reason or the channel.
    fn run_gate(&mut self, chain: &mut OperatorChain, gate: &InputGate) -> OpResult<bool> {
        let mut debloater = gate.debloater(Instant::now(), self.bytes_in);
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let now = Instant::now();
            if let Some(size) = debloater.as_mut().and_then(|d| d.update(now, self.bytes_in)) {
                gate.announce_buffer_size(size);
            }
            self.publish(now);
            self.housekeeping(chain, Some(gate), now)?;
            let timer = self.timers(chain)?;
            let allowed = self.input_allowed(chain, now);
            if !self.restored_input.is_empty() {
                // The restored input comes before everything on the gate, priority events too.
                match allowed {
                    Ok(()) => {
                        let batch = self.restored_input.pop_front().expect("not empty");
                        self.process(chain, batch)?;
                    }
                    Err(until) => {
                        let backpressured = !self.partition.is_available();
                        self.wait(self.deadline(earliest(until, timer)), backpressured);
                    }
                }
                continue;
            }
            match gate.try_poll(allowed.is_ok()) {
                GatePoll::Item(ch, item @ Item::Buffer(_)) => {
                    self.record_input(ch, &item);
                    let Item::Buffer(b) = item else { unreachable!() };
                    self.bytes_in += b.get_array_memory_size() as u64;
                    self.process(chain, b)?
                }
                GatePoll::Item(ch, item @ Item::Encoded(_)) => {
                    self.record_input(ch, &item);
                    let Item::Encoded(encoded) = item else { unreachable!() };
                    self.bytes_in += encoded.len() as u64;
                    let b = encoded.decode().map_err(|e| OperatorError::Failed(format!("corrupt buffer on input channel {ch}: {e}")))?;
                    self.process(chain, b)?
                }
                GatePoll::Item(channel, Item::Event(event)) => self.event(chain, gate, channel, event, &[])?,
                GatePoll::Priority { channel, event, overtaken } => self.event(chain, gate, channel, event, &overtaken)?,
                GatePoll::Announce { channel, barrier } => self.barrier_input(chain, gate, Input::Announce { channel, barrier }, &[])?,
                GatePoll::Timeout => {
                    let backpressured = allowed.is_err() && !self.partition.is_available();
                    // Waiting with room on the outputs and nothing on the gate: time the
                    // debloater does not count as busy. A wait for output room or for an
                    // operator's pause (a throttle) is the task's own pace, and counts.
                    let waiting_for_input = (debloater.is_some() && allowed.is_ok()).then(Instant::now);
                    self.wait(self.deadline(earliest(allowed.err().flatten(), timer)), backpressured);
                    if let (Some(d), Some(since)) = (debloater.as_mut(), waiting_for_input) {
                        d.idle(since.elapsed());
                    }
                }
                GatePoll::Finished => return Ok(true),
                GatePoll::Failed(reason) => {
                    if self.cancelled.load(Ordering::SeqCst) {
                        return Ok(false);
                    }
                    return Err(OperatorError::Failed(reason));
                }
            }
        }
    }

    /// Adds a buffer just taken from `channel` to the channel state of every unaligned checkpoint
    /// whose barrier has not arrived on that channel yet (a cheap check when none collects).
    fn record_input(&mut self, channel: usize, item: &Item) {
        if !self.barriers.is_collecting() {
            return;
        }
        for id in self.barriers.records(channel) {
            if let Some(c) = self.collecting.get_mut(&id) {
                c.input.push((channel, item.clone()));
            }
        }
    }

    /// Feeds an event taken from the gate to the barrier handler. `overtaken` are the buffers a
    /// priority event overtook on its channel.
    fn event(&mut self, chain: &mut OperatorChain, gate: &InputGate, channel: usize, event: Event, overtaken: &[Item]) -> OpResult {
        let input = match event {
            Event::EndOfPartition => {
                let out = self.valve.end(channel);
                self.event_time(chain, out)?;
                Input::EndOfPartition { channel }
            }
            Event::Barrier(barrier) => Input::Barrier { channel, barrier },
            Event::CancelCheckpoint(id) => Input::Cancel { channel, id },
            Event::Watermark(watermark) => {
                let out = self.valve.watermark(channel, watermark);
                return self.event_time(chain, out);
            }
            Event::WatermarkStatus { idle } => {
                let out = self.valve.status(channel, idle);
                return self.event_time(chain, out);
            }
        };
        self.barrier_input(chain, gate, input, overtaken)
    }

    /// Emits what the watermark valve decided: a new event time goes through the chain (firing
    /// its event-time timers), a status straight to the outputs.
    fn event_time(&mut self, chain: &mut OperatorChain, outputs: Vec<ValveOutput>) -> OpResult {
        for output in outputs {
            match output {
                ValveOutput::Watermark(w) => push_watermark(&mut chain.operators, w, &mut Output(&mut self.partition))?,
                ValveOutput::Status { idle } => Output(&mut self.partition).emit_watermark_status(idle)?,
            }
        }
        Ok(())
    }

    /// Feeds one input to the barrier handler and performs its actions in order: block or
    /// unblock a gate channel; move a queued barrier ahead (timeout); take the checkpoint (which
    /// forwards the barrier); add overtaken buffers to a checkpoint's channel state; finish
    /// that channel state; or abort: drop what was collected, send a cancellation marker
    /// downstream (a priority event) and decline the checkpoint to the JobManager.
    fn barrier_input(&mut self, chain: &mut OperatorChain, gate: &InputGate, input: Input, overtaken: &[Item]) -> OpResult {
        for action in self.barriers.handle(input, Instant::now()) {
            match action {
                Action::Block(c) => gate.set_blocked(c, true),
                Action::Unblock(c) => gate.set_blocked(c, false),
                Action::Prioritize { id } => gate.prioritize_barrier(id),
                Action::Snapshot { barrier, alignment, kind } => self.checkpoint(chain, None, barrier, alignment, kind)?,
                Action::Persist { id, channel } => {
                    if let Some(c) = self.collecting.get_mut(&id) {
                        c.input.extend(overtaken.iter().map(|i| (channel, i.clone())));
                    }
                }
                Action::ChannelStateDone { id } => self.finish_channel_state(id),
                Action::Abort { id, reason } => {
                    tracing::debug!(task = %self.info.vertex_name, checkpoint = id, "aborting: {reason}");
                    if let Some(c) = self.collecting.remove(&id) {
                        c.upload.abort();
                    }
                    self.partition.broadcast_priority(Event::CancelCheckpoint(id))?;
                    self.decline(id, reason);
                }
            }
        }
        Ok(())
    }

    /// Acts on one command (see [`TaskCommand`]). For a completed checkpoint, the keyed handles
    /// uploaded for every checkpoint up to it are first handed to their backends (incremental
    /// RocksDB checkpoints then reference those files instead of uploading them again). A
    /// completed savepoint is only told to the operators.
    fn command(&mut self, chain: &mut OperatorChain, gate: Option<&InputGate>, cmd: TaskCommand) -> OpResult {
        match cmd {
            // Handled where they apply (source loop, end of input); ignored elsewhere.
            TaskCommand::TriggerCheckpoint(_)
            | TaskCommand::FinalCheckpoint(_)
            | TaskCommand::StopWithSavepoint(_)
            | TaskCommand::EndInput => Ok(()),
            TaskCommand::NotifyCheckpointComplete(n) if self.savepoints.contains(&n) => {
                // A savepoint's completion commits the operators (sinks) up to it, but confirms
                // no checkpoint's uploads for reuse: checkpoints before it may still be aborted,
                // and the savepoint's own files are not reusable.
                self.savepoints = self.savepoints.split_off(&(n + 1));
                for op in chain.operators.iter_mut() {
                    op.operator().notify_checkpoint_complete(n)?;
                }
                Ok(())
            }
            TaskCommand::NotifyCheckpointComplete(n) => {
                self.savepoints = self.savepoints.split_off(&(n + 1));
                let done: Vec<(u64, Vec<(String, KeyedStateHandle)>)> = {
                    let mut up = self.uploaded.lock();
                    let keep = up.split_off(&(n + 1));
                    std::mem::replace(&mut *up, keep).into_iter().collect()
                };
                for (op, uid) in chain.operators.iter_mut().zip(&chain.uids) {
                    if let Some(backend) = op.keyed_state() {
                        for (id, handles) in &done {
                            for (_, h) in handles.iter().filter(|(u, _)| u == uid) {
                                backend.snapshot_uploaded(*id, h);
                            }
                        }
                        backend.notify_checkpoint_complete(n);
                    }
                    op.operator().notify_checkpoint_complete(n)?;
                }
                Ok(())
            }
            TaskCommand::AbortCheckpoint(id) => {
                if let Some(upload) = self.aligned_uploads.remove(&id) {
                    upload.abort();
                }
                self.abort_checkpoint(chain, gate, id)
            }
        }
    }

    /// The coordinator aborted checkpoint `id`: as if a cancellation marker had arrived.
    fn abort_checkpoint(&mut self, chain: &mut OperatorChain, gate: Option<&InputGate>, id: u64) -> OpResult {
        match gate {
            // As if a cancellation marker had arrived: the handler aborts it here (if it is
            // not over already) and the abort action tells downstream.
            Some(gate) => self.barrier_input(chain, gate, Input::Cancel { channel: 0, id }, &[]),
            None => {
                if let Some(c) = self.collecting.remove(&id) {
                    c.upload.abort();
                }
                self.partition.broadcast_priority(Event::CancelCheckpoint(id)).map(|_| ())
            }
        }
    }

    /// This task cannot take checkpoint `id`: a cancellation marker goes downstream (a priority
    /// event, so nobody aligns for it) unless the outputs ended, and the checkpoint is declined.
    fn cannot_take(&mut self, id: u64, reason: String) -> OpResult {
        tracing::debug!(task = %self.info.vertex_name, checkpoint = id, "declining: {reason}");
        if !self.partition.is_finished() {
            self.partition.broadcast_priority(Event::CancelCheckpoint(id))?;
        }
        self.decline(id, reason);
        Ok(())
    }

    /// Reports checkpoint `id` as declined with `reason`; nothing with checkpointing off.
    fn decline(&self, id: u64, reason: String) {
        if let Some(c) = &self.checkpointing {
            (c.report)(CheckpointAck {
                vertex: self.info.vertex,
                subtask: self.info.index,
                checkpoint: id,
                result: Err(reason),
                alignment: Duration::ZERO,
                size: 0,
                kind: SnapshotKind::Aligned,
                inflight_bytes: 0,
                sync_duration: Duration::ZERO,
                async_duration: Duration::ZERO,
            });
        }
    }

    /// Takes this task's part of checkpoint `barrier.id`.
    ///
    /// Synchronous part, on the task thread: snapshot the source position, each operator's
    /// operator state and each keyed backend. Then the barrier goes to every output channel,
    /// unless end of partition was sent already (the final checkpoint): for an aligned snapshot
    /// behind every row emitted before it (buffers are flushed first), for an unaligned one
    /// ahead of the buffers still queued, which become output channel state. Then the upload
    /// runs on the runtime while the task goes on. An aligned snapshot is acknowledged when the
    /// upload is done (or declined naming the upload error); an unaligned one once its channel
    /// state is complete too ([`Runner::finish_channel_state`]). With checkpointing off, the
    /// barrier is only passed on. A savepoint's barrier sends every file to a storage opened at
    /// its folder, under `<uid>-<subtask>/` (a checkpoint's go under `<job>/chk-<n>/`); a
    /// folder that cannot be opened declines the savepoint ([`Runner::cannot_take`]).
    fn checkpoint(
        &mut self,
        chain: &mut OperatorChain,
        source: Option<&mut Box<dyn weir_core::operator::SourceReader>>,
        barrier: Barrier,
        alignment: Duration,
        kind: SnapshotKind,
    ) -> OpResult {
        let Some(settings) = self.checkpointing.clone() else {
            // Checkpointing is off for this job: pass the barrier on untouched.
            self.partition.flush_all()?;
            return self.partition.broadcast_event(Event::Barrier(barrier));
        };
        let n = barrier.id;
        let policy = self.policy_of(&barrier);
        let started = Instant::now();
        let (snapshot, storage) = match &barrier.savepoint {
            None => {
                (SnapshotType::Checkpoint { job: self.info.job_id.clone(), incremental: settings.incremental }, settings.storage.clone())
            }
            Some(sp) => match (settings.open_storage)(&sp.location) {
                Ok(storage) => (SnapshotType::Savepoint(sp.format), storage),
                Err(e) => return self.cannot_take(n, format!("cannot open the folder {} of savepoint {n}: {e}", sp.location)),
            },
        };
        if barrier.is_savepoint() {
            self.savepoints.insert(n);
        }
        let mut operator_states: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        let mut keyed: Vec<(String, PendingSnapshot)> = Vec::new();
        let mut uids: Vec<String> = Vec::new();
        if let (Some(src), Some(uid)) = (source, chain.source_uid.clone()) {
            if let Some(elements) = src.snapshot_state(n)? {
                operator_states.push((uid.clone(), elements));
            }
            uids.push(uid);
        }
        for (op, uid) in chain.operators.iter_mut().zip(&chain.uids) {
            uids.push(uid.clone());
            if let Some(elements) = op.operator().snapshot_state(n)? {
                operator_states.push((uid.clone(), elements));
            }
            if let Some(backend) = op.keyed_state() {
                let target = SnapshotTarget { snapshot: snapshot.clone(), checkpoint: n, operator: uid.clone(), subtask: self.info.index };
                let pending = backend.snapshot(target).map_err(|e| OperatorError::Failed(format!("snapshot of {uid}: {e}")))?;
                keyed.push((uid.clone(), pending));
            }
        }
        let is_savepoint = barrier.is_savepoint();
        let mut output = Vec::new();
        if !self.partition.is_finished() {
            if kind == SnapshotKind::Aligned {
                // Rows emitted before the barrier leave before it.
                self.partition.flush_all()?;
                self.partition.broadcast_event(Event::Barrier(barrier))?;
            } else {
                output = self.partition.broadcast_priority(Event::Barrier(Barrier { unaligned: true, ..barrier }))?;
            }
        }
        let (head_uid, tail_uid) = (uids.first().cloned().unwrap_or_default(), uids.last().cloned().unwrap_or_default());
        let timing = Timing { sync: started.elapsed(), sync_end: Instant::now() };

        // The asynchronous part: upload, then acknowledge (unaligned: once the channel state is
        // complete too).
        let (info, uploaded) = (self.info.clone(), self.uploaded.clone());
        let upload = settings.runtime.spawn(async move {
            let result = upload(&storage, &snapshot, &info, n, uids, operator_states, keyed).await;
            match &result {
                // A savepoint's files are the user's: no checkpoint may reference them.
                Ok((_, handles, _)) if !is_savepoint => {
                    uploaded.lock().insert(n, handles.clone());
                }
                _ => {}
            }
            result
        });
        let awaiting_output = match policy {
            AlignmentPolicy::AlignedThenUnaligned(t)
                if kind == SnapshotKind::Aligned && !is_savepoint && self.partition.holds_barrier(n) =>
            {
                Some(Instant::now() + t)
            }
            _ => None,
        };
        if kind == SnapshotKind::Aligned && awaiting_output.is_none() {
            // An abort stops the upload: a failed savepoint's folder must not fill up after the
            // JobManager deleted it.
            self.aligned_uploads.retain(|_, h| !h.is_finished());
            self.aligned_uploads.insert(n, upload.abort_handle());
            let info = self.info.clone();
            settings.runtime.spawn(async move {
                let result = upload.await.unwrap_or_else(|e| Err(weir_state::StateError::Interrupted(e.to_string())));
                let ack = ack(&info, n, result, alignment, kind, 0, timing);
                (settings.report)(ack);
            });
        } else {
            self.collecting
                .insert(n, Collecting { alignment, kind, input: Vec::new(), output, upload, head_uid, tail_uid, awaiting_output, timing });
        }
        Ok(())
    }

    /// Checkpoint `id`'s channel state is complete: hands it to the task's channel-state writer
    /// ([`ChannelStateWriter`], started on first use), which writes it once the checkpoints
    /// completed before it are written, then acknowledges.
    fn finish_channel_state(&mut self, id: u64) {
        let Some(c) = self.collecting.remove(&id) else { return };
        let Some(settings) = self.checkpointing.clone() else { return };
        let writer = self.channel_writer.get_or_insert_with(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let w = ChannelStateWriter { info: self.info.clone(), settings: settings.clone(), written: HashMap::new() };
            settings.runtime.spawn(w.run(rx));
            tx
        });
        let _ = writer.send((id, c));
    }

    /// Counts one input batch and pushes it through the chain into the partition.
    fn process(&mut self, chain: &mut OperatorChain, batch: RecordBatch) -> OpResult {
        self.records_in += batch.num_rows() as u64;
        push_through(&mut chain.operators, batch, &mut Output(&mut self.partition))?;
        Ok(())
    }
}

/// Identifies a buffer in memory, so that one recorded for several concurrent checkpoints is
/// stored once. Pointer identity is sound only while the buffer is alive: the writer keeps a
/// clone of every buffer it remembers, so the allocation cannot be reused meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BufferKey {
    /// An input buffer on a gate channel: its first data buffer's address and length, its
    /// offset and row count (so slices of one allocation differ).
    Input { channel: usize, ptr: usize, len: usize, offset: usize, rows: usize },
    /// An encoded output buffer on an output edge's channel: its bytes' address and length.
    Output { edge: usize, channel: usize, ptr: usize, len: usize },
}

impl BufferKey {
    /// The key of an input item; `None` for one without a data buffer to tell it by (it is then
    /// always written).
    fn input(channel: usize, item: &Item) -> Option<Self> {
        match item {
            Item::Encoded(b) => Some(Self::Input { channel, ptr: b.address(), len: b.len(), offset: 0, rows: 0 }),
            Item::Buffer(batch) => {
                let data = batch.columns().first()?.to_data();
                let buf = data.buffers().first()?;
                Some(Self::Input { channel, ptr: buf.as_ptr() as usize, len: buf.len(), offset: data.offset(), rows: batch.num_rows() })
            }
            Item::Event(_) => None,
        }
    }
}

/// A buffer already written to a channel-state file.
struct Written {
    /// The file and the record's index in it.
    file: StoredFile,
    record: u32,
    /// The record's bytes.
    bytes: u64,
    /// The checkpoint whose completion wrote it (old entries are forgotten).
    by: u64,
    /// Keeps the buffer alive, so its address identifies it (see [`BufferKey`]).
    _alive: Item,
}

/// How many checkpoints back the writer remembers what it wrote: a buffer recorded for
/// checkpoints further apart is written again (correct, only not deduplicated).
const REMEMBERED_CHECKPOINTS: u64 = 8;

/// Writes a task's completed channel state, one checkpoint after the other, on the
/// TaskManager's runtime: each buffer once (a buffer recorded for several concurrent unaligned
/// checkpoints is referenced by the later ones), then acknowledges with the handles.
struct ChannelStateWriter {
    info: SubtaskInfo,
    settings: CheckpointSettings,
    written: HashMap<BufferKey, Written>,
}

/// Where one buffer of a checkpoint's channel state is: already in a file, or among the records
/// of the file this checkpoint writes.
enum Placed {
    Existing { file: StoredFile, record: u32, bytes: u64 },
    New { record: u32, bytes: u64 },
}

impl ChannelStateWriter {
    /// Takes completed checkpoints in order until the task is gone.
    async fn run(mut self, mut jobs: tokio::sync::mpsc::UnboundedReceiver<(u64, Collecting)>) {
        while let Some((id, c)) = jobs.recv().await {
            let (alignment, kind, timing) = (c.alignment, c.kind, c.timing);
            let (result, inflight) = match self.write(id, c).await {
                Ok((uploaded, inflight)) => (Ok(uploaded), inflight),
                Err(e) => (Err(e), 0),
            };
            (self.settings.report)(ack(&self.info, id, result, alignment, kind, inflight, timing));
        }
    }

    /// Writes checkpoint `id`'s new buffers (encoding in-memory batches here, off the task
    /// thread; network buffers are written as they arrived), waits for its state upload, and
    /// returns the state with the channel-state handles and the in-flight bytes.
    async fn write(&mut self, id: u64, c: Collecting) -> Result<(Uploaded, u64), weir_state::StateError> {
        let mut records: Vec<ChannelBuffer> = Vec::new();
        let mut fresh: Vec<(Option<BufferKey>, u32, u64, Item)> = Vec::new();
        // A buffer an earlier file holds is referenced there; any other becomes a new record.
        let existing = |written: &HashMap<BufferKey, Written>, key: Option<BufferKey>| {
            key.and_then(|k| written.get(&k)).map(|w| Placed::Existing { file: w.file.clone(), record: w.record, bytes: w.bytes })
        };
        let mut add = |key: Option<BufferKey>, channel: u32, subchannel: u32, ipc: bytes::Bytes, alive: Item| {
            let (record, bytes) = (records.len() as u32, ipc.len() as u64);
            records.push(ChannelBuffer { channel, subchannel, ipc });
            fresh.push((key, record, bytes, alive));
            Placed::New { record, bytes }
        };
        let mut input = Vec::with_capacity(c.input.len());
        for (channel, item) in c.input {
            let key = BufferKey::input(channel, &item);
            if let Some(p) = existing(&self.written, key) {
                input.push(p);
                continue;
            }
            let ipc = match &item {
                Item::Buffer(b) => {
                    encode_batch(b).map_err(|e| weir_state::StateError::Codec(format!("encoding an in-flight buffer: {e}")))?
                }
                Item::Encoded(encoded) => {
                    encoded.self_contained().map_err(|e| weir_state::StateError::Codec(format!("encoding an in-flight buffer: {e}")))?
                }
                Item::Event(_) => continue,
            };
            input.push(add(key, channel as u32, 0, ipc, item));
        }
        let mut output = Vec::new();
        for o in c.output {
            for encoded in o.buffers {
                let key = Some(BufferKey::Output { edge: o.edge, channel: o.channel, ptr: encoded.address(), len: encoded.len() });
                match existing(&self.written, key) {
                    Some(p) => output.push(p),
                    None => {
                        let ipc = encoded
                            .self_contained()
                            .map_err(|e| weir_state::StateError::Codec(format!("encoding an in-flight buffer: {e}")))?;
                        output.push(add(key, o.edge as u32, o.channel as u32, ipc, Item::Encoded(encoded)))
                    }
                }
            }
        }
        let file = if records.is_empty() {
            None
        } else {
            let rel = weir_state::storage::layout::channel_state_file(
                &self.info.job_id,
                self.info.vertex,
                self.info.index,
                self.info.attempt,
                id,
            );
            Some(weir_state::channel_state::write(&self.settings.storage, &rel, &records).await?)
        };
        if let Some(file) = &file {
            for (key, record, bytes, alive) in fresh {
                if let Some(k) = key {
                    self.written.insert(k, Written { file: file.clone(), record, bytes, by: id, _alive: alive });
                }
            }
        }
        self.written.retain(|_, w| w.by + REMEMBERED_CHECKPOINTS > id);
        let handle = |placed: Vec<Placed>| -> Option<ChannelStateHandle> {
            let mut h = ChannelStateHandle::default();
            for p in placed {
                let (f, record, bytes) = match p {
                    Placed::Existing { file, record, bytes } => (file, record, bytes),
                    Placed::New { record, bytes } => (file.clone().expect("a new record means a file was written"), record, bytes),
                };
                match h.parts.last_mut() {
                    Some(last) if last.file.path == f.path => {
                        last.records.push(record);
                        last.bytes += bytes;
                    }
                    _ => h.parts.push(ChannelStatePart { file: f, records: vec![record], bytes }),
                }
            }
            (!h.parts.is_empty()).then_some(h)
        };
        let (input, output) = (handle(input), handle(output));
        let inflight = input.iter().chain(output.iter()).map(|h| h.bytes()).sum();
        let (mut states, handles, size) = c.upload.await.unwrap_or_else(|e| Err(weir_state::StateError::Interrupted(e.to_string())))?;
        for (h, uid, is_input) in [(input, &c.head_uid, true), (output, &c.tail_uid, false)] {
            let Some(h) = h else { continue };
            let entry = match states.iter().position(|(u, _)| u == uid) {
                Some(i) => &mut states[i].1,
                None => {
                    states.push((uid.clone(), SubtaskState::default()));
                    &mut states.last_mut().expect("just pushed").1
                }
            };
            if is_input {
                entry.input_channels = Some(h);
            } else {
                entry.output_channels = Some(h);
            }
        }
        Ok(((states, handles, size), inflight))
    }
}

/// The acknowledgement (or, for an upload error, the decline) of checkpoint `n` by this task.
fn ack(
    info: &SubtaskInfo,
    n: u64,
    result: Result<Uploaded, weir_state::StateError>,
    alignment: Duration,
    kind: SnapshotKind,
    inflight_bytes: u64,
    timing: Timing,
) -> CheckpointAck {
    let (result, size) = match result {
        Ok((states, _, size)) => (Ok(states), size + inflight_bytes),
        Err(e) => (Err(format!("uploading the state of {} ({}/{}): {e}", info.vertex_name, info.index + 1, info.parallelism)), 0),
    };
    CheckpointAck {
        vertex: info.vertex,
        subtask: info.index,
        checkpoint: n,
        result,
        alignment,
        size,
        kind,
        inflight_bytes,
        sync_duration: timing.sync,
        async_duration: timing.sync_end.elapsed(),
    }
}

/// What an upload yields: the state per operator uid (for the ack), the keyed handles (kept
/// until the checkpoint completes), and the bytes written.
type Uploaded = (Vec<(String, SubtaskState)>, Vec<(String, KeyedStateHandle)>, u64);

/// Writes each operator state list to `operator-state` in its uid's exclusive directory
/// (`<job>/chk-<n>/<uid>-<subtask>/` for a checkpoint, `<uid>-<subtask>/` in a savepoint's
/// folder, which `storage` is then opened at) and uploads each keyed snapshot. Every uid of the
/// chain gets an entry, empty if it has no state.
async fn upload(
    storage: &CheckpointStorage,
    snapshot: &SnapshotType,
    info: &SubtaskInfo,
    n: u64,
    uids: Vec<String>,
    operator_states: Vec<(String, Vec<Vec<u8>>)>,
    keyed: Vec<(String, PendingSnapshot)>,
) -> Result<Uploaded, weir_state::StateError> {
    let mut states: BTreeMap<String, SubtaskState> = uids.into_iter().map(|u| (u, SubtaskState::default())).collect();
    let mut handles = Vec::new();
    let mut size = 0;
    for (uid, elements) in operator_states {
        let target = SnapshotTarget { snapshot: snapshot.clone(), checkpoint: n, operator: uid.clone(), subtask: info.index };
        let rel = format!("{}/operator-state", target.exclusive_dir());
        let file = weir_state::operator_state::write_list(storage, &rel, &elements).await?;
        size += file.size;
        states.entry(uid).or_default().operator = Some(file);
    }
    for (uid, pending) in keyed {
        let h = pending.upload(storage).await?;
        size += h.size();
        states.entry(uid.clone()).or_default().keyed.push(h.clone());
        handles.push((uid, h));
    }
    Ok((states.into_iter().collect(), handles, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::SavepointOptions;
    use crate::partition::{ChannelWriter, OutputEdge};
    use arrow_array::{Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    use weir_core::graph::{ChainedOperator, OperatorSpec, Partitioning};
    use weir_core::keygroup::{hash_i64, key_group_for_hash, subtask_for_key_group};

    fn info() -> SubtaskInfo {
        SubtaskInfo {
            job_id: "j".into(),
            attempt: 0,
            vertex: 1,
            vertex_name: "pass".into(),
            index: 0,
            parallelism: 1,
            max_parallelism: 128,
        }
    }

    /// A task of one operator that passes column `k` from `input` to `partition`.
    fn pass_task(
        schema: &SchemaRef,
        input: &Arc<InputGate>,
        partition: ResultPartition,
        checkpointing: Option<CheckpointSettings>,
    ) -> TaskDescriptor {
        let vertex = Vertex {
            id: 1,
            name: "pass".into(),
            parallelism: 1,
            operators: vec![ChainedOperator {
                name: "select".into(),
                uid: "select".into(),
                spec: OperatorSpec::Select { columns: vec!["k".into()] },
                output_schema: schema.clone(),
            }],
        };
        TaskDescriptor {
            info: info(),
            vertex,
            input_schema: schema.clone(),
            gate: Some(input.clone()),
            partition,
            state: Default::default(),
            checkpointing,
            restore: None,
            connectors: Arc::new(crate::operators::test_util::TestConnectors),
            functions: Arc::new(crate::user::NoUserFunctions),
            sql: Arc::new(crate::sql::NoSqlOperators),
        }
    }

    /// Opens storages as the TaskManager does, with a default configuration.
    fn open_file_storage() -> OpenStorage {
        Arc::new(|url: &str| CheckpointStorage::open(url, &Default::default()))
    }

    /// Exactly-once checkpoint settings under `alignment` into `storage`, with the task's
    /// acknowledgements on the returned channel.
    fn test_checkpointing(
        alignment: AlignmentPolicy,
        storage: CheckpointStorage,
        runtime: &tokio::runtime::Runtime,
    ) -> (CheckpointSettings, std::sync::mpsc::Receiver<CheckpointAck>) {
        let (acks_tx, acks) = std::sync::mpsc::channel();
        let acks_tx = Mutex::new(acks_tx);
        let settings = CheckpointSettings {
            mode: CheckpointingMode::ExactlyOnce,
            alignment,
            storage,
            open_storage: open_file_storage(),
            incremental: false,
            runtime: runtime.handle().clone(),
            report: Arc::new(move |ack| {
                let _ = acks_tx.lock().send(ack);
            }),
        };
        (settings, acks)
    }

    /// A key that hash partitioning over two channels sends to `channel`.
    fn key_for(channel: usize) -> i64 {
        (0..).find(|k| subtask_for_key_group(128, 2, key_group_for_hash(hash_i64(*k), 128)) as usize == channel).expect("some key")
    }

    /// `execution.buffer-timeout` holds while input keeps arriving: a quiet output channel's
    /// one row leaves once its timeout passed, not when its segment fills up (never, here) or
    /// when the input falls silent (never either, while the feeder runs).
    #[test]
    fn a_quiet_output_channel_is_flushed_by_its_timeout_while_input_keeps_arriving() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let rows = |k: i64, n: usize| RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![k; n]))]).unwrap();
        let (quiet, busy) = (key_for(0), key_for(1));
        // The feeder only clones one large batch, the task hashes every row of it: the input
        // queue stays full, so the task's poll never times out.
        let input = Arc::new(InputGate::new(1024, vec![None]));
        let output = Arc::new(InputGate::new(64, vec![None, None]));
        let channels = (0..2).map(|index| ChannelWriter::Local { gate: output.clone(), index }).collect();
        let edge = OutputEdge::new(Partitioning::Hash { key: "k".into() }, Some(0), 128, channels, 0);
        let partition = ResultPartition::new(vec![edge], 1 << 20, Duration::from_millis(20));
        let desc = pass_task(&schema, &input, partition, None);
        let task = Task::spawn(desc, Arc::new(|_| {})).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let feeder = {
            let (input, stop, quiet, busy) = (input.clone(), stop.clone(), rows(quiet, 1), rows(busy, 32 * 1024));
            std::thread::spawn(move || {
                input.push_blocking(0, Item::Buffer(quiet)).unwrap();
                while !stop.load(Ordering::SeqCst) && input.push_blocking(0, Item::Buffer(busy.clone())).is_ok() {}
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let quiet_arrived = loop {
            match output.poll(Some(deadline)) {
                GatePoll::Item(0, Item::Buffer(_)) => break true,
                GatePoll::Item(..) => {}
                _ => break false,
            }
        };
        let still_feeding = !feeder.is_finished();
        stop.store(true, Ordering::SeqCst);
        task.cancel();
        feeder.join().unwrap();
        task.join();
        assert!(quiet_arrived, "the quiet channel's row never left");
        assert!(still_feeding, "the input must still be arriving when the quiet row leaves");
    }

    /// The task loop never blocks inside a send: with its only output channel full and never
    /// drained (a stalled downstream) and its input queue full too, an unaligned barrier still
    /// reaches it at once, is forwarded ahead of the queued output, and the checkpoint is
    /// acknowledged with the in-flight buffers it overtook.
    #[test]
    fn a_barrier_passes_a_task_whose_downstream_is_stalled() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let rows = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![7i64; 100]))]).unwrap();
        let input = Arc::new(InputGate::new(4, vec![None]));
        // Downstream: one credit, and nobody ever takes anything.
        let output = Arc::new(InputGate::new(1, vec![None]));
        let edge = OutputEdge::new(Partitioning::Forward, None, 128, vec![ChannelWriter::Local { gate: output.clone(), index: 0 }], 0);
        let partition = ResultPartition::new(vec![edge], 1, Duration::from_secs(60));
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let storage = CheckpointStorage::open(&format!("file://{}", dir.path().display()), &Default::default()).unwrap();
        let (checkpointing, acks) = test_checkpointing(AlignmentPolicy::Unaligned, storage, &runtime);
        let desc = pass_task(&schema, &input, partition, Some(checkpointing));
        let task = Task::spawn(desc, Arc::new(|_| {})).unwrap();
        let feeder = {
            let input = input.clone();
            std::thread::spawn(move || while input.push_blocking(0, Item::Buffer(rows.clone())).is_ok() {})
        };
        // Backpressure all the way: the output holds its credit's worth (and the overdraft of
        // the one batch taken), the input queue is full, the feeder waits.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(output.queued_buffers(0) >= 1 && input.queued_buffers(0) == 4) {
            assert!(Instant::now() < deadline, "the task never became backpressured");
            std::thread::sleep(Duration::from_millis(5));
        }
        let stalled_output = output.queued_items(0);
        let barrier = Barrier { unaligned: true, ..Barrier::new(1, 0) };
        assert_eq!(input.push_priority(0, Event::Barrier(barrier)).unwrap(), 4, "the barrier overtook the full input queue");
        let ack = acks.recv_timeout(Duration::from_secs(30)).expect("the checkpoint is acknowledged while the downstream is stalled");
        assert_eq!((ack.checkpoint, ack.kind), (1, SnapshotKind::Unaligned));
        assert!(ack.result.is_ok(), "{:?}", ack.result);
        assert!(ack.inflight_bytes > 0, "the overtaken input buffers are persisted");
        assert_eq!(output.queued_items(0), stalled_output + 1, "the barrier was forwarded into the stalled output");
        task.cancel();
        feeder.join().unwrap();
        task.join();
    }

    /// A buffer recorded for two concurrent unaligned checkpoints is stored once: the second
    /// checkpoint's handle references the first one's file for it, and reading either handle
    /// gives back exactly its own buffers, in order.
    #[test]
    fn a_buffer_shared_by_concurrent_checkpoints_is_stored_once() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let storage = CheckpointStorage::open(&format!("file://{}", dir.path().display()), &Default::default()).unwrap();
        let settings = CheckpointSettings {
            mode: CheckpointingMode::ExactlyOnce,
            alignment: AlignmentPolicy::Unaligned,
            storage: storage.clone(),
            open_storage: open_file_storage(),
            incremental: false,
            runtime: runtime.handle().clone(),
            report: Arc::new(|_| {}),
        };
        let batch = |v: i64| Item::Buffer(RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![v; 10])) as _)]).unwrap());
        let (a, b, c) = (batch(1), batch(2), batch(3));
        let collecting = |input: Vec<(usize, Item)>| Collecting {
            alignment: Duration::ZERO,
            kind: SnapshotKind::Unaligned,
            input,
            output: Vec::new(),
            upload: runtime.spawn(async { Ok((Vec::new(), Vec::new(), 0)) }),
            head_uid: "op".into(),
            tail_uid: "op".into(),
            awaiting_output: None,
            timing: Timing { sync: Duration::ZERO, sync_end: Instant::now() },
        };
        let mut writer = ChannelStateWriter { info: info(), settings, written: HashMap::new() };
        let first = collecting(vec![(0, a.clone()), (1, b.clone())]);
        let second = collecting(vec![(1, b.clone()), (0, c.clone())]);
        let ((s1, _, _), bytes1) = runtime.block_on(writer.write(1, first)).unwrap();
        let ((s2, _, _), bytes2) = runtime.block_on(writer.write(2, second)).unwrap();
        let h1 = s1[0].1.input_channels.clone().unwrap();
        let h2 = s2[0].1.input_channels.clone().unwrap();
        assert_eq!(h1.paths().len(), 1);
        assert_eq!(h2.paths().len(), 2, "checkpoint 2 references checkpoint 1's file for the shared buffer: {h2:?}");
        let own2 = h2.parts.iter().find(|p| p.file.path != h1.parts[0].file.path).unwrap();
        assert_eq!(own2.records.len(), 1, "only the new buffer is written again");
        assert!(bytes1 > 0 && bytes2 > 0);
        let values = |h: &ChannelStateHandle| -> Vec<(u32, i64)> {
            runtime
                .block_on(weir_state::channel_state::read_handle(&storage, h))
                .unwrap()
                .iter()
                .map(|b| (b.channel, decode_batch(&b.ipc).unwrap().column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0)))
                .collect()
        };
        assert_eq!(values(&h1), vec![(0, 1), (1, 2)]);
        assert_eq!(values(&h2), vec![(1, 2), (0, 3)]);
    }

    /// A source that emits one row per poll, numbered from 0, and snapshots how many it emitted.
    struct CountingSource {
        schema: SchemaRef,
        next: Arc<std::sync::atomic::AtomicI64>,
    }

    impl weir_core::operator::SourceReader for CountingSource {
        fn poll_next(&mut self) -> OpResult<SourcePoll> {
            let n = self.next.fetch_add(1, Ordering::SeqCst);
            Ok(SourcePoll::Batch(RecordBatch::try_new(self.schema.clone(), vec![Arc::new(Int64Array::from(vec![n]))]).unwrap()))
        }

        fn snapshot_state(&mut self, _checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
            Ok(Some(vec![self.next.load(Ordering::SeqCst).to_be_bytes().to_vec()]))
        }
    }

    /// Builds [`CountingSource`]s sharing one counter (of rows polled), and no sinks.
    struct CountingConnectors(Arc<std::sync::atomic::AtomicI64>);

    impl ConnectorFactory for CountingConnectors {
        fn source(
            &self,
            op: &weir_core::graph::ChainedOperator,
            _info: &SubtaskInfo,
        ) -> OpResult<Box<dyn weir_core::operator::SourceReader>> {
            Ok(Box::new(CountingSource { schema: op.output_schema.clone(), next: self.0.clone() }))
        }

        fn sink(&self, op: &weir_core::graph::ChainedOperator, _info: &SubtaskInfo) -> OpResult<Box<dyn weir_core::operator::Operator>> {
            Err(OperatorError::NotAConnector { name: op.name.clone(), uid: op.uid.clone(), expected: "sink" })
        }
    }

    /// What the downstream of the source task sees, in order.
    #[derive(Debug)]
    enum Seen {
        Rows(usize),
        Barrier(Barrier),
        Cancel(u64),
        End,
    }

    /// A running source task (uid `src`) whose one output channel the test drains, with its
    /// acknowledgements, its state changes and its source's row counter.
    struct SourceHarness {
        task: Option<Task>,
        output: Arc<InputGate>,
        acks: Receiver<CheckpointAck>,
        states: Receiver<TaskState>,
        polled: Arc<std::sync::atomic::AtomicI64>,
        dir: tempfile::TempDir,
        _runtime: tokio::runtime::Runtime,
    }

    impl SourceHarness {
        fn start() -> Self {
            let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
            let output = Arc::new(InputGate::new(16, vec![None]));
            let edge = OutputEdge::new(Partitioning::Forward, None, 128, vec![ChannelWriter::Local { gate: output.clone(), index: 0 }], 0);
            // One buffer per row: every row leaves at once.
            let partition = ResultPartition::new(vec![edge], 1, Duration::from_millis(5));
            let dir = tempfile::tempdir().unwrap();
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let storage = CheckpointStorage::open(&format!("file://{}/checkpoints", dir.path().display()), &Default::default()).unwrap();
            let (checkpointing, acks) = test_checkpointing(AlignmentPolicy::Aligned, storage, &runtime);
            let vertex = Vertex {
                id: 1,
                name: "source".into(),
                parallelism: 1,
                operators: vec![ChainedOperator {
                    name: "source".into(),
                    uid: "src".into(),
                    spec: OperatorSpec::FileSource { path: "unused".into() },
                    output_schema: schema.clone(),
                }],
            };
            let polled = Arc::new(std::sync::atomic::AtomicI64::new(0));
            let desc = TaskDescriptor {
                info: SubtaskInfo { vertex_name: "source".into(), ..info() },
                vertex,
                input_schema: schema,
                gate: None,
                partition,
                state: Default::default(),
                checkpointing: Some(checkpointing),
                restore: None,
                connectors: Arc::new(CountingConnectors(polled.clone())),
                functions: Arc::new(crate::user::NoUserFunctions),
                sql: Arc::new(crate::sql::NoSqlOperators),
            };
            let (states_tx, states) = std::sync::mpsc::channel();
            let states_tx = Mutex::new(states_tx);
            let task = Task::spawn(
                desc,
                Arc::new(move |ev: TaskEvent| {
                    let _ = states_tx.lock().send(ev.state);
                }),
            )
            .unwrap();
            Self { task: Some(task), output, acks, states, polled, dir, _runtime: runtime }
        }

        fn task(&self) -> &Task {
            self.task.as_ref().expect("running")
        }

        /// The next thing downstream receives; panics if nothing comes within 30 s.
        fn next(&self) -> Seen {
            match self.output.poll(Some(Instant::now() + Duration::from_secs(30))) {
                GatePoll::Item(_, Item::Buffer(b)) => Seen::Rows(b.num_rows()),
                GatePoll::Item(_, Item::Encoded(encoded)) => Seen::Rows(encoded.decode().unwrap().num_rows()),
                GatePoll::Item(_, Item::Event(Event::Barrier(b))) => Seen::Barrier(b),
                GatePoll::Item(_, Item::Event(Event::CancelCheckpoint(id))) => Seen::Cancel(id),
                GatePoll::Priority { event: Event::CancelCheckpoint(id), .. } => Seen::Cancel(id),
                GatePoll::Item(_, Item::Event(Event::EndOfPartition)) => Seen::End,
                other => panic!("unexpected downstream: {other:?}"),
            }
        }

        /// Takes rows until `rows` more arrived; returns how many it took.
        fn take_rows(&self, rows: usize) -> usize {
            let mut got = 0;
            while got < rows {
                match self.next() {
                    Seen::Rows(n) => got += n,
                    other => panic!("expected rows, got {other:?}"),
                }
            }
            got
        }

        fn ack(&self, id: u64) -> CheckpointAck {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let ack = self.acks.recv_timeout(left).unwrap_or_else(|_| panic!("checkpoint {id} was never acknowledged or declined"));
                if ack.checkpoint == id {
                    return ack;
                }
            }
        }

        fn await_state(&self, wanted: TaskState) {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let state = self.states.recv_timeout(left).unwrap_or_else(|_| panic!("the task never reported {wanted:?}"));
                if state == wanted {
                    return;
                }
            }
        }

        fn savepoint_barrier(&self, id: u64) -> Barrier {
            let location = format!("file://{}/savepoints/savepoint-{id}", self.dir.path().display());
            Barrier::savepoint(id, 0, SavepointOptions { location, format: weir_state::SavepointFormat::Canonical })
        }
    }

    impl Drop for SourceHarness {
        fn drop(&mut self) {
            if let Some(task) = self.task.take() {
                task.cancel();
                task.join();
            }
        }
    }

    /// Stop with savepoint: the source snapshots into the savepoint's folder (paths relative to
    /// it), emits the savepoint's barrier and then nothing more while the savepoint is pending;
    /// a trigger meanwhile is declined. Its completion ends the input as an exhausted source
    /// does: end of partition, FINISHING, the final checkpoint, FINISHED.
    #[test]
    fn a_source_stopped_with_a_savepoint_emits_nothing_after_its_barrier_and_ends_once_it_completes() {
        let h = SourceHarness::start();
        let mut before = h.take_rows(5);
        let sp = h.savepoint_barrier(7);
        h.task().command(TaskCommand::StopWithSavepoint(sp.clone()));
        loop {
            match h.next() {
                Seen::Rows(n) => before += n,
                Seen::Barrier(b) => {
                    assert_eq!(b, sp, "the savepoint's barrier carries its folder, aligned");
                    break;
                }
                other => panic!("unexpected before the savepoint's barrier: {other:?}"),
            }
        }
        let ack = h.ack(7);
        let states = ack.result.expect("the savepoint is acknowledged");
        let operator = states.iter().find(|(uid, _)| uid == "src").and_then(|(_, s)| s.operator.clone()).expect("the source position");
        assert_eq!(operator.path, "src-0/operator-state", "relative to the savepoint's folder");
        assert!(h.dir.path().join("savepoints/savepoint-7/src-0/operator-state").exists());
        assert!(!h.dir.path().join("checkpoints/j").exists(), "nothing of the savepoint in the checkpoint directory");

        // Suspended: a checkpoint triggered meanwhile is declined, and downstream told.
        h.task().command(TaskCommand::TriggerCheckpoint(Barrier::new(8, 0)));
        let declined = h.ack(8);
        assert!(declined.result.unwrap_err().contains("stopping with savepoint 7"));
        assert!(matches!(h.next(), Seen::Cancel(8)));

        h.task().command(TaskCommand::NotifyCheckpointComplete(7));
        assert!(matches!(h.next(), Seen::End), "the input ends right after the savepoint's barrier");
        h.await_state(TaskState::Finishing);
        h.task().command(TaskCommand::FinalCheckpoint(Barrier::new(9, 0)));
        assert!(h.ack(9).result.is_ok());
        h.task().command(TaskCommand::NotifyCheckpointComplete(9));
        h.await_state(TaskState::Finished);
        assert_eq!(h.polled.load(Ordering::SeqCst), before as i64, "the source was not polled after the savepoint's barrier");
    }

    /// An aborted stop-with-savepoint leaves the job running: the source emits again. A
    /// savepoint whose folder cannot be opened is declined naming the folder.
    #[test]
    fn a_source_resumes_when_its_stop_with_savepoint_is_aborted() {
        let h = SourceHarness::start();
        h.take_rows(3);
        let bad = Barrier::savepoint(2, 0, SavepointOptions { location: "ftp://nowhere/sp".into(), format: Default::default() });
        h.task().command(TaskCommand::TriggerCheckpoint(bad));
        let err = h.ack(2).result.unwrap_err();
        assert!(err.contains("ftp://nowhere/sp"), "{err}");

        let sp = h.savepoint_barrier(3);
        h.task().command(TaskCommand::StopWithSavepoint(sp.clone()));
        loop {
            match h.next() {
                Seen::Rows(_) => {}
                Seen::Barrier(b) if b.id == 3 => break,
                Seen::Cancel(2) => {}
                other => panic!("unexpected before the savepoint's barrier: {other:?}"),
            }
        }
        assert!(h.ack(3).result.is_ok());
        let polled_at_barrier = h.polled.load(Ordering::SeqCst);
        h.task().command(TaskCommand::AbortCheckpoint(3));
        assert!(matches!(h.next(), Seen::Cancel(3)), "downstream hears of the abort");
        h.take_rows(5);
        assert!(h.polled.load(Ordering::SeqCst) >= polled_at_barrier + 5, "the source is polled again");
    }
}

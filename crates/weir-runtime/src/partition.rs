//! The sending side of a task: partitions output batches over the channels of each output
//! edge and batches rows into network buffers.
//!
//! Rows for one channel accumulate until they reach the channel's buffer size or
//! `execution.buffer-timeout` has passed since the first of them, whichever comes first; a
//! batch larger than the buffer size is cut into slices of that size (zero-copy). The buffer
//! size is `taskmanager.memory.segment-size`, or the smaller size the receiving gate last
//! announced (buffer debloating, see [`crate::debloat`]), read per batch. The task calls
//! [`ResultPartition::flush_due`] after every batch and every wake; it compares one instant
//! (the earliest deadline) and scans the channels only once that deadline passed. Hash
//! partitioning computes each row's channel from its key group, once per row, in one loop per
//! batch, then gathers each channel's rows with one `take` per channel.
//!
//! ## Ordering
//! Everything a task sends on one channel arrives in the order it was sent: buffers, then
//! events queued behind them. That is why an aligned barrier is sent only after
//! [`ResultPartition::flush_all`]: the rows emitted before it must leave before it. Priority
//! events ([`ResultPartition::broadcast_priority`]: unaligned barriers, cancellation markers)
//! overtake the buffers queued on each channel, never an earlier event.
//!
//! ## Never blocking
//! Sending never waits. The task asks [`ResultPartition::is_available`] before it takes an
//! input batch, and waits on its [`Waker`] (registered with every channel) while some channel
//! is full; the output of the batch it took may then overdraw a channel's bound (FLIP-227's
//! overdraft). So a backpressured task still sees priority barriers, commands and timers.
//!
//! ## Limitations
//! - Sizes come from `RecordBatch::get_array_memory_size`, which counts the whole allocations
//!   behind each column. A slice of a large batch reports the size of the whole batch, so a
//!   slice that reaches another task through a local channel and is emitted again unchanged
//!   (a `select` keeps the arrays) is measured as oversized and cut again, into buffers of
//!   very few rows.
//! - Hash partitioning does not treat null keys specially: a null row goes where the value
//!   stored under its null slot hashes to.

use crate::buffer::{BatchEncoder, Encoded, Event, Item};
use crate::gate::InputGate;
use crate::net::RemoteSubpartition;
use crate::wake::Waker;
use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow_select::take::take_record_batch;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_core::graph::Partitioning;
use weir_core::keygroup::{hash_bytes, hash_i64, subtask_for_key_group, KeyGroups};
use weir_core::operator::{Collector, OpResult, OperatorError};

/// Where one channel's buffers go: the downstream task's gate, or the TCP data plane.
pub enum ChannelWriter {
    /// A task in this TaskManager: straight into its input gate, as channel `index` of it
    /// (the channel's `gate_index` in the [`ChannelPlan`](crate::wiring::ChannelPlan)).
    Local { gate: Arc<InputGate>, index: usize },
    /// A task on another TaskManager, over TCP.
    Remote(Arc<RemoteSubpartition>),
}

impl ChannelWriter {
    /// Sends one item without waiting: the task checked [`ChannelWriter::has_room`] before it
    /// took the input that produced it. Fails once the receiving side is gone (its gate failed,
    /// or the link broke, or the job was released).
    fn push(&self, item: Item) -> OpResult {
        match self {
            ChannelWriter::Local { gate, index } => gate.push(*index, item),
            ChannelWriter::Remote(sub) => sub.push(item),
        }
        .map_err(OperatorError::Failed)
    }

    /// Sends an event ahead of the buffers still queued on this channel (see
    /// [`InputGate::push_priority`] and [`RemoteSubpartition::push_priority`]). Returns the
    /// buffers it overtook that stay this task's responsibility: those queued for the network
    /// (already encoded). A local channel's queue is the downstream gate's, where the
    /// downstream task takes the overtaken buffers as its input channel state, so none.
    fn push_priority(&self, event: Event) -> OpResult<Vec<Encoded>> {
        match self {
            ChannelWriter::Local { gate, index } => gate.push_priority(*index, event).map(|_| Vec::new()),
            ChannelWriter::Remote(sub) => sub.push_priority(event),
        }
        .map_err(OperatorError::Failed)
    }

    /// Whether the channel can take another buffer without exceeding its bound: a local
    /// channel's credits, a remote one's `sender-queue-buffers`.
    fn has_room(&self) -> bool {
        match self {
            ChannelWriter::Local { gate, index } => gate.has_room(*index),
            ChannelWriter::Remote(sub) => sub.has_room(),
        }
    }

    /// The size to cut this channel's buffers at: the segment size, or the smaller size its
    /// receiving gate announced (buffer debloating).
    fn buffer_size(&self, segment: usize) -> usize {
        let announced = match self {
            ChannelWriter::Local { gate, .. } => gate.buffer_size(),
            ChannelWriter::Remote(sub) => sub.buffer_size(),
        };
        announced.map_or(segment, |s| s.min(segment))
    }

    /// Registers the sending task's waker, told when the channel regains room.
    fn set_waker(&self, waker: &Arc<Waker>) {
        match self {
            ChannelWriter::Local { gate, index } => gate.set_sender_waker(*index, waker.clone()),
            ChannelWriter::Remote(sub) => sub.set_waker(waker.clone()),
        }
    }
}

/// Buffers a priority event overtook on one remote output channel: part of the task's output
/// channel state for the checkpoint whose barrier it was.
#[derive(Debug, Clone)]
pub struct OvertakenOutput {
    /// The output edge, in the task's edge order.
    pub edge: usize,
    /// The channel within the edge (the target subtask for hash edges).
    pub channel: usize,
    /// The buffers, Arrow IPC-encoded as they were queued for the network.
    pub buffers: Vec<Encoded>,
}

/// One channel's partly filled buffer: rows waiting for a full segment or their deadline.
struct Pending {
    /// Batches to concatenate into one buffer when it is flushed.
    batches: Vec<RecordBatch>,
    /// Their size, as `get_array_memory_size` counts it.
    bytes: usize,
    /// When the first of them arrived; `None` when empty. The buffer is due one
    /// `execution.buffer-timeout` later.
    since: Option<Instant>,
}

/// One output edge of a task: its partitioning and one writer and pending buffer per channel.
pub struct OutputEdge {
    /// How rows are spread over `channels`.
    partitioning: Partitioning,
    /// For hash edges: the key's column in the emitted batches.
    key_column: Option<usize>,
    /// `pipeline.max-parallelism`: the number of key groups, for hash routing.
    max_parallelism: u32,
    /// One writer per target subtask, in the order the partitioning numbers them (hash: channel
    /// `i` goes to subtask `i`, which owns the `i`-th key-group range).
    channels: Vec<ChannelWriter>,
    /// One pending buffer per channel, same order.
    pending: Vec<Pending>,
    /// Rebalance: the channel the next batch goes to (round robin per batch, not per row).
    next_rebalance: usize,
    /// Per-channel row indices for hash partitioning, reused across batches.
    scratch: Vec<Vec<u32>>,
    /// For hash edges: the channel of each key group (a lookup instead of a division per row).
    channel_of_key_group: Vec<u32>,
    /// For broadcast edges: encodes each buffer once for every remote channel.
    broadcast_encoder: BatchEncoder,
}

impl OutputEdge {
    /// An edge writing to `channels` (from an
    /// [`OutputEdgePlan`](crate::wiring::OutputEdgePlan)). `key_column` must be `Some` for a hash
    /// edge with more than one channel (the first batch panics otherwise). `start_channel`
    /// staggers round robin: the TaskManager passes the subtask index, so the upstream subtasks
    /// of a rebalance edge do not all start on channel 0.
    pub fn new(
        partitioning: Partitioning,
        key_column: Option<usize>,
        max_parallelism: u32,
        channels: Vec<ChannelWriter>,
        start_channel: usize,
    ) -> Self {
        let n = channels.len();
        Self {
            partitioning,
            key_column,
            max_parallelism,
            pending: (0..n).map(|_| Pending { batches: Vec::new(), bytes: 0, since: None }).collect(),
            channels,
            next_rebalance: start_channel % n.max(1),
            scratch: vec![Vec::new(); n],
            channel_of_key_group: if n > 1 {
                (0..max_parallelism).map(|kg| subtask_for_key_group(max_parallelism, n as u32, kg)).collect()
            } else {
                Vec::new()
            },
            broadcast_encoder: BatchEncoder::default(),
        }
    }
}

/// The buffering policy, and when it next requires a flush.
struct Buffering {
    /// `taskmanager.memory.segment-size`: a channel's rows are sent once they reach this size.
    segment_size: usize,
    /// `execution.buffer-timeout`: rows are sent at the latest this long after the first of them
    /// was buffered (checked by [`ResultPartition::flush_due`], so as often as the task wakes).
    timeout: Duration,
    /// No partly filled buffer is due before this instant; `None` when none is pending. It may
    /// be early (a buffer that filled up left before its deadline), never late.
    flush_at: Option<Instant>,
    /// Bytes of the rows buffered for sending, as `get_array_memory_size` counts them (a
    /// broadcast row once).
    bytes_out: u64,
}

impl Buffering {
    /// A channel's buffer started filling at `since`.
    fn started(&mut self, since: Instant) {
        let due = since + self.timeout;
        self.flush_at = Some(self.flush_at.map_or(due, |t| t.min(due)));
    }
}

/// All output edges of a task, and the buffering policy. Everything the task's operator chain
/// emits ends up here.
pub struct ResultPartition {
    /// End of partition was sent on every channel: nothing more may be sent, and a checkpoint
    /// taken afterwards (the final one) forwards no barrier.
    finished: bool,
    edges: Vec<OutputEdge>,
    buffering: Buffering,
    /// Rows emitted, counted before partitioning (a broadcast row counts once).
    pub records_out: u64,
}

impl ResultPartition {
    /// A partition over `edges`, with the TaskManager's segment size and the job's buffer timeout.
    pub fn new(edges: Vec<OutputEdge>, segment_size: usize, buffer_timeout: Duration) -> Self {
        Self {
            finished: false,
            edges,
            buffering: Buffering { segment_size, timeout: buffer_timeout, flush_at: None, bytes_out: 0 },
            records_out: 0,
        }
    }

    /// Bytes of the rows sent so far (see [`Buffering::bytes_out`]).
    pub fn bytes_out(&self) -> u64 {
        self.buffering.bytes_out
    }

    /// Buffers queued on the output channels (in the downstream gates for local ones, waiting
    /// for credit for remote ones), and the room left: local credits, the remote receivers'
    /// announced credit.
    pub fn queue_and_credit(&self) -> (u64, u64) {
        let (mut queue, mut credit) = (0, 0);
        for c in self.edges.iter().flat_map(|e| &e.channels) {
            let (q, r) = match c {
                ChannelWriter::Local { gate, index } => {
                    let q = gate.queued_buffers(*index);
                    (q, gate.credits_per_channel().saturating_sub(q))
                }
                ChannelWriter::Remote(sub) => sub.queue_and_credit(),
            };
            queue += q as u64;
            credit += r as u64;
        }
        (queue, credit)
    }

    /// Whether the task has no output edge (a sink vertex): emitted rows are counted and dropped.
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// Partitions and buffers one batch on every edge: `forward` to the edge's one channel,
    /// `rebalance` the whole batch to the next channel in turn, `broadcast` to every channel (a
    /// clone that shares the buffers), `hash` each row to the subtask owning its key's key group.
    /// Hash keys must be `Utf8`, `Int64` or `Binary`; another type fails the task. May block when a
    /// buffer fills up and its channel has no room (see [`ChannelWriter`]).
    pub fn emit(&mut self, batch: RecordBatch) -> OpResult {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.records_out += batch.num_rows() as u64;
        let buffering = &mut self.buffering;
        for e in 0..self.edges.len() {
            let edge = &mut self.edges[e];
            let n = edge.channels.len();
            match &edge.partitioning {
                Partitioning::Forward => {
                    // Forward edges connect equal parallelism; each task has one channel.
                    buffer(edge, 0, batch.clone(), buffering)?;
                }
                Partitioning::Rebalance => {
                    let ch = edge.next_rebalance;
                    edge.next_rebalance = (ch + 1) % n;
                    buffer(edge, ch, batch.clone(), buffering)?;
                }
                Partitioning::Broadcast => {
                    // One pending buffer (channel 0's) for every channel: see `send`.
                    buffer(edge, 0, batch.clone(), buffering)?;
                }
                Partitioning::Hash { .. } => {
                    if n == 1 {
                        buffer(edge, 0, batch.clone(), buffering)?;
                        continue;
                    }
                    let col = batch.column(edge.key_column.expect("hash edges have a key column"));
                    for s in edge.scratch.iter_mut() {
                        s.clear();
                    }
                    let (groups, channels) = (KeyGroups::new(edge.max_parallelism), &edge.channel_of_key_group);
                    let target = |h: u64| channels[groups.of(h) as usize] as usize;
                    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                        for i in 0..a.len() {
                            edge.scratch[target(hash_bytes(a.value(i).as_bytes()))].push(i as u32);
                        }
                    } else if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
                        for (i, v) in a.values().iter().enumerate() {
                            edge.scratch[target(hash_i64(*v))].push(i as u32);
                        }
                    } else if let Some(a) = col.as_any().downcast_ref::<BinaryArray>() {
                        // The DataStream API's hidden key column: the key's encoded bytes.
                        for i in 0..a.len() {
                            edge.scratch[target(hash_bytes(a.value(i)))].push(i as u32);
                        }
                    } else {
                        return Err(OperatorError::Failed(format!("cannot hash a key of type {}", col.data_type())));
                    }
                    for ch in 0..n {
                        let rows = &edge.scratch[ch];
                        if rows.is_empty() {
                            continue;
                        }
                        let part = if rows.len() == batch.num_rows() {
                            batch.clone()
                        } else {
                            take_record_batch(&batch, &UInt32Array::from(rows.clone()))?
                        };
                        buffer(edge, ch, part, buffering)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// When [`ResultPartition::flush_due`] next has something to flush, at the earliest (it
    /// may find nothing due yet, if the buffer that set this deadline filled up and left).
    pub fn next_flush(&self) -> Option<Instant> {
        self.buffering.flush_at
    }

    /// Flushes buffers whose timeout has passed. Cheap when none has: one comparison.
    ///
    /// The task calls it after every batch and every wake, not only when its poll times out:
    /// while input keeps arriving the poll never times out, and a quiet channel's rows would
    /// wait for a full segment. Sets the next deadline from the buffers still pending.
    pub fn flush_due(&mut self, now: Instant) -> OpResult {
        if self.buffering.flush_at.is_none_or(|t| now < t) {
            return Ok(());
        }
        let timeout = self.buffering.timeout;
        let mut next: Option<Instant> = None;
        for edge in &mut self.edges {
            for ch in 0..edge.channels.len() {
                let Some(since) = edge.pending[ch].since else { continue };
                let due = since + timeout;
                if now >= due {
                    flush(edge, ch)?;
                } else {
                    next = Some(next.map_or(due, |t| t.min(due)));
                }
            }
        }
        self.buffering.flush_at = next;
        Ok(())
    }

    /// Flushes every partly filled buffer (before a barrier, so it stays behind the rows).
    pub fn flush_all(&mut self) -> OpResult {
        for edge in &mut self.edges {
            for ch in 0..edge.channels.len() {
                flush(edge, ch)?;
            }
        }
        self.buffering.flush_at = None;
        Ok(())
    }

    /// Sends an event on every channel, behind everything already sent. Does not flush: a
    /// caller whose event must follow the buffered rows (an aligned barrier) flushes first.
    /// Never waits.
    pub fn broadcast_event(&mut self, event: Event) -> OpResult {
        for edge in &mut self.edges {
            for ch in &edge.channels {
                ch.push(Item::Event(event.clone()))?;
            }
        }
        Ok(())
    }

    /// Sends an event on every channel ahead of the buffers queued there (an unaligned barrier,
    /// a cancellation marker). Rows not yet cut into a buffer are flushed first, so they are
    /// among what it overtakes. Returns the overtaken buffers this task must persist (remote
    /// channels only; see [`ChannelWriter`]).
    pub fn broadcast_priority(&mut self, event: Event) -> OpResult<Vec<OvertakenOutput>> {
        self.flush_all()?;
        let mut out = Vec::new();
        for (e, edge) in self.edges.iter().enumerate() {
            for (c, ch) in edge.channels.iter().enumerate() {
                let buffers = ch.push_priority(event.clone())?;
                if !buffers.is_empty() {
                    out.push(OvertakenOutput { edge: e, channel: c, buffers });
                }
            }
        }
        Ok(out)
    }

    /// Whether the aligned barrier of checkpoint `id` still waits in a remote output queue
    /// (local channels hand it to the downstream gate at once).
    pub fn holds_barrier(&self, id: u64) -> bool {
        self.edges.iter().flat_map(|e| &e.channels).any(|c| matches!(c, ChannelWriter::Remote(sub) if sub.holds_barrier(id)))
    }

    /// The aligned-checkpoint timeout passed for checkpoint `id` while its barrier still waits in
    /// remote output queues: there it overtakes the buffers before it and goes with priority,
    /// marked unaligned. Returns the overtaken buffers (output channel state).
    pub fn prioritize_barrier(&self, id: u64) -> Vec<OvertakenOutput> {
        let mut out = Vec::new();
        for (e, edge) in self.edges.iter().enumerate() {
            for (c, ch) in edge.channels.iter().enumerate() {
                if let ChannelWriter::Remote(sub) = ch {
                    if let Some(buffers) = sub.prioritize_barrier(id).filter(|b| !b.is_empty()) {
                        out.push(OvertakenOutput { edge: e, channel: c, buffers });
                    }
                }
            }
        }
        out
    }

    /// Whether every output channel can take another buffer: the task takes its next input
    /// only then (it may then overdraw a channel by that input's output). A sink (no channel)
    /// is always available.
    pub fn is_available(&self) -> bool {
        self.edges.iter().all(|e| e.channels.iter().all(ChannelWriter::has_room))
    }

    /// Registers the sending task's waker with every channel, so it wakes when one regains room.
    pub fn set_waker(&self, waker: &Arc<Waker>) {
        for edge in &self.edges {
            for ch in &edge.channels {
                ch.set_waker(waker);
            }
        }
    }

    /// Re-sends output channel state after a restore, ahead of anything new: each buffer goes
    /// through this partition's partitioner again (so it lands right at a new parallelism too).
    pub fn emit_restored(&mut self, batch: RecordBatch) -> OpResult {
        let rows = batch.num_rows() as u64;
        self.emit(batch)?;
        self.records_out -= rows;
        Ok(())
    }

    /// Whether end of partition was sent.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Flushes everything, then sends end of partition on every channel: the task's output is
    /// over. `finished` is set first, even if a send then fails.
    pub fn finish(&mut self) -> OpResult {
        self.finished = true;
        for edge in &mut self.edges {
            for ch in 0..edge.channels.len() {
                flush(edge, ch)?;
                edge.channels[ch].push(Item::Event(Event::EndOfPartition))?;
            }
        }
        self.buffering.flush_at = None;
        Ok(())
    }
}

/// Adds a batch to channel `ch`'s pending buffer and sends the buffer once it reaches the
/// channel's buffer size (the segment size, or what its gate announced; on a broadcast edge the
/// smallest of its channels'). A batch measured larger than that, with more than one row, is
/// sent at once as zero-copy slices of about that size each, after the rows already pending
/// (order is kept). A single row larger than it goes as one oversized buffer.
fn buffer(edge: &mut OutputEdge, ch: usize, batch: RecordBatch, buffering: &mut Buffering) -> OpResult {
    let segment = match edge.partitioning {
        Partitioning::Broadcast => {
            edge.channels.iter().map(|c| c.buffer_size(buffering.segment_size)).min().unwrap_or(buffering.segment_size)
        }
        _ => edge.channels[ch].buffer_size(buffering.segment_size),
    };
    let bytes = batch.get_array_memory_size();
    buffering.bytes_out += bytes as u64;
    let rows = batch.num_rows();
    if bytes > segment && rows > 1 {
        // Cut into slices of about one segment each.
        flush(edge, ch)?;
        let per_row = bytes.div_ceil(rows).max(1);
        let rows_per_slice = (segment / per_row).max(1);
        let mut offset = 0;
        while offset < rows {
            let len = rows_per_slice.min(rows - offset);
            send(edge, ch, batch.slice(offset, len))?;
            offset += len;
        }
        return Ok(());
    }
    let p = &mut edge.pending[ch];
    p.bytes += bytes;
    p.batches.push(batch);
    if p.since.is_none() {
        let now = Instant::now();
        p.since = Some(now);
        buffering.started(now);
    }
    if p.bytes >= segment {
        flush(edge, ch)?;
    }
    Ok(())
}

/// Sends channel `ch`'s pending rows as one buffer (concatenated, one copy, if there are
/// several batches) and clears its deadline; nothing pending is a no-op. The partition's
/// `flush_at` is left as it was: it may now be early, which only costs a scan.
fn flush(edge: &mut OutputEdge, ch: usize) -> OpResult {
    let p = &mut edge.pending[ch];
    p.since = None;
    p.bytes = 0;
    let batch = match p.batches.len() {
        0 => return Ok(()),
        1 => p.batches.pop().expect("one batch"),
        _ => {
            let schema = p.batches[0].schema();
            let b = arrow_select::concat::concat_batches(&schema, &p.batches)?;
            p.batches.clear();
            b
        }
    };
    send(edge, ch, batch)
}

/// Sends one buffer on channel `ch`; on a broadcast edge, on every channel: rows there are
/// buffered once (as channel 0's), and encoded once for all the remote channels.
fn send(edge: &mut OutputEdge, ch: usize, batch: RecordBatch) -> OpResult {
    if !matches!(edge.partitioning, Partitioning::Broadcast) || edge.channels.len() == 1 {
        return edge.channels[ch].push(Item::Buffer(batch));
    }
    let mut encoded: Option<Encoded> = None;
    for c in &edge.channels {
        let item = match c {
            ChannelWriter::Local { .. } => Item::Buffer(batch.clone()),
            ChannelWriter::Remote(_) => {
                let e = match &encoded {
                    Some(e) => e.clone(),
                    None => encoded.insert(edge.broadcast_encoder.encode(&batch)?).clone(),
                };
                Item::Encoded(e)
            }
        };
        c.push(item)?;
    }
    Ok(())
}

/// The partition collects what the last operator of the chain emits.
impl Collector for ResultPartition {
    fn collect(&mut self, batch: RecordBatch) -> OpResult {
        self.emit(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::GatePoll;
    use weir_core::keygroup::{key_group_for_hash, KeyGroupRange};

    #[test]
    fn hash_partitioning_sends_every_key_to_the_subtask_owning_its_key_group() {
        let gates: Vec<_> = (0..3).map(|_| Arc::new(InputGate::new(1000, vec![None]))).collect();
        let channels = gates.iter().map(|g| ChannelWriter::Local { gate: g.clone(), index: 0 }).collect();
        let edge = OutputEdge::new(Partitioning::Hash { key: "k".into() }, Some(0), 128, channels, 0);
        let mut part = ResultPartition::new(vec![edge], 1 << 20, Duration::from_secs(60));
        let keys: Vec<i64> = (0..1000).collect();
        let batch = RecordBatch::try_from_iter(vec![("k", Arc::new(Int64Array::from(keys)) as _)]).unwrap();
        part.emit(batch).unwrap();
        part.finish().unwrap();
        let mut seen = 0;
        for (i, g) in gates.iter().enumerate() {
            let range = KeyGroupRange::for_subtask(128, 3, i as u32);
            while let GatePoll::Item(_, item) = g.poll(None) {
                if let Item::Buffer(b) = item {
                    let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    for v in col.values() {
                        assert!(range.contains(key_group_for_hash(hash_i64(*v), 128)));
                        seen += 1;
                    }
                }
            }
        }
        assert_eq!(seen, 1000);
    }

    #[test]
    fn rows_wait_for_a_full_segment_or_the_buffer_timeout() {
        let gate = Arc::new(InputGate::new(100, vec![None]));
        let edge = OutputEdge::new(Partitioning::Rebalance, None, 128, vec![ChannelWriter::Local { gate: gate.clone(), index: 0 }], 0);
        let mut part = ResultPartition::new(vec![edge], 1 << 20, Duration::from_millis(100));
        let small = RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![1, 2])) as _)]).unwrap();
        part.emit(small.clone()).unwrap();
        part.emit(small).unwrap();
        assert_eq!(gate.queued_buffers(0), 0, "a partly filled buffer waits");
        let due = part.next_flush().unwrap();
        part.flush_due(due - Duration::from_millis(1)).unwrap();
        assert_eq!(gate.queued_buffers(0), 0);
        part.flush_due(due).unwrap();
        assert_eq!(gate.queued_buffers(0), 1, "both batches leave as one buffer");
        let GatePoll::Item(_, Item::Buffer(b)) = gate.poll(None) else { panic!() };
        assert_eq!(b.num_rows(), 4);
    }

    #[test]
    fn a_flush_deadline_may_be_early_but_is_never_lost() {
        let gate = Arc::new(InputGate::new(100, vec![None]));
        let edge = OutputEdge::new(Partitioning::Forward, None, 128, vec![ChannelWriter::Local { gate: gate.clone(), index: 0 }], 0);
        let one = RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![1])) as _)]).unwrap();
        let segment = one.get_array_memory_size() * 2;
        let mut part = ResultPartition::new(vec![edge], segment, Duration::from_secs(60));
        part.emit(one.clone()).unwrap();
        part.emit(one.clone()).unwrap();
        assert_eq!(gate.queued_buffers(0), 1, "a full segment leaves at once");
        // Its deadline stays, early: the next check finds nothing due and forgets it.
        let early = part.next_flush().expect("the deadline of the buffer that left");
        part.flush_due(early).unwrap();
        assert_eq!((gate.queued_buffers(0), part.next_flush()), (1, None));
        // A buffer started later gets its own deadline, which flushes it.
        part.emit(one).unwrap();
        let due = part.next_flush().expect("a pending buffer has a deadline");
        part.flush_due(due - Duration::from_millis(1)).unwrap();
        assert_eq!(gate.queued_buffers(0), 1);
        part.flush_due(due).unwrap();
        assert_eq!((gate.queued_buffers(0), part.next_flush()), (2, None));
    }

    #[test]
    fn batches_larger_than_a_segment_are_sliced() {
        let gate = Arc::new(InputGate::new(1000, vec![None]));
        let edge = OutputEdge::new(Partitioning::Forward, None, 128, vec![ChannelWriter::Local { gate: gate.clone(), index: 0 }], 0);
        let mut part = ResultPartition::new(vec![edge], 1024, Duration::from_secs(1));
        let big = RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from((0..10_000).collect::<Vec<i64>>())) as _)]).unwrap();
        part.emit(big).unwrap();
        let n = gate.queued_buffers(0);
        assert!(n >= 70, "80 kB of rows in 1 kB segments, got {n} buffers");
    }

    #[test]
    fn buffers_are_cut_at_the_size_the_receiving_gate_announced() {
        let gate = Arc::new(InputGate::new(1000, vec![None]));
        let edge = OutputEdge::new(Partitioning::Forward, None, 128, vec![ChannelWriter::Local { gate: gate.clone(), index: 0 }], 0);
        let mut part = ResultPartition::new(vec![edge], 32 << 10, Duration::from_secs(60));
        let rows = |n: i64| RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from((0..n).collect::<Vec<i64>>())) as _)]).unwrap();
        // 10 000 rows (80 kB) in 32 KiB segments: 3 buffers.
        part.emit(rows(10_000)).unwrap();
        assert_eq!(gate.queued_buffers(0), 3);
        // The gate asks for 8 KiB buffers: the same rows now make 10.
        gate.announce_buffer_size(8 << 10);
        part.emit(rows(10_000)).unwrap();
        let n = gate.queued_buffers(0);
        assert!((3 + 10..=3 + 11).contains(&n), "80 kB in 8 KiB buffers: 10 or 11, got {}", n - 3);
        // Small batches wait for 8 KiB, not for a segment.
        let per_batch = rows(100).get_array_memory_size();
        for _ in 0..(8 << 10) / per_batch {
            part.emit(rows(100)).unwrap();
        }
        assert_eq!(gate.queued_buffers(0), n, "not yet 8 KiB");
        part.emit(rows(100)).unwrap();
        assert_eq!(gate.queued_buffers(0), n + 1, "8 KiB reached");
        // A size above the segment is capped at the segment.
        gate.announce_buffer_size(1 << 20);
        part.emit(rows(10_000)).unwrap();
        assert_eq!(gate.queued_buffers(0), n + 1 + 3);
    }
}

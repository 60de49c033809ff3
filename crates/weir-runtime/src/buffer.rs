//! What travels on a channel: buffers (Arrow record batches) and events, plus their wire
//! encoding for the TCP exchange.
//!
//! A buffer is a batch of rows bounded in bytes (`taskmanager.memory.segment-size`); between
//! TaskManagers it travels as an Arrow IPC message. Events (end of partition, checkpoint
//! barriers, cancellation markers) need no credit. Unaligned barriers and cancellation markers
//! are sent with priority, ahead of queued buffers (see [`crate::gate`] and [`crate::net`]).
//!
//! ## Event encoding
//! One tag byte, then big-endian fields: `1` end of partition (1 byte); `2` barrier (`u64` id,
//! `i64` trigger time in ms, `u8` flags — bit 0 savepoint, bit 1 unaligned: 18 bytes); `3`
//! cancellation marker (`u64` id: 9 bytes). Whether an event goes with priority is not part of
//! the event: it is the frame kind on the wire (`PRIORITY_EVENT`) and a position in a queue.

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io::Cursor;

/// Identifies one logical channel: one upstream subtask to one downstream subtask, on one
/// edge of one attempt of one job. Many channels share one TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId {
    /// The job's 128-bit key (the TaskManager reads the job id as a hexadecimal number).
    pub job: u128,
    /// The job's execution attempt. A restarted job gets new channel ids, so frames, credits and
    /// announcements still in flight for the failed attempt never reach the new attempt's gates:
    /// they find no registered channel and are dropped.
    pub attempt: u32,
    /// The JobGraph edge the channel belongs to.
    pub edge: u32,
    /// The upstream subtask's index (in the edge's source vertex).
    pub from: u32,
    /// The downstream subtask's index (in the edge's target vertex).
    pub to: u32,
}

impl ChannelId {
    /// Bytes of the encoding: the job key, then four `u32`s.
    pub const ENCODED_LEN: usize = 16 + 4 * 4;

    /// Appends the big-endian encoding (job, attempt, edge, from, to) to `buf`: the prefix of the
    /// body of every frame that belongs to a channel.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u128(self.job);
        buf.put_u32(self.attempt);
        buf.put_u32(self.edge);
        buf.put_u32(self.from);
        buf.put_u32(self.to);
    }

    /// Reads an id written by [`ChannelId::encode`]; `None`, consuming nothing, if fewer than
    /// [`ChannelId::ENCODED_LEN`] bytes remain.
    pub fn decode(buf: &mut impl Buf) -> Option<Self> {
        if buf.remaining() < Self::ENCODED_LEN {
            return None;
        }
        Some(Self { job: buf.get_u128(), attempt: buf.get_u32(), edge: buf.get_u32(), from: buf.get_u32(), to: buf.get_u32() })
    }
}

/// A control event carried in-band on a channel. Events take no credit: they are never held
/// back by flow control, only by the items queued ahead of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The upstream subtask has emitted everything it ever will on this channel.
    EndOfPartition,
    /// Checkpoint barrier `id`: everything before it on this channel belongs to checkpoint `id`.
    Barrier(Barrier),
    /// Checkpoint `id` was aborted upstream: stop aligning or collecting for it.
    CancelCheckpoint(u64),
}

/// A checkpoint barrier: cuts a channel's stream into what belongs to checkpoint `id` (before
/// it) and what comes after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    /// The checkpoint id. Ids increase, and each channel delivers barriers in increasing id order
    /// (the barrier handler relies on this).
    pub id: u64,
    /// Trigger time at the JobManager (ms since the epoch).
    pub timestamp_ms: i64,
    /// Whether the checkpoint is a savepoint: keyed state is then snapshotted full and
    /// self-contained, never incremental, and its barriers are always aligned. The JobManager
    /// always sends `false` today.
    pub savepoint: bool,
    /// The barrier overtook in-flight data (it travels as a priority event): its checkpoint is
    /// unaligned from the task that sent it on, and every task it reaches takes it unaligned.
    pub unaligned: bool,
}

impl Barrier {
    /// An aligned barrier for checkpoint `id` triggered at `timestamp_ms`.
    pub fn new(id: u64, timestamp_ms: i64, savepoint: bool) -> Self {
        Self { id, timestamp_ms, savepoint, unaligned: false }
    }
}

impl Event {
    /// The event's wire form (see the module header): what follows the channel id in an `EVENT`
    /// frame.
    pub fn encode(&self) -> Bytes {
        match self {
            Event::EndOfPartition => Bytes::from_static(&[1]),
            Event::Barrier(b) => {
                let mut buf = BytesMut::with_capacity(18);
                buf.put_u8(2);
                buf.put_u64(b.id);
                buf.put_i64(b.timestamp_ms);
                buf.put_u8(b.savepoint as u8 | (b.unaligned as u8) << 1);
                buf.freeze()
            }
            Event::CancelCheckpoint(id) => {
                let mut buf = BytesMut::with_capacity(9);
                buf.put_u8(3);
                buf.put_u64(*id);
                buf.freeze()
            }
        }
    }

    /// Parses what [`Event::encode`] wrote. Errors name an unknown tag or a truncated event; bytes
    /// after a complete event are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut b = bytes;
        let short = || "truncated event".to_string();
        match b.first() {
            Some(1) => Ok(Event::EndOfPartition),
            Some(2) if b.len() >= 18 => {
                b.advance(1);
                let (id, timestamp_ms, flags) = (b.get_u64(), b.get_i64(), b.get_u8());
                Ok(Event::Barrier(Barrier { id, timestamp_ms, savepoint: flags & 1 != 0, unaligned: flags & 2 != 0 }))
            }
            Some(3) if b.len() >= 9 => {
                b.advance(1);
                Ok(Event::CancelCheckpoint(b.get_u64()))
            }
            Some(2) | Some(3) => Err(short()),
            other => Err(format!("unknown event tag {other:?}")),
        }
    }
}

/// One element of a channel queue: what a task takes from its input gate.
#[derive(Debug, Clone)]
pub enum Item {
    /// Rows handed over in memory (between subtasks of one TaskManager).
    Buffer(RecordBatch),
    /// Rows received from the network, still IPC-encoded: the consuming task decodes them on
    /// its own thread, so network threads only move bytes.
    Encoded(Bytes),
    /// An event: takes no credit.
    Event(Event),
}

impl Item {
    /// Whether the item holds rows (in memory or encoded): only those take a credit.
    pub fn is_buffer(&self) -> bool {
        !matches!(self, Item::Event(_))
    }
}

/// Encodes a batch as an Arrow IPC stream (schema + one batch). Every buffer carries its own
/// schema message, so a receiver needs no per-channel handshake, at the cost of the schema's
/// bytes in every buffer. Runs on the sending task's thread.
pub fn encode_batch(batch: &RecordBatch) -> Result<Bytes, arrow_schema::ArrowError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 256);
    {
        let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(Bytes::from(out))
}

/// Decodes a batch encoded by [`encode_batch`] (the first batch of the stream; an empty stream
/// is an error). Runs on the receiving task's thread, not on the network threads.
pub fn decode_batch(bytes: &Bytes) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut reader = StreamReader::try_new(Cursor::new(bytes.as_ref()), None)?;
    match reader.next() {
        Some(b) => b,
        None => Err(arrow_schema::ArrowError::IpcError("empty buffer".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn batches_and_channel_ids_round_trip() {
        let batch = RecordBatch::try_from_iter(vec![
            ("word", Arc::new(StringArray::from(vec!["a", "bb"])) as _),
            ("count", Arc::new(Int64Array::from(vec![1, 2])) as _),
        ])
        .unwrap();
        assert_eq!(decode_batch(&encode_batch(&batch).unwrap()).unwrap(), batch);
        let id = ChannelId { job: 7 << 90, attempt: 2, edge: 1, from: 3, to: 0 };
        let mut buf = BytesMut::new();
        id.encode(&mut buf);
        assert_eq!(buf.len(), ChannelId::ENCODED_LEN);
        assert_eq!(ChannelId::decode(&mut buf.freeze()), Some(id));
        for ev in [
            Event::EndOfPartition,
            Event::Barrier(Barrier { id: 42, timestamp_ms: 1_700_000_000_000, savepoint: true, unaligned: false }),
            Event::Barrier(Barrier { id: 43, timestamp_ms: 1_700_000_000_000, savepoint: false, unaligned: true }),
            Event::CancelCheckpoint(7),
        ] {
            assert_eq!(Event::decode(&ev.encode()).unwrap(), ev);
        }
        assert!(Event::decode(&[2, 0]).is_err());
    }
}

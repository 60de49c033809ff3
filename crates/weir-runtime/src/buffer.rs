//! What travels on a channel: buffers (Arrow record batches) and events, plus their wire
//! encoding for the TCP exchange.
//!
//! A buffer is a batch of rows bounded in bytes (`taskmanager.memory.segment-size`); between
//! TaskManagers it travels as an Arrow IPC message. Events (end of partition; checkpoint
//! barriers and cancellation markers in later protocols) need no credit and may be sent with
//! priority, ahead of queued buffers.

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io::Cursor;

/// Identifies one logical channel: one upstream subtask to one downstream subtask, on one
/// edge of one attempt of one job. Many channels share one TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId {
    pub job: u128,
    pub attempt: u32,
    pub edge: u32,
    pub from: u32,
    pub to: u32,
}

impl ChannelId {
    pub const ENCODED_LEN: usize = 16 + 4 * 4;

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u128(self.job);
        buf.put_u32(self.attempt);
        buf.put_u32(self.edge);
        buf.put_u32(self.from);
        buf.put_u32(self.to);
    }

    pub fn decode(buf: &mut impl Buf) -> Option<Self> {
        if buf.remaining() < Self::ENCODED_LEN {
            return None;
        }
        Some(Self { job: buf.get_u128(), attempt: buf.get_u32(), edge: buf.get_u32(), from: buf.get_u32(), to: buf.get_u32() })
    }
}

/// A control event carried in-band on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The upstream subtask has emitted everything it ever will on this channel.
    EndOfPartition,
    /// Checkpoint barrier `id`: everything before it on this channel belongs to checkpoint `id`.
    Barrier(Barrier),
    /// Checkpoint `id` was aborted upstream: stop aligning or collecting for it.
    CancelCheckpoint(u64),
}

/// A checkpoint barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    pub id: u64,
    /// Trigger time at the JobManager (ms since the epoch).
    pub timestamp_ms: i64,
    pub savepoint: bool,
}

impl Event {
    pub fn encode(&self) -> Bytes {
        match self {
            Event::EndOfPartition => Bytes::from_static(&[1]),
            Event::Barrier(b) => {
                let mut buf = BytesMut::with_capacity(18);
                buf.put_u8(2);
                buf.put_u64(b.id);
                buf.put_i64(b.timestamp_ms);
                buf.put_u8(b.savepoint as u8);
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

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut b = bytes;
        let short = || "truncated event".to_string();
        match b.first() {
            Some(1) => Ok(Event::EndOfPartition),
            Some(2) if b.len() >= 18 => {
                b.advance(1);
                Ok(Event::Barrier(Barrier { id: b.get_u64(), timestamp_ms: b.get_i64(), savepoint: b.get_u8() != 0 }))
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

/// One element of a channel queue.
#[derive(Debug, Clone)]
pub enum Item {
    /// Rows handed over in memory (between subtasks of one TaskManager).
    Buffer(RecordBatch),
    /// Rows received from the network, still IPC-encoded: the consuming task decodes them on
    /// its own thread, so network threads only move bytes.
    Encoded(Bytes),
    Event(Event),
}

impl Item {
    pub fn is_buffer(&self) -> bool {
        !matches!(self, Item::Event(_))
    }
}

/// Encodes a batch as an Arrow IPC stream (schema + one batch).
pub fn encode_batch(batch: &RecordBatch) -> Result<Bytes, arrow_schema::ArrowError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 256);
    {
        let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(Bytes::from(out))
}

/// Decodes a batch encoded by [`encode_batch`].
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
            Event::Barrier(Barrier { id: 42, timestamp_ms: 1_700_000_000_000, savepoint: true }),
            Event::CancelCheckpoint(7),
        ] {
            assert_eq!(Event::decode(&ev.encode()).unwrap(), ev);
        }
        assert!(Event::decode(&[2, 0]).is_err());
    }
}

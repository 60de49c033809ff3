//! What travels on a channel: buffers (Arrow record batches) and events, plus their wire
//! encoding for the TCP exchange.
//!
//! A buffer is a batch of rows bounded in bytes (`taskmanager.memory.segment-size`); between
//! TaskManagers it travels as Arrow IPC messages without its schema, which goes once per
//! channel ([`Encoded`], [`BatchEncoder`]); in channel state it is a self-contained IPC stream
//! ([`encode_batch`], [`decode_batch`]). Events (end of partition, checkpoint
//! barriers, cancellation markers) need no credit. Unaligned barriers and cancellation markers
//! are sent with priority, ahead of queued buffers (see [`crate::gate`] and [`crate::net`]).
//!
//! ## Event encoding
//! One tag byte, then big-endian fields: `1` end of partition (1 byte); `2` barrier (`u64` id,
//! `i64` trigger time in ms, `u8` flags — bit 0 savepoint, bit 1 unaligned, bit 2 native
//! savepoint format: 18 bytes; a savepoint barrier then carries its target folder, a `u16`
//! length and that many bytes of UTF-8 storage URL); `3` cancellation marker (`u64` id: 9
//! bytes). Decoding is strict, so that a frame from a peer that encodes events differently
//! breaks the connection instead of being misread: it refuses unknown tags, unknown flag bits,
//! truncated events, bytes after a complete event (a frame carries exactly one event), a status
//! byte other than 0 or 1, a
//! location that is not UTF-8 and the native bit without the savepoint bit. Whether an event
//! goes with priority is not part of the event: it is the frame kind on the wire
//! (`PRIORITY_EVENT`) and a position in a queue.

use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::Buffer;
use arrow_ipc::reader::RecordBatchDecoder;
use arrow_ipc::writer::{StreamEncoder, StreamWriter};
use arrow_schema::{ArrowError, DataType, SchemaRef};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;

use std::sync::Arc;
use std::time::Duration;
use weir_core::settings::AlignmentPolicy;
/// Re-exported: the format a savepoint barrier carries.
pub use weir_state::SavepointFormat;

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
    /// Event time on this channel has reached this instant (ms since the epoch): no row with an
    /// earlier timestamp is expected after it. Travels in order with the buffers, never with
    /// priority (see [`crate::watermarks`]).
    Watermark(i64),
    /// The upstream subtask went idle (`true`: it emits no rows for now, so its watermark must
    /// not hold back its consumers) or became active again (`false`).
    WatermarkStatus { idle: bool },
}

/// A checkpoint barrier: cuts a channel's stream into what belongs to checkpoint `id` (before
/// it) and what comes after.
///
/// A savepoint's barrier carries where the savepoint goes, as Flink's barrier carries its
/// checkpoint options with a storage location reference: every task it reaches writes its
/// snapshot there, with no other message from the JobManager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    /// The checkpoint id. Ids increase, and each channel delivers barriers in increasing id order
    /// (the barrier handler relies on this).
    pub id: u64,
    /// Trigger time at the JobManager (ms since the epoch).
    pub timestamp_ms: i64,
    /// `Some` for a savepoint: keyed state is then snapshotted full and self-contained into the
    /// savepoint's folder, never incremental, and its barriers are always aligned. Shared (an
    /// `Arc`) because the barrier is cloned into every output channel.
    pub savepoint: Option<Arc<SavepointOptions>>,
    /// The barrier overtook in-flight data (it travels as a priority event): its checkpoint is
    /// unaligned from the task that sent it on, and every task it reaches takes it unaligned.
    pub unaligned: bool,
    /// How this checkpoint's barriers travel, as the JobManager decided when it triggered it
    /// (Flink's `CheckpointOptions`): a running job's unaligned setting and aligned-checkpoint
    /// timeout may change from one checkpoint to the next. `None`: the policy the task was
    /// deployed with.
    pub alignment: Option<AlignmentPolicy>,
}

/// Where and how a savepoint is written: what its barrier carries to every task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavepointOptions {
    /// The savepoint's folder, a storage URL (`file:///...`, `s3://bucket/...`). Every path in
    /// the tasks' acknowledgements is relative to it, so the folder can be moved as a whole.
    pub location: String,
    /// Canonical (portable) or the backend's native files (RocksDB SSTs).
    pub format: SavepointFormat,
}

impl Barrier {
    /// An aligned barrier for checkpoint `id` triggered at `timestamp_ms`.
    pub fn new(id: u64, timestamp_ms: i64) -> Self {
        Self { id, timestamp_ms, savepoint: None, unaligned: false, alignment: None }
    }

    /// The barrier of savepoint `id` triggered at `timestamp_ms`, to be written to `options`.
    pub fn savepoint(id: u64, timestamp_ms: i64, options: SavepointOptions) -> Self {
        Self { id, timestamp_ms, savepoint: Some(Arc::new(options)), unaligned: false, alignment: None }
    }

    /// This barrier with the policy its checkpoint was triggered with.
    pub fn with_alignment(self, alignment: AlignmentPolicy) -> Self {
        Self { alignment: Some(alignment), ..self }
    }

    /// Whether this is a savepoint's barrier.
    pub fn is_savepoint(&self) -> bool {
        self.savepoint.is_some()
    }
}

/// Flag bits of an encoded barrier.
const SAVEPOINT: u8 = 1;
const UNALIGNED: u8 = 2;
const NATIVE: u8 = 4;
/// The barrier carries its alignment policy: a kind byte (0 aligned, 1 unaligned, 2 aligned
/// then unaligned) and the aligned-checkpoint timeout in ms (u64), before a savepoint's location.
const POLICY: u8 = 8;
/// Every flag bit this version knows.
const KNOWN_FLAGS: u8 = SAVEPOINT | UNALIGNED | NATIVE | POLICY;

impl Event {
    /// The event's wire form (see the module header): what follows the channel id in an `EVENT`
    /// frame.
    pub fn encode(&self) -> Bytes {
        match self {
            Event::EndOfPartition => Bytes::from_static(&[1]),
            Event::Barrier(b) => {
                let location = b.savepoint.as_ref().map_or(&[][..], |s| s.location.as_bytes());
                let mut buf = BytesMut::with_capacity(18 + 9 + 2 + location.len());
                buf.put_u8(2);
                buf.put_u64(b.id);
                buf.put_i64(b.timestamp_ms);
                let mut flags = if b.unaligned { UNALIGNED } else { 0 };
                if let Some(s) = &b.savepoint {
                    flags |= SAVEPOINT;
                    if s.format == SavepointFormat::Native {
                        flags |= NATIVE;
                    }
                }
                if b.alignment.is_some() {
                    flags |= POLICY;
                }
                buf.put_u8(flags);
                if let Some(policy) = b.alignment {
                    let (kind, timeout) = match policy {
                        AlignmentPolicy::Aligned => (0, Duration::ZERO),
                        AlignmentPolicy::Unaligned => (1, Duration::ZERO),
                        AlignmentPolicy::AlignedThenUnaligned(t) => (2, t),
                    };
                    buf.put_u8(kind);
                    buf.put_u64(timeout.as_millis() as u64);
                }
                if b.savepoint.is_some() {
                    // A storage URL longer than 65535 bytes is refused where the savepoint is
                    // triggered (the JobManager's savepoint folder check); cut it here rather
                    // than write a length that lies.
                    let len = location.len().min(u16::MAX as usize);
                    buf.put_u16(len as u16);
                    buf.put_slice(&location[..len]);
                }
                buf.freeze()
            }
            Event::CancelCheckpoint(id) => {
                let mut buf = BytesMut::with_capacity(9);
                buf.put_u8(3);
                buf.put_u64(*id);
                buf.freeze()
            }
            Event::Watermark(ts) => {
                let mut buf = BytesMut::with_capacity(9);
                buf.put_u8(4);
                buf.put_i64(*ts);
                buf.freeze()
            }
            Event::WatermarkStatus { idle } => Bytes::copy_from_slice(&[5, u8::from(*idle)]),
        }
    }

    /// Parses what [`Event::encode`] wrote: exactly one event, nothing after it. Errors name an
    /// unknown tag, unknown flag bits, a truncated event or the bytes after a complete one.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut b = bytes;
        let short = || "truncated event".to_string();
        let event = match b.first() {
            Some(1) => {
                b.advance(1);
                Event::EndOfPartition
            }
            Some(2) if b.len() >= 18 => {
                b.advance(1);
                let (id, timestamp_ms, flags) = (b.get_u64(), b.get_i64(), b.get_u8());
                if flags & !KNOWN_FLAGS != 0 {
                    return Err(format!("barrier {id} has unknown flag bits {:#04x} (flags {flags:#04x})", flags & !KNOWN_FLAGS));
                }
                let alignment = if flags & POLICY != 0 {
                    if b.len() < 9 {
                        return Err(short());
                    }
                    let (kind, timeout) = (b.get_u8(), Duration::from_millis(b.get_u64()));
                    Some(match kind {
                        0 => AlignmentPolicy::Aligned,
                        1 => AlignmentPolicy::Unaligned,
                        2 => AlignmentPolicy::AlignedThenUnaligned(timeout),
                        other => return Err(format!("barrier {id} has an unknown alignment policy {other}")),
                    })
                } else {
                    None
                };
                let savepoint = if flags & SAVEPOINT != 0 {
                    if b.len() < 2 {
                        return Err(short());
                    }
                    let len = b.get_u16() as usize;
                    if b.len() < len {
                        return Err(short());
                    }
                    let location = std::str::from_utf8(&b[..len])
                        .map_err(|e| format!("the location of savepoint {id} is not UTF-8: {e}"))?
                        .to_string();
                    b.advance(len);
                    let format = if flags & NATIVE != 0 { SavepointFormat::Native } else { SavepointFormat::Canonical };
                    Some(Arc::new(SavepointOptions { location, format }))
                } else if flags & NATIVE != 0 {
                    return Err(format!("barrier {id} has the native-format flag but is no savepoint"));
                } else {
                    None
                };
                Event::Barrier(Barrier { id, timestamp_ms, savepoint, unaligned: flags & UNALIGNED != 0, alignment })
            }
            Some(3) if b.len() >= 9 => {
                b.advance(1);
                Event::CancelCheckpoint(b.get_u64())
            }
            Some(4) if b.len() >= 9 => {
                b.advance(1);
                Event::Watermark(b.get_i64())
            }
            Some(5) if b.len() >= 2 => {
                let idle = match b[1] {
                    0 => false,
                    1 => true,
                    other => return Err(format!("unknown watermark status {other}")),
                };
                b.advance(2);
                Event::WatermarkStatus { idle }
            }
            Some(2..=5) => return Err(short()),
            other => return Err(format!("unknown event tag {other:?}")),
        };
        if !b.is_empty() {
            let what = match &event {
                Event::EndOfPartition => "end of partition".to_string(),
                Event::Barrier(barrier) => format!("barrier {}", barrier.id),
                Event::CancelCheckpoint(id) => format!("cancellation marker {id}"),
                Event::Watermark(ts) => format!("watermark {ts}"),
                Event::WatermarkStatus { idle } => format!("watermark status idle={idle}"),
            };
            return Err(format!("{} bytes after a complete event ({what})", b.len()));
        }
        Ok(event)
    }
}

/// One element of a channel queue: what a task takes from its input gate.
#[derive(Debug, Clone)]
pub enum Item {
    /// Rows handed over in memory (between subtasks of one TaskManager).
    Buffer(RecordBatch),
    /// Rows received from the network, still IPC-encoded: the consuming task decodes them on
    /// its own thread, so network threads only move bytes.
    Encoded(Encoded),
    /// An event: takes no credit.
    Event(Event),
}

impl Item {
    /// Whether the item holds rows (in memory or encoded): only those take a credit.
    pub fn is_buffer(&self) -> bool {
        !matches!(self, Item::Event(_))
    }
}

/// A buffer in its wire form: the Arrow IPC messages of one batch (its dictionaries, if any,
/// then the record batch message) without the schema, which travels once per channel (a
/// `SCHEMA` frame, see [`crate::net`]), plus the schema those messages need to be decoded.
///
/// A sender's buffer is a list of parts that borrow the batch's own memory (the encoder copies
/// no row data; the only copy is into the socket's buffer); a received one is one contiguous
/// part, decoded without copying either ([`Encoded::decode`]). Clones share everything.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The schema of the batch; shared by every buffer of a channel.
    pub schema: SchemaRef,
    /// The messages' bytes, in order.
    parts: Arc<[Bytes]>,
    /// The sum of the parts' lengths.
    len: usize,
}

impl Encoded {
    /// A received buffer: `body` holds the messages, to be decoded with `schema`.
    pub fn received(schema: SchemaRef, body: Bytes) -> Self {
        let len = body.len();
        Self { schema, parts: Arc::from([body]), len }
    }

    /// Bytes of the messages (what a `BUFFER` frame's body holds after the channel id).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes (never true of an encoded batch).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parts, to be written in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The address of the first byte: identifies the buffer while it is alive (channel state
    /// deduplication).
    pub fn address(&self) -> usize {
        self.parts.first().map_or(0, |p| p.as_ptr() as usize)
    }

    /// The messages as one contiguous `Bytes`: the one part itself, or the parts copied together.
    pub fn contiguous(&self) -> Bytes {
        match &self.parts[..] {
            [one] => one.clone(),
            parts => {
                let mut out = BytesMut::with_capacity(self.len);
                for p in parts {
                    out.put_slice(p);
                }
                out.freeze()
            }
        }
    }

    /// The buffer as a self-contained Arrow IPC stream (its schema message, then its messages),
    /// which [`decode_batch`] reads: the form in which in-flight buffers go to channel state.
    pub fn self_contained(&self) -> Result<Bytes, ArrowError> {
        let schema = schema_message(&self.schema)?;
        let mut out = BytesMut::with_capacity(schema.len() + self.len);
        out.put_slice(&schema);
        for p in self.parts.iter() {
            out.put_slice(p);
        }
        Ok(out.freeze())
    }

    /// Decodes the batch. The arrays point into the received bytes (no copy) wherever they are
    /// aligned, which the data plane arranges (see [`crate::net::frame`]); a misaligned one is
    /// copied. Runs on the receiving task's thread. The bytes come from a peer: anything that
    /// is not exactly dictionaries and one record batch message matching the schema is an
    /// error, and a panic of arrow-ipc on malformed metadata is caught and returned as one.
    pub fn decode(&self) -> Result<RecordBatch, ArrowError> {
        let body = self.contiguous();
        catch_decoder_panic(|| decode_messages(&self.schema, &body))
    }
}

/// Reads `body`: dictionary batch messages, then exactly one record batch message, then nothing.
fn decode_messages(schema: &SchemaRef, body: &Bytes) -> Result<RecordBatch, ArrowError> {
    let err = |m: String| ArrowError::IpcError(m);
    let mut dictionaries: HashMap<i64, ArrayRef> = HashMap::new();
    let mut at = 0;
    loop {
        if body.len() < at + 8 {
            return Err(err(format!("truncated message header at byte {at} of a {}-byte buffer", body.len())));
        }
        if body[at..at + 4] != [0xff; 4] {
            return Err(err(format!("no continuation marker at byte {at}")));
        }
        let meta_len = i32::from_le_bytes(body[at + 4..at + 8].try_into().expect("4 bytes"));
        let meta_start = at + 8;
        let meta_end = usize::try_from(meta_len)
            .ok()
            .and_then(|l| meta_start.checked_add(l))
            .filter(|end| *end <= body.len() && meta_len > 0)
            .ok_or_else(|| err(format!("message metadata of {meta_len} bytes at byte {at} exceeds the buffer")))?;
        let message =
            arrow_ipc::root_as_message(&body[meta_start..meta_end]).map_err(|e| err(format!("malformed message metadata: {e}")))?;
        let body_start = meta_end;
        let body_end = usize::try_from(message.bodyLength())
            .ok()
            .and_then(|l| body_start.checked_add(l))
            .filter(|end| *end <= body.len())
            .ok_or_else(|| err(format!("message body of {} bytes exceeds the buffer", message.bodyLength())))?;
        let data = Buffer::from(body.slice(body_start..body_end));
        let version = message.version();
        match message.header_type() {
            arrow_ipc::MessageHeader::DictionaryBatch => {
                let dict = message.header_as_dictionary_batch().ok_or_else(|| err("malformed dictionary batch".into()))?;
                arrow_ipc::reader::read_dictionary(&data, dict, schema, &mut dictionaries, &version)?;
            }
            arrow_ipc::MessageHeader::RecordBatch => {
                let batch = message.header_as_record_batch().ok_or_else(|| err("malformed record batch message".into()))?;
                let decoded = RecordBatchDecoder::try_new(&data, batch, schema.clone(), &dictionaries, &version)?
                    .with_require_alignment(false)
                    .read_record_batch()?;
                if body_end != body.len() {
                    return Err(err(format!("{} bytes after the record batch message", body.len() - body_end)));
                }
                return Ok(decoded);
            }
            other => return Err(err(format!("unexpected {other:?} message in a buffer"))),
        }
        at = body_end;
    }
}

/// Runs a decoder over bytes from a peer or from storage, turning a panic of arrow-ipc (it
/// trusts offsets and lengths in a message's metadata, and panics on many malformed ones: found
/// by the `data_plane_buffer` fuzz target) into an error. The decoder touches nothing but the
/// bytes, so nothing is left half-done.
fn catch_decoder_panic<T>(decode: impl FnOnce() -> Result<T, ArrowError>) -> Result<T, ArrowError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let message =
            panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
        Err(ArrowError::IpcError(format!("malformed buffer: {message}")))
    })
}

/// The IPC schema message of `schema` (what a `SCHEMA` frame carries, and what starts a
/// self-contained stream).
pub fn schema_message(schema: &SchemaRef) -> Result<Bytes, ArrowError> {
    let mut out = Vec::with_capacity(256);
    {
        let mut w = StreamWriter::try_new(&mut out, schema)?;
        w.flush()?;
    }
    Ok(Bytes::from(out))
}

/// Parses what [`schema_message`] wrote: exactly one schema message. Bytes from a peer: an
/// error, never a panic, for anything else.
pub fn decode_schema_message(bytes: &[u8]) -> Result<SchemaRef, ArrowError> {
    catch_decoder_panic(|| {
        let (schema, used) = read_schema_message(bytes)?;
        if used != bytes.len() {
            return Err(ArrowError::IpcError(format!("{} bytes after the schema message", bytes.len() - used)));
        }
        Ok(schema)
    })
}

/// Encodes the batches of one channel (or one broadcast edge) into [`Encoded`] buffers. Keeps
/// one IPC stream encoder per schema, so the schema's flatbuffer is built once, not per buffer.
/// A schema with dictionary-encoded columns gets a new encoder per batch, so that every buffer
/// carries its own dictionaries and decodes alone (with its schema).
#[derive(Default)]
pub struct BatchEncoder {
    /// The schema the encoder was made for, and the encoder (its schema message already taken).
    current: Option<(SchemaRef, StreamEncoder)>,
}

/// Whether a type holds a dictionary-encoded array anywhere (nested types included).
fn has_dictionary(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(..) => true,
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) | DataType::Map(f, _) => has_dictionary(f.data_type()),
        DataType::ListView(f) | DataType::LargeListView(f) => has_dictionary(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
        DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_dictionary(f.data_type())),
        DataType::RunEndEncoded(_, v) => has_dictionary(v.data_type()),
        _ => false,
    }
}

/// An arrow buffer as `Bytes`, without a copy: the `Bytes` keeps the buffer alive.
fn buffer_bytes(buffer: arrow_buffer::Buffer) -> Bytes {
    struct Owner(arrow_buffer::Buffer);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            self.0.as_slice()
        }
    }
    Bytes::from_owner(Owner(buffer))
}

impl BatchEncoder {
    /// Encodes `batch` without copying its row data: the parts borrow its buffers.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Encoded, ArrowError> {
        let schema = batch.schema();
        let reusable = matches!(&self.current, Some((s, _)) if Arc::ptr_eq(s, &schema) || **s == *schema);
        let first = !reusable;
        if first {
            self.current = Some((schema.clone(), StreamEncoder::try_new(&schema)?));
        }
        let (schema, encoder) = self.current.as_mut().expect("set above");
        let mut parts: Vec<Bytes> = encoder.encode(batch)?.into_iter().map(buffer_bytes).collect();
        if first {
            // A new encoder's first call puts the schema message first: it travels on its own.
            skip_schema_message(&mut parts)?;
        }
        let len = parts.iter().map(Bytes::len).sum();
        let encoded = Encoded { schema: schema.clone(), parts: parts.into(), len };
        if schema.fields().iter().any(|f| has_dictionary(f.data_type())) {
            // The encoder would send a dictionary only when it changes: start afresh next time.
            self.current = None;
        }
        Ok(encoded)
    }
}

/// Drops the leading schema message from the parts of an encoded stream: `0xffffffff`, its
/// metadata length `n` (little-endian `i32`), then `n` bytes of metadata and padding (a schema
/// message has no body).
fn skip_schema_message(parts: &mut Vec<Bytes>) -> Result<(), ArrowError> {
    let mut head = Vec::with_capacity(8);
    for p in parts.iter() {
        head.extend_from_slice(&p[..(8 - head.len()).min(p.len())]);
        if head.len() == 8 {
            break;
        }
    }
    let meta_len = match head[..] {
        [0xff, 0xff, 0xff, 0xff, a, b, c, d] => i32::from_le_bytes([a, b, c, d]),
        _ => return Err(ArrowError::IpcError("the encoder's stream does not start with a message".into())),
    };
    let mut skip = 8 + meta_len as usize;
    let mut kept = Vec::with_capacity(parts.len());
    for p in parts.drain(..) {
        if skip >= p.len() {
            skip -= p.len();
        } else {
            kept.push(p.slice(skip..));
            skip = 0;
        }
    }
    *parts = kept;
    Ok(())
}

/// Encodes a batch as a self-contained Arrow IPC stream (schema + one batch): the form of
/// in-flight buffers in channel state. Runs off the task thread (the channel-state writer).
pub fn encode_batch(batch: &RecordBatch) -> Result<Bytes, ArrowError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 256);
    {
        let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(Bytes::from(out))
}

/// Decodes a self-contained stream ([`encode_batch`], [`Encoded::self_contained`]): its first
/// batch (an empty stream is an error). Used for channel state restored from checkpoint
/// storage; panics of arrow-ipc on malformed bytes are returned as errors.
pub fn decode_batch(bytes: &Bytes) -> Result<RecordBatch, ArrowError> {
    catch_decoder_panic(|| {
        let (schema, at) = read_schema_message(bytes)?;
        let mut end = bytes.len();
        // A stream written by `StreamWriter::finish` ends with the end-of-stream marker.
        if bytes[at..].ends_with(&END_OF_STREAM) {
            end -= END_OF_STREAM.len();
        }
        if at == end {
            return Err(ArrowError::IpcError("empty buffer".into()));
        }
        decode_messages(&schema, &bytes.slice(at..end))
    })
}

/// The end-of-stream marker of an Arrow IPC stream.
const END_OF_STREAM: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

/// Reads the schema message that starts `bytes`, with every length checked against the bytes
/// there are (arrow-ipc's own stream reader allocates whatever body length a message claims,
/// which aborts the process on a forged one): the schema and where the message ends.
fn read_schema_message(bytes: &[u8]) -> Result<(SchemaRef, usize), ArrowError> {
    let err = |m: String| ArrowError::IpcError(m);
    if bytes.len() < 8 || bytes[..4] != [0xff; 4] {
        return Err(err("no schema message".into()));
    }
    let meta_len = i32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let meta_end = usize::try_from(meta_len)
        .ok()
        .and_then(|l| 8usize.checked_add(l))
        .filter(|end| *end <= bytes.len() && meta_len > 0)
        .ok_or_else(|| err(format!("schema metadata of {meta_len} bytes exceeds the buffer")))?;
    let message = arrow_ipc::root_as_message(&bytes[8..meta_end]).map_err(|e| err(format!("malformed schema message: {e}")))?;
    let ipc_schema =
        message.header_as_schema().ok_or_else(|| err(format!("expected a schema message, found {:?}", message.header_type())))?;
    let end = usize::try_from(message.bodyLength())
        .ok()
        .and_then(|l| meta_end.checked_add(l))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| err(format!("schema message body of {} bytes exceeds the buffer", message.bodyLength())))?;
    Ok((Arc::new(arrow_ipc::convert::fb_to_schema(ipc_schema)), end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};

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
            Event::CancelCheckpoint(7),
            Event::Watermark(-3),
            Event::Watermark(i64::MAX),
            Event::WatermarkStatus { idle: true },
            Event::WatermarkStatus { idle: false },
        ] {
            assert_eq!(Event::decode(&ev.encode()).unwrap(), ev);
        }
        assert!(Event::decode(&[2, 0]).is_err());
    }

    fn words_and_counts(words: &[Option<&str>]) -> RecordBatch {
        let counts: Vec<i64> = (0..words.len() as i64).collect();
        RecordBatch::try_from_iter(vec![
            ("word", Arc::new(StringArray::from(words.to_vec())) as _),
            ("count", Arc::new(Int64Array::from(counts)) as _),
        ])
        .unwrap()
    }

    /// What a receiver does with a buffer: one contiguous, 8-byte aligned allocation.
    fn as_received(e: &Encoded) -> Encoded {
        Encoded::received(e.schema.clone(), Bytes::from(e.contiguous().to_vec()))
    }

    #[test]
    fn encoded_buffers_round_trip_without_their_schema() {
        let mut encoder = BatchEncoder::default();
        let batch = words_and_counts(&[Some("a"), None, Some("bb"), Some("ccc")]);
        let first = encoder.encode(&batch).unwrap();
        let second = encoder.encode(&batch.slice(1, 2)).unwrap();
        for (e, expected) in [(&first, batch.clone()), (&second, batch.slice(1, 2))] {
            assert_eq!(e.decode().unwrap(), expected, "decoded from the parts");
            assert_eq!(as_received(e).decode().unwrap(), expected, "decoded from received bytes");
            assert_eq!(decode_batch(&e.self_contained().unwrap()).unwrap(), expected, "as channel state");
        }
        // No schema in the buffers: the schema message is the difference.
        let stream = encode_batch(&batch).unwrap();
        assert!(first.len() + schema_message(&batch.schema()).unwrap().len() <= stream.len());
        assert!(!first.contiguous().windows(4).any(|w| w == b"word"), "the field name travels in the schema only");
        // Another schema on the same encoder.
        let other = RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![7])) as _)]).unwrap();
        let e = encoder.encode(&other).unwrap();
        assert_eq!(e.schema, other.schema());
        assert_eq!(as_received(&e).decode().unwrap(), other);
    }

    #[test]
    fn a_received_buffer_decodes_in_place() {
        let batch = RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from_iter_values(0..1000)) as _)]).unwrap();
        let received = as_received(&BatchEncoder::default().encode(&batch).unwrap());
        let body = received.contiguous();
        let decoded = received.decode().unwrap();
        assert_eq!(decoded, batch);
        let values = decoded.column(0).to_data().buffers()[0].as_ptr() as usize;
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&values), "the values were copied out of the received bytes");
    }

    #[test]
    fn dictionary_columns_travel_with_every_buffer() {
        use arrow_array::{types::Int32Type, DictionaryArray};
        let mut encoder = BatchEncoder::default();
        for words in [vec!["x", "y", "x"], vec!["z"], vec!["z"]] {
            let dict: DictionaryArray<Int32Type> = words.into_iter().collect();
            let batch = RecordBatch::try_from_iter(vec![("d", Arc::new(dict) as _)]).unwrap();
            let e = encoder.encode(&batch).unwrap();
            assert_eq!(as_received(&e).decode().unwrap(), batch);
        }
    }

    #[test]
    fn a_malformed_encoded_buffer_is_an_error_not_a_panic() {
        let batch = words_and_counts(&[Some("a"), None, Some("bb")]);
        let valid = BatchEncoder::default().encode(&batch).unwrap().contiguous();
        let mut errors = 0;
        for at in 0..valid.len() - 4 {
            let mut bad = valid.to_vec();
            bad[at..at + 4].copy_from_slice(&[0xff; 4]);
            errors += Encoded::received(batch.schema(), Bytes::from(bad)).decode().is_err() as usize;
        }
        assert!(errors > 0);
        for cut in [0, 4, 8, valid.len() - 1] {
            assert!(Encoded::received(batch.schema(), valid.slice(..cut)).decode().is_err(), "cut at {cut}");
        }
        let mut trailing = valid.to_vec();
        trailing.extend_from_slice(&[0; 8]);
        let err = Encoded::received(batch.schema(), Bytes::from(trailing)).decode().unwrap_err().to_string();
        assert!(err.contains("after the record batch"), "{err}");
        let wrong_schema = RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![1])) as _)]).unwrap().schema();
        assert!(Encoded::received(wrong_schema, valid).decode().is_err());
        let schema = schema_message(&batch.schema()).unwrap();
        assert_eq!(decode_schema_message(&schema).unwrap(), batch.schema());
        assert!(decode_schema_message(&schema[..schema.len() - 1]).is_err());
        assert!(decode_schema_message(&[schema.to_vec(), vec![0; 8]].concat()).is_err());
    }

    #[test]
    fn malformed_watermark_events_are_refused_by_name() {
        assert_eq!(Event::decode(&[4, 0, 0]).unwrap_err(), "truncated event");
        assert_eq!(Event::decode(&[5]).unwrap_err(), "truncated event");
        assert_eq!(Event::decode(&[5, 2]).unwrap_err(), "unknown watermark status 2");
        let mut long = Event::Watermark(9).encode().to_vec();
        long.push(0);
        assert_eq!(Event::decode(&long).unwrap_err(), "1 bytes after a complete event (watermark 9)");
    }

    #[test]
    fn a_malformed_buffer_is_an_error_not_a_panic() {
        // Found by the `data_plane_buffer` fuzz target: a buffer length in the record batch's
        // metadata past the end of the body made arrow-ipc panic. Every 4 bytes of a valid
        // buffer, in turn, set to 0xff: each result decodes or is an error.
        let batch = RecordBatch::try_from_iter(vec![
            ("word", Arc::new(StringArray::from(vec![Some("a"), None, Some("bb")])) as _),
            ("count", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
        ])
        .unwrap();
        let valid = encode_batch(&batch).unwrap();
        let mut errors = 0;
        for at in 0..valid.len() - 4 {
            let mut bad = valid.to_vec();
            bad[at..at + 4].copy_from_slice(&[0xff; 4]);
            errors += decode_batch(&Bytes::from(bad)).is_err() as usize;
        }
        assert!(errors > 0);
        assert!(decode_batch(&Bytes::from_static(b"\xff\xff\xff\xff")).is_err());
    }

    fn enc(b: &Barrier) -> Bytes {
        Event::Barrier(b.clone()).encode()
    }

    fn savepoint_barrier(location: &str, format: SavepointFormat) -> Barrier {
        Barrier::savepoint(42, 1_700_000_000_000, SavepointOptions { location: location.into(), format })
    }

    #[test]
    fn barriers_round_trip_with_their_savepoint_location_and_format() {
        let barriers = [
            Barrier::new(41, 1_700_000_000_000),
            Barrier { unaligned: true, ..Barrier::new(43, -5) },
            savepoint_barrier("file:///var/weir/savepoints/savepoint-7f3a", SavepointFormat::Canonical),
            savepoint_barrier("s3://bucket/sp/savepoint-ü", SavepointFormat::Native),
            savepoint_barrier("", SavepointFormat::Canonical),
            Barrier::new(44, 7).with_alignment(AlignmentPolicy::Aligned),
            Barrier::new(45, 7).with_alignment(AlignmentPolicy::Unaligned),
            Barrier::new(46, 7).with_alignment(AlignmentPolicy::AlignedThenUnaligned(Duration::from_millis(1500))),
            savepoint_barrier("file:///sp", SavepointFormat::Native).with_alignment(AlignmentPolicy::Unaligned),
        ];
        for b in barriers {
            let bytes = enc(&b);
            let expected_len = 18 + b.alignment.map_or(0, |_| 9) + b.savepoint.as_ref().map_or(0, |s| 2 + s.location.len());
            assert_eq!(bytes.len(), expected_len, "{b:?}");
            assert_eq!(Event::decode(&bytes).unwrap(), Event::Barrier(b));
        }
        // The flags: savepoint, unaligned, native.
        assert_eq!(enc(&Barrier::new(1, 0))[17], 0);
        assert_eq!(enc(&savepoint_barrier("x", SavepointFormat::Native))[17], 1 | 4);
        assert_eq!(enc(&Barrier { unaligned: true, ..Barrier::new(1, 0) })[17], 2);
    }

    #[test]
    fn a_truncated_or_malformed_savepoint_barrier_is_an_error() {
        let full = enc(&savepoint_barrier("file:///tmp/savepoint-1", SavepointFormat::Canonical));
        for len in [17, 18, 19, 20, full.len() - 1] {
            let err = Event::decode(&full[..len]).unwrap_err();
            assert!(err.contains("truncated"), "{len} bytes: {err}");
        }
        let mut not_utf8 = full[..20].to_vec();
        not_utf8[18..20].copy_from_slice(&2u16.to_be_bytes());
        not_utf8.extend_from_slice(&[0xff, 0xfe]);
        assert!(Event::decode(&not_utf8).unwrap_err().contains("UTF-8"));
        let mut native_only = enc(&Barrier::new(3, 0)).to_vec();
        native_only[17] = 4;
        assert!(Event::decode(&native_only).unwrap_err().contains("native"));
    }

    #[test]
    fn a_truncated_or_unknown_alignment_policy_is_an_error() {
        let full = enc(&Barrier::new(5, 0).with_alignment(AlignmentPolicy::Unaligned));
        for len in [18, 20, full.len() - 1] {
            assert!(Event::decode(&full[..len]).unwrap_err().contains("truncated"), "{len} bytes");
        }
        let mut unknown = full.to_vec();
        unknown[18] = 9;
        assert!(Event::decode(&unknown).unwrap_err().contains("unknown alignment policy 9"));
    }

    #[test]
    fn unknown_barrier_flag_bits_are_an_error() {
        let barriers = [
            Barrier::new(3, 0),
            Barrier { unaligned: true, ..Barrier::new(3, 0) },
            savepoint_barrier("file:///tmp/savepoint-1", SavepointFormat::Native),
        ];
        for b in barriers {
            for bit in [16u8, 32, 64, 128] {
                let mut bytes = enc(&b).to_vec();
                bytes[17] |= bit;
                let err = Event::decode(&bytes).unwrap_err();
                assert!(err.contains("unknown flag bits") && err.contains(&format!("{bit:#04x}")), "{b:?} with {bit}: {err}");
            }
        }
    }

    #[test]
    fn bytes_after_a_complete_event_are_an_error() {
        let events = [
            Event::EndOfPartition,
            Event::CancelCheckpoint(7),
            Event::Barrier(Barrier::new(41, 1_700_000_000_000)),
            Event::Barrier(Barrier { unaligned: true, ..Barrier::new(43, -5) }),
            Event::Barrier(savepoint_barrier("s3://bucket/sp/savepoint-ü", SavepointFormat::Native)),
            Event::Barrier(savepoint_barrier("", SavepointFormat::Canonical)),
        ];
        for ev in events {
            for extra in [&[0u8][..], &[1], &[2, 0, 0]] {
                let mut bytes = ev.encode().to_vec();
                bytes.extend_from_slice(extra);
                let err = Event::decode(&bytes).unwrap_err();
                assert!(err.contains(&format!("{} bytes after a complete event", extra.len())), "{ev:?} + {extra:?}: {err}");
            }
        }
    }
}

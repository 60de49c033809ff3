//! The data plane's frames: their kinds, their size limits, and the one place they are read,
//! written and parsed.
//!
//! A frame is `u32 length | u8 kind | body`, big-endian; `length` counts the kind byte and the
//! body. A reader is given the largest `length` it accepts and checks it before it allocates
//! anything; it then allocates as the bytes arrive (doubling from 1 MiB), never what the header
//! announces, so a peer that announces a large frame and stalls costs nothing. Parsing is strict
//! and total: any byte string is either one well-formed [`Frame`] or an error naming what is
//! wrong, never a panic (a property test feeds it random bytes).

use crate::buffer::{ChannelId, Event};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Handshake, dialer to acceptor: version, authentication mode, the dialer's nonce, its proof
/// (with a token) and its TaskManager id. See [`super::handshake`].
pub const HELLO: u8 = 0;
/// Channel id + the sender's backlog (`u32`: buffers still waiting behind this one in its queue)
/// + 4 zero bytes + one Arrow IPC-encoded batch; sent only against a credit. The backlog lets
/// the receiver grant floating credits ([`BUFFER_PREFIX`] bytes keep the batch 8-byte aligned).
pub const BUFFER: u8 = 1;
/// Channel id + an encoded [`Event`]; needs no credit.
pub const EVENT: u8 = 2;
/// Channel id + `u32` n: the receiver took n buffers off the channel (always 1 today), so the
/// sender may send n more. Ignored if the sending end is gone.
pub const CREDIT: u8 = 3;
/// Channel id + `u32` n: the receiving channel is registered and grants n credits. The sender
/// sends nothing on a channel before this.
pub const ANNOUNCE: u8 = 4;
/// Channel id + an encoded [`Event`] sent with priority: the receiver queues it ahead of the
/// buffers waiting in the channel's queue (see [`crate::gate::InputGate::push_priority`]).
pub const PRIORITY_EVENT: u8 = 5;
/// Handshake, acceptor to dialer, first frame of a connection: version, authentication mode
/// and the acceptor's nonce.
pub const CHALLENGE: u8 = 6;
/// Handshake, acceptor to dialer: the dialer is accepted; carries the acceptor's proof (with a
/// token) and its TaskManager id.
pub const WELCOME: u8 = 7;
/// Handshake, either way: the connection is refused, with a UTF-8 reason; the sender closes it.
pub const REFUSED: u8 = 8;
/// Channel id + an Arrow IPC schema message: the schema of the channel's `BUFFER` frames from
/// here on. Sent before a channel's first buffer and whenever its schema changes, in order
/// with the buffers; needs no credit. A buffer before any schema is a protocol violation.
pub const SCHEMA: u8 = 9;
/// Channel id + `u32` n: the receiving gate asks the sender to cut the channel's buffers at n
/// bytes from now on (buffer debloating, [`crate::debloat`]). Ignored if the sending end is gone.
pub const BUFFER_SIZE: u8 = 10;

/// Largest frame of the handshake (`HELLO`, `CHALLENGE`, `WELCOME`, `REFUSED`): what an
/// unauthenticated peer can make this side allocate.
pub const HANDSHAKE_MAX_FRAME: usize = 1024;
/// The bytes of a `BUFFER` frame between the channel id and the batch: the backlog and 4 zero
/// bytes.
pub const BUFFER_PREFIX: usize = 8;
/// A frame's bytes besides its batch: the kind byte, the channel id and a buffer's prefix.
pub const FRAME_OVERHEAD: usize = 1 + ChannelId::ENCODED_LEN + BUFFER_PREFIX;
/// The largest buffer body, as a multiple of `taskmanager.memory.segment-size`. Buffers are cut
/// to about a segment, but not exactly: each carries its schema (wide schemas are large), a
/// slice's rows may be larger than the batch's average, and one row larger than a segment
/// goes as one buffer.
pub const MAX_BUFFER_SEGMENTS: usize = 64;
/// The largest buffer body is never less than this, whatever the segment size.
pub const MIN_MAX_BUFFER: usize = 64 << 20;
/// Frames are read in steps that double from this size, up to the frame's length.
const FIRST_READ: usize = 1 << 20;

/// The largest buffer body a data-plane connection carries for a segment size: the larger of
/// [`MAX_BUFFER_SEGMENTS`] segments and [`MIN_MAX_BUFFER`], within what a `u32` length holds.
/// Sender and receiver both check it: a sending task fails with a clear error for a buffer
/// above it, and a receiver closes a connection that announces a longer frame. TaskManagers of
/// one cluster should share their segment size (a smaller receiver limit closes connections).
pub fn max_buffer_len(segment_size: usize) -> usize {
    segment_size.saturating_mul(MAX_BUFFER_SEGMENTS).max(MIN_MAX_BUFFER).min(u32::MAX as usize - FRAME_OVERHEAD)
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between two frames.
    #[error("connection closed")]
    Closed,
    /// The socket failed, or closed inside a frame.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The header announces an empty frame or one above the limit: nothing was allocated.
    #[error("frame of {len} bytes announced, the limit is {max}")]
    Length { len: usize, max: usize },
    /// The frame's kind or body is not what the protocol allows.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// One frame after the handshake, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A buffer: its channel, the sender's backlog behind it, and its Arrow IPC messages.
    Buffer(ChannelId, u32, Bytes),
    Schema(ChannelId, arrow_schema::SchemaRef),
    Event(ChannelId, Event),
    PriorityEvent(ChannelId, Event),
    Announce(ChannelId, u32),
    Credit(ChannelId, u32),
    BufferSize(ChannelId, u32),
}

impl Frame {
    /// Parses the body of a frame of `kind` received after the handshake. Handshake kinds are
    /// errors here: they have no place on an established connection.
    pub fn decode(kind: u8, mut body: Bytes) -> Result<Frame, FrameError> {
        let bad = |what: String| FrameError::Malformed(what);
        if !matches!(kind, BUFFER | SCHEMA | EVENT | PRIORITY_EVENT | ANNOUNCE | CREDIT | BUFFER_SIZE) {
            return Err(bad(format!("unexpected frame kind {kind}")));
        }
        let id = ChannelId::decode(&mut body).ok_or_else(|| bad(format!("frame of kind {kind} too short for a channel id")))?;
        let count = |body: &Bytes| -> Result<u32, FrameError> {
            match body.as_ref() {
                [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
                other => Err(bad(format!("credit frame for {id:?} with {} body bytes, expected 4", other.len()))),
            }
        };
        let event = |body: &Bytes| Event::decode(body).map_err(|e| bad(format!("event for {id:?}: {e}")));
        Ok(match kind {
            BUFFER => {
                if body.len() < BUFFER_PREFIX {
                    return Err(bad(format!("buffer for {id:?} too short for its backlog")));
                }
                let (backlog, reserved) = (body.get_u32(), body.get_u32());
                if reserved != 0 {
                    return Err(bad(format!("buffer for {id:?} with non-zero reserved bytes {:?}", reserved.to_be_bytes())));
                }
                if body.is_empty() {
                    return Err(bad(format!("empty buffer for {id:?}")));
                }
                Frame::Buffer(id, backlog, body)
            }
            SCHEMA => Frame::Schema(id, crate::buffer::decode_schema_message(&body).map_err(|e| bad(format!("schema for {id:?}: {e}")))?),
            EVENT => Frame::Event(id, event(&body)?),
            PRIORITY_EVENT => Frame::PriorityEvent(id, event(&body)?),
            ANNOUNCE => Frame::Announce(id, count(&body)?),
            BUFFER_SIZE => Frame::BufferSize(id, count(&body)?),
            _ => Frame::Credit(id, count(&body)?),
        })
    }
}

/// Appends a `BUFFER` frame's header and prefix: `backlog` buffers wait behind it at the sender;
/// the batch's `len` bytes follow.
pub fn put_buffer_header(buf: &mut BytesMut, id: &ChannelId, backlog: u32, len: usize) {
    put_frame_header(buf, BUFFER, Some(id), BUFFER_PREFIX + len);
    buf.put_u32(backlog);
    buf.put_u32(0);
}

/// Appends one frame whose body has no channel id (the handshake's).
pub fn put_frame(buf: &mut BytesMut, kind: u8, body: &[u8]) {
    put_frame_header(buf, kind, None, body.len());
    buf.put_slice(body);
}

/// Appends a frame's header: `u32 length | u8 kind`, then the channel id if it has one; the body
/// (`body_len` bytes) follows. The one place the frame layout is written; [`read_frame`] reads
/// it. The caller keeps `body_len` within [`max_buffer_len`].
pub fn put_frame_header(buf: &mut BytesMut, kind: u8, id: Option<&ChannelId>, body_len: usize) {
    let id_len = if id.is_some() { ChannelId::ENCODED_LEN } else { 0 };
    buf.put_u32((1 + id_len + body_len) as u32);
    buf.put_u8(kind);
    if let Some(id) = id {
        id.encode(buf);
    }
}

/// Reads one frame of at most `max_len` bytes (kind included) and returns its kind and the body
/// after it. The length is checked before any allocation; the frame's memory then grows with
/// the bytes actually received. The end of the stream between frames is [`FrameError::Closed`];
/// inside one, an I/O error.
///
/// The body gets an allocation of its own, never zero-filled first, that starts with it: so
/// after a channel id (32 bytes) and its prefix (8) a `BUFFER` frame's Arrow messages start
/// 8-byte aligned, and their arrays decode in place ([`crate::buffer::Encoded::decode`]).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max_len: usize) -> Result<(u8, Bytes), FrameError> {
    let mut header = [0u8; 5];
    if r.read(&mut header[..1]).await? == 0 {
        return Err(FrameError::Closed);
    }
    r.read_exact(&mut header[1..4]).await?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 || len > max_len {
        return Err(FrameError::Length { len, max: max_len });
    }
    r.read_exact(&mut header[4..]).await?;
    let body_len = len - 1;
    let mut buf = BytesMut::with_capacity(body_len.min(FIRST_READ));
    while buf.len() < body_len {
        if buf.capacity() == buf.len() {
            buf.reserve((body_len - buf.len()).min(buf.len().max(FIRST_READ)));
        }
        let want = (body_len - buf.len()) as u64;
        if (&mut *r).take(want).read_buf(&mut buf).await? == 0 {
            return Err(FrameError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early eof")));
        }
    }
    Ok((header[4], buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn frame_bytes(kind: u8, id: Option<&ChannelId>, body: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        put_frame_header(&mut buf, kind, id, body.len());
        buf.put_slice(body);
        buf.to_vec()
    }

    fn buffer_bytes(backlog: u32, batch: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        put_buffer_header(&mut buf, &ID, backlog, batch.len());
        buf.put_slice(batch);
        buf.to_vec()
    }

    fn read_all(bytes: &[u8], max: usize) -> Vec<Result<Frame, String>> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut r = bytes;
            let mut out = Vec::new();
            loop {
                let frame = match read_frame(&mut r, max).await {
                    Ok((kind, body)) => Frame::decode(kind, body),
                    Err(FrameError::Closed) => return out,
                    Err(e) => Err(e),
                };
                let stop = frame.is_err();
                out.push(frame.map_err(|e| e.to_string()));
                if stop {
                    return out;
                }
            }
        })
    }

    const ID: ChannelId = ChannelId { job: 5, attempt: 1, edge: 2, from: 3, to: 4 };

    #[test]
    fn frames_round_trip() {
        let mut bytes = buffer_bytes(3, b"ipc");
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new("v", arrow_schema::DataType::Int64, true)]));
        bytes.extend(frame_bytes(SCHEMA, Some(&ID), &crate::buffer::schema_message(&schema).unwrap()));
        bytes.extend(frame_bytes(EVENT, Some(&ID), &Event::EndOfPartition.encode()));
        bytes.extend(frame_bytes(PRIORITY_EVENT, Some(&ID), &Event::CancelCheckpoint(3).encode()));
        bytes.extend(frame_bytes(ANNOUNCE, Some(&ID), &7u32.to_be_bytes()));
        bytes.extend(frame_bytes(CREDIT, Some(&ID), &1u32.to_be_bytes()));
        bytes.extend(frame_bytes(BUFFER_SIZE, Some(&ID), &4096u32.to_be_bytes()));
        let frames: Vec<_> = read_all(&bytes, 1 << 20).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            frames,
            vec![
                Frame::Buffer(ID, 3, Bytes::from_static(b"ipc")),
                Frame::Schema(ID, schema),
                Frame::Event(ID, Event::EndOfPartition),
                Frame::PriorityEvent(ID, Event::CancelCheckpoint(3)),
                Frame::Announce(ID, 7),
                Frame::Credit(ID, 1),
                Frame::BufferSize(ID, 4096),
            ]
        );
    }

    #[test]
    fn malformed_frames_are_errors_naming_the_fault() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (frame_bytes(11, Some(&ID), b""), "unexpected frame kind 11"),
            (frame_bytes(BUFFER_SIZE, Some(&ID), &[0, 0, 1]), "expected 4"),
            (frame_bytes(SCHEMA, Some(&ID), b""), "schema for"),
            (frame_bytes(SCHEMA, Some(&ID), &[0xff, 0xff, 0xff, 0xff, 8, 0, 0, 0, 1, 2]), "schema for"),
            (frame_bytes(HELLO, None, b"tm-a"), "unexpected frame kind 0"),
            (frame_bytes(EVENT, None, &[1, 2, 3]), "too short for a channel id"),
            (buffer_bytes(0, b""), "empty buffer"),
            (frame_bytes(BUFFER, Some(&ID), b"1234567"), "too short for its backlog"),
            (frame_bytes(BUFFER, Some(&ID), &[0, 0, 0, 1, 0, 0, 0, 9, 1]), "non-zero reserved bytes"),
            (frame_bytes(EVENT, Some(&ID), &[7]), "unknown event tag"),
            (frame_bytes(CREDIT, Some(&ID), &[0, 1]), "expected 4"),
            (frame_bytes(ANNOUNCE, Some(&ID), &[0, 0, 0, 1, 0]), "expected 4"),
            (vec![0, 0, 0, 0], "frame of 0 bytes"),
            (vec![0x10, 0, 0, 0, BUFFER], "limit is 1048576"),
            (buffer_bytes(0, b"abc")[..20].to_vec(), "early eof"),
        ];
        for (bytes, expected) in cases {
            let got = read_all(&bytes, 1 << 20);
            let err = got.last().unwrap().as_ref().unwrap_err();
            assert!(err.to_lowercase().contains(expected), "{bytes:?}: {err}");
        }
    }

    /// A header announcing the largest frame, then a few bytes and the end: an I/O error, not a
    /// panic (and only the bytes that came were allocated).
    #[tokio::test]
    async fn a_frame_cut_short_is_an_error() {
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let max = 256 << 20;
        let mut head = BytesMut::new();
        put_frame_header(&mut head, BUFFER, Some(&ID), max - FRAME_OVERHEAD);
        tokio::io::AsyncWriteExt::write_all(&mut tx, &head).await.unwrap();
        drop(tx);
        assert!(matches!(read_frame(&mut rx, max).await, Err(FrameError::Io(_))));
    }

    #[test]
    fn the_buffer_limit_is_a_generous_multiple_of_the_segment() {
        assert_eq!(max_buffer_len(32 << 10), MIN_MAX_BUFFER);
        assert_eq!(max_buffer_len(4 << 20), 256 << 20);
        assert!(max_buffer_len(usize::MAX) + FRAME_OVERHEAD <= u32::MAX as usize);
    }

    proptest! {
        /// Random bytes, or valid frames with random corruption: the reader returns frames or
        /// an error, never panics, and never yields a frame above the limit.
        #[test]
        fn random_bytes_never_panic_the_reader(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for r in read_all(&bytes, 256) {
                if let Ok(Frame::Buffer(_, _, body)) = r {
                    prop_assert!(body.len() <= 256);
                }
            }
        }

        #[test]
        fn corrupted_frames_never_panic_the_reader(
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..6),
        ) {
            let mut bytes = frame_bytes(EVENT, Some(&ID), &Event::EndOfPartition.encode());
            bytes.extend(frame_bytes(CREDIT, Some(&ID), &1u32.to_be_bytes()));
            bytes.extend(buffer_bytes(2, &[1; 100]));
            for (at, v) in flips {
                let at = at % bytes.len();
                bytes[at] = v;
            }
            let _ = read_all(&bytes, 1 << 10);
        }
    }
}

//! The `socket` source: reads newline-separated text from one TCP connection (like Flink's
//! `socketTextStream`, typically fed by `nc -lk`) and emits it as a `line` column.
//!
//! The stream has a short read timeout so a poll never blocks the task for long; at most one
//! `read` happens per poll, and complete lines already buffered are emitted without reading.

use crate::text::Utf8Column;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use std::io::{ErrorKind, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use weir_core::operator::{OpResult, OperatorError, SourcePoll, SourceReader};

const READ_TIMEOUT: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_millis(10);
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Most lines in one batch.
const BATCH_LINES: usize = 4096;

pub struct SocketReader {
    /// `host:port`, for error messages.
    address: String,
    stream: TcpStream,
    schema: SchemaRef,
    read_buf: Vec<u8>,
    /// Received bytes not yet emitted: complete lines and a partial last line.
    pending: Vec<u8>,
    /// `pending[..scanned]` is known to hold no '\n' (avoids rescanning a long partial line).
    scanned: usize,
    eof: bool,
}

impl SocketReader {
    pub fn connect(host: &str, port: u16, schema: SchemaRef) -> OpResult<Self> {
        let address = format!("{host}:{port}");
        let fail = |e: &dyn std::fmt::Display| OperatorError::Failed(format!("socket source cannot connect to {address}: {e}"));
        let candidates = (host, port).to_socket_addrs().map_err(|e| fail(&e))?;
        // Try every resolved address (e.g. IPv6 then IPv4 for `localhost`), keeping the last
        // error; a bounded timeout so an unreachable host fails the deploy instead of hanging.
        let mut last_err: Option<std::io::Error> = None;
        let mut connected = None;
        for addr in candidates {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    connected = Some(stream);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let stream = match (connected, last_err) {
            (Some(stream), _) => stream,
            (None, Some(e)) => return Err(fail(&e)),
            (None, None) => return Err(fail(&"the host name resolves to no address")),
        };
        stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(|e| fail(&e))?;
        tracing::info!(%address, "socket source connected");
        Ok(Self { address, stream, schema, read_buf: vec![0; READ_BUFFER_BYTES], pending: Vec::new(), scanned: 0, eof: false })
    }

    /// Moves up to [`BATCH_LINES`] complete lines from `pending` into a column.
    fn take_lines(&mut self) -> OpResult<Utf8Column> {
        let mut col = Utf8Column::with_capacity(BATCH_LINES.min(64), self.pending.len());
        let mut line_start = 0;
        let mut search_from = self.scanned;
        let mut exhausted = false;
        while col.len() < BATCH_LINES {
            match self.pending[search_from..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let newline = search_from + i;
                    col.push_bytes(strip_cr(&self.pending[line_start..newline]), &self.address)?;
                    line_start = newline + 1;
                    search_from = line_start;
                }
                None => {
                    exhausted = true;
                    break;
                }
            }
        }
        self.pending.drain(..line_start);
        // Everything left was scanned unless the batch filled up first.
        self.scanned = if exhausted { self.pending.len() } else { 0 };
        Ok(col)
    }

    /// One read from the socket into `pending`; false when nothing arrived within the timeout.
    fn read_once(&mut self) -> OpResult<bool> {
        match self.stream.read(&mut self.read_buf) {
            Ok(0) => {
                self.eof = true;
                tracing::info!(address = %self.address, "socket source reached end of stream");
                Ok(true)
            }
            Ok(n) => {
                self.pending.extend_from_slice(&self.read_buf[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => Ok(false),
            Err(e) => Err(OperatorError::Failed(format!("socket source cannot read from {}: {e}", self.address))),
        }
    }

    fn batch(&self, col: Utf8Column) -> OpResult<SourcePoll> {
        let batch = RecordBatch::try_new(self.schema.clone(), vec![Arc::new(col.finish()?)])?;
        Ok(SourcePoll::Batch(batch))
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

impl SourceReader for SocketReader {
    fn poll_next(&mut self) -> OpResult<SourcePoll> {
        let mut did_read = false;
        loop {
            let col = self.take_lines()?;
            if !col.is_empty() {
                return self.batch(col);
            }
            if self.eof {
                if self.pending.is_empty() {
                    return Ok(SourcePoll::End);
                }
                // The peer closed without a final newline: the rest is the last line.
                let mut col = Utf8Column::with_capacity(1, self.pending.len());
                col.push_bytes(strip_cr(&self.pending), &self.address)?;
                self.pending.clear();
                self.scanned = 0;
                return self.batch(col);
            }
            if did_read || !self.read_once()? {
                return Ok(SourcePoll::Idle(IDLE));
            }
            did_read = true;
        }
    }

    /// What was read from the socket cannot be read again: no position to snapshot, and a
    /// restarted job reconnects and goes on with whatever the peer sends then (at-most-once).
    fn snapshot_state(&mut self, _checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        Ok(None)
    }

    fn is_replayable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_schema::{DataType, Field, Schema};
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::Instant;

    fn line_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]))
    }

    #[test]
    fn socket_reader_reads_lines_until_eof() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut expected: Vec<String> = vec!["hello".into(), "".into(), "windows line".into()];
        expected.extend((0..10_000).map(|i| format!("line {i} {}", "x".repeat(i % 50))));
        expected.push("tail without newline".into());
        let mut payload = String::from("hello\n\nwindows line\r\n");
        for line in &expected[3..expected.len() - 1] {
            payload.push_str(line);
            payload.push('\n');
        }
        payload.push_str("tail without newline");
        let writer = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            // Odd-sized chunks split lines (and a "\r\n") across reads.
            for chunk in payload.as_bytes().chunks(777) {
                conn.write_all(chunk).expect("write");
            }
        });

        let mut reader = SocketReader::connect("127.0.0.1", port, line_schema()).expect("connect");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        loop {
            assert!(Instant::now() < deadline, "socket source did not end; got {} lines", got.len());
            match reader.poll_next().expect("poll") {
                SourcePoll::Batch(b) => {
                    assert!(b.num_rows() <= BATCH_LINES);
                    got.extend(b.column(0).as_string::<i32>().iter().map(|v| v.unwrap_or_default().to_string()));
                }
                SourcePoll::Idle(_) => {}
                SourcePoll::End => break,
            }
        }
        writer.join().expect("writer thread");
        assert_eq!(got, expected);
    }

    #[test]
    fn socket_connect_error_names_address() {
        // Bind then drop to get a port nothing listens on.
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let err = match SocketReader::connect("127.0.0.1", port, line_schema()) {
            Ok(_) => panic!("connected to a closed port"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[test]
    fn socket_reader_is_not_replayable() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut reader = SocketReader::connect("127.0.0.1", port, line_schema()).expect("connect");
        assert!(!reader.is_replayable());
        assert!(reader.snapshot_state(1).expect("snapshot").is_none());
    }
}

//! Channel state: the in-flight buffers an unaligned checkpoint stores beside operator state.
//!
//! A task's input channel state holds the buffers it had received but not processed when it
//! took its snapshot; its output channel state the buffers it had sent but that had not left
//! for the network. Each buffer is stored as the Arrow IPC message it travels as, so a buffer
//! that came from the network is written as received, never encoded again.
//!
//! File: a frame under [`CHANNEL_MAGIC`] (magic, version, length, CRC-32) whose body is
//! `(channel u32, subchannel u32, length u32, Arrow IPC bytes)*`, big-endian. For input state
//! `channel` is the gate channel and `subchannel` 0; for output state they are the output
//! edge and the channel within it.
//!
//! ## Stored once, referenced by several checkpoints
//! With concurrent unaligned checkpoints one buffer may belong to several of them. A task
//! writes one file per checkpoint whose channel state completes, under the job's `shared/`
//! directory ([`crate::storage::layout::channel_state_file`]), holding only the buffers no
//! earlier file of it holds; a checkpoint's [`ChannelStateHandle`] lists records in one or more
//! such files, in replay order. The JobManager's shared-state registry counts the references
//! to each file, as for incremental RocksDB files, and deletes a file once no retained
//! checkpoint needs it.

use crate::format::{frame, unframe, CHANNEL_MAGIC};
use crate::storage::{CheckpointStorage, StoredFile};
use crate::StateError;
use bytes::Bytes;

/// One persisted buffer and the channel it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelBuffer {
    /// Input: the gate channel. Output: the output edge.
    pub channel: u32,
    /// Input: 0. Output: the channel within the edge.
    pub subchannel: u32,
    /// The buffer as an Arrow IPC stream (schema and one batch).
    pub ipc: Bytes,
}

/// Encodes buffers as a framed channel-state file.
pub fn encode(buffers: &[ChannelBuffer]) -> Vec<u8> {
    let mut body = Vec::with_capacity(buffers.iter().map(|b| 12 + b.ipc.len()).sum());
    for b in buffers {
        body.extend_from_slice(&b.channel.to_be_bytes());
        body.extend_from_slice(&b.subchannel.to_be_bytes());
        body.extend_from_slice(&(b.ipc.len() as u32).to_be_bytes());
        body.extend_from_slice(&b.ipc);
    }
    frame(CHANNEL_MAGIC, &body)
}

/// Verifies the frame and splits the body back into buffers; `path` names the file in errors.
pub fn decode(bytes: &Bytes, path: &str) -> Result<Vec<ChannelBuffer>, StateError> {
    let body = unframe(CHANNEL_MAGIC, bytes, path)?;
    let offset = body.as_ptr() as usize - bytes.as_ptr() as usize;
    let corrupt = || StateError::Corrupt { path: path.to_string(), reason: "truncated channel-state record".into() };
    let mut out = Vec::new();
    let mut pos = 0;
    let u32_at = |p: usize| -> Option<u32> { body.get(p..p + 4).map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes"))) };
    while pos < body.len() {
        let (channel, subchannel, len) = match (u32_at(pos), u32_at(pos + 4), u32_at(pos + 8)) {
            (Some(c), Some(s), Some(l)) => (c, s, l as usize),
            _ => return Err(corrupt()),
        };
        pos += 12;
        if pos + len > body.len() {
            return Err(corrupt());
        }
        // A zero-copy slice of the downloaded file.
        out.push(ChannelBuffer { channel, subchannel, ipc: bytes.slice(offset + pos..offset + pos + len) });
        pos += len;
    }
    Ok(out)
}

/// Where one checkpoint's input or output channel state is: records of channel-state files,
/// in the order they are replayed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelStateHandle {
    /// Runs of records, each in one file; several parts may name the same file.
    pub parts: Vec<ChannelStatePart>,
}

/// Records of one channel-state file that belong to a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelStatePart {
    /// The file (in `shared/`), with its size and CRC-32.
    pub file: StoredFile,
    /// Indices of the records, in replay order.
    pub records: Vec<u32>,
    /// Bytes of those records' buffers.
    pub bytes: u64,
}

impl ChannelStateHandle {
    /// Bytes of in-flight data the handle refers to (saturating: the counts may come from a forged
    /// `_metadata` or acknowledgement).
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).fold(0, u64::saturating_add)
    }

    /// The files it references (each once).
    pub fn paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.parts.iter().map(|p| p.file.path.clone()).collect();
        paths.sort();
        paths.dedup();
        paths
    }
}

/// Reads the buffers a handle refers to, in its order: each file is downloaded and checked once.
pub async fn read_handle(storage: &CheckpointStorage, handle: &ChannelStateHandle) -> Result<Vec<ChannelBuffer>, StateError> {
    let mut files: std::collections::HashMap<String, Vec<ChannelBuffer>> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for part in &handle.parts {
        if !files.contains_key(&part.file.path) {
            files.insert(part.file.path.clone(), read(storage, &part.file).await?);
        }
        let records = &files[&part.file.path];
        for r in &part.records {
            let b = records.get(*r as usize).ok_or_else(|| StateError::Corrupt {
                path: storage.display(&part.file.path),
                reason: format!("record {r} is missing (the file holds {})", records.len()),
            })?;
            out.push(b.clone());
        }
    }
    Ok(out)
}

/// Uploads buffers to `rel` and returns the record `_metadata` keeps.
pub async fn write(storage: &CheckpointStorage, rel: &str, buffers: &[ChannelBuffer]) -> Result<StoredFile, StateError> {
    storage.put_bytes(rel, encode(buffers)).await
}

/// Downloads a channel-state file, checks its size and CRC-32 against the record, then its frame.
pub async fn read(storage: &CheckpointStorage, file: &StoredFile) -> Result<Vec<ChannelBuffer>, StateError> {
    let bytes = storage.get_bytes_checked(file).await?;
    decode(&bytes, &storage.display(&file.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_round_trip_and_damage_is_reported() {
        let buffers = vec![
            ChannelBuffer { channel: 0, subchannel: 0, ipc: Bytes::from_static(b"first") },
            ChannelBuffer { channel: 3, subchannel: 1, ipc: Bytes::from_static(b"") },
            ChannelBuffer { channel: 1, subchannel: 7, ipc: Bytes::from(vec![9u8; 1000]) },
        ];
        let bytes = Bytes::from(encode(&buffers));
        assert_eq!(decode(&bytes, "f").unwrap(), buffers);
        assert!(decode(&Bytes::from(encode(&[])), "f").unwrap().is_empty());
        let mut bad = bytes.to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        let err = decode(&Bytes::from(bad), "chk-1/x/input-channels").unwrap_err().to_string();
        assert!(err.contains("chk-1/x/input-channels"), "{err}");
    }
}

//! `_metadata`: the record of one completed checkpoint, written last by the JobManager (its
//! presence is what makes the checkpoint complete) and read on restore. JSON inside a framed
//! file (magic, version, CRC-32), so a damaged `_metadata` is reported, not half-read.

use crate::channel_state::ChannelStateHandle;
use crate::format::{frame, unframe, METADATA_MAGIC};
use crate::handle::KeyedStateHandle;
use crate::storage::{layout, CheckpointStorage, StoredFile};
use crate::StateError;
use serde::{Deserialize, Serialize};

/// The state of one subtask of one operator.
///
/// Both parts are optional, but the JobManager leaves out operators with no state in any subtask.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskState {
    /// Handles of this operator's keyed state in this subtask. Each covers the subtask's key-group
    /// range. Empty for an operator without keyed state.
    pub keyed: Vec<KeyedStateHandle>,
    /// Operator (non-keyed) list state, e.g. source offsets.
    pub operator: Option<StoredFile>,
    /// Unaligned checkpoints: the in-flight buffers the subtask's task had taken in but not
    /// processed at its snapshot (records of [`crate::channel_state`] files). Recorded on the
    /// first operator of the task's chain; replayed before any new input on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_channels: Option<ChannelStateHandle>,
    /// Unaligned checkpoints: the buffers the task had sent but that had not left for the
    /// network at its snapshot. Recorded on the last operator of the chain; re-sent through its
    /// partitioner before anything new on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_channels: Option<ChannelStateHandle>,
}

impl SubtaskState {
    /// The files in `shared/` it references (incremental SSTs, channel-state files).
    pub fn shared_paths(&self) -> impl Iterator<Item = String> + '_ {
        self.keyed
            .iter()
            .flat_map(|h| h.shared_paths())
            .chain(self.input_channels.iter().chain(self.output_channels.iter()).flat_map(|h| h.paths()))
    }
}

/// The state of one operator, across all its subtasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorState {
    /// The operator's uid. A restore matches state to operators by uid, so the uid must stay the
    /// same for the state to be found.
    pub uid: String,
    /// The parallelism when the checkpoint was taken. A restore at another parallelism
    /// redistributes the state: key groups for keyed state, round-robin for operator state.
    pub parallelism: u32,
    /// The job's number of key groups. A restore needs the same value.
    pub max_parallelism: u32,
    /// One entry per subtask, indexed by subtask index (`parallelism` entries). A subtask that
    /// acknowledged no state for this operator has a default, empty entry.
    pub subtasks: Vec<SubtaskState>,
}

/// The content of a checkpoint's `_metadata`: enough to restore the whole job with nothing else
/// but the storage it points into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// The job whose directory the checkpoint is in (`<job-id>/chk-<n>/`).
    pub job_id: String,
    /// The checkpoint id n of `chk-<n>/`.
    pub checkpoint_id: u64,
    /// Unix epoch milliseconds. The coordinator sets it to the time the last acknowledgement
    /// arrived.
    pub timestamp_ms: i64,
    /// Whether this is a savepoint (full, self-contained) rather than a checkpoint.
    pub savepoint: bool,
    /// Every operator that has state, by uid.
    pub operators: Vec<OperatorState>,
}

/// What a job restores from: a completed checkpoint and the storage its files are in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreInfo {
    /// The storage root (as for [`CheckpointStorage::open`]) that the handles' relative paths are
    /// resolved against.
    pub storage_url: String,
    /// The checkpoint itself, already read and verified.
    pub metadata: CheckpointMetadata,
}

/// Splits a checkpoint location given by a user (`<root>/<job>/chk-<n>` or its `_metadata`)
/// into the storage root and the relative path of `_metadata`.
///
/// For example, `s3://b/prefix/job/chk-7` gives `("s3://b/prefix", "job/chk-7/_metadata")`. Returns
/// `None` unless the last component is `chk-<number>` under a non-empty job directory and root.
/// A root that would end in the scheme's separator gets its slash back, so `memory://job/chk-1`
/// keeps the root `memory://`.
pub fn split_checkpoint_path(path: &str) -> Option<(String, String)> {
    let p = path.trim_end_matches('/');
    let p = p.strip_suffix("/_metadata").unwrap_or(p);
    let (rest, chk) = p.rsplit_once('/')?;
    chk.strip_prefix("chk-")?.parse::<u64>().ok()?;
    let (root, job) = rest.rsplit_once('/')?;
    if job.is_empty() || root.is_empty() {
        return None;
    }
    let root = if root.ends_with(':') || root.ends_with(":/") { format!("{root}/") } else { root.to_string() };
    Some((root, format!("{job}/{chk}/_metadata")))
}

impl CheckpointMetadata {
    /// Every keyed handle, for the shared-state registry.
    ///
    /// The coordinator registers them when the checkpoint completes.
    pub fn keyed_handles(&self) -> impl Iterator<Item = &KeyedStateHandle> {
        self.operators.iter().flat_map(|o| o.subtasks.iter()).flat_map(|s| s.keyed.iter())
    }

    /// The channel-state handles (unaligned checkpoints), input and output.
    pub fn channel_handles(&self) -> impl Iterator<Item = &ChannelStateHandle> {
        self.operators.iter().flat_map(|o| o.subtasks.iter()).flat_map(|s| s.input_channels.iter().chain(s.output_channels.iter()))
    }

    /// Every file in `shared/` the checkpoint references (incremental SSTs, channel-state
    /// files), each once: what the shared-state registry counts.
    pub fn shared_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> =
            self.keyed_handles().flat_map(|h| h.shared_paths()).chain(self.channel_handles().flat_map(|h| h.paths())).collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// Bytes referenced by the checkpoint: keyed, operator and channel state. Shared files count
    /// in full for every checkpoint that references them, so this says how large a restore is,
    /// not what the checkpoint added to storage.
    ///
    /// Sizes come from the tasks' acknowledgements or a `_metadata` file, so the sum saturates at
    /// `u64::MAX` rather than overflow on forged ones.
    pub fn size(&self) -> u64 {
        let keyed = self.keyed_handles().map(|h| h.size());
        let operator = self.operators.iter().flat_map(|o| &o.subtasks).filter_map(|s| s.operator.as_ref()).map(|f| f.size);
        let channels = self.channel_handles().map(|h| h.bytes());
        keyed.chain(operator).chain(channels).fold(0, u64::saturating_add)
    }

    /// Writes `<job>/chk-<n>/_metadata`. The JobManager writes it only after every task has
    /// acknowledged, because its existence is what makes the checkpoint complete. It therefore
    /// has to be the last file of the checkpoint.
    pub async fn write(&self, storage: &CheckpointStorage) -> Result<(), StateError> {
        self.write_at(storage, &layout::metadata(&self.job_id, self.checkpoint_id)).await
    }

    /// Writes the metadata to `rel` in `storage`: a savepoint's goes to `_metadata` at the root
    /// of its own folder, against which all its paths resolve.
    pub async fn write_at(&self, storage: &CheckpointStorage, rel: &str) -> Result<(), StateError> {
        let json = serde_json::to_vec(self).map_err(|e| StateError::Codec(e.to_string()))?;
        storage.put_bytes(rel, frame(METADATA_MAGIC, &json)).await?;
        Ok(())
    }

    /// Every file the metadata references (keyed, operator and channel state), for a
    /// verification before a restore, or a disposal.
    pub fn files(&self) -> Vec<&StoredFile> {
        let mut out: Vec<&StoredFile> = self.keyed_handles().flat_map(|h| h.files()).collect();
        out.extend(self.operators.iter().flat_map(|o| &o.subtasks).filter_map(|s| s.operator.as_ref()));
        out.extend(self.channel_handles().flat_map(|h| h.parts.iter().map(|p| &p.file)));
        out
    }

    /// Reads `_metadata` at a relative path (e.g. `<job>/chk-7/_metadata`).
    ///
    /// Errors name the full location: a missing file is [`StateError::Missing`], and a bad frame or
    /// unreadable JSON is [`StateError::Corrupt`].
    pub async fn read(storage: &CheckpointStorage, rel: &str) -> Result<Self, StateError> {
        let bytes = storage.get_bytes(rel).await?;
        Self::decode(&bytes, &storage.display(rel))
    }

    /// Decodes the bytes of a `_metadata` file: the frame, then the JSON. `path` names the file
    /// in errors; any damage is [`StateError::Corrupt`], never a panic (a fuzz target checks it).
    pub fn decode(bytes: &[u8], path: &str) -> Result<Self, StateError> {
        let body = unframe(METADATA_MAGIC, bytes, path)?;
        serde_json::from_slice(body)
            .map_err(|e| StateError::Corrupt { path: path.to_string(), reason: format!("unreadable metadata: {e}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel_state::ChannelStatePart;
    use weir_core::KeyGroupRange;

    #[test]
    fn forged_sizes_saturate_instead_of_overflowing() {
        // Found by the `checkpoint_metadata` fuzz target: sizes near u64::MAX made `size` overflow.
        let file = |path: &str| StoredFile { path: path.into(), size: u64::MAX, crc32: 0 };
        let range = KeyGroupRange::new(0, 128);
        let subtask = SubtaskState {
            keyed: vec![
                KeyedStateHandle::Full { range, max_parallelism: 128, file: file("a") },
                KeyedStateHandle::Incremental {
                    range,
                    max_parallelism: 128,
                    shared: vec![("1.sst".into(), file("b")), ("2.sst".into(), file("c"))],
                    private: vec![],
                },
            ],
            operator: Some(file("d")),
            input_channels: Some(ChannelStateHandle {
                parts: vec![ChannelStatePart { file: file("e"), records: vec![0], bytes: u64::MAX }; 2],
            }),
            output_channels: None,
        };
        let metadata = CheckpointMetadata {
            job_id: "j".into(),
            checkpoint_id: 1,
            timestamp_ms: 0,
            savepoint: false,
            operators: vec![OperatorState { uid: "u".into(), parallelism: 1, max_parallelism: 128, subtasks: vec![subtask] }],
        };
        let bytes = frame(METADATA_MAGIC, &serde_json::to_vec(&metadata).unwrap());
        let decoded = CheckpointMetadata::decode(&bytes, "j/chk-1/_metadata").unwrap();
        assert_eq!(decoded, metadata);
        assert_eq!(decoded.size(), u64::MAX);
        assert_eq!(decoded.keyed_handles().nth(1).unwrap().size(), u64::MAX);
        assert_eq!(decoded.channel_handles().next().unwrap().bytes(), u64::MAX);
        let err = CheckpointMetadata::decode(&bytes[..bytes.len() - 1], "j/chk-1/_metadata").unwrap_err();
        assert!(matches!(err, StateError::Corrupt { ref path, .. } if path == "j/chk-1/_metadata"), "{err}");
    }
}

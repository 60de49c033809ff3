//! `_metadata`: the record of one completed checkpoint, written last by the JobManager (its
//! presence is what makes the checkpoint complete) and read on restore. JSON inside a framed
//! file (magic, version, CRC-32), so a damaged `_metadata` is reported, not half-read.

use crate::format::{frame, unframe, METADATA_MAGIC};
use crate::handle::KeyedStateHandle;
use crate::storage::{layout, CheckpointStorage, StoredFile};
use crate::StateError;
use serde::{Deserialize, Serialize};

/// The state of one subtask of one operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskState {
    pub keyed: Vec<KeyedStateHandle>,
    /// Operator (non-keyed) list state, e.g. source offsets.
    pub operator: Option<StoredFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorState {
    pub uid: String,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub subtasks: Vec<SubtaskState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    pub job_id: String,
    pub checkpoint_id: u64,
    pub timestamp_ms: i64,
    pub savepoint: bool,
    pub operators: Vec<OperatorState>,
}

/// What a job restores from: a completed checkpoint and the storage its files are in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreInfo {
    pub storage_url: String,
    pub metadata: CheckpointMetadata,
}

/// Splits a checkpoint location given by a user (`<root>/<job>/chk-<n>` or its `_metadata`)
/// into the storage root and the relative path of `_metadata`.
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
    pub fn keyed_handles(&self) -> impl Iterator<Item = &KeyedStateHandle> {
        self.operators.iter().flat_map(|o| o.subtasks.iter()).flat_map(|s| s.keyed.iter())
    }

    pub fn size(&self) -> u64 {
        self.keyed_handles().map(|h| h.size()).sum::<u64>()
            + self.operators.iter().flat_map(|o| &o.subtasks).filter_map(|s| s.operator.as_ref()).map(|f| f.size).sum::<u64>()
    }

    pub async fn write(&self, storage: &CheckpointStorage) -> Result<(), StateError> {
        let json = serde_json::to_vec(self).map_err(|e| StateError::Codec(e.to_string()))?;
        storage.put_bytes(&layout::metadata(&self.job_id, self.checkpoint_id), frame(METADATA_MAGIC, &json)).await?;
        Ok(())
    }

    /// Reads `_metadata` at a relative path (e.g. `<job>/chk-7/_metadata`).
    pub async fn read(storage: &CheckpointStorage, rel: &str) -> Result<Self, StateError> {
        let bytes = storage.get_bytes(rel).await?;
        let path = storage.display(rel);
        let body = unframe(METADATA_MAGIC, &bytes, &path)?;
        serde_json::from_slice(body).map_err(|e| StateError::Corrupt { path, reason: format!("unreadable metadata: {e}") })
    }
}

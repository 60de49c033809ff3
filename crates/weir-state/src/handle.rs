//! The handles that describe snapshots of keyed state: what a task acknowledges to the
//! JobManager and what `_metadata` records. They sit below the backends (`hashmap.rs`,
//! `rocks.rs`) and the snapshot logic (`snapshot.rs`), which all use them, so that no two of
//! those modules need each other.

use crate::storage::StoredFile;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use weir_core::KeyGroupRange;

/// A local file of a RocksDB checkpoint.
#[derive(Debug, Clone)]
pub struct LocalFile {
    pub name: String,
    pub path: PathBuf,
}

/// Describes one subtask's keyed-state snapshot of one operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyedStateHandle {
    /// The canonical key-group file: hashmap snapshots, full RocksDB snapshots, savepoints.
    Full { range: KeyGroupRange, max_parallelism: u32, file: StoredFile },
    /// A RocksDB checkpoint: SSTs in `shared/` (by local file name), the rest private.
    Incremental { range: KeyGroupRange, max_parallelism: u32, shared: Vec<(String, StoredFile)>, private: Vec<(String, StoredFile)> },
}

impl KeyedStateHandle {
    pub fn range(&self) -> KeyGroupRange {
        match self {
            Self::Full { range, .. } | Self::Incremental { range, .. } => *range,
        }
    }

    /// Bytes this handle references in storage.
    pub fn size(&self) -> u64 {
        match self {
            Self::Full { file, .. } => file.size,
            Self::Incremental { shared, private, .. } => shared.iter().chain(private).map(|(_, f)| f.size).sum(),
        }
    }

    /// Paths of the shared files it references (for reference counting).
    pub fn shared_paths(&self) -> Vec<String> {
        match self {
            Self::Full { .. } => Vec::new(),
            Self::Incremental { shared, .. } => shared.iter().map(|(_, f)| f.path.clone()).collect(),
        }
    }

    /// Every file it references.
    pub fn files(&self) -> Vec<&StoredFile> {
        match self {
            Self::Full { file, .. } => vec![file],
            Self::Incremental { shared, private, .. } => shared.iter().chain(private).map(|(_, f)| f).collect(),
        }
    }
}


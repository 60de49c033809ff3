//! The handles that describe snapshots of keyed state: what a task acknowledges to the
//! JobManager and what `_metadata` records. They sit below the backends (`hashmap.rs`,
//! `rocks.rs`) and the snapshot logic (`snapshot.rs`), which all use them, so that no two of
//! those modules need each other.

use crate::storage::StoredFile;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use weir_core::KeyGroupRange;

/// A local file of a RocksDB checkpoint.
///
/// `RocksDbBackend::incremental_checkpoint` lists them, and
/// [`crate::snapshot::PendingSnapshot::upload`] uploads them. The checkpoint's SSTs are hard
/// links, so compactions of the live database do not remove them.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// The file's name in the RocksDB checkpoint (e.g. `000012.sst`, `MANIFEST-000005`). The
    /// handle records this name so that a restore can download the file under it again.
    pub name: String,
    /// Where the file is on local disk, in the checkpoint scratch directory.
    pub path: PathBuf,
}

/// Describes one subtask's keyed-state snapshot of one operator.
///
/// Goes into the task's acknowledgement and into `_metadata` (as JSON, tagged by `kind`). Both
/// variants record the key-group `range` the snapshot covers (the subtask's range when it was
/// taken) and the `max_parallelism` the key groups were computed with. A restore uses the range
/// to pick the handles that overlap a new subtask. It refuses a different max parallelism,
/// because key groups cannot be remapped.
///
/// All paths in [`StoredFile`]s are relative to the storage they were uploaded to: the job's
/// checkpoint storage root for a checkpoint (`<job>/chk-<n>/...`, `<job>/shared/...`), the
/// savepoint's own folder for a savepoint (`<uid>-<subtask>/...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyedStateHandle {
    /// The canonical key-group file: hashmap snapshots, full RocksDB snapshots, canonical
    /// savepoints.
    ///
    /// One self-contained file in the snapshot's own directory
    /// (`<job>/chk-<n>/<uid>-<subtask>/keyed-state`, in a savepoint `<uid>-<subtask>/keyed-state`).
    /// Either backend can restore it, so it is the format for switching backends.
    Full { range: KeyGroupRange, max_parallelism: u32, file: StoredFile },
    /// A RocksDB checkpoint: SSTs in `shared/` (by local file name), the rest private.
    ///
    /// Pairs are (local file name, stored file). `shared` lists every SST of the database,
    /// sorted by name. It holds the SSTs an earlier completed checkpoint uploaded (possibly a
    /// different one per file) and the ones this checkpoint uploaded. The shared-state registry
    /// counts references to them. `private` holds MANIFEST, CURRENT, OPTIONS and other non-SST
    /// files, under `chk-<n>/`; those belong to this checkpoint alone. Only the RocksDB backend
    /// can restore it.
    ///
    /// A native savepoint has the same shape, but every file, SSTs included, lies in the
    /// savepoint's `<uid>-<subtask>/` under its RocksDB name: nothing in it is shared with
    /// anything, so its `shared` paths must not be counted by a checkpoint's registry.
    Incremental { range: KeyGroupRange, max_parallelism: u32, shared: Vec<(String, StoredFile)>, private: Vec<(String, StoredFile)> },
}

impl KeyedStateHandle {
    /// The key groups this snapshot covers.
    pub fn range(&self) -> KeyGroupRange {
        match self {
            Self::Full { range, .. } | Self::Incremental { range, .. } => *range,
        }
    }

    /// Bytes this handle references in storage.
    ///
    /// A shared SST is counted in full by every handle that references it, so the sizes of several
    /// checkpoints do not add up to what storage holds.
    pub fn size(&self) -> u64 {
        match self {
            Self::Full { file, .. } => file.size,
            // Saturates: the sizes may come from a forged `_metadata` or acknowledgement.
            Self::Incremental { shared, private, .. } => shared.iter().chain(private).map(|(_, f)| f.size).fold(0, u64::saturating_add),
        }
    }

    /// Paths of the shared files it references (for reference counting).
    ///
    /// Always empty for [`Full`](Self::Full) handles, which share nothing.
    pub fn shared_paths(&self) -> Vec<String> {
        match self {
            Self::Full { .. } => Vec::new(),
            Self::Incremental { shared, .. } => shared.iter().map(|(_, f)| f.path.clone()).collect(),
        }
    }

    /// Every file it references.
    ///
    /// Shared and private files alike.
    pub fn files(&self) -> Vec<&StoredFile> {
        match self {
            Self::Full { file, .. } => vec![file],
            Self::Incremental { shared, private, .. } => shared.iter().chain(private).map(|(_, f)| f).collect(),
        }
    }
}

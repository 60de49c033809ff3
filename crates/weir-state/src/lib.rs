//! Keyed state for Weir's operators, its snapshots, and checkpoint storage.
//!
//! - [`keyed`]: the state API (value, list, map, reducing state scoped to key and namespace,
//!   and the batch aggregate path) over a byte-level [`KeyedStateBackend`];
//! - [`hashmap`] and [`rocks`]: the two backends (`state.backend.type`);
//! - [`snapshot`]: handles, the synchronous/asynchronous snapshot split, restore and rescaling;
//! - [`storage`]: `file://`, `s3://` and `memory://` checkpoint storage via `object_store`;
//! - [`format`]: framed files with magic, version and checksum;
//! - [`metadata`], [`registry`], [`operator_state`]: `_metadata`, shared-file reference counts,
//!   operator list state;
//! - [`cleanup`]: what of a job's checkpoint storage is garbage, and the sweep that deletes it.
//!
//! # What a newcomer needs to know
//!
//! - **Key groups.** A key's key group is `hash(key) % pipeline.max-parallelism`, and each
//!   subtask owns a contiguous [`KeyGroupRange`] of them. Every stored entry starts with its key
//!   group, every snapshot covers exactly its subtask's range, and a restore at another
//!   parallelism gives each new subtask the entries of its own key groups from every old
//!   snapshot that overlaps them. Key groups are computed from the max parallelism, so it
//!   cannot change across a restore.
//! - **Synchronous and asynchronous parts.** [`StateBackend::snapshot`] runs on the task thread
//!   between two batches and only captures the state (a copy, or a RocksDB checkpoint of hard
//!   links); [`PendingSnapshot::upload`] then writes the files while the task goes on processing.
//! - **Incremental sharing.** RocksDB SST files never change once written, so a checkpoint
//!   uploads only the SSTs that no earlier *completed* checkpoint uploaded, and references the
//!   others in `shared/`. The JobManager's [`registry::SharedStateRegistry`] counts those
//!   references, so that a shared file is deleted once no retained checkpoint references it.
//! - **Framing.** Every file Weir writes in its own format carries a magic, a format version and
//!   a CRC-32 ([`format`]). RocksDB's own files are checked against the size and CRC-32 recorded
//!   in their [`StoredFile`]. A keyed-state restore verifies every file before it loads anything.
//! - **Layout.** Per job, `chk-<n>/` holds the files that belong to checkpoint n alone, `shared/`
//!   the incremental SSTs and `taskowned/` the TaskManagers' files. `chk-<n>/_metadata` is
//!   written last, by the JobManager: a checkpoint is complete when its `_metadata` exists.
//!   A savepoint is one self-contained folder of its own (`<uid>-<subtask>/` per operator
//!   subtask, `_metadata`), every path relative to the folder, nothing shared.
//!
//! `docs/state.md` explains the layout and formats.

pub mod channel_state;
pub mod cleanup;
pub mod format;
pub mod handle;
pub mod hashmap;
pub mod keyed;
pub mod metadata;
pub mod operator_state;
pub mod registry;
pub mod rocks;
pub mod snapshot;
pub mod storage;

/// The state API operators use, re-exported at the crate root.
pub use keyed::{KeyContext, KeyedStateBackend, Keys, ListState, MapState, ReducingState, StateCodec, ValueState};
/// Taking, uploading and restoring snapshots.
pub use snapshot::{BackendKind, KeyedStateHandle, PendingSnapshot, SavepointFormat, SnapshotTarget, SnapshotType, StateBackend};
/// Checkpoint storage and the record of one stored file.
pub use storage::{CheckpointStorage, StoredFile};

use weir_core::KeyGroupRange;

/// A state error; always names the file, path or key group involved.
///
/// Variants are told apart by kind, never by message. `path` is usually the file's full
/// location (`CheckpointStorage::display`), so an operator can find the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file exists but fails verification: a wrong magic, version or length, a CRC-32
    /// mismatch, a size or CRC-32 that differs from what the checkpoint recorded, or a body
    /// that does not parse.
    #[error("corrupted checkpoint file {path}: {reason}")]
    Corrupt { path: String, reason: String },
    /// The object store has no object at `path` (`object_store`'s `NotFound`). Usually the
    /// checkpoint's files were discarded, or were never uploaded.
    #[error("checkpoint file {path} is missing")]
    Missing { path: String },
    /// Any other object-store failure (network, permissions, S3 errors after the retries).
    #[error("checkpoint storage error at {path}: {source}")]
    Storage { path: String, source: object_store::Error },
    /// A local file-system error: the RocksDB working directory, a download target, a local file
    /// being uploaded, or the root directory of `file://` storage.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// An error from RocksDB. `path` is the database or checkpoint directory involved.
    #[error("RocksDB at {path}: {reason}")]
    RocksDb { path: String, reason: String },
    /// A bad setting, named by its configuration key (e.g. an unsupported
    /// `execution.checkpointing.dir` URL).
    #[error("configuration key '{key}': {reason}")]
    Config { key: String, reason: String },
    /// A key whose key group `kg` is outside the backend's `range`. Either the record went to the
    /// wrong subtask, or the key bytes used for state are not the bytes the partitioner hashed.
    #[error("key group {kg} is not in this backend's range {}..{}", range.start, range.end)]
    KeyGroup { kg: u32, range: KeyGroupRange },
    /// A stored value that does not decode as the state's type ([`StateCodec`]), a truncated
    /// list state, or `_metadata` that cannot be serialized.
    #[error("cannot decode state: {0}")]
    Codec(String),
    /// A checkpoint this job cannot restore as configured. Either `pipeline.max-parallelism`
    /// differs, or an incremental RocksDB checkpoint is being restored into the hashmap backend.
    #[error("{0}")]
    Incompatible(String),
    /// An upload task that panicked or was cancelled before it finished.
    #[error("upload interrupted: {0}")]
    Interrupted(String),
}

//! Keyed state for Weir's operators, its snapshots, and checkpoint storage.
//!
//! - [`keyed`]: the state API (value, list, map, reducing state scoped to key and namespace,
//!   and the batch aggregate path) over a byte-level [`KeyedStateBackend`];
//! - [`hashmap`] and [`rocks`]: the two backends (`state.backend.type`);
//! - [`snapshot`]: handles, the synchronous/asynchronous snapshot split, restore and rescaling;
//! - [`storage`]: `file://`, `s3://` and `memory://` checkpoint storage via `object_store`;
//! - [`format`]: framed files with magic, version and checksum;
//! - [`metadata`], [`registry`], [`operator_state`]: `_metadata`, shared-file reference counts,
//!   operator list state.
//!
//! `docs/state.md` explains the layout and formats.

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

pub use keyed::{KeyContext, KeyedStateBackend, Keys, ListState, MapState, ReducingState, StateCodec, ValueState};
pub use snapshot::{BackendKind, KeyedStateHandle, PendingSnapshot, SnapshotTarget, StateBackend};
pub use storage::{CheckpointStorage, StoredFile};

use weir_core::KeyGroupRange;

/// A state error; always names the file, path or key group involved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("corrupted checkpoint file {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("checkpoint file {path} is missing")]
    Missing { path: String },
    #[error("checkpoint storage error at {path}: {source}")]
    Storage { path: String, source: object_store::Error },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("RocksDB at {path}: {reason}")]
    RocksDb { path: String, reason: String },
    #[error("configuration key '{key}': {reason}")]
    Config { key: String, reason: String },
    #[error("key group {kg} is not in this backend's range {}..{}", range.start, range.end)]
    KeyGroup { kg: u32, range: KeyGroupRange },
    #[error("cannot decode state: {0}")]
    Codec(String),
    #[error("{0}")]
    Incompatible(String),
}

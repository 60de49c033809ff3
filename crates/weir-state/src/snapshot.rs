//! Snapshots of keyed state: the backend wrapper that takes them, and the asynchronous upload
//! and download. The handles that describe them are in [`crate::handle`].
//!
//! A snapshot has a synchronous part, taken on the task thread between two batches (a copy of
//! the hashmap backend's groups, or a RocksDB checkpoint of hard links), and an asynchronous
//! part that uploads files while the task goes on processing. The handle that comes out is what
//! the task acknowledges to the JobManager and what `_metadata` records.

use crate::hashmap::HashMapBackend;
use crate::keyed::KeyedStateBackend;
use crate::rocks::{IncrementalSnapshot, RestoreSource, RocksDbBackend};
use crate::storage::{layout, CheckpointStorage};
use crate::StateError;
use std::path::Path;
use weir_core::KeyGroupRange;

pub use crate::handle::{KeyedStateHandle, LocalFile};
/// Which backend (`state.backend.type`): the typed setting of `weir_core::settings`.
pub use weir_core::settings::StateBackendKind as BackendKind;

/// Where a snapshot goes.
#[derive(Debug, Clone)]
pub struct SnapshotTarget {
    pub job: String,
    pub checkpoint: u64,
    pub operator: String,
    pub subtask: u32,
    /// Savepoints are full and self-contained, whatever the backend.
    pub savepoint: bool,
    /// `execution.checkpointing.incremental` (RocksDB only).
    pub incremental: bool,
}

impl SnapshotTarget {
    fn exclusive_dir(&self) -> String {
        format!("{}/{}-{}", layout::checkpoint_dir(&self.job, self.checkpoint), self.operator, self.subtask)
    }
}

/// The keyed state backend of one operator in one subtask.
pub enum StateBackend {
    HashMap(HashMapBackend),
    RocksDb(RocksDbBackend),
}

/// A snapshot whose synchronous part is done; [`PendingSnapshot::upload`] finishes it.
pub enum PendingSnapshot {
    Bytes { target: SnapshotTarget, range: KeyGroupRange, max_parallelism: u32, bytes: Vec<u8> },
    Incremental { target: SnapshotTarget, snapshot: IncrementalSnapshot },
}

impl StateBackend {
    /// A new, empty backend. `local_dir` is the TaskManager's working directory (RocksDB).
    pub fn create(kind: BackendKind, local_dir: &Path, max_parallelism: u32, range: KeyGroupRange) -> Result<Self, StateError> {
        Ok(match kind {
            BackendKind::HashMap => Self::HashMap(HashMapBackend::new(max_parallelism, range)),
            BackendKind::RocksDb => Self::RocksDb(RocksDbBackend::open(local_dir, max_parallelism, range)?),
        })
    }

    pub fn keyed(&mut self) -> &mut dyn KeyedStateBackend {
        match self {
            Self::HashMap(b) => b,
            Self::RocksDb(b) => b,
        }
    }

    pub fn keyed_ref(&self) -> &dyn KeyedStateBackend {
        match self {
            Self::HashMap(b) => b,
            Self::RocksDb(b) => b,
        }
    }

    /// The synchronous part of a snapshot.
    pub fn snapshot(&self, target: SnapshotTarget) -> Result<PendingSnapshot, StateError> {
        let kb = self.keyed_ref();
        let (range, max_parallelism) = (kb.key_group_range(), kb.max_parallelism());
        Ok(match self {
            Self::HashMap(b) => PendingSnapshot::Bytes { target, range, max_parallelism, bytes: b.snapshot_bytes() },
            Self::RocksDb(b) if target.savepoint || !target.incremental => {
                PendingSnapshot::Bytes { target, range, max_parallelism, bytes: b.snapshot_bytes()? }
            }
            Self::RocksDb(b) => PendingSnapshot::Incremental { snapshot: b.incremental_checkpoint(target.checkpoint)?, target },
        })
    }

    /// Records what a finished snapshot uploaded (RocksDB reuses it once `n` completes).
    pub fn snapshot_uploaded(&mut self, n: u64, handle: &KeyedStateHandle) {
        if let Self::RocksDb(b) = self {
            b.record_uploaded(n, handle);
        }
    }

    pub fn notify_checkpoint_complete(&mut self, n: u64) {
        if let Self::RocksDb(b) = self {
            b.notify_checkpoint_complete(n);
        }
    }

    /// Restores a backend for `range` from the handles of a checkpoint: every handle whose
    /// range intersects `range` contributes its key groups in `range` (rescaling merges or
    /// splits). Every file is verified before anything is loaded.
    pub async fn restore(
        kind: BackendKind,
        local_dir: &Path,
        max_parallelism: u32,
        range: KeyGroupRange,
        storage: &CheckpointStorage,
        handles: &[KeyedStateHandle],
    ) -> Result<Self, StateError> {
        let mut sources = Vec::new();
        for h in handles {
            let r = h.range();
            if r.end <= range.start || r.start >= range.end {
                continue;
            }
            match h {
                KeyedStateHandle::Full { file, max_parallelism: mp, .. } => {
                    check_max_parallelism(*mp, max_parallelism, &storage.display(&file.path))?;
                    let bytes = storage.get_bytes_checked(file).await?;
                    sources.push(RestoreSource::Full { bytes, path: storage.display(&file.path) });
                }
                KeyedStateHandle::Incremental { shared, private, max_parallelism: mp, .. } => {
                    if let Some((_, f)) = shared.first().or(private.first()) {
                        check_max_parallelism(*mp, max_parallelism, &storage.display(&f.path))?;
                    }
                    if kind == BackendKind::HashMap {
                        return Err(StateError::Incompatible(
                            "an incremental RocksDB checkpoint cannot be restored into the hashmap backend; restore from a savepoint (self-contained) to switch backends".into(),
                        ));
                    }
                    let dir = local_dir.join(format!("download-{}", uuid::Uuid::new_v4().simple()));
                    tokio::fs::create_dir_all(&dir).await.map_err(|e| StateError::Io { path: dir.display().to_string(), source: e })?;
                    for (name, file) in shared.iter().chain(private) {
                        storage.get_file_checked(file, &dir.join(name)).await?;
                    }
                    sources.push(RestoreSource::RocksDb { dir, range: r, shared: shared.clone() });
                }
            }
        }
        match kind {
            BackendKind::HashMap => {
                let mut b = HashMapBackend::new(max_parallelism, range);
                for s in sources {
                    if let RestoreSource::Full { bytes, path } = s {
                        b.restore_bytes(&bytes, &path)?;
                    }
                }
                Ok(Self::HashMap(b))
            }
            BackendKind::RocksDb => Ok(Self::RocksDb(RocksDbBackend::restore(local_dir, max_parallelism, range, sources)?)),
        }
    }
}

fn check_max_parallelism(stored: u32, wanted: u32, path: &str) -> Result<(), StateError> {
    if stored != wanted {
        return Err(StateError::Incompatible(format!(
            "{path} was written with pipeline.max-parallelism {stored}, the job now has {wanted}: key groups cannot be remapped"
        )));
    }
    Ok(())
}

impl PendingSnapshot {
    /// Uploads the snapshot's files; the returned handle goes into the acknowledgement.
    pub async fn upload(self, storage: &CheckpointStorage) -> Result<KeyedStateHandle, StateError> {
        match self {
            PendingSnapshot::Bytes { target, range, max_parallelism, bytes } => {
                let rel = format!("{}/keyed-state", target.exclusive_dir());
                let file = storage.put_bytes(&rel, bytes).await?;
                Ok(KeyedStateHandle::Full { range, max_parallelism, file })
            }
            PendingSnapshot::Incremental { target, snapshot } => {
                let result = upload_incremental(storage, &target, &snapshot).await;
                let _ = tokio::fs::remove_dir_all(&snapshot.dir).await;
                result
            }
        }
    }
}

async fn upload_incremental(
    storage: &CheckpointStorage,
    target: &SnapshotTarget,
    s: &IncrementalSnapshot,
) -> Result<KeyedStateHandle, StateError> {
    let mut shared = s.reused.clone();
    for f in &s.to_upload {
        // Unique per instance and checkpoint: never overwrite a file another checkpoint uses.
        let rel = format!("{}/{}-{}-{}", layout::shared_dir(&target.job), s.instance, s.checkpoint, f.name);
        shared.push((f.name.clone(), storage.put_file(&rel, &f.path).await?));
    }
    let mut private = Vec::new();
    for f in &s.private {
        let rel = format!("{}/{}", target.exclusive_dir(), f.name);
        private.push((f.name.clone(), storage.put_file(&rel, &f.path).await?));
    }
    shared.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(KeyedStateHandle::Incremental { range: s.range, max_parallelism: s.max_parallelism, shared, private })
}

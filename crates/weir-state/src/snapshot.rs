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

/// Re-exported so that callers find the handles beside the code that produces them.
pub use crate::handle::{KeyedStateHandle, LocalFile};
/// Which backend (`state.backend.type`): the typed setting of `weir_core::settings`.
pub use weir_core::settings::StateBackendKind as BackendKind;

/// Where a snapshot goes.
///
/// Names the snapshot's files: its own files go to `<job>/chk-<n>/<operator>-<subtask>/`, and
/// new SSTs of an incremental snapshot go to `<job>/shared/`.
#[derive(Debug, Clone)]
pub struct SnapshotTarget {
    /// The job id, the first component of every path.
    pub job: String,
    /// The checkpoint id n.
    pub checkpoint: u64,
    /// The operator's uid.
    pub operator: String,
    /// The subtask index.
    pub subtask: u32,
    /// Savepoints are full and self-contained, whatever the backend.
    pub savepoint: bool,
    /// `execution.checkpointing.incremental` (RocksDB only).
    pub incremental: bool,
}

impl SnapshotTarget {
    /// `<job>/chk-<n>/<operator>-<subtask>`: files that belong to this snapshot alone.
    fn exclusive_dir(&self) -> String {
        format!("{}/{}-{}", layout::checkpoint_dir(&self.job, self.checkpoint), self.operator, self.subtask)
    }
}

/// The keyed state backend of one operator in one subtask.
///
/// State is read and written through [`keyed`](Self::keyed), which is the same for both backends.
/// Snapshot and restore differ per backend and are dispatched here.
pub enum StateBackend {
    /// The `hashmap` backend: on the heap.
    HashMap(HashMapBackend),
    /// The `rocksdb` backend: on local disk.
    RocksDb(RocksDbBackend),
}

/// A snapshot whose synchronous part is done; [`PendingSnapshot::upload`] finishes it.
///
/// It owns everything the upload needs and does not borrow the backend, so the task can keep
/// processing (and changing its state) during the upload.
pub enum PendingSnapshot {
    /// A canonical key-group file, complete in memory: hashmap snapshots, full RocksDB snapshots,
    /// savepoints. It becomes a [`KeyedStateHandle::Full`].
    Bytes { target: SnapshotTarget, range: KeyGroupRange, max_parallelism: u32, bytes: Vec<u8> },
    /// A RocksDB checkpoint on local disk, with its SSTs already split into reused and to-upload.
    /// It becomes a [`KeyedStateHandle::Incremental`].
    Incremental { target: SnapshotTarget, snapshot: IncrementalSnapshot },
}

impl StateBackend {
    /// A new, empty backend. `local_dir` is the TaskManager's working directory (RocksDB).
    ///
    /// `range` is the subtask's key-group range, from `KeyGroupRange::for_subtask`.
    pub fn create(kind: BackendKind, local_dir: &Path, max_parallelism: u32, range: KeyGroupRange) -> Result<Self, StateError> {
        Ok(match kind {
            BackendKind::HashMap => Self::HashMap(HashMapBackend::new(max_parallelism, range)),
            BackendKind::RocksDb => Self::RocksDb(RocksDbBackend::open(local_dir, max_parallelism, range)?),
        })
    }

    /// The byte-level state API of whichever backend this is.
    pub fn keyed(&mut self) -> &mut dyn KeyedStateBackend {
        match self {
            Self::HashMap(b) => b,
            Self::RocksDb(b) => b,
        }
    }

    /// Read-only [`keyed`](Self::keyed).
    pub fn keyed_ref(&self) -> &dyn KeyedStateBackend {
        match self {
            Self::HashMap(b) => b,
            Self::RocksDb(b) => b,
        }
    }

    /// The synchronous part of a snapshot.
    ///
    /// Runs on the task thread between two batches. The state may change as soon as it returns. The
    /// hashmap backend always writes a full copy. RocksDB writes the full key-group file for
    /// savepoints and when `incremental` is off, and takes a RocksDB checkpoint otherwise.
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
    ///
    /// Call it after [`PendingSnapshot::upload`] succeeded, with the returned handle. It does
    /// nothing for the hashmap backend.
    pub fn snapshot_uploaded(&mut self, n: u64, handle: &KeyedStateHandle) {
        if let Self::RocksDb(b) = self {
            b.record_uploaded(n, handle);
        }
    }

    /// The JobManager reports that checkpoint `n` completed, so RocksDB may now reference the SSTs
    /// that checkpoints up to `n` uploaded. It does nothing for the hashmap backend.
    pub fn notify_checkpoint_complete(&mut self, n: u64) {
        if let Self::RocksDb(b) = self {
            b.notify_checkpoint_complete(n);
        }
    }

    /// Restores a backend for `range` from the handles of a checkpoint: every handle whose
    /// range intersects `range` contributes its key groups in `range` (rescaling merges or
    /// splits). Every file is verified before anything is loaded.
    ///
    /// Each new subtask's `range` can overlap several old handles after a rescale. All files are
    /// downloaded and checked first (incremental ones into `<local_dir>/download-<uuid>/`); then
    /// the backend is built. Fails with [`StateError::Incompatible`] if an overlapping handle was
    /// written with another max parallelism, or if an incremental handle meets the hashmap backend
    /// (restore from a savepoint to switch backends). Full handles restore into either backend.
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

/// Refuses to restore across a change of max parallelism, naming the file. A key's key group is
/// `hash % max_parallelism`, so with another max every key would belong to another key group.
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
    ///
    /// `Bytes` becomes one file, `<job>/chk-<n>/<uid>-<subtask>/keyed-state`. `Incremental` uploads
    /// new SSTs to `shared/` and the other files to the checkpoint's directory. The local
    /// checkpoint directory is deleted afterwards, whether the upload succeeded or not. Afterwards,
    /// pass the handle to [`StateBackend::snapshot_uploaded`] so that RocksDB can reuse the SSTs.
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

/// The asynchronous part of an incremental snapshot. New SSTs go to
/// `shared/<instance>-<n>-<name>`, private files to the checkpoint's directory, one file at a
/// time. The handle lists reused and new SSTs together, sorted by local name.
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

//! Snapshots of keyed state: the backend wrapper that takes them, and the asynchronous upload
//! and download. The handles that describe them are in [`crate::handle`].
//!
//! A snapshot has a synchronous part, taken on the task thread between two batches (a copy of
//! the hashmap backend's groups, or a RocksDB checkpoint of hard links), and an asynchronous
//! part that uploads files while the task goes on processing. The handle that comes out is what
//! the task acknowledges to the JobManager and what `_metadata` records.
//!
//! Checkpoints and savepoints differ in where their files go ([`SnapshotType`]). A checkpoint
//! writes into the job's checkpoint storage, `<job>/chk-<n>/<uid>-<subtask>/`, and an incremental
//! RocksDB checkpoint shares SSTs with other checkpoints through `<job>/shared/`. A savepoint is
//! a self-contained folder: the task uploads to a storage opened at that folder, every file goes
//! under `<uid>-<subtask>/` (`keyed-state`, `operator-state`, or, in the native format, every
//! file of a RocksDB checkpoint), and so every path its handles record is relative to the folder.
//! Nothing of a savepoint is shared or reused, so the folder can be moved, copied between
//! `file://` and `s3://`, restored at another parallelism, or deleted by its owner.

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

/// How a savepoint stores keyed state (Flink's savepoint format types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SavepointFormat {
    /// The canonical key-group file ([`KeyedStateHandle::Full`]): portable between backends,
    /// versions and parallelisms.
    #[default]
    Canonical,
    /// The backend's own files: RocksDB copies every file of a RocksDB checkpoint into the
    /// savepoint ([`KeyedStateHandle::Incremental`], nothing shared). Faster to take and to
    /// restore for large state, but only RocksDB restores it. The hashmap backend has no native
    /// format and writes the canonical one.
    Native,
}

/// What a snapshot is: decides where its files go and whether it may share files with others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotType {
    /// A checkpoint of job `job`, written to the job's checkpoint storage: its own files under
    /// `<job>/chk-<n>/<uid>-<subtask>/`, the new SSTs of an incremental RocksDB snapshot under
    /// `<job>/shared/`, and SSTs an earlier completed checkpoint uploaded referenced, not copied.
    /// `incremental` is `execution.checkpointing.incremental` (RocksDB only).
    Checkpoint { job: String, incremental: bool },
    /// A savepoint, written to a storage opened at the savepoint's own folder: every file under
    /// `<uid>-<subtask>/`, so every path in its handles is relative to the folder and the folder
    /// can be moved (or copied between stores) and restored. Nothing in it is shared with, or
    /// reused from, any checkpoint, and nothing later reuses its files.
    Savepoint(SavepointFormat),
}

/// Where one operator subtask's snapshot goes: names the snapshot's files.
///
/// Paths are relative to the storage the snapshot is uploaded to: the job's checkpoint storage
/// for a checkpoint, the savepoint's folder for a savepoint (see [`SnapshotType`]).
#[derive(Debug, Clone)]
pub struct SnapshotTarget {
    /// Checkpoint or savepoint, and how it stores keyed state.
    pub snapshot: SnapshotType,
    /// The checkpoint id n (savepoints take ids from the same sequence).
    pub checkpoint: u64,
    /// The operator's uid.
    pub operator: String,
    /// The subtask index.
    pub subtask: u32,
}

impl SnapshotTarget {
    /// The directory of the files that belong to this snapshot alone:
    /// `<job>/chk-<n>/<uid>-<subtask>` for a checkpoint, `<uid>-<subtask>` for a savepoint.
    /// Keyed state goes to `keyed-state` in it (or RocksDB's files), operator state to
    /// `operator-state`.
    pub fn exclusive_dir(&self) -> String {
        match &self.snapshot {
            SnapshotType::Checkpoint { job, .. } => {
                format!("{}/{}-{}", layout::checkpoint_dir(job, self.checkpoint), self.operator, self.subtask)
            }
            SnapshotType::Savepoint(_) => format!("{}-{}", self.operator, self.subtask),
        }
    }

    /// Where new SSTs of an incremental RocksDB snapshot go, shared with later checkpoints:
    /// `<job>/shared` for a checkpoint; `None` for a savepoint, whose files all stay in
    /// [`exclusive_dir`](Self::exclusive_dir).
    fn shared_dir(&self) -> Option<String> {
        match &self.snapshot {
            SnapshotType::Checkpoint { job, .. } => Some(layout::shared_dir(job)),
            SnapshotType::Savepoint(_) => None,
        }
    }

    /// Whether this is a savepoint: its handles must never be recorded for reuse
    /// ([`StateBackend::snapshot_uploaded`]).
    pub fn is_savepoint(&self) -> bool {
        matches!(self.snapshot, SnapshotType::Savepoint(_))
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
    /// canonical savepoints. It becomes a [`KeyedStateHandle::Full`].
    Bytes { target: SnapshotTarget, range: KeyGroupRange, max_parallelism: u32, bytes: Vec<u8> },
    /// A RocksDB checkpoint on local disk, with its SSTs already split into reused and to-upload
    /// (a native savepoint reuses none). It becomes a [`KeyedStateHandle::Incremental`].
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

    /// Bounds the RocksDB backend's aggregate cache at `bytes` (0: none); the hashmap backend
    /// has nothing to bound.
    pub fn set_aggregate_cache(&mut self, bytes: usize) -> Result<(), StateError> {
        match self {
            Self::HashMap(_) => Ok(()),
            Self::RocksDb(b) => b.set_aggregate_cache(bytes),
        }
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
    /// hashmap backend always writes a full copy (the canonical format). RocksDB writes the
    /// canonical key-group file for canonical savepoints and when `incremental` is off, takes a
    /// RocksDB checkpoint whose files are all uploaded for a native savepoint, and an incremental
    /// RocksDB checkpoint otherwise.
    pub fn snapshot(&self, target: SnapshotTarget) -> Result<PendingSnapshot, StateError> {
        let kb = self.keyed_ref();
        let (range, max_parallelism) = (kb.key_group_range(), kb.max_parallelism());
        Ok(match (self, &target.snapshot) {
            (Self::HashMap(b), _) => PendingSnapshot::Bytes { target, range, max_parallelism, bytes: b.snapshot_bytes() },
            (
                Self::RocksDb(b),
                SnapshotType::Checkpoint { incremental: false, .. } | SnapshotType::Savepoint(SavepointFormat::Canonical),
            ) => PendingSnapshot::Bytes { target, range, max_parallelism, bytes: b.snapshot_bytes()? },
            (Self::RocksDb(b), SnapshotType::Savepoint(SavepointFormat::Native)) => {
                PendingSnapshot::Incremental { snapshot: b.native_snapshot(target.checkpoint)?, target }
            }
            (Self::RocksDb(b), SnapshotType::Checkpoint { incremental: true, .. }) => {
                PendingSnapshot::Incremental { snapshot: b.incremental_checkpoint(target.checkpoint)?, target }
            }
        })
    }

    /// Records what a finished checkpoint uploaded (RocksDB reuses it once `n` completes).
    ///
    /// Call it after [`PendingSnapshot::upload`] of a checkpoint succeeded, with the returned
    /// handle; never with a savepoint's handle: a savepoint's folder belongs to the user, who may
    /// move or delete it, so no checkpoint may reference its files. It does nothing for the
    /// hashmap backend.
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
    /// written with another max parallelism, or if a RocksDB handle (an incremental checkpoint or
    /// a native savepoint) meets the hashmap backend (restore from a canonical savepoint to switch
    /// backends). Full handles restore into either backend. Paths resolve against `storage`:
    /// the checkpoint storage for a checkpoint, the savepoint's folder for a savepoint.
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
                            "RocksDB's native files (an incremental checkpoint or a native savepoint) cannot be restored into the hashmap backend; take a canonical savepoint (`--type canonical`) to switch backends".into(),
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
    /// `Bytes` becomes one file, `keyed-state` in the target's
    /// [exclusive directory](SnapshotTarget::exclusive_dir). `Incremental` uploads new SSTs to
    /// `<job>/shared/` (a checkpoint) or the exclusive directory (a native savepoint), and the
    /// other files to the exclusive directory. The local checkpoint directory is deleted
    /// afterwards, whether the upload succeeded or not. Afterwards, pass a checkpoint's handle
    /// (never a savepoint's) to [`StateBackend::snapshot_uploaded`] so that RocksDB can reuse the
    /// SSTs.
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

/// The asynchronous part of an incremental snapshot or a native savepoint. New SSTs go to
/// `<job>/shared/<instance>-<n>-<name>` (a savepoint: `<uid>-<subtask>/<name>`), private files to
/// the exclusive directory, one file at a time. The handle lists reused and new SSTs together,
/// sorted by local name.
async fn upload_incremental(
    storage: &CheckpointStorage,
    target: &SnapshotTarget,
    s: &IncrementalSnapshot,
) -> Result<KeyedStateHandle, StateError> {
    let mut shared = s.reused.clone();
    for f in &s.to_upload {
        let rel = match target.shared_dir() {
            // Unique per instance and checkpoint: never overwrite a file another checkpoint uses.
            Some(dir) => format!("{dir}/{}-{}-{}", s.instance, s.checkpoint, f.name),
            // A savepoint's folder holds one RocksDB checkpoint per operator subtask.
            None => format!("{}/{}", target.exclusive_dir(), f.name),
        };
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

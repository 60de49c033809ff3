//! The `rocksdb` backend: one RocksDB instance per operator per subtask, in the TaskManager's
//! working directory, keys prefixed by key group (see `keyed.rs`).
//!
//! Snapshots:
//! - **incremental** (default): a RocksDB checkpoint (hard links, after a memtable flush) is
//!   taken synchronously; its SST files are immutable, so only those not uploaded by an earlier
//!   *completed* checkpoint are uploaded (to `shared/`), the others are referenced. MANIFEST,
//!   CURRENT and OPTIONS go to the checkpoint's own directory. An SST uploaded by a checkpoint
//!   that never completed is not trusted for reuse: it may have been deleted.
//! - **full** (and canonical savepoints): every entry in the canonical key-group file, readable
//!   by both backends.
//! - **native savepoints**: a RocksDB checkpoint as for an incremental one, but every file of it
//!   (SSTs included) is uploaded into the savepoint's folder: nothing is reused from checkpoints,
//!   and nothing the savepoint uploaded is ever recorded for reuse (the folder is the user's).
//!
//! Restore: one incremental handle covering exactly this range is downloaded and opened as the
//! database (the first checkpoint after a restore uploads its SSTs anew, as Flink's NO_CLAIM
//! mode does); anything else — several handles after a rescale, a
//! range that differs, full files — is merged key group by key group into a fresh database.
//!
//! Every call blocks; the caller runs it on a task thread.
//!
//! ## The aggregate cache
//! The built-in keyed aggregates ([`KeyedStateBackend::aggregate_batch`]) go through a bounded
//! write-back cache in front of the database (`state.backend.rocksdb.aggregate-cache`): a
//! row whose key is cached is one hash probe and an update in memory; a miss reads the key once
//! from RocksDB. Dirty entries reach the database in one `WriteBatch` when the cache is full
//! (then the cache keeps half of its entries) and in the synchronous phase of every snapshot,
//! before the RocksDB checkpoint is taken, so every checkpoint holds every update made before
//! its barrier and only the files written since the last one are new (incremental checkpoints
//! stay incremental). Every other call sees the cached values: reads look in the cache first,
//! writes replace the cached entry, and scans and counts flush first. State larger than the
//! cache works as without it, one read per miss.

use crate::format::{read_keyed_state, KeyedStateWriter};
use crate::handle::{KeyedStateHandle, LocalFile};
use crate::keyed::{fold, Keys};
use crate::keyed::{key_group_of, KeyedStateBackend};
use crate::storage::StoredFile;
use crate::StateError;
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use weir_core::graph::AggKind;
use weir_core::KeyGroupRange;

/// Maps a RocksDB error to [`StateError::RocksDb`] naming `path`.
fn db_err(path: &Path) -> impl Fn(rocksdb::Error) -> StateError + '_ {
    move |e| StateError::RocksDb { path: path.display().to_string(), reason: e.into_string() }
}

/// Options for the keyed-state access pattern (point reads of a batch's keys, then one write
/// batch). Measured with `make bench`: the defaults with LZ4 beat the bloom-filter, block-cache
/// and large-memtable variants tried so far on the keyed count.
fn options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o
}

/// An SST file already in checkpoint storage, and the checkpoint that uploaded it.
#[derive(Clone)]
struct Uploaded {
    /// Where it is in storage, as recorded in the handle of the checkpoint that uploaded it.
    file: StoredFile,
    /// The checkpoint whose upload put it there.
    checkpoint: u64,
    /// Set once a checkpoint with an id at least `checkpoint` completed. Only confirmed SSTs are
    /// referenced rather than uploaded again, because a checkpoint that never completes is
    /// discarded and its files may be deleted.
    confirmed: bool,
}

/// The `rocksdb` backend of one operator in one subtask.
///
/// It owns a scratch directory `<base>/rocksdb-<instance>/`, with the database in `db/`, and
/// deletes it on drop. Writes skip the WAL, because checkpoints, not local files, make state
/// durable.
pub struct RocksDbBackend {
    /// The live database, at `<dir>/db`.
    db: DB,
    /// This instance's working directory: `db/` and checkpoint scratch directories.
    dir: PathBuf,
    /// A random 16-hex-digit id for this instance. It names the instance's directories and its
    /// uploaded SSTs (`shared/<instance>-<n>-<file>`), so two subtasks, or two lives of one
    /// subtask, never write the same shared path.
    instance: String,
    /// The job's number of key groups.
    max_parallelism: u32,
    /// The key groups this subtask owns.
    range: KeyGroupRange,
    /// Options for every write: the WAL is disabled.
    write: WriteOptions,
    /// SSTs uploaded by this instance's checkpoints, by local file name: the candidates for reuse.
    /// An SST never changes after it is written and RocksDB does not reuse file names within one
    /// database, so a name stands for the same contents every time.
    uploaded: HashMap<String, Uploaded>,
    /// The aggregate cache (see the module header). In a `RefCell` because reads (`&self`)
    /// flush it before a scan; the backend is used by one thread.
    cache: RefCell<AggregateCache>,
}

/// A bounded write-back cache of i64 aggregates by composite key (see the module header).
#[derive(Default)]
struct AggregateCache {
    /// Composite key → (value, `None` if the database has none; dirty).
    entries: hashbrown::HashMap<CacheKey, (Option<i64>, bool)>,
    /// What the entries take, approximately (key bytes plus a fixed overhead each).
    bytes: usize,
    /// The bound in bytes; 0 turns the cache off.
    capacity: usize,
    /// Reused for composite keys.
    scratch: Vec<u8>,
}

/// Bytes an entry takes beyond its key: the key's slot, the value, the dirty flag and the
/// table's own control byte.
const ENTRY_OVERHEAD: usize = 48;

/// Composite keys up to this long are kept inside the table's slot: the keyed count's (an i64
/// key in a short-named state) is 22 bytes.
const INLINE_KEY: usize = 30;

/// A composite key in the aggregate cache. A short key is stored inline, so a lookup compares
/// bytes in the slot it probes instead of following a pointer to the heap (that miss was most
/// of the cache's time: `bench/profile.py`); a longer one is boxed. Equal and hashed as its
/// bytes, so the table is probed with a `&[u8]`.
#[derive(Clone)]
enum CacheKey {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(Box<[u8]>),
}

impl CacheKey {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            CacheKey::Inline(key.len() as u8, bytes)
        } else {
            CacheKey::Heap(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            CacheKey::Inline(len, bytes) => &bytes[..*len as usize],
            CacheKey::Heap(b) => b,
        }
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for CacheKey {}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl hashbrown::Equivalent<CacheKey> for [u8] {
    fn equivalent(&self, key: &CacheKey) -> bool {
        self == key.as_slice()
    }
}

impl AggregateCache {
    /// Writes the dirty entries in one batch and marks them clean.
    fn flush(&mut self, db: &DB, write: &WriteOptions, path: &Path) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        for (k, (v, dirty)) in self.entries.iter_mut() {
            if *dirty {
                match v {
                    Some(v) => batch.put(k.as_slice(), v.to_le_bytes()),
                    None => batch.delete(k.as_slice()),
                }
                *dirty = false;
            }
        }
        if !batch.is_empty() {
            db.write_opt(batch, write).map_err(db_err(path))?;
        }
        Ok(())
    }

    /// Over its bound: flushes, then keeps half of the bound's worth of entries.
    fn shrink(&mut self, db: &DB, write: &WriteOptions, path: &Path) -> Result<(), StateError> {
        if self.bytes <= self.capacity {
            return Ok(());
        }
        self.flush(db, write, path)?;
        let target = self.capacity / 2;
        let mut bytes = self.bytes;
        self.entries.retain(|k, _| {
            if bytes <= target {
                return true;
            }
            bytes -= k.as_slice().len() + ENTRY_OVERHEAD;
            false
        });
        self.bytes = bytes;
        Ok(())
    }

    /// Forgets `key` (a write that bypasses the cache replaces it).
    fn forget(&mut self, key: &[u8]) {
        if self.entries.remove(key).is_some() {
            self.bytes -= key.len() + ENTRY_OVERHEAD;
        }
    }
}

impl RocksDbBackend {
    /// Opens an empty database under `base` (a fresh directory per instance).
    ///
    /// `base` is the TaskManager's local working directory; the database goes to
    /// `<base>/rocksdb-<instance>/db`.
    pub fn open(base: &Path, max_parallelism: u32, range: KeyGroupRange) -> Result<Self, StateError> {
        let instance = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let dir = base.join(format!("rocksdb-{instance}"));
        std::fs::create_dir_all(&dir).map_err(|e| StateError::Io { path: dir.display().to_string(), source: e })?;
        let db_path = dir.join("db");
        let db = DB::open(&options(), &db_path).map_err(db_err(&db_path))?;
        Ok(Self::with_db(db, dir, instance, max_parallelism, range))
    }

    /// Wraps an opened database; shared by `open` and `restore`.
    fn with_db(db: DB, dir: PathBuf, instance: String, max_parallelism: u32, range: KeyGroupRange) -> Self {
        let mut write = WriteOptions::default();
        // Checkpoints, not the WAL, make state durable (as in Flink).
        write.disable_wal(true);
        Self { db, dir, instance, max_parallelism, range, write, uploaded: HashMap::new(), cache: RefCell::new(AggregateCache::default()) }
    }

    /// Bounds the aggregate cache at `bytes` (0: no cache); dirty entries beyond it are written.
    pub fn set_aggregate_cache(&mut self, bytes: usize) -> Result<(), StateError> {
        let path = self.db_path();
        let cache = self.cache.get_mut();
        cache.capacity = bytes;
        if bytes == 0 {
            cache.flush(&self.db, &self.write, &path)?;
            cache.entries.clear();
            cache.bytes = 0;
        }
        cache.shrink(&self.db, &self.write, &path)
    }

    /// Writes the cache's dirty entries to the database (before a snapshot, a scan or a count).
    fn flush_cache(&self) -> Result<(), StateError> {
        self.cache.borrow_mut().flush(&self.db, &self.write, &self.db_path())
    }

    /// The live database's directory, for error messages.
    fn db_path(&self) -> PathBuf {
        self.dir.join("db")
    }

    /// Writes every entry into the canonical key-group file.
    ///
    /// Used for full checkpoints and savepoints, on the task thread (the synchronous part), so the
    /// whole state is read before the task goes on. Key order is key-group order, as
    /// [`KeyedStateWriter`] requires.
    pub fn snapshot_bytes(&self) -> Result<Vec<u8>, StateError> {
        self.flush_cache()?;
        let mut w = KeyedStateWriter::new(self.max_parallelism, self.range);
        for item in self.db.iterator(IteratorMode::Start) {
            let (k, v) = item.map_err(db_err(&self.db_path()))?;
            w.add(key_group_of(&k), &k, &v);
        }
        Ok(w.finish())
    }

    /// Takes a RocksDB checkpoint for checkpoint `n` and decides which files to upload: SSTs
    /// already uploaded by a completed checkpoint are reused, the rest are listed for upload.
    ///
    /// This is the synchronous part: RocksDB flushes the memtable and hard-links the SSTs into a
    /// fresh scratch directory, which is fast. Files that are not SSTs (MANIFEST, CURRENT, OPTIONS)
    /// always go to the private list. An SST is reused only if its upload was confirmed by a
    /// completed checkpoint.
    pub fn incremental_checkpoint(&self, n: u64) -> Result<IncrementalSnapshot, StateError> {
        self.rocksdb_checkpoint(n, true)
    }

    /// Takes a RocksDB checkpoint for native savepoint `n`: as
    /// [`incremental_checkpoint`](Self::incremental_checkpoint), but every SST is listed for
    /// upload, none reused, so the savepoint holds every file it needs.
    pub fn native_snapshot(&self, n: u64) -> Result<IncrementalSnapshot, StateError> {
        self.rocksdb_checkpoint(n, false)
    }

    /// The RocksDB checkpoint behind both: `reuse` references SSTs a completed checkpoint
    /// uploaded instead of listing them for upload.
    fn rocksdb_checkpoint(&self, n: u64, reuse: bool) -> Result<IncrementalSnapshot, StateError> {
        self.flush_cache()?;
        // Beside the instance directory, not inside it: the upload may outlive this backend
        // (its task can end while the last checkpoint's files are still being uploaded), and
        // the upload deletes the directory when it is done.
        let base = self.dir.parent().unwrap_or(&self.dir);
        let dir = base.join(format!("rocksdb-chk-{}-{n}-{}", self.instance, uuid::Uuid::new_v4().simple()));
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(db_err(&dir))?;
        cp.create_checkpoint(&dir).map_err(db_err(&dir))?;
        let mut reused = Vec::new();
        let mut to_upload = Vec::new();
        let mut private = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| StateError::Io { path: dir.display().to_string(), source: e })?;
        for entry in entries {
            let entry = entry.map_err(|e| StateError::Io { path: dir.display().to_string(), source: e })?;
            let name = entry.file_name().to_string_lossy().to_string();
            let local = LocalFile { name: name.clone(), path: entry.path() };
            if name.ends_with(".sst") {
                match self.uploaded.get(&name) {
                    Some(u) if u.confirmed && reuse => reused.push((name, u.file.clone())),
                    _ => to_upload.push(local),
                }
            } else {
                private.push(local);
            }
        }
        Ok(IncrementalSnapshot {
            checkpoint: n,
            dir,
            instance: self.instance.clone(),
            range: self.range,
            max_parallelism: self.max_parallelism,
            reused,
            to_upload,
            private,
        })
    }

    /// Records the SSTs a checkpoint uploaded, so later checkpoints can reference them once it
    /// completes.
    ///
    /// New entries start unconfirmed. An SST uploaded again by a newer checkpoint (one that was
    /// snapshotted before the older upload was confirmed) takes the newer record, so later
    /// checkpoints reference the copy that stays retained. A handle that only reuses the tracked
    /// file changes nothing. Full handles record nothing. A native savepoint's handle must never
    /// come here: its files are in the user's savepoint folder.
    pub fn record_uploaded(&mut self, n: u64, handle: &KeyedStateHandle) {
        if let KeyedStateHandle::Incremental { shared, .. } = handle {
            for (name, file) in shared {
                // The newest upload of an SST wins once confirmed: older ones belong to
                // checkpoints that are subsumed and discarded in turn, their files deleted.
                match self.uploaded.get(name) {
                    Some(u) if u.checkpoint >= n || u.file.path == file.path => {}
                    _ => {
                        self.uploaded.insert(name.clone(), Uploaded { file: file.clone(), checkpoint: n, confirmed: false });
                    }
                }
            }
        }
    }

    /// Checkpoint `n` completed: the SSTs its handle lists may now be reused.
    ///
    /// Only records of `n` itself are confirmed. A record of an older checkpoint that is still
    /// unconfirmed belongs to one that failed (or whose notice was lost): a failed checkpoint's
    /// files are deleted by the JobManager's cleanup, so nothing may reference them. An SST it
    /// shares with `n` already carries `n`'s record (see [`record_uploaded`](Self::record_uploaded)).
    ///
    /// It also forgets SSTs the database no longer has (compacted away). If the live-file list
    /// cannot be read, or is empty, nothing is forgotten.
    pub fn notify_checkpoint_complete(&mut self, n: u64) {
        for u in self.uploaded.values_mut() {
            if u.checkpoint == n {
                u.confirmed = true;
            }
        }
        // SSTs the database no longer has (compacted away) need no tracking.
        let live: std::collections::HashSet<String> =
            self.db.live_files().map(|fs| fs.into_iter().map(|f| f.name.trim_start_matches('/').to_string()).collect()).unwrap_or_default();
        if !live.is_empty() {
            self.uploaded.retain(|name, _| live.contains(name));
        }
    }

    /// Opens a database restored from `sources` for `range`. A single incremental source that
    /// covers exactly `range` becomes the database itself; anything else is merged.
    ///
    /// Fast path: the downloaded directory is moved into place (no copy) and opened. Otherwise a
    /// fresh database receives, for each source, the entries in `range`. For a full file they are
    /// filtered while reading. For a RocksDB checkpoint, opened read-only, the read seeks to the
    /// first key group and stops at the end of the range, writing in batches of 10,000, and then
    /// removes the downloaded directory. The restored instance tracks no uploaded SSTs.
    pub fn restore(base: &Path, max_parallelism: u32, range: KeyGroupRange, sources: Vec<RestoreSource>) -> Result<Self, StateError> {
        if let [RestoreSource::RocksDb { dir, range: r, shared }] = sources.as_slice() {
            if *r == range {
                let instance = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
                let inst_dir = base.join(format!("rocksdb-{instance}"));
                std::fs::create_dir_all(&inst_dir).map_err(|e| StateError::Io { path: inst_dir.display().to_string(), source: e })?;
                let db_path = inst_dir.join("db");
                std::fs::rename(dir, &db_path).map_err(|e| StateError::Io { path: dir.display().to_string(), source: e })?;
                let db = DB::open(&options(), &db_path).map_err(db_err(&db_path))?;
                // The restored SSTs are not reused by the next checkpoint: they belong to the
                // checkpoint restored from (possibly another job's, or a savepoint's), whose
                // retention this job does not control. The first checkpoint uploads them anew.
                let _ = shared;
                return Ok(Self::with_db(db, inst_dir, instance, max_parallelism, range));
            }
        }
        let b = Self::open(base, max_parallelism, range)?;
        for src in sources {
            match src {
                RestoreSource::Full { bytes, path } => {
                    let mut batch = WriteBatch::default();
                    read_keyed_state(&bytes, &path, range, |_, k, v| {
                        batch.put(k, v);
                        Ok(())
                    })?;
                    b.db.write_opt(batch, &b.write).map_err(db_err(&b.db_path()))?;
                }
                RestoreSource::RocksDb { dir, .. } => {
                    let src = DB::open_for_read_only(&options(), &dir, false).map_err(db_err(&dir))?;
                    let start = (range.start as u16).to_be_bytes();
                    let mut batch = WriteBatch::default();
                    for item in src.iterator(IteratorMode::From(&start, Direction::Forward)) {
                        let (k, v) = item.map_err(db_err(&dir))?;
                        if key_group_of(&k) >= range.end {
                            break;
                        }
                        batch.put(&k, &v);
                        if batch.len() >= 10_000 {
                            b.db.write_opt(std::mem::take(&mut batch), &b.write).map_err(db_err(&b.db_path()))?;
                        }
                    }
                    b.db.write_opt(batch, &b.write).map_err(db_err(&b.db_path()))?;
                    drop(src);
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        Ok(b)
    }

    /// Local files of the database (for tests and benchmarks).
    pub fn working_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RocksDbBackend {
    /// Destroys the database and removes the instance's working directory.
    fn drop(&mut self) {
        // The working directory is scratch: checkpoints, not local files, are durable.
        let dir = self.dir.clone();
        let _ = DB::destroy(&Options::default(), dir.join("db"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// What a restore reads, already downloaded and verified.
///
/// [`crate::snapshot::StateBackend::restore`] builds these after downloading and checking every
/// file, so `RocksDbBackend::restore` never reads from checkpoint storage.
pub enum RestoreSource {
    /// A canonical key-group file.
    ///
    /// `bytes` was checked against its recorded size and CRC-32; `path` is its display location.
    Full { bytes: bytes::Bytes, path: String },
    /// A downloaded RocksDB checkpoint directory, the key groups it holds, and its SSTs.
    ///
    /// The files are under their original names. The restore consumes `dir`: it either renames it
    /// into place or deletes it after merging. `shared` is not used: restored SSTs are never
    /// reused.
    RocksDb { dir: PathBuf, range: KeyGroupRange, shared: Vec<(String, StoredFile)> },
}

/// The synchronous part of an incremental snapshot; [`crate::snapshot`] uploads it.
///
/// Plain data that does not borrow the database, so the upload can run on the async runtime
/// and outlive the backend.
pub struct IncrementalSnapshot {
    /// The checkpoint id n. It is part of the names of uploaded SSTs.
    pub checkpoint: u64,
    /// The local scratch directory of the RocksDB checkpoint. `PendingSnapshot::upload` deletes it,
    /// whether the upload succeeds or not.
    pub dir: PathBuf,
    /// The backend instance's id, for the names of shared files.
    pub instance: String,
    /// The key groups covered, copied into the handle.
    pub range: KeyGroupRange,
    /// The number of key groups, copied into the handle.
    pub max_parallelism: u32,
    /// SSTs a completed checkpoint already uploaded: (local name, stored file). They are
    /// referenced, not uploaded.
    pub reused: Vec<(String, StoredFile)>,
    /// SSTs to upload: to `shared/` (a checkpoint) or the savepoint's folder (a native savepoint).
    pub to_upload: Vec<LocalFile>,
    /// Files that are not SSTs (MANIFEST, CURRENT, OPTIONS), for the snapshot's own directory.
    pub private: Vec<LocalFile>,
}

impl KeyedStateBackend for RocksDbBackend {
    fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    /// A point read: the aggregate cache first, then the live database.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if let Some((v, _)) = self.cache.borrow().entries.get(key) {
            return Ok(v.map(|v| v.to_le_bytes().to_vec()));
        }
        self.db.get(key).map_err(db_err(&self.db_path()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.cache.get_mut().forget(key);
        self.db.put_opt(key, value, &self.write).map_err(db_err(&self.dir))
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StateError> {
        self.cache.get_mut().forget(key);
        self.db.delete_opt(key, &self.write).map_err(db_err(&self.dir))
    }

    /// Seeks to `prefix` and stops at the first key without it: a sorted range scan (after the
    /// aggregate cache's dirty entries were written).
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        self.flush_cache()?;
        let mut out = Vec::new();
        for item in self.db.iterator(IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item.map_err(db_err(&self.dir))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Counts by iterating the whole database, which costs time in proportion to its size.
    fn entries(&self) -> Result<u64, StateError> {
        self.flush_cache()?;
        let mut n = 0;
        for item in self.db.iterator(IteratorMode::Start) {
            item.map_err(db_err(&self.dir))?;
            n += 1;
        }
        Ok(n)
    }

    /// One RocksDB `multi_get` for all of a batch's keys (point reads through the cache while it
    /// holds entries).
    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        if !self.cache.borrow().entries.is_empty() {
            return keys.iter().map(|k| self.get(k)).collect();
        }
        self.db.multi_get(keys).into_iter().map(|r| r.map_err(db_err(&self.dir))).collect()
    }

    /// One atomic RocksDB `WriteBatch`.
    fn write_batch(&mut self, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        let cache = self.cache.get_mut();
        for (k, v) in ops {
            cache.forget(&k);
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            }
        }
        self.db.write_opt(batch, &self.write).map_err(db_err(&self.dir))
    }

    /// Through the aggregate cache (see the module header): a cached key is one probe, a miss
    /// one read; the cache is shrunk after the batch if it outgrew its bound. Without a cache,
    /// the generic path (one `multi_get` and one `WriteBatch` per batch).
    fn aggregate_batch(
        &mut self,
        state: &str,
        keys: Keys<'_>,
        values: Option<&arrow_array::Int64Array>,
        agg: AggKind,
        out: &mut Vec<i64>,
    ) -> Result<(), StateError> {
        if self.cache.get_mut().capacity == 0 {
            return crate::keyed::aggregate_batch_generic(self, state, keys, values, agg, out);
        }
        out.clear();
        out.reserve(keys.len());
        let path = self.db_path();
        let (max_p, range) = (self.max_parallelism, self.range);
        let cache = self.cache.get_mut();
        let mut buf = std::mem::take(&mut cache.scratch);
        for i in 0..keys.len() {
            let v = values.map_or(1, |vals| vals.value(i));
            let kg = keys.composite_key(i, state, max_p, &mut buf);
            if !range.contains(kg) {
                cache.scratch = buf;
                return Err(StateError::KeyGroup { kg, range });
            }
            let new = match cache.entries.get_mut(buf.as_slice()) {
                Some((cur, dirty)) => {
                    let new = fold(agg, *cur, v);
                    *cur = Some(new);
                    *dirty = true;
                    new
                }
                None => {
                    let stored = self.db.get(&buf).map_err(db_err(&path))?.map(|b| crate::keyed::decode_i64(&b));
                    let new = fold(agg, stored, v);
                    cache.entries.insert(CacheKey::new(&buf), (Some(new), true));
                    cache.bytes += buf.len() + ENTRY_OVERHEAD;
                    new
                }
            };
            out.push(new);
        }
        cache.scratch = buf;
        cache.shrink(&self.db, &self.write, &path)
    }
}

//! Reference counting of shared files (incremental RocksDB SSTs) across retained checkpoints.
//!
//! Each completed checkpoint registers the shared files its handles reference; when a
//! checkpoint is discarded (beyond `num-retained`, or aborted after registering), its
//! references are dropped, and a shared file that no retained checkpoint references any more
//! is deleted from storage. The registry is rebuilt from the retained checkpoints' `_metadata`
//! after a JobManager restart.

use crate::handle::KeyedStateHandle;
use crate::storage::{layout, CheckpointStorage};
use crate::StateError;
use std::collections::{BTreeMap, HashMap};

/// The JobManager's reference counts of the files in `shared/`, one registry per job.
///
/// Invariant: `refs[p]` is the number of registered checkpoints whose handles reference `p`, and
/// a path that no checkpoint references has no entry. Full handles share nothing, so only
/// incremental RocksDB checkpoints show up here.
#[derive(Debug, Default)]
pub struct SharedStateRegistry {
    /// Shared path (relative to the storage root) → number of registered checkpoints referencing
    /// it.
    refs: HashMap<String, u32>,
    /// Checkpoint id → the deduplicated shared paths it registered, so `release` knows what to
    /// drop.
    by_checkpoint: BTreeMap<u64, Vec<String>>,
}

impl SharedStateRegistry {
    /// An empty registry. After a JobManager restart, register the retained checkpoints again.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers checkpoint `n` and the shared files its handles reference.
    ///
    /// A checkpoint counts once per path, however many of its handles list the path. Register each
    /// checkpoint once, when it completes: registering `n` twice would count its paths twice, and a
    /// single `release` would not undo it.
    pub fn register<'a>(&mut self, n: u64, handles: impl IntoIterator<Item = &'a KeyedStateHandle>) {
        self.register_paths(n, handles.into_iter().flat_map(|h| h.shared_paths()).collect());
    }

    /// Registers checkpoint `n` and the shared files it references, given as paths (what
    /// [`crate::metadata::CheckpointMetadata::shared_paths`] returns: SSTs and channel-state
    /// files). The same rules as [`SharedStateRegistry::register`].
    pub fn register_paths(&mut self, n: u64, mut paths: Vec<String>) {
        paths.sort();
        paths.dedup();
        for p in &paths {
            *self.refs.entry(p.clone()).or_default() += 1;
        }
        self.by_checkpoint.insert(n, paths);
    }

    /// Drops checkpoint `n`'s references; returns the shared files nothing references now.
    ///
    /// The caller deletes the returned files. Releasing a checkpoint that was never registered
    /// returns nothing.
    pub fn release(&mut self, n: u64) -> Vec<String> {
        let mut unreferenced = Vec::new();
        for p in self.by_checkpoint.remove(&n).unwrap_or_default() {
            if let Some(c) = self.refs.get_mut(&p) {
                *c -= 1;
                if *c == 0 {
                    self.refs.remove(&p);
                    unreferenced.push(p);
                }
            }
        }
        unreferenced
    }

    /// Every shared file a registered checkpoint references (what a cleanup sweep must keep).
    pub fn referenced(&self) -> impl Iterator<Item = &String> {
        self.refs.keys()
    }

    /// Whether any registered checkpoint references the shared file `path`.
    pub fn is_referenced(&self, path: &str) -> bool {
        self.refs.contains_key(path)
    }

    /// Deletes checkpoint `n` of `job`: its directory and the shared files only it referenced.
    ///
    /// Releases `n` first, then deletes the unreferenced shared files, then everything under
    /// `<job>/chk-<n>/`. Returns the shared files it deleted. If a deletion fails, the registry has
    /// already forgotten `n`.
    pub async fn discard(&mut self, storage: &CheckpointStorage, job: &str, n: u64) -> Result<Vec<String>, StateError> {
        let unreferenced = self.release(n);
        for p in &unreferenced {
            storage.delete(p).await?;
        }
        storage.delete_prefix(&layout::checkpoint_dir(job, n)).await?;
        Ok(unreferenced)
    }
}

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

#[derive(Debug, Default)]
pub struct SharedStateRegistry {
    refs: HashMap<String, u32>,
    by_checkpoint: BTreeMap<u64, Vec<String>>,
}

impl SharedStateRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers checkpoint `n` and the shared files its handles reference.
    pub fn register<'a>(&mut self, n: u64, handles: impl IntoIterator<Item = &'a KeyedStateHandle>) {
        let mut paths: Vec<String> = handles.into_iter().flat_map(|h| h.shared_paths()).collect();
        paths.sort();
        paths.dedup();
        for p in &paths {
            *self.refs.entry(p.clone()).or_default() += 1;
        }
        self.by_checkpoint.insert(n, paths);
    }

    /// Drops checkpoint `n`'s references; returns the shared files nothing references now.
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

    pub fn is_referenced(&self, path: &str) -> bool {
        self.refs.contains_key(path)
    }

    /// Deletes checkpoint `n` of `job`: its directory and the shared files only it referenced.
    pub async fn discard(&mut self, storage: &CheckpointStorage, job: &str, n: u64) -> Result<Vec<String>, StateError> {
        let unreferenced = self.release(n);
        for p in &unreferenced {
            storage.delete(p).await?;
        }
        storage.delete_prefix(&layout::checkpoint_dir(job, n)).await?;
        Ok(unreferenced)
    }
}

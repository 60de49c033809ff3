//! Cleaning a job's checkpoint storage: which files nothing will read again, and the sweep
//! that deletes them.
//!
//! Files of a job's checkpoints become garbage in three ways, and each has its remedy:
//! - **A checkpoint is discarded** (beyond `num-retained`, subsumed, failed): its folder
//!   `chk-<n>/` is deleted as a whole (`CheckpointStorage::delete_dir`).
//! - **A shared file is no longer referenced** by any retained checkpoint: the JobManager's
//!   [`SharedStateRegistry`](crate::registry::SharedStateRegistry) says so, and it is deleted
//!   once no checkpoint still running may reference it.
//! - **Nobody knows of a file**: a checkpoint that failed before every task acknowledged it
//!   uploaded SSTs and channel state to `shared/` that no acknowledgement ever named; an upload
//!   still running when its checkpoint was aborted (or its tasks canceled) lands after the folder
//!   was deleted; a JobManager died between a decision and its deletion. Only a listing finds
//!   those. That is the [`Sweep`].
//!
//! A sweep lists `<job>/` and deletes what is below a checkpoint id every checkpoint under which
//! has ended and that nothing keeps: a `chk-<n>/` that is not retained, and a `shared/` file
//! written by a checkpoint below the bound (its id is in its name, see
//! [`layout::shared_file_checkpoint`]) that no retained checkpoint references. Everything else
//! stays: files of checkpoints at or above the bound (they may be in progress), `taskowned/`,
//! any name Weir does not give. Savepoints are folders of their own, never under a job's
//! checkpoint folder, so no sweep sees them.
//!
//! The sweep is only safe when no checkpoint that may still reference a file is running: the
//! coordinator decides when (`weir-jobmanager`'s `coordinator.rs`).

use crate::storage::{layout, CheckpointStorage};
use crate::StateError;
use std::collections::{BTreeSet, HashSet};

/// What a sweep of one job's checkpoint storage keeps and deletes (see the module header).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// The job's folder in the storage.
    pub job: String,
    /// Every checkpoint with a smaller id has ended, and none will reference garbage again.
    /// Files of checkpoints from here on are never touched.
    pub below: u64,
    /// The retained checkpoints: their `chk-<n>/` folders stay.
    pub retained: BTreeSet<u64>,
    /// Shared files that stay whatever their id: referenced by a retained checkpoint, or not yet
    /// safe to delete.
    pub keep: HashSet<String>,
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct SweepOutcome {
    /// The files deleted (relative paths).
    pub deleted: Vec<String>,
    /// The files that could not be deleted, with why (the error names the path too).
    pub failed: Vec<(String, StateError)>,
}

impl Sweep {
    /// Whether the file at `path` (relative to the storage root) is garbage.
    pub fn is_garbage(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix(&self.job).and_then(|r| r.strip_prefix('/')) else { return false };
        if let Some(chk) = rest.strip_prefix("chk-") {
            let n = chk.split('/').next().and_then(|n| n.parse::<u64>().ok());
            return n.is_some_and(|n| n < self.below && !self.retained.contains(&n));
        }
        if let Some(name) = rest.strip_prefix("shared/") {
            return !name.contains('/')
                && layout::shared_file_checkpoint(name).is_some_and(|n| n < self.below)
                && !self.keep.contains(path);
        }
        false
    }

    /// Lists the job's folder and deletes the garbage in it; on `file://` storage the folders
    /// that become empty go too (never the job's folder). Errs only if the listing fails;
    /// deletions that fail are in the outcome, for the caller to log.
    pub async fn run(&self, storage: &CheckpointStorage) -> Result<SweepOutcome, StateError> {
        let garbage: Vec<String> = storage.list(&self.job).await?.into_iter().filter(|p| self.is_garbage(p)).collect();
        let failed = storage.delete_files(&garbage).await;
        let not_deleted: HashSet<&String> = failed.iter().map(|(p, _)| p).collect();
        let deleted = garbage.iter().filter(|p| !not_deleted.contains(p)).cloned().collect();
        Ok(SweepOutcome { deleted, failed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::config::Config;

    const SST_7: &str = "j/shared/0123456789abcdef-7-000012.sst";
    const SST_8: &str = "j/shared/0123456789abcdef-8-000013.sst";
    const SST_9: &str = "j/shared/fedcba9876543210-9-000014.sst";
    const CHANNEL_8: &str = "j/shared/channel-2-0-a1-8";

    fn sweep() -> Sweep {
        Sweep { job: "j".into(), below: 9, retained: [7].into(), keep: [SST_7.to_string()].into() }
    }

    #[test]
    fn garbage_is_what_no_retained_checkpoint_uses_below_the_bound() {
        let s = sweep();
        for path in ["j/chk-8/op-0/keyed-state", "j/chk-3/_metadata", SST_8, CHANNEL_8] {
            assert!(s.is_garbage(path), "{path}");
        }
        for path in [
            "j/chk-7/_metadata",
            "j/chk-7/op-0/MANIFEST-000005",
            "j/chk-9/op-0/keyed-state",
            "j/chk-12/_metadata",
            SST_7,
            SST_9,
            "j/shared/channel-2-0-a1-9",
            "j/shared/notes.txt",
            "j/shared/sub/0123456789abcdef-1-000001.sst",
            "j/taskowned/x",
            "j/chk-x/y",
            "jj/chk-1/_metadata",
            "other/chk-1/_metadata",
        ] {
            assert!(!s.is_garbage(path), "{path}");
        }
    }

    async fn put_all(storage: &CheckpointStorage, paths: &[&str]) {
        for p in paths {
            storage.put_bytes(p, b"x".to_vec()).await.unwrap();
        }
    }

    const ALL: [&str; 8] = [
        "j/chk-7/_metadata",
        "j/chk-7/op-0/MANIFEST-000005",
        "j/chk-8/op-0/keyed-state",
        "j/chk-9/op-1/CURRENT",
        SST_7,
        SST_8,
        SST_9,
        CHANNEL_8,
    ];

    #[tokio::test]
    async fn a_sweep_of_memory_storage_keeps_exactly_what_is_retained_or_newer() {
        let storage = CheckpointStorage::open("memory://", &Config::new()).unwrap();
        put_all(&storage, &ALL).await;
        put_all(&storage, &["other/chk-1/_metadata"]).await;
        let outcome = sweep().run(&storage).await.unwrap();
        assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
        assert_eq!(outcome.deleted, vec!["j/chk-8/op-0/keyed-state".to_string(), SST_8.into(), CHANNEL_8.into()].tap_sort());
        let left = storage.list("").await.unwrap();
        assert_eq!(
            left,
            vec!["j/chk-7/_metadata", "j/chk-7/op-0/MANIFEST-000005", "j/chk-9/op-1/CURRENT", SST_7, SST_9, "other/chk-1/_metadata"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
                .tap_sort()
        );
    }

    /// Every directory left in `root`, relative, sorted.
    fn dirs(root: &std::path::Path) -> Vec<String> {
        fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    out.push(e.path().strip_prefix(root).unwrap().display().to_string());
                    walk(root, &e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_sweep_of_local_storage_leaves_no_empty_directory_and_keeps_the_job_folder() {
        let dir = tempfile::tempdir().unwrap();
        let storage = CheckpointStorage::open(&format!("file://{}", dir.path().display()), &Config::new()).unwrap();
        put_all(&storage, &ALL).await;
        sweep().run(&storage).await.unwrap();
        assert_eq!(dirs(dir.path()), ["j", "j/chk-7", "j/chk-7/op-0", "j/chk-9", "j/chk-9/op-1", "j/shared"]);
        // Nothing left at all: the job's folder stays, empty.
        let everything = Sweep { below: 100, retained: BTreeSet::new(), keep: HashSet::new(), ..sweep() };
        everything.run(&storage).await.unwrap();
        assert_eq!(dirs(dir.path()), ["j"]);
        assert!(storage.list("j").await.unwrap().is_empty());
    }

    trait TapSort {
        fn tap_sort(self) -> Self;
    }
    impl TapSort for Vec<String> {
        fn tap_sort(mut self) -> Self {
            self.sort();
            self
        }
    }
}

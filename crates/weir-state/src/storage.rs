//! Checkpoint storage: where snapshots go, through `object_store`.
//!
//! URLs: `file:///absolute/path`, `s3://bucket/optional/prefix` (endpoint, credentials, region
//! and path-style addressing from the `s3.*` keys, so MinIO and any S3-compatible store work),
//! and `memory://` (in-process, for tests). Layout per job, as in Flink:
//!
//! ```text
//! <dir>/<job-id>/chk-<n>/_metadata     written last, by the JobManager: its presence completes n
//! <dir>/<job-id>/chk-<n>/...           files owned by checkpoint n alone
//! <dir>/<job-id>/shared/...            incremental RocksDB SST files, shared by checkpoints
//! <dir>/<job-id>/taskowned/...         files owned by the TaskManagers
//! ```
//!
//! A savepoint is a folder of its own, opened as a storage of its own (its URL is the folder),
//! so every path it records is relative to the folder and the folder can be moved:
//!
//! ```text
//! <folder>/_metadata                    written last, by the JobManager
//! <folder>/<uid>-<subtask>/keyed-state  canonical keyed state
//! <folder>/<uid>-<subtask>/operator-state
//! <folder>/<uid>-<subtask>/<file>       native format: every file of a RocksDB checkpoint
//! ```
//!
//! Large files are uploaded as multipart uploads streamed from disk, never held whole in memory.

use crate::StateError;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_core::config::{keys, Config};
use weir_core::settings::S3Config;

/// Part size of multipart uploads (S3's minimum is 5 MiB).
///
/// Files up to this size go up in one request and are held in memory. Larger ones are streamed
/// in parts of this size.
pub const PART_SIZE: usize = 8 << 20;

/// A checkpoint storage location.
///
/// Cheap to clone (the store is behind an `Arc`). Every path its methods take is relative to the
/// storage root, e.g. `<job>/chk-7/_metadata`. Handles record such relative paths, and
/// [`display`](Self::display) turns them into full locations for errors.
#[derive(Clone, Debug)]
pub struct CheckpointStorage {
    /// The object store for the URL's scheme.
    store: Arc<dyn ObjectStore>,
    /// The URL as given. Error messages and restore info use it.
    url: String,
    /// Prefix inside the store (the S3 key prefix; empty for file and memory).
    base: Path,
    /// The root directory of `file://` storage: deleting there also removes the directories
    /// that become empty (object stores have no directories, a file system keeps them).
    local_root: Option<std::path::PathBuf>,
}

/// Where a file of a snapshot lives, relative to the storage root, with what protects it.
///
/// This record goes into handles and `_metadata`. It is the only protection RocksDB's own files
/// have, since they carry no Weir frame.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredFile {
    /// The path relative to the storage root.
    pub path: String,
    /// Size in bytes. It is checked after download, so truncation is reported as such.
    pub size: u64,
    /// CRC-32 of the whole stored file (frame included, for framed files), checked after download.
    pub crc32: u32,
}

impl CheckpointStorage {
    /// Opens the storage at `url`, with S3 settings from `config`.
    ///
    /// `file://` needs an absolute path, whose directory is created if it is missing. Every call
    /// with `memory://` returns a new, empty in-process store: two opens share nothing. `s3://`
    /// takes the bucket and an optional key prefix; the endpoint, credentials, region and
    /// path-style addressing come from `s3.*`. S3 requests are retried at most 5 times within 60
    /// seconds, so an unreachable store fails the checkpoint instead of hanging it. URL errors
    /// name `execution.checkpointing.dir`.
    pub fn open(url: &str, config: &Config) -> Result<Self, StateError> {
        let bad = |reason: String| StateError::Config { key: keys::CHECKPOINT_DIR.into(), reason };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(format!("'{url}': file URLs need an absolute path, like file:///var/weir/checkpoints")));
            }
            std::fs::create_dir_all(path).map_err(|e| bad(format!("cannot create the directory '{path}': {e}")))?;
            let store = LocalFileSystem::new_with_prefix(path).map_err(|e| StateError::Storage { path: url.to_string(), source: e })?;
            let local_root = Some(std::path::PathBuf::from(path));
            return Ok(Self { store: Arc::new(store), url: url.to_string(), base: Path::default(), local_root });
        }
        if url == "memory://" || url.starts_with("memory://") {
            return Ok(Self { store: Arc::new(InMemory::new()), url: url.to_string(), base: Path::default(), local_root: None });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad(format!("'{url}' names no bucket")));
            }
            // A few quick retries: a checkpoint that cannot reach S3 should fail (and be retried
            // by the next checkpoint) rather than hang until the checkpoint timeout.
            let retry =
                object_store::RetryConfig { max_retries: 5, retry_timeout: std::time::Duration::from_secs(60), ..Default::default() };
            let s3 = S3Config::from_config(config);
            let mut b = AmazonS3Builder::new()
                .with_retry(retry)
                .with_bucket_name(bucket)
                .with_region(&s3.region)
                .with_virtual_hosted_style_request(!s3.path_style);
            if let Some(endpoint) = &s3.endpoint {
                b = b.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
            }
            if let Some(k) = &s3.access_key {
                b = b.with_access_key_id(k);
            }
            if let Some(s) = &s3.secret_key {
                b = b.with_secret_access_key(s);
            }
            let store = b.build().map_err(|e| bad(format!("'{url}': {e}")))?;
            return Ok(Self { store: Arc::new(store), url: url.to_string(), base: Path::from(prefix), local_root: None });
        }
        Err(bad(format!("'{url}': unsupported scheme (use file:///path, s3://bucket/path or memory://)")))
    }

    /// The URL this storage was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object-store path of a relative path: prefixed by the S3 key prefix, if any.
    fn full(&self, rel: &str) -> Path {
        if self.base.as_ref().is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.base.as_ref()))
        }
    }

    /// A human-readable location for errors: the URL joined with the relative path.
    pub fn display(&self, rel: &str) -> String {
        format!("{}/{}", self.url.trim_end_matches('/'), rel)
    }

    /// Maps an object-store error at `rel`. `NotFound` becomes [`StateError::Missing`] and anything
    /// else [`StateError::Storage`], both naming the full location.
    fn err(&self, rel: &str, source: object_store::Error) -> StateError {
        match source {
            object_store::Error::NotFound { .. } => StateError::Missing { path: self.display(rel) },
            source => StateError::Storage { path: self.display(rel), source },
        }
    }

    /// Writes `bytes` at `rel`, replacing any object there, and returns its record (size and CRC-32
    /// computed from `bytes`). Above [`PART_SIZE`] it is a multipart upload.
    pub async fn put_bytes(&self, rel: &str, bytes: Vec<u8>) -> Result<StoredFile, StateError> {
        let size = bytes.len() as u64;
        let crc32 = crc32fast::hash(&bytes);
        if bytes.len() > PART_SIZE {
            let upload = self.store.put_multipart(&self.full(rel)).await.map_err(|e| self.err(rel, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            w.write(&bytes);
            w.finish().await.map_err(|e| self.err(rel, e))?;
        } else {
            self.store.put(&self.full(rel), PutPayload::from(bytes)).await.map_err(|e| self.err(rel, e))?;
        }
        Ok(StoredFile { path: rel.to_string(), size, crc32 })
    }

    /// Uploads a local file, streaming it in parts, and returns its size and CRC-32.
    ///
    /// Files up to [`PART_SIZE`] are read whole and sent with [`put_bytes`](Self::put_bytes).
    /// Larger ones are read 1 MiB at a time and hashed as they go, with at most a few parts in
    /// flight, so memory stays bounded whatever the file's size.
    pub async fn put_file(&self, rel: &str, local: &std::path::Path) -> Result<StoredFile, StateError> {
        let io = |e| StateError::Io { path: local.display().to_string(), source: e };
        let mut f = tokio::fs::File::open(local).await.map_err(io)?;
        let len = f.metadata().await.map_err(io)?.len();
        if len as usize <= PART_SIZE {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).await.map_err(io)?;
            return self.put_bytes(rel, buf).await;
        }
        let upload = self.store.put_multipart(&self.full(rel)).await.map_err(|e| self.err(rel, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            w.wait_for_capacity(4).await.map_err(|e| self.err(rel, e))?;
            w.write(&buf[..n]);
        }
        w.finish().await.map_err(|e| self.err(rel, e))?;
        Ok(StoredFile { path: rel.to_string(), size, crc32: hasher.finalize() })
    }

    /// Reads a whole object without checking it. This suits framed files, whose frame is checked
    /// next; anything else should use [`get_bytes_checked`](Self::get_bytes_checked).
    pub async fn get_bytes(&self, rel: &str) -> Result<Bytes, StateError> {
        let r = self.store.get(&self.full(rel)).await.map_err(|e| self.err(rel, e))?;
        r.bytes().await.map_err(|e| self.err(rel, e))
    }

    /// Downloads `file` to `local`, checking its size and CRC-32 against what was recorded.
    ///
    /// Streams to disk chunk by chunk. The check comes after the last byte, so on a mismatch
    /// `local` holds the bad contents and the caller must not use it.
    pub async fn get_file_checked(&self, file: &StoredFile, local: &std::path::Path) -> Result<(), StateError> {
        let rel = &file.path;
        let r = self.store.get(&self.full(rel)).await.map_err(|e| self.err(rel, e))?;
        let mut stream = r.into_stream();
        let io = |e| StateError::Io { path: local.display().to_string(), source: e };
        let mut out = tokio::fs::File::create(local).await.map_err(io)?;
        let mut hasher = crc32fast::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(|e| self.err(rel, e))? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        self.check(file, size, hasher.finalize())
    }

    /// Reads a whole small file and checks it against its record.
    pub async fn get_bytes_checked(&self, file: &StoredFile) -> Result<Bytes, StateError> {
        let bytes = self.get_bytes(&file.path).await?;
        self.check(file, bytes.len() as u64, crc32fast::hash(&bytes))?;
        Ok(bytes)
    }

    /// Compares what was read with the record: size first (reported as truncation), then CRC-32.
    fn check(&self, file: &StoredFile, size: u64, crc: u32) -> Result<(), StateError> {
        if size != file.size {
            return Err(StateError::Corrupt {
                path: self.display(&file.path),
                reason: format!("truncated: {size} bytes, the checkpoint recorded {}", file.size),
            });
        }
        if crc != file.crc32 {
            return Err(StateError::Corrupt { path: self.display(&file.path), reason: "checksum mismatch: the file is corrupted".into() });
        }
        Ok(())
    }

    /// Relative paths of every object under `prefix`, sorted.
    ///
    /// Recursive: everything below `prefix`, at any depth. Paths come back relative to the storage
    /// root, as the other methods take them.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let full = self.full(prefix);
        let metas: Vec<_> = self.store.list(Some(&full)).try_collect().await.map_err(|e| self.err(prefix, e))?;
        let base = self.base.as_ref();
        let mut out: Vec<String> = metas
            .into_iter()
            .map(|m| {
                let p = m.location.as_ref().to_string();
                if base.is_empty() {
                    p
                } else {
                    p.strip_prefix(&format!("{base}/")).unwrap_or(&p).to_string()
                }
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes one object. An object that is already gone is not an error, so discarding a
    /// checkpoint can be retried. On `file://` storage the directories that become empty go
    /// too, up to the path's first component (the job's directory), which stays.
    pub async fn delete(&self, rel: &str) -> Result<(), StateError> {
        self.delete_object(rel).await?;
        self.remove_empty_parents(rel, first_component(rel)).await;
        Ok(())
    }

    /// Deletes one object; already gone is fine.
    async fn delete_object(&self, rel: &str) -> Result<(), StateError> {
        match self.store.delete(&self.full(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Deletes every path of `paths`, a few requests at a time, going on past failures.
    ///
    /// On `file://` storage the directories that become empty go too, up to the first
    /// component of each path (the job's directory), which stays. Returns what could not be
    /// deleted, by path, each error naming its path too: the caller logs them (a leftover file
    /// never fails a job).
    pub async fn delete_files(&self, paths: &[String]) -> Vec<(String, StateError)> {
        self.delete_all(paths, None).await
    }

    /// Deletes everything under `prefix`, as [`delete_files`](Self::delete_files) does; on
    /// `file://` storage the directories under `prefix` that become empty go too, `prefix`'s own
    /// included, never anything above it. Returns the failures, or the listing's error.
    pub async fn delete_dir(&self, prefix: &str) -> Result<Vec<(String, StateError)>, StateError> {
        let paths = self.list(prefix).await?;
        let stop = prefix.trim_end_matches('/').rsplit_once('/').map(|(parent, _)| parent.to_string()).unwrap_or_default();
        let mut failed = self.delete_all(&paths, Some(&stop)).await;
        // A folder with no file left (or none ever) but with directories in it.
        if let Some(root) = &self.local_root {
            let dir = root.join(prefix);
            if let Err(e) = remove_empty_tree(&dir).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    failed.push((prefix.to_string(), StateError::Io { path: dir.display().to_string(), source: e }));
                }
            }
        }
        Ok(failed)
    }

    /// Deletes everything under `prefix`, stopping at the first failure.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), StateError> {
        match self.delete_dir(prefix).await?.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Deletes `paths` with at most [`DELETE_CONCURRENCY`] requests in flight; then, on
    /// `file://` storage, removes each one's parent directories while they are empty, below
    /// `stop` (a directory relative to the root, never removed itself; `None`: each path's first
    /// component).
    async fn delete_all(&self, paths: &[String], stop: Option<&str>) -> Vec<(String, StateError)> {
        let deletes = paths.iter().cloned().map(|p| {
            let this = self.clone();
            async move {
                let result = this.delete_object(&p).await;
                (p, result)
            }
        });
        let results: Vec<(String, Result<(), StateError>)> =
            futures::stream::iter(deletes).buffer_unordered(DELETE_CONCURRENCY).collect().await;
        let mut failed = Vec::new();
        for (p, r) in results {
            match r {
                Ok(()) => {
                    let stop = stop.unwrap_or_else(|| first_component(&p)).to_string();
                    self.remove_empty_parents(&p, &stop).await
                }
                Err(e) => failed.push((p, e)),
            }
        }
        failed
    }

    /// On `file://` storage: removes the parent directories of `rel` while they are empty,
    /// from the innermost up to, not including, `stop`. A directory that is not empty (or
    /// already gone) ends the walk; nothing here is an error.
    async fn remove_empty_parents(&self, rel: &str, stop: &str) {
        let Some(root) = &self.local_root else { return };
        let stop = root.join(stop);
        let mut dir = root.join(rel);
        while let Some(parent) = dir.parent() {
            if parent == stop || !parent.starts_with(&stop) || parent == root.as_path() {
                break;
            }
            if tokio::fs::remove_dir(parent).await.is_err() {
                break;
            }
            dir = parent.to_path_buf();
        }
    }
}

/// Deletes issued at once by [`CheckpointStorage::delete_files`]: enough to hide S3's latency,
/// few enough not to be throttled.
const DELETE_CONCURRENCY: usize = 8;

/// The first component of a relative path: the job's directory in the per-job layout.
fn first_component(rel: &str) -> &str {
    rel.split('/').next().unwrap_or("")
}

/// Removes `dir` and every directory under it, if no file is left anywhere in it. Files are
/// never removed: a directory with a file in it (say, an upload still landing) stays, with
/// the directories leading to it.
async fn remove_empty_tree(dir: &std::path::Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || remove_empty_tree_blocking(&dir)).await.map_err(std::io::Error::other)?
}

fn remove_empty_tree_blocking(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let _ = remove_empty_tree_blocking(&entry.path());
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(()),
        other => other,
    }
}

/// Relative path helpers for the per-job layout.
///
/// All paths are relative to the storage root and start with the job id. Nothing in this crate
/// deletes `shared/` as a directory: its files go one by one, when the shared-state registry
/// finds nothing references them any more.
pub mod layout {
    /// `<job>/chk-<n>`: the files that belong to checkpoint n alone, per operator subtask in
    /// `<uid>-<subtask>/`. Deleted as a whole when n is discarded.
    pub fn checkpoint_dir(job: &str, n: u64) -> String {
        format!("{job}/chk-{n}")
    }
    /// `<job>/chk-<n>/_metadata`, written last. Checkpoint n is complete once this file exists, so
    /// a `chk-<n>/` without it belongs to a checkpoint that never completed.
    pub fn metadata(job: &str, n: u64) -> String {
        format!("{job}/chk-{n}/_metadata")
    }
    /// `<job>/shared`: incremental RocksDB SSTs, named `<instance>-<n>-<file>` so that no two
    /// uploads collide, and shared by every checkpoint that references them.
    pub fn shared_dir(job: &str) -> String {
        format!("{job}/shared")
    }
    /// `<job>/shared/channel-<vertex>-<subtask>-a<attempt>-<n>`: the channel-state buffers a task
    /// wrote when checkpoint n's channel state completed, referenced by n and by concurrent
    /// checkpoints that share buffers with it.
    pub fn channel_state_file(job: &str, vertex: u32, subtask: u32, attempt: u32, n: u64) -> String {
        format!("{job}/shared/channel-{vertex}-{subtask}-a{attempt}-{n}")
    }
    /// The checkpoint that wrote the shared file at `path` (relative to the storage root, or
    /// its file name alone), read from the two names Weir gives files in `shared/`: an SST,
    /// `<instance>-<n>-<file>` (instance: 16 hex digits), and a channel-state file,
    /// `channel-<vertex>-<subtask>-a<attempt>-<n>`. `None` for any other name: cleanup leaves
    /// such a file alone.
    pub fn shared_file_checkpoint(path: &str) -> Option<u64> {
        let name = path.rsplit('/').next()?;
        if let Some(rest) = name.strip_prefix("channel-") {
            let mut parts = rest.split('-');
            let (vertex, subtask, attempt, n) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if parts.next().is_some() || !numeric(vertex) || !numeric(subtask) || !attempt.strip_prefix('a').is_some_and(numeric) {
                return None;
            }
            return n.parse().ok();
        }
        let (instance, rest) = name.split_once('-')?;
        let (n, file) = rest.split_once('-')?;
        if instance.len() != 16 || !instance.bytes().all(|b| b.is_ascii_hexdigit()) || file.is_empty() {
            return None;
        }
        n.parse().ok()
    }
    /// `<job>/taskowned`: files owned by the TaskManagers, as in Flink's layout. Nothing in Weir
    /// writes there at present.
    pub fn taskowned_dir(job: &str) -> String {
        format!("{job}/taskowned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_round_trip_and_damage_is_detected_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let s = CheckpointStorage::open(&url, &Config::new()).unwrap();
        let data: Vec<u8> = (0..(PART_SIZE + 12345)).map(|i| (i % 251) as u8).collect();
        let local = dir.path().join("local.bin");
        std::fs::write(&local, &data).unwrap();
        let rec = s.put_file("job/chk-1/big", &local).await.unwrap();
        assert_eq!(rec.size, data.len() as u64);
        let back = dir.path().join("back.bin");
        s.get_file_checked(&rec, &back).await.unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), data);
        assert_eq!(s.list("job").await.unwrap(), vec!["job/chk-1/big".to_string()]);

        // Flip a byte in storage: detected, naming the file.
        let stored = dir.path().join("job/chk-1/big");
        let mut bad = data.clone();
        bad[17] ^= 1;
        std::fs::write(&stored, &bad).unwrap();
        let err = s.get_file_checked(&rec, &back).await.unwrap_err().to_string();
        assert!(err.contains("job/chk-1/big") && err.contains("checksum"), "{err}");
        std::fs::write(&stored, &data[..100]).unwrap();
        let err = s.get_file_checked(&rec, &back).await.unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        std::fs::remove_file(&stored).unwrap();
        let err = s.get_file_checked(&rec, &back).await.unwrap_err().to_string();
        assert!(err.contains("missing") && err.contains("job/chk-1/big"), "{err}");
    }

    #[test]
    fn bad_urls_name_the_key() {
        for url in ["ftp://x", "file://relative/path", "s3://"] {
            let err = CheckpointStorage::open(url, &Config::new()).unwrap_err().to_string();
            assert!(err.contains("execution.checkpointing.dir"), "{err}");
        }
    }
}

//! Savepoints and restores as the JobManager's RPCs see them: where a new savepoint's folder
//! goes, what `weir run -s` may restore (and the check of every file before a job is
//! accepted), and the disposal of a savepoint folder.
//!
//! A savepoint is a folder of its own, `<dir>/savepoint-<job id prefix>-<random>/`, with its
//! `_metadata` at the root and every state file below it, each recorded relative to the folder:
//! the folder can be moved or copied (also between `file://` and `s3://`) and restored where it
//! lands. A retained checkpoint is `<root>/<job>/chk-<n>/`, with paths relative to `<root>` (its
//! incremental files are in `<root>/<job>/shared/`).
//!
//! Restores are checked before a job is accepted, so that a bad restore starts nothing: every
//! operator state must have an operator with its uid in the new job (or be dropped with
//! `--allow-non-restored-state`), the max parallelism must match, a source whose position
//! cannot be redistributed (datagen) and in-flight data of an unaligned checkpoint cannot be
//! rescaled, RocksDB's native files cannot go into the hashmap backend, and every file is read
//! and checked against its recorded size and CRC-32.

use std::collections::HashSet;
use tonic::Status;
use weir_core::config::{keys, Config};
use weir_core::graph::JobGraph;
use weir_state::metadata::{split_checkpoint_path, CheckpointMetadata, RestoreInfo};
use weir_state::{BackendKind, CheckpointStorage, KeyedStateHandle};

/// The longest savepoint folder URL: a savepoint's barrier carries it with a `u16` length
/// (see `weir_runtime::buffer`).
const MAX_LOCATION_BYTES: usize = u16::MAX as usize;

/// A user-given location as a storage URL: one with a scheme is kept, an absolute local path
/// becomes `file://`. A relative path is refused: the JobManager's working directory means
/// nothing to the user (the CLI makes local paths absolute before it sends them).
pub(crate) fn storage_url(path: &str, what: &str) -> Result<String, Status> {
    let path = path.trim_end_matches('/');
    if path.contains("://") {
        Ok(path.to_string())
    } else if path.starts_with('/') {
        Ok(format!("file://{path}"))
    } else {
        Err(Status::invalid_argument(format!("{what} '{path}' is not absolute: give /an/absolute/path, file:///path or s3://bucket/path")))
    }
}

/// The folder of a new savepoint of `job_id`: under `directory`, or else the job's
/// `execution.checkpointing.savepoint-dir`; `savepoint-<first 6 characters of the job id>-<12
/// random hex digits>`, as Flink names them. Checks that the directory's storage opens and
/// that the folder's URL fits in a barrier ([`MAX_LOCATION_BYTES`]), so that a bad directory is
/// refused before the job is touched; the folder itself is created only by the first file
/// written into it, so a refused savepoint leaves nothing behind.
pub(crate) fn new_location(job_id: &str, directory: &str, config: &Config) -> Result<String, Status> {
    let dir = match (directory.is_empty(), config.text(keys::SAVEPOINT_DIR)) {
        (false, _) => directory.to_string(),
        (true, Some(d)) => d.to_string(),
        (true, None) => {
            return Err(Status::invalid_argument(format!(
                "no savepoint directory: give one (weir savepoint {job_id} DIR) or set {}",
                keys::SAVEPOINT_DIR
            )))
        }
    };
    let dir = storage_url(&dir, "savepoint directory")?;
    let random = uuid::Uuid::new_v4().simple().to_string();
    let location = format!("{dir}/savepoint-{}-{}", &job_id[..job_id.len().min(6)], &random[..12]);
    if location.len() > MAX_LOCATION_BYTES {
        return Err(Status::invalid_argument(format!(
            "savepoint directory is too long: the savepoint folder's URL would be {} bytes, more than the limit of \
             {MAX_LOCATION_BYTES} bytes",
            location.len()
        )));
    }
    CheckpointStorage::open(&dir, config).map_err(|e| Status::invalid_argument(format!("savepoint directory {dir}: {e}")))?;
    Ok(location)
}

/// Where a restore path points: the storage root its metadata's paths resolve against, and the
/// relative path of `_metadata` in it. `<root>/<job>/chk-<n>` (or its `_metadata`) is a
/// retained checkpoint; any other folder (or its `_metadata`) is taken as a savepoint.
fn locate(path: &str) -> Result<(String, String), Status> {
    let url = storage_url(path, "restore path")?;
    let url = url.strip_suffix("/_metadata").unwrap_or(&url).to_string();
    if let Some((root, rel)) = split_checkpoint_path(&url) {
        return Ok((root, rel));
    }
    Ok((url, "_metadata".to_string()))
}

/// Reads the `_metadata` a restore path points to (see [`locate`]). Every failure is
/// `INVALID_ARGUMENT` naming the path; a local folder that does not exist is named as such
/// (and not created).
pub(crate) async fn read_metadata(path: &str, config: &Config) -> Result<(CheckpointStorage, RestoreInfo), Status> {
    let (root, rel) = locate(path)?;
    if let Some(local) = root.strip_prefix("file://") {
        if !std::path::Path::new(local).is_dir() {
            return Err(Status::invalid_argument(format!("cannot restore from {path}: {local} is not a directory")));
        }
        // object_store reports a directory where a file should be as a missing file.
        let file = std::path::Path::new(local).join(&rel);
        if file.is_dir() {
            return Err(Status::invalid_argument(format!(
                "cannot restore from {path}: {} is a directory, not a checkpoint's _metadata file",
                file.display()
            )));
        }
    }
    let storage =
        CheckpointStorage::open(&root, config).map_err(|e| Status::invalid_argument(format!("cannot restore from {path}: {e}")))?;
    let metadata =
        CheckpointMetadata::read(&storage, &rel).await.map_err(|e| Status::invalid_argument(format!("cannot restore from {path}: {e}")))?;
    Ok((storage, RestoreInfo { storage_url: root, metadata }))
}

/// Checks that `info` can be restored into `graph`, and returns the warnings to show.
///
/// State of an operator the job no longer has (by uid) is refused naming the uid, or dropped
/// from `info` with `allow_non_restored`. A different max parallelism is refused (key groups
/// cannot be remapped), and so are the position of a source that cannot rescale (see
/// `OperatorSpec::source_rescalable`) and in-flight data (an unaligned checkpoint) of an
/// operator whose parallelism changed. RocksDB's native files (a native savepoint or an
/// incremental checkpoint) are refused when the new job's `backend` is the hashmap one, which
/// cannot read them: here, naming the operator, rather than when its tasks deploy.
pub(crate) fn check_restore(
    path: &str,
    graph: &JobGraph,
    backend: BackendKind,
    info: &mut RestoreInfo,
    allow_non_restored: bool,
) -> Result<Vec<String>, Status> {
    let mut warnings = Vec::new();
    let refuse = |why: String| Status::invalid_argument(format!("cannot restore from {path}: {why}"));
    let known: Vec<&str> = graph.vertices.iter().flat_map(|v| v.operators.iter().map(|o| o.uid.as_str())).collect();
    let mut kept = Vec::new();
    for op in std::mem::take(&mut info.metadata.operators) {
        let Some(vertex) = graph.vertices.iter().find(|v| v.operators.iter().any(|o| o.uid == op.uid)) else {
            if allow_non_restored {
                warnings.push(format!("the state of operator '{}' is not restored: the job has no operator with that uid", op.uid));
                continue;
            }
            return Err(refuse(format!(
                "it holds state of operator '{}', which this job does not have (its operators' uids: {}); pass \
                 --allow-non-restored-state to start without that state",
                op.uid,
                known.join(", ")
            )));
        };
        if op.max_parallelism != graph.max_parallelism {
            return Err(refuse(format!(
                "operator '{}' was checkpointed with pipeline.max-parallelism {}, the job has {}: key groups cannot be remapped",
                op.uid, op.max_parallelism, graph.max_parallelism
            )));
        }
        let fixed_source = vertex.operators.iter().any(|o| o.uid == op.uid && o.spec.is_source() && !o.spec.source_rescalable());
        if fixed_source && op.parallelism != vertex.parallelism && op.subtasks.iter().any(|s| s.operator.is_some()) {
            return Err(refuse(format!(
                "source '{}' was checkpointed at parallelism {} and cannot resume at {}: its read position is kept per \
                 subtask; keep the source's own `parallelism: {}` and rescale the steps after it",
                op.uid, op.parallelism, vertex.parallelism, op.parallelism
            )));
        }
        let native = op.subtasks.iter().flat_map(|s| &s.keyed).any(|h| matches!(h, KeyedStateHandle::Incremental { .. }));
        if native && backend == BackendKind::HashMap {
            return Err(refuse(format!(
                "the keyed state of operator '{}' is RocksDB's native files (a native savepoint or an incremental \
                 checkpoint), which the job's state backend, hashmap ({}), cannot restore: take a canonical savepoint \
                 (weir savepoint JOB --type canonical) and restore from it, or run the job with {}=rocksdb",
                op.uid,
                keys::STATE_BACKEND,
                keys::STATE_BACKEND
            )));
        }
        let in_flight = op.subtasks.iter().any(|s| s.input_channels.is_some() || s.output_channels.is_some());
        if in_flight && op.parallelism != vertex.parallelism {
            return Err(refuse(format!(
                "operator '{}' holds in-flight data of an unaligned checkpoint taken at parallelism {}, which cannot be restored \
                 at parallelism {} yet: take a savepoint (weir savepoint JOB_ID), which is always aligned, and rescale from it",
                op.uid, op.parallelism, vertex.parallelism
            )));
        }
        kept.push(op);
    }
    info.metadata.operators = kept;
    Ok(warnings)
}

/// Reads every file `info` references and checks it against its recorded size and CRC-32, so
/// that a damaged or missing file refuses the restore (naming the file) before anything starts.
/// Costs one read of the whole state on the JobManager, once per `weir run -s`.
pub(crate) async fn verify_files(path: &str, storage: &CheckpointStorage, info: &RestoreInfo) -> Result<(), Status> {
    let mut seen = HashSet::new();
    for file in info.metadata.files() {
        if !seen.insert(file.path.clone()) {
            continue;
        }
        storage.get_bytes_checked(file).await.map_err(|e| Status::invalid_argument(format!("cannot restore from {path}: {e}")))?;
    }
    Ok(())
}

/// Deletes the savepoint at `path` (its folder or its `_metadata`): refused unless its
/// `_metadata` reads and says it is a savepoint, so a checkpoint directory or another folder is
/// never deleted by mistake. Returns how many objects were deleted. A local folder is removed
/// with its (then empty) directories.
pub(crate) async fn dispose(path: &str, config: &Config) -> Result<u32, Status> {
    let url = storage_url(path, "savepoint path")?;
    let url = url.strip_suffix("/_metadata").unwrap_or(&url).to_string();
    if let Some(local) = url.strip_prefix("file://") {
        if !std::path::Path::new(local).is_dir() {
            return Err(Status::not_found(format!("no savepoint at {path}: {local} is not a directory")));
        }
    }
    let storage = CheckpointStorage::open(&url, config).map_err(|e| Status::invalid_argument(format!("savepoint {path}: {e}")))?;
    let metadata = CheckpointMetadata::read(&storage, "_metadata")
        .await
        .map_err(|e| Status::invalid_argument(format!("{path} is not a savepoint: {e}")))?;
    if !metadata.savepoint {
        return Err(Status::invalid_argument(format!(
            "{path} holds checkpoint {} of job {}, not a savepoint: checkpoints are deleted by their job (num-retained)",
            metadata.checkpoint_id, metadata.job_id
        )));
    }
    let files = storage.list("").await.map_err(|e| Status::unavailable(format!("savepoint {path}: {e}")))?;
    // The metadata goes last: a disposal cut short leaves a folder that is still recognised.
    let (meta, rest): (Vec<String>, Vec<String>) = files.into_iter().partition(|f| f == "_metadata");
    for f in rest.iter().chain(&meta) {
        storage.delete(f).await.map_err(|e| Status::unavailable(format!("savepoint {path}: {e}")))?;
    }
    if let Some(local) = url.strip_prefix("file://") {
        std::fs::remove_dir_all(local).map_err(|e| Status::internal(format!("removing {local}: {e}")))?;
    }
    Ok((rest.len() + meta.len()) as u32)
}

/// Deletes a failed savepoint's folder: its objects, and for `file://` the directory itself.
pub(crate) async fn delete_folder(location: &str, config: &Config) -> Result<(), weir_state::StateError> {
    if let Some(local) = location.strip_prefix("file://") {
        return match std::fs::remove_dir_all(local) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(weir_state::StateError::Io { path: local.to_string(), source: e }),
            _ => Ok(()),
        };
    }
    CheckpointStorage::open(location, config)?.delete_prefix("").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_paths_are_checkpoints_or_savepoint_folders() {
        assert_eq!(locate("/tmp/cp/job1/chk-7").unwrap(), ("file:///tmp/cp".into(), "job1/chk-7/_metadata".into()));
        assert_eq!(locate("s3://b/sp/savepoint-abc-123/").unwrap(), ("s3://b/sp/savepoint-abc-123".into(), "_metadata".into()));
        assert_eq!(locate("file:///sp/savepoint-abc-123/_metadata").unwrap(), ("file:///sp/savepoint-abc-123".into(), "_metadata".into()));
        assert!(locate("relative/dir").unwrap_err().message().contains("not absolute"));
    }

    #[tokio::test]
    async fn a_metadata_that_is_a_directory_is_named_as_such_and_an_uncreatable_storage_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let chk = dir.path().join("job1").join("chk-3");
        std::fs::create_dir_all(chk.join("_metadata")).unwrap();
        let e = read_metadata(chk.to_str().unwrap(), &Config::new()).await.unwrap_err();
        assert!(e.message().contains("is a directory, not a checkpoint's _metadata file"), "{}", e.message());

        let blocker = dir.path().join("a-file");
        std::fs::write(&blocker, b"x").unwrap();
        let url = format!("file://{}/below", blocker.display());
        let e = CheckpointStorage::open(&url, &Config::new()).unwrap_err().to_string();
        assert!(e.contains(keys::CHECKPOINT_DIR) && e.contains("cannot create the directory"), "{e}");
    }

    #[test]
    fn a_new_savepoint_gets_a_folder_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let a = new_location("0123456789abcdef", &d, &Config::new()).unwrap();
        let b = new_location("0123456789abcdef", &d, &Config::new()).unwrap();
        assert!(a.starts_with(&format!("file://{d}/savepoint-012345-")), "{a}");
        assert_ne!(a, b);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no folder before a file is written into it");
        let e = new_location("0123456789abcdef", "", &Config::new()).unwrap_err();
        assert!(e.message().contains(keys::SAVEPOINT_DIR), "{}", e.message());
    }

    #[test]
    fn a_savepoint_folder_url_longer_than_a_barrier_carries_is_refused() {
        // "/savepoint-012345-" and 12 random digits follow the directory: 30 bytes.
        let dir = |len: usize| format!("memory://{}", "d".repeat(len - "memory://".len()));
        let longest = new_location("0123456789abcdef", &dir(MAX_LOCATION_BYTES - 30), &Config::new()).unwrap();
        assert_eq!(longest.len(), MAX_LOCATION_BYTES);
        let e = new_location("0123456789abcdef", &dir(MAX_LOCATION_BYTES - 29), &Config::new()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("65535 bytes") && e.message().contains("65536 bytes"), "{}", e.message());
        // Local directories too, before anything is created.
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("x".repeat(MAX_LOCATION_BYTES));
        let e = new_location("0123456789abcdef", &deep.display().to_string(), &Config::new()).unwrap_err();
        assert!(e.message().contains("65535"), "{}", e.message());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    const JOB: &str = "name: t\nparallelism: 3\npipeline:\n  - source: datagen\n    uid: gen\n    fields:\n      - {name: key, kind: random, min: 0, max: 9}\n  - key_by: key\n  - count: {}\n    uid: counter\n  - sink: blackhole\n";

    fn graph() -> JobGraph {
        weir_core::job::compile_job(JOB, "t", &Config::new(), &Config::new()).unwrap().0
    }

    /// A restore of operators `(uid, parallelism, with operator state, with channel state)`.
    fn info(ops: &[(&str, u32, bool, bool)]) -> RestoreInfo {
        use weir_state::channel_state::ChannelStateHandle;
        use weir_state::metadata::{OperatorState, SubtaskState};
        use weir_state::StoredFile;
        let file = StoredFile { path: "f".into(), size: 1, crc32: 0 };
        let operators = ops
            .iter()
            .map(|(uid, p, operator, channels)| OperatorState {
                uid: uid.to_string(),
                parallelism: *p,
                max_parallelism: 128,
                subtasks: (0..*p)
                    .map(|_| SubtaskState {
                        operator: operator.then(|| file.clone()),
                        input_channels: channels.then(|| ChannelStateHandle { parts: Vec::new() }),
                        ..Default::default()
                    })
                    .collect(),
            })
            .collect();
        RestoreInfo {
            storage_url: "memory://".into(),
            metadata: CheckpointMetadata { job_id: "j".into(), checkpoint_id: 1, timestamp_ms: 0, savepoint: true, operators },
        }
    }

    #[test]
    fn state_of_an_unknown_uid_is_refused_or_dropped_with_a_warning() {
        let mut i = info(&[("counter", 2, false, false), ("old-step", 2, true, false)]);
        let e = check_restore("sp", &graph(), BackendKind::HashMap, &mut i.clone(), false).unwrap_err();
        assert!(e.message().contains("'old-step'") && e.message().contains("--allow-non-restored-state"), "{}", e.message());
        let warnings = check_restore("sp", &graph(), BackendKind::HashMap, &mut i, true).unwrap();
        assert!(warnings.len() == 1 && warnings[0].contains("old-step"), "{warnings:?}");
        let kept: Vec<&str> = i.metadata.operators.iter().map(|o| o.uid.as_str()).collect();
        assert_eq!(kept, ["counter"], "keyed state rescales from 2 to 3");
    }

    const FILE_JOB: &str =
        "name: t\nparallelism: 3\npipeline:\n  - source: file\n    uid: lines\n    path: /data/in\n  - sink: blackhole\n";

    #[test]
    fn datagen_and_in_flight_data_do_not_rescale_file_sources_do_and_key_groups_stay() {
        let e = check_restore("sp", &graph(), BackendKind::HashMap, &mut info(&[("gen", 2, true, false)]), false).unwrap_err();
        assert!(e.message().contains("source 'gen'") && e.message().contains("parallelism: 2"), "{}", e.message());
        assert!(check_restore("sp", &graph(), BackendKind::HashMap, &mut info(&[("gen", 3, true, false)]), false).is_ok());
        // The file source's splits are dealt over the new subtasks.
        let file_graph = weir_core::job::compile_job(FILE_JOB, "t", &Config::new(), &Config::new()).unwrap().0;
        for p in [1, 2, 3, 5] {
            let mut i = info(&[("lines", p, true, false)]);
            assert!(
                check_restore("sp", &file_graph, BackendKind::HashMap, &mut i, false).unwrap().is_empty(),
                "file source from parallelism {p}"
            );
            assert_eq!(i.metadata.operators.len(), 1, "its state is kept");
        }
        let e = check_restore("sp", &graph(), BackendKind::HashMap, &mut info(&[("counter", 2, false, true)]), false).unwrap_err();
        assert!(e.message().contains("unaligned") && e.message().contains("weir savepoint"), "{}", e.message());
        let mut other_max = info(&[("counter", 3, false, false)]);
        other_max.metadata.operators[0].max_parallelism = 256;
        let e = check_restore("sp", &graph(), BackendKind::HashMap, &mut other_max, false).unwrap_err();
        assert!(e.message().contains("max-parallelism 256"), "{}", e.message());
    }

    /// `info(ops)` with keyed state in every subtask of operator `uid`: RocksDB's native
    /// files, or else the canonical key-group file.
    fn with_keyed(mut i: RestoreInfo, uid: &str, native: bool) -> RestoreInfo {
        use weir_core::KeyGroupRange;
        use weir_state::StoredFile;
        let file = |p: &str| StoredFile { path: p.into(), size: 1, crc32: 0 };
        let op = i.metadata.operators.iter_mut().find(|o| o.uid == uid).unwrap();
        for (n, subtask) in op.subtasks.iter_mut().enumerate() {
            let range = KeyGroupRange::new(n as u32 * 10, n as u32 * 10 + 10);
            subtask.keyed = vec![if native {
                KeyedStateHandle::Incremental {
                    range,
                    max_parallelism: 128,
                    shared: vec![("000012.sst".into(), file("counter-0/000012.sst"))],
                    private: vec![("MANIFEST-000005".into(), file("counter-0/MANIFEST-000005"))],
                }
            } else {
                KeyedStateHandle::Full { range, max_parallelism: 128, file: file("counter-0/keyed-state") }
            }];
        }
        i
    }

    #[test]
    fn native_rocksdb_state_into_the_hashmap_backend_is_refused_at_submission_naming_the_operator() {
        let native = with_keyed(info(&[("counter", 2, false, false)]), "counter", true);
        let e = check_restore("sp", &graph(), BackendKind::HashMap, &mut native.clone(), false).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let m = e.message();
        assert!(m.contains("cannot restore from sp") && m.contains("operator 'counter'"), "{m}");
        assert!(m.contains("hashmap") && m.contains(keys::STATE_BACKEND), "{m}");
        assert!(m.contains("weir savepoint JOB --type canonical"), "{m}");
        // RocksDB reads its own files, at any parallelism.
        assert!(check_restore("sp", &graph(), BackendKind::RocksDb, &mut native.clone(), false).is_ok());
        // Either backend reads the canonical format.
        for backend in [BackendKind::HashMap, BackendKind::RocksDb] {
            let mut canonical = with_keyed(info(&[("counter", 2, false, false)]), "counter", false);
            assert!(check_restore("sp", &graph(), backend, &mut canonical, false).is_ok(), "{backend:?}");
        }
        // Native state that is not restored (its operator is gone) is no obstacle.
        let mut dropped = with_keyed(info(&[("old-counter", 2, false, false)]), "old-counter", true);
        let warnings = check_restore("sp", &graph(), BackendKind::HashMap, &mut dropped, true).unwrap();
        assert!(warnings.len() == 1 && dropped.metadata.operators.is_empty(), "{warnings:?}");
    }
}

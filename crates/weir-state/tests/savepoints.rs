//! Savepoints are self-contained folders: a canonical and a native savepoint of a keyed
//! operator at parallelism 2, moved to another path, restore at parallelism 3 with every key's
//! value; no path in them leaves the folder, and nothing in them comes from a checkpoint.

use std::collections::BTreeMap;
use std::path::Path;
use weir_core::KeyGroupRange;
use weir_state::keyed::key_group;
use weir_state::*;

const MAX_P: u32 = 128;
const KEYS: usize = 3000;

fn ctx(key: &str) -> KeyContext {
    let mut c = KeyContext::default();
    c.set_key(key.as_bytes(), MAX_P);
    c
}

fn storage_at(dir: &Path) -> CheckpointStorage {
    CheckpointStorage::open(&format!("file://{}", dir.display()), &Default::default()).unwrap()
}

/// `KEYS` keys in backends at parallelism 2, each in its owner, with `round` in their values.
fn fill(kind: BackendKind, local: &Path, round: i64) -> (Vec<StateBackend>, BTreeMap<String, i64>) {
    let mut backends: Vec<_> =
        (0..2).map(|i| StateBackend::create(kind, local, MAX_P, KeyGroupRange::for_subtask(MAX_P, 2, i)).unwrap()).collect();
    let value = ValueState::<i64>::new("count");
    let mut expected = BTreeMap::new();
    for i in 0..KEYS {
        let key = format!("key-{i}");
        let c = ctx(&key);
        let owner = weir_core::keygroup::subtask_for_key_group(MAX_P, 2, c.key_group) as usize;
        value.update(backends[owner].keyed(), &c, &(i as i64 * 7 + round)).unwrap();
        expected.insert(key, i as i64 * 7 + round);
    }
    (backends, expected)
}

fn update_all(backends: &mut [StateBackend], expected: &mut BTreeMap<String, i64>, round: i64) {
    let value = ValueState::<i64>::new("count");
    for (key, v) in expected.iter_mut() {
        let c = ctx(key);
        let owner = weir_core::keygroup::subtask_for_key_group(MAX_P, 2, c.key_group) as usize;
        *v = *v * 10 + round;
        value.update(backends[owner].keyed(), &c, v).unwrap();
    }
}

/// Takes one snapshot per subtask into `storage` and uploads it.
async fn snapshot(backends: &mut [StateBackend], storage: &CheckpointStorage, n: u64, snapshot: SnapshotType) -> Vec<KeyedStateHandle> {
    let mut handles = Vec::new();
    for (i, b) in backends.iter_mut().enumerate() {
        let target = SnapshotTarget { snapshot: snapshot.clone(), checkpoint: n, operator: "count".into(), subtask: i as u32 };
        let savepoint = target.is_savepoint();
        let h = b.snapshot(target).unwrap().upload(storage).await.unwrap();
        if !savepoint {
            b.snapshot_uploaded(n, &h);
        }
        handles.push(h);
    }
    handles
}

/// Restores at parallelism 3 from `storage` and checks every key's value, each key once.
async fn check_restore_at_3(
    kind: BackendKind,
    local: &Path,
    storage: &CheckpointStorage,
    handles: &[KeyedStateHandle],
    expected: &BTreeMap<String, i64>,
) {
    let value = ValueState::<i64>::new("count");
    let mut found = 0;
    for i in 0..3 {
        let range = KeyGroupRange::for_subtask(MAX_P, 3, i);
        let mut b = StateBackend::restore(kind, local, MAX_P, range, storage, handles).await.unwrap();
        let kb = b.keyed();
        let entries = kb.entries().unwrap();
        found += entries;
        for (key, v) in expected.iter().filter(|(k, _)| range.contains(key_group(k.as_bytes(), MAX_P))) {
            assert_eq!(value.get(kb, &ctx(key)).unwrap(), Some(*v), "{kind:?}: {key} in subtask {i} of 3");
        }
        let owned = expected.keys().filter(|k| range.contains(key_group(k.as_bytes(), MAX_P))).count() as u64;
        assert_eq!(entries, owned, "{kind:?}: subtask {i} of 3 holds only its own keys");
    }
    assert_eq!(found, expected.len() as u64, "no key lost or duplicated");
}

/// Every stored path of a savepoint handle lies in its subtask's directory of the folder.
fn assert_inside_folder(handles: &[KeyedStateHandle], native: bool) {
    for (i, h) in handles.iter().enumerate() {
        let dir = format!("count-{i}/");
        match h {
            KeyedStateHandle::Full { file, .. } => {
                assert!(!native, "a native RocksDB savepoint writes RocksDB's files, not the canonical one");
                assert_eq!(file.path, format!("{dir}keyed-state"));
            }
            KeyedStateHandle::Incremental { shared, private, .. } => {
                assert!(native, "a canonical savepoint writes the key-group file");
                assert!(!shared.is_empty() && !private.is_empty(), "SSTs and MANIFEST/CURRENT/OPTIONS: {h:?}");
                for (name, f) in shared.iter().chain(private) {
                    assert_eq!(f.path, format!("{dir}{name}"), "every file of the RocksDB checkpoint, under its own name");
                }
            }
        }
        for f in h.files() {
            assert!(!f.path.contains("shared") && !f.path.contains("job"), "{} leaves the savepoint folder", f.path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_savepoints_restore_at_another_parallelism_with_every_value() {
    for (kind, format) in [
        (BackendKind::RocksDb, SavepointFormat::Canonical),
        (BackendKind::RocksDb, SavepointFormat::Native),
        (BackendKind::HashMap, SavepointFormat::Canonical),
        (BackendKind::HashMap, SavepointFormat::Native),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("local");
        let checkpoints = storage_at(&tmp.path().join("checkpoints"));
        let (mut backends, mut expected) = fill(kind, &local, 1);

        // Completed incremental checkpoints before: RocksDB would reuse their SSTs in a checkpoint.
        let incremental = SnapshotType::Checkpoint { job: "job".into(), incremental: true };
        snapshot(&mut backends, &checkpoints, 1, incremental.clone()).await;
        backends.iter_mut().for_each(|b| b.notify_checkpoint_complete(1));
        update_all(&mut backends, &mut expected, 2);
        snapshot(&mut backends, &checkpoints, 2, incremental.clone()).await;
        backends.iter_mut().for_each(|b| b.notify_checkpoint_complete(2));
        update_all(&mut backends, &mut expected, 3);

        let folder = tmp.path().join("savepoints/savepoint-3");
        let handles = snapshot(&mut backends, &storage_at(&folder), 3, SnapshotType::Savepoint(format)).await;
        let native = kind == BackendKind::RocksDb && format == SavepointFormat::Native;
        assert_inside_folder(&handles, native);

        // A checkpoint after the savepoint references nothing in the savepoint's folder.
        backends.iter_mut().for_each(|b| b.notify_checkpoint_complete(3));
        let later = snapshot(&mut backends, &checkpoints, 4, incremental).await;
        for f in later.iter().flat_map(|h| h.files()) {
            assert!(f.path.starts_with("job/"), "checkpoint 4 references {} outside the job's checkpoints", f.path);
        }

        // The job and its checkpoints go away; the folder moves.
        drop(backends);
        std::fs::remove_dir_all(tmp.path().join("checkpoints")).unwrap();
        let moved = tmp.path().join("elsewhere/renamed-savepoint");
        std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
        std::fs::rename(&folder, &moved).unwrap();
        assert!(!folder.exists());

        check_restore_at_3(kind, &local, &storage_at(&moved), &handles, &expected).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_savepoint_is_refused_by_the_hashmap_backend_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    let folder = storage_at(&tmp.path().join("savepoint-1"));
    let (mut backends, _) = fill(BackendKind::RocksDb, &local, 0);
    let handles = snapshot(&mut backends, &folder, 1, SnapshotType::Savepoint(SavepointFormat::Native)).await;
    let err = match StateBackend::restore(BackendKind::HashMap, &local, MAX_P, KeyGroupRange::new(0, MAX_P), &folder, &handles).await {
        Ok(_) => panic!("the hashmap backend restored RocksDB's native files"),
        Err(e) => e,
    };
    assert!(matches!(err, StateError::Incompatible(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("native savepoint") && msg.contains("hashmap") && msg.contains("canonical"), "{msg}");
}

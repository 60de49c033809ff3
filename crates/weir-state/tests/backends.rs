//! One suite, both backends: state kinds, snapshot/restore round trips through file storage,
//! rescaling 2→3 and 3→2, incremental uploads and cleanup, corruption detection.

use std::collections::BTreeMap;
use std::path::Path;
use weir_core::KeyGroupRange;
use weir_state::keyed::key_group;
use weir_state::registry::SharedStateRegistry;
use weir_state::storage::layout;
use weir_state::*;

const MAX_P: u32 = 128;
const KINDS: [BackendKind; 2] = [BackendKind::HashMap, BackendKind::RocksDb];

fn ctx(key: &str) -> KeyContext {
    let mut c = KeyContext::default();
    c.set_key(key.as_bytes(), MAX_P);
    c
}

fn file_storage(dir: &Path) -> CheckpointStorage {
    CheckpointStorage::open(&format!("file://{}", dir.display()), &Default::default()).unwrap()
}

#[test]
fn value_list_map_and_reducing_state_behave_the_same_on_both_backends() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = StateBackend::create(kind, dir.path(), MAX_P, KeyGroupRange::new(0, MAX_P)).unwrap();
        let b = backend.keyed();
        let value = ValueState::<i64>::new("v");
        let list = ListState::<String>::new("l");
        let map = MapState::<String, i64>::new("m");
        let reducing = ReducingState::<i64>::new("r", |a, b| a + b);
        let (alice, bob) = (ctx("alice"), ctx("bob"));

        assert_eq!(value.get(b, &alice).unwrap(), None);
        value.update(b, &alice, &7).unwrap();
        value.update(b, &bob, &9).unwrap();
        assert_eq!(value.get(b, &alice).unwrap(), Some(7), "{kind:?}");
        value.clear(b, &alice).unwrap();
        assert_eq!(value.get(b, &alice).unwrap(), None);
        assert_eq!(value.get(b, &bob).unwrap(), Some(9));

        list.add(b, &alice, &"x".into()).unwrap();
        list.add(b, &alice, &"y".into()).unwrap();
        assert_eq!(list.get(b, &alice).unwrap(), vec!["x".to_string(), "y".to_string()]);
        assert!(list.get(b, &bob).unwrap().is_empty());

        map.put(b, &alice, &"b".into(), &2).unwrap();
        map.put(b, &alice, &"a".into(), &1).unwrap();
        map.put(b, &bob, &"z".into(), &26).unwrap();
        assert_eq!(map.get(b, &alice, &"a".into()).unwrap(), Some(1));
        assert_eq!(map.entries(b, &alice).unwrap(), vec![("a".to_string(), 1), ("b".to_string(), 2)]);
        map.remove(b, &alice, &"a".into()).unwrap();
        assert_eq!(map.entries(b, &alice).unwrap(), vec![("b".to_string(), 2)]);
        map.clear(b, &alice).unwrap();
        assert!(map.entries(b, &alice).unwrap().is_empty());
        assert_eq!(map.entries(b, &bob).unwrap().len(), 1);

        // Namespaces separate state of one key (e.g. windows).
        let mut w1 = ctx("alice");
        w1.set_namespace(b"window-1");
        reducing.add(b, &w1, 5).unwrap();
        reducing.add(b, &w1, 6).unwrap();
        assert_eq!(reducing.get(b, &w1).unwrap(), Some(11));
        assert_eq!(reducing.get(b, &alice).unwrap(), None);

        // The batch aggregate path, with a key repeated inside one batch.
        let keys = arrow_array::StringArray::from(vec!["k1", "k2", "k1", "k1"]);
        let vals = arrow_array::Int64Array::from(vec![5, 1, -2, 7]);
        let mut out = Vec::new();
        b.aggregate_batch("sum", Keys::Utf8(&keys), Some(&vals), weir_core::graph::AggKind::Sum, &mut out).unwrap();
        assert_eq!(out, vec![5, 1, 3, 10], "{kind:?}");
        b.aggregate_batch("sum", Keys::Utf8(&keys), Some(&vals), weir_core::graph::AggKind::Sum, &mut out).unwrap();
        assert_eq!(out, vec![15, 2, 13, 20], "{kind:?}");
    }
}

/// Fills `n` keys into backends partitioned at `parallelism`, each key into its owner.
fn fill(kind: BackendKind, dir: &Path, parallelism: u32, n: usize) -> (Vec<StateBackend>, BTreeMap<String, i64>) {
    let mut backends: Vec<_> = (0..parallelism)
        .map(|i| StateBackend::create(kind, dir, MAX_P, KeyGroupRange::for_subtask(MAX_P, parallelism, i)).unwrap())
        .collect();
    let value = ValueState::<i64>::new("count");
    let mut expected = BTreeMap::new();
    for i in 0..n {
        let key = format!("key-{i}");
        let c = ctx(&key);
        let owner = weir_core::keygroup::subtask_for_key_group(MAX_P, parallelism, c.key_group) as usize;
        value.update(backends[owner].keyed(), &c, &(i as i64 * 3)).unwrap();
        expected.insert(key, i as i64 * 3);
    }
    (backends, expected)
}

async fn snapshot_all(backends: &mut [StateBackend], storage: &CheckpointStorage, n: u64, incremental: bool) -> Vec<KeyedStateHandle> {
    let mut handles = Vec::new();
    for (i, b) in backends.iter_mut().enumerate() {
        let target = SnapshotTarget {
            snapshot: SnapshotType::Checkpoint { job: "job".into(), incremental },
            checkpoint: n,
            operator: "count".into(),
            subtask: i as u32,
        };
        let pending = b.snapshot(target).unwrap();
        let h = pending.upload(storage).await.unwrap();
        b.snapshot_uploaded(n, &h);
        handles.push(h);
    }
    handles
}

/// Restores at `parallelism` and checks every key sits in its owner with its value, once.
async fn check_restore(
    kind: BackendKind,
    dir: &Path,
    storage: &CheckpointStorage,
    handles: &[KeyedStateHandle],
    parallelism: u32,
    expected: &BTreeMap<String, i64>,
) {
    let value = ValueState::<i64>::new("count");
    let mut found = 0u64;
    for i in 0..parallelism {
        let range = KeyGroupRange::for_subtask(MAX_P, parallelism, i);
        let mut b = StateBackend::restore(kind, dir, MAX_P, range, storage, handles).await.unwrap();
        let kb = b.keyed();
        let entries = kb.entries().unwrap();
        found += entries;
        for (key, v) in expected {
            let c = ctx(key);
            if range.contains(c.key_group) {
                assert_eq!(value.get(kb, &c).unwrap(), Some(*v), "{kind:?}: {key} in subtask {i} of {parallelism}");
            }
        }
        let owned = expected.keys().filter(|k| range.contains(key_group(k.as_bytes(), MAX_P))).count() as u64;
        assert_eq!(entries, owned, "{kind:?}: subtask {i} of {parallelism} holds only its own keys");
    }
    assert_eq!(found, expected.len() as u64, "no key lost or duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_restore_at_the_same_and_at_other_parallelisms() {
    for kind in KINDS {
        for incremental in [false, true] {
            for (from, to) in [(2u32, 2u32), (2, 3), (3, 2), (3, 1)] {
                let dir = tempfile::tempdir().unwrap();
                let storage = file_storage(&dir.path().join("chk"));
                let (mut backends, expected) = fill(kind, dir.path(), from, 3_000);
                let handles = snapshot_all(&mut backends, &storage, 1, incremental).await;
                check_restore(kind, dir.path(), &storage, &handles, to, &expected).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshots_upload_only_new_sst_files_and_cleanup_deletes_unreferenced_ones() {
    let dir = tempfile::tempdir().unwrap();
    let storage = file_storage(&dir.path().join("chk"));
    let (mut backends, _) = fill(BackendKind::RocksDb, dir.path(), 1, 20_000);
    let mut registry = SharedStateRegistry::new();

    let h1 = snapshot_all(&mut backends, &storage, 1, true).await;
    registry.register(1, &h1);
    backends[0].notify_checkpoint_complete(1);
    let shared_after_1 = storage.list(&layout::shared_dir("job")).await.unwrap();
    assert!(!shared_after_1.is_empty());

    // Change 1% of the keys; the next checkpoint uploads only the new SST.
    let value = ValueState::<i64>::new("count");
    for i in 0..200 {
        value.update(backends[0].keyed(), &ctx(&format!("key-{i}")), &-1).unwrap();
    }
    let h2 = snapshot_all(&mut backends, &storage, 2, true).await;
    registry.register(2, &h2);
    backends[0].notify_checkpoint_complete(2);
    let shared_after_2 = storage.list(&layout::shared_dir("job")).await.unwrap();
    let new: Vec<_> = shared_after_2.iter().filter(|p| !shared_after_1.contains(p)).collect();
    assert_eq!(new.len(), 1, "only the SST of the changed keys is uploaded: {new:?}");
    assert!(h2[0].shared_paths().iter().all(|p| shared_after_2.contains(p)));
    assert!(h2[0].size() > 0 && h1[0].shared_paths().iter().all(|p| h2[0].shared_paths().contains(p)), "old SSTs are referenced");

    // Retain only checkpoint 2: checkpoint 1's own files go, shared files 2 uses stay.
    let deleted = registry.discard(&storage, "job", 1).await.unwrap();
    assert!(deleted.is_empty(), "checkpoint 2 still references every SST of checkpoint 1");
    assert!(storage.list(&layout::checkpoint_dir("job", 1)).await.unwrap().is_empty());
    // Discarding 2 as well leaves no shared file behind.
    let deleted = registry.discard(&storage, "job", 2).await.unwrap();
    assert_eq!(deleted.len(), shared_after_2.len());
    assert!(storage.list(&layout::shared_dir("job")).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_truncated_and_missing_files_are_detected_naming_the_file() {
    for kind in KINDS {
        for incremental in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("chk");
            let storage = file_storage(&root);
            let (mut backends, _) = fill(kind, dir.path(), 1, 500);
            let handles = snapshot_all(&mut backends, &storage, 1, incremental).await;
            let victim = handles[0].files()[0].path.clone();
            let on_disk = root.join(&victim);
            let good = std::fs::read(&on_disk).unwrap();
            let range = KeyGroupRange::new(0, MAX_P);

            let mut flipped = good.clone();
            let mid = flipped.len() / 2;
            flipped[mid] ^= 0x01;
            for damaged in [Some(flipped), Some(good[..good.len() - 1].to_vec()), None] {
                match &damaged {
                    Some(bytes) => std::fs::write(&on_disk, bytes).unwrap(),
                    None => std::fs::remove_file(&on_disk).unwrap(),
                }
                let err = match StateBackend::restore(kind, dir.path(), MAX_P, range, &storage, &handles).await {
                    Ok(_) => panic!("{kind:?}: a damaged {victim} must not restore"),
                    Err(e) => e.to_string(),
                };
                assert!(err.contains(&victim), "{kind:?}: error names the file: {err}");
            }
            std::fs::write(&on_disk, &good).unwrap();
            StateBackend::restore(kind, dir.path(), MAX_P, range, &storage, &handles).await.unwrap();
        }
    }
}

#[tokio::test]
async fn metadata_is_written_last_and_read_back_with_its_checksum() {
    use weir_state::metadata::*;
    let dir = tempfile::tempdir().unwrap();
    let storage = file_storage(dir.path());
    let (mut backends, _) = fill(BackendKind::HashMap, dir.path(), 2, 100);
    let handles = snapshot_all(&mut backends, &storage, 4, false).await;
    let meta = CheckpointMetadata {
        job_id: "job".into(),
        checkpoint_id: 4,
        timestamp_ms: 1,
        savepoint: false,
        operators: vec![OperatorState {
            uid: "count".into(),
            parallelism: 2,
            max_parallelism: MAX_P,
            subtasks: handles.into_iter().map(|h| SubtaskState { keyed: vec![h], ..Default::default() }).collect(),
        }],
    };
    meta.write(&storage).await.unwrap();
    let back = CheckpointMetadata::read(&storage, &layout::metadata("job", 4)).await.unwrap();
    assert_eq!(back, meta);
    let path = dir.path().join(layout::metadata("job", 4));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = CheckpointMetadata::read(&storage, &layout::metadata("job", 4)).await.unwrap_err().to_string();
    assert!(err.contains("_metadata") && err.contains("corrupted"), "{err}");
}

/// Runs the keyed count over `batches` on `b`, returning every running value.
fn count_all(b: &mut StateBackend, batches: &[Vec<i64>]) -> Vec<i64> {
    let mut all = Vec::new();
    let mut out = Vec::new();
    for keys in batches {
        let arr = arrow_array::Int64Array::from(keys.clone());
        b.keyed().aggregate_batch("count", Keys::Int64(&arr), None, weir_core::graph::AggKind::Count, &mut out).unwrap();
        all.extend_from_slice(&out);
    }
    all
}

/// 200 batches of 100 keys out of 2,000: ten times more keys than a cache of 200 entries holds.
fn random_batches() -> Vec<Vec<i64>> {
    let mut x = 7u64;
    (0..200)
        .map(|_| {
            (0..100)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((x >> 33) % 2_000) as i64
                })
                .collect()
        })
        .collect()
}

/// Bytes of a cache that holds about `entries` count entries (composite keys of 22 bytes).
fn cache_of(entries: usize) -> usize {
    entries * (22 + 48)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rocksdb_aggregate_cache_gives_the_same_counts_with_ten_times_more_keys_than_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let storage = file_storage(&dir.path().join("chk"));
    let range = KeyGroupRange::new(0, MAX_P);
    let batches = random_batches();
    let mut memory = StateBackend::create(BackendKind::HashMap, dir.path(), MAX_P, range).unwrap();
    let want = count_all(&mut memory, &batches[..100]);
    let mut cached = StateBackend::create(BackendKind::RocksDb, dir.path(), MAX_P, range).unwrap();
    cached.set_aggregate_cache(cache_of(200)).unwrap();
    assert_eq!(count_all(&mut cached, &batches[..100]), want);
    let mut first_half = StateBackend::create(BackendKind::HashMap, dir.path(), MAX_P, range).unwrap();
    count_all(&mut first_half, &batches[..100]);
    // Reads see the cached (dirty) values, before anything forces them to RocksDB.
    let composite = |k: i64| {
        let mut c = KeyContext::default();
        c.set_key(&k.to_le_bytes(), MAX_P);
        let mut key = Vec::new();
        keyed::composite_key(&mut key, c.key_group, "count", &c.key, &[]);
        key
    };
    for k in 0..2_000i64 {
        assert_eq!(cached.keyed().get(&composite(k)).unwrap(), first_half.keyed().get(&composite(k)).unwrap(), "key {k}");
    }
    // A write that bypasses the cache replaces the cached value; a scan sees it.
    cached.keyed().put(&composite(5), &100i64.to_le_bytes()).unwrap();
    first_half.keyed().put(&composite(5), &100i64.to_le_bytes()).unwrap();
    assert_eq!(cached.keyed().scan_prefix(&composite(5)).unwrap(), vec![(composite(5), 100i64.to_le_bytes().to_vec())]);
    // A checkpoint in the middle holds every update before it (the cache is flushed first).
    let handles = snapshot_all(std::slice::from_mut(&mut cached), &storage, 1, true).await;
    let rest = count_all(&mut cached, &batches[100..]);
    assert_eq!(rest, count_all(&mut first_half, &batches[100..]));

    // Every other call sees the cached values; counts agree key by key.
    assert_eq!(cached.keyed().entries().unwrap(), first_half.keyed().entries().unwrap());
    for k in 0..2_000i64 {
        assert_eq!(cached.keyed().get(&composite(k)).unwrap(), first_half.keyed().get(&composite(k)).unwrap(), "key {k}");
    }

    // The checkpoint restores the counts of the first half exactly.
    let mut restored = StateBackend::restore(BackendKind::RocksDb, dir.path(), MAX_P, range, &storage, &handles).await.unwrap();
    assert_eq!(count_all(&mut restored, &batches[100..]), rest);
}

/// String keys, short ones (whose composite keys the cache keeps inline) and long ones (kept
/// boxed), summed through a cache that holds a tenth of them: the same sums as in memory, and
/// the same values read back after the cache is flushed and dropped.
#[test]
fn the_rocksdb_aggregate_cache_keeps_short_and_long_string_keys_apart() {
    let dir = tempfile::tempdir().unwrap();
    let range = KeyGroupRange::new(0, MAX_P);
    let key = |i: u64| if i % 3 == 0 { format!("k{i}") } else { format!("a-key-long-enough-to-be-kept-boxed-{i}") };
    let batches: Vec<Vec<String>> = (0..100u64).map(|b| (0..100u64).map(|r| key((b * 7919 + r * 104_729) % 1_000)).collect()).collect();
    let sum_all = |b: &mut StateBackend| {
        let (mut all, mut out) = (Vec::new(), Vec::new());
        for (n, keys) in batches.iter().enumerate() {
            let arr = arrow_array::StringArray::from(keys.clone());
            let values = arrow_array::Int64Array::from(vec![n as i64; keys.len()]);
            b.keyed().aggregate_batch("sum", Keys::Utf8(&arr), Some(&values), weir_core::graph::AggKind::Sum, &mut out).unwrap();
            all.extend_from_slice(&out);
        }
        all
    };
    let mut memory = StateBackend::create(BackendKind::HashMap, dir.path(), MAX_P, range).unwrap();
    let mut cached = StateBackend::create(BackendKind::RocksDb, dir.path(), MAX_P, range).unwrap();
    cached.set_aggregate_cache(100 * (60 + 48)).unwrap();
    assert_eq!(sum_all(&mut cached), sum_all(&mut memory));
    cached.set_aggregate_cache(0).unwrap(); // flushes and drops the cache: reads go to RocksDB
    for i in 0..1_000 {
        let mut c = KeyContext::default();
        c.set_key(key(i).as_bytes(), MAX_P);
        let mut composite = Vec::new();
        keyed::composite_key(&mut composite, c.key_group, "sum", &c.key, &[]);
        assert_eq!(cached.keyed().get(&composite).unwrap(), memory.keyed().get(&composite).unwrap(), "key {}", key(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_checkpoints_stay_incremental_behind_the_aggregate_cache() {
    let dir = tempfile::tempdir().unwrap();
    let storage = file_storage(&dir.path().join("chk"));
    let range = KeyGroupRange::new(0, MAX_P);
    let mut b = StateBackend::create(BackendKind::RocksDb, dir.path(), MAX_P, range).unwrap();
    b.set_aggregate_cache(cache_of(50_000)).unwrap();
    count_all(&mut b, &[(0..20_000).collect()]);
    let h1 = snapshot_all(std::slice::from_mut(&mut b), &storage, 1, true).await;
    b.notify_checkpoint_complete(1);
    let shared_after_1 = storage.list(&layout::shared_dir("job")).await.unwrap();
    assert!(!shared_after_1.is_empty(), "the first checkpoint wrote the cached counts to an SST");
    // 1% of the keys change: only their SST is new.
    count_all(&mut b, &[(0..200).collect()]);
    let h2 = snapshot_all(std::slice::from_mut(&mut b), &storage, 2, true).await;
    let shared_after_2 = storage.list(&layout::shared_dir("job")).await.unwrap();
    let new: Vec<_> = shared_after_2.iter().filter(|p| !shared_after_1.contains(p)).collect();
    assert_eq!(new.len(), 1, "only the SST of the changed keys is uploaded: {new:?}");
    assert!(h1[0].shared_paths().iter().all(|p| h2[0].shared_paths().contains(p)), "old SSTs are referenced");
}

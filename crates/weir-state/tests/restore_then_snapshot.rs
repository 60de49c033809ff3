//! A RocksDB backend restored from an incremental checkpoint takes its next incremental
//! checkpoint while background work (compactions) runs: every file of the local checkpoint
//! must still be there when its (possibly slow) upload reads it.

use weir_core::KeyGroupRange;
use weir_state::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_rocksdb_checkpoints_keep_their_files_until_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let storage = CheckpointStorage::open(&format!("file://{}/chk", dir.path().display()), &Default::default()).unwrap();
    let range = KeyGroupRange::new(0, 128);
    let value = ValueState::<i64>::new("v");
    let mut b = StateBackend::create(BackendKind::RocksDb, dir.path(), 128, range).unwrap();
    let mut handles = Vec::new();
    for n in 1..=6u64 {
        for k in 0..5000i64 {
            let mut c = KeyContext::default();
            c.set_key(&(k * n as i64).to_le_bytes(), 128);
            value.update(b.keyed(), &c, &k).unwrap();
        }
        let t = SnapshotTarget {
            snapshot: SnapshotType::Checkpoint { job: "j".into(), incremental: true },
            checkpoint: n,
            operator: "op".into(),
            subtask: 0,
        };
        let h = b.snapshot(t).unwrap().upload(&storage).await.unwrap();
        b.snapshot_uploaded(n, &h);
        b.notify_checkpoint_complete(n);
        handles = vec![h];
    }
    for round in 0..3u64 {
        let mut r = StateBackend::restore(BackendKind::RocksDb, dir.path(), 128, range, &storage, &handles).await.unwrap();
        for k in 0..5000i64 {
            let mut c = KeyContext::default();
            c.set_key(&(k + 100_000).to_le_bytes(), 128);
            value.update(r.keyed(), &c, &k).unwrap();
        }
        let n = 10 + round;
        let t = SnapshotTarget {
            snapshot: SnapshotType::Checkpoint { job: "j".into(), incremental: true },
            checkpoint: n,
            operator: "op".into(),
            subtask: 0,
        };
        let pending = r.snapshot(t).unwrap();
        // A slow upload: background compactions get time to run first.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let h = pending.upload(&storage).await.expect("every file of the local checkpoint is still there");
        handles = vec![h];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_completes_after_its_backend_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let storage = CheckpointStorage::open(&format!("file://{}/chk", dir.path().display()), &Default::default()).unwrap();
    let mut b = StateBackend::create(BackendKind::RocksDb, dir.path(), 128, KeyGroupRange::new(0, 128)).unwrap();
    let value = ValueState::<i64>::new("v");
    for k in 0..1000i64 {
        let mut c = KeyContext::default();
        c.set_key(&k.to_le_bytes(), 128);
        value.update(b.keyed(), &c, &k).unwrap();
    }
    let t = SnapshotTarget {
        snapshot: SnapshotType::Checkpoint { job: "j".into(), incremental: true },
        checkpoint: 1,
        operator: "op".into(),
        subtask: 0,
    };
    let pending = b.snapshot(t).unwrap();
    drop(b); // the task ended (its input finished) before the asynchronous part ran
    let h = pending.upload(&storage).await.expect("the local checkpoint outlives its backend");
    let restored = StateBackend::restore(BackendKind::RocksDb, dir.path(), 128, KeyGroupRange::new(0, 128), &storage, &[h]).await.unwrap();
    assert_eq!(restored.keyed_ref().entries().unwrap(), 1000);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("rocksdb-chk"))
        .collect();
    assert!(leftovers.is_empty(), "uploads clean up their local checkpoint: {leftovers:?}");
}

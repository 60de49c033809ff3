//! State benchmarks (`make bench`): keyed-aggregate updates per second on each backend, and
//! snapshot time and size for 1 M keys, full vs incremental (second snapshot after 1% of the
//! keys changed). Prints figures; asserts nothing.

use arrow_array::Int64Array;
use std::time::Instant;
use weir_core::graph::AggKind;
use weir_core::KeyGroupRange;
use weir_state::*;

const KEYS: i64 = 1_000_000;
const BATCH: usize = 4096;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn update(b: &mut StateBackend, keys: impl Iterator<Item = i64>) -> (u64, f64) {
    let keys: Vec<i64> = keys.collect();
    let mut out = Vec::new();
    let start = Instant::now();
    for chunk in keys.chunks(BATCH) {
        let arr = Int64Array::from(chunk.to_vec());
        b.keyed().aggregate_batch("count", Keys::Int64(&arr), None, AggKind::Count, &mut out).unwrap();
    }
    (keys.len() as u64, start.elapsed().as_secs_f64())
}

async fn snapshot(b: &mut StateBackend, storage: &CheckpointStorage, n: u64, incremental: bool) -> (f64, f64, u64, KeyedStateHandle) {
    let before: u64 = 0;
    let t = SnapshotTarget {
        snapshot: SnapshotType::Checkpoint { job: "bench".into(), incremental },
        checkpoint: n,
        operator: "count".into(),
        subtask: 0,
    };
    let start = Instant::now();
    let pending = b.snapshot(t).unwrap();
    let sync = start.elapsed().as_secs_f64();
    let h = pending.upload(storage).await.unwrap();
    let total = start.elapsed().as_secs_f64();
    b.snapshot_uploaded(n, &h);
    b.notify_checkpoint_complete(n);
    (sync, total, before, h)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!("{:<58} {:>12}", "state updates (keyed count, batches of 4096)", "M updates/s");
    for (name, kind) in [("hashmap", BackendKind::HashMap), ("rocksdb", BackendKind::RocksDb)] {
        let mut b = StateBackend::create(kind, dir.path(), 128, KeyGroupRange::new(0, 128)).unwrap();
        let (n, s) = update(&mut b, 0..KEYS);
        println!("{:<58} {:>12.2}", format!("{name}: insert 1M new keys"), n as f64 / s / 1e6);
        let (n, s) = update(&mut b, (0..2_000_000u64).map(|i| (splitmix(i) % KEYS as u64) as i64));
        println!("{:<58} {:>12.2}", format!("{name}: 2M updates of random existing keys"), n as f64 / s / 1e6);
        let (n, s) = update(&mut b, (0..2_000_000u64).map(|i| (splitmix(i) % 100_000) as i64));
        println!("{:<58} {:>12.2}", format!("{name}: 2M updates over 100k hot keys"), n as f64 / s / 1e6);
    }

    println!();
    println!("{:<58} {:>9} {:>9} {:>12}", "snapshot of 1M keys (file storage)", "sync ms", "total ms", "uploaded");
    for (name, kind, incremental) in [
        ("hashmap (full)", BackendKind::HashMap, false),
        ("rocksdb full", BackendKind::RocksDb, false),
        ("rocksdb incremental", BackendKind::RocksDb, true),
    ] {
        let storage =
            CheckpointStorage::open(&format!("file://{}/{}", dir.path().display(), name.replace(' ', "-")), &Default::default()).unwrap();
        let mut b = StateBackend::create(kind, dir.path(), 128, KeyGroupRange::new(0, 128)).unwrap();
        update(&mut b, 0..KEYS);
        let (sync, total, _, h1) = snapshot(&mut b, &storage, 1, incremental).await;
        println!("{:<58} {:>9.1} {:>9.1} {:>12}", format!("{name}: first"), sync * 1e3, total * 1e3, human(h1.size()));
        update(&mut b, (0..KEYS / 100).map(|i| i * 100));
        let (sync, total, _, h2) = snapshot(&mut b, &storage, 2, incremental).await;
        let old: std::collections::HashSet<_> = h1.files().iter().map(|f| f.path.clone()).collect();
        let uploaded: u64 = h2.files().iter().filter(|f| !old.contains(&f.path)).map(|f| f.size).sum();
        println!(
            "{:<58} {:>9.1} {:>9.1} {:>12}",
            format!("{name}: after 1% changed"),
            sync * 1e3,
            total * 1e3,
            format!("{} ({:.1}%)", human(uploaded), uploaded as f64 * 100.0 / h2.size() as f64)
        );
    }
}

fn human(b: u64) -> String {
    if b > 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

//! Micro-benchmarks of the state backends (`make bench`): one batch of 4096 keyed-count updates
//! over 100 000 keys (the keyed count's), on the hashmap backend and on RocksDB with and
//! without the write-back aggregate cache.

use arrow_array::Int64Array;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir_core::graph::AggKind;
use weir_core::KeyGroupRange;
use weir_state::*;

const KEYS: u64 = 100_000;
const BATCH: usize = 4096;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn backends(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let batches: Vec<Int64Array> = (0..64u64)
        .map(|b| Int64Array::from_iter_values((0..BATCH as u64).map(|i| (splitmix(b * BATCH as u64 + i) % KEYS) as i64)))
        .collect();
    let mut g = c.benchmark_group("state/keyed count, 4096 updates over 100k keys");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, kind, cache) in [
        ("hashmap", BackendKind::HashMap, 0usize),
        ("rocksdb, aggregate cache 64 MiB", BackendKind::RocksDb, 64 << 20),
        ("rocksdb, no cache", BackendKind::RocksDb, 0),
    ] {
        let mut backend = StateBackend::create(kind, dir.path(), 128, KeyGroupRange::new(0, 128)).unwrap();
        backend.set_aggregate_cache(cache).unwrap();
        let mut out = Vec::new();
        // Every key exists before measuring: the steady state of a running count.
        for b in &batches {
            backend.keyed().aggregate_batch("count", Keys::Int64(b), None, AggKind::Count, &mut out).unwrap();
        }
        let mut next = 0;
        g.bench_function(name, |bench| {
            bench.iter_batched(
                || {
                    next = (next + 1) % batches.len();
                    &batches[next]
                },
                |keys| backend.keyed().aggregate_batch("count", Keys::Int64(keys), None, AggKind::Count, &mut out).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, backends);
criterion_main!(benches);

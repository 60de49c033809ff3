//! Micro-benchmarks of the data plane's codec (`make bench`): a 32 KiB buffer of one Int64
//! column (the keyed count's) and of words and counts, encoded and decoded the way the TCP data
//! plane does it (the IPC messages without the schema, decoded in place from one aligned
//! allocation) next to a self-contained IPC stream (schema + batch, copied), the form channel
//! state keeps.

use arrow_array::{Int64Array, RecordBatch, StringArray};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use weir_runtime::buffer::{decode_batch, encode_batch, BatchEncoder, Encoded};

fn batches() -> Vec<(&'static str, RecordBatch)> {
    let keys = RecordBatch::try_from_iter(vec![("key", Arc::new(Int64Array::from_iter_values(0..4096)) as _)]).unwrap();
    let words: Vec<String> = (0..1500).map(|i| format!("word{}", i % 97)).collect();
    let words = RecordBatch::try_from_iter(vec![
        ("word", Arc::new(StringArray::from(words)) as _),
        ("count", Arc::new(Int64Array::from_iter_values(0..1500)) as _),
    ])
    .unwrap();
    vec![("int64 keys", keys), ("words and counts", words)]
}

fn codec(c: &mut Criterion) {
    for (name, batch) in batches() {
        let mut g = c.benchmark_group(format!("codec/{name}"));
        g.throughput(Throughput::Elements(batch.num_rows() as u64));
        let mut encoder = BatchEncoder::default();
        g.bench_function("encode for the wire (no schema, no copy)", |b| b.iter(|| encoder.encode(black_box(&batch)).unwrap()));
        g.bench_function("encode a self-contained stream", |b| b.iter(|| encode_batch(black_box(&batch)).unwrap()));
        let wire = BatchEncoder::default().encode(&batch).unwrap();
        // What the reader hands over: one allocation holding the frame's body.
        let received = Encoded::received(batch.schema(), Bytes::from(wire.contiguous().to_vec()));
        g.bench_function("decode a received buffer (in place)", |b| b.iter(|| black_box(&received).decode().unwrap()));
        let stream = encode_batch(&batch).unwrap();
        g.bench_function("decode a self-contained stream", |b| b.iter(|| decode_batch(black_box(&stream)).unwrap()));
        g.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);

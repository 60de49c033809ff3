//! Writes the seed corpus of every fuzz target from Weir's own encoders: the example job files,
//! encoded events and channel ids, Arrow IPC buffers, a `_metadata` that references every kind
//! of state handle, and keyed, operator and channel state files.
//!
//! Run by `make fuzz-seeds` (`cargo fuzz build write_seeds`, then this binary with the corpus
//! directory as its argument). Seeds are named `seed-*`, so a rerun replaces them and leaves
//! what the fuzzer found beside them.

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use bytes::{Bytes, BytesMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_core::KeyGroupRange;
use weir_runtime::buffer::{encode_batch, Barrier, ChannelId, Event, SavepointFormat, SavepointOptions};
use weir_state::channel_state::{self, ChannelBuffer, ChannelStateHandle, ChannelStatePart};
use weir_state::format::{frame, METADATA_MAGIC};
use weir_state::hashmap::HashMapBackend;
use weir_state::metadata::{CheckpointMetadata, OperatorState, SubtaskState};
use weir_state::{operator_state, KeyContext, KeyedStateHandle, ListState, StoredFile, ValueState};

const MAX_PARALLELISM: u32 = 128;

fn main() {
    let corpus = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut jobs: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(&examples).expect("examples/") {
        let path = entry.expect("examples/ entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_stem().expect("a file name").to_string_lossy().into_owned();
            jobs.push((name, std::fs::read(&path).expect("an example job")));
        }
    }
    jobs.push(("every-step".into(), EVERY_STEP.as_bytes().to_vec()));
    write(&corpus, "job_file", jobs);

    let events = [
        ("end-of-partition", Event::EndOfPartition),
        ("cancel", Event::CancelCheckpoint(7)),
        ("watermark", Event::Watermark(1_700_000_000_000)),
        ("watermark-status-idle", Event::WatermarkStatus { idle: true }),
        ("barrier", Event::Barrier(Barrier::new(41, 1_700_000_000_000))),
        ("unaligned-barrier", Event::Barrier(Barrier { unaligned: true, ..Barrier::new(42, 1_700_000_000_000) })),
        (
            "savepoint-barrier",
            Event::Barrier(Barrier::savepoint(
                43,
                1_700_000_000_000,
                SavepointOptions { location: "file:///tmp/savepoints/savepoint-1".into(), format: SavepointFormat::Native },
            )),
        ),
    ];
    let channel = ChannelId { job: 0x7f3a_0000_0000_0000_0000_0000_0000_0001, attempt: 1, edge: 0, from: 2, to: 3 };
    let mut seeds = Vec::new();
    for (name, event) in &events {
        seeds.push((name.to_string(), event.encode().to_vec()));
        let mut framed = BytesMut::new();
        channel.encode(&mut framed);
        framed.extend_from_slice(&event.encode());
        seeds.push((format!("{name}-on-channel"), framed.to_vec()));
    }
    write(&corpus, "data_plane_event", seeds);

    let buffers: Vec<(String, Bytes)> = batches().into_iter().map(|(name, b)| (name, encode_batch(&b).expect("a batch encodes"))).collect();
    let mut buffer_seeds: Vec<(String, Vec<u8>)> = buffers.iter().map(|(n, b)| (n.clone(), b.to_vec())).collect();
    for (name, b) in batches() {
        // A BUFFER frame's body, after the byte that picks the schema to decode it with (the
        // target's schema 0 is one Int64 column, schema 1 a word and a count).
        let wire = weir_runtime::buffer::BatchEncoder::default().encode(&b).expect("a batch encodes for the wire");
        for pick in [0u8, 1] {
            buffer_seeds.push((format!("{name}-wire-{pick}"), [vec![pick], wire.contiguous().to_vec()].concat()));
        }
        buffer_seeds.push((format!("{name}-schema"), weir_runtime::buffer::schema_message(&b.schema()).expect("a schema encodes").to_vec()));
    }
    write(&corpus, "data_plane_buffer", buffer_seeds);

    let metadata = serde_json::to_vec(&metadata()).expect("metadata encodes");
    write(
        &corpus,
        "checkpoint_metadata",
        vec![("metadata".into(), frame(METADATA_MAGIC, &metadata)), ("metadata-body".into(), metadata)],
    );

    let channel_buffers: Vec<ChannelBuffer> = buffers
        .iter()
        .enumerate()
        .map(|(i, (_, ipc))| ChannelBuffer { channel: i as u32, subchannel: (i % 2) as u32, ipc: ipc.clone() })
        .collect();
    let operator = vec![b"offset=42".to_vec(), Vec::new(), 7u64.to_be_bytes().to_vec()];
    write(
        &corpus,
        "state_files",
        vec![
            ("keyed-state".into(), keyed_state(KeyGroupRange::new(0, MAX_PARALLELISM))),
            ("keyed-state-subrange".into(), keyed_state(KeyGroupRange::new(32, 64))),
            ("operator-state".into(), operator_state::encode_list(&operator)),
            ("input-channels".into(), channel_state::encode(&channel_buffers[..1])),
            ("output-channels".into(), channel_state::encode(&channel_buffers)),
        ],
    );
}

/// A job with every kind of step, so the compiler's every branch has a seed.
const EVERY_STEP: &str = "name: every-step
parallelism: 2
config:
  execution.checkpointing.interval: 10s
pipeline:
  - source: datagen
    rows-per-second: 1000
    number-of-rows: 5000
    seed: 7
    fields:
      - {name: id, kind: sequence, start: 0, end: 5000}
      - {name: word, kind: random, length: 5}
      - {name: n, kind: random, min: -10, max: 10}
  - filter: \"n >= 0\"
  - select: [word, n]
  - upper: word
  - lower: {column: word}
  - rebalance: {}
  - throttle: {rows-per-second: 500}
    parallelism: 3
  - key_by: word
  - sum: n
    uid: sums
  - sink: file
    path: /tmp/weir-fuzz-out
    format: json
";

/// Batches of the shapes that travel between Weir's operators: words, counts, both, empty.
fn batches() -> Vec<(String, RecordBatch)> {
    let words: ArrayRef = Arc::new(StringArray::from(vec![Some("to"), Some("be"), None, Some("or")]));
    let counts: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(-4)]));
    let batch = |columns: Vec<(&str, ArrayRef)>| RecordBatch::try_from_iter(columns).expect("a batch");
    vec![
        ("words".into(), batch(vec![("word", words.clone())])),
        ("word-counts".into(), batch(vec![("word", words.clone()), ("count", counts.clone())])),
        ("empty".into(), batch(vec![("word", words.slice(0, 0))])),
    ]
}

/// A keyed-state file for `range` with value and list state, as a hashmap backend writes it.
fn keyed_state(range: KeyGroupRange) -> Vec<u8> {
    let mut backend = HashMapBackend::new(MAX_PARALLELISM, range);
    let (counts, lists) = (ValueState::<i64>::new("count"), ListState::<String>::new("seen"));
    let mut ctx = KeyContext::default();
    for word in ["to", "be", "or", "not", "that", "is", "the", "question"] {
        ctx.set_key(word.as_bytes(), MAX_PARALLELISM);
        if !range.contains(ctx.key_group) {
            continue;
        }
        counts.update(&mut backend, &ctx, &(word.len() as i64)).expect("in range");
        lists.add(&mut backend, &ctx, &word.to_string()).expect("in range");
    }
    backend.snapshot_bytes()
}

/// `_metadata` with every kind of handle: full and incremental keyed state, operator state,
/// input and output channel state.
fn metadata() -> CheckpointMetadata {
    let file = |path: &str, size: u64| StoredFile { path: path.into(), size, crc32: 0x1234_5678 };
    let channels = |path: &str| ChannelStateHandle {
        parts: vec![ChannelStatePart { file: file(path, 4096), records: vec![0, 2], bytes: 2000 }],
    };
    let range = KeyGroupRange::new(0, 64);
    CheckpointMetadata {
        job_id: "7f3a0000000000000000000000000001".into(),
        checkpoint_id: 7,
        timestamp_ms: 1_700_000_000_000,
        savepoint: false,
        operators: vec![
            OperatorState {
                uid: "count".into(),
                parallelism: 2,
                max_parallelism: MAX_PARALLELISM,
                subtasks: vec![
                    SubtaskState {
                        keyed: vec![KeyedStateHandle::Full {
                            range,
                            max_parallelism: MAX_PARALLELISM,
                            file: file("job/chk-7/count-0/keyed-state", 300),
                        }],
                        input_channels: Some(channels("job/shared/input-1")),
                        ..Default::default()
                    },
                    SubtaskState {
                        keyed: vec![KeyedStateHandle::Incremental {
                            range: KeyGroupRange::new(64, 128),
                            max_parallelism: MAX_PARALLELISM,
                            shared: vec![("000012.sst".into(), file("job/shared/000012.sst", 1 << 20))],
                            private: vec![("MANIFEST-000005".into(), file("job/chk-7/count-1/MANIFEST-000005", 200))],
                        }],
                        output_channels: Some(channels("job/shared/output-1")),
                        ..Default::default()
                    },
                ],
            },
            OperatorState {
                uid: "datagen-1".into(),
                parallelism: 1,
                max_parallelism: MAX_PARALLELISM,
                subtasks: vec![SubtaskState { operator: Some(file("job/chk-7/datagen-1-0/operator-state", 40)), ..Default::default() }],
            },
        ],
    }
}

/// Replaces the `seed-*` files of one target's corpus.
fn write(corpus: &Path, target: &str, seeds: Vec<(String, Vec<u8>)>) {
    let dir = corpus.join(target);
    std::fs::create_dir_all(&dir).expect("the corpus directory");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed");
    }
}

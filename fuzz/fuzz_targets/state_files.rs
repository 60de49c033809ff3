//! The files a restore reads from checkpoint storage: keyed-state snapshots (the canonical
//! key-group file both backends restore), operator list state, and channel state (the in-flight
//! buffers of an unaligned checkpoint, each an Arrow IPC stream). Any bytes give the state or
//! `StateError::Corrupt`, never a panic, and state that restores can be snapshotted again.
//!
//! Every input is tried as a whole file and as the body of a well-formed frame of each kind, so
//! the fuzzer reaches the body decoders without having to forge a CRC-32.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use weir_core::KeyGroupRange;
use weir_runtime::buffer::decode_batch;
use weir_state::format::{frame, read_keyed_state, KeyedStateWriter, CHANNEL_MAGIC, KEYED_MAGIC, OPERATOR_MAGIC};
use weir_state::hashmap::HashMapBackend;
use weir_state::keyed::key_group_of;
use weir_state::{channel_state, operator_state};

/// The max parallelism and key-group range of the backends the snapshots are restored into.
const MAX_PARALLELISM: u32 = 128;

fuzz_target!(init: weir_fuzz::let_arrow_panics_unwind(), |data: &[u8]| {
    keyed_state(data);
    keyed_state(&frame(KEYED_MAGIC, data));
    let _ = operator_state::decode_list(data, "fuzz/operator-state");
    let _ = operator_state::decode_list(&frame(OPERATOR_MAGIC, data), "fuzz/operator-state");
    channel_state(Bytes::copy_from_slice(data));
    channel_state(Bytes::from(frame(CHANNEL_MAGIC, data)));
});

/// Restores a keyed-state file as each backend does, then snapshots the restored state.
fn keyed_state(bytes: &[u8]) {
    let path = "fuzz/keyed-state";
    for range in [KeyGroupRange::new(0, MAX_PARALLELISM), KeyGroupRange::new(32, 64)] {
        // The hashmap backend: entries go to the map of the key group the file names.
        let mut hashmap = HashMapBackend::new(MAX_PARALLELISM, range);
        if hashmap.restore_bytes(bytes, path).is_ok() {
            let _ = hashmap.snapshot_bytes();
        }
        // The RocksDB backend (without its disk): entries go into one sorted key space, and its
        // next full snapshot takes each entry's key group from the key itself, in key order.
        let mut sorted = BTreeMap::new();
        let restored = read_keyed_state(bytes, path, range, |_, k, v| {
            sorted.insert(k.to_vec(), v.to_vec());
            Ok(())
        });
        if restored.is_ok() {
            let mut writer = KeyedStateWriter::new(MAX_PARALLELISM, range);
            for (k, v) in &sorted {
                writer.add(key_group_of(k), k, v);
            }
            let _ = writer.finish();
        }
    }
}

/// Decodes a channel-state file and every buffer in it, as a restoring task replays them.
fn channel_state(bytes: Bytes) {
    if let Ok(buffers) = channel_state::decode(&bytes, "fuzz/input-channels") {
        for buffer in buffers {
            let _ = decode_batch(&buffer.ipc);
        }
    }
}

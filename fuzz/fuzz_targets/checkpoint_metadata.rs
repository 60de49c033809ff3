//! A checkpoint's or savepoint's `_metadata`, as read from checkpoint storage (or a path a user
//! gives to `weir run --from-savepoint`): any bytes give metadata or `StateError::Corrupt`,
//! never a panic, and what the JobManager asks of decoded metadata never panics either.
//!
//! Every input is tried twice: as a whole file, and as the body of a well-formed frame, so the
//! fuzzer reaches the JSON decoder without having to forge a CRC-32.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_state::format::{frame, METADATA_MAGIC};
use weir_state::metadata::{split_checkpoint_path, CheckpointMetadata};

fuzz_target!(|data: &[u8]| {
    use_metadata(CheckpointMetadata::decode(data, "fuzz/chk-1/_metadata"));
    use_metadata(CheckpointMetadata::decode(&frame(METADATA_MAGIC, data), "fuzz/chk-1/_metadata"));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = split_checkpoint_path(text);
    }
});

fn use_metadata(decoded: Result<CheckpointMetadata, weir_state::StateError>) {
    let Ok(metadata) = decoded else { return };
    let _ = metadata.files();
    let _ = metadata.shared_paths();
    let _ = metadata.size();
    for handle in metadata.keyed_handles() {
        let _ = (handle.range(), handle.size(), handle.shared_paths());
    }
    for handle in metadata.channel_handles() {
        let _ = (handle.bytes(), handle.paths());
    }
    let json = serde_json::to_vec(&metadata).expect("decoded metadata encodes");
    let back: CheckpointMetadata = serde_json::from_slice(&json).expect("re-encoded metadata decodes");
    assert_eq!(back, metadata);
}

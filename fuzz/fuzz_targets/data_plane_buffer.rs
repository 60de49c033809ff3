//! The body of a BUFFER frame (or an in-flight buffer restored from channel state): an Arrow IPC
//! stream the receiving task decodes. Any bytes give a batch or an error, never a panic, and a
//! batch that decodes is one the task can use: it encodes again for the next hop.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_runtime::buffer::{decode_batch, encode_batch};

fuzz_target!(init: weir_fuzz::let_arrow_panics_unwind(), |data: &[u8]| {
    if let Ok(batch) = decode_batch(&Bytes::copy_from_slice(data)) {
        let _ = batch.get_array_memory_size();
        let again = encode_batch(&batch).expect("a decoded batch encodes again");
        assert_eq!(decode_batch(&again).expect("a re-encoded batch decodes"), batch);
    }
});

//! The bytes of a buffer, in each form they arrive in: the body of a `SCHEMA` frame, the body of
//! a `BUFFER` frame (the IPC messages of one batch, decoded with its channel's schema), and an
//! in-flight buffer restored from channel state (a self-contained IPC stream). Any bytes give a
//! batch or an error, never a panic, and a batch that decodes is one the task can use: it
//! encodes again for the next hop.
#![no_main]

use arrow_array::{Int64Array, RecordBatch, StringArray};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use weir_runtime::buffer::{decode_batch, decode_schema_message, encode_batch, BatchEncoder, Encoded};

/// The schemas a `BUFFER` body is tried against: the first input byte picks one.
fn schemas() -> Vec<arrow_schema::SchemaRef> {
    vec![
        RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![1])) as _)]).unwrap().schema(),
        RecordBatch::try_from_iter(vec![
            ("word", Arc::new(StringArray::from(vec![Some("a")])) as _),
            ("count", Arc::new(Int64Array::from(vec![1])) as _),
        ])
        .unwrap()
        .schema(),
    ]
}

fn encodes_again(batch: &RecordBatch) {
    let _ = batch.get_array_memory_size();
    let again = encode_batch(batch).expect("a decoded batch encodes again");
    assert_eq!(&decode_batch(&again).expect("a re-encoded batch decodes"), batch);
    let wire = BatchEncoder::default().encode(batch).expect("a decoded batch encodes for the wire");
    assert_eq!(&wire.decode().expect("a re-encoded wire buffer decodes"), batch);
}

fuzz_target!(init: weir_fuzz::let_arrow_panics_unwind(), |data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(batch) = decode_batch(&bytes) {
        encodes_again(&batch);
    }
    let _ = decode_schema_message(data);
    if let Some((&pick, body)) = data.split_first() {
        let schemas = schemas();
        let schema = schemas[pick as usize % schemas.len()].clone();
        if let Ok(batch) = Encoded::received(schema, Bytes::copy_from_slice(body)).decode() {
            encodes_again(&batch);
        }
    }
});

//! Data-plane events and channel ids as they arrive in a frame body from any TCP peer: the
//! decoders return an error on any input, and what they accept re-encodes to the same bytes
//! (decoding is strict: no two encodings of one event).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weir_runtime::buffer::{ChannelId, Event};

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::decode(data) {
        assert_eq!(event.encode().as_ref(), data, "{event:?}");
    }
    // A frame body that belongs to a channel: the channel id, then (for an event frame) the event.
    let mut rest = data;
    if let Some(id) = ChannelId::decode(&mut rest) {
        let mut encoded = BytesMut::new();
        id.encode(&mut encoded);
        assert_eq!(encoded.as_ref(), &data[..ChannelId::ENCODED_LEN]);
        if let Ok(event) = Event::decode(rest) {
            assert_eq!(event.encode().as_ref(), rest, "{event:?}");
        }
    } else {
        assert_eq!(rest.len(), data.len(), "a failed decode consumes nothing");
    }
});

//! Any bytes must decode to a stream message or a clean error, never
//! panic; a decoded message must round-trip.
#![no_main]

use bytes::Bytes;
use fogconnect_proto::stream::StreamMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(message) = StreamMessage::decode(&bytes) {
        assert_eq!(StreamMessage::decode(&message.encode()), Ok(message));
    }
});

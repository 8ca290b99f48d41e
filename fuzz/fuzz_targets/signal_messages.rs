//! Any text must decode to a signaling message or a clean error, never
//! panic; a decoded message must round-trip.
#![no_main]

use fogconnect_proto::signal::{ClientMessage, ServerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(message) = ClientMessage::decode(text) {
        assert_eq!(ClientMessage::decode(&message.encode()), Ok(message));
    }
    if let Ok(message) = ServerMessage::decode(text) {
        assert_eq!(ServerMessage::decode(&message.encode()), Ok(message));
    }
});

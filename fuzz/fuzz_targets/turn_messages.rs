//! Any datagram must decode to a TURN answer, a ChannelData message or a
//! clean error, never panic; ChannelData must round-trip.
#![no_main]

use fogconnect_proto::turn::{self, ChannelData};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = turn::decode_response(data);
    if let Ok((message, used)) = ChannelData::decode(data) {
        assert!(used <= data.len());
        let again = message.encode(false).expect("re-encode");
        assert_eq!(ChannelData::decode(&again).expect("decode").0, message);
    }
});

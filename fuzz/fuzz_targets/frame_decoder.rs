//! Any byte stream, split anywhere, must decode to frames or a clean error,
//! never panic; every decoded frame must re-encode to what was decoded.
#![no_main]

use fogconnect_proto::wire::{Decoder, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut decoder = Decoder::new(4096);
    decoder.push(&data[..split]);
    let mut frames = Vec::new();
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(_) => return,
        }
    }
    decoder.push(&data[split..]);
    while let Ok(Some(frame)) = decoder.next_frame() {
        frames.push(frame);
    }
    for frame in frames {
        let mut again = Decoder::new(4096);
        again.push(&frame.encode());
        let decoded: Option<Frame> = again.next_frame().ok().flatten();
        // Texts may be clipped on encode; everything else round-trips.
        if let Some(decoded) = decoded
            && !matches!(frame, Frame::Open { .. } | Frame::Accept { .. } | Frame::Refuse { .. } | Frame::Close { .. })
        {
            assert_eq!(decoded, frame);
        }
    }
});

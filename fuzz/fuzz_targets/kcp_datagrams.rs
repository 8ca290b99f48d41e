//! What reaches a KCP session: any bytes anyone sends to a node's socket
//! in KCP's first-byte range (forged, so dropped and counted), and any KCP
//! packet its peer seals (authentic, so KCP's core reads it). None of it
//! may panic the node.
#![no_main]

use std::time::Instant;

use fogconnect::kcp::envelope::{Envelope, KEYING_MATERIAL_LEN};
use fogconnect::kcp::session::KcpSession;
use fogconnect_proto::wire::Frame;
use libfuzzer_sys::fuzz_target;

const CONVERSATION: u32 = 0x0102_0304;

fuzz_target!(|data: &[u8]| {
    let material = [7u8; KEYING_MATERIAL_LEN];
    let now = Instant::now();
    let Ok(mut session) = KcpSession::new(CONVERSATION, &material, false, 1 << 20, now) else { return };
    // As it came, and behind the session's header: forged either way.
    let _ = session.handle_datagram(&mut data.to_vec(), now);
    let mut framed = vec![0x80];
    framed.extend_from_slice(&CONVERSATION.to_be_bytes());
    framed.extend_from_slice(data);
    let _ = session.handle_datagram(&mut framed, now);
    // Sealed by the peer's keys: KCP's core reads whatever it says. The
    // session may end on it (an error), never panic.
    let Some(mut sealer) = Envelope::new(CONVERSATION, &material, true) else { return };
    let mut sealed = sealer.seal(data);
    if session.handle_datagram(&mut sealed, now).is_err() {
        return;
    }
    // What it completed comes out as frames, whatever they are.
    while let Some(frame) = session.poll_frame() {
        let _ = matches!(frame, Frame::Data(_));
    }
    while session.poll_transmit().is_some() {}
});

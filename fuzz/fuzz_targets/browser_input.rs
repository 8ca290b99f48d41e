//! What a browser peer sends a node: its SDP offer, its trickled
//! candidates, control messages, and datagrams to the node's WebRTC agent.
//! None of it may panic the node, whatever it is.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fogconnect::transport::rtc::agent::{
    AgentPoll, ControlMessage, LocalCandidate, RtcAgent, RtcIdentity, check_offer,
};
use libfuzzer_sys::fuzz_target;

/// A data channel offer as Chromium 156 makes it (captured).
const CHROMIUM_OFFER: &str = include_str!("../../host/src/transport/rtc/chromium_offer.sdp");

fn identity() -> &'static RtcIdentity {
    static IDENTITY: OnceLock<RtcIdentity> = OnceLock::new();
    IDENTITY.get_or_init(|| RtcIdentity::generate().expect("a DTLS certificate"))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = ControlMessage::decode(data);
    let _ = check_offer(&text);
    let node: SocketAddr = "192.0.2.20:7700".parse().expect("address");
    let browser: SocketAddr = "192.0.2.10:50000".parse().expect("address");
    let now = Instant::now();
    let local = [LocalCandidate::Host(node)];
    // The input as an offer; else the input as candidates and a datagram
    // for an agent that answered a real offer.
    let mut agent = match RtcAgent::answer(identity(), &text, &local, now) {
        Ok((agent, _)) => agent,
        Err(_) => match RtcAgent::answer(identity(), CHROMIUM_OFFER, &local, now) {
            Ok((agent, _)) => agent,
            Err(e) => panic!("the Chromium offer is refused: {e}"),
        },
    };
    for line in text.lines().take(64) {
        let _ = agent.add_remote_candidate(line);
    }
    agent.receive(now, browser, node, data);
    let _ = agent.write(data, true);
    let later = now + Duration::from_millis(50);
    agent.handle_timeout(later);
    for _ in 0..256 {
        if !matches!(agent.poll(), AgentPoll::Output(_)) {
            break;
        }
    }
    agent.close(true, &text);
});

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

/// A data channel offer as Chromium 156 makes it.
const CHROMIUM_OFFER: &str = "v=0\r\no=- 9017148853029627917 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:bgK1\r\na=ice-pwd:f1Mb+oFYk6mx4Cbf8mXQ7twD\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 1A:A9:05:59:11:9C:4A:2D:61:55:A3:7C:31:2A:79:39:64:16:0C:9F:76:79:EB:64:F9:3B:69:CA:AE:2C:4E:4F\r\n\
a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n";

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

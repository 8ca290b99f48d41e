//! Any offer a peer can send through signaling, with any datagrams from
//! any address, must run the connectivity checks to an end without a
//! panic, and the checks must never send addresses the peer has not
//! proven more than the stated multiple of what it sent, nor spray them.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fogconnect::nat::checks::{CheckAgent, CheckConfig, SocketRef};
use fogconnect::nat::consent::{AMPLIFICATION, Consent};
use fogconnect::nat::strategy;
use fogconnect_proto::signal::{CandidateKind, CheckCredentials, NatBehaviour, NatInfo, Offer, PortAllocation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    // The offer is the JSON up to the first NUL; what follows are
    // datagrams (length byte, then bytes) from fuzzed addresses.
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let Ok(text) = std::str::from_utf8(&rest[..split]) else { return };
    let Ok(offer) = serde_json::from_str::<Offer>(text) else { return };
    let offer_bytes = serde_json::to_vec(&offer).map_or(0, |json| json.len());
    let local = (flags & 1 == 1).then_some(NatInfo {
        mapping: NatBehaviour::EndpointIndependent,
        filtering: NatBehaviour::AddressAndPortDependent,
        allocation: PortAllocation::Preserving,
        udp_blocked: false,
    });
    let plan = strategy::plan(local.as_ref(), offer.nat.as_ref(), 256);
    let candidates: Vec<_> = offer.candidates.iter().filter(|c| c.kind != CandidateKind::Relayed).cloned().collect();
    let local_credentials = CheckCredentials { ufrag: "fuzz".into(), pwd: "fuzz-password-0123456789".into() };
    let remote_credentials = offer.checks.clone().unwrap_or(CheckCredentials { ufrag: "x".into(), pwd: "y".into() });
    let t0 = Instant::now();
    let config = CheckConfig { budget: Duration::from_secs(2), ..CheckConfig::default() };
    let aux = if matches!(plan, strategy::Plan::Listen { .. }) { 256 } else { 0 };
    let mut agent = CheckAgent::new(
        config,
        flags & 2 == 2,
        local_credentials,
        remote_credentials,
        &candidates,
        plan,
        aux,
        u64::from(flags),
        Consent::new(offer_bytes, None),
        t0,
    );
    let mut datagrams = rest.get(split + 1..).unwrap_or_default();
    let mut now = t0;
    let mut unproven_bytes = 0u64;
    let mut steps = 0;
    while agent.outcome().is_none() && steps < 100_000 {
        steps += 1;
        agent.handle_timeout(now);
        while let Some(transmit) = agent.poll_transmit() {
            // Nothing is ever proven here (no vouching, the fuzzed
            // datagrams cannot carry the local password), so every byte
            // counts.
            unproven_bytes += transmit.bytes.len() as u64;
        }
        if let Some((&len, tail)) = datagrams.split_first() {
            let len = usize::from(len).min(tail.len());
            let port = 1024 + u16::from(len as u8);
            let from = SocketAddr::from(([198, 51, 100, 7], port));
            agent.handle_datagram(SocketRef::Main, from, &tail[..len], now);
            datagrams = &tail[len..];
        }
        now = agent.poll_timeout().unwrap_or(now).max(now + Duration::from_millis(1));
    }
    assert!(agent.outcome().is_some(), "the checks did not end within their budget");
    assert_eq!(agent.stats().probes_sent, 0, "probes sprayed at an address nobody proved");
    assert!(
        unproven_bytes <= AMPLIFICATION * offer_bytes as u64,
        "{unproven_bytes} bytes sent for a {offer_bytes}-byte offer"
    );
});

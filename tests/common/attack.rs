//! What a hostile registered client sends, for the hardening tests and
//! benchmark.

use std::net::SocketAddr;

use fogconnect::signal::protocol::{
    Candidate, CandidateKind, CheckCredentials, ClientMessage, NatBehaviour, NatInfo, Offer, PortAllocation,
};
use fogconnect::{Convention, Transport};

/// A connect to `to` whose offer names `victim` as the caller's public
/// address and claims a symmetric NAT with random ports (a plan of
/// birthday probing at the victim), as a `connect` message.
pub fn forged_connect(to: &str, victim: SocketAddr, request_id: u64) -> String {
    let offer = Offer {
        fingerprint: "5a".repeat(32),
        candidates: vec![Candidate { kind: CandidateKind::ServerReflexive, addr: victim }],
        nat: Some(NatInfo {
            mapping: NatBehaviour::AddressAndPortDependent,
            filtering: NatBehaviour::AddressAndPortDependent,
            allocation: PortAllocation::Random,
            udp_blocked: false,
        }),
        checks: Some(CheckCredentials { ufrag: "evil".into(), pwd: "evil-password-0123456789".into() }),
    };
    let convention = Convention::new(Transport::Quic, 1).raw();
    ClientMessage::Connect { request_id, to: to.into(), convention, offer }.encode()
}

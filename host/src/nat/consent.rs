//! Consent to send, sans-IO: what a node may send to a peer's addresses
//! during the connectivity checks, so that nobody can aim the checks or the
//! port spraying at a third party.
//!
//! A peer names its candidate addresses itself, through signaling, so they
//! prove nothing. An address (its IP) counts as proven once
//! - the signaling server vouches for it: the peer's signaling connection
//!   comes from that IP, so the peer receives there (a TCP handshake), or
//! - an authenticated datagram of this connect (a check request or
//!   response with the session's credentials) arrived from it.
//!
//! To proven IPs the checks go as planned, port spraying included (the
//! peer asked for it, at its own address). To any other address the node
//! sends at most [`AMPLIFICATION`] times the bytes the peer has sent it
//! (its offer, then its authenticated datagrams), and never sprays: the
//! same rule as ICE's consent (RFC 7675) and Tailscale's disco, which
//! probe only endpoints the peer has shown it owns.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

/// Most bytes sent to addresses the peer has not proven, per byte the peer
/// sent this node during the connect.
pub const AMPLIFICATION: u64 = 3;

/// The send budget of one connect's checks.
#[derive(Debug, Clone, Default)]
pub struct Consent {
    proven: HashSet<IpAddr>,
    received: u64,
    unproven_sent: u64,
    withheld: u32,
}

impl Consent {
    /// The budget of a connect whose peer sent an offer of `offer_bytes`,
    /// with `vouched` the IP signaling saw the peer's connection come from.
    pub fn new(offer_bytes: usize, vouched: Option<IpAddr>) -> Self {
        Self { proven: vouched.into_iter().collect(), received: offer_bytes as u64, unproven_sent: 0, withheld: 0 }
    }

    /// Whether `ip` is proven.
    pub fn is_proven(&self, ip: IpAddr) -> bool {
        self.proven.contains(&ip)
    }

    /// An authenticated datagram of `bytes` arrived from `from`: its IP is
    /// proven and the budget grows.
    pub fn authenticated(&mut self, from: SocketAddr, bytes: usize) {
        self.proven.insert(from.ip());
        self.received += bytes as u64;
    }

    /// Whether a datagram of `bytes` may go to `to` now; counts it when it
    /// may and goes to an unproven address, counts a withheld one when not.
    pub fn may_send(&mut self, to: SocketAddr, bytes: usize) -> bool {
        if self.is_proven(to.ip()) {
            return true;
        }
        let after = self.unproven_sent + bytes as u64;
        if after > self.received.saturating_mul(AMPLIFICATION) {
            self.withheld += 1;
            return false;
        }
        self.unproven_sent = after;
        true
    }

    /// Bytes the peer sent: its offer and its authenticated datagrams.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes sent to addresses that were not proven when they were sent.
    pub fn unproven_sent(&self) -> u64 {
        self.unproven_sent
    }

    /// Datagrams not sent for want of budget.
    pub fn withheld(&self) -> u32 {
        self.withheld
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    #[test]
    fn unproven_addresses_get_at_most_the_factor_of_what_the_peer_sent() {
        let mut consent = Consent::new(400, None);
        let victim = a("192.0.2.7:4000");
        let sent = (0..100).filter(|_| consent.may_send(victim, 100)).count();
        assert_eq!(sent, 12, "400 bytes received allow 1,200 bytes");
        assert_eq!(consent.unproven_sent(), 1200);
        assert_eq!(consent.withheld(), 88);
    }

    #[test]
    fn a_vouched_or_authenticated_ip_is_proven_on_every_port() {
        let mut consent = Consent::new(400, Some("203.0.113.5".parse().expect("ip")));
        assert!((0..10_000).all(|port| consent.may_send(a(&format!("203.0.113.5:{}", 1024 + port)), 100)));
        assert_eq!(consent.unproven_sent(), 0);
        let peer = a("198.51.100.9:5000");
        assert!(!consent.is_proven(peer.ip()));
        consent.authenticated(a("198.51.100.9:6000"), 100);
        assert!(consent.is_proven(peer.ip()));
        assert_eq!(consent.received(), 500);
    }

    #[test]
    fn what_the_peer_sends_raises_the_budget_for_the_rest() {
        let mut consent = Consent::new(100, None);
        let lan = a("10.0.0.2:5000");
        assert!(consent.may_send(lan, 300));
        assert!(!consent.may_send(lan, 1));
        consent.authenticated(a("203.0.113.9:1"), 100);
        assert!(consent.may_send(lan, 300));
    }
}

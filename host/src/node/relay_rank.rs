//! Which relay of a fleet is nearest: each is asked at once, the answers'
//! round trips order them. A UDP relay gets a STUN Binding request (every
//! TURN server answers one without credentials, ours and coturn alike)
//! from a socket of its own, sent up to three times; a TCP or TLS relay
//! is timed by its TCP handshake. Relays that do not answer keep their
//! given order after the ones that did.
//!
//! The transports of one relay host are not told apart by their round
//! trips: the kernel answers a TCP handshake at once while the relay
//! process answers a STUN Binding when it is scheduled, so a TCP entry
//! often times nearer than the same host's UDP one, and QUIC over a UDP
//! allocation beats QUIC over TCP (no head-of-line blocking, one hop
//! fewer). A TCP or TLS entry counts as no nearer than the nearest UDP
//! entry of its host that answered, and among equals UDP comes first.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fogconnect_proto::stun;

use super::relay::RelayServer;
use crate::relay::url::TurnTransport;

/// Longest wait for the answers of a fleet.
pub(super) const RANK_LIMIT: Duration = Duration::from_millis(1500);
/// Binding requests sent to a UDP relay (one every third of the limit).
const PROBES: u32 = 3;

/// `servers` nearest first, with the round trip measured to each (none
/// for those that did not answer within [`RANK_LIMIT`]).
pub(super) async fn nearest_first(servers: &[RelayServer]) -> Vec<(RelayServer, Option<Duration>)> {
    if servers.len() < 2 {
        return servers.iter().map(|s| (s.clone(), None)).collect();
    }
    let probes = servers.iter().map(|server| async move {
        let rtt = tokio::time::timeout(RANK_LIMIT, round_trip(server)).await.ok().flatten();
        (server.clone(), rtt)
    });
    order(futures_util::future::join_all(probes).await)
}

/// Orders measured relays: those that answered before those that did
/// not; among them by round trip, a TCP or TLS entry's taken as no less
/// than that of the nearest UDP entry of its host that answered; then UDP
/// before TCP before TLS. Stable: ties keep the configured order.
fn order(measured: Vec<(RelayServer, Option<Duration>)>) -> Vec<(RelayServer, Option<Duration>)> {
    let nearest_udp = |host: &str| {
        measured
            .iter()
            .filter(|(s, _)| s.url.transport == TurnTransport::Udp && s.url.host == host)
            .filter_map(|(_, rtt)| *rtt)
            .min()
    };
    let keys: Vec<(bool, Duration, u8)> = measured
        .iter()
        .map(|(server, rtt)| {
            let distance = match (rtt, server.url.transport) {
                (Some(rtt), TurnTransport::Tcp | TurnTransport::Tls) => {
                    nearest_udp(&server.url.host).map_or(*rtt, |udp| udp.max(*rtt))
                }
                (rtt, _) => rtt.unwrap_or(Duration::MAX),
            };
            (rtt.is_none(), distance, transport_rank(server.url.transport))
        })
        .collect();
    let mut keyed: Vec<_> = keys.into_iter().zip(measured).collect();
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, entry)| entry).collect()
}

/// Preference among the transports of one host.
fn transport_rank(transport: TurnTransport) -> u8 {
    match transport {
        TurnTransport::Udp => 0,
        TurnTransport::Tcp => 1,
        TurnTransport::Tls => 2,
    }
}

async fn round_trip(server: &RelayServer) -> Option<Duration> {
    let addr = tokio::net::lookup_host(server.url.authority()).await.ok()?.next()?;
    match server.url.transport {
        TurnTransport::Udp => udp_round_trip(addr).await,
        TurnTransport::Tcp | TurnTransport::Tls => {
            let started = Instant::now();
            tokio::net::TcpStream::connect(addr).await.ok()?;
            Some(started.elapsed())
        }
    }
}

async fn udp_round_trip(addr: SocketAddr) -> Option<Duration> {
    let bind: SocketAddr =
        if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    let txid = stun::random_txid();
    let request = stun::binding_request(txid, &stun::BindingRequest::default()).ok()?;
    let started = Instant::now();
    let mut buf = [0u8; 1500];
    for _ in 0..PROBES {
        socket.send_to(&request, addr).await.ok()?;
        let wait = tokio::time::sleep(RANK_LIMIT / PROBES);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                received = socket.recv_from(&mut buf) => {
                    let (n, from) = received.ok()?;
                    if from == addr
                        && let Ok(answer) = stun::decode(&buf[..n])
                        && answer.txid() == Some(txid)
                    {
                        return Some(started.elapsed());
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(url: &str) -> RelayServer {
        RelayServer {
            url: url.parse().unwrap_or_else(|e| panic!("{e}")),
            username: String::new(),
            password: String::new(),
        }
    }

    fn urls(ranked: &[(RelayServer, Option<Duration>)]) -> Vec<String> {
        ranked.iter().map(|(s, _)| format!("{}?{:?}", s.url.authority(), s.url.transport)).collect()
    }

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn a_hosts_udp_entry_comes_first_even_when_its_tcp_handshake_was_quicker() {
        let ranked = order(vec![
            (relay("turn:198.51.100.1:3478?transport=tcp"), ms(1)),
            (relay("turns:198.51.100.1:5349"), ms(1)),
            (relay("turn:198.51.100.1:3478"), ms(2)),
        ]);
        assert_eq!(urls(&ranked), ["198.51.100.1:3478?Udp", "198.51.100.1:3478?Tcp", "198.51.100.1:5349?Tls"]);
    }

    #[test]
    fn nearer_hosts_come_first_whatever_their_transport() {
        let ranked = order(vec![
            (relay("turn:198.51.100.1:3478"), ms(80)),
            (relay("turn:198.51.100.2:3478?transport=tcp"), ms(5)),
            (relay("turn:198.51.100.1:3478?transport=tcp"), ms(81)),
        ]);
        assert_eq!(urls(&ranked), ["198.51.100.2:3478?Tcp", "198.51.100.1:3478?Udp", "198.51.100.1:3478?Tcp"]);
    }

    #[test]
    fn relays_on_one_host_and_different_ports_are_ranked_by_their_own_round_trips() {
        let ranked = order(vec![
            (relay("turn:198.51.100.1:3481"), ms(80)),
            (relay("turn:198.51.100.1:3480"), ms(1)),
            (relay("turn:198.51.100.1:3481?transport=tcp"), ms(1)),
        ]);
        assert_eq!(urls(&ranked), ["198.51.100.1:3480?Udp", "198.51.100.1:3481?Tcp", "198.51.100.1:3481?Udp"]);
    }

    #[test]
    fn a_udp_entry_that_did_not_answer_goes_after_its_hosts_tcp_entry() {
        // UDP blocked on this network: the TCP entry is the one to try.
        let ranked = order(vec![
            (relay("turn:198.51.100.1:3478"), None),
            (relay("turn:198.51.100.1:3478?transport=tcp"), ms(3)),
            (relay("turn:198.51.100.2:3478"), None),
        ]);
        assert_eq!(urls(&ranked), ["198.51.100.1:3478?Tcp", "198.51.100.1:3478?Udp", "198.51.100.2:3478?Udp"]);
    }
}

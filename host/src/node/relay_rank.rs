//! Which relay of a fleet is nearest: each is asked at once, the answers'
//! round trips order them. A UDP relay gets a STUN Binding request (every
//! TURN server answers one without credentials, ours and coturn alike)
//! from a socket of its own, sent up to three times; a TCP or TLS relay
//! is timed by its TCP handshake. Relays that do not answer keep their
//! given order after the ones that did.

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
    let mut ranked = futures_util::future::join_all(probes).await;
    // Stable: equal (or missing) round trips keep the configured order.
    ranked.sort_by_key(|(_, rtt)| rtt.unwrap_or(Duration::MAX));
    ranked
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

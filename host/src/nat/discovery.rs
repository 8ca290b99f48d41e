//! The RFC 5780 NAT behaviour discovery procedure, run from temporary UDP
//! sockets against a STUN server: the thin I/O layer around
//! [`Transaction`](super::transaction::Transaction) and the verdicts of
//! [`classify`](super::classify).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tokio::net::UdpSocket;

use super::NatError;
use super::classify::{NatReport, filtering_behaviour, mapping_behaviour, port_allocation};
use super::message::{self, Binding, BindingRequest, TxId};
use super::transaction::{RetransmitPolicy, Step, Transaction};
use crate::signal::protocol::{NatBehaviour, PortAllocation};

/// A response (or, for the hairpinning test, the own request coming back).
#[derive(Debug, Clone)]
pub struct Reply {
    /// What arrived.
    pub binding: Binding,
    /// Where it came from.
    pub from: SocketAddr,
}

/// Runs `requests` concurrently on `socket`, each with its own
/// retransmission schedule; returns each one's reply, or `None` when it
/// timed out. A received request with one of the transaction ids counts as
/// its reply (the hairpinning test sends to itself).
///
/// # Errors
/// [`NatError::Io`] when the socket fails.
pub async fn exchange(
    socket: &UdpSocket,
    requests: Vec<(TxId, SocketAddr, Vec<u8>)>,
    policy: RetransmitPolicy,
) -> Result<Vec<Option<Reply>>, NatError> {
    let now = Instant::now();
    let mut transactions: Vec<Transaction> =
        requests.into_iter().map(|(txid, to, bytes)| Transaction::new(txid, to, bytes, policy, now)).collect();
    let mut replies: Vec<Option<Reply>> = vec![None; transactions.len()];
    let mut finished = vec![false; transactions.len()];
    let mut buf = vec![0u8; message::MAX_STUN_MESSAGE];
    loop {
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        for (i, tx) in transactions.iter_mut().enumerate() {
            if finished[i] {
                continue;
            }
            loop {
                match tx.poll(now) {
                    Step::Send(bytes, to) => {
                        // A send error (e.g. no route) is like a lost datagram.
                        if let Err(e) = socket.send_to(bytes, to).await {
                            tracing::debug!(%to, "stun send failed: {e}");
                        }
                    }
                    Step::WaitUntil(at) => {
                        wake = Some(wake.map_or(at, |w| w.min(at)));
                        break;
                    }
                    Step::TimedOut | Step::Done => {
                        finished[i] = true;
                        break;
                    }
                }
            }
        }
        let Some(wake) = wake else { break };
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, from) = match received {
                    Ok(r) => r,
                    // ICMP errors surface here on some systems: keep waiting.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => return Err(NatError::Io(e.to_string())),
                };
                let Ok(binding) = message::decode(&buf[..len]) else { continue };
                let Some(txid) = binding.txid() else { continue };
                if let Some(i) = transactions.iter_mut().position(|tx| tx.on_response(&txid)) {
                    replies[i] = Some(Reply { binding, from });
                    finished[i] = true;
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    Ok(replies)
}

/// The source address the system uses toward `server`.
fn route_source(server: SocketAddr) -> Result<IpAddr, NatError> {
    let unspecified: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let probe = std::net::UdpSocket::bind(unspecified).map_err(|e| NatError::Io(e.to_string()))?;
    probe.connect(server).map_err(|e| NatError::Io(format!("no route to {server}: {e}")))?;
    Ok(probe.local_addr().map_err(|e| NatError::Io(e.to_string()))?.ip())
}

async fn bind(ip: IpAddr) -> Result<UdpSocket, NatError> {
    UdpSocket::bind(SocketAddr::new(ip, 0)).await.map_err(|e| NatError::Io(e.to_string()))
}

async fn ask(
    socket: &UdpSocket,
    to: SocketAddr,
    request: &BindingRequest<'_>,
    policy: RetransmitPolicy,
) -> Result<Option<Reply>, NatError> {
    let txid = message::random_txid();
    let bytes = message::binding_request(txid, request)?;
    Ok(exchange(socket, vec![(txid, to, bytes)], policy).await?.pop().flatten())
}

fn mapped(reply: &Option<Reply>) -> Option<SocketAddr> {
    match reply {
        Some(Reply { binding: Binding::Success { mapped, .. }, .. }) => *mapped,
        _ => None,
    }
}

/// Sends a binding request to the own public address `public`: the NAT
/// hairpins when the request comes back to the socket.
async fn hairpin(socket: &UdpSocket, public: SocketAddr, policy: RetransmitPolicy) -> Result<bool, NatError> {
    let txid = message::random_txid();
    let bytes = message::binding_request(txid, &BindingRequest::default())?;
    let replies = exchange(socket, vec![(txid, public, bytes)], policy).await?;
    Ok(replies.into_iter().flatten().any(|r| matches!(r.binding, Binding::Request { .. })))
}

/// Resolves `host:port` (IPv4 first).
///
/// # Errors
/// [`NatError::Resolve`] when the name does not resolve.
pub async fn resolve(server: &str) -> Result<SocketAddr, NatError> {
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host(server).await.map_err(|e| NatError::Resolve(format!("{server}: {e}")))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| NatError::Resolve(format!("{server}: no address")))
}

/// Classifies the NAT between this host and the STUN `server` (RFC 5780
/// section 4): mapping, filtering, port allocation, hairpinning.
///
/// Uses fresh sockets: one for the mapping and hairpinning tests, one that
/// talks only to the primary address for the filtering tests (any other
/// traffic would open the filter), and two more to sample port allocation.
///
/// # Errors
/// [`NatError::Io`] when no socket can be bound or there is no route to
/// the server. No answer at all is not an error: the report says UDP is
/// blocked.
pub async fn discover(server: SocketAddr, policy: RetransmitPolicy) -> Result<NatReport, NatError> {
    let ip = route_source(server)?;
    let mapping_socket = bind(ip).await?;
    let local = mapping_socket.local_addr().map_err(|e| NatError::Io(e.to_string()))?;
    let mut report = NatReport {
        local,
        public: None,
        mapping: NatBehaviour::Unknown,
        filtering: NatBehaviour::Unknown,
        allocation: PortAllocation::Unknown,
        hairpinning: None,
        udp_blocked: false,
        rfc5780: false,
    };
    let plain = BindingRequest::default();
    let first = ask(&mapping_socket, server, &plain, policy).await?;
    let (x1, other) = match &first {
        Some(Reply { binding: Binding::Success { mapped: Some(x1), other, .. }, .. }) => (*x1, *other),
        Some(Reply { binding: Binding::Error { code, reason, .. }, .. }) => {
            return Err(NatError::Server(format!("binding refused with {code} {reason}")));
        }
        _ => {
            report.udp_blocked = true;
            return Ok(report);
        }
    };
    report.public = Some(x1);
    // An OTHER-ADDRESS equal to the primary address is as good as none.
    let other = other.filter(|o| o.ip() != server.ip() && o.port() != server.port());
    let Some(other) = other else {
        report.hairpinning = Some(hairpin(&mapping_socket, x1, policy).await?);
        report.allocation = port_allocation(&[(local.port(), x1.port())]);
        return Ok(report);
    };
    report.rfc5780 = true;

    // Mapping: the alternate IP with the primary port, then both alternate.
    let x2 = mapped(&ask(&mapping_socket, SocketAddr::new(other.ip(), server.port()), &plain, policy).await?);
    let x3 = match x2 {
        Some(x2) if x2 != x1 => mapped(&ask(&mapping_socket, other, &plain, policy).await?),
        _ => None,
    };
    report.mapping = mapping_behaviour(x1, x2, x3);

    // Filtering (fresh socket that talks only to the primary address) and
    // hairpinning run together.
    let filtering = async {
        let socket = bind(ip).await?;
        let first = ask(&socket, server, &plain, policy).await?;
        let Some(own) = mapped(&first) else { return Ok((NatBehaviour::Unknown, None)) };
        let local_port = socket.local_addr().map_err(|e| NatError::Io(e.to_string()))?.port();
        let both_tx = message::random_txid();
        let port_tx = message::random_txid();
        let both = message::binding_request(both_tx, &BindingRequest { change_ip: true, change_port: true, ..plain })?;
        let port = message::binding_request(port_tx, &BindingRequest { change_port: true, ..plain })?;
        let replies = exchange(&socket, vec![(both_tx, server, both), (port_tx, server, port)], policy).await?;
        // Only a response from the changed address counts: a server that
        // ignores CHANGE-REQUEST answers from the primary one.
        let from_changed = |reply: &Option<Reply>, want_ip_change: bool| {
            reply.as_ref().is_some_and(|r| {
                matches!(r.binding, Binding::Success { .. })
                    && r.from.port() != server.port()
                    && (r.from.ip() != server.ip()) == want_ip_change
            })
        };
        let behaviour = filtering_behaviour(from_changed(&replies[0], true), Some(from_changed(&replies[1], false)));
        Ok::<_, NatError>((behaviour, Some((local_port, own.port()))))
    };
    let (filtering, hairpinning) = tokio::join!(filtering, hairpin(&mapping_socket, x1, policy));
    let (filtering, filter_sample) = filtering?;
    report.filtering = filtering;
    report.hairpinning = Some(hairpinning?);

    // Port allocation: new mappings in the order they were made.
    let mut samples = vec![(local.port(), x1.port())];
    if report.mapping == NatBehaviour::EndpointIndependent {
        samples.extend(filter_sample);
        for _ in 0..2 {
            let socket = bind(ip).await?;
            let port = socket.local_addr().map_err(|e| NatError::Io(e.to_string()))?.port();
            if let Some(public) = mapped(&ask(&socket, server, &plain, policy).await?) {
                samples.push((port, public.port()));
            }
        }
    } else {
        samples.extend(x2.map(|x| (local.port(), x.port())));
        samples.extend(x3.map(|x| (local.port(), x.port())));
    }
    report.allocation = port_allocation(&samples);
    Ok(report)
}

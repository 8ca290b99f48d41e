//! The RFC 5780 NAT behaviour discovery procedure, run from temporary UDP
//! sockets against a STUN server: the thin I/O layer around
//! [`Procedure`](super::procedure::Procedure).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tokio::net::UdpSocket;

use super::NatError;
use super::classify::NatReport;
use super::message;
use super::procedure::{ProbeSocket, Procedure};
use super::transaction::RetransmitPolicy;

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

/// Resolves a list of STUN servers, `host:port` separated by commas, to
/// every address of each (a name may have one of each family), in order.
///
/// # Errors
/// [`NatError::Resolve`] when a name does not resolve or the list is
/// empty.
pub async fn resolve_all(servers: &str) -> Result<Vec<SocketAddr>, NatError> {
    let mut all = Vec::new();
    for server in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addrs = tokio::net::lookup_host(server).await.map_err(|e| NatError::Resolve(format!("{server}: {e}")))?;
        all.extend(addrs);
    }
    if all.is_empty() {
        return Err(NatError::Resolve(format!("{servers:?}: no address")));
    }
    Ok(all)
}

/// Classifies the NAT between this host and the STUN `server` (RFC 5780
/// section 4): mapping, filtering, port allocation, hairpinning. Drives
/// [`Procedure`] over four fresh sockets (see its documentation).
///
/// # Errors
/// [`NatError::Io`] when no socket can be bound or there is no route to
/// the server; [`NatError::Server`] when the server refuses the binding.
/// No answer at all is not an error: the report says UDP is blocked.
pub async fn discover(server: SocketAddr, policy: RetransmitPolicy) -> Result<NatReport, NatError> {
    let ip = route_source(server)?;
    let mut sockets = Vec::with_capacity(ProbeSocket::ALL.len());
    let mut locals = [server; 4];
    for (i, local) in locals.iter_mut().enumerate() {
        let socket = bind(ip).await?;
        *local = socket.local_addr().map_err(|e| NatError::Io(e.to_string()))?;
        debug_assert_eq!(ProbeSocket::ALL[i].index(), i);
        sockets.push(socket);
    }
    let mut procedure = Procedure::new(server, locals, policy, Instant::now());
    let mut bufs = vec![vec![0u8; message::MAX_STUN_MESSAGE]; sockets.len()];
    loop {
        procedure.handle_timeout(Instant::now());
        while let Some(transmit) = procedure.poll_transmit() {
            // A send error (e.g. no route) is like a lost datagram.
            if let Err(e) = sockets[transmit.socket.index()].send_to(&transmit.bytes, transmit.to).await {
                tracing::debug!(to = %transmit.to, "stun send failed: {e}");
            }
        }
        if let Some(result) = procedure.result() {
            return result;
        }
        let wake = procedure.poll_timeout().unwrap_or_else(Instant::now);
        let [b0, b1, b2, b3] = &mut bufs[..] else { return Err(NatError::Io("socket buffers".into())) };
        let received = tokio::select! {
            r = sockets[0].recv_from(b0) => (ProbeSocket::Mapping, r, &b0[..]),
            r = sockets[1].recv_from(b1) => (ProbeSocket::Filtering, r, &b1[..]),
            r = sockets[2].recv_from(b2) => (ProbeSocket::Sample1, r, &b2[..]),
            r = sockets[3].recv_from(b3) => (ProbeSocket::Sample2, r, &b3[..]),
            _ = tokio::time::sleep_until(wake.into()) => continue,
        };
        match received {
            (socket, Ok((len, from)), buf) => procedure.handle_datagram(socket, from, &buf[..len], Instant::now()),
            // ICMP errors surface here on some systems: keep waiting.
            (_, Err(e), _) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            (_, Err(e), _) => return Err(NatError::Io(e.to_string())),
        }
    }
}

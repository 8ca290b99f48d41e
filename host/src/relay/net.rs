//! The TURN server on the network: the tokio driver of
//! [`TurnServerCore`](super::server::TurnServerCore). Clients come over UDP
//! or TCP on the same port (TCP for networks that block UDP), and over TLS
//! on another port when given a certificate; an allocation over TCP or TLS
//! ends with its connection. Peers are relayed over UDP, one relay socket
//! per allocation.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RelayError;
use super::server::{Client, ClientTransport, Output, ServerStats, TurnServerConfig, TurnServerCore};
use crate::limits::{DescriptorBudget, PerIpConnections, accept_with_backoff};
use crate::transport::socket::{canonical, in_family_of};
use fogconnect_proto::turn::RelayFamily;

/// Datagrams from peers waiting for the core, at most.
const PEER_QUEUE: usize = 4096;

/// Datagrams taken per wake-up beyond the first.
const BATCH: usize = 64;

/// Descriptors kept back from clients and relay sockets for the server.
const RESERVED_DESCRIPTORS: u64 = 64;

/// How often TCP clients without an allocation are looked for.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Frames queued for one TCP client; a client that reads slower loses
/// frames, as over UDP.
const TCP_WRITE_QUEUE: usize = 1024;

/// What the TCP connections tell the serving loop.
enum TcpEvent {
    /// A connection opened (accepted at that instant, handshake done);
    /// frames for it go to this writer.
    Opened(SocketAddr, mpsc::Sender<Vec<u8>>, Instant),
    /// One frame (STUN message or ChannelData) from a client.
    Frame(SocketAddr, Vec<u8>),
    /// The connection ended.
    Closed(SocketAddr),
}

/// Sends without a scheduler round trip when the socket has room.
async fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    let result = match socket.try_send_to(bytes, to) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => socket.send_to(bytes, to).await,
        other => other,
    };
    if let Err(e) = result {
        tracing::debug!(%to, "turn send: {e}");
    }
}

/// Where and with which certificate to serve TURN over TLS.
#[derive(Debug, Clone)]
pub struct TlsListen {
    /// TCP address for TLS clients (5349 is the `turns:` default).
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
}

/// A running TURN server.
#[derive(Debug)]
pub struct TurnServer {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// The core's counters, published every [`SWEEP_INTERVAL`].
    stats: tokio::sync::watch::Receiver<ServerStats>,
}

struct RelaySocket {
    io: Arc<UdpSocket>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Binds UDP and TCP on the same port of `listen`. With port 0 the UDP
/// socket's ephemeral port may already be some TCP socket's (ephemeral
/// ranges are shared): another port is tried then, a few times.
async fn bind_udp_and_tcp(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), RelayError> {
    const ATTEMPTS: usize = 16;
    for _ in 0..ATTEMPTS {
        let socket = UdpSocket::bind(listen).await.map_err(|e| RelayError::Io(format!("cannot bind {listen}: {e}")))?;
        let addr = socket.local_addr().map_err(|e| RelayError::Io(e.to_string()))?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((socket, tcp)),
            Err(e) if listen.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(RelayError::Io(format!("cannot bind TCP {addr}: {e}"))),
        }
    }
    Err(RelayError::Io(format!("no port free for both UDP and TCP on {} after {ATTEMPTS} tries", listen.ip())))
}

impl TurnServer {
    /// Listens on `listen`; relay sockets are opened on `relay_ips` (the
    /// addresses peers reach, which relayed addresses carry: at most one
    /// per family; with one of each, clients choose the family of their
    /// relayed address, RFC 6156).
    ///
    /// # Errors
    /// [`RelayError::Io`] when the socket cannot be bound, or the relay
    /// addresses are none, unspecified or two of one family.
    pub async fn start(listen: SocketAddr, relay_ips: &[IpAddr], config: TurnServerConfig) -> Result<Self, RelayError> {
        Self::start_with_tls(listen, relay_ips, config, None).await
    }

    /// Like [`TurnServer::start`], and with `tls` also serves TURN over TLS
    /// (`turns:`) on its address.
    ///
    /// # Errors
    /// As [`TurnServer::start`], and [`RelayError::Io`] when the TLS
    /// address cannot be bound or the certificate or key cannot be used.
    pub async fn start_with_tls(
        listen: SocketAddr,
        relay_ips: &[IpAddr],
        mut config: TurnServerConfig,
        tls: Option<TlsListen>,
    ) -> Result<Self, RelayError> {
        let relay_ips = RelayIps::new(relay_ips)?;
        config.relay_families = relay_ips.families();
        let (socket, tcp) = bind_udp_and_tcp(listen).await?;
        let addr = socket.local_addr().map_err(|e| RelayError::Io(e.to_string()))?;
        let mut nonce_secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce_secret)
            .map_err(|_| RelayError::Io("no system randomness".into()))?;
        // Half of the descriptors stay for relay sockets: idle TCP clients
        // must not leave UDP allocations without one.
        let budget = DescriptorBudget::current(RESERVED_DESCRIPTORS);
        let tcp_cap = budget.connections(config.max_tcp_clients.saturating_mul(2)) / 2;
        let connections = PerIpConnections::new(config.max_tcp_clients_per_ip, tcp_cap.max(1));
        let handshake_timeout = config.tcp_auth_timeout;
        tracing::debug!(tcp_cap, per_ip = config.max_tcp_clients_per_ip, descriptors = ?budget.limit, "relay limits");
        let core = TurnServerCore::new(config, &nonce_secret);
        let stop = CancellationToken::new();
        let (tcp_tx, tcp_rx) = mpsc::channel(PEER_QUEUE);
        let tls = match tls {
            Some(tls) => {
                let config = crate::transport::trust::server_config(&tls.cert, &tls.key).map_err(RelayError::Io)?;
                let listener = TcpListener::bind(tls.listen)
                    .await
                    .map_err(|e| RelayError::Io(format!("cannot bind TLS {}: {e}", tls.listen)))?;
                let tls_addr = listener.local_addr().map_err(|e| RelayError::Io(e.to_string()))?;
                Some((listener, tokio_rustls::TlsAcceptor::from(Arc::new(config)), tls_addr))
            }
            None => None,
        };
        let tls_addr = tls.as_ref().map(|(_, _, addr)| *addr);
        let accept =
            tokio::spawn(accept_tcp(tcp, None, tcp_tx.clone(), connections.clone(), handshake_timeout, stop.clone()));
        let accept_tls = tls.map(|(listener, acceptor, _)| {
            tokio::spawn(accept_tcp(listener, Some(acceptor), tcp_tx, connections, handshake_timeout, stop.clone()))
        });
        let (stats_tx, stats) = tokio::sync::watch::channel(ServerStats::default());
        let serving = tokio::spawn(serve(socket, relay_ips, core, stop.clone(), tcp_rx, stats_tx));
        let task = tokio::spawn(async move {
            let _ = serving.await;
            accept.abort();
            if let Some(accept_tls) = accept_tls {
                accept_tls.abort();
            }
        });
        Ok(Self { addr, tls_addr, stop, task, stats })
    }

    /// The server's counters (at most a second old).
    pub fn stats(&self) -> ServerStats {
        self.stats.borrow().clone()
    }

    /// A renderer of the server's Prometheus text exposition, for a
    /// metrics endpoint.
    pub fn metrics_renderer(&self) -> crate::metrics::exporter::Render {
        let stats = self.stats.clone();
        std::sync::Arc::new(move || super::metrics::render(&stats.borrow()))
    }

    /// The listening address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS listening address, when serving TLS.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Stops serving; every allocation ends.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The addresses relay sockets are opened on, one per family at most.
#[derive(Debug, Clone, Copy)]
struct RelayIps {
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
}

impl RelayIps {
    fn new(ips: &[IpAddr]) -> Result<Self, RelayError> {
        let mut relay = Self { v4: None, v6: None };
        for &ip in ips {
            if ip.is_unspecified() {
                return Err(RelayError::Io(format!(
                    "relay address {ip} is unspecified: give the IP peers reach the relay at"
                )));
            }
            let slot = if ip.is_ipv4() { &mut relay.v4 } else { &mut relay.v6 };
            if let Some(other) = slot.replace(ip) {
                return Err(RelayError::Io(format!("two relay addresses of one family: {other} and {ip}")));
            }
        }
        if relay.v4.is_none() && relay.v6.is_none() {
            return Err(RelayError::Io("no relay address: give the IP peers reach the relay at".into()));
        }
        Ok(relay)
    }

    fn families(self) -> Vec<RelayFamily> {
        [(self.v4, RelayFamily::V4), (self.v6, RelayFamily::V6)]
            .into_iter()
            .filter_map(|(ip, family)| ip.map(|_| family))
            .collect()
    }

    fn of(self, family: RelayFamily) -> Option<IpAddr> {
        match family {
            RelayFamily::V4 => self.v4,
            RelayFamily::V6 => self.v6,
        }
    }
}

async fn serve(
    socket: UdpSocket,
    relay_ips: RelayIps,
    mut core: TurnServerCore,
    stop: CancellationToken,
    mut tcp_rx: mpsc::Receiver<TcpEvent>,
    stats: tokio::sync::watch::Sender<ServerStats>,
) {
    let (peer_tx, mut peer_rx) = mpsc::channel::<(SocketAddr, SocketAddr, Vec<u8>)>(PEER_QUEUE);
    let mut relays: HashMap<SocketAddr, RelaySocket> = HashMap::new();
    // A socket on [::] also serves IPv4 clients, which the core knows by
    // their plain address.
    let socket_v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    // Writers of the TCP clients and when they were accepted.
    let mut tcp_writers: HashMap<SocketAddr, (mpsc::Sender<Vec<u8>>, Instant)> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = core.poll_timeout().unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sweep.tick() => {
                stats.send_replace(core.stats());
                // TCP clients that have not authenticated (no allocation) in
                // time are closed: dropping the writer ends the connection.
                let limit = core.config().tcp_auth_timeout;
                let now = Instant::now();
                tcp_writers.retain(|&addr, (_, opened)| {
                    now.duration_since(*opened) < limit || core.has_allocation(Client::tcp(addr))
                });
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    core.handle_client(Client::udp(canonical(from)), &buf[..len], Instant::now(), unix_time());
                }
                Err(e) => tracing::debug!("turn recv: {e}"),
            },
            Some((relay, peer, data)) = peer_rx.recv() => core.handle_peer(relay, peer, &data, Instant::now()),
            Some(event) = tcp_rx.recv() => match event {
                TcpEvent::Opened(addr, writer, accepted) => {
                    tcp_writers.insert(addr, (writer, accepted));
                }
                TcpEvent::Frame(addr, frame) => {
                    core.handle_client(Client::tcp(addr), &frame, Instant::now(), unix_time());
                }
                TcpEvent::Closed(addr) => {
                    tcp_writers.remove(&addr);
                    core.client_gone(Client::tcp(addr));
                }
            },
            _ = tokio::time::sleep_until(wake.into()) => core.handle_timeout(Instant::now()),
        }
        // Take what else is ready without going back to the scheduler.
        let now = Instant::now();
        let unix = unix_time();
        for _ in 0..BATCH {
            let mut progressed = false;
            if let Ok((len, from)) = socket.try_recv_from(&mut buf) {
                core.handle_client(Client::udp(canonical(from)), &buf[..len], now, unix);
                progressed = true;
            }
            if let Ok((relay, peer, data)) = peer_rx.try_recv() {
                core.handle_peer(relay, peer, &data, now);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        while let Some(output) = core.poll_output() {
            match output {
                Output::ToClient { client, bytes } => match client.transport {
                    ClientTransport::Udp => send(&socket, &bytes, in_family_of(socket_v6, client.addr)).await,
                    ClientTransport::Tcp => {
                        if let Some((writer, _)) = tcp_writers.get(&client.addr) {
                            let _ = writer.try_send(bytes);
                        }
                    }
                },
                Output::ToPeer { relay, peer, bytes } => {
                    if let Some(relay) = relays.get(&relay) {
                        send(&relay.io, &bytes, peer).await;
                    }
                }
                Output::OpenRelay { client, even, reserve_next, family } => {
                    let opened = match relay_ips.of(family) {
                        Some(ip) if reserve_next => open_relay_pair(ip, peer_tx.clone()).await,
                        Some(ip) => open_relay(ip, even, peer_tx.clone()).await.map(|relay| (relay, None)),
                        None => Err(format!("no relay address of family {family:?}")),
                    };
                    let result = opened.map(|((addr, relay), next)| {
                        relays.insert(addr, relay);
                        let next = next.map(|(next, socket)| {
                            // Open from now on: what reaches it before the
                            // allocation that claims it is dropped.
                            relays.insert(next, socket);
                            next
                        });
                        (addr, next)
                    });
                    core.relay_opened_reserving(client, result, Instant::now());
                }
                Output::CloseRelay { relay } => {
                    relays.remove(&relay);
                }
            }
        }
    }
}

/// A relay socket on an even port of `ip` and one on the port after it,
/// reserved (EVEN-PORT with R): pairs whose second port is taken are
/// closed again, at most 64 times.
async fn open_relay_pair(
    ip: IpAddr,
    to_core: mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>,
) -> Result<((SocketAddr, RelaySocket), Option<(SocketAddr, RelaySocket)>), String> {
    for _ in 0..64 {
        let (addr, relay) = open_relay(ip, true, to_core.clone()).await?;
        let Some(next_port) = addr.port().checked_add(1) else { continue };
        if let Ok(next) = bind_relay(SocketAddr::new(ip, next_port), to_core.clone()).await {
            return Ok(((addr, relay), Some(next)));
        }
    }
    Err("no free pair of ports found".into())
}

/// Opens a relay socket on `ip` (an even port when `even`: the system
/// picks ports, so odd ones are closed again, at most 64 times).
async fn open_relay(
    ip: IpAddr,
    even: bool,
    to_core: mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>,
) -> Result<(SocketAddr, RelaySocket), String> {
    let mut attempts = 0;
    let (io, addr) = loop {
        let io = UdpSocket::bind(SocketAddr::new(ip, 0)).await.map_err(|e| e.to_string())?;
        let addr = io.local_addr().map_err(|e| e.to_string())?;
        attempts += 1;
        if !even || addr.port() % 2 == 0 {
            break (Arc::new(io), addr);
        }
        if attempts >= 64 {
            return Err("no even port found".into());
        }
    };
    Ok((addr, relay_socket(io, addr, to_core)))
}

/// Opens a relay socket on exactly `addr`.
async fn bind_relay(
    addr: SocketAddr,
    to_core: mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>,
) -> Result<(SocketAddr, RelaySocket), String> {
    let io = Arc::new(UdpSocket::bind(addr).await.map_err(|e| e.to_string())?);
    Ok((addr, relay_socket(io, addr, to_core)))
}

/// A relay socket on `io` (bound to `addr`) whose datagrams go to the core.
fn relay_socket(
    io: Arc<UdpSocket>,
    addr: SocketAddr,
    to_core: mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>,
) -> RelaySocket {
    let reader_io = io.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            match reader_io.recv_from(&mut buf).await {
                Ok((len, peer)) => {
                    // A full queue drops, like a congested link.
                    let _ = to_core.try_send((addr, peer, buf[..len].to_vec()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(_) => return,
            }
        }
    });
    RelaySocket { io, reader }
}

/// Accepts TCP clients (TLS ones with `tls`) until stopped, within the
/// connection caps of `connections` (shared by every listener); a TLS
/// handshake must end within `handshake_timeout`.
async fn accept_tcp(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    events: mpsc::Sender<TcpEvent>,
    connections: PerIpConnections,
    handshake_timeout: std::time::Duration,
    stop: CancellationToken,
) {
    while let Some((stream, addr)) = accept_with_backoff(&listener, &stop, "relay").await {
        let slot = match connections.admit(addr.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(%addr, "TURN TCP client refused: {refusal}");
                continue; // Dropping the stream closes it.
            }
        };
        let (events, stop, tls) = (events.clone(), stop.clone(), tls.clone());
        let accepted = Instant::now();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            let serve = async {
                match tls {
                    None => stream_client(stream, addr, accepted, &events).await,
                    Some(tls) => match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => stream_client(stream, addr, accepted, &events).await,
                        Ok(Err(e)) => tracing::debug!(%addr, "TURN TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%addr, "TURN TLS handshake timed out"),
                    },
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve => {}
            }
            let _ = events.send(TcpEvent::Closed(addr)).await;
        });
    }
}

/// Reads frames from one TCP or TLS client and writes the frames for it,
/// until either side ends or the client sends something that is not TURN.
async fn stream_client<S>(stream: S, addr: SocketAddr, accepted: Instant, events: &mpsc::Sender<TcpEvent>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_WRITE_QUEUE);
    if events.send(TcpEvent::Opened(addr, tx, accepted)).await.is_err() {
        return;
    }
    let write = async move {
        while let Some(mut frame) = rx.recv().await {
            // ChannelData over TCP is padded to a multiple of 4 bytes.
            if frame.first().is_some_and(|b| (0x40..=0x7F).contains(b)) {
                frame.resize(frame.len().next_multiple_of(4), 0);
            }
            // TLS holds written bytes until flushed.
            if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
    };
    let read = async {
        let mut stream_buf: Vec<u8> = Vec::with_capacity(8192);
        let mut chunk = vec![0u8; 65_536];
        loop {
            loop {
                match fogconnect_proto::turn::tcp_frame_len(&stream_buf) {
                    Ok(Some(len)) => {
                        let frame: Vec<u8> = stream_buf.drain(..len).collect();
                        if events.send(TcpEvent::Frame(addr, frame)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%addr, "closing TURN TCP client: {e}");
                        return;
                    }
                }
            }
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => stream_buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::select! {
        _ = write => {}
        _ = read => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn udp_and_tcp_listen_on_one_port() -> Result<(), RelayError> {
        let io = |e: std::io::Error| RelayError::Io(e.to_string());
        let (udp, tcp) = bind_udp_and_tcp(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        assert_eq!(udp.local_addr().map_err(io)?.port(), tcp.local_addr().map_err(io)?.port());
        // A port given explicitly is never swapped for another: its TCP
        // side taken is an error.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
        let port = taken.local_addr().map_err(io)?.port();
        match bind_udp_and_tcp(SocketAddr::from(([127, 0, 0, 1], port))).await {
            Err(RelayError::Io(message)) => assert!(message.contains("cannot bind TCP"), "{message}"),
            other => panic!("expected the taken TCP port to be an error, got {:?}", other.map(|_| ())),
        }
        Ok(())
    }
}

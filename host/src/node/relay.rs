//! The node's TURN allocation: one allocation on the nearest relay of the
//! fleet that grants one (round trips measured at each start, see
//! `relay_rank`), kept up (refreshed, re-made after a loss with backoff), over
//! UDP from the node's own socket or over TCP/TLS for networks that block
//! UDP. Its relayed address is offered to peers as a candidate, and the
//! socket facade carries QUIC through it: peers that reach this node
//! through the relay are given presented addresses of their own (see
//! [`presented_relay_addr`]), so quinn sees them as ordinary remotes and a
//! later move to a direct path is a QUIC path migration.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::nat::transaction::RetransmitPolicy;
use crate::relay::client::{TurnClient, TurnConfig, TurnEvent};
use crate::relay::url::{TurnTransport, TurnUrl};
use crate::signal::protocol::RelayCredentials;
use crate::transport::socket::{FogSocket, PacketKind, RelayPort, Route, SideDatagram, classify, presented_relay_addr};
use fogconnect_proto::turn::tcp_frame_len;

/// A TURN server a node may allocate on, with its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayServer {
    /// Where and how to reach it.
    pub url: TurnUrl,
    /// User name (time-limited ones look like `<expiry>:<id>`).
    pub username: String,
    /// Password.
    pub password: String,
}

impl RelayServer {
    /// The relay described by credentials from signaling.
    ///
    /// # Errors
    /// The URL is not a TURN URL.
    pub fn from_credentials(credentials: &RelayCredentials) -> Result<Self, crate::relay::url::TurnUrlError> {
        Ok(Self {
            url: credentials.url.parse()?,
            username: credentials.username.clone(),
            password: credentials.password.clone(),
        })
    }
}

/// Where the node's allocation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayStatus {
    /// No relay configured (yet).
    Unconfigured,
    /// Asking a relay for an allocation.
    Allocating,
    /// Peers reach this node at `relayed` through `url`.
    Allocated {
        /// The relay.
        url: TurnUrl,
        /// The relayed address (offered as a candidate).
        relayed: SocketAddr,
    },
    /// The last attempt failed; another follows after a backoff.
    Failed(String),
}

enum Command {
    /// Let these IPs send to this node through the relay; tell `done`
    /// when the relay answered for all of them.
    Permit(Vec<IpAddr>, Option<oneshot::Sender<()>>),
    /// QUIC quinn sends to `presented` goes to `peer` through the
    /// allocation (this node cannot send UDP itself), and the peer's
    /// answers are presented as from `presented`.
    Dial {
        /// The peer's address as the relay sees it.
        peer: SocketAddr,
        /// The address quinn knows the peer by.
        presented: SocketAddr,
    },
    /// Check the allocation still exists (a path through the relay went
    /// silent); tell `done` when the relay answered.
    Verify(Option<oneshot::Sender<()>>),
}

/// Allocation lifetime asked for, in seconds.
const LIFETIME: u32 = 600;
/// First wait after a failed allocation; doubles up to [`BACKOFF_MAX`].
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An allocation lost after living this long is made again at once.
const LIVED_FOR_QUICK_RETRY: Duration = Duration::from_secs(1);
/// Longest wait for a TCP or TLS connection to a relay.
const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Over a stream a request is sent once and its answer awaited this long.
const STREAM_ANSWER_WAIT: Duration = Duration::from_secs(10);
/// Peers remembered with their presented addresses before the ones
/// whose links ended are forgotten.
const MAX_PRESENTED: usize = 4096;
/// Largest buffered partial message read from a TCP/TLS relay.
const STREAM_BUFFER: usize = 128 * 1024;

/// The node's handle on its allocation actor.
pub(super) struct RelayAgent {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<RelayStatus>,
}

impl RelayAgent {
    /// Starts the actor: it allocates on the nearest of `servers` that
    /// grants one (the list may change, e.g. at re-registration), moving
    /// to the next nearest when the allocation is lost, until `shutdown`.
    pub(super) fn start(
        socket: Arc<FogSocket>,
        servers: watch::Receiver<Vec<RelayServer>>,
        ca_file: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Self {
        let (commands, commands_rx) = mpsc::channel(256);
        let (status_tx, status) = watch::channel(RelayStatus::Unconfigured);
        let actor = Actor { socket, servers, ca_file, commands: commands_rx, status: status_tx, shutdown };
        tokio::spawn(actor.run());
        Self { commands, status }
    }

    /// Where the allocation stands.
    pub(super) fn status(&self) -> watch::Receiver<RelayStatus> {
        self.status.clone()
    }

    /// The relayed address, when allocated.
    pub(super) fn relayed(&self) -> Option<SocketAddr> {
        match &*self.status.borrow() {
            RelayStatus::Allocated { relayed, .. } => Some(*relayed),
            _ => None,
        }
    }

    /// Waits up to `limit` for the allocation to exist or fail.
    pub(super) async fn settled(&self, limit: Duration) {
        let mut status = self.status.clone();
        let settled = status.wait_for(|s| matches!(s, RelayStatus::Allocated { .. } | RelayStatus::Failed(_)));
        let _ = tokio::time::timeout(limit, settled).await;
    }

    /// Lets `ips` send to this node through the relay.
    pub(super) fn permit(&self, ips: Vec<IpAddr>) {
        if !ips.is_empty() {
            let _ = self.commands.try_send(Command::Permit(ips, None));
        }
    }

    /// Lets `ips` send to this node through the relay and waits, at most
    /// `limit`, until the relay has installed (or refused) the
    /// permissions: a peer that sends at once is not dropped.
    pub(super) async fn permit_now(&self, ips: Vec<IpAddr>, limit: Duration) {
        if ips.is_empty() || self.relayed().is_none() {
            return;
        }
        let (done, answered) = oneshot::channel();
        if self.commands.try_send(Command::Permit(ips, Some(done))).is_ok() {
            let _ = tokio::time::timeout(limit, answered).await;
        }
    }

    /// Carries the QUIC quinn sends to `presented` to `peer` through the
    /// allocation.
    pub(super) async fn dial(&self, peer: SocketAddr, presented: SocketAddr) {
        let _ = self.commands.send(Command::Dial { peer, presented }).await;
    }

    /// Asks the relay whether the allocation still exists.
    pub(super) fn verify(&self) {
        let _ = self.commands.try_send(Command::Verify(None));
    }

    /// Asks the relay whether the allocation still exists and waits, at
    /// most `limit`, until it is confirmed, or made again after a loss.
    pub(super) async fn verified(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        if self.relayed().is_some() {
            let (done, answered) = oneshot::channel();
            if self.commands.try_send(Command::Verify(Some(done))).is_ok() {
                let _ = tokio::time::timeout_at(deadline, answered).await;
            }
        }
        let mut status = self.status.clone();
        let allocated = status.wait_for(|s| matches!(s, RelayStatus::Allocated { .. }));
        let _ = tokio::time::timeout_at(deadline, allocated).await;
    }
}

struct Actor {
    socket: Arc<FogSocket>,
    servers: watch::Receiver<Vec<RelayServer>>,
    ca_file: Option<PathBuf>,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<RelayStatus>,
    shutdown: CancellationToken,
}

/// A byte stream to a relay (TCP or TLS).
trait RelayStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> RelayStream for T {}

/// How the allocation's messages travel.
enum Channel {
    /// From the node's socket; the relay's datagrams come through the
    /// facade.
    Udp { server: SocketAddr },
    /// A TCP or TLS connection.
    Stream { stream: Box<dyn RelayStream>, buffer: Vec<u8> },
}

impl Actor {
    async fn run(mut self) {
        let mut backoff = BACKOFF_INITIAL;
        loop {
            let servers = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                servers = self.servers.wait_for(|s| !s.is_empty()) => match servers {
                    Ok(servers) => servers.clone(),
                    Err(_) => return,
                },
            };
            let ranked = super::relay_rank::nearest_first(&servers).await;
            if ranked.len() > 1 {
                let order: Vec<String> = ranked
                    .iter()
                    .map(|(s, rtt)| match rtt {
                        Some(rtt) => format!("{} {:.1} ms", s.url, rtt.as_secs_f64() * 1e3),
                        None => format!("{} no answer", s.url),
                    })
                    .collect();
                tracing::info!("relays, nearest first: {}", order.join(", "));
            }
            let mut failures = Vec::new();
            let mut lost = false;
            for (server, _) in &ranked {
                self.status.send_replace(RelayStatus::Allocating);
                let (reason, lived) = self.allocation(server).await;
                if self.shutdown.is_cancelled() {
                    return;
                }
                tracing::warn!(url = %server.url, "relay allocation ended: {reason}");
                failures.push(format!("{}: {reason}", server.url));
                if let Some(lived) = lived {
                    // A lost allocation (e.g. the relay restarted): start
                    // over with the preferred relay, at once if it had
                    // lived a while (one lost at once waits like a failure).
                    lost = lived >= LIVED_FOR_QUICK_RETRY;
                    break;
                }
            }
            self.status.send_replace(RelayStatus::Failed(failures.join("; ")));
            if lost {
                backoff = BACKOFF_INITIAL;
                continue;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
                // New credentials (re-registration): try them at once.
                _ = self.servers.changed() => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Opens the channel to the relay.
    async fn connect(&self, url: &TurnUrl) -> Result<(Channel, SocketAddr), String> {
        let server = tokio::net::lookup_host(url.authority())
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", url.authority()))?
            .find(|a| {
                (url.transport.is_stream() || self.socket.reaches(*a))
                    && crate::transport::socket::host_has_family_of(a.ip())
            })
            .ok_or_else(|| format!("{} has no address this node can reach", url.host))?;
        if url.transport == TurnTransport::Udp {
            return Ok((Channel::Udp { server }, server));
        }
        let tcp = tokio::time::timeout(STREAM_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(server))
            .await
            .map_err(|_| format!("TCP connect to {server} timed out"))?
            .map_err(|e| format!("TCP connect to {server}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn RelayStream> = if url.transport == TurnTransport::Tls {
            let config = crate::transport::trust::client_config(self.ca_file.as_deref())?;
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| format!("{} is not a TLS server name: {e}", url.host))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
            let stream = tokio::time::timeout(STREAM_CONNECT_TIMEOUT, tls.connect(name, tcp))
                .await
                .map_err(|_| format!("TLS handshake with {server} timed out"))?
                .map_err(|e| format!("TLS handshake with {server}: {e}"))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        Ok((Channel::Stream { stream, buffer: Vec::new() }, server))
    }

    /// Allocates on `server` and serves the allocation until it ends;
    /// returns why it ended and, if the relay granted it, how long it
    /// lived.
    async fn allocation(&mut self, server: &RelayServer) -> (String, Option<Duration>) {
        let (mut channel, addr) = match self.connect(&server.url).await {
            Ok(c) => c,
            Err(e) => return (e, None),
        };
        let retransmit = if server.url.transport.is_stream() {
            RetransmitPolicy { rto: STREAM_ANSWER_WAIT, max_sends: 1, last_wait: 1 }
        } else {
            RetransmitPolicy::DISCOVERY
        };
        let config = TurnConfig {
            server: addr,
            username: server.username.clone(),
            password: server.password.clone(),
            lifetime: LIFETIME,
            retransmit,
            transport: server.url.transport,
            family: None,
        };
        let port = self.socket.attach_relay(match channel {
            Channel::Udp { server } => Some(server),
            Channel::Stream { .. } => None,
        });
        let mut session = Session {
            client: TurnClient::new(config, Instant::now()),
            socket: self.socket.clone(),
            url: server.url.clone(),
            presented: HashMap::new(),
            next_index: 0,
            allocated_at: None,
            permit_waiters: Vec::new(),
            verify_waiters: Vec::new(),
            relayed: None,
        };
        let reason = self.serve(&mut session, &mut channel, port).await;
        self.socket.detach_relay();
        (reason, session.allocated_at.map(|at| at.elapsed()))
    }

    async fn serve(&mut self, session: &mut Session, channel: &mut Channel, mut port: RelayPort) -> String {
        let mut read_buf = vec![0u8; 64 * 1024];
        let over_socket = matches!(channel, Channel::Udp { .. });
        loop {
            if let Err(e) = session.flush(channel).await {
                return e;
            }
            if let Some(reason) = session.events(&self.status) {
                return reason;
            }
            session.answer_permit_waiters();
            session.answer_verify_waiters();
            let wake = session.client.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let now = Instant::now();
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    session.client.close();
                    let _ = session.flush(channel).await;
                    return "node shutting down".into();
                }
                _ = tokio::time::sleep_until(wake.into()) => session.client.handle_timeout(Instant::now()),
                command = self.commands.recv() => match command {
                    Some(command) => session.command(command, now),
                    None => return "node gone".into(),
                },
                outgoing = port.to_peers.recv() => match outgoing {
                    Some((peer, data)) => session.send(peer, &data, now),
                    None => return "socket gone".into(),
                },
                incoming = port.from_server.recv(), if over_socket => match incoming {
                    Some(datagram) => session.client.handle_datagram(&datagram, now),
                    None => return "socket gone".into(),
                },
                read = read_stream(channel, &mut read_buf) => match read {
                    Ok(frames) => {
                        for frame in frames {
                            session.client.handle_datagram(&frame, Instant::now());
                        }
                    }
                    Err(e) => return e,
                },
            }
        }
    }
}

/// Reads from a stream channel and splits whole messages off; pends
/// forever for a UDP channel.
async fn read_stream(channel: &mut Channel, read_buf: &mut [u8]) -> Result<Vec<Vec<u8>>, String> {
    let Channel::Stream { stream, buffer } = channel else { return std::future::pending().await };
    let n = stream.read(read_buf).await.map_err(|e| format!("relay connection failed: {e}"))?;
    if n == 0 {
        return Err("the relay closed the connection".into());
    }
    buffer.extend_from_slice(&read_buf[..n]);
    let mut frames = Vec::new();
    loop {
        match tcp_frame_len(buffer) {
            Ok(Some(len)) if len <= buffer.len() => frames.push(buffer.drain(..len).collect()),
            Ok(_) if buffer.len() > STREAM_BUFFER => return Err("the relay sent an oversized message".into()),
            Ok(_) => return Ok(frames),
            Err(e) => return Err(format!("the relay sent garbage: {e}")),
        }
    }
}

/// One allocation's state besides the client core.
struct Session {
    client: TurnClient,
    socket: Arc<FogSocket>,
    url: TurnUrl,
    /// Peer address as the relay sees it → the address quinn knows it by.
    presented: HashMap<SocketAddr, SocketAddr>,
    next_index: u32,
    /// When the relay granted the allocation.
    allocated_at: Option<Instant>,
    /// Who waits for permissions to be answered.
    permit_waiters: Vec<(Vec<IpAddr>, oneshot::Sender<()>)>,
    /// Who waits for a verification of the allocation.
    verify_waiters: Vec<oneshot::Sender<()>>,
    /// The allocation's relayed address, once granted.
    relayed: Option<SocketAddr>,
}

impl Session {
    fn command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Permit(ips, done) => {
                for &ip in &ips {
                    self.client.permit(SocketAddr::new(ip, 0), now);
                }
                if let Some(done) = done {
                    self.permit_waiters.push((ips, done));
                }
            }
            Command::Dial { peer, presented } => {
                self.presented.insert(peer, presented);
                self.socket.set_route(presented, Route::Relay { peer });
                if let Err(e) = self.client.bind_channel(peer, now) {
                    tracing::debug!(%peer, "relay channel: {e}");
                }
            }
            Command::Verify(done) => {
                self.client.refresh_now(now);
                if let Some(done) = done {
                    self.verify_waiters.push(done);
                }
            }
        }
    }

    /// Wraps QUIC for `peer`: over a channel once bound (asked for on the
    /// first datagram), as a Send indication until then.
    fn send(&mut self, peer: SocketAddr, data: &[u8], now: Instant) {
        if let Err(e) = self.client.bind_channel(peer, now) {
            tracing::trace!(%peer, "relay channel: {e}");
        }
        if let Err(e) = self.client.send_to(peer, data) {
            tracing::trace!(%peer, "relayed datagram dropped: {e}");
        }
    }

    /// Tells the waiters for a verification once the refresh is answered
    /// (an allocation that fails drops them, which wakes them too).
    fn answer_verify_waiters(&mut self) {
        if !self.client.is_refresh_pending() {
            self.verify_waiters.clear();
        }
    }

    /// Tells the waiters whose permissions the relay has answered.
    fn answer_permit_waiters(&mut self) {
        let client = &self.client;
        self.permit_waiters
            .retain(|(ips, _)| ips.iter().any(|&ip| client.is_permission_pending(SocketAddr::new(ip, 0))));
        // Dropped senders wake their waiters.
    }

    /// Handles the client's events; returns why the allocation ended, if
    /// it did.
    fn events(&mut self, status: &watch::Sender<RelayStatus>) -> Option<String> {
        while let Some(event) = self.client.poll_event() {
            match event {
                TurnEvent::Allocated { relayed, mapped } => {
                    tracing::info!(url = %self.url, %relayed, ?mapped, "relay allocated");
                    self.relayed = Some(relayed);
                    self.allocated_at = Some(Instant::now());
                    status.send_replace(RelayStatus::Allocated { url: self.url.clone(), relayed });
                }
                TurnEvent::Data { peer, data } => {
                    // QUIC goes to quinn; STUN and DTLS (browsers reaching
                    // this node's relayed candidate) to the side channel,
                    // KCP to its session.
                    match classify(data.first().copied().unwrap_or(0), false) {
                        kind @ (PacketKind::Stun | PacketKind::Dtls | PacketKind::Kcp) => {
                            let to = self.relayed;
                            self.socket.deliver_side(SideDatagram {
                                via: None,
                                from: peer,
                                to,
                                kind,
                                data: data.into(),
                            });
                        }
                        _ => {
                            let presented = self.presented_for(peer);
                            self.socket.deliver(presented, data.into());
                        }
                    }
                }
                TurnEvent::PeerRefused { peer, error } => {
                    tracing::info!(url = %self.url, %peer, "relay refused a peer: {error}");
                }
                TurnEvent::Failed(e) => return Some(e.to_string()),
            }
        }
        None
    }

    /// The address quinn knows `peer` by, named on its first datagram;
    /// the facade route is made again if a link's end removed it.
    fn presented_for(&mut self, peer: SocketAddr) -> SocketAddr {
        if let Some(&presented) = self.presented.get(&peer) {
            if presented != peer && self.socket.route_of(presented).is_none() {
                self.socket.set_route(presented, Route::Relay { peer });
            }
            return presented;
        }
        if self.presented.len() >= MAX_PRESENTED {
            // Forget the peers whose links ended.
            let socket = self.socket.clone();
            self.presented.retain(|_, presented| socket.route_of(*presented).is_some());
        }
        self.next_index = self.next_index.wrapping_add(1);
        let presented = presented_relay_addr(self.next_index, peer.port(), peer.is_ipv6());
        self.presented.insert(peer, presented);
        self.socket.set_route(presented, Route::Relay { peer });
        tracing::debug!(%peer, %presented, "peer reached this node through the relay");
        presented
    }

    /// Sends what the client queued.
    async fn flush(&mut self, channel: &mut Channel) -> Result<(), String> {
        while let Some(bytes) = self.client.poll_transmit() {
            match channel {
                Channel::Udp { server } => {
                    if let Err(e) = self.socket.send_raw(&bytes, *server).await {
                        tracing::debug!(server = %server, "send to relay failed: {e}");
                    }
                }
                Channel::Stream { stream, .. } => {
                    stream.write_all(&bytes).await.map_err(|e| format!("relay connection failed: {e}"))?;
                    // TLS holds written bytes until flushed.
                    stream.flush().await.map_err(|e| format!("relay connection failed: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

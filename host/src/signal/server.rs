//! The signaling server: WebSocket (optionally TLS) on path `/ws`.
//!
//! Every input is bounded: message size, messages (and control frames) per
//! second per client, connections per source address and in total (under
//! the process's descriptor limit), time to finish the handshake, to
//! register and to read what the server sends, time without a useful
//! message, memory queued for a client, registrations per id. A bad
//! message gets an `error` with its code and never affects other clients.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_util::sync::CancellationToken;

use super::SignalError;
use super::metrics::{SignalCounters, SignalSnapshot, render};
use super::protocol::{
    ClientMessage, DecodeError, ErrorCode, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, RelayCredentials, ServerMessage,
};
use super::rate::TokenBucket;
use super::routes::cluster::{ClusterConfig, NatsRoutes};
use super::routes::{Alone, LocalSession, PeerRoutes, Undeliverable};
use super::token;
use super::web;
use crate::limits::{DescriptorBudget, PerIpConnections, RateTable, accept_with_backoff};

/// Path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";
/// Largest WebSocket message read at all; between [`MAX_MESSAGE_BYTES`] and
/// this a message is refused with `too-large` and the session goes on,
/// above it the session is closed.
const MAX_WS_MESSAGE: usize = 64 * 1024;
/// Messages queued for one client before sends to it fail with `peer-busy`.
const CLIENT_QUEUE: usize = 256;
/// Bytes tungstenite may hold for a client that does not read (written
/// frames and the pending pong); past it sends fail and the session ends.
const MAX_WRITE_BUFFER: usize = 128 * 1024;
/// Descriptors kept back from client connections for the server itself.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Registrations per id and second (sustained), and the burst above it:
/// a client that registers and drops in a loop cannot flood subscribers
/// with presence events.
const REGISTER_RATE: u32 = 1;
const REGISTER_BURST: u32 = 10;
/// Ids whose registration rate is tracked at once (least recently seen
/// forgotten first).
const REGISTER_TRACKED: usize = 100_000;
/// Longest wait for a last message (the reason) and the close handshake to
/// go out to a client being closed: best effort, since a client being
/// closed for not reading would hold the session for the whole send
/// deadline.
const FAREWELL_LIMIT: Duration = Duration::from_secs(1);
pub use super::routes::PRESENCE_GRACE;
/// Source addresses whose connection rate is tracked at once.
const CONNECT_RATE_TRACKED: usize = 65_536;

/// Configuration of a signaling server.
#[derive(Debug, Clone)]
pub struct SignalServerConfig {
    /// TCP address to listen on.
    pub listen: SocketAddr,
    /// Secret the registration tokens are signed with.
    pub secret: Vec<u8>,
    /// Most concurrent WebSocket sessions (fewer when the descriptor
    /// limit leaves less room).
    pub max_clients: usize,
    /// Most TCP connections from one IP address, handshakes included.
    pub max_clients_per_ip: usize,
    /// New TCP connections per second from one IP address (sustained; ten
    /// times as many in a burst): a client that reconnects in a loop to
    /// get fresh rate budgets is slowed down.
    pub connect_rate_per_ip: u32,
    /// A session without a protocol message (pings and pongs do not
    /// count) for this long is closed.
    pub idle_timeout: Duration,
    /// A connection must finish its TLS and WebSocket handshake within
    /// this.
    pub handshake_timeout: Duration,
    /// A session must register within this after its handshake, whatever
    /// else it sends.
    pub register_timeout: Duration,
    /// A message to a client must be written within this; a client that
    /// does not read is disconnected.
    pub send_timeout: Duration,
    /// Sustained messages per second per client.
    pub rate_per_second: u32,
    /// Burst of messages per client above the rate.
    pub rate_burst: u32,
    /// PEM certificate chain and private key for TLS (`wss://`).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// TURN relays handed to every node that registers, with
    /// time-limited credentials.
    pub relays: Option<RelayGrant>,
    /// STUN servers (`stun:host:port`) handed to every client for
    /// browsers' ICE.
    pub stun_urls: Vec<String>,
    /// The NATS cluster this server joins, with every other server of the
    /// same cluster; alone when absent.
    pub cluster: Option<ClusterConfig>,
}

/// The TURN relays a signaling server hands out, and how it makes their
/// credentials.
#[derive(Debug, Clone)]
pub struct RelayGrant {
    /// TURN URLs (RFC 7065) of the relays.
    pub urls: Vec<String>,
    /// The secret shared with the relays (`fogconnect relay
    /// --auth-secret`, coturn's `static-auth-secret`).
    pub secret: Vec<u8>,
    /// How long issued credentials stay valid; nodes ask for fresh ones
    /// before they expire.
    pub ttl: Duration,
}

impl RelayGrant {
    /// Credentials for `id` on every relay, valid from `now_unix` for the
    /// grant's time to live.
    pub fn credentials(&self, id: &str, now_unix: u64) -> Vec<RelayCredentials> {
        let expires = now_unix.saturating_add(self.ttl.as_secs());
        let username = format!("{expires}:{id}");
        let password = crate::relay::server::shared_secret_password(&self.secret, &username);
        self.urls
            .iter()
            .map(|url| RelayCredentials {
                url: url.clone(),
                username: username.clone(),
                password: password.clone(),
                expires,
            })
            .collect()
    }
}

impl SignalServerConfig {
    /// Defaults for `listen` and `secret`.
    pub fn new(listen: SocketAddr, secret: Vec<u8>) -> Self {
        Self {
            listen,
            secret,
            max_clients: 100_000,
            max_clients_per_ip: 1024,
            connect_rate_per_ip: 20,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            register_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            rate_per_second: 50,
            rate_burst: 200,
            tls: None,
            relays: None,
            stun_urls: Vec::new(),
            cluster: None,
        }
    }
}

struct Shared {
    config: SignalServerConfig,
    /// Who holds which id: this server's sessions, or the cluster's.
    routes: Arc<dyn PeerRoutes>,
    /// The cluster routing, when in one (for its health and counters).
    cluster: Option<Arc<NatsRoutes>>,
    /// Open TCP connections per source address and in total.
    connections: PerIpConnections,
    /// New TCP connections per source address.
    connect_rate: Mutex<RateTable<IpAddr>>,
    /// Registrations per id (an id a valid token admitted).
    registrations: Mutex<RateTable<String>>,
    connected: AtomicUsize,
    next_serial: AtomicU64,
    counters: SignalCounters,
}

impl Shared {
    fn metrics(&self) -> String {
        render(&SignalSnapshot {
            sessions: self.routes.local().len(),
            connections: self.connected.load(Ordering::Relaxed),
            counters: &self.counters,
            cluster: self.cluster.as_deref(),
        })
    }
}

/// A running signaling server.
pub struct SignalServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for SignalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalServer").field("addr", &self.local_addr).finish_non_exhaustive()
    }
}

fn load_tls(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, SignalError> {
    let config = crate::transport::trust::server_config(cert, key).map_err(SignalError::Tls)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl SignalServer {
    /// Binds and starts serving.
    ///
    /// # Errors
    /// [`SignalError::Bind`] when the address cannot be bound,
    /// [`SignalError::Tls`] when the certificate or key cannot be used.
    pub async fn start(config: SignalServerConfig) -> Result<Self, SignalError> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(load_tls(cert, key)?),
            None => None,
        };
        let listener = bind(config.listen).map_err(|e| SignalError::Bind(config.listen, e.to_string()))?;
        let local_addr = listener.local_addr().map_err(|e| SignalError::Bind(config.listen, e.to_string()))?;
        // Every session holds a descriptor; handshakes in flight too. The
        // caps keep the server under the descriptor limit, so accept never
        // fails for lack of one while the server still has work to do.
        let budget = DescriptorBudget::current(RESERVED_DESCRIPTORS);
        let max_connections = budget.connections(config.max_clients.saturating_add(config.max_clients / 8 + 64));
        let mut config = config;
        config.max_clients = config.max_clients.min(max_connections);
        tracing::debug!(
            max_clients = config.max_clients,
            max_connections,
            per_ip = config.max_clients_per_ip,
            descriptors = ?budget.limit,
            "signaling limits"
        );
        let shutdown = CancellationToken::new();
        let (routes, cluster): (Arc<dyn PeerRoutes>, _) = match config.cluster.clone() {
            Some(cluster) => {
                let routes = NatsRoutes::start(cluster, shutdown.clone()).await?;
                (routes.clone(), Some(routes))
            }
            None => (Arc::new(Alone::default()), None),
        };
        let shared = Arc::new(Shared {
            connections: PerIpConnections::new(config.max_clients_per_ip, max_connections),
            connect_rate: Mutex::new(RateTable::new(
                config.connect_rate_per_ip,
                config.connect_rate_per_ip.saturating_mul(10),
                CONNECT_RATE_TRACKED,
            )),
            registrations: Mutex::new(RateTable::new(REGISTER_RATE, REGISTER_BURST, REGISTER_TRACKED)),
            config,
            routes,
            cluster,
            connected: AtomicUsize::new(0),
            next_serial: AtomicU64::new(1),
            counters: SignalCounters::default(),
        });
        tokio::spawn(accept_loop(listener, shared.clone(), tls, shutdown.clone()));
        tracing::info!(%local_addr, "signaling server listening");
        Ok(Self { local_addr, shared, shutdown })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `ws://<addr>/ws` for this server (without TLS).
    pub fn url(&self) -> String {
        format!("ws://{}{WS_PATH}", self.local_addr)
    }

    /// Sessions registered on this server.
    pub fn registered(&self) -> usize {
        self.shared.routes.local().len()
    }

    /// Messages forwarded between clients since start.
    pub fn forwarded(&self) -> u64 {
        self.shared.counters.forwarded.load(Ordering::Relaxed)
    }

    /// The server's counters.
    pub fn counters(&self) -> &SignalCounters {
        &self.shared.counters
    }

    /// This server's name in its NATS cluster, if in one.
    pub fn cluster_name(&self) -> Option<&str> {
        self.shared.cluster.as_deref().map(NatsRoutes::name)
    }

    /// Whether the server reaches every peer right now (alone: always; in
    /// a cluster: while its NATS connection is up).
    pub fn healthy(&self) -> bool {
        self.shared.routes.healthy()
    }

    /// The Prometheus text exposition of the server's state.
    pub fn metrics(&self) -> String {
        self.shared.metrics()
    }

    /// A renderer of [`Self::metrics`] for a metrics endpoint.
    pub fn metrics_renderer(&self) -> crate::metrics::exporter::Render {
        let shared = self.shared.clone();
        Arc::new(move || shared.metrics())
    }

    /// Stops accepting, closes every session and, in a cluster, removes
    /// this server's ids from the directory (reporting them offline) so
    /// the other servers need not wait for its heartbeat to lapse.
    pub async fn close(&self) {
        self.shutdown.cancel();
        if let Some(cluster) = &self.shared.cluster {
            cluster.finished().await;
        }
    }

    /// Stops accepting and closes every session.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for SignalServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Most pending TCP connections queued by the kernel: bursts of devices
/// reconnecting together (e.g. after a server restart) must not overflow it.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    while let Some((stream, peer)) = accept_with_backoff(&listener, &shutdown, "signaling").await {
        // Over a cap or the rate the connection is closed before any byte
        // is read: it costs one descriptor for a moment, never a task or a
        // buffer.
        let in_rate =
            shared.connect_rate.lock().unwrap_or_else(|p| p.into_inner()).allow(&peer.ip(), 1, Instant::now());
        if !in_rate {
            tracing::debug!(%peer, "connection refused: over the per-address connection rate");
            continue;
        }
        let slot = match shared.connections.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(%peer, "connection refused: {refusal}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let limit = shared.config.handshake_timeout;
            let deadline = tokio::time::Instant::now() + limit;
            // Each variant boxed: inline, the task would be as large as
            // the TLS variant (~16 KiB, its handshake and connection
            // state) for every plain session too.
            match tls {
                Some(acceptor) => match tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(stream))).await {
                    Ok(Ok(stream)) => Box::pin(serve_http(stream, peer, deadline, shared, shutdown)).await,
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake not done within {limit:?}"),
                },
                None => Box::pin(serve_http::<TcpStream>(stream, peer, deadline, shared, shutdown)).await,
            }
        });
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Counts a WebSocket session; decrements on drop.
struct ConnectedGuard(Arc<Shared>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads the request head: a WebSocket upgrade becomes a session, a GET
/// of the web app or the browser module is answered and closed.
async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    handshake_deadline: tokio::time::Instant,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let head = match tokio::time::timeout_at(handshake_deadline, web::read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        Ok(None) => return tracing::debug!(%peer, "no complete HTTP request head"),
        Err(_) => return tracing::debug!(%peer, "HTTP request head not sent in time"),
    };
    match web::route(&head) {
        web::Request::WebSocket => {
            serve(web::Replayed::new(head, stream), peer, handshake_deadline, shared, shutdown).await;
        }
        other => {
            let _ = tokio::time::timeout_at(handshake_deadline, web::respond(&mut stream, &other)).await;
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    handshake_deadline: tokio::time::Instant,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    // The error type is tungstenite's callback contract, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check_path = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() == WS_PATH {
            Ok(response)
        } else {
            let mut refusal = ErrorResponse::new(Some(format!("signaling is served on {WS_PATH}")));
            *refusal.status_mut() = http::StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    // Small buffers: a server holds many mostly idle sessions (tungstenite's
    // default read buffer alone is 128 KiB per session). The write buffer
    // is capped: a client that sends pings and never reads would otherwise
    // make it grow by a pong each.
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE))
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config));
    let mut ws = match tokio::time::timeout_at(handshake_deadline, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return tracing::debug!(%peer, "WebSocket handshake failed: {e}"),
        Err(_) => return tracing::debug!(%peer, "WebSocket handshake timed out"),
    };
    let send_limit = shared.config.send_timeout;
    let previous = shared.connected.fetch_add(1, Ordering::AcqRel);
    let _guard = ConnectedGuard(shared.clone());
    if previous >= shared.config.max_clients {
        let refusal = ServerMessage::error(ErrorCode::ServerFull, "server full, try again later", None);
        let _ = send_within(&mut ws, &shared.counters, &refusal, FAREWELL_LIMIT).await;
        let _ = tokio::time::timeout(FAREWELL_LIMIT, ws.close(None)).await;
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Box<ServerMessage>>(CLIENT_QUEUE);
    let mut session = ClientSession {
        shared: shared.clone(),
        tx,
        id: None,
        peer_ip: peer.ip(),
        serial: shared.next_serial.fetch_add(1, Ordering::Relaxed),
        bucket: TokenBucket::new(shared.config.rate_per_second, shared.config.rate_burst, Instant::now()),
    };
    let idle = shared.config.idle_timeout;
    let register_by = tokio::time::Instant::now() + shared.config.register_timeout;
    // Idle means no protocol message from the client, whatever is sent to
    // it and whatever control frames it sends.
    let mut idle_deadline = tokio::time::Instant::now() + idle;
    let ending: String = loop {
        let registered = session.id.is_some();
        let deadline = if registered { idle_deadline } else { idle_deadline.min(register_by) };
        tokio::select! {
            _ = shutdown.cancelled() => break "server shutting down".into(),
            outgoing = rx.recv() => {
                let Some(outgoing) = outgoing else { break "session dropped".into() };
                let last = matches!(*outgoing, ServerMessage::Replaced { .. });
                if let Err(e) = send_within(&mut ws, &shared.counters, &outgoing, send_limit).await {
                    break e;
                }
                if last {
                    break "replaced by a newer session".into();
                }
            }
            incoming = tokio::time::timeout_at(deadline, ws.next()) => {
                // A timeout polls its future first: frames that are always
                // ready (a flood) would never let it fire.
                let incoming = if tokio::time::Instant::now() >= deadline { None } else { incoming.ok() };
                let reply = match incoming {
                    None if !registered && tokio::time::Instant::now() >= register_by => {
                        let limit = shared.config.register_timeout;
                        let refusal = ServerMessage::error(ErrorCode::NotRegistered, format!("no registration within {limit:?}; closing"), None);
                        let _ = send_within(&mut ws, &shared.counters, &refusal, FAREWELL_LIMIT).await;
                        break "no registration in time".into();
                    }
                    None => {
                        let refusal = ServerMessage::error(ErrorCode::IdleTimeout, "no message within the idle timeout", None);
                        let _ = send_within(&mut ws, &shared.counters, &refusal, FAREWELL_LIMIT).await;
                        break "idle timeout".into();
                    }
                    Some(None) => break "client went away".into(),
                    Some(Some(Err(e))) => {
                        if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                            let refusal = ServerMessage::error(ErrorCode::TooLarge, format!("message exceeds {MAX_WS_MESSAGE} bytes; closing"), None);
                            let _ = send_within(&mut ws, &shared.counters, &refusal, FAREWELL_LIMIT).await;
                        }
                        break format!("read failed: {e}");
                    }
                    Some(Some(Ok(Message::Text(text)))) => {
                        idle_deadline = tokio::time::Instant::now() + idle;
                        session.handle(text.as_str()).await
                    }
                    Some(Some(Ok(Message::Binary(_)))) => {
                        idle_deadline = tokio::time::Instant::now() + idle;
                        Some(session.limited().unwrap_or_else(|| ServerMessage::error(ErrorCode::BadRequest, "binary frames are not part of the protocol", None)))
                    }
                    Some(Some(Ok(Message::Close(_)))) => break "client closed".into(),
                    // Ping, pong and raw frames: tungstenite answers pings
                    // itself (one pending pong at most). They count against
                    // the rate like any message; a client over it with
                    // control frames gets no answer it could ignore: it is
                    // closed.
                    Some(Some(Ok(_))) => {
                        if !session.bucket.take(Instant::now()) {
                            let refusal = ServerMessage::error(ErrorCode::RateLimited, "control frames over the rate limit; closing", None);
                            let _ = send_within(&mut ws, &shared.counters, &refusal, FAREWELL_LIMIT).await;
                            break "control frames over the rate limit".into();
                        }
                        None
                    }
                };
                if let Some(reply) = reply
                    && let Err(e) = send_within(&mut ws, &shared.counters, &reply, send_limit).await
                {
                    break e;
                }
            }
        }
    };
    tracing::debug!(%peer, id = ?session.id, "session ended: {ending}");
    session.leave();
    let _ = tokio::time::timeout(FAREWELL_LIMIT, ws.close(None)).await;
}

/// Writes `message` to the client within `limit`; a client that does not
/// read (its TCP window and our bounded write buffer full) fails it.
async fn send_within<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    counters: &SignalCounters,
    message: &ServerMessage,
    limit: Duration,
) -> Result<(), String> {
    if let ServerMessage::Error { code, .. } = message {
        counters.refused(*code);
    }
    match tokio::time::timeout(limit, ws.send(Message::text(message.encode()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("send failed: {e}")),
        Err(_) => Err(format!("the client read nothing for {limit:?}")),
    }
}

/// The state of one WebSocket session.
struct ClientSession {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Box<ServerMessage>>,
    id: Option<String>,
    /// The address the client's connection comes from, vouched for to the
    /// peers it connects to.
    peer_ip: IpAddr,
    serial: u64,
    bucket: TokenBucket,
}

impl ClientSession {
    /// Takes a message from the rate; the refusal when over it.
    fn limited(&mut self) -> Option<ServerMessage> {
        (!self.bucket.take(Instant::now()))
            .then(|| ServerMessage::error(ErrorCode::RateLimited, "rate limit exceeded; message dropped", None))
    }

    /// Handles one text message; returns the direct reply, if any. Waits
    /// on the cluster (bounded) for what needs it.
    async fn handle(&mut self, text: &str) -> Option<ServerMessage> {
        self.shared.counters.received.fetch_add(1, Ordering::Relaxed);
        self.answer(text).await
    }

    async fn answer(&mut self, text: &str) -> Option<ServerMessage> {
        if let Some(refusal) = self.limited() {
            return Some(refusal);
        }
        let message = match ClientMessage::decode(text) {
            Ok(m) => m,
            Err(DecodeError::TooLarge(n)) => {
                return Some(ServerMessage::error(
                    ErrorCode::TooLarge,
                    format!("{n} bytes exceed {MAX_MESSAGE_BYTES}"),
                    None,
                ));
            }
            Err(e) => return Some(ServerMessage::error(ErrorCode::BadRequest, e.to_string(), None)),
        };
        if let ClientMessage::Register { version, id, token } = message {
            return Some(self.register(version, id, &token).await);
        }
        let Some(me) = self.id.clone() else {
            return Some(ServerMessage::error(ErrorCode::NotRegistered, "register first", None));
        };
        match message {
            ClientMessage::Register { .. } => None,
            ClientMessage::List => match self.shared.routes.peers().await {
                Ok(peers) => Some(ServerMessage::Peers { peers }),
                Err(e) => Some(refusal(e, None)),
            },
            ClientMessage::Relays => Some(ServerMessage::Relays { relays: self.relay_credentials(&me) }),
            ClientMessage::Subscribe => {
                self.shared.routes.local().subscribe(&me, self.serial);
                None
            }
            ClientMessage::Connect { request_id, to, convention, offer } => {
                let observed = Some(self.peer_ip);
                self.forward(
                    &to,
                    request_id,
                    ServerMessage::Incoming { request_id, from: me, convention, offer, observed },
                )
                .await
            }
            ClientMessage::Answer { request_id, to, offer } => {
                let observed = Some(self.peer_ip);
                self.forward(&to, request_id, ServerMessage::Answered { request_id, from: me, offer, observed }).await
            }
            ClientMessage::Reject { request_id, to, code, message } => {
                self.forward(&to, request_id, ServerMessage::Rejected { request_id, from: me, code, message }).await
            }
            ClientMessage::RtcConnect { request_id, to, convention, sdp } => {
                self.forward(&to, request_id, ServerMessage::RtcIncoming { request_id, from: me, convention, sdp })
                    .await
            }
            ClientMessage::RtcAnswer { request_id, to, sdp } => {
                self.forward(&to, request_id, ServerMessage::RtcAnswered { request_id, from: me, sdp }).await
            }
            ClientMessage::RtcCandidate { request_id, to, candidate } => {
                self.forward(&to, request_id, ServerMessage::RtcCandidate { request_id, from: me, candidate }).await
            }
            ClientMessage::Ping { nonce } => Some(ServerMessage::Pong { nonce }),
        }
    }

    async fn register(&mut self, version: u32, id: String, token: &str) -> ServerMessage {
        if version != PROTOCOL_VERSION {
            return ServerMessage::error(
                ErrorCode::VersionMismatch,
                format!("protocol version {version} not supported (server speaks {PROTOCOL_VERSION})"),
                None,
            );
        }
        if let Some(problem) = crate::transport::wire::peer_id_problem(&id) {
            return ServerMessage::error(ErrorCode::BadRequest, problem, None);
        }
        if let Some(current) = &self.id
            && current != &id
        {
            return ServerMessage::error(ErrorCode::BadRequest, format!("already registered as {current}"), None);
        }
        if let Err(e) = token::verify(&self.shared.config.secret, &id, token, now_unix()) {
            return ServerMessage::error(ErrorCode::Unauthorized, format!("{e}"), None);
        }
        // Checked after the token, so only ids their holder proved take a
        // place in the table.
        let allowed = self.shared.registrations.lock().unwrap_or_else(|p| p.into_inner()).allow(&id, 1, Instant::now());
        if !allowed {
            return ServerMessage::error(
                ErrorCode::RateLimited,
                format!("{id} registers too often (at most {REGISTER_BURST} at once, then {REGISTER_RATE} a second)"),
                None,
            );
        }
        let session = LocalSession { serial: self.serial, tx: self.tx.clone(), subscribed: false, revision: None };
        self.shared.routes.clone().claim(&id, session).await;
        self.shared.counters.registrations.fetch_add(1, Ordering::Relaxed);
        self.id = Some(id.clone());
        tracing::debug!(id, "registered");
        let relays = self.relay_credentials(&id);
        let stun = self.shared.config.stun_urls.clone();
        ServerMessage::Registered { id, version: PROTOCOL_VERSION, relays, stun }
    }

    /// Credentials for `id` on the configured relays, issued now.
    fn relay_credentials(&self, id: &str) -> Vec<RelayCredentials> {
        self.shared.config.relays.as_ref().map(|g| g.credentials(id, now_unix())).unwrap_or_default()
    }

    async fn forward(&self, to: &str, request_id: u64, message: ServerMessage) -> Option<ServerMessage> {
        match self.shared.routes.deliver(to, message).await {
            Ok(()) => {
                self.shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => Some(refusal(e, Some(request_id))),
        }
    }

    /// Removes the session, unless a newer one took over its id; its
    /// offline event goes out after [`PRESENCE_GRACE`] unless the id is
    /// back by then.
    fn leave(&mut self) {
        if let Some(id) = self.id.take() {
            self.shared.routes.clone().release(id, self.serial);
        }
    }
}

/// The error answer for an undeliverable message.
fn refusal(e: Undeliverable, request_id: Option<u64>) -> ServerMessage {
    let code = match e {
        Undeliverable::Offline(_) => ErrorCode::UnknownPeer,
        Undeliverable::Busy(_) => ErrorCode::PeerBusy,
        Undeliverable::Unreachable { .. } => ErrorCode::Unreachable,
    };
    ServerMessage::error(code, e.to_string(), request_id)
}

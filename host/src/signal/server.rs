//! The signaling server: WebSocket (optionally TLS) on path `/ws`.
//!
//! Every input is bounded: message size, messages per second per client,
//! clients in total, time without a message. A bad message gets an `error`
//! with its code and never affects other clients.

use std::collections::HashMap;
use std::net::SocketAddr;
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
use super::protocol::{
    ClientMessage, DecodeError, ErrorCode, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, RelayCredentials, ServerMessage,
};
use super::rate::TokenBucket;
use super::token;

/// Path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";
/// Largest WebSocket message read at all; between [`MAX_MESSAGE_BYTES`] and
/// this a message is refused with `too-large` and the session goes on,
/// above it the session is closed.
const MAX_WS_MESSAGE: usize = 64 * 1024;
/// Messages queued for one client before sends to it fail with `peer-busy`.
const CLIENT_QUEUE: usize = 256;

/// Configuration of a signaling server.
#[derive(Debug, Clone)]
pub struct SignalServerConfig {
    /// TCP address to listen on.
    pub listen: SocketAddr,
    /// Secret the registration tokens are signed with.
    pub secret: Vec<u8>,
    /// Most concurrent WebSocket sessions.
    pub max_clients: usize,
    /// A session without any message for this long is closed.
    pub idle_timeout: Duration,
    /// Sustained messages per second per client.
    pub rate_per_second: u32,
    /// Burst of messages per client above the rate.
    pub rate_burst: u32,
    /// PEM certificate chain and private key for TLS (`wss://`).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// TURN relays handed to every node that registers, with
    /// time-limited credentials.
    pub relays: Option<RelayGrant>,
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
            idle_timeout: Duration::from_secs(60),
            rate_per_second: 50,
            rate_burst: 200,
            tls: None,
            relays: None,
        }
    }
}

struct Session {
    serial: u64,
    tx: mpsc::Sender<ServerMessage>,
    subscribed: bool,
}

struct Shared {
    config: SignalServerConfig,
    sessions: Mutex<HashMap<String, Session>>,
    connected: AtomicUsize,
    next_serial: AtomicU64,
    forwarded: AtomicU64,
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
        let shared = Arc::new(Shared {
            config,
            sessions: Mutex::new(HashMap::new()),
            connected: AtomicUsize::new(0),
            next_serial: AtomicU64::new(1),
            forwarded: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
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

    /// Registered sessions.
    pub fn registered(&self) -> usize {
        self.shared.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Messages forwarded between clients since start.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
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
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off a little.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve(stream, peer, shared, shutdown).await,
                    Err(e) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                },
                None => serve::<TcpStream>(stream, peer, shared, shutdown).await,
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

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
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
    // default read buffer alone is 128 KiB per session).
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE))
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config));
    let mut ws = match tokio::time::timeout(shared.config.idle_timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return tracing::debug!(%peer, "WebSocket handshake failed: {e}"),
        Err(_) => return tracing::debug!(%peer, "WebSocket handshake timed out"),
    };
    let previous = shared.connected.fetch_add(1, Ordering::AcqRel);
    let _guard = ConnectedGuard(shared.clone());
    if previous >= shared.config.max_clients {
        let refusal = ServerMessage::error(ErrorCode::ServerFull, "server full, try again later", None);
        let _ = ws.send(Message::text(refusal.encode())).await;
        let _ = ws.close(None).await;
        return;
    }
    let (tx, mut rx) = mpsc::channel::<ServerMessage>(CLIENT_QUEUE);
    let mut session = ClientSession {
        shared: shared.clone(),
        tx,
        id: None,
        serial: shared.next_serial.fetch_add(1, Ordering::Relaxed),
        bucket: TokenBucket::new(shared.config.rate_per_second, shared.config.rate_burst, Instant::now()),
    };
    let idle = shared.config.idle_timeout;
    // Idle means nothing received from the client, whatever is sent to it.
    let mut idle_deadline = tokio::time::Instant::now() + idle;
    let ending: String = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break "server shutting down".into(),
            outgoing = rx.recv() => {
                let Some(outgoing) = outgoing else { break "session dropped".into() };
                let last = matches!(outgoing, ServerMessage::Replaced { .. });
                if let Err(e) = ws.send(Message::text(outgoing.encode())).await {
                    break format!("send failed: {e}");
                }
                if last {
                    break "replaced by a newer session".into();
                }
            }
            incoming = tokio::time::timeout_at(idle_deadline, ws.next()) => {
                idle_deadline = tokio::time::Instant::now() + idle;
                let reply = match incoming {
                    Err(_) => {
                        let _ = ws.send(Message::text(ServerMessage::error(ErrorCode::IdleTimeout, "no message within the idle timeout", None).encode())).await;
                        break "idle timeout".into();
                    }
                    Ok(None) => break "client went away".into(),
                    Ok(Some(Err(e))) => {
                        if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                            let _ = ws.send(Message::text(ServerMessage::error(ErrorCode::TooLarge, format!("message exceeds {MAX_WS_MESSAGE} bytes; closing"), None).encode())).await;
                        }
                        break format!("read failed: {e}");
                    }
                    Ok(Some(Ok(Message::Text(text)))) => session.handle(text.as_str()),
                    Ok(Some(Ok(Message::Binary(_)))) => Some(ServerMessage::error(ErrorCode::BadRequest, "binary frames are not part of the protocol", None)),
                    Ok(Some(Ok(Message::Close(_)))) => break "client closed".into(),
                    Ok(Some(Ok(_))) => None, // ping/pong frames: tungstenite answers pings itself
                };
                if let Some(reply) = reply
                    && let Err(e) = ws.send(Message::text(reply.encode())).await
                {
                    break format!("send failed: {e}");
                }
            }
        }
    };
    tracing::debug!(%peer, id = ?session.id, "session ended: {ending}");
    session.leave();
    let _ = ws.close(None).await;
}

/// The state of one WebSocket session.
struct ClientSession {
    shared: Arc<Shared>,
    tx: mpsc::Sender<ServerMessage>,
    id: Option<String>,
    serial: u64,
    bucket: TokenBucket,
}

impl ClientSession {
    /// Handles one text message; returns the direct reply, if any.
    fn handle(&mut self, text: &str) -> Option<ServerMessage> {
        if !self.bucket.take(Instant::now()) {
            return Some(ServerMessage::error(ErrorCode::RateLimited, "rate limit exceeded; message dropped", None));
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
            return Some(self.register(version, id, &token));
        }
        let Some(me) = self.id.clone() else {
            return Some(ServerMessage::error(ErrorCode::NotRegistered, "register first", None));
        };
        match message {
            ClientMessage::Register { .. } => None,
            ClientMessage::List => {
                let mut peers: Vec<String> = self.sessions().keys().cloned().collect();
                peers.sort();
                Some(ServerMessage::Peers { peers })
            }
            ClientMessage::Relays => Some(ServerMessage::Relays { relays: self.relay_credentials(&me) }),
            ClientMessage::Subscribe => {
                if let Some(s) = self.sessions().get_mut(&me) {
                    s.subscribed = true;
                }
                None
            }
            ClientMessage::Connect { request_id, to, convention, offer } => {
                self.forward(&to, request_id, ServerMessage::Incoming { request_id, from: me, convention, offer })
            }
            ClientMessage::Answer { request_id, to, offer } => {
                self.forward(&to, request_id, ServerMessage::Answered { request_id, from: me, offer })
            }
            ClientMessage::Reject { request_id, to, code, message } => {
                self.forward(&to, request_id, ServerMessage::Rejected { request_id, from: me, code, message })
            }
            ClientMessage::Ping { nonce } => Some(ServerMessage::Pong { nonce }),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.shared.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&mut self, version: u32, id: String, token: &str) -> ServerMessage {
        if version != PROTOCOL_VERSION {
            return ServerMessage::error(
                ErrorCode::VersionMismatch,
                format!("protocol version {version} not supported (server speaks {PROTOCOL_VERSION})"),
                None,
            );
        }
        if id.is_empty() || id.len() > crate::transport::wire::MAX_PEER_ID_LEN {
            return ServerMessage::error(ErrorCode::BadRequest, "id must be 1..=255 bytes", None);
        }
        if let Some(current) = &self.id
            && current != &id
        {
            return ServerMessage::error(ErrorCode::BadRequest, format!("already registered as {current}"), None);
        }
        if let Err(e) = token::verify(&self.shared.config.secret, &id, token, now_unix()) {
            return ServerMessage::error(ErrorCode::Unauthorized, format!("{e}"), None);
        }
        let mut sessions = self.sessions();
        let replaced =
            sessions.insert(id.clone(), Session { serial: self.serial, tx: self.tx.clone(), subscribed: false });
        let newly_online = match replaced {
            Some(old) if old.serial != self.serial => {
                let _ = old.tx.try_send(ServerMessage::Replaced {
                    message: "this id registered again from another session".into(),
                });
                false
            }
            Some(_) => false,
            None => true,
        };
        if newly_online {
            broadcast_presence(&sessions, &id, true);
        }
        drop(sessions);
        self.id = Some(id.clone());
        tracing::debug!(id, "registered");
        let relays = self.relay_credentials(&id);
        ServerMessage::Registered { id, version: PROTOCOL_VERSION, relays }
    }

    /// Credentials for `id` on the configured relays, issued now.
    fn relay_credentials(&self, id: &str) -> Vec<RelayCredentials> {
        self.shared.config.relays.as_ref().map(|g| g.credentials(id, now_unix())).unwrap_or_default()
    }

    fn forward(&self, to: &str, request_id: u64, message: ServerMessage) -> Option<ServerMessage> {
        let sessions = self.sessions();
        let Some(target) = sessions.get(to) else {
            return Some(ServerMessage::error(ErrorCode::UnknownPeer, format!("{to} is not online"), Some(request_id)));
        };
        match target.tx.try_send(message) {
            Ok(()) => {
                self.shared.forwarded.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(_) => Some(ServerMessage::error(
                ErrorCode::PeerBusy,
                format!("{to} cannot take messages now"),
                Some(request_id),
            )),
        }
    }

    /// Removes the session, unless a newer one took over its id.
    fn leave(&mut self) {
        let Some(id) = self.id.take() else { return };
        let mut sessions = self.sessions();
        if sessions.get(&id).is_some_and(|s| s.serial == self.serial) {
            sessions.remove(&id);
            broadcast_presence(&sessions, &id, false);
        }
    }
}

fn broadcast_presence(sessions: &HashMap<String, Session>, id: &str, online: bool) {
    for (other, session) in sessions {
        if session.subscribed && other != id {
            let _ = session.tx.try_send(ServerMessage::Presence { id: id.to_string(), online });
        }
    }
}

//! The signaling client: an actor that keeps one WebSocket session to the
//! server, registers, answers keep-alives, reconnects with backoff and
//! jitter, and matches answers to requests. Requests waiting when the
//! session is lost fail with a timeout at once; none is left hanging.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::SignalError;
use super::backoff::Backoff;
use super::protocol::{ClientMessage, ErrorCode, Offer, PROTOCOL_VERSION, RelayCredentials, ServerMessage};

/// Configuration of a signaling client.
#[derive(Debug, Clone)]
pub struct SignalClientConfig {
    /// The signaling servers, `ws://host:port/ws` or `wss://...`: the
    /// client registers with the first that answers and moves on to the
    /// next when its server is lost or refuses to serve (servers of one
    /// cluster, or any servers sharing the token secret).
    pub urls: Vec<String>,
    /// The node id to register.
    pub id: String,
    /// The credential for `id`.
    pub token: String,
    /// Interval of keep-alive pings (the original's `time_inter_s`).
    pub keep_alive_interval: Duration,
    /// Unanswered pings in a row after which the session is considered
    /// lost and re-established (the original's `max_attempt_num`).
    pub keep_alive_attempts: u32,
    /// How long a request waits for its answer.
    pub request_timeout: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// PEM file of an extra certificate authority trusted for `wss://`
    /// (e.g. a private CA or a self-signed server certificate), besides the
    /// public web roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl SignalClientConfig {
    /// Defaults for `urls` (one URL, or several separated by commas), `id`
    /// and `token`.
    pub fn new(urls: impl Into<String>, id: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            urls: split_urls(&urls.into()),
            id: id.into(),
            token: token.into(),
            keep_alive_interval: Duration::from_secs(15),
            keep_alive_attempts: 3,
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// The URLs of a comma-separated list, trimmed, empty entries left out.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
}

/// Where the client stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalStatus {
    /// Connecting or reconnecting.
    Connecting,
    /// Registered; requests can be made.
    Registered,
    /// The server refused the registration; the client keeps retrying with
    /// backoff (the credential may be renewed server-side).
    Refused(String),
    /// Stopped by [`SignalClient::shutdown`].
    Stopped,
}

/// A peer came online or went offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// The peer.
    pub id: String,
    /// Online or not.
    pub online: bool,
}

/// What signaling asks of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalRequest {
    /// Another node asks for a connection.
    Node(IncomingRequest),
    /// A browser asks for a connection over a DataChannel.
    Browser(BrowserRequest),
    /// A browser trickled an ICE candidate of its request.
    BrowserCandidate {
        /// The browser's id, authenticated by the server.
        from: String,
        /// Its request.
        request_id: u64,
        /// The candidate attribute; empty at the end of candidates.
        candidate: String,
    },
}

/// A browser's request for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserRequest {
    /// Echo it in the answer.
    pub request_id: u64,
    /// The browser's id, authenticated by the server.
    pub from: String,
    /// The requested convention number.
    pub convention: u32,
    /// The browser's SDP offer.
    pub sdp: String,
}

/// A connect request from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingRequest {
    /// Echo it in the answer.
    pub request_id: u64,
    /// The caller's id, authenticated by the server.
    pub from: String,
    /// The requested convention number.
    pub convention: u32,
    /// How to reach the caller.
    pub offer: Offer,
    /// The IP address the server saw the caller's signaling connection come
    /// from (see [`PeerOffer::observed`]).
    pub observed: Option<std::net::IpAddr>,
}

/// A peer's answer to a connect, as signaling delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOffer {
    /// How to reach the peer.
    pub offer: Offer,
    /// The IP address the server saw the peer's signaling connection come
    /// from: the peer receives there, so it is an address a node may probe
    /// ports of. `None` from servers that do not vouch.
    pub observed: Option<std::net::IpAddr>,
}

type ConnectReply = oneshot::Sender<Result<PeerOffer, SignalError>>;

enum Command {
    Send(ClientMessage),
    /// End the session and open a new one at once (the network changed).
    Reconnect,
    Connect {
        request_id: u64,
        to: String,
        message: ClientMessage,
        reply: ConnectReply,
    },
    List {
        reply: oneshot::Sender<Result<Vec<String>, SignalError>>,
    },
}

/// Handle of the signaling client actor.
#[derive(Debug, Clone)]
pub struct SignalClient {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<SignalStatus>,
    relays: watch::Receiver<Vec<RelayCredentials>>,
    shutdown: CancellationToken,
    request_timeout: Duration,
    presence: broadcast::Sender<PresenceEvent>,
    subscribed: Arc<AtomicBool>,
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // The system RNG failing is not recoverable in any useful way; fall
    // back to the clock so ids stay distinct.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        return std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(bytes)
}

fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

impl SignalClient {
    /// Starts the actor. Connect requests from other nodes are delivered
    /// to `incoming`.
    ///
    /// # Errors
    /// [`SignalError::InvalidUrl`] when there is no URL or one is not
    /// `ws://` or `wss://`.
    pub fn start(config: SignalClientConfig, incoming: mpsc::Sender<SignalRequest>) -> Result<Self, SignalError> {
        if config.urls.is_empty() {
            return Err(SignalError::InvalidUrl(String::new(), "no signaling URL given".into()));
        }
        if let Some(url) = config.urls.iter().find(|u| !(u.starts_with("ws://") || u.starts_with("wss://"))) {
            return Err(SignalError::InvalidUrl(url.clone(), "must start with ws:// or wss://".into()));
        }
        let (commands, commands_rx) = mpsc::channel(256);
        let (status_tx, status) = watch::channel(SignalStatus::Connecting);
        let (relays_tx, relays) = watch::channel(Vec::new());
        let shutdown = CancellationToken::new();
        let request_timeout = config.request_timeout;
        let (presence, _) = broadcast::channel(1024);
        let subscribed = Arc::new(AtomicBool::new(false));
        let actor = Actor {
            config,
            commands: commands_rx,
            incoming,
            status: status_tx,
            relays: relays_tx,
            shutdown: shutdown.clone(),
            presence: presence.clone(),
            subscribed: subscribed.clone(),
        };
        tokio::spawn(actor.run());
        Ok(Self { commands, status, relays, shutdown, request_timeout, presence, subscribed })
    }

    /// The TURN relays and credentials the server handed out at the last
    /// registration (empty when it hands out none).
    pub fn relays(&self) -> watch::Receiver<Vec<RelayCredentials>> {
        self.relays.clone()
    }

    /// Ends the session and registers again at once, e.g. because the
    /// local network changed and the session's path may be gone. Nothing
    /// happens while not registered (the client reconnects anyway).
    pub fn reconnect(&self) {
        let _ = self.commands.try_send(Command::Reconnect);
    }

    /// Watches the status.
    pub fn status_watch(&self) -> watch::Receiver<SignalStatus> {
        self.status.clone()
    }

    /// Presence events from now on, without subscribing the session to
    /// them (see [`SignalClient::presence`]).
    pub fn presence_receiver(&self) -> broadcast::Receiver<PresenceEvent> {
        self.presence.subscribe()
    }

    /// The current status.
    pub fn status(&self) -> SignalStatus {
        self.status.borrow().clone()
    }

    /// Waits until registered, at most `limit`.
    ///
    /// # Errors
    /// [`SignalError::Refused`] as soon as the server refuses the
    /// registration, [`SignalError::Timeout`] when not registered in time.
    pub async fn registered(&self, limit: Duration) -> Result<(), SignalError> {
        let mut status = self.status.clone();
        let wait = status.wait_for(|s| matches!(s, SignalStatus::Registered | SignalStatus::Refused(_)));
        match tokio::time::timeout(limit, wait).await {
            Ok(Ok(status)) => match &*status {
                SignalStatus::Refused(why) => Err(SignalError::Refused(why.clone())),
                _ => Ok(()),
            },
            _ => Err(SignalError::Timeout(format!("not registered within {limit:?}: {:?}", self.status()))),
        }
    }

    /// Asks `to` for a connection; returns its offer.
    ///
    /// # Errors
    /// [`SignalError::Rejected`] when the peer refused,
    /// [`SignalError::Server`] e.g. when it is not online,
    /// [`SignalError::Timeout`] when no answer came in time or the session
    /// was lost, [`SignalError::Unavailable`] when not connected.
    pub async fn connect(&self, to: &str, convention: u32, offer: Offer) -> Result<PeerOffer, SignalError> {
        let request_id = random_u64();
        let message = ClientMessage::Connect { request_id, to: to.to_string(), convention, offer };
        let (reply, answer) = oneshot::channel();
        self.command(Command::Connect { request_id, to: to.to_string(), message, reply }).await?;
        self.await_reply(answer).await
    }

    /// Lists the ids online.
    ///
    /// # Errors
    /// As [`SignalClient::connect`].
    pub async fn peers(&self) -> Result<Vec<String>, SignalError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::List { reply }).await?;
        self.await_reply(answer).await
    }

    /// Presence events (peers coming online and going offline) from now
    /// on; the subscription is renewed on every reconnect.
    pub async fn presence(&self) -> broadcast::Receiver<PresenceEvent> {
        let receiver = self.presence.subscribe();
        if !self.subscribed.swap(true, Ordering::AcqRel) {
            // Not registered now: the next session subscribes on its own.
            let _ = self.command(Command::Send(ClientMessage::Subscribe)).await;
        }
        receiver
    }

    /// Accepts a connect request.
    pub async fn answer(&self, request: &IncomingRequest, offer: Offer) {
        let message = ClientMessage::Answer { request_id: request.request_id, to: request.from.clone(), offer };
        let _ = self.command(Command::Send(message)).await;
    }

    /// Refuses a connect request of a node or a browser.
    pub async fn reject(&self, request_id: u64, to: &str, code: u16, message: String) {
        let message = ClientMessage::Reject { request_id, to: to.to_string(), code, message };
        let _ = self.command(Command::Send(message)).await;
    }

    /// Accepts a browser's request with the node's SDP answer.
    pub async fn answer_browser(&self, request: &BrowserRequest, sdp: String) {
        let message = ClientMessage::RtcAnswer { request_id: request.request_id, to: request.from.clone(), sdp };
        let _ = self.command(Command::Send(message)).await;
    }

    /// Stops the actor and closes the session.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    async fn command(&self, command: Command) -> Result<(), SignalError> {
        if self.status() != SignalStatus::Registered {
            return Err(SignalError::Unavailable(format!("{:?}", self.status())));
        }
        self.commands.send(command).await.map_err(|_| SignalError::Unavailable("client stopped".into()))
    }

    async fn await_reply<T>(&self, answer: oneshot::Receiver<Result<T, SignalError>>) -> Result<T, SignalError> {
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SignalError::Timeout("signaling client stopped".into())),
            Err(_) => Err(SignalError::Timeout(format!("no answer within {:?}", self.request_timeout))),
        }
    }
}

struct Actor {
    config: SignalClientConfig,
    commands: mpsc::Receiver<Command>,
    incoming: mpsc::Sender<SignalRequest>,
    status: watch::Sender<SignalStatus>,
    relays: watch::Sender<Vec<RelayCredentials>>,
    shutdown: CancellationToken,
    presence: broadcast::Sender<PresenceEvent>,
    subscribed: Arc<AtomicBool>,
}

/// Requests waiting for their answers on the current session.
#[derive(Default)]
struct Pending {
    /// Connects waiting for an answer: the peer asked, and the waiter.
    connects: HashMap<u64, (String, ConnectReply)>,
    lists: VecDeque<oneshot::Sender<Result<Vec<String>, SignalError>>>,
}

impl Pending {
    /// The waiter of connect `request_id` when `from` is the peer it asked;
    /// an answer from anyone else leaves it waiting.
    fn take_connect(&mut self, request_id: u64, from: &str) -> Option<ConnectReply> {
        match self.connects.get(&request_id) {
            Some((asked, _)) if asked == from => self.connects.remove(&request_id).map(|(_, reply)| reply),
            Some((asked, _)) => {
                tracing::warn!(asked = %asked.escape_debug(), from = %from.escape_debug(), "ignoring an answer from another peer than the one asked");
                None
            }
            None => None,
        }
    }

    fn fail_all(&mut self, why: &str) {
        for (_, (_, reply)) in self.connects.drain() {
            let _ = reply.send(Err(SignalError::Timeout(why.to_string())));
        }
        for reply in self.lists.drain(..) {
            let _ = reply.send(Err(SignalError::Timeout(why.to_string())));
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Actor {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        // The server in use; the next one after a loss or a failure, so
        // the clients of a lost server spread over the others (each after
        // its own jittered delay: a reconnect storm is damped, not
        // synchronised).
        let mut current = 0;
        loop {
            let _ = self.status.send(SignalStatus::Connecting);
            let url = self.config.urls[current % self.config.urls.len()].clone();
            let outcome = match self.open(&url).await {
                Ok(ws) => {
                    backoff.reset();
                    let _ = self.status.send(SignalStatus::Registered);
                    tracing::info!(%url, id = %self.config.id, "registered with signaling");
                    self.session(ws).await
                }
                Err(e) => Err(e),
            };
            current = (current + 1) % self.config.urls.len();
            if self.shutdown.is_cancelled() {
                break;
            }
            match outcome {
                Ok(()) => tracing::info!("signaling session ended; reconnecting"),
                Err(SignalError::Refused(why)) => {
                    tracing::warn!("signaling registration refused: {why}");
                    let _ = self.status.send(SignalStatus::Refused(why));
                }
                Err(e @ SignalError::Tls(_)) => tracing::warn!("signaling: {e}"),
                Err(e) => tracing::debug!("signaling: {e}"),
            }
            // Requests made while disconnected are refused by the handle;
            // drop any that raced in.
            while let Ok(command) = self.commands.try_recv() {
                fail_command(command, "not connected to signaling");
            }
            let delay = backoff.next(random_unit());
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let _ = self.status.send(SignalStatus::Stopped);
    }

    /// Connects and registers.
    async fn open(&self, url: &str) -> Result<Socket, SignalError> {
        let timeout = self.config.request_timeout;
        let connector = if url.starts_with("wss://") { Some(tls_connector(&self.config)?) } else { None };
        let connect = tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector);
        let (mut ws, _) = tokio::select! {
            _ = self.shutdown.cancelled() => return Err(SignalError::Unavailable("stopped".into())),
            r = tokio::time::timeout(timeout, connect) => r
                .map_err(|_| SignalError::Unavailable(format!("connect timed out after {timeout:?}")))?
                .map_err(|e| SignalError::Unavailable(e.to_string()))?,
        };
        let register = ClientMessage::Register {
            version: PROTOCOL_VERSION,
            id: self.config.id.clone(),
            token: self.config.token.clone(),
        };
        ws.send(Message::text(register.encode())).await.map_err(|e| SignalError::Unavailable(e.to_string()))?;
        if self.subscribed.load(Ordering::Acquire) {
            ws.send(Message::text(ClientMessage::Subscribe.encode()))
                .await
                .map_err(|e| SignalError::Unavailable(e.to_string()))?;
        }
        let reply = tokio::time::timeout(timeout, ws.next())
            .await
            .map_err(|_| SignalError::Unavailable("no answer to register".into()))?;
        match reply {
            Some(Ok(Message::Text(text))) => match ServerMessage::decode(text.as_str()) {
                Ok(ServerMessage::Registered { relays, .. }) => {
                    self.relays.send_replace(relays);
                    Ok(ws)
                }
                Ok(ServerMessage::Error { code, message, .. }) => {
                    let _ = ws.close(None).await;
                    if matches!(ErrorCode::from_code(code), Some(ErrorCode::Unauthorized | ErrorCode::VersionMismatch))
                    {
                        Err(SignalError::Refused(message))
                    } else {
                        Err(SignalError::Server { code, message })
                    }
                }
                Ok(other) => Err(SignalError::Unavailable(format!("unexpected answer to register: {other:?}"))),
                Err(e) => Err(SignalError::Unavailable(e.to_string())),
            },
            Some(Ok(other)) => Err(SignalError::Unavailable(format!("unexpected frame {other:?}"))),
            Some(Err(e)) => Err(SignalError::Unavailable(e.to_string())),
            None => Err(SignalError::Unavailable("server closed the session".into())),
        }
    }

    /// Runs one registered session until it ends.
    async fn session(&mut self, mut ws: Socket) -> Result<(), SignalError> {
        let mut pending = Pending::default();
        let mut ticker = tokio::time::interval(self.config.keep_alive_interval);
        ticker.tick().await;
        let mut unanswered = 0u32;
        let mut renew_at = renewal_time(&self.relays.borrow());
        let result = loop {
            let renew = async {
                match renew_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = renew => {
                    // Asked again only if the answer does not come.
                    renew_at = Some(tokio::time::Instant::now() + self.config.request_timeout);
                    if let Err(e) = ws.send(Message::text(ClientMessage::Relays.encode())).await {
                        break Err(SignalError::Unavailable(e.to_string()));
                    }
                }
                _ = self.shutdown.cancelled() => {
                    let _ = ws.close(None).await;
                    break Ok(());
                }
                _ = ticker.tick() => {
                    if unanswered >= self.config.keep_alive_attempts {
                        break Err(SignalError::Timeout(format!("{unanswered} keep-alives unanswered")));
                    }
                    unanswered += 1;
                    let ping = ClientMessage::Ping { nonce: random_u64() };
                    if let Err(e) = ws.send(Message::text(ping.encode())).await {
                        break Err(SignalError::Unavailable(e.to_string()));
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { break Ok(()) };
                    let message = match command {
                        Command::Reconnect => {
                            let _ = ws.close(None).await;
                            break Err(SignalError::Unavailable("the local network changed".into()));
                        }
                        Command::Send(message) => message,
                        Command::Connect { request_id, to, message, reply } => {
                            pending.connects.insert(request_id, (to, reply));
                            message
                        }
                        Command::List { reply } => {
                            pending.lists.push_back(reply);
                            ClientMessage::List
                        }
                    };
                    if let Err(e) = ws.send(Message::text(message.encode())).await {
                        break Err(SignalError::Unavailable(e.to_string()));
                    }
                }
                frame = ws.next() => {
                    // Any traffic proves the session alive.
                    unanswered = 0;
                    match frame {
                        Some(Ok(Message::Text(text))) => match ServerMessage::decode(text.as_str()) {
                            Ok(ServerMessage::Replaced { message }) => {
                                break Err(SignalError::Unavailable(format!("replaced: {message}")));
                            }
                            Ok(ServerMessage::Relays { relays }) => {
                                renew_at = renewal_time(&relays);
                                tracing::debug!(relays = relays.len(), "relay credentials renewed");
                                self.relays.send_replace(relays);
                            }
                            Ok(message) => self.dispatch(message, &mut pending).await,
                            Err(e) => tracing::warn!("ignoring malformed signaling message: {e}"),
                        },
                        Some(Ok(Message::Close(_))) | None => break Ok(()),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Err(SignalError::Unavailable(e.to_string())),
                    }
                }
            }
        };
        pending.fail_all("signaling connection lost");
        result
    }

    /// Hands a request to the node; dropped when the node falls behind.
    fn pass_on(&self, request: SignalRequest) {
        if self.incoming.try_send(request).is_err() {
            tracing::warn!("dropping a connect request: the node is not keeping up");
        }
    }

    async fn dispatch(&self, message: ServerMessage, pending: &mut Pending) {
        match message {
            ServerMessage::Answered { request_id, from, offer, observed } => {
                if let Some(reply) = pending.take_connect(request_id, &from) {
                    let _ = reply.send(Ok(PeerOffer { offer, observed }));
                }
            }
            ServerMessage::Rejected { request_id, from, code, message } => {
                if let Some(reply) = pending.take_connect(request_id, &from) {
                    let _ = reply.send(Err(SignalError::Rejected { code, message }));
                }
            }
            ServerMessage::Error { code, message, request_id: Some(request_id) } => {
                if let Some((_, reply)) = pending.connects.remove(&request_id) {
                    let _ = reply.send(Err(SignalError::Server { code, message }));
                }
            }
            ServerMessage::Error { code, message, request_id: None } => {
                tracing::warn!(code, "signaling server error: {message}");
            }
            ServerMessage::Peers { peers } => {
                if let Some(reply) = pending.lists.pop_front() {
                    let _ = reply.send(Ok(peers));
                }
            }
            ServerMessage::Incoming { request_id, from, convention, offer, observed } => {
                let request = IncomingRequest { request_id, from, convention, offer, observed };
                self.pass_on(SignalRequest::Node(request));
            }
            ServerMessage::RtcIncoming { request_id, from, convention, sdp } => {
                self.pass_on(SignalRequest::Browser(BrowserRequest { request_id, from, convention, sdp }));
            }
            ServerMessage::RtcCandidate { request_id, from, candidate } => {
                self.pass_on(SignalRequest::BrowserCandidate { from, request_id, candidate });
            }
            ServerMessage::Presence { id, online } => {
                let _ = self.presence.send(PresenceEvent { id, online });
            }
            ServerMessage::Pong { .. }
            | ServerMessage::RtcAnswered { .. }
            | ServerMessage::Registered { .. }
            | ServerMessage::Replaced { .. }
            | ServerMessage::Relays { .. } => {}
        }
    }
}

/// TLS for `wss://`: the public web roots plus the configured CA file.
fn tls_connector(config: &SignalClientConfig) -> Result<tokio_tungstenite::Connector, SignalError> {
    let tls = crate::transport::trust::client_config(config.ca_file.as_deref()).map_err(SignalError::Tls)?;
    Ok(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(tls)))
}

/// When to ask for fresh relay credentials: when a fifth of the earliest
/// one's validity is left, at least a minute before it expires, and never
/// before half of it has passed; `None` without relays.
fn renewal_time(relays: &[RelayCredentials]) -> Option<tokio::time::Instant> {
    let expires = relays.iter().map(|r| r.expires).min()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let left = Duration::from_secs(expires.saturating_sub(now));
    let wait = left.saturating_sub((left / 5).max(Duration::from_secs(60))).max(left / 2);
    Some(tokio::time::Instant::now() + wait)
}

fn fail_command(command: Command, why: &str) {
    match command {
        Command::Send(_) | Command::Reconnect => {}
        Command::Connect { reply, .. } => {
            let _ = reply.send(Err(SignalError::Unavailable(why.to_string())));
        }
        Command::List { reply } => {
            let _ = reply.send(Err(SignalError::Unavailable(why.to_string())));
        }
    }
}

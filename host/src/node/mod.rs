//! The node: one UDP socket and QUIC endpoint, the plugins loaded per
//! service number, and the dispatcher between them.

#[cfg(feature = "browsers")]
mod browsers;
mod connection;
mod link_repair;
mod link_watch;
mod links;
pub use links::MAX_LINK_STREAMS;
mod network_watch;
mod node_events;
#[cfg(feature = "plugins")]
mod plugins;
mod relay;
mod relay_rank;
mod signaling;
mod stream_client;
mod traversal;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

pub use connection::{Connection, ConnectionActivity, ConnectionEvent, ConnectionSender};
#[cfg(feature = "plugins")]
pub(crate) use plugins::LoadedService;
#[cfg(feature = "plugins")]
pub use plugins::{PluginBuild, ServiceInfo, SwapReport, manifest_path, plugin_name};
pub use relay::{RelayServer, RelayStatus};
pub use stream_client::{Commander, IncomingCommand, MediaEvent, MediaStream, StreamError, StreamSession, TalkBack};
pub use traversal::TraversalReport;

use crate::convention::{Convention, ConventionError, Transport};
use crate::dispatch::{Dispatcher, Incoming, NativeSlot};
use crate::events::NodeEvent;
use crate::nat::checks::CheckConfig;
use crate::nat::classify::NatReport;
use crate::nat::transaction::RetransmitPolicy;
#[cfg(feature = "plugins")]
use crate::runtime::PluginError;
#[cfg(feature = "plugins")]
use crate::runtime::actor::PluginEvent;
#[cfg(feature = "plugins")]
use crate::runtime::engine::PluginEngine;
#[cfg(feature = "plugins")]
use crate::runtime::state::{HostServices, PluginLimits};
#[cfg(feature = "plugins")]
use crate::runtime::subscriptions::{NodeEventFilter, NodeEventKinds, WatchFault};
#[cfg(feature = "plugins")]
use crate::runtime::supervisor::CrashPolicy;
use crate::signal::client::{PresenceEvent, SignalClient, SignalClientConfig, SignalStatus};
use crate::stream::{StreamService, StreamServiceHandle};
use crate::transport::conn::EVENT_CHANNEL_CAPACITY;
#[cfg(feature = "plugins")]
use crate::transport::conn::Owner;
use crate::transport::conn::{CloseKind, CloseReason, ConnEvent, ConnLimits, ConnectionId};
use crate::transport::identity::{Fingerprint, Identity, IdentityError};
#[cfg(feature = "browsers")]
use crate::transport::rtc::RtcHost;
#[cfg(feature = "browsers")]
use crate::transport::rtc::agent::RtcIdentity;
use crate::transport::socket::{FogSocket, SocketCounters};
use crate::transport::wire::RefuseCode;

/// Largest message a node accepts by default: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

/// Configuration of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id (any string up to 255 bytes, e.g. a MAC address).
    pub node_id: String,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Largest message in bytes; larger sends are refused, larger incoming
    /// frames end the connection with an error.
    pub max_message_size: usize,
    /// Most bytes queued for sending on one connection.
    pub send_buffer: usize,
    /// Longest a connect may take (QUIC handshake and accept).
    pub connect_timeout: Duration,
    /// Keep-alive interval of QUIC links and of the signaling session (the
    /// original's `time_inter_s`).
    pub keep_alive_interval: Duration,
    /// Keep-alive intervals without any answer after which a peer is
    /// considered gone (the original's `max_attempt_num`): its link closes
    /// and its connections end with reason timeout.
    pub keep_alive_attempts: u32,
    /// How long a closing side waits for the remote side to finish.
    pub close_grace: Duration,
    /// Limits for every plugin.
    #[cfg(feature = "plugins")]
    pub plugin_limits: PluginLimits,
    /// Crash handling for every plugin.
    #[cfg(feature = "plugins")]
    pub crash_policy: CrashPolicy,
    /// Directory of the precompiled plugin cache; `None` disables it.
    #[cfg(feature = "plugins")]
    pub cache_dir: Option<PathBuf>,
    /// The signaling server to register with (its `id` is replaced by
    /// `node_id`); `None` for a node reachable by address only.
    pub signal: Option<SignalClientConfig>,
    /// STUN server (`host:port`) for the public address and NAT
    /// classification; several separated by commas, or a name with
    /// addresses of both families: the first IPv4 one the node's socket
    /// reaches classifies, one of the other family gives that family's
    /// public address (dual stack). `None`: host candidates only.
    pub stun: Option<String>,
    /// Retransmissions of STUN requests to the server.
    pub stun_retransmit: RetransmitPolicy,
    /// Connectivity checks: time budget, pacing, probe limits.
    pub checks: CheckConfig,
    /// TURN relays to allocate on (the nearest that grants an allocation);
    /// when empty, the relays the signaling server hands out are used.
    pub relays: Vec<RelayServer>,
    /// PEM file of an extra certificate authority trusted for `turns:`
    /// relays, besides the public web roots.
    pub relay_ca: Option<PathBuf>,
    /// While a connection this node dialled runs through a relay, how
    /// often the connectivity checks are run again; when they find a
    /// direct path the connection moves to it.
    pub direct_recheck_interval: Duration,
    /// How often the node asks its STUN server for its public address to
    /// notice a change behind an unchanged local network (a new address
    /// from the ISP, another upstream NAT): then it adapts as to a local
    /// change. Zero: never (local changes are still noticed).
    pub public_address_check: Duration,
    /// File keeping the node's key pair and certificate across restarts
    /// (created on first use, owner-only); `None`: a new identity, hence a
    /// new certificate fingerprint, at every start.
    pub identity_file: Option<PathBuf>,
    /// Whether the node's socket passes several datagrams per system call
    /// (segmentation and receive offload, GSO and GRO) where the kernel
    /// offers them: far less CPU per byte on bulk transfers. Turn it off
    /// for an interface or a middlebox that mishandles offloaded
    /// datagrams.
    pub segmentation_offload: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            send_buffer: 8 << 20,
            connect_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_attempts: 6,
            close_grace: Duration::from_secs(5),
            #[cfg(feature = "plugins")]
            plugin_limits: PluginLimits::default(),
            #[cfg(feature = "plugins")]
            crash_policy: CrashPolicy::default(),
            #[cfg(feature = "plugins")]
            cache_dir: default_cache_dir(),
            signal: None,
            stun: None,
            stun_retransmit: RetransmitPolicy::DISCOVERY,
            checks: CheckConfig::default(),
            relays: Vec::new(),
            relay_ca: None,
            direct_recheck_interval: Duration::from_secs(15),
            public_address_check: Duration::from_secs(30),
            identity_file: None,
            segmentation_offload: true,
        }
    }
}

impl NodeConfig {
    /// How long a silent peer is waited for: keep-alive interval ×
    /// attempts.
    pub fn idle_timeout(&self) -> Duration {
        self.keep_alive_interval * self.keep_alive_attempts.max(1)
    }
}

/// `$XDG_CACHE_HOME/fogconnect` or `$HOME/.cache/fogconnect`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("fogconnect"));
    }
    std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|home| PathBuf::from(home).join(".cache/fogconnect"))
}

/// Errors of starting a node or managing its plugins.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The UDP socket could not be bound or configured.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The node id is not acceptable.
    #[error("invalid node id: {0}")]
    InvalidId(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Identity or TLS setup failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A plugin could not be loaded.
    #[cfg(feature = "plugins")]
    #[error("service {service}: {source}")]
    Plugin {
        /// The service number.
        service: u8,
        /// What failed.
        source: PluginError,
    },
    /// The plugin engine could not start.
    #[cfg(feature = "plugins")]
    #[error(transparent)]
    Engine(PluginError),
    /// The signaling client could not start.
    #[error("signaling: {0}")]
    Signal(String),
    /// No plugin is loaded for the service.
    #[error("no plugin loaded for service {0}")]
    NoSuchService(u8),
    /// A native handler was asked for a service number that is already
    /// served (by a plugin or another native handler).
    #[error("service {0} is already served (by a plugin or a native handler)")]
    ServiceTaken(u8),
    /// A second native default handler was asked for.
    #[error("the node already has a native default handler")]
    DefaultTaken,
}

/// Errors of connecting to a node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The convention number is invalid on this side already.
    #[error(transparent)]
    Convention(#[from] ConventionError),
    /// The transport is not offered by this node.
    #[error("unsupported transport: {0} is not offered by this node")]
    UnsupportedTransport(Transport),
    /// The remote node refused the request.
    #[error("refused by peer: {message}")]
    Refused {
        /// Stable reason code.
        code: RefuseCode,
        /// The peer's explanation, e.g. "no such service: 7".
        message: String,
    },
    /// The link to the peer carries the most connections one link
    /// carries at once ([`MAX_LINK_STREAMS`]); one must close first.
    #[error(
        "the link to this peer already carries {limit} connections, the most one link carries at once: close one first"
    )]
    LinkFull {
        /// The most connections one link carries at once.
        limit: u32,
    },
    /// The connect did not complete within the connect timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The peer presented another certificate than the pinned one.
    #[error("peer identity rejected: {0}")]
    Identity(String),
    /// The peer could not be reached or the QUIC connection failed.
    #[error("cannot reach peer: {0}")]
    Unreachable(String),
    /// The peer answered with something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// Connecting by id needs signaling, and it failed or is not set up.
    #[error("signaling: {0}")]
    Signal(String),
    /// The connectivity checks found no direct path; the reason says why,
    /// e.g. "relay required: symmetric × symmetric NATs with random ports".
    #[error("no direct path: {0}")]
    NoPath(String),
    /// The peer did not answer through signaling in time, or the signaling
    /// session was lost while waiting.
    #[error("signaling: {0}")]
    SignalTimeout(String),
}

impl ConnectError {
    /// The close reason a plugin sees for this failure.
    pub fn close_reason(&self) -> CloseReason {
        let kind = match self {
            ConnectError::Refused { .. } | ConnectError::Convention(_) | ConnectError::UnsupportedTransport(_) => {
                CloseKind::Refused
            }
            ConnectError::Timeout(_) | ConnectError::SignalTimeout(_) => CloseKind::Timeout,
            ConnectError::ShuttingDown => CloseKind::Local,
            _ => CloseKind::Error,
        };
        let message = match self {
            ConnectError::Refused { message, .. } => message.clone(),
            other => other.to_string(),
        };
        CloseReason::new(kind, message)
    }
}

pub(crate) struct NodeInner {
    config: NodeConfig,
    identity: Identity,
    endpoint: quinn::Endpoint,
    transport: Arc<quinn::TransportConfig>,
    #[cfg(feature = "plugins")]
    engine: PluginEngine,
    dispatcher: Arc<Dispatcher>,
    links: links::Links,
    next_id: AtomicU64,
    #[cfg(feature = "plugins")]
    plugin_events: broadcast::Sender<PluginEvent>,
    /// Every network signal the node sees (see [`Node::events`]).
    events: broadcast::Sender<NodeEvent>,
    shutdown: CancellationToken,
    conn_limits: ConnLimits,
    socket: Arc<FogSocket>,
    traversal: Arc<traversal::Traversal>,
    relay: Option<relay::RelayAgent>,
    socket_counters: Arc<SocketCounters>,
    started: Instant,
    runtime: tokio::runtime::Handle,
    signal: Option<SignalClient>,
    /// Certificate fingerprints learned from signaling, by peer id: a link
    /// claiming one of these ids must present that certificate.
    peer_fingerprints: Mutex<HashMap<String, Fingerprint>>,
    /// One gate per peer being dialled by id (see
    /// [`NodeInner::dial_gate`]).
    dialing: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// Refusals sent per caller (see [`signaling::refuse`]).
    refusals: Mutex<crate::limits::RateTable<String>>,
    /// Round-trip times the connectivity checks measured to addresses
    /// about to be dialled (see [`NodeInner::measured_transport`]).
    measured_rtts: Mutex<HashMap<SocketAddr, Duration>>,
    /// Browser connections (only with signaling: browsers find nodes
    /// there).
    #[cfg(feature = "browsers")]
    rtc: Option<RtcHost>,
    /// The node's DTLS certificate for browsers, made on first use.
    #[cfg(feature = "browsers")]
    rtc_identity: tokio::sync::OnceCell<RtcIdentity>,
}

/// A running fogconnect node.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use fogconnect::{Node, Transport};
/// let server = Node::builder().node_id("server").plugin(0, "echo.wasm").start().await?;
/// let client = Node::builder().node_id("client").start().await?;
/// let mut conn = client.connect(server.local_addr(), Transport::Quic, 0).await?;
/// conn.send(&b"hello"[..])?;
/// let reply = conn.recv().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.inner.config.node_id).field("addr", &self.local_addr()).finish()
    }
}

#[cfg(feature = "plugins")]
enum PluginSource {
    Path(PathBuf),
    Bytes { name: String, wasm: Vec<u8> },
}

/// Builds a [`Node`].
pub struct NodeBuilder {
    config: NodeConfig,
    #[cfg(feature = "plugins")]
    plugins: Vec<(u8, PluginSource)>,
    dispatcher: Arc<Dispatcher>,
    events: broadcast::Sender<NodeEvent>,
}

impl NodeBuilder {
    /// Serves `service` natively: the node hands its incoming connections
    /// to the returned [`Incoming`] from the moment it starts (none is
    /// refused for want of a handler while the node comes up).
    ///
    /// # Errors
    /// [`NodeError::ServiceTaken`] when the number is already served.
    pub fn incoming(&self, service: u8) -> Result<Incoming, NodeError> {
        native(&self.dispatcher, NativeSlot::Service(service))
    }

    /// Serves natively every service number that has no server of its own
    /// (plugin or [`NodeBuilder::incoming`]), from the moment the node
    /// starts.
    ///
    /// # Errors
    /// [`NodeError::DefaultTaken`] when there is one already.
    pub fn incoming_default(&self) -> Result<Incoming, NodeError> {
        native(&self.dispatcher, NativeSlot::Default)
    }

    /// Serves `service` as a native stream service (see
    /// [`Node::serve_streams`]) from the moment the node starts. Call it
    /// inside the tokio runtime the node will run on.
    ///
    /// # Errors
    /// [`NodeError::ServiceTaken`] when the number is already served;
    /// [`NodeError::InvalidConfig`] outside a tokio runtime.
    pub fn serve_streams(
        &self,
        service: u8,
        implementation: impl StreamService,
    ) -> Result<StreamServiceHandle, NodeError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| NodeError::InvalidConfig("serve_streams needs a tokio runtime to run in".into()))?;
        crate::stream::native::start(service, implementation, &self.dispatcher, runtime)
            .map_err(NodeError::ServiceTaken)
    }

    /// The node's events (see [`Node::events`]) from the moment it starts,
    /// so the first registration and classification are not missed.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Sets the node id.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.config.node_id = id.into();
        self
    }

    /// Sets the UDP address to bind (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Loads the plugin at `path` for `service` when the node starts.
    #[cfg(feature = "plugins")]
    pub fn plugin(mut self, service: u8, path: impl Into<PathBuf>) -> Self {
        self.plugins.push((service, PluginSource::Path(path.into())));
        self
    }

    /// Loads a plugin from bytes for `service` when the node starts.
    #[cfg(feature = "plugins")]
    pub fn plugin_bytes(mut self, service: u8, name: impl Into<String>, wasm: Vec<u8>) -> Self {
        self.plugins.push((service, PluginSource::Bytes { name: name.into(), wasm }));
        self
    }

    /// Registers with the signaling server at `url` (e.g.
    /// `ws://host:7600/ws`) using `token`, so peers can connect by id.
    /// Several servers of one signaling cluster go in one string,
    /// separated by commas: the node registers with the first that answers
    /// and moves to the next when its server is lost, its P2P connections
    /// untouched.
    pub fn signal(mut self, url: impl Into<String>, token: impl Into<String>) -> Self {
        self.config.signal = Some(SignalClientConfig::new(url, String::new(), token));
        self
    }

    /// Trusts the certificate authority in the PEM file `path` for a
    /// `wss://` signaling server (call after [`NodeBuilder::signal`]).
    pub fn signal_ca(mut self, path: impl Into<PathBuf>) -> Self {
        if let Some(signal) = &mut self.config.signal {
            signal.ca_file = Some(path.into());
        }
        self
    }

    /// Uses the STUN server at `server` (`host:port`) for the public
    /// address and NAT classification.
    pub fn stun(mut self, server: impl Into<String>) -> Self {
        self.config.stun = Some(server.into());
        self
    }

    /// Allocates on the TURN server at `url` (e.g.
    /// `turn:relay.example:3478`) with these long-term credentials; may be
    /// called again for fallback relays.
    ///
    /// # Errors
    /// The URL is not a TURN URL.
    pub fn relay(
        mut self,
        url: &str,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, crate::relay::url::TurnUrlError> {
        let url = url.parse()?;
        self.config.relays.push(RelayServer { url, username: username.into(), password: password.into() });
        Ok(self)
    }

    /// Keeps the node's key pair and certificate in `path` (created on
    /// first use, readable by its owner only), so its certificate
    /// fingerprint, which peers pin, survives restarts.
    pub fn identity_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.identity_file = Some(path.into());
        self
    }

    /// Replaces the whole configuration (keeps plugins given so far).
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes the configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut NodeConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Binds the socket, starts the QUIC endpoint and loads the plugins.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`NodeError`] when the socket cannot be bound, the id is invalid or a
    /// plugin cannot be loaded.
    pub async fn start(self) -> Result<Node, NodeError> {
        #[cfg(feature = "plugins")]
        let NodeBuilder { mut config, plugins, dispatcher, events } = self;
        #[cfg(not(feature = "plugins"))]
        let NodeBuilder { mut config, dispatcher, events } = self;
        let identity = match &config.identity_file {
            Some(path) => {
                let (identity, source) = Identity::load_or_create(path)?;
                if source == crate::transport::identity_file::IdentitySource::Created {
                    tracing::info!(file = %path.display(), fingerprint = %identity.fingerprint(), "new node identity created");
                }
                identity
            }
            None => Identity::generate()?,
        };
        if config.node_id.is_empty() {
            config.node_id = format!("node-{}", &identity.fingerprint().to_string()[..12]);
        }
        if let Some(problem) = crate::transport::wire::peer_id_problem(&config.node_id) {
            return Err(NodeError::InvalidId(problem.to_string()));
        }
        let bind_err = |source| NodeError::Bind { addr: config.listen, source };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
        let (socket, side_rx) = FogSocket::new(socket, config.segmentation_offload).map_err(bind_err)?;
        let socket_counters = socket.counters();
        let stun = match &config.stun {
            Some(servers) => traversal::StunServers::choose(
                &socket,
                &crate::nat::discovery::resolve_all(servers)
                    .await
                    .map_err(|e| NodeError::InvalidConfig(format!("stun server: {e}")))?,
            ),
            None => traversal::StunServers::default(),
        };
        let traversal = traversal::Traversal::new(socket.clone(), stun, config.stun_retransmit, config.checks);

        let transport = Arc::new(transport_config(&config, None)?);
        let server_config = identity.server_config(transport.clone())?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        // The socket facade demultiplexes by the first byte, which needs
        // QUIC's fixed bit: never ask peers to grease it (RFC 9287).
        endpoint_config.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;

        #[cfg(feature = "plugins")]
        let engine = PluginEngine::new(config.cache_dir.clone()).map_err(NodeError::Engine)?;
        let conn_limits = ConnLimits {
            max_message_size: config.max_message_size,
            send_buffer: config.send_buffer,
            close_grace: config.close_grace,
        };
        #[cfg(feature = "plugins")]
        let (plugin_events, _) = broadcast::channel(1024);
        let (incoming_tx, incoming_rx) = mpsc::channel(256);
        let signal = match config.signal.clone() {
            Some(mut signal_config) => {
                signal_config.id = config.node_id.clone();
                signal_config.keep_alive_interval = config.keep_alive_interval;
                signal_config.keep_alive_attempts = config.keep_alive_attempts.max(1);
                Some(SignalClient::start(signal_config, incoming_tx).map_err(|e| NodeError::Signal(e.to_string()))?)
            }
            None => None,
        };
        let shutdown = CancellationToken::new();
        #[cfg(feature = "browsers")]
        let rtc = signal.as_ref().map(|_| RtcHost::start(socket.clone(), shutdown.clone()));
        let relay = relay_servers(&config, signal.as_ref()).map(|servers| {
            relay::RelayAgent::start(socket.clone(), servers, config.relay_ca.clone(), shutdown.clone())
        });
        let inner = Arc::new(NodeInner {
            config,
            identity,
            endpoint,
            transport,
            #[cfg(feature = "plugins")]
            engine,
            dispatcher,
            links: links::Links::default(),
            next_id: AtomicU64::new(1),
            #[cfg(feature = "plugins")]
            plugin_events,
            events,
            shutdown,
            conn_limits,
            socket,
            traversal: traversal.clone(),
            relay,
            socket_counters,
            started: Instant::now(),
            runtime: tokio::runtime::Handle::current(),
            signal,
            peer_fingerprints: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            refusals: Mutex::new(signaling::refusal_budget()),
            measured_rtts: Mutex::new(HashMap::new()),
            #[cfg(feature = "browsers")]
            rtc: rtc.clone(),
            #[cfg(feature = "browsers")]
            rtc_identity: tokio::sync::OnceCell::new(),
        });
        if inner.signal.is_some() {
            tokio::spawn(signaling::answer_requests(inner.clone(), incoming_rx));
        }
        tokio::spawn(links::accept_loop(inner.clone()));
        tokio::spawn(node_events::gather(inner.clone()));
        tokio::spawn(network_watch::watch(inner.clone()));
        #[cfg(feature = "browsers")]
        tokio::spawn(traversal.clone().run_mux(side_rx, rtc));
        #[cfg(not(feature = "browsers"))]
        tokio::spawn(traversal.clone().run_mux(side_rx));
        traversal.classify();
        let node = Node { inner };
        #[cfg(feature = "plugins")]
        for (service, source) in plugins {
            let result = match source {
                PluginSource::Path(path) => node.load_plugin(service, &path).await,
                PluginSource::Bytes { name, wasm } => node.load_plugin_bytes(service, &name, &wasm).await,
            };
            if let Err(e) = result {
                node.shutdown().await;
                return Err(e);
            }
        }
        tracing::info!(id = %node.id(), addr = %node.local_addr(), fingerprint = %node.fingerprint(), "node started");
        Ok(node)
    }
}

/// How many ack-eliciting packets a node may receive before it must
/// acknowledge (QUIC ACK frequency extension).
const ACK_ELICITING_THRESHOLD: u32 = 9;

/// The QUIC transport settings of the node's links; `initial_rtt` for a
/// dial whose path the connectivity checks measured (quinn's default
/// otherwise).
fn transport_config(config: &NodeConfig, initial_rtt: Option<Duration>) -> Result<quinn::TransportConfig, NodeError> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(config.keep_alive_interval));
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout())
        .map_err(|_| NodeError::InvalidConfig("keep-alive interval × attempts out of range".into()))?;
    transport.max_idle_timeout(Some(idle));
    // Raised per link as its connections need (see links::serve_link).
    transport.max_concurrent_bidi_streams(links::INITIAL_LINK_STREAMS.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.send_window(crate::transport::conn::LINK_SEND_WINDOW);
    transport.datagram_send_buffer_size(crate::transport::datagram::LINK_DATAGRAM_SEND_BUFFER);
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into());
    transport.ack_frequency_config(Some(acks));
    if let Some(rtt) = initial_rtt {
        transport.initial_rtt(rtt);
    }
    Ok(transport)
}

fn native(dispatcher: &Arc<Dispatcher>, slot: NativeSlot) -> Result<Incoming, NodeError> {
    dispatcher.add_native(slot).map_err(|slot| match slot {
        NativeSlot::Service(n) => NodeError::ServiceTaken(n),
        NativeSlot::Default => NodeError::DefaultTaken,
    })
}

/// The relays the node allocates on: the configured ones, else those
/// signaling hands out (kept current across re-registrations); `None`
/// when there can be none.
fn relay_servers(
    config: &NodeConfig,
    signal: Option<&SignalClient>,
) -> Option<tokio::sync::watch::Receiver<Vec<RelayServer>>> {
    if !config.relays.is_empty() {
        return Some(tokio::sync::watch::channel(config.relays.clone()).1);
    }
    let mut granted = signal?.relays();
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(async move {
        loop {
            let servers: Vec<RelayServer> = granted
                .borrow_and_update()
                .iter()
                .filter_map(|c| match RelayServer::from_credentials(c) {
                    Ok(server) => Some(server),
                    Err(e) => {
                        tracing::warn!("signaling handed out a relay this node cannot use: {e}");
                        None
                    }
                })
                .collect();
            if tx.send(servers).is_err() || granted.changed().await.is_err() {
                return;
            }
        }
    });
    Some(rx)
}

impl Node {
    /// A builder with the default configuration.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            config: NodeConfig::default(),
            #[cfg(feature = "plugins")]
            plugins: Vec::new(),
            dispatcher: Arc::default(),
            events: broadcast::channel(node_events::NODE_EVENT_CAPACITY).0,
        }
    }

    /// Serves `service` natively, with the same semantics a plugin gets:
    /// each incoming connection for it is handed to the returned
    /// [`Incoming`] as a passive [`Connection`]. Dropping the `Incoming`
    /// frees the number.
    ///
    /// # Errors
    /// [`NodeError::ServiceTaken`] when a plugin or another native handler
    /// serves the number.
    pub fn incoming(&self, service: u8) -> Result<Incoming, NodeError> {
        native(&self.inner.dispatcher, NativeSlot::Service(service))
    }

    /// Serves natively every service number without a server of its own
    /// (a plugin or [`Node::incoming`]): the original C API's passive
    /// callback, which sees every connection and reads the service from the
    /// convention number.
    ///
    /// # Errors
    /// [`NodeError::DefaultTaken`] when there is one already.
    pub fn incoming_default(&self) -> Result<Incoming, NodeError> {
        native(&self.inner.dispatcher, NativeSlot::Default)
    }

    /// Serves `service` as a stream service with the application's own
    /// code, with the semantics a stream plugin gets (pull every 10 ms,
    /// watermarks, commands, talk-back): see [`crate::stream::native`].
    /// The service runs until the returned handle's
    /// [`StreamServiceHandle::stop`], the last handle is dropped, or the
    /// node shuts down.
    ///
    /// # Errors
    /// [`NodeError::ServiceTaken`] when a plugin or native handler serves
    /// the number.
    pub fn serve_streams(
        &self,
        service: u8,
        implementation: impl StreamService,
    ) -> Result<StreamServiceHandle, NodeError> {
        crate::stream::native::start(service, implementation, &self.inner.dispatcher, self.inner.runtime.clone())
            .map_err(NodeError::ServiceTaken)
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.endpoint.local_addr().unwrap_or(self.inner.config.listen)
    }

    /// Time since the node started: the clock its plugins read with
    /// `monotonic-now` (in nanoseconds), to line their logs and events up
    /// with the application's.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The certificate fingerprint peers can pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.identity.fingerprint()
    }

    /// The NAT classification, once the STUN server answered (`None`
    /// without a STUN server or before discovery finished).
    pub fn nat_report(&self) -> Option<Arc<NatReport>> {
        self.inner.traversal.nat().borrow().clone()
    }

    /// The public address of the node's socket as the STUN server sees it
    /// (its server-reflexive candidate); `None` without a STUN server or an
    /// answer.
    pub async fn public_addr(&self) -> Option<SocketAddr> {
        self.inner.traversal.public_addr().await
    }

    /// Waits up to `limit` for the NAT classification.
    pub async fn nat_classified(&self, limit: Duration) -> Option<Arc<NatReport>> {
        let mut watch = self.inner.traversal.nat();
        let result = tokio::time::timeout(limit, watch.wait_for(|state| state.is_some())).await;
        match result {
            Ok(Ok(state)) => state.clone(),
            _ => None,
        }
    }

    /// Where the node's relay allocation stands (`None` when the node has
    /// neither configured relays nor signaling that could hand some out).
    pub fn relay_status(&self) -> Option<tokio::sync::watch::Receiver<RelayStatus>> {
        self.inner.relay.as_ref().map(relay::RelayAgent::status)
    }

    /// The relays and credentials the signaling server handed out at the
    /// last registration (empty without signaling or when it hands out
    /// none).
    pub fn signal_relays(&self) -> Vec<crate::signal::protocol::RelayCredentials> {
        self.inner.signal.as_ref().map(|s| s.relays().borrow().clone()).unwrap_or_default()
    }

    /// Datagram counters of the node's socket.
    pub fn socket_counters(&self) -> Arc<SocketCounters> {
        self.inner.socket_counters.clone()
    }

    /// Every network signal the node sees from now on, as one stream:
    /// signaling session up and lost, NAT classification, relay
    /// allocation, presence (once [`Node::presence`] subscribed to it),
    /// and what changes under each link (path, silence, recovery), with
    /// the peer it concerns. A subscriber that falls more than 256
    /// events behind misses the oldest (`RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.events.subscribe()
    }

    /// Subscribes to plugin crash, restart and disable events.
    #[cfg(feature = "plugins")]
    pub fn plugin_events(&self) -> broadcast::Receiver<PluginEvent> {
        self.inner.plugin_events.subscribe()
    }

    /// Connects to the node at `addr` for `service` over `transport`; the
    /// returned connection is owned by the caller (not by a plugin).
    ///
    /// # Errors
    /// [`ConnectError`]: refused by the peer (e.g. no plugin for the
    /// service), timeout, unreachable, identity mismatch.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        transport: Transport,
        service: u8,
    ) -> Result<Connection, ConnectError> {
        let convention = Convention::new(transport, service).raw();
        links::check_carried(convention)?;
        self.connect_raw(addr, convention, None).await
    }

    /// Like [`Node::connect`] with the raw convention number and an optional
    /// pinned certificate fingerprint. The raw number is sent as given, also
    /// one naming a transport this node does not offer, so that the passive
    /// side's validation can be exercised (should a peer accept such a
    /// transport, the connect fails with [`ConnectError::Protocol`]).
    ///
    /// # Errors
    /// As [`Node::connect`], plus [`ConnectError::Identity`] when the peer's
    /// certificate does not match `expected`.
    pub async fn connect_raw(
        &self,
        addr: SocketAddr,
        convention: u32,
        expected: Option<Fingerprint>,
    ) -> Result<Connection, ConnectError> {
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let id = self.inner.next_connection_id();
        let shared = links::open(&self.inner, addr, convention, expected, id, tx, false).await?;
        Ok(Connection::new(shared, rx))
    }

    /// Connects to the node registered as `peer_id` with the signaling
    /// server, for `service` over `transport`. The peer's certificate
    /// fingerprint from signaling is pinned. Both nodes run connectivity
    /// checks on their candidates with the plan their NAT pair needs
    /// (see [`crate::nat`]); the best working pair (LAN first, then lowest
    /// RTT) carries the connection, and [`Connection::traversal`] tells how
    /// it was found. A live link to the peer is reused without signaling.
    ///
    /// # Errors
    /// [`ConnectError::Signal`] when the node has no signaling or the peer
    /// is not online, [`ConnectError::NoPath`] when the checks found no
    /// direct path (with the reason, e.g. "relay required: ..."), plus the
    /// errors of [`Node::connect`].
    pub async fn connect_peer(
        &self,
        peer_id: &str,
        transport: Transport,
        service: u8,
    ) -> Result<Connection, ConnectError> {
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let id = self.inner.next_connection_id();
        let convention = Convention::new(transport, service).raw();
        let (shared, traversal) = signaling::open_by_id(&self.inner, peer_id, convention, id, tx, false).await?;
        Ok(Connection::new(shared, rx).with_traversal(traversal))
    }

    /// The ids registered with the signaling server.
    ///
    /// # Errors
    /// [`ConnectError::Signal`] without signaling or when it fails.
    pub async fn peers(&self) -> Result<Vec<String>, ConnectError> {
        let signal =
            self.inner.signal.as_ref().ok_or_else(|| ConnectError::Signal("no signaling server configured".into()))?;
        signal.peers().await.map_err(|e| ConnectError::Signal(e.to_string()))
    }

    /// Presence events from the signaling server (peers online/offline),
    /// kept up across reconnects.
    ///
    /// # Errors
    /// [`ConnectError::Signal`] without signaling.
    pub async fn presence(&self) -> Result<broadcast::Receiver<PresenceEvent>, ConnectError> {
        let signal =
            self.inner.signal.as_ref().ok_or_else(|| ConnectError::Signal("no signaling server configured".into()))?;
        Ok(signal.presence().await)
    }

    /// The signaling status, `None` without signaling.
    pub fn signal_status(&self) -> Option<SignalStatus> {
        self.inner.signal.as_ref().map(SignalClient::status)
    }

    /// Waits until registered with the signaling server, at most `limit`.
    ///
    /// # Errors
    /// [`ConnectError::Signal`] without signaling or when not registered
    /// in time.
    pub async fn registered(&self, limit: Duration) -> Result<(), ConnectError> {
        let signal =
            self.inner.signal.as_ref().ok_or_else(|| ConnectError::Signal("no signaling server configured".into()))?;
        signal.registered(limit).await.map_err(|e| ConnectError::Signal(e.to_string()))
    }

    /// Closes every connection (plugins see `on-close` and Rust API
    /// connections `Closed`, both with kind `local`; peers see end of file),
    /// stops the plugins and the endpoint. Bounded in time: peers that do
    /// not answer are not waited for.
    pub async fn shutdown(&self) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        self.inner.shutdown.cancel();
        if let Some(signal) = &self.inner.signal {
            signal.shutdown();
        }
        // Native stream services end their streams and connections first.
        let native_streams = self.inner.dispatcher.close_native();
        for owner in &native_streams {
            let _ = owner.send(ConnEvent::Shutdown).await;
        }
        for owner in &native_streams {
            owner.closed().await;
        }
        #[cfg(feature = "plugins")]
        self.stop_plugins().await;
        // Connections not owned by plugins (the Rust API's) end too.
        self.inner.links.close_all("peer node shutting down");
        // Let the close frames leave, then close the endpoint.
        self.inner.links.live.drained(Duration::from_millis(500)).await;
        self.inner.endpoint.close(0u32.into(), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

impl Node {
    /// Stops every plugin and waits for their threads (shutdown).
    #[cfg(feature = "plugins")]
    async fn stop_plugins(&self) {
        let services = self.inner.dispatcher.take_plugins();
        for service in &services {
            service.actor.stop().await;
        }
        let joined = tokio::task::spawn_blocking(move || {
            for service in &services {
                service.actor.join();
            }
        });
        let _ = joined.await;
    }
}

impl NodeInner {
    fn next_connection_id(&self) -> ConnectionId {
        ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Remembers the round trip the checks measured to `addr`, for the
    /// dial that follows.
    fn remember_rtt(&self, addr: SocketAddr, rtt: Duration) {
        let mut rtts = self.measured_rtts.lock().unwrap_or_else(|p| p.into_inner());
        if rtts.len() >= 1024 {
            rtts.clear();
        }
        rtts.insert(addr, rtt);
    }

    /// The QUIC transport settings of a dial to `addr`: with the first
    /// retransmission timed from the round trip the checks measured, if
    /// they did (twice it, 10 ms at least, quinn's 333 ms at most), rather
    /// than from quinn's default guess, which on a lossy path costs a
    /// second per lost handshake packet.
    fn dial_transport(&self, addr: SocketAddr) -> Arc<quinn::TransportConfig> {
        self.measured_transport(addr).unwrap_or_else(|| self.transport.clone())
    }

    /// The transport settings for a handshake with `addr` when the checks
    /// measured its round trip (see [`NodeInner::dial_transport`]).
    fn measured_transport(&self, addr: SocketAddr) -> Option<Arc<quinn::TransportConfig>> {
        let measured = self.measured_rtts.lock().unwrap_or_else(|p| p.into_inner()).remove(&addr)?;
        let initial = (measured * 2).clamp(Duration::from_millis(10), Duration::from_millis(333));
        transport_config(&self.config, Some(initial)).ok().map(Arc::new)
    }

    /// The gate connects to `peer` by id pass one at a time until a link
    /// exists; it lives as long as someone holds it.
    fn dial_gate(&self, peer: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut dialing = self.dialing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gate) = dialing.get(peer).and_then(Weak::upgrade) {
            return gate;
        }
        dialing.retain(|_, gate| gate.strong_count() > 0);
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        dialing.insert(peer.to_string(), Arc::downgrade(&gate));
        gate
    }
}

#[cfg(feature = "plugins")]
/// Where a plugin's `connect-peer` goes.
enum Target {
    Address(SocketAddr),
    Id(String),
}

#[cfg(feature = "plugins")]
/// The node as plugins see it; weak so plugins do not keep the node alive.
struct NodeServices(Weak<NodeInner>);

#[cfg(feature = "plugins")]
impl HostServices for NodeServices {
    fn next_connection_id(&self) -> ConnectionId {
        match self.0.upgrade() {
            Some(inner) => inner.next_connection_id(),
            None => ConnectionId(0),
        }
    }

    fn connect(&self, peer: &str, convention: Convention, id: ConnectionId, owner: Owner) -> Result<(), String> {
        let inner = self.0.upgrade().ok_or("node is shutting down")?;
        let target = match peer.parse::<SocketAddr>() {
            Ok(addr) => Target::Address(addr),
            Err(_) if inner.signal.is_some() && !peer.is_empty() => Target::Id(peer.to_string()),
            Err(_) => {
                return Err(format!(
                    "{peer:?} is not a socket address (host:port); connecting by peer id needs a signaling server, which this node has not joined"
                ));
            }
        };
        // Called from a plugin thread: spawn on the node's runtime.
        let runtime = inner.runtime.clone();
        runtime.spawn(async move {
            let result = match target {
                Target::Address(addr) => {
                    links::open(&inner, addr, convention.raw(), None, id, owner.clone(), true).await
                }
                Target::Id(peer) => signaling::open_by_id(&inner, &peer, convention.raw(), id, owner.clone(), true)
                    .await
                    .map(|(shared, _)| shared),
            };
            if let Err(e) = result {
                let _ = owner.send(ConnEvent::OpenFailed(id, e.close_reason())).await;
            }
        });
        Ok(())
    }

    fn forward_node_events(&self, kinds: NodeEventKinds, filter: Arc<NodeEventFilter>, owner: Owner) {
        if let Some(inner) = self.0.upgrade() {
            let events = inner.events.subscribe();
            let state = node_events::current_state(&inner, kinds);
            let forward = node_events::forward_to_plugin(state, events, inner.shutdown.clone(), filter, owner);
            inner.runtime.spawn(forward);
        }
    }

    fn watch_presence(&self, peer: &str, owner: Owner) -> Result<(), WatchFault> {
        let inner = self.0.upgrade().ok_or(WatchFault::NoSignaling)?;
        let signal = inner.signal.clone().ok_or(WatchFault::NoSignaling)?;
        inner.runtime.spawn(node_events::tell_presence(signal, peer.to_string(), owner));
        Ok(())
    }
}

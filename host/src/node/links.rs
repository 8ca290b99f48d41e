//! QUIC links between nodes and the connection handshake on top of them.
//!
//! A link is one QUIC connection to a remote node; every fogconnect
//! connection between the two nodes is a bidirectional stream on it, so a
//! second connection to the same node costs no handshake. Links are shared
//! both ways: a link the remote node dialled is reused to dial it back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::link_watch::{LinkMonitor, LinkWatch, LinkWatches, sample_interval};
use super::{ConnectError, NodeInner};
use crate::convention::{Convention, Transport};
use crate::transport::conn::{
    self, ConnMeta, ConnShared, ConnectionId, HandshakenStream, LiveConnections, MessageWay, Owner, PathKind,
};
use crate::transport::identity::{Fingerprint, peer_fingerprint};
use crate::transport::kcp_conn::KcpSetup;
use crate::transport::socket::canonical;
use crate::transport::wire::{Decoder, Frame, RefuseCode, WIRE_VERSION, WireError};

type LinkSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// The node's links by remote address, its connections, and the count of
/// live connections.
#[derive(Default)]
pub(super) struct Links {
    slots: Mutex<HashMap<SocketAddr, LinkSlot>>,
    connections: Mutex<HashMap<ConnectionId, Weak<ConnShared>>>,
    pub(super) live: Arc<LiveConnections>,
    /// The events of each live link.
    pub(super) watches: LinkWatches,
}

impl Links {
    /// Remembers a connection so shutdown can close it.
    pub(super) fn register(&self, shared: &Arc<ConnShared>) {
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() >= 64 && conns.len().is_power_of_two() {
            conns.retain(|_, weak| weak.strong_count() > 0);
        }
        conns.insert(shared.meta().id, Arc::downgrade(shared));
    }

    /// Closes every connection still open (node shutdown).
    pub(super) fn close_all(&self, message: &str) {
        let conns: Vec<_> = self.connections.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (_, weak) in conns {
            if let Some(shared) = weak.upgrade() {
                shared.close_for_shutdown(message);
            }
        }
    }

    /// The address of a live link whose peer presents `fingerprint`, if
    /// one exists (slots busy with a dial are skipped).
    pub(super) fn live_addr_of(&self, fingerprint: Fingerprint) -> Option<SocketAddr> {
        let slots: Vec<(SocketAddr, LinkSlot)> =
            self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(a, s)| (*a, s.clone())).collect();
        slots.into_iter().find_map(|(addr, slot)| {
            let guard = slot.try_lock().ok()?;
            let conn = guard.as_ref()?;
            (conn.close_reason().is_none() && peer_fingerprint(conn) == Some(fingerprint)).then_some(addr)
        })
    }

    /// The live link known at `addr`, if any (not while a dial holds it).
    pub(super) fn connection_at(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        let slot = self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(&addr).cloned()?;
        let guard = slot.try_lock().ok()?;
        guard.as_ref().filter(|conn| conn.close_reason().is_none()).cloned()
    }

    /// The watch of the live link known at `addr`, if any.
    pub(super) fn watch_at(&self, addr: SocketAddr) -> Option<Arc<LinkWatch>> {
        self.watches.get(&self.connection_at(addr)?)
    }

    fn slot(&self, addr: SocketAddr) -> LinkSlot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(addr).or_default().clone()
    }

    /// Records an incoming link unless a live one to that address exists.
    async fn adopt(&self, conn: &quinn::Connection) {
        let slot = self.slot(canonical(conn.remote_address()));
        let mut guard = slot.lock().await;
        if guard.as_ref().is_none_or(|c| c.close_reason().is_some()) {
            *guard = Some(conn.clone());
        }
    }

    /// Forgets a closed link known at `addr`, and the address unless a new link to it
    /// was made meanwhile, so the table does not grow with every peer ever
    /// seen. Returns whether no link to the address is left.
    async fn forget(&self, conn: &quinn::Connection, addr: SocketAddr) -> bool {
        let slot = self.slot(addr);
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
            *guard = None;
        }
        if guard.is_none() {
            // A dial racing with this removal keeps its own slot and may
            // create a second link; that costs a handshake, nothing else.
            self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(&addr);
            return true;
        }
        false
    }
}

/// Returns a live link to `addr`, dialling one if needed.
pub(super) async fn link(
    inner: &Arc<NodeInner>,
    addr: SocketAddr,
    expected: Option<Fingerprint>,
) -> Result<quinn::Connection, ConnectError> {
    let slot = inner.links.slot(addr);
    let mut guard = slot.lock().await;
    if let Some(conn) = guard.as_ref()
        && conn.close_reason().is_none()
    {
        if let Some(expected) = expected
            && peer_fingerprint(conn) != Some(expected)
        {
            return Err(ConnectError::Identity(format!(
                "the node at {addr} does not present the pinned certificate {expected}"
            )));
        }
        return Ok(conn.clone());
    }
    let config = inner
        .identity
        .client_config(expected, inner.dial_transport(addr))
        .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    let connecting = inner
        .endpoint
        .connect_with(config, addr, "fogconnect")
        .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    let conn = connecting.await.map_err(|e| match e {
        quinn::ConnectionError::TransportError(t) if t.to_string().contains("fingerprint") => {
            ConnectError::Identity(t.to_string())
        }
        quinn::ConnectionError::TimedOut => ConnectError::Timeout(inner.config.idle_timeout()),
        other => ConnectError::Unreachable(other.to_string()),
    })?;
    *guard = Some(conn.clone());
    // Made before the link task runs, so connections on the link find it.
    let watch = inner.links.watches.of(&conn);
    tokio::spawn(serve_link(inner.clone(), conn.clone(), watch));
    Ok(conn)
}

/// Accepts incoming QUIC connections until the node shuts down.
pub(super) async fn accept_loop(inner: Arc<NodeInner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            incoming = inner.endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        let inner = inner.clone();
        tokio::spawn(async move {
            // A caller the checks just measured gets its handshake
            // retransmissions timed from that round trip.
            let measured = inner.measured_transport(canonical(incoming.remote_address()));
            let connecting = match measured.map(|t| inner.identity.server_config(t)) {
                Some(Ok(config)) => incoming.accept_with(Arc::new(config)),
                _ => incoming.accept(),
            };
            let connected = match connecting {
                Ok(connecting) => connecting.await,
                Err(e) => Err(e),
            };
            match connected {
                Ok(conn) => {
                    tracing::debug!(remote = %conn.remote_address(), "link accepted");
                    let watch = inner.links.watches.of(&conn);
                    inner.links.adopt(&conn).await;
                    serve_link(inner, conn, watch).await;
                }
                Err(e) => tracing::debug!("incoming link failed: {e}"),
            }
        });
    }
}

/// Streams (connections) a peer may open on a link at once, at first; the
/// limit doubles as the peer's connections near it, up to
/// [`LINK_STREAM_CREDIT`]. quinn keeps state for every stream the limit
/// allows, so a large fixed limit costs every link ~340 KiB (4,096).
pub const INITIAL_LINK_STREAMS: u32 = 32;

/// The most connections one link carries at once each way: the streams a
/// peer may open on it, and the connections this node opens on it (one
/// more fails at once with [`ConnectError::LinkFull`]). A cap on what one
/// peer can make this node keep; quinn's state for the streams allowed
/// grows with the connections actually open.
pub const MAX_LINK_STREAMS: u32 = 4096;

/// The streams a peer may open on a link at most, in QUIC: a quarter more
/// than [`MAX_LINK_STREAMS`], because quinn grants a closed stream's place
/// again only once an eighth of the limit has closed. Without the margin a
/// peer holding the most connections would wait, after closing one, until
/// 512 had closed. Streams beyond [`MAX_LINK_STREAMS`] (a peer that does
/// not count its own) are refused with the reason.
const LINK_STREAM_CREDIT: u32 = MAX_LINK_STREAMS + MAX_LINK_STREAMS / 4;

/// Accepts the streams (connect requests) the remote node opens on a link,
/// and watches its path and liveness.
async fn serve_link(inner: Arc<NodeInner>, quic: quinn::Connection, watch: Arc<LinkWatch>) {
    let first = canonical(quic.remote_address());
    let datagrams = watch.datagrams.clone();
    let open = Arc::new(conn::LiveConnections::default());
    let mut limit = INITIAL_LINK_STREAMS;
    let idle = inner.config.idle_timeout();
    let mut monitor = LinkMonitor::new(&quic, watch, inner.socket.clone(), inner.events.clone(), idle);
    let mut samples = tokio::time::interval(sample_interval(inner.config.keep_alive_interval));
    samples.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stream = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            stream = quic.accept_bi() => stream,
            _ = samples.tick() => {
                monitor.sample(&quic);
                continue;
            }
            () = monitor.poked() => {
                monitor.sample(&quic);
                continue;
            }
            // UDP transport: each datagram to the connection it names.
            datagram = quic.read_datagram() => match datagram {
                Ok(datagram) => {
                    datagrams.deliver(datagram);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        match stream {
            Ok((send, recv)) => {
                let counted = open.enter();
                // Raise the limit before the peer runs into it, so a burst
                // of connects waits for no extra round trip.
                if open.count() as u64 * 4 >= u64::from(limit) * 3 && limit < LINK_STREAM_CREDIT {
                    limit = (limit * 2).min(LINK_STREAM_CREDIT);
                    quic.set_max_concurrent_bi_streams(limit.into());
                }
                if open.count() > MAX_LINK_STREAMS as usize {
                    let why = format!(
                        "this link already carries {MAX_LINK_STREAMS} connections, the most one link carries at once"
                    );
                    tokio::spawn(refuse(send, RefuseCode::Other, why));
                    continue;
                }
                tokio::spawn(answer(inner.clone(), quic.clone(), send, recv, counted));
            }
            Err(e) => {
                tracing::debug!(remote = %quic.remote_address(), "link ended: {e}");
                break;
            }
        }
    }
    monitor.finish(&inner.links.watches, &quic);
    // The address the link was made or accepted at: the path may have
    // moved since (relay to direct).
    let current = canonical(quic.remote_address());
    let relayed = inner.socket.path_kind(first) == PathKind::Relayed;
    if inner.links.forget(&quic, first).await {
        // Routes (extra sockets, relay) that carried this link are no
        // longer needed.
        inner.socket.unroute(first);
        inner.socket.unroute(current);
    }
    if relayed
        && matches!(quic.close_reason(), Some(quinn::ConnectionError::TimedOut))
        && let Some(relay) = &inner.relay
    {
        // A relayed link went silent: make sure the allocation still
        // exists (a restarted relay has lost it; the node then allocates
        // again).
        relay.verify();
    }
}

/// Why reading a handshake frame failed.
enum HandshakeError {
    Wire(WireError),
    Read(String),
    Ended,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Wire(e) => write!(f, "{e}"),
            HandshakeError::Read(e) => f.write_str(e),
            HandshakeError::Ended => f.write_str("stream ended before the handshake completed"),
        }
    }
}

async fn read_frame(recv: &mut quinn::RecvStream, decoder: &mut Decoder) -> Result<Frame, HandshakeError> {
    loop {
        if let Some(frame) = decoder.next_frame().map_err(HandshakeError::Wire)? {
            return Ok(frame);
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => decoder.push(&chunk.bytes),
            Ok(None) => return Err(HandshakeError::Ended),
            Err(e) => return Err(HandshakeError::Read(e.to_string())),
        }
    }
}

/// The id to show for a peer that claims `claimed` over `quic`, and
/// whether it is verified: the claimed id when signaling vouched for it
/// with the certificate the peer presented in the handshake; otherwise
/// (a connect by address, or an id signaling never introduced) `fp:` and
/// the fingerprint of that certificate, which the handshake did prove.
fn shown_peer_id(inner: &NodeInner, claimed: String, quic: &quinn::Connection) -> (String, bool) {
    let presented = peer_fingerprint(quic);
    match (super::signaling::known_fingerprint(inner, &claimed), presented) {
        (Some(vouched), Some(presented)) if vouched == presented => (claimed, true),
        (_, Some(presented)) => (format!("{}{presented}", crate::transport::wire::KEY_ID_PREFIX), false),
        // Our TLS configuration always asks for a certificate.
        (_, None) => (format!("{}unknown", crate::transport::wire::KEY_ID_PREFIX), false),
    }
}

/// The events of the link `quic` for a new connection to `peer`.
fn link_events(
    inner: &NodeInner,
    quic: &quinn::Connection,
    peer: &str,
) -> Option<tokio::sync::broadcast::Receiver<crate::events::NetworkEvent>> {
    let watch = inner.links.watches.get(quic)?;
    watch.name_peer(peer);
    Some(watch.subscribe())
}

async fn refuse(mut send: quinn::SendStream, code: RefuseCode, message: String) {
    tracing::debug!(?code, "refusing connect request: {message}");
    let _ = send.write_all(&Frame::Refuse { code, message }.encode()).await;
    let _ = send.finish();
    // Give the refusal time to arrive before the stream is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

/// Passive side of the handshake: validate the request, route it to the
/// service's plugin, accept or refuse.
async fn answer(
    inner: Arc<NodeInner>,
    quic: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    counted: conn::LiveGuard,
) {
    let mut decoder = Decoder::new(inner.config.max_message_size);
    let request = tokio::time::timeout(inner.config.connect_timeout, read_frame(&mut recv, &mut decoder)).await;
    let (version, raw, peer_id) = match request {
        Ok(Ok(Frame::Open { version, convention, peer_id })) => (version, convention, peer_id),
        Ok(Ok(other)) => {
            return refuse(send, RefuseCode::BadRequest, format!("expected an open frame, got {other:?}")).await;
        }
        Ok(Err(e)) => return refuse(send, RefuseCode::BadRequest, e.to_string()).await,
        Err(_) => {
            return refuse(send, RefuseCode::BadRequest, "no connect request within the connect timeout".into()).await;
        }
    };
    if version != WIRE_VERSION {
        return refuse(
            send,
            RefuseCode::VersionMismatch,
            format!("framing version {version} not supported (this node speaks {WIRE_VERSION})"),
        )
        .await;
    }
    let convention = match Convention::from_raw(raw) {
        Ok(c) => c,
        Err(e @ crate::convention::ConventionError::ReservedBits(_)) => {
            return refuse(send, RefuseCode::ReservedBits, e.to_string()).await;
        }
        Err(e) => return refuse(send, RefuseCode::UnsupportedTransport, e.to_string()).await,
    };
    if let Some(problem) = crate::transport::wire::peer_id_problem(&peer_id) {
        return refuse(send, RefuseCode::BadRequest, format!("invalid peer id: {problem}")).await;
    }
    // A peer id that signaling vouched for must come with its certificate.
    if let Some(expected) = super::signaling::known_fingerprint(&inner, &peer_id)
        && peer_fingerprint(&quic) != Some(expected)
    {
        return refuse(
            send,
            RefuseCode::BadRequest,
            format!("{peer_id} presented another certificate than signaling announced"),
        )
        .await;
    }
    let route = match inner.dispatcher.route(convention, Transport::Quic) {
        Ok(route) => route,
        Err((code, message)) => return refuse(send, code, message).await,
    };
    let messages = match message_way(&inner, &quic, convention, &send, false) {
        Ok(messages) => messages,
        Err(why) => return refuse(send, RefuseCode::UnsupportedTransport, why).await,
    };
    if send
        .write_all(&Frame::Accept { version: WIRE_VERSION, peer_id: inner.config.node_id.clone() }.encode())
        .await
        .is_err()
    {
        return;
    }
    // A peer reached through the relay is known to quinn by a presented
    // address; the connection reports its real one.
    let remote = inner.socket.peer_address(quic.remote_address());
    let (peer_id, peer_verified) = shown_peer_id(&inner, peer_id, &quic);
    let meta = ConnMeta { id: inner.next_connection_id(), peer_id, peer_verified, passive: true, convention, remote };
    tracing::debug!(id = meta.id.0, peer = %meta.peer_id, %convention, "connection accepted");
    let link_events = link_events(&inner, &quic, &meta.peer_id);
    let stream = HandshakenStream { quic, socket: inner.socket.clone(), send, recv, decoder, link_events, messages };
    let (owner, announce) = (route.owner(), route.announces());
    let live = inner.links.live.enter().also(counted);
    let shared = conn::establish(meta, stream, inner.conn_limits, owner, announce, live).await;
    inner.links.register(&shared);
    route.deliver(shared);
}

/// Active side: dial (or reuse) the link, send the request, wait for the
/// answer, and start the connection for `owner`. With `announce`, the owner
/// also gets [`conn::ConnEvent::Opened`].
pub(super) async fn open(
    inner: &Arc<NodeInner>,
    addr: SocketAddr,
    raw_convention: u32,
    expected: Option<Fingerprint>,
    id: ConnectionId,
    owner: Owner,
    announce: bool,
) -> Result<Arc<ConnShared>, ConnectError> {
    // A number this node cannot carry is sent as given all the same (see
    // `Node::connect_raw`); the peer refuses it.
    let convention = Convention::from_raw(raw_convention);
    if inner.shutdown.is_cancelled() {
        return Err(ConnectError::ShuttingDown);
    }
    let timeout = inner.config.connect_timeout;
    let handshake = async {
        let quic = link(inner, addr, expected).await?;
        // The peer lets a link carry at most MAX_LINK_STREAMS connections
        // at once; quinn would wait for a stream the peer never grants.
        let Some(opened) = inner.links.watches.of(&quic).opened.try_enter(MAX_LINK_STREAMS as usize) else {
            return Err(ConnectError::LinkFull { limit: MAX_LINK_STREAMS });
        };
        let (mut send, mut recv) = quic.open_bi().await.map_err(|e| ConnectError::Unreachable(e.to_string()))?;
        let messages = match convention {
            Ok(c) if Transport::Quic.carries(c.transport()) => {
                message_way(inner, &quic, c, &send, true).map_err(ConnectError::Protocol)?
            }
            _ => MessageWay::Stream,
        };
        let request =
            Frame::Open { version: WIRE_VERSION, convention: raw_convention, peer_id: inner.config.node_id.clone() };
        send.write_all(&request.encode()).await.map_err(|e| ConnectError::Unreachable(e.to_string()))?;
        let mut decoder = Decoder::new(inner.config.max_message_size);
        let peer_id = match read_frame(&mut recv, &mut decoder).await {
            Ok(Frame::Accept { peer_id, .. }) => match crate::transport::wire::peer_id_problem(&peer_id) {
                None => peer_id,
                Some(problem) => return Err(ConnectError::Protocol(format!("the peer sent an invalid id: {problem}"))),
            },
            Ok(Frame::Refuse { code, message }) => return Err(ConnectError::Refused { code, message }),
            Ok(other) => return Err(ConnectError::Protocol(format!("expected accept or refuse, got {other:?}"))),
            Err(HandshakeError::Read(e)) => return Err(ConnectError::Unreachable(e)),
            Err(e) => return Err(ConnectError::Protocol(e.to_string())),
        };
        let convention =
            convention.map_err(|e| ConnectError::Protocol(format!("peer accepted an invalid convention: {e}")))?;
        if !Transport::Quic.carries(convention.transport()) {
            return Err(ConnectError::Protocol(format!(
                "peer accepted transport {}, which a link between nodes does not carry",
                convention.transport()
            )));
        }
        Ok((quic, send, recv, decoder, peer_id, convention, opened, messages))
    };
    let (quic, send, recv, decoder, peer_id, convention, opened, messages) = tokio::select! {
        _ = inner.shutdown.cancelled() => return Err(ConnectError::ShuttingDown),
        result = tokio::time::timeout(timeout, handshake) => result.map_err(|_| ConnectError::Timeout(timeout))??,
    };
    let (peer_id, peer_verified) = shown_peer_id(inner, peer_id, &quic);
    let link_events = link_events(inner, &quic, &peer_id);
    let meta = ConnMeta { id, peer_id, peer_verified, passive: false, convention, remote: addr };
    let stream = HandshakenStream { quic, socket: inner.socket.clone(), send, recv, decoder, link_events, messages };
    let live = inner.links.live.enter().also(opened);
    let shared = conn::establish(meta, stream, inner.conn_limits, owner, announce, live).await;
    inner.links.register(&shared);
    Ok(shared)
}

/// Refuses, before anything is sent, a connect for a transport links
/// between nodes do not carry (the caller side of "unsupported
/// transport"; the peer refuses the same numbers).
///
/// # Errors
/// [`ConnectError::UnsupportedTransport`] for such a transport.
pub(super) fn check_carried(raw_convention: u32) -> Result<(), ConnectError> {
    match Convention::from_raw(raw_convention) {
        Ok(c) if !Transport::Quic.carries(c.transport()) => Err(ConnectError::UnsupportedTransport(c.transport())),
        _ => Ok(()),
    }
}

/// How the connection on the stream `send` carries its messages, set up
/// before this side's request or accept leaves (the other side's first
/// datagrams may overtake the answer): for UDP its stream's tag reserved
/// on the link's datagram routes, for KCP its session (keys and
/// conversation id exported from the link's TLS session, bound to the
/// stream) registered on the node's socket.
///
/// # Errors
/// Why the link cannot carry the connection's transport.
fn message_way(
    inner: &NodeInner,
    quic: &quinn::Connection,
    convention: Convention,
    send: &quinn::SendStream,
    dialler: bool,
) -> Result<MessageWay, String> {
    let stream = u64::from(send.id());
    match convention.transport() {
        Transport::Udp if quic.max_datagram_size().is_none() => {
            Err("unsupported transport: UDP: the link between the nodes carries no datagrams".into())
        }
        Transport::Udp => Ok(MessageWay::Datagrams(inner.links.watches.of(quic).datagrams.reserve(stream))),
        Transport::Kcp => KcpSetup::new(quic, &inner.socket, stream, dialler, inner.config.max_message_size)
            .map(|setup| MessageWay::Kcp(Box::new(setup))),
        _ => Ok(MessageWay::Stream),
    }
}

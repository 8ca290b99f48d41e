//! One fogconnect connection: a QUIC bidirectional stream carrying framed
//! messages, driven by a reader task and a writer task.
//!
//! The owner of a connection (a plugin actor or a native [`crate::Connection`])
//! receives [`ConnEvent`]s on its channel. Every connection ends with exactly
//! one `Closed` event to its owner, except when the owner ended it itself
//! (then the owner reports the local close on its own). Which side ends it is
//! decided by an atomic claim, so concurrent endings never double-report.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::convention::{Convention, Transport};
use crate::events::{NetworkEvent, PathInfo};
use crate::transport::datagram::{DatagramPath, Reservation};
use crate::transport::kcp_conn::{KcpCounters, KcpSetup, KcpTask};
use crate::transport::socket::FogSocket;
use crate::transport::wire::{CloseCode, Decoder, Frame, data_header};

/// Node-wide unique id of a connection; also the handle plugins see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// The remote side closed in an orderly way.
    Eof,
    /// A failure (remote plugin crash, protocol violation, QUIC error, local
    /// plugin restart).
    Error,
    /// The remote node stopped answering.
    Timeout,
    /// The remote node refused the connect request.
    Refused,
    /// This side closed it.
    Local,
}

/// The reason a connection ended, with a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// Category.
    pub kind: CloseKind,
    /// Detail; may be empty.
    pub message: String,
}

impl CloseReason {
    /// A reason of `kind` with `message`.
    pub fn new(kind: CloseKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            CloseKind::Eof => "eof",
            CloseKind::Error => "error",
            CloseKind::Timeout => "timeout",
            CloseKind::Refused => "refused",
            CloseKind::Local => "local",
        };
        if self.message.is_empty() { f.write_str(kind) } else { write!(f, "{kind}: {}", self.message) }
    }
}

/// Errors of sending a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection has ended or is closing.
    #[error("connection closed")]
    Closed,
    /// The message exceeds the maximum message size.
    #[error("message of {len} bytes exceeds the maximum message size of {max} bytes")]
    TooLarge {
        /// Size of the refused message.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The send buffer is full.
    #[error("send buffer full ({limit} bytes queued)")]
    BufferFull {
        /// The buffer limit in bytes.
        limit: usize,
    },
}

/// What the owner of a connection is told.
#[derive(Debug)]
pub enum ConnEvent {
    /// A connection for this owner was established.
    Opened(Arc<ConnShared>),
    /// A connect started by this owner failed before it was established.
    OpenFailed(ConnectionId, CloseReason),
    /// One message arrived.
    Message(ConnectionId, Bytes),
    /// The network under the connection changed (in order with its
    /// messages).
    Network(ConnectionId, NetworkEvent),
    /// The connection ended (not sent for endings the owner caused itself).
    Closed(ConnectionId, CloseReason),
    /// Plugin actors only: a node event the plugin may have subscribed to.
    Node(crate::events::NodeEvent),
    /// The node is shutting down: close everything and stop.
    Shutdown,
    /// Plugin actors only: the service is unloaded: close its connections
    /// (reason "service unloaded") and stop.
    Unload,
    /// Plugin actors only: replace the plugin with a new generation. Sent
    /// through the same channel as the connection events, so the events
    /// before it go to the old generation and those after it, in order,
    /// to the new one.
    Swap(Box<SwapRequest>),
}

/// A request to swap a plugin for a new generation.
#[cfg(feature = "plugins")]
pub type SwapRequest = crate::runtime::actor::SwapRequest;

/// Without the plugin runtime nothing is swapped: no value of this type
/// exists, so no [`ConnEvent::Swap`] is ever sent.
#[cfg(not(feature = "plugins"))]
#[derive(Debug)]
pub enum SwapRequest {}

/// Where a connection's events go.
pub type Owner = mpsc::Sender<ConnEvent>;

/// Capacity of a connection owner's event channel (a plugin actor's, a
/// native service's); a full channel slows the senders down (QUIC flow
/// control then reaches the remote side), nothing is dropped.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// Which way a connection's packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Loopback, private or link-local address.
    Lan,
    /// A public address.
    Direct,
    /// Through a TURN relay.
    Relayed,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::Lan => "LAN",
            PathKind::Direct => "direct WAN",
            PathKind::Relayed => "relayed",
        })
    }
}

/// The path kind of a direct path to `addr`.
pub fn path_of(addr: SocketAddr) -> PathKind {
    let local = match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip.is_unique_local()
                || ip.is_unicast_link_local()
                || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback() || v4.is_private())
        }
    };
    if local { PathKind::Lan } else { PathKind::Direct }
}

/// Static facts of a connection.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    /// Node-wide id (the plugin handle).
    pub id: ConnectionId,
    /// The remote node's id: the id it claims when signaling vouched for
    /// that id with the certificate the peer presented, else
    /// `fp:<fingerprint>` of that certificate (see [`ConnMeta::peer_verified`]).
    pub peer_id: String,
    /// Whether `peer_id` is the peer's registered id, vouched for by
    /// signaling; false when it names the peer's certificate instead.
    pub peer_verified: bool,
    /// True when the remote node dialled.
    pub passive: bool,
    /// The agreed convention number.
    pub convention: Convention,
    /// Remote socket address.
    pub remote: SocketAddr,
}

/// Counters and measurements of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    /// Smoothed RTT of the QUIC path.
    pub rtt: Duration,
    /// Which way the packets travel.
    pub path: PathKind,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// UDP transport: messages the peer sent that this side's
    /// application did not get (never arrived, or arrived while its
    /// queue was full). Zero for other transports.
    pub datagrams_lost: u64,
    /// UDP transport: the largest message one datagram carries on the
    /// path now (larger ones are refused); `None` for other transports.
    pub max_datagram: Option<usize>,
    /// KCP transport: the session and the datagrams it dropped; `None`
    /// for other transports.
    pub kcp: Option<crate::kcp::KcpStats>,
}

/// Limits applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Largest message, in bytes.
    pub max_message_size: usize,
    /// Most bytes queued for sending on one connection.
    pub send_buffer: usize,
    /// How long a closing side waits for the remote side to finish too.
    pub close_grace: Duration,
}

/// Counts connections whose writer task still runs, so a shutting-down
/// node can wait (bounded) for their close frames to leave.
#[derive(Debug, Default)]
pub struct LiveConnections {
    live: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl LiveConnections {
    /// Counts one more connection until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> LiveGuard {
        self.live.fetch_add(1, Ordering::AcqRel);
        LiveGuard(self.clone(), None)
    }

    /// Counts one more connection until the guard is dropped, unless
    /// `max` are counted already.
    pub fn try_enter(self: &Arc<Self>, max: usize) -> Option<LiveGuard> {
        self.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(LiveGuard(self.clone(), None))
    }

    /// Connections counted now.
    pub fn count(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Waits until no connection is live, at most `limit`.
    pub async fn drained(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let changed = self.changed.notified();
                if self.live.load(Ordering::Acquire) == 0 {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }
}

/// Keeps a connection counted in [`LiveConnections`] (and, with
/// [`LiveGuard::also`], in a second count, e.g. its link's).
#[derive(Debug)]
pub struct LiveGuard(Arc<LiveConnections>, Option<Box<LiveGuard>>);

impl LiveGuard {
    /// The same guard, also counting the connection in `other`.
    pub fn also(mut self, other: LiveGuard) -> LiveGuard {
        self.1 = Some(Box::new(other));
        self
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// What the owner of a connection asks its transport to do, in order.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Send one message.
    Data(Bytes),
    /// End the connection with this code and message (after the queued
    /// messages).
    Close(CloseCode, String),
    /// The connection ended otherwise: finish this side's half.
    Finish,
}

/// What carries a connection's messages.
pub(crate) enum Carrier {
    /// A QUIC stream of a link between nodes.
    Quic {
        /// The link.
        quic: quinn::Connection,
        /// The socket facade under the link: it knows which way the
        /// link's packets travel now.
        socket: Arc<FogSocket>,
        /// UDP transport: the messages travel as the link's datagrams;
        /// the stream carries the handshake and the close only.
        datagrams: Option<DatagramPath>,
        /// KCP transport: the messages and the close travel in a KCP
        /// session on the node's socket; the stream carries the handshake.
        kcp: Option<Arc<KcpCounters>>,
    },
    /// A browser's DataChannel.
    #[cfg(feature = "browsers")]
    Rtc(Arc<crate::transport::rtc::RtcLink>),
    /// Nothing: a connection driven in-process (see [`Detached`]).
    Detached,
}

/// State of one connection shared by its tasks and its owner.
pub struct ConnShared {
    meta: ConnMeta,
    carrier: Carrier,
    limits: ConnLimits,
    owner: Owner,
    closed: AtomicBool,
    outbound: mpsc::UnboundedSender<Outbound>,
    buffered: AtomicUsize,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    cancel: CancellationToken,
    /// Signalled whenever a queued message left the send buffer.
    drained: tokio::sync::Notify,
}

/// The QUIC send window of a link (bytes written to its streams and not yet
/// acknowledged): quinn's default, 8 × its 1.25 MB stream receive window.
/// While a stream plugin sends on a link the node sizes it to the path's
/// congestion window instead (see [`ConnShared::set_send_window`]).
pub const LINK_SEND_WINDOW: u64 = 10_000_000;

/// Measurements of a connection's QUIC path (shared by every connection
/// on the same link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathSample {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window, in bytes.
    pub cwnd: u64,
    /// QUIC packets sent on the path.
    pub packets_sent: u64,
    /// QUIC packets declared lost on the path.
    pub packets_lost: u64,
}

impl std::fmt::Debug for ConnShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnShared")
            .field("meta", &self.meta)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl ConnShared {
    /// Static facts of the connection.
    pub fn meta(&self) -> &ConnMeta {
        &self.meta
    }

    /// True once the connection has ended or is closing.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Claims the ending of the connection; true for exactly one caller.
    fn claim_close(&self) -> bool {
        !self.closed.swap(true, Ordering::AcqRel)
    }

    /// Queues one message.
    ///
    /// # Errors
    /// [`SendError`] when the connection is closed, the message too large or
    /// the send buffer full.
    pub fn send(&self, data: Bytes) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        if let Carrier::Quic { quic, datagrams: Some(path), .. } = &self.carrier {
            return self.send_datagram(quic, path, &data);
        }
        let len = data.len();
        if len > self.limits.max_message_size {
            return Err(SendError::TooLarge { len, max: self.limits.max_message_size });
        }
        let queued = self.buffered.fetch_add(len, Ordering::AcqRel);
        if queued > 0 && queued + len > self.limits.send_buffer {
            self.buffered.fetch_sub(len, Ordering::AcqRel);
            return Err(SendError::BufferFull { limit: self.limits.send_buffer });
        }
        self.outbound.send(Outbound::Data(data)).map_err(|_| {
            self.buffered.fetch_sub(len, Ordering::AcqRel);
            SendError::Closed
        })
    }

    /// Sends `data` as one datagram at once (quinn queues it; when its
    /// queue is full it drops the oldest, which the peer counts lost).
    fn send_datagram(&self, quic: &quinn::Connection, path: &DatagramPath, data: &[u8]) -> Result<(), SendError> {
        self.check_datagram_size(data.len())?;
        self.datagram_queued(data.len(), quic.send_datagram(path.encode(data)))
    }

    /// For a connection carried in datagrams: sends `data` as one datagram
    /// once quinn's datagram queue has room for it, rather than dropping
    /// the oldest queued one; how `ConnectionSender::send_when_ready` keeps a
    /// datagram sender to the path's pace. `None` for other carriers.
    pub(crate) async fn send_datagram_when_ready(&self, data: &[u8]) -> Option<Result<(), SendError>> {
        let Carrier::Quic { quic, datagrams: Some(path), .. } = &self.carrier else { return None };
        if self.is_closed() {
            return Some(Err(SendError::Closed));
        }
        if let Err(e) = self.check_datagram_size(data.len()) {
            return Some(Err(e));
        }
        let queued = tokio::select! {
            queued = quic.send_datagram_wait(path.encode(data)) => queued,
            _ = self.cancel.cancelled() => return Some(Err(SendError::Closed)),
        };
        Some(self.datagram_queued(data.len(), queued))
    }

    fn check_datagram_size(&self, len: usize) -> Result<(), SendError> {
        let max = self.max_message_size();
        if len > max { Err(SendError::TooLarge { len, max }) } else { Ok(()) }
    }

    /// Counts a datagram of `len` bytes quinn took, or says why it did not.
    fn datagram_queued(&self, len: usize, queued: Result<(), quinn::SendDatagramError>) -> Result<(), SendError> {
        match queued {
            Ok(()) => {
                self.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
                self.messages_sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            // The path's datagram size shrank between the check and the send.
            Err(quinn::SendDatagramError::TooLarge) => Err(SendError::TooLarge { len, max: self.max_message_size() }),
            Err(_) => Err(SendError::Closed),
        }
    }

    /// Closes the connection from this side in an orderly way: queued
    /// messages go first, then the remote side sees end of file. Returns
    /// false when the connection had already ended (nothing to report).
    pub fn close_local(&self, message: impl Into<String>) -> bool {
        self.end(CloseCode::Normal, message.into())
    }

    /// Ends the connection from this side with an error the remote side
    /// sees with `message`. Returns false when it had already ended.
    pub fn fail(&self, message: impl Into<String>) -> bool {
        self.end(CloseCode::Error, message.into())
    }

    /// Ends the connection because this node shuts down: the remote side
    /// sees end of file with `message`, and the owner is told (kind
    /// `local`) without waiting, since it may be shutting down too.
    pub fn close_for_shutdown(&self, message: &str) {
        if self.end(CloseCode::Normal, message.to_string()) {
            let reason = CloseReason::new(CloseKind::Local, message);
            let _ = self.owner.try_send(ConnEvent::Closed(self.meta.id, reason));
        }
    }

    pub(crate) fn end(&self, code: CloseCode, message: String) -> bool {
        if !self.claim_close() {
            return false;
        }
        // The writer may already be gone when the QUIC connection died; the
        // reader then reports nothing more since the close is claimed.
        let _ = self.outbound.send(Outbound::Close(code, message));
        true
    }

    /// Accounts for `messages` queued messages of `bytes` bytes in all
    /// leaving the send buffer; `delivered` when they were handed to the
    /// transport.
    pub(crate) fn dequeued(&self, bytes: usize, messages: u64, delivered: bool) {
        self.buffered.fetch_sub(bytes, Ordering::AcqRel);
        self.drained.notify_one();
        if delivered {
            self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
            self.messages_sent.fetch_add(messages, Ordering::Relaxed);
        }
    }

    /// How long a closing side waits for the remote side to finish too.
    #[cfg(feature = "browsers")]
    pub(crate) fn close_grace(&self) -> Duration {
        self.limits.close_grace
    }

    /// The largest message this connection sends or accepts: the node's
    /// limit, and for the UDP transport what one datagram carries on the
    /// path now.
    pub fn max_message_size(&self) -> usize {
        match self.max_datagram() {
            Some(max) => max.min(self.limits.max_message_size),
            None => self.limits.max_message_size,
        }
    }

    /// UDP transport: the largest message one datagram carries on the path
    /// now (0 when the peer takes no datagrams); `None` for other transports.
    pub fn max_datagram(&self) -> Option<usize> {
        match &self.carrier {
            Carrier::Quic { quic, datagrams: Some(path), .. } => {
                Some(quic.max_datagram_size().map_or(0, |max| path.max_payload(max)))
            }
            _ => None,
        }
    }

    /// Bytes queued but not yet written to QUIC.
    pub fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Acquire)
    }

    /// Waits until fewer than `limit` bytes are queued, or the connection
    /// ended (true while it is open).
    pub async fn wait_buffered_below(&self, limit: usize) -> bool {
        loop {
            if self.is_closed() || self.cancel.is_cancelled() {
                return false;
            }
            if self.buffered() < limit {
                return true;
            }
            tokio::select! {
                _ = self.drained.notified() => {}
                _ = self.cancel.cancelled() => return false,
            }
        }
    }

    /// Sets the send window of the link under the connection (shared by
    /// every connection on it): what QUIC holds, sent or not, before it is
    /// acknowledged. Nothing for a detached connection.
    pub fn set_send_window(&self, bytes: u64) {
        if let Carrier::Quic { quic, .. } = &self.carrier {
            quic.set_send_window(bytes);
        }
    }

    /// Identifies the QUIC link under the connection (equal for
    /// connections sharing it); `None` for other transports.
    pub fn link_id(&self) -> Option<usize> {
        match &self.carrier {
            Carrier::Quic { quic, .. } => Some(quic.stable_id()),
            _ => None,
        }
    }

    /// Measurements of the QUIC path under the connection; `None` for
    /// other transports.
    pub fn path_sample(&self) -> Option<PathSample> {
        let Carrier::Quic { quic, .. } = &self.carrier else { return None };
        let path = quic.stats().path;
        Some(PathSample {
            rtt: path.rtt,
            cwnd: path.cwnd,
            packets_sent: path.sent_packets,
            packets_lost: path.lost_packets,
        })
    }

    /// Which way the connection's packets travel now, and to where.
    pub fn path(&self) -> PathInfo {
        let known = match &self.carrier {
            Carrier::Quic { quic, socket, .. } => return socket.path_info(quic.remote_address()),
            #[cfg(feature = "browsers")]
            Carrier::Rtc(link) => link.path(),
            Carrier::Detached => None,
        };
        known.unwrap_or(PathInfo { kind: path_of(self.meta.remote), remote: self.meta.remote })
    }

    /// The smoothed round-trip time of the path (zero until measured).
    pub fn rtt(&self) -> Duration {
        match &self.carrier {
            Carrier::Quic { quic, .. } => quic.rtt(),
            #[cfg(feature = "browsers")]
            Carrier::Rtc(link) => link.rtt().unwrap_or(Duration::ZERO),
            Carrier::Detached => Duration::ZERO,
        }
    }

    /// Counters and measurements.
    pub fn stats(&self) -> ConnStats {
        ConnStats {
            rtt: self.rtt(),
            path: self.path().kind,
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            datagrams_lost: match &self.carrier {
                Carrier::Quic { datagrams: Some(path), .. } => path.lost(),
                _ => 0,
            },
            max_datagram: self.max_datagram(),
            kcp: match &self.carrier {
                Carrier::Quic { kcp: Some(counters), .. } => Some(counters.stats()),
                _ => None,
            },
        }
    }

    /// Hands one received message to the owner (dropped while this side
    /// closes). False when the owner is gone: the connection is failed.
    pub(crate) async fn deliver(&self, payload: Bytes) -> bool {
        if self.is_closed() {
            return true; // this side is closing: late messages are dropped
        }
        self.bytes_received.fetch_add(payload.len() as u64, Ordering::Relaxed);
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        if self.owner.send(ConnEvent::Message(self.meta.id, payload)).await.is_err() {
            self.fail("receiver gone");
            return false;
        }
        true
    }

    /// Hands one datagram of the UDP transport to the owner without
    /// waiting: when the owner's queue is full the datagram is dropped
    /// and counted lost (an unreliable message is not worth stalling the
    /// link's other connections for). Only the link's datagram reader
    /// calls this.
    pub(crate) fn deliver_datagram(&self, sequence: u32, payload: Bytes) {
        let Carrier::Quic { datagrams: Some(path), .. } = &self.carrier else { return };
        if self.is_closed() {
            return;
        }
        path.arrived(sequence);
        let len = payload.len() as u64;
        match self.owner.try_send(ConnEvent::Message(self.meta.id, payload)) {
            Ok(()) => {
                self.bytes_received.fetch_add(len, Ordering::Relaxed);
                self.messages_received.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => path.dropped(),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.fail("receiver gone");
            }
        }
    }

    /// Passes a network event of the transport to the owner, in order
    /// with the messages.
    pub(crate) async fn network_event(&self, event: NetworkEvent) {
        if !self.is_closed() {
            let _ = self.owner.send(ConnEvent::Network(self.meta.id, event)).await;
        }
    }

    /// Stops the connection's tasks.
    pub(crate) fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Resolves when the connection's tasks are told to stop.
    pub(crate) async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// The owner of the connection.
    #[cfg(feature = "browsers")]
    pub(crate) fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Reports an ending seen by the tasks (remote close, failure) to the
    /// owner, unless the ending was already claimed.
    pub(crate) async fn report_end(&self, reason: CloseReason) {
        if self.claim_close() {
            tracing::debug!(id = self.meta.id.0, %reason, "connection ended");
            let _ = self.owner.send(ConnEvent::Closed(self.meta.id, reason)).await;
        }
        // Finish our half of the stream too; ignored if the writer is gone.
        let _ = self.outbound.send(Outbound::Finish);
    }
}

/// The QUIC side of a connection whose handshake completed.
#[derive(Debug)]
pub struct HandshakenStream {
    /// The link carrying the stream.
    pub quic: quinn::Connection,
    /// The socket facade under the link.
    pub socket: Arc<FogSocket>,
    /// Sending half.
    pub send: quinn::SendStream,
    /// Receiving half.
    pub recv: quinn::RecvStream,
    /// Holds any bytes already read after the handshake frames.
    pub decoder: Decoder,
    /// The link's network events, passed on to the owner in order with
    /// the messages (`None`: the link has no monitor).
    pub link_events: Option<broadcast::Receiver<NetworkEvent>>,
    /// How the connection's messages travel.
    pub(crate) messages: MessageWay,
}

/// How a connection's messages travel, set up before its handshake ends.
#[derive(Debug)]
pub(crate) enum MessageWay {
    /// On its stream (QUIC).
    Stream,
    /// As the link's datagrams, under the stream's tag reserved on the
    /// link's datagram routes (UDP).
    Datagrams(Reservation),
    /// In a KCP session on the node's socket (KCP); boxed, as the
    /// session's state is large beside the other ways.
    Kcp(Box<KcpSetup>),
}

/// Starts the reader and writer tasks of an established connection. With
/// `announce`, the owner is sent [`ConnEvent::Opened`] before any message
/// can reach it; if the owner is gone, the connection is failed at once.
pub async fn establish(
    meta: ConnMeta,
    stream: HandshakenStream,
    limits: ConnLimits,
    owner: Owner,
    announce: bool,
    live: LiveGuard,
) -> Arc<ConnShared> {
    let HandshakenStream { quic, socket, send, recv, decoder, link_events, messages } = stream;
    let (path, counters) = match &messages {
        MessageWay::Stream => (None, None),
        MessageWay::Datagrams(reserved) => (Some(DatagramPath::new(reserved.tag())), None),
        MessageWay::Kcp(setup) => (None, Some(setup.counters())),
    };
    let carrier = Carrier::Quic { quic: quic.clone(), socket: socket.clone(), datagrams: path, kcp: counters };
    let (shared, outbound_rx) = ConnShared::new(meta, carrier, limits, owner);
    if announce && shared.owner.send(ConnEvent::Opened(shared.clone())).await.is_err() {
        shared.fail("service stopped");
    }
    match messages {
        MessageWay::Stream => {}
        // After `Opened`: the owner knows the connection before its
        // datagrams.
        MessageWay::Datagrams(reserved) => reserved.ready(&shared),
        MessageWay::Kcp(setup) => {
            let task = KcpTask {
                shared: shared.clone(),
                setup: *setup,
                quic,
                socket,
                send,
                recv,
                outbound: outbound_rx,
                link_events,
                close_grace: limits.close_grace,
                live,
            };
            tokio::spawn(task.run());
            return shared;
        }
    }
    tokio::spawn(read_loop(shared.clone(), recv, decoder, link_events));
    tokio::spawn(write_loop(shared.clone(), send, outbound_rx, live));
    shared
}

impl ConnShared {
    /// A connection over `carrier`, and the receiver of what its owner
    /// asks the transport to do (the transport's writer takes it).
    pub(crate) fn new(
        meta: ConnMeta,
        carrier: Carrier,
        limits: ConnLimits,
        owner: Owner,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Outbound>) {
        let (outbound, outbound_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(ConnShared {
            meta,
            carrier,
            limits,
            owner,
            closed: AtomicBool::new(false),
            outbound,
            buffered: AtomicUsize::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            drained: tokio::sync::Notify::new(),
        });
        (shared, outbound_rx)
    }
}

/// What a detached connection's owner sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetachedOutput {
    /// One message.
    Message(Bytes),
    /// The owner ended the connection (orderly when `error` is false).
    Closed {
        /// True for a failure ending.
        error: bool,
        /// The message sent with the ending.
        message: String,
    },
}

/// The network side of a detached connection: receives what the owner sends.
#[derive(Debug)]
pub struct Detached {
    shared: Arc<ConnShared>,
    rx: mpsc::UnboundedReceiver<Outbound>,
}

impl Detached {
    /// A connection without a network, for driving a plugin in-process
    /// (plugin tests, benchmarks): what its owner sends is taken out with
    /// [`Detached::try_take`].
    pub fn new(meta: ConnMeta, limits: ConnLimits, owner: Owner) -> (Arc<ConnShared>, Detached) {
        let (shared, rx) = ConnShared::new(meta, Carrier::Detached, limits, owner);
        (shared.clone(), Detached { shared, rx })
    }

    /// The next thing the owner sent, if any.
    pub fn try_take(&mut self) -> Option<DetachedOutput> {
        loop {
            match self.rx.try_recv().ok()? {
                Outbound::Data(data) => {
                    self.shared.dequeued(data.len(), 1, true);
                    return Some(DetachedOutput::Message(data));
                }
                Outbound::Close(code, message) => {
                    return Some(DetachedOutput::Closed { error: code == CloseCode::Error, message });
                }
                Outbound::Finish => continue,
            }
        }
    }
}

/// Maps a QUIC connection failure to a close reason.
pub fn reason_of_connection_error(err: &quinn::ConnectionError) -> CloseReason {
    match err {
        quinn::ConnectionError::TimedOut => CloseReason::new(CloseKind::Timeout, "peer stopped answering"),
        quinn::ConnectionError::LocallyClosed => CloseReason::new(CloseKind::Local, "node shut down"),
        quinn::ConnectionError::ApplicationClosed(close) => {
            CloseReason::new(CloseKind::Error, format!("peer node closed: {}", String::from_utf8_lossy(&close.reason)))
        }
        other => CloseReason::new(CloseKind::Error, format!("QUIC: {other}")),
    }
}

pub(crate) fn reason_of_read_error(err: &quinn::ReadError) -> CloseReason {
    match err {
        quinn::ReadError::ConnectionLost(e) => reason_of_connection_error(e),
        quinn::ReadError::Reset(code) => {
            CloseReason::new(CloseKind::Error, format!("peer reset the stream (code {code})"))
        }
        other => CloseReason::new(CloseKind::Error, format!("read: {other}")),
    }
}

/// How many stream chunks (each a QUIC packet's share of the stream, about
/// 1.4 KB on a 1,500-byte path) a connection's reader takes at once.
const READ_CHUNKS: usize = 32;

/// How many bytes of queued messages a connection's writer hands QUIC in
/// one write, at most (beyond the message that crosses it).
const WRITE_BATCH_BYTES: usize = 256 * 1024;

async fn read_loop(
    shared: Arc<ConnShared>,
    mut recv: quinn::RecvStream,
    mut decoder: Decoder,
    mut link_events: Option<broadcast::Receiver<NetworkEvent>>,
) {
    // Every chunk quinn holds is taken in one read: one lock of the
    // connection and one flow-control update per batch, not per packet.
    let mut chunks: [Bytes; READ_CHUNKS] = std::array::from_fn(|_| Bytes::new());
    let reason = loop {
        match decode_all(&shared, &mut decoder).await {
            Ok(Some(reason)) => break Some(reason),
            Ok(None) => {}
            Err(reason) => break Some(reason),
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => break None,
            event = next_link_event(&mut link_events) => shared.network_event(event).await,
            read = recv.read_chunks(&mut chunks) => match read {
                Ok(Some(count)) => {
                    for chunk in chunks.iter_mut().take(count) {
                        decoder.push(&std::mem::take(chunk));
                    }
                }
                Ok(None) => break Some(match decoder.finish() {
                    Ok(()) => CloseReason::new(CloseKind::Eof, ""),
                    Err(e) => CloseReason::new(CloseKind::Error, format!("protocol: {e}")),
                }),
                Err(e) => break Some(reason_of_read_error(&e)),
            }
        }
    };
    if let Some(reason) = reason {
        shared.report_end(reason).await;
    }
    shared.cancel.cancel();
}

/// The next event of the link, for as long as it has any; pends forever
/// after (a lagging connection skips the events it missed).
pub(crate) async fn next_link_event(events: &mut Option<broadcast::Receiver<NetworkEvent>>) -> NetworkEvent {
    if let Some(receiver) = events {
        match crate::events::recv_skipping_lag(receiver).await {
            Some(event) => return event,
            None => *events = None,
        }
    }
    std::future::pending().await
}

/// Delivers every whole frame in the decoder. Returns the ending the frames
/// announce, if any.
async fn decode_all(shared: &ConnShared, decoder: &mut Decoder) -> Result<Option<CloseReason>, CloseReason> {
    loop {
        match decoder.next_frame() {
            Ok(None) => return Ok(None),
            Ok(Some(Frame::Data(payload))) => {
                if !shared.deliver(payload).await {
                    return Ok(None);
                }
            }
            Ok(Some(Frame::Close { code, message })) => {
                return Ok(Some(match code {
                    CloseCode::Normal => CloseReason::new(CloseKind::Eof, message),
                    CloseCode::Error => CloseReason::new(CloseKind::Error, format!("peer: {message}")),
                }));
            }
            Ok(Some(other)) => {
                let reason = format!("protocol: unexpected {other:?} frame");
                shared.fail(reason.clone());
                return Err(CloseReason::new(CloseKind::Error, reason));
            }
            Err(e) => {
                let reason = format!("protocol: {e}");
                shared.fail(reason.clone());
                return Err(CloseReason::new(CloseKind::Error, reason));
            }
        }
    }
}

async fn write_loop(
    shared: Arc<ConnShared>,
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    _live: LiveGuard,
) {
    // The messages of one write, each as its header and payload; and a
    // command that ended the last batch, taken next.
    let mut batch: Vec<Bytes> = Vec::new();
    let mut next: Option<Outbound> = None;
    loop {
        let cmd = match next.take() {
            Some(cmd) => Some(cmd),
            None => tokio::select! {
                biased;
                cmd = rx.recv() => cmd,
                _ = shared.cancel.cancelled() => None,
            },
        };
        let result = match cmd {
            Some(Outbound::Data(payload)) => {
                // Every message already queued goes in the same write (up
                // to a bound): one lock of the connection and one wake of
                // its driver for the lot.
                let (mut bytes, mut messages) = (0, 0);
                let mut payload = Some(payload);
                while let Some(data) = payload.take() {
                    bytes += data.len();
                    messages += 1;
                    batch.push(Bytes::copy_from_slice(&data_header(data.len())));
                    batch.push(data);
                    if bytes >= WRITE_BATCH_BYTES {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(Outbound::Data(data)) => payload = Some(data),
                        Ok(other) => next = Some(other),
                        Err(_) => {}
                    }
                }
                let r = send.write_all_chunks(&mut batch).await;
                batch.clear();
                shared.dequeued(bytes, messages, r.is_ok());
                r
            }
            Some(Outbound::Close(code, message)) => {
                // A failed write means the remote side is gone; the ending
                // is already claimed, so there is nothing more to report.
                let _ = send.write_all(&Frame::Close { code, message }.encode()).await;
                let _ = send.finish();
                break_after_close(&shared).await;
                return;
            }
            Some(Outbound::Finish) | None => {
                let _ = send.finish();
                return;
            }
        };
        if let Err(e) = result {
            let reason = match &e {
                quinn::WriteError::ConnectionLost(c) => reason_of_connection_error(c),
                quinn::WriteError::Stopped(code) => {
                    CloseReason::new(CloseKind::Error, format!("peer stopped reading (code {code})"))
                }
                other => CloseReason::new(CloseKind::Error, format!("write: {other}")),
            };
            shared.report_end(reason).await;
            shared.cancel.cancel();
            return;
        }
    }
}

/// After this side closed, wait (bounded) for the remote side to finish its
/// half, then stop the reader.
async fn break_after_close(shared: &ConnShared) {
    tokio::select! {
        _ = shared.cancel.cancelled() => {}
        _ = tokio::time::sleep(shared.limits.close_grace) => shared.cancel.cancel(),
    }
}

/// The facts of a harness connection: passive, from `peer_id`, over QUIC.
pub(crate) fn passive_meta(id: ConnectionId, peer_id: &str, service: u8) -> ConnMeta {
    ConnMeta {
        id,
        peer_id: peer_id.to_string(),
        peer_verified: true,
        passive: true,
        convention: Convention::new(Transport::Quic, service),
        remote: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

/// Connection limits suitable for the harnesses (plugins, stream services).
pub fn harness_limits() -> ConnLimits {
    ConnLimits {
        max_message_size: crate::node::DEFAULT_MAX_MESSAGE_SIZE,
        send_buffer: 8 << 20,
        close_grace: Duration::ZERO,
    }
}

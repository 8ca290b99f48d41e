//! Connections owned by Rust code (the embedding application) rather than
//! by a plugin.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::traversal::TraversalReport;
use crate::convention::Convention;
use crate::events::{NetworkEvent, PathInfo};
use crate::transport::conn::{CloseKind, CloseReason, ConnEvent, ConnShared, ConnStats, ConnectionId, SendError};

/// What [`Connection::recv`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// One whole message, in order.
    Message(Bytes),
    /// The connection ended; every later `recv` returns the same reason.
    Closed(CloseReason),
}

/// What [`Connection::next_activity`] yields: messages, network events and
/// the end, in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionActivity {
    /// One whole message, in order.
    Message(Bytes),
    /// The network under the connection changed: its path, or its link
    /// went silent or recovered.
    Network(NetworkEvent),
    /// The connection ended; every later call returns the same reason.
    Closed(CloseReason),
}

/// A connection owned by the application: dialled with
/// [`crate::Node::connect`] / [`crate::Node::connect_peer`], or accepted by a
/// native handler ([`crate::Incoming`]). Dropping it closes it.
#[derive(Debug)]
pub struct Connection {
    shared: Arc<ConnShared>,
    events: mpsc::Receiver<ConnEvent>,
    ended: Option<CloseReason>,
    traversal: Option<TraversalReport>,
}

impl Connection {
    pub(crate) fn new(shared: Arc<ConnShared>, events: mpsc::Receiver<ConnEvent>) -> Self {
        Self { shared, events, ended: None, traversal: None }
    }

    pub(super) fn with_traversal(mut self, traversal: Option<TraversalReport>) -> Self {
        self.traversal = traversal;
        self
    }

    /// How the path was found, for connections by id that ran
    /// connectivity checks: the selected pair, the plan, probes used.
    pub fn traversal(&self) -> Option<&TraversalReport> {
        self.traversal.as_ref()
    }

    /// The connection's shared state (for the stream session).
    pub(crate) fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    /// Node-wide id of the connection.
    pub fn id(&self) -> ConnectionId {
        self.shared.meta().id
    }

    /// The remote node's id: its registered id when signaling vouched for
    /// it with the certificate the peer presented, else `fp:` and that
    /// certificate's fingerprint (a connect by address to a node signaling
    /// never introduced). [`Connection::peer_verified`] tells which.
    pub fn peer_id(&self) -> &str {
        &self.shared.meta().peer_id
    }

    /// Whether [`Connection::peer_id`] is an id signaling vouched for
    /// (false: it names the peer's certificate).
    pub fn peer_verified(&self) -> bool {
        self.shared.meta().peer_verified
    }

    /// The agreed convention number.
    pub fn convention(&self) -> Convention {
        self.shared.meta().convention
    }

    /// True for connections a native handler accepted ([`crate::Incoming`]),
    /// false for those this node dialled.
    pub fn is_passive(&self) -> bool {
        self.shared.meta().passive
    }

    /// The remote socket address the connection was made with (see
    /// [`Connection::path`] for where its packets go now).
    pub fn remote_addr(&self) -> SocketAddr {
        self.shared.meta().remote
    }

    /// Which way the connection's packets travel now, and to where.
    pub fn path(&self) -> PathInfo {
        self.shared.path()
    }

    /// Counters and measurements.
    pub fn stats(&self) -> ConnStats {
        self.shared.stats()
    }

    /// A cloneable sender for this connection, for code that sends while
    /// the `Connection` itself sits in a receive loop elsewhere.
    pub fn sender(&self) -> ConnectionSender {
        ConnectionSender { shared: self.shared.clone() }
    }

    /// Queues one message; it arrives as one message on the remote side.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] above the maximum message size,
    /// [`SendError::BufferFull`] when the send buffer is full,
    /// [`SendError::Closed`] after the connection ended.
    pub fn send(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.shared.send(data.into())
    }

    /// Queues one message, waiting while the send buffer is full (the
    /// transport drains it as the remote side takes data): how a sender
    /// keeps up with the path without polling. On a UDP connection it
    /// waits for room in the queue of datagrams not yet sent, where
    /// [`Connection::send`] would drop the oldest queued one.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] above the maximum message size,
    /// [`SendError::Closed`] once the connection ended.
    pub async fn send_when_ready(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.sender().send_when_ready(data).await
    }

    /// The next message, or the reason the connection ended. Messages that
    /// arrived before the end are always yielded first. Network events are
    /// passed by (see [`Connection::next_activity`]).
    pub async fn recv(&mut self) -> ConnectionEvent {
        loop {
            match self.next_activity().await {
                ConnectionActivity::Message(data) => return ConnectionEvent::Message(data),
                ConnectionActivity::Closed(reason) => return ConnectionEvent::Closed(reason),
                ConnectionActivity::Network(_) => {}
            }
        }
    }

    /// The next message, network event (path changed, link silent or
    /// recovered), or the reason the connection ended, in the order they
    /// happened. Everything that arrived before the end is yielded first.
    pub async fn next_activity(&mut self) -> ConnectionActivity {
        if let Some(reason) = &self.ended {
            return match self.events.try_recv() {
                Ok(ConnEvent::Message(_, data)) => ConnectionActivity::Message(data),
                Ok(ConnEvent::Network(_, event)) => ConnectionActivity::Network(event),
                _ => ConnectionActivity::Closed(reason.clone()),
            };
        }
        loop {
            return match self.events.recv().await {
                Some(ConnEvent::Message(_, data)) => ConnectionActivity::Message(data),
                Some(ConnEvent::Network(_, event)) => ConnectionActivity::Network(event),
                Some(ConnEvent::Closed(_, reason)) | Some(ConnEvent::OpenFailed(_, reason)) => {
                    self.ended = Some(reason.clone());
                    ConnectionActivity::Closed(reason)
                }
                // Node events go to plugin actors, which subscribe.
                Some(ConnEvent::Node(_)) => continue,
                Some(ConnEvent::Opened(_))
                | Some(ConnEvent::Shutdown)
                | Some(ConnEvent::Unload)
                | Some(ConnEvent::Swap(_))
                | None => {
                    let reason = CloseReason::new(CloseKind::Error, "connection state lost");
                    self.ended = Some(reason.clone());
                    ConnectionActivity::Closed(reason)
                }
            };
        }
    }

    /// Closes the connection: queued messages are delivered first, then the
    /// remote side sees end of file. Later `recv` calls drain what had
    /// already arrived, then return [`CloseKind::Local`].
    pub fn close(&mut self) {
        if self.shared.close_local("closed by the application") && self.ended.is_none() {
            self.ended = Some(CloseReason::new(CloseKind::Local, "closed by the application"));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close_local("closed by the application");
    }
}

/// Sends on a [`Connection`] and reads its counters from anywhere: a cheap,
/// cloneable handle. It does not keep the connection open: once the
/// `Connection` is closed or dropped, sends fail with [`SendError::Closed`].
#[derive(Debug, Clone)]
pub struct ConnectionSender {
    shared: Arc<ConnShared>,
}

impl ConnectionSender {
    /// Queues one message, as [`Connection::send`] does.
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.shared.send(data.into())
    }

    /// Queues one message, waiting while the send buffer is full, as
    /// [`Connection::send_when_ready`] does.
    ///
    /// # Errors
    /// As [`Connection::send_when_ready`].
    pub async fn send_when_ready(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        let data = data.into();
        if let Some(sent) = self.shared.send_datagram_when_ready(&data).await {
            return sent;
        }
        loop {
            match self.shared.send(data.clone()) {
                Err(SendError::BufferFull { limit }) => {
                    // Room for this message once the queue is below the
                    // limit by its size (an empty queue takes any size).
                    let below = limit.saturating_sub(data.len()).max(1);
                    if !self.shared.wait_buffered_below(below).await {
                        return Err(SendError::Closed);
                    }
                }
                other => return other,
            }
        }
    }

    /// Counters and measurements of the connection.
    pub fn stats(&self) -> ConnStats {
        self.shared.stats()
    }

    /// Node-wide id of the connection.
    pub fn id(&self) -> ConnectionId {
        self.shared.meta().id
    }
}

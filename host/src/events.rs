//! Network signals as events: what changes under a connection (its path,
//! its link going silent and coming back) and what changes in the node
//! (signaling session, NAT classification, relay allocation, presence).
//!
//! Connection events arrive in order with the connection's messages
//! ([`crate::Connection::next_activity`]; the C API's event callback);
//! node events, the connection ones included with the peer they concern,
//! come from [`crate::Node::events`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::nat::classify::NatReport;
use crate::node::RelayStatus;
use crate::transport::conn::PathKind;

/// Which way a connection's packets travel, and to where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathInfo {
    /// Relayed, direct over the internet, or on a local network.
    pub kind: PathKind,
    /// Where the packets go: the peer's address, or its relayed address
    /// (or, through this node's own relay, the peer's address as the relay
    /// sees it).
    pub remote: SocketAddr,
}

impl std::fmt::Display for PathInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.remote)
    }
}

/// A change under one connection (the link to its peer, shared by every
/// connection between the two nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkEvent {
    /// The packets travel another way: relayed to direct, a new remote
    /// address (the peer's NAT rebound, the peer moved), LAN to WAN.
    PathChanged {
        /// The path before.
        from: PathInfo,
        /// The path now.
        to: PathInfo,
    },
    /// Nothing arrived from the peer for `after` although this side sent:
    /// the path may be broken (a NAT dropped its mapping, the network
    /// changed) or the peer gone. The node looks for a new path; the
    /// connection ends with reason timeout when the keep-alive gives up.
    LinkSilent {
        /// How long nothing arrived when the silence was noticed.
        after: Duration,
    },
    /// Packets arrive again after [`NetworkEvent::LinkSilent`].
    LinkRecovered {
        /// How long the link was silent.
        silent_for: Duration,
    },
}

impl std::fmt::Display for NetworkEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetworkEvent::PathChanged { from, to } => write!(f, "path changed from {from} to {to}"),
            NetworkEvent::LinkSilent { after } => write!(f, "link silent for {} ms", after.as_millis()),
            NetworkEvent::LinkRecovered { silent_for } => {
                write!(f, "link recovered after {} ms of silence", silent_for.as_millis())
            }
        }
    }
}

/// Something the node saw change.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// Registered with the signaling server (at start, and again after a
    /// lost session).
    SignalUp,
    /// The signaling session was lost; the node reconnects with backoff.
    /// Live connections are not affected; connects by id wait for it.
    SignalLost {
        /// What the client knows of why.
        reason: String,
    },
    /// The host's network changed: an address added or removed, an
    /// interface up or down, or (with `added` and `removed` empty) the
    /// default route moved to another gateway or the public address
    /// changed behind the same local addresses. The node classifies its
    /// NAT again, registers with signaling again and has the links it
    /// dialled look for a path.
    NetworkChanged {
        /// Addresses that appeared.
        added: Vec<std::net::IpAddr>,
        /// Addresses that went away.
        removed: Vec<std::net::IpAddr>,
        /// The host's addresses now (loopback and IPv6 link-local left out).
        addresses: Vec<std::net::IpAddr>,
    },
    /// The NAT was classified: at start, and again after a network change
    /// (the result may be the same as before).
    NatClassified {
        /// The classification before (`None` for the first).
        previous: Option<Arc<NatReport>>,
        /// The classification now.
        report: Arc<NatReport>,
    },
    /// The relay allocation changed: made, lost, retried.
    Relay(RelayStatus),
    /// A peer came online or went offline (after
    /// [`crate::Node::presence`] subscribed the node to presence).
    Presence {
        /// The peer.
        peer: String,
        /// Online now or not.
        online: bool,
    },
    /// A change under the link to `peer` (every connection on it sees
    /// the same event).
    Link {
        /// The peer's id as connections show it ([`crate::Connection::peer_id`]).
        peer: String,
        /// What changed.
        event: NetworkEvent,
    },
}

impl std::fmt::Display for NodeEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeEvent::SignalUp => f.write_str("signaling: registered"),
            NodeEvent::SignalLost { reason } => write!(f, "signaling: session lost ({reason})"),
            NodeEvent::NetworkChanged { added, removed, addresses } if added.is_empty() && removed.is_empty() => {
                write!(f, "network: changed (default route or public address), addresses {addresses:?}")
            }
            NodeEvent::NetworkChanged { added, removed, .. } => {
                write!(f, "network: addresses changed, added {added:?}, removed {removed:?}")
            }
            NodeEvent::NatClassified { report, .. } => write!(
                f,
                "nat: {}, public address {}",
                report.kind_name(),
                report.public.map_or_else(|| "unknown".to_string(), |p| p.to_string())
            ),
            NodeEvent::Relay(RelayStatus::Allocated { url, relayed }) => {
                write!(f, "relay: allocated {relayed} on {url}")
            }
            NodeEvent::Relay(RelayStatus::Failed(why)) => write!(f, "relay: no allocation ({why})"),
            NodeEvent::Relay(RelayStatus::Allocating) => f.write_str("relay: allocating"),
            NodeEvent::Relay(RelayStatus::Unconfigured) => f.write_str("relay: none configured"),
            NodeEvent::Presence { peer, online } => {
                write!(f, "presence: {peer} {}", if *online { "online" } else { "offline" })
            }
            NodeEvent::Link { peer, event } => write!(f, "link to {peer}: {event}"),
        }
    }
}

/// The next value of `receiver`, skipping what it missed by falling behind
/// (events are signals: a late subscriber wants the newest, not an error);
/// `None` once the sender is gone.
pub(crate) async fn recv_skipping_lag<T: Clone>(receiver: &mut broadcast::Receiver<T>) -> Option<T> {
    loop {
        match receiver.recv().await {
            Ok(value) => return Some(value),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "a slow receiver missed events");
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

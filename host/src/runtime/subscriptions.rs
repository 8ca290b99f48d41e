//! Which node events a plugin receives: each instance chooses kinds
//! (`subscribe`) and watches peers (`watch-peer`) for itself; the service
//! keeps the union of every choice its instances ever made, so that the
//! task forwarding the node's events to the plugin's channel only wakes a
//! plugin that may want them (a 0.1.0 plugin or one that never subscribed
//! is never woken).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::events::NodeEvent;
use crate::node::RelayStatus;

/// Most peers one plugin instance watches.
pub const MAX_WATCHED_PEERS: usize = 1024;

/// Longest peer id `watch-peer` takes, in bytes (as signaling).
pub const MAX_PEER_ID_LEN: usize = 255;

/// A set of node event kinds (the `node-event-kinds` flags of the
/// contract).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeEventKinds(u8);

impl NodeEventKinds {
    /// Signaling session up and lost.
    pub const SIGNALING: Self = Self(1);
    /// NAT classified.
    pub const NAT: Self = Self(2);
    /// Relay allocation made and lost.
    pub const RELAY: Self = Self(4);
    /// The host's addresses changed.
    pub const ADDRESSES: Self = Self(8);
    /// No kind.
    pub const NONE: Self = Self(0);

    /// Both sets.
    #[must_use]
    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every kind of `other` is in this set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// The kind of a node event plugins may subscribe to; `None` for
    /// presence (by watched peer), link events (delivered per connection)
    /// and relay steps that are neither made nor lost.
    pub fn of(event: &NodeEvent) -> Option<Self> {
        match event {
            NodeEvent::SignalUp | NodeEvent::SignalLost { .. } => Some(Self::SIGNALING),
            NodeEvent::NatClassified { .. } => Some(Self::NAT),
            NodeEvent::Relay(RelayStatus::Allocated { .. } | RelayStatus::Failed(_)) => Some(Self::RELAY),
            NodeEvent::NetworkChanged { .. } => Some(Self::ADDRESSES),
            NodeEvent::Relay(RelayStatus::Allocating | RelayStatus::Unconfigured)
            | NodeEvent::Presence { .. }
            | NodeEvent::Link { .. } => None,
        }
    }
}

/// Why `watch-peer` refused, whatever the contract version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFault {
    /// The node has no signaling server.
    NoSignaling,
    /// Empty or too long.
    InvalidPeer,
    /// [`MAX_WATCHED_PEERS`] watched already.
    TooMany,
}

/// What one plugin instance chose to receive.
#[derive(Debug, Default)]
pub struct Subscriptions {
    kinds: NodeEventKinds,
    watched: HashSet<String>,
}

impl Subscriptions {
    /// Replaces the chosen kinds; returns those newly chosen.
    pub fn subscribe(&mut self, kinds: NodeEventKinds) -> NodeEventKinds {
        let added = NodeEventKinds(kinds.0 & !self.kinds.0);
        self.kinds = kinds;
        added
    }

    /// Whether `peer` can be watched.
    ///
    /// # Errors
    /// [`WatchFault::InvalidPeer`] for an empty or too long id,
    /// [`WatchFault::TooMany`] when [`MAX_WATCHED_PEERS`] are watched.
    pub fn check_watch(&self, peer: &str) -> Result<(), WatchFault> {
        if peer.is_empty() || peer.len() > MAX_PEER_ID_LEN {
            return Err(WatchFault::InvalidPeer);
        }
        if !self.watched.contains(peer) && self.watched.len() >= MAX_WATCHED_PEERS {
            return Err(WatchFault::TooMany);
        }
        Ok(())
    }

    /// Adds a watched peer.
    ///
    /// # Errors
    /// As [`Subscriptions::check_watch`].
    pub fn watch(&mut self, peer: &str) -> Result<(), WatchFault> {
        self.check_watch(peer)?;
        self.watched.insert(peer.to_string());
        Ok(())
    }

    /// Stops watching a peer.
    pub fn unwatch(&mut self, peer: &str) {
        self.watched.remove(peer);
    }

    /// Whether this instance wants `event`.
    pub fn wants(&self, event: &NodeEvent) -> bool {
        match event {
            NodeEvent::Presence { peer, .. } => self.watched.contains(peer),
            other => NodeEventKinds::of(other).is_some_and(|kind| self.kinds.contains(kind)),
        }
    }
}

/// The union of what a service's plugin instances ever chose, shared with
/// the task that forwards node events to the plugin (which stops with the
/// plugin's channel).
#[derive(Debug, Default)]
pub struct NodeEventFilter {
    kinds: AtomicU8,
    watched: Mutex<HashSet<String>>,
    forwarding: AtomicBool,
}

impl NodeEventFilter {
    /// Widens the filter by `kinds`.
    pub fn add_kinds(&self, kinds: NodeEventKinds) {
        self.kinds.fetch_or(kinds.0, Ordering::AcqRel);
    }

    /// Widens the filter by a watched peer.
    pub fn add_peer(&self, peer: &str) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if watched.len() < MAX_WATCHED_PEERS * 4 {
            watched.insert(peer.to_string());
        }
    }

    /// Whether some instance of the plugin may want `event`.
    pub fn may_want(&self, event: &NodeEvent) -> bool {
        match event {
            NodeEvent::Presence { peer, .. } => {
                let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
                watched.len() >= MAX_WATCHED_PEERS * 4 || watched.contains(peer)
            }
            other => NodeEventKinds::of(other)
                .is_some_and(|kind| NodeEventKinds(self.kinds.load(Ordering::Acquire)).contains(kind)),
        }
    }

    /// True the first time only: the caller starts the forwarding task.
    pub fn start_forwarding(&self) -> bool {
        !self.forwarding.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_gets_the_kinds_it_chose_and_its_watched_peers_only() {
        let mut subs = Subscriptions::default();
        assert!(!subs.wants(&NodeEvent::SignalUp));
        let added = subs.subscribe(NodeEventKinds::SIGNALING.with(NodeEventKinds::RELAY));
        assert_eq!(added, NodeEventKinds::SIGNALING.with(NodeEventKinds::RELAY));
        assert_eq!(subs.subscribe(NodeEventKinds::SIGNALING.with(NodeEventKinds::NAT)), NodeEventKinds::NAT);
        subs.subscribe(NodeEventKinds::SIGNALING.with(NodeEventKinds::RELAY));
        assert!(subs.wants(&NodeEvent::SignalUp));
        assert!(subs.wants(&NodeEvent::SignalLost { reason: String::new() }));
        assert!(subs.wants(&NodeEvent::Relay(RelayStatus::Failed("x".into()))));
        assert!(!subs.wants(&NodeEvent::Relay(RelayStatus::Allocating)));
        let bob = NodeEvent::Presence { peer: "bob".into(), online: true };
        assert!(!subs.wants(&bob));
        assert_eq!(subs.watch("bob"), Ok(()));
        assert!(subs.wants(&bob));
        subs.unwatch("bob");
        assert!(!subs.wants(&bob));
        subs.subscribe(NodeEventKinds::NONE);
        assert!(!subs.wants(&NodeEvent::SignalUp));
    }

    #[test]
    fn watching_refuses_bad_ids_and_more_than_the_cap() {
        let mut subs = Subscriptions::default();
        assert_eq!(subs.watch(""), Err(WatchFault::InvalidPeer));
        assert_eq!(subs.watch(&"x".repeat(256)), Err(WatchFault::InvalidPeer));
        for i in 0..MAX_WATCHED_PEERS {
            assert_eq!(subs.watch(&format!("peer-{i}")), Ok(()));
        }
        assert_eq!(subs.watch("one-more"), Err(WatchFault::TooMany));
        assert_eq!(subs.watch("peer-7"), Ok(()), "watching a watched peer again is fine");
    }

    #[test]
    fn the_shared_filter_only_widens() {
        let filter = NodeEventFilter::default();
        assert!(!filter.may_want(&NodeEvent::SignalUp));
        filter.add_kinds(NodeEventKinds::SIGNALING);
        filter.add_kinds(NodeEventKinds::NAT);
        assert!(filter.may_want(&NodeEvent::SignalUp));
        filter.add_peer("bob");
        assert!(filter.may_want(&NodeEvent::Presence { peer: "bob".into(), online: false }));
        assert!(!filter.may_want(&NodeEvent::Presence { peer: "eve".into(), online: false }));
        assert!(filter.start_forwarding());
        assert!(!filter.start_forwarding());
    }
}

//! The host side of `fogconnect:plugin@0.2.0`: its imports over the
//! version-neutral parts of [`PluginState`], and the node's events in the
//! contract's types.

use std::sync::Arc;

use super::bindings_0_2::fogconnect::plugin::{host, types};
use super::state::{ConnFault, ConnectFault, PluginContext, PluginState, plugin_log};
use super::subscriptions::{NodeEventKinds, Subscriptions, WatchFault};
use crate::convention::Transport;
use crate::events::{NetworkEvent, NodeEvent, PathInfo};
use crate::node::RelayStatus;
use crate::transport::conn::{CloseKind, CloseReason, ConnShared, PathKind};

impl From<ConnFault> for types::ConnError {
    fn from(fault: ConnFault) -> Self {
        match fault {
            ConnFault::UnknownConnection => types::ConnError::UnknownConnection,
            ConnFault::Closed => types::ConnError::Closed,
            ConnFault::TooLarge(max) => types::ConnError::TooLarge(max),
            ConnFault::BufferFull(limit) => types::ConnError::BufferFull(limit),
        }
    }
}

impl From<ConnectFault> for types::ConnectError {
    fn from(fault: ConnectFault) -> Self {
        match fault {
            ConnectFault::InvalidPeer(why) => types::ConnectError::InvalidPeer(why),
            ConnectFault::UnsupportedTransport => types::ConnectError::UnsupportedTransport,
            ConnectFault::NotAllowed => types::ConnectError::NotAllowed,
        }
    }
}

impl From<WatchFault> for types::WatchError {
    fn from(fault: WatchFault) -> Self {
        match fault {
            WatchFault::NoSignaling => types::WatchError::NoSignaling,
            WatchFault::InvalidPeer => types::WatchError::InvalidPeer,
            WatchFault::TooMany => types::WatchError::TooMany,
        }
    }
}

fn path_kind(kind: PathKind) -> types::PathKind {
    match kind {
        PathKind::Lan => types::PathKind::Lan,
        PathKind::Direct => types::PathKind::Direct,
        PathKind::Relayed => types::PathKind::Relayed,
    }
}

/// A path in the contract's form.
pub(super) fn path_info(path: &PathInfo) -> types::PathInfo {
    types::PathInfo { kind: path_kind(path.kind), remote_address: path.remote.to_string() }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What `on-connect` is told about a connection.
pub(super) fn connect_info(shared: &ConnShared) -> types::ConnectInfo {
    let meta = shared.meta();
    types::ConnectInfo {
        peer_id: meta.peer_id.clone(),
        passive: meta.passive,
        convention: meta.convention.raw(),
        remote_address: meta.remote.to_string(),
        path: path_info(&shared.path()),
    }
}

/// Converts a close reason to its 0.2.0 form.
pub(super) fn close_reason(reason: &CloseReason) -> types::CloseReason {
    types::CloseReason {
        kind: match reason.kind {
            CloseKind::Eof => types::CloseKind::Eof,
            CloseKind::Error => types::CloseKind::Error,
            CloseKind::Timeout => types::CloseKind::Timeout,
            CloseKind::Refused => types::CloseKind::Refused,
            CloseKind::Local => types::CloseKind::Local,
        },
        message: reason.message.clone(),
    }
}

/// A connection's network event in the contract's form.
pub(super) fn network_event(event: &NetworkEvent) -> types::NetworkEvent {
    match event {
        NetworkEvent::PathChanged { from, to } => {
            types::NetworkEvent::PathChanged(types::PathChange { from: path_info(from), to: path_info(to) })
        }
        NetworkEvent::LinkSilent { after } => types::NetworkEvent::LinkSilent(millis(*after)),
        NetworkEvent::LinkRecovered { silent_for } => types::NetworkEvent::LinkRecovered(millis(*silent_for)),
    }
}

/// A node event in the contract's form; `None` for those it has no case
/// for (relay steps neither made nor lost, link events: those reach the
/// plugin per connection).
pub(super) fn node_event(event: &NodeEvent) -> Option<types::NodeEvent> {
    let texts = |ips: &[std::net::IpAddr]| ips.iter().map(ToString::to_string).collect::<Vec<_>>();
    Some(match event {
        NodeEvent::SignalUp => types::NodeEvent::SignalUp,
        NodeEvent::SignalLost { reason } => types::NodeEvent::SignalLost(reason.clone()),
        NodeEvent::NatClassified { previous, report } => {
            let changed = previous
                .as_ref()
                .is_none_or(|before| before.kind_name() != report.kind_name() || before.public != report.public);
            types::NodeEvent::NatClassified(types::NatClassification {
                nat_type: report.kind_name().to_string(),
                public_address: report.public.map(|p| p.to_string()),
                changed,
            })
        }
        NodeEvent::Relay(RelayStatus::Allocated { url, relayed }) => {
            types::NodeEvent::RelayAllocated(types::RelayAllocation {
                server: url.to_string(),
                relayed_address: relayed.to_string(),
            })
        }
        NodeEvent::Relay(RelayStatus::Failed(why)) => types::NodeEvent::RelayLost(why.clone()),
        NodeEvent::NetworkChanged { added, removed, addresses } => {
            types::NodeEvent::AddressesChanged(types::AddressChange {
                added: texts(added),
                removed: texts(removed),
                addresses: texts(addresses),
            })
        }
        NodeEvent::Presence { peer, online } => {
            types::NodeEvent::Presence(types::PeerPresence { peer: peer.clone(), online: *online })
        }
        NodeEvent::Relay(RelayStatus::Allocating | RelayStatus::Unconfigured) | NodeEvent::Link { .. } => {
            return None;
        }
    })
}

/// The contract's flags as node event kinds.
pub(super) fn kinds(flags: types::NodeEventKinds) -> NodeEventKinds {
    [
        (types::NodeEventKinds::SIGNALING, NodeEventKinds::SIGNALING),
        (types::NodeEventKinds::NAT, NodeEventKinds::NAT),
        (types::NodeEventKinds::RELAY, NodeEventKinds::RELAY),
        (types::NodeEventKinds::ADDRESSES, NodeEventKinds::ADDRESSES),
    ]
    .into_iter()
    .filter(|(flag, _)| flags.contains(*flag))
    .fold(NodeEventKinds::NONE, |set, (_, kind)| set.with(kind))
}

/// `subscribe` of either world 0.2.0: the instance's choice, and the node's
/// events it may want forwarded to the plugin's channel (after the node's
/// state now for the kinds newly chosen).
pub(super) fn subscribe(ctx: &PluginContext, subscriptions: &mut Subscriptions, flags: types::NodeEventKinds) {
    let added = subscriptions.subscribe(kinds(flags));
    if added != NodeEventKinds::NONE {
        ctx.node_events.add_kinds(added);
        ctx.host.forward_node_events(added, Arc::clone(&ctx.node_events), ctx.owner.clone());
    }
}

/// `watch-peer` of either world 0.2.0.
pub(super) fn watch_peer(
    ctx: &PluginContext,
    subscriptions: &mut Subscriptions,
    peer: &str,
) -> Result<(), types::WatchError> {
    subscriptions.check_watch(peer)?;
    ctx.host.watch_presence(peer, ctx.owner.clone())?;
    subscriptions.watch(peer)?;
    ctx.node_events.add_peer(peer);
    ctx.host.forward_node_events(NodeEventKinds::NONE, Arc::clone(&ctx.node_events), ctx.owner.clone());
    Ok(())
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    fn send(&mut self, conn: u64, data: Vec<u8>) -> Result<(), types::ConnError> {
        Ok(self.send_message(conn, data)?)
    }

    fn close(&mut self, conn: u64) -> Result<(), types::ConnError> {
        Ok(self.close_conn(conn)?)
    }

    fn convention(&mut self, conn: u64) -> Result<u32, types::ConnError> {
        Ok(self.open(conn)?.meta().convention.raw())
    }

    fn is_passive(&mut self, conn: u64) -> Result<bool, types::ConnError> {
        Ok(self.open(conn)?.meta().passive)
    }

    fn peer_id(&mut self, conn: u64) -> Result<String, types::ConnError> {
        Ok(self.open(conn)?.meta().peer_id.clone())
    }

    fn user_data(&mut self, conn: u64) -> Result<u64, types::ConnError> {
        Ok(self.user_data_of(conn)?)
    }

    fn set_user_data(&mut self, conn: u64, value: u64) -> Result<(), types::ConnError> {
        Ok(self.set_user_data_of(conn, value)?)
    }

    fn connect_peer(
        &mut self,
        peer: String,
        transport: types::Transport,
        service: u8,
    ) -> Result<u64, types::ConnectError> {
        let transport = match transport {
            types::Transport::Rtc => Transport::Rtc,
            types::Transport::Udp => Transport::Udp,
            types::Transport::Utp => Transport::Utp,
            types::Transport::Kcp => Transport::Kcp,
            types::Transport::Sctp => Transport::Sctp,
            types::Transport::Quic => Transport::Quic,
        };
        Ok(self.start_connect(&peer, Some(transport), service)?)
    }

    fn stats(&mut self, conn: u64) -> Result<types::ConnectionStats, types::ConnError> {
        let s = self.open(conn)?.stats();
        Ok(types::ConnectionStats {
            rtt_us: u64::try_from(s.rtt.as_micros()).unwrap_or(u64::MAX),
            path: path_kind(s.path),
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            messages_sent: s.messages_sent,
            messages_received: s.messages_received,
        })
    }

    fn path(&mut self, conn: u64) -> Result<types::PathInfo, types::ConnError> {
        Ok(path_info(&self.open(conn)?.path()))
    }

    fn subscribe(&mut self, flags: types::NodeEventKinds) {
        subscribe(&self.ctx, &mut self.subscriptions, flags);
    }

    fn watch_peer(&mut self, peer: String) -> Result<(), types::WatchError> {
        watch_peer(&self.ctx, &mut self.subscriptions, &peer)
    }

    fn unwatch_peer(&mut self, peer: String) {
        self.subscriptions.unwatch(&peer);
    }

    fn log(&mut self, level: types::LogLevel, message: String) {
        let level = match level {
            types::LogLevel::Trace => tracing::Level::TRACE,
            types::LogLevel::Debug => tracing::Level::DEBUG,
            types::LogLevel::Info => tracing::Level::INFO,
            types::LogLevel::Warn => tracing::Level::WARN,
            types::LogLevel::Error => tracing::Level::ERROR,
        };
        plugin_log(self.ctx.service, level, &message);
    }

    fn monotonic_now(&mut self) -> u64 {
        self.now_ns()
    }
}

//! Notices when the host's network changes (an address added or removed,
//! an interface gone) and adapts the node: it classifies the NAT again,
//! registers with signaling again (the session's path may be gone), checks
//! its relay allocation, and has every link it dialled by id look for a
//! path at once instead of waiting for the link to go silent.
//!
//! The addresses are read with `getifaddrs` once a second: one cheap call,
//! portable, and quick enough for the "within seconds" a roaming device
//! needs (a netlink subscription would save the polling on Linux only).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::NodeInner;
use crate::events::NodeEvent;

/// How often the host's addresses are read.
pub(super) const NETWORK_POLL: Duration = Duration::from_secs(1);

/// How long a change is left to settle before the node adapts: a new
/// lease adds one address and removes another a moment later, and an
/// interface that comes up gets its addresses one by one. One adaptation
/// (one re-registration, one classification) covers them all.
const SETTLE: Duration = Duration::from_millis(300);

/// The host's addresses that can carry traffic to peers (loopback and
/// IPv6 link-local left out); `None` when they cannot be read.
fn addresses() -> Option<BTreeSet<IpAddr>> {
    let interfaces = if_addrs::get_if_addrs().ok()?;
    Some(
        interfaces
            .into_iter()
            .map(|i| i.ip())
            .filter(|ip| !ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .collect(),
    )
}

/// What changed between two readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AddressChange {
    pub(super) added: Vec<IpAddr>,
    pub(super) removed: Vec<IpAddr>,
}

/// The change from `before` to `now`, if any.
pub(super) fn change(before: &BTreeSet<IpAddr>, now: &BTreeSet<IpAddr>) -> Option<AddressChange> {
    let added: Vec<IpAddr> = now.difference(before).copied().collect();
    let removed: Vec<IpAddr> = before.difference(now).copied().collect();
    (!added.is_empty() || !removed.is_empty()).then_some(AddressChange { added, removed })
}

/// Watches the host's addresses until the node shuts down.
pub(super) async fn watch(inner: Arc<NodeInner>) {
    let mut known = addresses();
    let mut ticks = tokio::time::interval(NETWORK_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(now) = addresses() else { continue };
        let Some(before) = known.clone() else {
            known = Some(now);
            continue;
        };
        if change(&before, &now).is_none() {
            continue;
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(SETTLE) => {}
        }
        let now = addresses().unwrap_or(now);
        known = Some(now.clone());
        if let Some(change) = change(&before, &now) {
            adapt(&inner, change, now.into_iter().collect());
        }
    }
}

/// Adapts the node to a changed network.
fn adapt(inner: &Arc<NodeInner>, change: AddressChange, addresses: Vec<IpAddr>) {
    tracing::info!(added = ?change.added, removed = ?change.removed, "the local network changed");
    inner.socket.network_changed();
    let _ = inner.events.send(NodeEvent::NetworkChanged { added: change.added, removed: change.removed, addresses });
    if let Some(signal) = &inner.signal {
        signal.reconnect();
    }
    if let Some(relay) = &inner.relay {
        relay.verify();
    }
    inner.traversal.classify();
    inner.links.watches.repair_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_what_was_added_and_removed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let before: BTreeSet<IpAddr> = [ip("10.0.1.2"), ip("192.0.2.1")].into();
        assert_eq!(change(&before, &before.clone()), None);
        let now: BTreeSet<IpAddr> = [ip("10.0.1.7"), ip("192.0.2.1")].into();
        assert_eq!(
            change(&before, &now),
            Some(AddressChange { added: vec![ip("10.0.1.7")], removed: vec![ip("10.0.1.2")] })
        );
    }
}

//! Notices when the host's network changes (an address added or removed,
//! an interface gone, the default route moved to another gateway, the
//! public address changed behind an unchanged local one) and adapts the
//! node: it classifies the NAT again, registers with signaling again (the
//! session's path may be gone), checks its relay allocation, and has every
//! link it dialled by id look for a path at once instead of waiting for the
//! link to go silent.
//!
//! The addresses are read with `getifaddrs` and the default gateways from
//! the kernel's routing tables once a second: cheap calls, quick enough for
//! the "within seconds" a roaming device needs (a netlink subscription
//! would save the polling on Linux only). The public address is asked from
//! the STUN server every [`NodeConfig::public_address_check`](super::NodeConfig).

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

/// Readings a change may take to settle before the node adapts anyway.
const MAX_SETTLE_READS: usize = 10;

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

/// The default gateways of the kernel's routing tables (Linux: the
/// `/proc/net/route` and `/proc/net/ipv6_route` files); none where they
/// cannot be read.
fn default_gateways() -> BTreeSet<IpAddr> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let mut gateways = default_gateways_v4(&read("/proc/net/route"));
    gateways.extend(default_gateways_v6(&read("/proc/net/ipv6_route")));
    gateways
}

/// The gateways of the default routes in the text of `/proc/net/route`
/// (columns Iface, Destination, Gateway, Flags, ..., Mask; addresses in
/// hex, in host byte order).
pub(super) fn default_gateways_v4(table: &str) -> BTreeSet<IpAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (destination, gateway, mask) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
            let hex = |f: &str| u32::from_str_radix(f, 16).ok();
            if hex(destination)? != 0 || hex(mask)? != 0 {
                return None;
            }
            let gateway = hex(gateway)?;
            (gateway != 0).then(|| IpAddr::from(gateway.to_le_bytes()))
        })
        .collect()
}

/// The next hops of the default routes in the text of
/// `/proc/net/ipv6_route` (destination, its prefix length, source, its
/// prefix length, next hop, ...; addresses as 32 hex digits).
pub(super) fn default_gateways_v6(table: &str) -> BTreeSet<IpAddr> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (destination, length, next_hop) = (fields.first()?, fields.get(1)?, fields.get(4)?);
            let address = |f: &str| u128::from_str_radix(f, 16).ok().map(std::net::Ipv6Addr::from);
            if address(destination)? != std::net::Ipv6Addr::UNSPECIFIED || *length != "00" {
                return None;
            }
            let next_hop = address(next_hop)?;
            (!next_hop.is_unspecified()).then_some(IpAddr::V6(next_hop))
        })
        .collect()
}

/// What changed between two readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AddressChange {
    pub(super) added: Vec<IpAddr>,
    pub(super) removed: Vec<IpAddr>,
}

/// The host's network as the node watches it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Network {
    addresses: BTreeSet<IpAddr>,
    gateways: BTreeSet<IpAddr>,
}

impl Network {
    fn read() -> Option<Self> {
        Some(Self { addresses: addresses()?, gateways: default_gateways() })
    }
}

/// The change from `before` to `now`, if any.
pub(super) fn change(before: &BTreeSet<IpAddr>, now: &BTreeSet<IpAddr>) -> Option<AddressChange> {
    let added: Vec<IpAddr> = now.difference(before).copied().collect();
    let removed: Vec<IpAddr> = before.difference(now).copied().collect();
    (!added.is_empty() || !removed.is_empty()).then_some(AddressChange { added, removed })
}

/// Watches the host's network until the node shuts down.
pub(super) async fn watch(inner: Arc<NodeInner>) {
    let mut known = Network::read();
    let mut ticks = tokio::time::interval(NETWORK_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let public_check = inner.config.public_address_check;
    let mut next_public_check = tokio::time::Instant::now() + public_check;
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if !public_check.is_zero() && tokio::time::Instant::now() >= next_public_check {
            next_public_check = tokio::time::Instant::now() + public_check;
            if let Some(why) = public_address_moved(&inner).await {
                let addresses = known.as_ref().map(|n| n.addresses.iter().copied().collect()).unwrap_or_default();
                adapt(&inner, &why, AddressChange { added: Vec::new(), removed: Vec::new() }, addresses);
                continue;
            }
        }
        let Some(now) = Network::read() else { continue };
        let Some(before) = known.clone() else {
            known = Some(now);
            continue;
        };
        if before == now {
            continue;
        }
        // Settle: read again until two readings SETTLE apart agree (a move
        // removes the old address and, for a moment, the default route
        // with it): one adaptation for the whole change, not one for each
        // step of it.
        let mut now = now;
        for _ in 0..MAX_SETTLE_READS {
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(SETTLE) => {}
            }
            let again = Network::read().unwrap_or_else(|| now.clone());
            if again == now {
                break;
            }
            now = again;
        }
        known = Some(now.clone());
        let addresses_changed = change(&before.addresses, &now.addresses);
        if addresses_changed.is_none() && before.gateways == now.gateways {
            continue;
        }
        let why = match &addresses_changed {
            Some(_) => "the local network changed".to_string(),
            None => format!("the default route changed: gateways {:?}, before {:?}", now.gateways, before.gateways),
        };
        let change = addresses_changed.unwrap_or(AddressChange { added: Vec::new(), removed: Vec::new() });
        adapt(&inner, &why, change, now.addresses.into_iter().collect());
    }
}

/// Asks the STUN server for the node's public address; a reason when its
/// IP is not the classification's any more (the ISP gave the router a new
/// address, the upstream NAT changed).
async fn public_address_moved(inner: &NodeInner) -> Option<String> {
    let classified = inner.traversal.nat().borrow().as_ref().and_then(|report| report.public)?;
    let now = inner.traversal.public_addr().await?;
    (now.ip() != classified.ip()).then(|| format!("the public address changed: {} (was {})", now.ip(), classified.ip()))
}

/// Adapts the node to a changed network.
fn adapt(inner: &Arc<NodeInner>, why: &str, change: AddressChange, addresses: Vec<IpAddr>) {
    tracing::info!(added = ?change.added, removed = ?change.removed, "{why}");
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

    #[test]
    fn default_gateways_are_read_from_the_kernel_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0101000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_gateways_v4(v4), [IpAddr::from([10, 0, 1, 1])].into());
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                  20010db8000a00000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                  20010db8000a00000000000000000000 40 00000000000000000000000000000000 00 \
                  00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        let gateway: IpAddr = "2001:db8:a::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(default_gateways_v6(v6), [gateway].into());
        assert!(default_gateways_v4("").is_empty() && default_gateways_v6("garbage line").is_empty());
    }
}

//! The punching strategy for a pair of NATs, decided by each side from both
//! sides' classification. Pure: the two sides reach consistent plans
//! because each evaluates the same table with the roles swapped.

use std::fmt;

use crate::signal::protocol::{NatBehaviour, NatInfo, PortAllocation};

/// What this side does to get a direct path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Checks on every candidate pair from the node's socket, both sides at
    /// once: enough whenever at least one side's mapping is
    /// endpoint-independent and the filters open by sending first.
    Simultaneous,
    /// This side sends probes to many ports of the peer's public IP (the
    /// peer's NAT maps each destination to a new port).
    Spray(SprayKind),
    /// This side's NAT is symmetric and the peer filters by port: open
    /// `sockets` extra sockets, each sending to the peer's public address,
    /// so the peer's random probes can hit one of their mappings.
    Listen {
        /// Extra sockets to open.
        sockets: u16,
    },
    /// No direct path is possible between these NATs; only host (LAN)
    /// candidates are checked before giving up with this reason.
    RelayRequired(String),
}

/// Which ports a spraying side targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SprayKind {
    /// Ports after the peer's last known public port, `delta` apart
    /// (sequential allocator).
    Predict {
        /// The peer NAT's allocation step.
        delta: i32,
    },
    /// Uniformly random ports (birthday paradox against the peer's many
    /// sockets).
    Birthday,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::Simultaneous => f.write_str("simultaneous open"),
            Plan::Spray(SprayKind::Predict { delta }) => write!(f, "port prediction (delta {delta:+})"),
            Plan::Spray(SprayKind::Birthday) => f.write_str("birthday probing (random ports)"),
            Plan::Listen { sockets } => write!(f, "birthday listening ({sockets} sockets)"),
            Plan::RelayRequired(reason) => write!(f, "relay required: {reason}"),
        }
    }
}

fn hard(nat: &NatInfo) -> bool {
    matches!(nat.mapping, NatBehaviour::AddressDependent | NatBehaviour::AddressAndPortDependent)
}

fn predictable(nat: &NatInfo) -> Option<i32> {
    match nat.allocation {
        PortAllocation::Sequential { delta } => Some(delta),
        // A port-preserving symmetric NAT maps the peer to the local port
        // again: predicted with delta 0 around the known public port.
        PortAllocation::Preserving => Some(0),
        PortAllocation::Random | PortAllocation::Unknown => None,
    }
}

/// Whether `nat` accepts a peer's datagrams from any port of an IP it has
/// sent to (endpoint-independent or address-dependent filtering).
fn filters_by_address_only(nat: &NatInfo) -> bool {
    matches!(nat.filtering, NatBehaviour::EndpointIndependent | NatBehaviour::AddressDependent)
}

/// Short name of a classification for messages.
pub fn describe(nat: Option<&NatInfo>) -> &'static str {
    let Some(nat) = nat else { return "unclassified" };
    if nat.udp_blocked {
        return "UDP blocked";
    }
    match (nat.mapping, nat.filtering) {
        (NatBehaviour::AddressDependent | NatBehaviour::AddressAndPortDependent, _) => "symmetric",
        (_, NatBehaviour::EndpointIndependent) => "full cone",
        (_, NatBehaviour::AddressDependent) => "address-restricted",
        (_, NatBehaviour::AddressAndPortDependent) => "port-restricted",
        _ => "unclassified",
    }
}

/// The plan of the side behind `local` toward a peer behind `remote`
/// (`None`: not classified, assumed easy).
pub fn plan(local: Option<&NatInfo>, remote: Option<&NatInfo>, listen_sockets: u16) -> Plan {
    let unknown = NatInfo {
        mapping: NatBehaviour::Unknown,
        filtering: NatBehaviour::Unknown,
        allocation: PortAllocation::Unknown,
        udp_blocked: false,
    };
    let (l, r) = (local.unwrap_or(&unknown), remote.unwrap_or(&unknown));
    if l.udp_blocked {
        return Plan::RelayRequired("UDP is blocked on this node's network".into());
    }
    if r.udp_blocked {
        return Plan::RelayRequired("UDP is blocked on the peer's network".into());
    }
    match (hard(l), hard(r)) {
        (false, false) => Plan::Simultaneous,
        (true, true) => match predictable(r) {
            Some(delta) => Plan::Spray(SprayKind::Predict { delta }),
            None if predictable(l).is_some() => Plan::Simultaneous,
            None => Plan::RelayRequired("symmetric × symmetric NATs with random ports".into()),
        },
        // This side is symmetric: the peer reaches the new mapping if it
        // filters by address only, or by predicting our ports.
        (true, false) => {
            if filters_by_address_only(r) || predictable(l).is_some() {
                Plan::Simultaneous
            } else {
                Plan::Listen { sockets: listen_sockets }
            }
        }
        (false, true) => {
            if filters_by_address_only(l) {
                Plan::Simultaneous
            } else if let Some(delta) = predictable(r) {
                Plan::Spray(SprayKind::Predict { delta })
            } else {
                Plan::Spray(SprayKind::Birthday)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat(mapping: NatBehaviour, filtering: NatBehaviour, allocation: PortAllocation) -> NatInfo {
        NatInfo { mapping, filtering, allocation, udp_blocked: false }
    }

    fn kinds() -> Vec<(&'static str, Option<NatInfo>)> {
        use NatBehaviour::*;
        vec![
            ("open", Some(nat(EndpointIndependent, EndpointIndependent, PortAllocation::Preserving))),
            ("full-cone", Some(nat(EndpointIndependent, EndpointIndependent, PortAllocation::Preserving))),
            ("address-restricted", Some(nat(EndpointIndependent, AddressDependent, PortAllocation::Preserving))),
            ("port-restricted", Some(nat(EndpointIndependent, AddressAndPortDependent, PortAllocation::Preserving))),
            ("symmetric", Some(nat(AddressAndPortDependent, AddressAndPortDependent, PortAllocation::Random))),
            ("blocked", Some(NatInfo { udp_blocked: true, ..nat(Unknown, Unknown, PortAllocation::Unknown) })),
            ("unclassified", None),
        ]
    }

    #[test]
    fn matrix_is_consistent_on_both_sides() {
        for (a_name, a) in kinds() {
            for (b_name, b) in kinds() {
                let pa = plan(a.as_ref(), b.as_ref(), 256);
                let pb = plan(b.as_ref(), a.as_ref(), 256);
                let relay_a = matches!(pa, Plan::RelayRequired(_));
                let relay_b = matches!(pb, Plan::RelayRequired(_));
                assert_eq!(relay_a, relay_b, "{a_name} × {b_name}: {pa} / {pb}");
                let expect_relay =
                    a_name == "blocked" || b_name == "blocked" || (a_name == "symmetric" && b_name == "symmetric");
                assert_eq!(relay_a, expect_relay, "{a_name} × {b_name}: {pa}");
                // A listening side always faces a spraying one.
                if matches!(pa, Plan::Listen { .. }) {
                    assert!(matches!(pb, Plan::Spray(_)), "{a_name} × {b_name}: {pa} / {pb}");
                }
                if matches!(pa, Plan::Spray(SprayKind::Birthday)) {
                    assert!(matches!(pb, Plan::Listen { sockets: 256 }), "{a_name} × {b_name}: {pa} / {pb}");
                }
            }
        }
    }

    #[test]
    fn port_restricted_versus_symmetric_is_birthday() {
        let k = kinds();
        let (pr, sym) = (k[3].1.as_ref(), k[4].1.as_ref());
        assert_eq!(plan(pr, sym, 256), Plan::Spray(SprayKind::Birthday));
        assert_eq!(plan(sym, pr, 256), Plan::Listen { sockets: 256 });
        // Address-restricted opens for the whole IP: plain checks suffice.
        assert_eq!(plan(k[2].1.as_ref(), sym, 256), Plan::Simultaneous);
        assert_eq!(plan(sym, k[2].1.as_ref(), 256), Plan::Simultaneous);
    }

    #[test]
    fn sequential_allocators_are_predicted() {
        use NatBehaviour::*;
        let seq = nat(AddressAndPortDependent, AddressAndPortDependent, PortAllocation::Sequential { delta: 2 });
        let pr = nat(EndpointIndependent, AddressAndPortDependent, PortAllocation::Preserving);
        assert_eq!(plan(Some(&pr), Some(&seq), 256), Plan::Spray(SprayKind::Predict { delta: 2 }));
        assert_eq!(plan(Some(&seq), Some(&pr), 256), Plan::Simultaneous);
        let random = nat(AddressAndPortDependent, AddressAndPortDependent, PortAllocation::Random);
        assert_eq!(plan(Some(&random), Some(&seq), 256), Plan::Spray(SprayKind::Predict { delta: 2 }));
        assert_eq!(plan(Some(&seq), Some(&random), 256), Plan::Simultaneous);
    }

    #[test]
    fn reasons_name_the_cause() {
        let k = kinds();
        let Plan::RelayRequired(reason) = plan(k[4].1.as_ref(), k[4].1.as_ref(), 256) else { panic!() };
        assert!(reason.contains("symmetric × symmetric"));
        let Plan::RelayRequired(reason) = plan(k[0].1.as_ref(), k[5].1.as_ref(), 256) else { panic!() };
        assert!(reason.contains("peer's network"));
    }
}

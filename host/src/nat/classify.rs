//! NAT classification from the results of the RFC 5780 tests: pure
//! functions, so every verdict is unit-tested without a network.

use std::fmt;
use std::net::SocketAddr;

pub use crate::signal::protocol::{NatBehaviour, NatInfo, PortAllocation};

/// Everything the discovery procedure found out about the local NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatReport {
    /// The local address of the socket that ran the mapping tests.
    pub local: SocketAddr,
    /// The public (server-reflexive) address of that socket.
    pub public: Option<SocketAddr>,
    /// Mapping behaviour (RFC 4787 section 4.1).
    pub mapping: NatBehaviour,
    /// Filtering behaviour (RFC 4787 section 5).
    pub filtering: NatBehaviour,
    /// How new mappings' ports are chosen.
    pub allocation: PortAllocation,
    /// Whether a datagram sent to the own public address comes back;
    /// `None` when not tested.
    pub hairpinning: Option<bool>,
    /// No response from the server at all.
    pub udp_blocked: bool,
    /// Whether the server supports RFC 5780 (sent OTHER-ADDRESS); without
    /// it only the public address and hairpinning can be found.
    pub rfc5780: bool,
}

impl NatReport {
    /// Whether there is a NAT: the public address differs from the local
    /// one. `None` when unknown.
    pub fn behind_nat(&self) -> Option<bool> {
        self.public.map(|public| public != self.local)
    }

    /// The part of the report sent to peers in signaling.
    pub fn info(&self) -> NatInfo {
        NatInfo {
            mapping: self.mapping,
            filtering: self.filtering,
            allocation: self.allocation,
            udp_blocked: self.udp_blocked,
        }
    }

    /// A short name of the NAT kind in the classic (RFC 3489) terms.
    pub fn kind_name(&self) -> &'static str {
        use NatBehaviour::*;
        if self.udp_blocked {
            return "UDP blocked";
        }
        match (self.behind_nat(), self.mapping, self.filtering) {
            (Some(false), _, EndpointIndependent) => "open internet",
            (Some(false), _, _) => "firewall, no NAT",
            (_, EndpointIndependent, EndpointIndependent) => "full cone",
            (_, EndpointIndependent, AddressDependent) => "address-restricted cone",
            (_, EndpointIndependent, AddressAndPortDependent) => "port-restricted cone",
            (_, AddressDependent | AddressAndPortDependent, _) => "symmetric",
            _ => "unknown",
        }
    }
}

/// Prints a behaviour in RFC 4787 words.
pub fn behaviour_name(behaviour: NatBehaviour) -> &'static str {
    match behaviour {
        NatBehaviour::EndpointIndependent => "endpoint-independent",
        NatBehaviour::AddressDependent => "address-dependent",
        NatBehaviour::AddressAndPortDependent => "address-and-port-dependent",
        NatBehaviour::Unknown => "unknown",
    }
}

/// Prints a port allocation.
pub fn allocation_name(allocation: PortAllocation) -> String {
    match allocation {
        PortAllocation::Preserving => "preserving".into(),
        PortAllocation::Sequential { delta } => format!("sequential (delta {delta:+})"),
        PortAllocation::Random => "random".into(),
        PortAllocation::Unknown => "unknown".into(),
    }
}

impl fmt::Display for NatReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not tested",
        };
        writeln!(f, "nat type:        {}", self.kind_name())?;
        writeln!(f, "local address:   {}", self.local)?;
        match self.public {
            Some(public) => writeln!(f, "public address:  {public}")?,
            None => writeln!(f, "public address:  unknown")?,
        }
        writeln!(f, "behind nat:      {}", yes_no(self.behind_nat()))?;
        writeln!(f, "mapping:         {}", behaviour_name(self.mapping))?;
        writeln!(f, "filtering:       {}", behaviour_name(self.filtering))?;
        writeln!(f, "port allocation: {}", allocation_name(self.allocation))?;
        write!(f, "hairpinning:     {}", yes_no(self.hairpinning))?;
        if self.udp_blocked {
            write!(f, "\nnote: no answer from the STUN server: UDP is blocked on this network, or the server is down")?;
        } else if !self.rfc5780 {
            write!(
                f,
                "\nnote: the server does not support RFC 5780 (no OTHER-ADDRESS); mapping and filtering unknown"
            )?;
        }
        Ok(())
    }
}

/// Mapping behaviour from RFC 5780 section 4.3: `x1` is the mapped address
/// seen by the primary address, `x2` by the alternate IP and primary port,
/// `x3` by the alternate IP and alternate port (`None`: no answer).
pub fn mapping_behaviour(x1: SocketAddr, x2: Option<SocketAddr>, x3: Option<SocketAddr>) -> NatBehaviour {
    match (x2, x3) {
        (Some(x2), _) if x2 == x1 => NatBehaviour::EndpointIndependent,
        (Some(x2), Some(x3)) if x3 == x2 => NatBehaviour::AddressDependent,
        (Some(_), Some(_)) => NatBehaviour::AddressAndPortDependent,
        _ => NatBehaviour::Unknown,
    }
}

/// Filtering behaviour from RFC 5780 section 4.4: whether the response to
/// "change IP and port" arrived, and whether the one to "change port" did
/// (`None`: not asked).
pub fn filtering_behaviour(changed_ip_and_port: bool, changed_port: Option<bool>) -> NatBehaviour {
    match (changed_ip_and_port, changed_port) {
        (true, _) => NatBehaviour::EndpointIndependent,
        (false, Some(true)) => NatBehaviour::AddressDependent,
        (false, Some(false)) => NatBehaviour::AddressAndPortDependent,
        (false, None) => NatBehaviour::Unknown,
    }
}

/// Largest step between consecutive new mappings still called sequential.
pub const MAX_SEQUENTIAL_DELTA: i32 = 16;

/// Port allocation from `(local port, public port)` samples of new
/// mappings in the order they were made.
pub fn port_allocation(samples: &[(u16, u16)]) -> PortAllocation {
    if samples.len() < 2 {
        return match samples.first() {
            Some((local, public)) if local == public => PortAllocation::Preserving,
            _ => PortAllocation::Unknown,
        };
    }
    if samples.iter().all(|(local, public)| local == public) {
        return PortAllocation::Preserving;
    }
    let deltas: Vec<i32> = samples.windows(2).map(|w| i32::from(w[1].1) - i32::from(w[0].1)).collect();
    let first = deltas[0];
    if first != 0 && first.abs() <= MAX_SEQUENTIAL_DELTA && deltas.iter().all(|&d| d == first) {
        PortAllocation::Sequential { delta: first }
    } else {
        PortAllocation::Random
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    #[test]
    fn mapping_follows_rfc_5780() {
        let x1 = a("203.0.113.1:5000");
        assert_eq!(mapping_behaviour(x1, Some(x1), None), NatBehaviour::EndpointIndependent);
        let x2 = a("203.0.113.1:5001");
        assert_eq!(mapping_behaviour(x1, Some(x2), Some(x2)), NatBehaviour::AddressDependent);
        assert_eq!(mapping_behaviour(x1, Some(x2), Some(a("203.0.113.1:5002"))), NatBehaviour::AddressAndPortDependent);
        assert_eq!(mapping_behaviour(x1, None, None), NatBehaviour::Unknown);
        assert_eq!(mapping_behaviour(x1, Some(x2), None), NatBehaviour::Unknown);
    }

    #[test]
    fn filtering_follows_rfc_5780() {
        assert_eq!(filtering_behaviour(true, None), NatBehaviour::EndpointIndependent);
        assert_eq!(filtering_behaviour(false, Some(true)), NatBehaviour::AddressDependent);
        assert_eq!(filtering_behaviour(false, Some(false)), NatBehaviour::AddressAndPortDependent);
        assert_eq!(filtering_behaviour(false, None), NatBehaviour::Unknown);
    }

    #[test]
    fn allocation_kinds() {
        assert_eq!(port_allocation(&[(4000, 4000), (4001, 4001)]), PortAllocation::Preserving);
        assert_eq!(
            port_allocation(&[(4000, 6000), (4000, 6002), (4000, 6004)]),
            PortAllocation::Sequential { delta: 2 }
        );
        assert_eq!(port_allocation(&[(1, 6000), (2, 5999), (3, 5998)]), PortAllocation::Sequential { delta: -1 });
        assert_eq!(port_allocation(&[(1, 6000), (2, 31337), (3, 1200)]), PortAllocation::Random);
        assert_eq!(port_allocation(&[(1, 6000), (2, 6001), (3, 6003)]), PortAllocation::Random);
        assert_eq!(port_allocation(&[(1, 6000), (2, 6000)]), PortAllocation::Random);
        assert_eq!(port_allocation(&[]), PortAllocation::Unknown);
        assert_eq!(port_allocation(&[(5, 5)]), PortAllocation::Preserving);
    }

    #[test]
    fn kind_names() {
        let mut report = NatReport {
            local: a("10.0.0.2:4000"),
            public: Some(a("203.0.113.1:4000")),
            mapping: NatBehaviour::EndpointIndependent,
            filtering: NatBehaviour::AddressAndPortDependent,
            allocation: PortAllocation::Preserving,
            hairpinning: Some(false),
            udp_blocked: false,
            rfc5780: true,
        };
        assert_eq!(report.kind_name(), "port-restricted cone");
        report.filtering = NatBehaviour::AddressDependent;
        assert_eq!(report.kind_name(), "address-restricted cone");
        report.mapping = NatBehaviour::AddressAndPortDependent;
        assert_eq!(report.kind_name(), "symmetric");
        report.public = Some(report.local);
        report.filtering = NatBehaviour::EndpointIndependent;
        assert_eq!(report.kind_name(), "open internet");
        report.udp_blocked = true;
        assert_eq!(report.kind_name(), "UDP blocked");
        assert!(report.to_string().contains("mapping:         address-and-port-dependent"));
    }
}

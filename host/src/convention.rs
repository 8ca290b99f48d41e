//! The convention number: a `u32` fixed when a connection is made and
//! identical on both ends.
//!
//! ```text
//! bits 0..3   transport protocol, the original C header's enum:
//!             RTC 0, UDP 1, UTP 2, KCP 3, SCTP 4, QUIC 5 (6..15 unknown)
//! bits 4..11  application service number 0..255: selects the service
//! bits 12..31 reserved: must be zero
//! ```
//!
//! The first releases numbered QUIC 1; plugins built against the released
//! `fogconnect:plugin@0.1.0` contract, which documents that number, still
//! see it ([`Convention::raw_for_plugin_contract_0_1`]).

use std::fmt;

/// Errors of decoding a convention number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConventionError {
    /// One of the reserved bits 12..31 is set.
    #[error("reserved convention bits set: {0:#010x} (bits 12..31 must be zero)")]
    ReservedBits(u32),
    /// Bits 0..3 name no known transport.
    #[error(
        "unsupported transport: unknown transport code {0} in convention number (RTC 0, UDP 1, UTP 2, KCP 3, SCTP 4, QUIC 5)"
    )]
    UnknownTransport(u8),
}

/// Transport protocol of a connection (bits 0..3 of the convention number),
/// with the codes of the original C header's `enum transport_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebRTC DataChannel (code 0): reserved; nodes refuse it until it is
    /// offered.
    Rtc,
    /// Unreliable, unordered, encrypted datagrams (code 1): each message
    /// one QUIC DATAGRAM frame (RFC 9221) on the link between the nodes;
    /// offered by every node.
    Udp,
    /// uTP (code 2): reserved.
    Utp,
    /// KCP (code 3): reliable, ordered messages with KCP's low-latency
    /// retransmission, on the node's UDP socket, every datagram sealed
    /// with keys of the link between the nodes; offered by every node.
    Kcp,
    /// SCTP (code 4): reserved.
    Sctp,
    /// QUIC (code 5): reliable, ordered, encrypted; offered by every node.
    Quic,
}

impl Transport {
    /// Every transport, in code order.
    pub const ALL: [Transport; 6] =
        [Transport::Rtc, Transport::Udp, Transport::Utp, Transport::Kcp, Transport::Sctp, Transport::Quic];

    /// The 4-bit code of the transport.
    pub fn code(self) -> u8 {
        match self {
            Transport::Rtc => 0,
            Transport::Udp => 1,
            Transport::Utp => 2,
            Transport::Kcp => 3,
            Transport::Sctp => 4,
            Transport::Quic => 5,
        }
    }

    /// The transport with this 4-bit code.
    ///
    /// # Errors
    /// [`ConventionError::UnknownTransport`] for codes above 5.
    pub fn from_code(code: u8) -> Result<Self, ConventionError> {
        Transport::ALL.get(usize::from(code)).copied().ok_or(ConventionError::UnknownTransport(code))
    }

    /// Whether nodes offer this transport today: QUIC, UDP and KCP between
    /// nodes, RTC (WebRTC DataChannels) to browsers, in a build with them
    /// (feature `browsers`); a connect for another one is refused with
    /// "unsupported transport".
    pub fn is_offered(self) -> bool {
        matches!(self, Transport::Quic | Transport::Udp | Transport::Kcp)
            || (self == Transport::Rtc && cfg!(feature = "browsers"))
    }

    /// Whether a link of this transport carries connections of
    /// `transport`: a link between nodes (QUIC) carries QUIC streams, UDP
    /// datagrams and KCP sessions (made and watched over it), a browser's
    /// (RTC) its DataChannels.
    pub fn carries(self, transport: Transport) -> bool {
        match self {
            Transport::Quic => matches!(transport, Transport::Quic | Transport::Udp | Transport::Kcp),
            other => other == transport,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Rtc => "RTC",
            Transport::Udp => "UDP",
            Transport::Utp => "UTP",
            Transport::Kcp => "KCP",
            Transport::Sctp => "SCTP",
            Transport::Quic => "QUIC",
        })
    }
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Transport::ALL
            .into_iter()
            .find(|t| t.to_string().eq_ignore_ascii_case(s) || t.code().to_string() == s)
            .ok_or_else(|| format!("unknown transport {s:?} (RTC, UDP, UTP, KCP, SCTP, QUIC or their codes 0..5)"))
    }
}

/// A valid convention number: a transport and a service number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Convention {
    transport: Transport,
    service: u8,
}

impl Convention {
    /// The convention number for `service` over `transport`.
    pub fn new(transport: Transport, service: u8) -> Self {
        Self { transport, service }
    }

    /// Decodes and validates a raw convention number.
    ///
    /// # Errors
    /// [`ConventionError::ReservedBits`] when bits 12..31 are not zero,
    /// [`ConventionError::UnknownTransport`] when bits 0..3 name no transport.
    pub fn from_raw(raw: u32) -> Result<Self, ConventionError> {
        if raw & 0xFFFF_F000 != 0 {
            return Err(ConventionError::ReservedBits(raw));
        }
        let transport = Transport::from_code((raw & 0xF) as u8)?;
        Ok(Self { transport, service: ((raw >> 4) & 0xFF) as u8 })
    }

    /// The raw `u32` value.
    pub fn raw(self) -> u32 {
        u32::from(self.transport.code()) | (u32::from(self.service) << 4)
    }

    /// The raw value as the released `fogconnect:plugin@0.1.0` contract
    /// documents it, which numbered QUIC 1 (the other transports were
    /// never offered to it): what plugins built against that contract see.
    pub fn raw_for_plugin_contract_0_1(self) -> u32 {
        let code = match self.transport {
            Transport::Quic => 1,
            other => u32::from(other.code()),
        };
        code | (u32::from(self.service) << 4)
    }

    /// The transport (bits 0..3).
    pub fn transport(self) -> Transport {
        self.transport
    }

    /// The application service number (bits 4..11).
    pub fn service(self) -> u8 {
        self.service
    }
}

impl fmt::Display for Convention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} ({} service {})", self.raw(), self.transport, self.service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_original_headers() {
        let codes: Vec<(String, u8)> = Transport::ALL.iter().map(|t| (t.to_string(), t.code())).collect();
        let expected = [("RTC", 0), ("UDP", 1), ("UTP", 2), ("KCP", 3), ("SCTP", 4), ("QUIC", 5)];
        assert_eq!(codes, expected.map(|(n, c)| (n.to_string(), c)));
        let browsers = cfg!(feature = "browsers");
        let offered: Vec<Transport> = Transport::ALL.into_iter().filter(|t| t.is_offered()).collect();
        let expected: &[Transport] = if browsers {
            &[Transport::Rtc, Transport::Udp, Transport::Kcp, Transport::Quic]
        } else {
            &[Transport::Udp, Transport::Kcp, Transport::Quic]
        };
        assert_eq!(offered, expected);
    }

    #[test]
    fn node_links_carry_quic_and_udp_and_browser_links_rtc() {
        let carried =
            |link: Transport| -> Vec<Transport> { Transport::ALL.into_iter().filter(|t| link.carries(*t)).collect() };
        assert_eq!(carried(Transport::Quic), [Transport::Udp, Transport::Kcp, Transport::Quic]);
        assert_eq!(carried(Transport::Rtc), [Transport::Rtc]);
        assert_eq!(carried(Transport::Kcp), [Transport::Kcp]);
    }

    #[test]
    fn quic_service_one_is_0x15() {
        let c = Convention::new(Transport::Quic, 1);
        assert_eq!(c.raw(), 0x15);
        assert_eq!(c.raw() & 0xf, 5);
        assert_eq!(Convention::from_raw(0x15), Ok(c));
        assert_eq!(c.raw_for_plugin_contract_0_1(), 0x11);
    }

    #[test]
    fn every_valid_number_round_trips() {
        for service in 0..=255u8 {
            for transport in Transport::ALL {
                let c = Convention::new(transport, service);
                assert_eq!(Convention::from_raw(c.raw()), Ok(c));
                assert_eq!(c.raw() >> 12, 0);
            }
        }
    }

    #[test]
    fn reserved_bits_are_refused() {
        for bit in 12..32 {
            let raw = 0x15 | (1u32 << bit);
            assert_eq!(Convention::from_raw(raw), Err(ConventionError::ReservedBits(raw)));
        }
        let err = Convention::from_raw(0x1015).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("reserved"), "{err}");
    }

    #[test]
    fn unknown_transports_are_refused() {
        for code in [6u8, 7, 15] {
            assert_eq!(Convention::from_raw(u32::from(code)), Err(ConventionError::UnknownTransport(code)));
        }
        let err = ConventionError::UnknownTransport(9).to_string();
        assert!(err.starts_with("unsupported transport"), "{err}");
    }

    #[test]
    fn service_bits_are_4_to_11() {
        assert_eq!(Convention::from_raw(0xFF5).map(|c| c.service()), Ok(255));
        assert_eq!(Convention::from_raw(0x2A5).map(|c| c.service()), Ok(0x2A));
    }

    #[test]
    fn transports_parse_by_name_or_code() {
        assert_eq!("quic".parse::<Transport>(), Ok(Transport::Quic));
        assert_eq!("5".parse::<Transport>(), Ok(Transport::Quic));
        assert_eq!("RTC".parse::<Transport>(), Ok(Transport::Rtc));
        assert!("tcp".parse::<Transport>().is_err());
    }
}

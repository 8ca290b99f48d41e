//! The convention number: a `u32` fixed when a connection is made and
//! identical on both ends.
//!
//! ```text
//! bits 0..3   transport protocol (1 = QUIC, 2 = KCP, others reserved)
//! bits 4..11  application service number 0..255: selects the plugin
//! bits 12..31 reserved: must be zero
//! ```

use std::fmt;

/// Errors of decoding a convention number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConventionError {
    /// One of the reserved bits 12..31 is set.
    #[error("reserved convention bits set: {0:#010x} (bits 12..31 must be zero)")]
    ReservedBits(u32),
    /// Bits 0..3 name no known transport.
    #[error("unknown transport {0} in convention number (1 = QUIC, 2 = KCP)")]
    UnknownTransport(u8),
}

/// Transport protocol of a connection (bits 0..3 of the convention number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC: reliable, ordered, encrypted; the transport nodes offer today.
    Quic,
    /// KCP: reserved; nodes refuse it until it is implemented.
    Kcp,
}

impl Transport {
    /// The 4-bit code of the transport.
    pub fn code(self) -> u8 {
        match self {
            Transport::Quic => 1,
            Transport::Kcp => 2,
        }
    }

    /// The transport with this 4-bit code.
    ///
    /// # Errors
    /// [`ConventionError::UnknownTransport`] for codes other than 1 and 2.
    pub fn from_code(code: u8) -> Result<Self, ConventionError> {
        match code {
            1 => Ok(Transport::Quic),
            2 => Ok(Transport::Kcp),
            other => Err(ConventionError::UnknownTransport(other)),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Quic => "QUIC",
            Transport::Kcp => "KCP",
        })
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
    fn quic_service_one_is_0x11() {
        let c = Convention::new(Transport::Quic, 1);
        assert_eq!(c.raw(), 0x11);
        assert_eq!(Convention::from_raw(0x11), Ok(c));
    }

    #[test]
    fn every_valid_number_round_trips() {
        for service in 0..=255u8 {
            for transport in [Transport::Quic, Transport::Kcp] {
                let c = Convention::new(transport, service);
                assert_eq!(Convention::from_raw(c.raw()), Ok(c));
                assert_eq!(c.raw() >> 12, 0);
            }
        }
    }

    #[test]
    fn reserved_bits_are_refused() {
        for bit in 12..32 {
            let raw = 0x11 | (1u32 << bit);
            assert_eq!(Convention::from_raw(raw), Err(ConventionError::ReservedBits(raw)));
        }
        let err = Convention::from_raw(0x1011).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("reserved"), "{err}");
    }

    #[test]
    fn unknown_transports_are_refused() {
        for code in [0u8, 3, 7, 15] {
            assert_eq!(Convention::from_raw(u32::from(code)), Err(ConventionError::UnknownTransport(code)));
        }
    }

    #[test]
    fn service_bits_are_4_to_11() {
        assert_eq!(Convention::from_raw(0xFF1).map(|c| c.service()), Ok(255));
        assert_eq!(Convention::from_raw(0x2A1).map(|c| c.service()), Ok(0x2A));
    }
}

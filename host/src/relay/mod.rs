//! Relay through TURN servers (RFC 8656): the sans-IO client and server
//! cores, TURN URLs, and the server's driver (`fogconnect relay`). A
//! node's own allocation and the relayed path live in the node and the
//! socket facade.

pub mod client;
pub mod metrics;
pub mod net;
pub mod server;
pub mod url;

use std::net::SocketAddr;

use fogconnect_proto::stun::StunCodecError;

/// Errors of the relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The server answered a request with an error.
    #[error("TURN server refused: {code} {reason}{}", explain(*code))]
    Refused {
        /// The TURN error code.
        code: u16,
        /// The server's reason phrase.
        reason: String,
    },
    /// No answer from the server after every retransmission.
    #[error("TURN server {0} unreachable: no answer")]
    Unreachable(SocketAddr),
    /// Data or a permission was asked for before the allocation exists or
    /// after it ended.
    #[error("no TURN allocation")]
    NotAllocated,
    /// Data for a peer that was never permitted.
    #[error("no TURN permission for {0}")]
    NoPermission(SocketAddr),
    /// All 4,096 channel numbers are in use.
    #[error("all TURN channels are bound")]
    ChannelsExhausted,
    /// A socket could not be bound or used.
    #[error("{0}")]
    Io(String),
    /// A message could not be encoded.
    #[error(transparent)]
    Codec(StunCodecError),
}

/// What a TURN error code means (RFC 8656 section 19, RFC 8489 section 14.8).
fn explain(code: u16) -> &'static str {
    match code {
        400 => " (bad request)",
        401 => " (unauthorized: wrong user name or password)",
        403 => " (forbidden: the server does not relay to that peer)",
        420 => " (unknown attribute)",
        437 => " (allocation mismatch)",
        438 => " (stale nonce)",
        440 => " (address family not supported)",
        441 => " (wrong credentials for this allocation)",
        442 => " (unsupported transport protocol)",
        443 => " (peer address family mismatch)",
        486 => " (allocation quota reached)",
        500 => " (server error)",
        508 => " (insufficient capacity)",
        _ => "",
    }
}

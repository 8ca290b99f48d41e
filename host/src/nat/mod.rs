//! NAT traversal: STUN (RFC 5389) and NAT behaviour discovery (RFC 5780),
//! the STUN server, the punching strategy per NAT pair and ICE-style
//! connectivity checks.
//!
//! The protocol logic is sans-IO ([`message`], [`transaction`],
//! [`procedure`], [`classify`], [`strategy`], [`checks`], [`consent`]): input and `now` go in, datagrams
//! to send and the next wake-up come out. [`discovery`] and [`server`] are
//! the thin tokio layers; the node drives [`checks`] on its own socket.

/// STUN binding messages (the codec lives in `fogconnect-proto`).
pub mod message {
    pub use fogconnect_proto::stun::*;
}

pub mod checks;
pub mod classify;
pub mod consent;
pub mod discovery;
pub mod procedure;
pub mod server;
pub mod strategy;
pub mod transaction;

pub use checks::{CheckConfig, Outcome, Selected};
pub use classify::NatReport;
pub use strategy::Plan;

/// Errors of NAT traversal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    /// A STUN message could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] message::StunCodecError),
    /// A socket operation failed.
    #[error("{0}")]
    Io(String),
    /// The STUN server's name does not resolve.
    #[error("cannot resolve STUN server {0}")]
    Resolve(String),
    /// The STUN server refused the request.
    #[error("STUN server: {0}")]
    Server(String),
    /// A configuration value is not acceptable.
    #[error("{0}")]
    Config(String),
}

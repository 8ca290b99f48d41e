//! Signaling: the rendezvous through which nodes find each other by id and
//! exchange what they need to connect (certificate fingerprint, candidate
//! addresses). The protocol is described in `PROTOCOL.md` beside this file.

pub mod backoff;
pub mod client;
pub mod metrics;
pub use fogconnect_proto::signal as protocol;
pub mod rate;
pub mod routes;
pub mod server;
pub mod token;
pub mod web;

use std::net::SocketAddr;

/// Errors of the signaling server and client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignalError {
    /// The server address cannot be bound.
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, String),
    /// TLS certificate or key unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The URL is not a `ws://` or `wss://` URL.
    #[error("invalid signaling URL {0:?}: {1}")]
    InvalidUrl(String, String),
    /// Not connected to the signaling server right now.
    #[error("not connected to the signaling server: {0}")]
    Unavailable(String),
    /// The server refused the registration (bad credential, version).
    #[error("registration refused: {0}")]
    Refused(String),
    /// The server answered a request with an error.
    #[error("signaling error {code}: {message}")]
    Server {
        /// Stable error code (see [`protocol::ErrorCode`]).
        code: u16,
        /// Detail.
        message: String,
    },
    /// The peer refused the connection.
    #[error("peer refused: {message}")]
    Rejected {
        /// Refuse code (see [`crate::RefuseCode`]).
        code: u16,
        /// Reason.
        message: String,
    },
    /// The NATS cluster cannot be joined (unreachable, refused, the
    /// directory bucket missing and not makeable).
    #[error("signaling cluster: {0}")]
    Cluster(String),
    /// No answer within the request timeout, or the signaling connection
    /// was lost while waiting.
    #[error("signaling request timed out: {0}")]
    Timeout(String),
}

//! The admin API of a node: list, load, swap and unload plugins on a
//! running node over HTTP. Local by default: it listens on loopback only
//! unless told otherwise, and every request needs the node's admin token
//! (`Authorization: Bearer <token>`). The endpoints and the swap semantics
//! are documented in `host/src/admin/ADMIN.md`.

pub mod client;
pub(crate) mod server;

pub use server::{AdminConfig, AdminServer};

/// Errors of starting the admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The token is empty or too short.
    #[error("the admin token must be at least 16 characters")]
    WeakToken,
    /// A non-loopback address without the explicit permission.
    #[error("the admin API listens on loopback only unless allowed otherwise; {0} is not a loopback address")]
    NotLoopback(std::net::SocketAddr),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        message: String,
    },
}

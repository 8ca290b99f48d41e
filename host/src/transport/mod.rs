//! Everything between the UDP socket and a connection's messages: the socket
//! facade under quinn, node identity and TLS, the connection framing, and
//! the per-connection tasks.

pub mod conn;
pub(crate) mod datagram;
pub mod identity;
pub mod identity_file;
pub(crate) mod kcp_conn;
pub mod liveness;
#[cfg(feature = "browsers")]
pub mod rtc;
pub mod socket;
pub mod trust;
pub use fogconnect_proto::wire;

//! The KCP transport (code 3): reliable, ordered messages with KCP's
//! low-latency retransmission, on the node's one UDP socket, every
//! datagram sealed and checked against replays (KCP has no security of
//! its own).
//!
//! - `envelope`: the sealing, the packet numbers and the replay window.
//! - `session`: one session as a sans-IO state machine around the `kcp`
//!   crate's core, carrying the same frames as a QUIC stream.

pub mod envelope;
pub mod session;

pub use session::{KcpDrops, KcpError};

/// A KCP connection's session and the datagrams it dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KcpStats {
    /// The session's conversation id (the same on both nodes, derived
    /// with its keys from the link's TLS session).
    pub conversation: u32,
    /// Datagrams dropped: forged or corrupted, replayed, malformed.
    pub drops: KcpDrops,
}

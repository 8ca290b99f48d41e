//! fogconnect's wire formats as pure encode/decode functions, with no I/O
//! and no runtime: the framing of a connection on a QUIC stream ([`wire`]),
//! the signaling messages ([`signal`]), the messages of stream service
//! connections ([`stream`]), the STUN messages of NAT
//! traversal ([`stun`]) and TURN's ([`turn`]), and plugin manifests
//! ([`manifest`]). Kept in their own crate so they
//! can be fuzzed and reused without the host.

pub mod manifest;
pub mod signal;
pub mod stream;
pub mod stun;
pub mod turn;
pub mod wire;

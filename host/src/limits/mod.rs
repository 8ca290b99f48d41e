//! Bounds every server applies to what the network may make it hold or
//! send: per-source rates that degrade without forgetting, connections per
//! source address, the process's file descriptors and accepting when they
//! run out.
//!
//! The signaling server, the relay and the STUN server share these, so one
//! rule means the same thing on every server.

pub mod accept;
pub mod descriptors;
pub mod http;
pub mod per_ip;

pub use accept::accept_with_backoff;
pub use descriptors::{DescriptorBudget, raise_descriptor_limit};
pub use per_ip::{ConnectionSlot, PerIpConnections, PerIpRate, RateTable, Refusal};

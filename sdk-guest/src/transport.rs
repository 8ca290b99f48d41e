//! A connection's transport counters (`fogconnect:transport/stats@0.1.0`,
//! documented in `wit/transport-stats`): for a UDP connection the largest
//! message one datagram carries and the datagrams lost to the plugin, for
//! a KCP connection its session's conversation id and drops. Read them with
//! `Connection::transport_stats` in either contract version.

/// Generated bindings of the `fogconnect:transport/transport-stats` world.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "transport-stats",
        path: "../wit/transport-stats",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::fogconnect::transport::stats::{DatagramStats, KcpStats, StatsError, TransportStats};

/// The transport counters of the connection with handle `conn`.
///
/// # Errors
/// [`StatsError::UnknownConnection`] when no open connection of this
/// plugin has that handle.
pub fn stats(conn: u64) -> Result<TransportStats, StatsError> {
    bindings::fogconnect::transport::stats::get(conn)
}

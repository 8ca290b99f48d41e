//! The host side of `fogconnect:transport/stats@0.1.0`: a service plugin's
//! reading of its connections' transport counters (UDP datagrams lost, a
//! KCP session's drops), whichever service world it targets.

use super::state::PluginState;
use super::transport_bindings::fogconnect::transport::stats::{
    DatagramStats, Host, KcpStats, StatsError, TransportStats,
};

impl Host for PluginState {
    fn get(&mut self, conn: u64) -> Result<TransportStats, StatsError> {
        let stats = self.open(conn).map_err(|_| StatsError::UnknownConnection)?.stats();
        Ok(match (stats.kcp, stats.max_datagram) {
            (Some(kcp), _) => TransportStats::Kcp(KcpStats {
                conversation: kcp.conversation,
                forged: kcp.drops.forged,
                replayed: kcp.drops.replayed,
                malformed: kcp.drops.malformed,
            }),
            (None, Some(max)) => TransportStats::Datagrams(DatagramStats {
                max_datagram: u32::try_from(max).unwrap_or(u32::MAX),
                lost: stats.datagrams_lost,
            }),
            (None, None) => TransportStats::QuicStream,
        })
    }
}

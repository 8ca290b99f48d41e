//! Peer routing of the signaling server: who holds which id, delivering a
//! message to an id, presence. One interface, two implementations: a
//! server alone ([`Alone`]: its own sessions are everyone) and a server in
//! a NATS cluster ([`cluster::NatsRoutes`]: ids held by any server).

pub mod cluster;
pub(crate) mod local;
pub mod subject;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::protocol::ServerMessage;
pub(crate) use local::{Inserted, LocalMiss, LocalPeers, LocalSession};

/// How long an id's offline event waits: an id back within it was never
/// reported gone (nor back), so a client that reconnects quickly, or in a
/// loop, does not make every subscriber hear about it.
pub const PRESENCE_GRACE: Duration = Duration::from_secs(2);

/// Why a message could not be delivered to an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undeliverable {
    /// Nobody holds the id.
    #[error("{0} is not online")]
    Offline(String),
    /// The holder's queue is full.
    #[error("{0} cannot take messages now")]
    Busy(String),
    /// The server holding the id cannot be reached now (the cluster is
    /// down or slow): try again.
    #[error("{id} is unreachable: {reason}")]
    Unreachable {
        /// The target.
        id: String,
        /// What failed.
        reason: String,
    },
}

/// The routing a signaling server's sessions go through.
#[async_trait]
pub(crate) trait PeerRoutes: Send + Sync + 'static {
    /// This server's own sessions.
    fn local(&self) -> &LocalPeers;

    /// Makes `session` the holder of `id` (taking it over from an older
    /// session wherever that is) and tells subscribers it is online.
    async fn claim(self: Arc<Self>, id: &str, session: LocalSession);

    /// The session `serial` of `id` ended: forgets it unless a newer one
    /// took over, and reports the id offline after [`PRESENCE_GRACE`]
    /// unless it is back by then.
    fn release(self: Arc<Self>, id: String, serial: u64);

    /// Queues `message` for whoever holds `to`.
    async fn deliver(&self, to: &str, message: ServerMessage) -> Result<(), Undeliverable>;

    /// The ids online.
    async fn peers(&self) -> Result<Vec<String>, Undeliverable>;

    /// Whether the routing reaches every peer right now (alone: always).
    fn healthy(&self) -> bool {
        true
    }
}

/// The routing of a server alone: its own sessions are all there is.
#[derive(Default)]
pub(crate) struct Alone {
    peers: LocalPeers,
}

#[async_trait]
impl PeerRoutes for Alone {
    fn local(&self) -> &LocalPeers {
        &self.peers
    }

    async fn claim(self: Arc<Self>, id: &str, session: LocalSession) {
        if self.peers.insert(id, session) == Inserted::New {
            self.peers.broadcast_presence(id, true);
        }
    }

    fn release(self: Arc<Self>, id: String, serial: u64) {
        if self.peers.remove(&id, serial).is_none() {
            return;
        }
        tokio::spawn(async move {
            tokio::time::sleep(PRESENCE_GRACE).await;
            if self.peers.grace_over(&id, serial) {
                self.peers.broadcast_presence(&id, false);
            }
        });
    }

    async fn deliver(&self, to: &str, message: ServerMessage) -> Result<(), Undeliverable> {
        self.peers.deliver(to, message).map_err(|miss| match miss {
            LocalMiss::Absent => Undeliverable::Offline(to.to_string()),
            LocalMiss::Busy => Undeliverable::Busy(to.to_string()),
        })
    }

    async fn peers(&self) -> Result<Vec<String>, Undeliverable> {
        let mut ids = self.peers.ids();
        ids.sort();
        Ok(ids)
    }
}

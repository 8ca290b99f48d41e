//! Drive a stream server in-process, without threads, timers or network:
//! the serving logic a node runs ([`super::serve`]), with detached
//! connections, the pull tick run at times the caller gives, and the
//! queued stream messages taken out by the caller. For tests and
//! benchmarks of stream plugins
//! ([`crate::runtime::stream_harness::StreamHarness`]) and of native
//! stream services ([`super::native::NativeStreamHarness`]).

use std::time::Instant;

use bytes::Bytes;
use fogconnect_proto::stream::StreamMessage;
use tokio::sync::mpsc;

use super::serve::StreamServer;
use crate::transport::conn::{ConnEvent, ConnectionId, Detached, harness_limits, passive_meta};

/// One stream server driven synchronously.
pub struct ServeHarness<S> {
    pub(crate) server: S,
    service: u8,
    owner: mpsc::Sender<ConnEvent>,
    // Keeps the connections' event channel open: what the connections
    // report goes nowhere in the harness.
    _events: mpsc::Receiver<ConnEvent>,
    next_id: u64,
}

impl<S: StreamServer> ServeHarness<S> {
    /// A harness around `server`, serving `service`, whose connections
    /// report to `owner` (kept open by `events`).
    pub(crate) fn with_server(
        server: S,
        service: u8,
        owner: mpsc::Sender<ConnEvent>,
        events: mpsc::Receiver<ConnEvent>,
    ) -> Self {
        Self { server, service, owner, _events: events, next_id: 1 }
    }

    /// Opens an application connection from `peer_id`. Returns its handle
    /// and its network side, where the messages the node sends at once
    /// (accepts, refusals, replies, commands) come out.
    ///
    /// # Errors
    /// The failure message when a server call fails.
    pub fn open(&mut self, peer_id: &str) -> Result<(ConnectionId, Detached), String> {
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        let meta = passive_meta(id, peer_id, self.service);
        let (shared, detached) = Detached::new(meta, harness_limits(), self.owner.clone());
        self.server.serve_event(ConnEvent::Opened(shared))?;
        Ok((id, detached))
    }

    /// Delivers a message from the application.
    ///
    /// # Errors
    /// The failure message when a server call fails.
    pub fn deliver(&mut self, id: ConnectionId, message: &StreamMessage) -> Result<(), String> {
        self.server.serve_event(ConnEvent::Message(id, message.encode()))
    }

    /// When the next pull tick or command timeout is due.
    pub fn next_wake(&mut self) -> Option<Instant> {
        self.server.next_wake()
    }

    /// Runs the timers due at `now`: command timeouts, and the pull tick
    /// (watermark checks, pulls, queueing).
    ///
    /// # Errors
    /// The failure message when a server call fails.
    pub fn tick(&mut self, now: Instant) -> Result<(), String> {
        self.server.on_timers(now)
    }

    /// Takes every queued stream message of connection `id` out of its send
    /// queues (what the node's pump hands to the connection), in order.
    pub fn take_queued(&mut self, id: ConnectionId) -> Vec<Bytes> {
        let Some(conn) = self.server.core().and_then(|core| core.conns.get(&id.0)) else { return Vec::new() };
        let mut mux = conn.queues.lock();
        std::iter::from_fn(|| mux.pop().map(|out| out.message)).collect()
    }
}

//! Drive a stream plugin in-process, without threads, timers or network:
//! the same actor code a node runs, with detached connections, the pull
//! tick run at times the caller gives, and the queued stream messages taken
//! out by the caller. For plugin authors' tests and for benchmarks. Drive
//! it from a plain thread (a `#[test]`), not from inside an async runtime:
//! a plugin writing to standard error makes a blocking WASI call, which
//! starts a runtime of its own.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fogconnect_proto::stream::StreamMessage;
use tokio::sync::mpsc;

use super::PluginError;
use super::actor::PluginStatus;
use super::engine::{PluginEngine, PreparedWorld};
use super::harness::{HarnessParts, harness_limits, passive_meta};
use super::state::PluginLimits;
use super::stream_actor::StreamActor;
use crate::stream::serve::StreamServer;
use crate::transport::conn::{ConnEvent, ConnectionId, Detached};

/// One stream plugin instance driven synchronously.
pub struct StreamHarness {
    actor: StreamActor,
    service: u8,
    owner: mpsc::Sender<ConnEvent>,
    _events: mpsc::Receiver<ConnEvent>,
    next_id: u64,
}

impl StreamHarness {
    /// Compiles and instantiates the stream plugin `wasm` for `service`.
    ///
    /// # Errors
    /// [`PluginError`] when the plugin does not compile, is not a stream
    /// plugin, or does not instantiate.
    pub fn new(engine: &PluginEngine, wasm: &[u8], service: u8, limits: PluginLimits) -> Result<Self, PluginError> {
        let prepared = engine.prepare(wasm)?;
        let PreparedWorld::Stream(component) = prepared.world.clone() else {
            return Err(PluginError::Link("the stream harness drives stream plugins; this is a service plugin".into()));
        };
        let HarnessParts { spec, owner, events, unused_rx } = HarnessParts::new(prepared, service, limits);
        let mut actor = StreamActor::new(spec, component, unused_rx, Arc::new(PluginStatus::new()), None);
        actor.instantiate_now().map_err(PluginError::Instantiate)?;
        Ok(Self { actor, service, owner, _events: events, next_id: 1 })
    }

    /// At most `streams` streams per `send-get` call (the node's default
    /// is [`super::stream_actor::PULL_BATCH`]; 1 pulls each stream with a
    /// call of its own).
    pub fn set_pull_batch(&mut self, streams: usize) {
        self.actor.pull_batch = streams.max(1);
    }

    /// Opens an application connection from `peer_id`. Returns its handle
    /// and its network side, where the messages the node sends at once
    /// (accepts, refusals, replies, commands) come out.
    ///
    /// # Errors
    /// The failure message when a plugin call fails.
    pub fn open(&mut self, peer_id: &str) -> Result<(ConnectionId, Detached), String> {
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        let meta = passive_meta(id, peer_id, self.service);
        let (shared, detached) = Detached::new(meta, harness_limits(), self.owner.clone());
        self.actor.handle(ConnEvent::Opened(shared))?;
        Ok((id, detached))
    }

    /// Delivers a message from the application.
    ///
    /// # Errors
    /// The failure message when a plugin call fails.
    pub fn deliver(&mut self, id: ConnectionId, message: &StreamMessage) -> Result<(), String> {
        self.actor.handle(ConnEvent::Message(id, message.encode()))
    }

    /// When the next pull tick or command timeout is due.
    pub fn next_wake(&mut self) -> Option<Instant> {
        self.actor.next_wake()
    }

    /// Runs the timers due at `now`: command timeouts, and the pull tick
    /// (watermark checks, `send-get`, queueing).
    ///
    /// # Errors
    /// The failure message when a plugin call fails.
    pub fn tick(&mut self, now: Instant) -> Result<(), String> {
        self.actor.on_timers(now)
    }

    /// Takes every queued stream message of connection `id` out of its send
    /// queues (what the node's pump hands to the connection), in order.
    pub fn take_queued(&mut self, id: ConnectionId) -> Vec<Bytes> {
        let Some(conn) = self.actor.core().and_then(|core| core.conns.get(&id.0)) else { return Vec::new() };
        let mut mux = conn.queues.lock();
        std::iter::from_fn(|| mux.pop().map(|out| out.message)).collect()
    }
}

//! Drive a plugin in-process, without threads or network: the same dispatch
//! code a node runs, with detached connections whose outgoing messages can
//! be taken out. For plugin authors' tests and for benchmarks. Drive it
//! from a plain thread (a `#[test]`), not from inside an async runtime: a
//! plugin writing to standard error makes a blocking WASI call, which starts
//! a runtime of its own.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::PluginError;
use super::actor::{Actor, ActorSpec, PluginStatus};
use super::engine::{PluginEngine, PreparedPlugin, PreparedWorld};
use super::state::{HostServices, PluginContext, PluginLimits};
use super::subscriptions::{NodeEventFilter, NodeEventKinds, WatchFault};
use super::supervisor::CrashPolicy;
use crate::convention::Convention;
pub use crate::transport::conn::harness_limits;
use crate::transport::conn::{
    CloseReason, ConnEvent, ConnLimits, ConnectionId, Detached, EVENT_CHANNEL_CAPACITY, Owner, passive_meta,
};

/// Host services without a network: `connect-peer` is refused.
pub(super) struct NoNetwork {
    next: std::sync::atomic::AtomicU64,
}

impl Default for NoNetwork {
    fn default() -> Self {
        Self { next: std::sync::atomic::AtomicU64::new(1 << 32) }
    }
}

impl HostServices for NoNetwork {
    fn next_connection_id(&self) -> ConnectionId {
        ConnectionId(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    fn connect(&self, _peer: &str, _convention: Convention, _id: ConnectionId, _owner: Owner) -> Result<(), String> {
        Err("the plugin harness has no network".into())
    }

    fn forward_node_events(&self, _kinds: NodeEventKinds, _filter: Arc<NodeEventFilter>, _owner: Owner) {
        // The harness has no node: its node events are given by the caller.
    }

    fn watch_presence(&self, _peer: &str, _owner: Owner) -> Result<(), WatchFault> {
        Err(WatchFault::NoSignaling)
    }
}

/// What a harness's actor is made of: its spec without a network, the
/// plugin's own event channel (kept open; events the plugin causes for
/// itself are not used by the harnesses), and an actor channel nobody
/// sends on (the harness calls the actor directly).
pub(super) struct HarnessParts {
    pub(super) spec: ActorSpec,
    pub(super) owner: Owner,
    pub(super) events: mpsc::Receiver<ConnEvent>,
    pub(super) unused_rx: mpsc::Receiver<ConnEvent>,
}

impl HarnessParts {
    pub(super) fn new(prepared: PreparedPlugin, service: u8, limits: PluginLimits) -> Self {
        let (owner, events) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let ctx = Arc::new(PluginContext {
            service,
            limits,
            host: Arc::new(NoNetwork::default()),
            owner: owner.clone(),
            epoch: Instant::now(),
            counters: Default::default(),
            node_events: Default::default(),
        });
        let (events_tx, _) = broadcast::channel(16);
        let spec = ActorSpec { ctx, prepared, crash_policy: CrashPolicy::default(), events: events_tx };
        let (_unused_tx, unused_rx) = mpsc::channel(1);
        Self { spec, owner, events, unused_rx }
    }
}

/// One plugin instance driven synchronously.
pub struct PluginHarness {
    actor: Actor,
    service: u8,
    owner: Owner,
    // Keeps the plugin's own event channel open (events the plugin causes
    // for itself, e.g. connect outcomes, are not used by the harness).
    _events: mpsc::Receiver<ConnEvent>,
    next_id: u64,
}

impl PluginHarness {
    /// Compiles and instantiates `wasm` for `service`.
    ///
    /// # Errors
    /// [`PluginError`] when the plugin does not compile, link or instantiate.
    pub fn new(engine: &PluginEngine, wasm: &[u8], service: u8, limits: PluginLimits) -> Result<Self, PluginError> {
        let prepared = engine.prepare(wasm)?;
        let PreparedWorld::Service(component) = prepared.world.clone() else {
            return Err(PluginError::Link("the harness drives service plugins; this is a stream plugin".into()));
        };
        let HarnessParts { spec, owner, events, unused_rx } = HarnessParts::new(prepared, service, limits);
        let mut actor = Actor::new(spec, component, unused_rx, Arc::new(PluginStatus::new()));
        actor.instance = Some(actor.instantiate().map_err(PluginError::Instantiate)?);
        Ok(Self { actor, service, owner, _events: events, next_id: 1 })
    }

    /// Opens a passive connection from `peer_id`; the plugin's `on-connect`
    /// runs. Returns the handle and the network side of the connection.
    ///
    /// # Errors
    /// The failure message when the plugin call fails.
    pub fn open(&mut self, peer_id: &str, limits: ConnLimits) -> Result<(ConnectionId, Detached), String> {
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        let (shared, detached) = Detached::new(passive_meta(id, peer_id, self.service), limits, self.owner.clone());
        self.actor.handle(ConnEvent::Opened(shared))?;
        Ok((id, detached))
    }

    /// Delivers one message; the plugin's `on-recv` runs.
    ///
    /// # Errors
    /// The failure message when the plugin call fails.
    pub fn recv(&mut self, id: ConnectionId, data: Bytes) -> Result<(), String> {
        self.actor.handle(ConnEvent::Message(id, data))
    }

    /// Ends a connection from the remote side; the plugin's `on-close` runs.
    ///
    /// # Errors
    /// The failure message when the plugin call fails.
    pub fn close(&mut self, id: ConnectionId, reason: CloseReason) -> Result<(), String> {
        self.actor.handle(ConnEvent::Closed(id, reason))
    }
}

//! Drive a stream plugin in-process, without threads, timers or network:
//! the same actor code a node runs, with detached connections, the pull
//! tick run at times the caller gives, and the queued stream messages taken
//! out by the caller (see [`ServeHarness`]). For plugin authors' tests and
//! for benchmarks. Drive it from a plain thread (a `#[test]`), not from
//! inside an async runtime: a plugin writing to standard error makes a
//! blocking WASI call, which starts a runtime of its own.

use std::sync::Arc;

use super::PluginError;
use super::actor::PluginStatus;
use super::engine::{PluginEngine, PreparedWorld};
use super::harness::HarnessParts;
use super::state::PluginLimits;
use super::stream_actor::StreamActor;
pub use crate::stream::harness::ServeHarness;

/// One stream plugin instance driven synchronously.
pub type StreamHarness = ServeHarness<StreamActor>;

impl ServeHarness<StreamActor> {
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
        Ok(Self::with_server(actor, service, owner, events))
    }

    /// At most `streams` streams per `send-get` call (the node's default
    /// is [`crate::stream::serve::PULL_BATCH`]; 1 pulls each stream with a
    /// call of its own).
    pub fn set_pull_batch(&mut self, streams: usize) {
        self.server.pull_batch = streams.max(1);
    }
}

//! The actor of a stream plugin: one OS thread per loaded plugin (like the
//! service actor) running a small single-threaded tokio runtime, so it can
//! wait for connection events and its timers at once: the 10 ms pull tick
//! and the command timeouts. Per tick it checks every send stream's buffer
//! against its watermarks (events once per crossing), pulls every stream
//! that is not paused with one `send-get` call, and queues the chunks for
//! the connection's pump task. Every handle a plugin instance returned from
//! `send-init` gets exactly one `send-stop` from that instance, whichever
//! way the stream ends (application stop, plugin end, connection loss,
//! node shutdown, live swap); a crashed instance takes its streams with it.
//!
//! A live swap keeps the connections. When both generations export
//! `fogconnect:handoff/state` and the new one restores the old one's
//! snapshot, everything moves to the new generation as it is: streams
//! (same handles, same watermarks, nothing ended), talk-back streams and
//! the commands waiting for a reply. Otherwise the streams end: the
//! generation serving stops each (`send-stop`, talk-back end; not after a
//! trap in `snapshot`), the application sees each stream end with "service
//! plugin swapped" after the data already queued, and opens new ones,
//! served by the new generation, on the same connection; commands the old
//! generation was waiting on are dropped with it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fogconnect_proto::stream::StreamMessage;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use wasmtime::Store;

use super::PluginError;
use super::actor::{
    ActorSpec, ActorStop, PluginRunState, PluginStatus, StateHandoff, decide_after_crash, report_restart,
};
use super::engine::{PreparedWorld, StreamComponent};
use super::generation::{
    PluginInstance, PreviousGeneration, first_instance, hand_state_over, refuse_while_down, report_rollback,
    serve_swap, take_over,
};
use super::state::{PluginContext, PluginLimits};
use super::stream_bindings::fogconnect::streaming::types;
use super::stream_state::{StreamCore, StreamState, wit_command_error};
use super::stream_world::StreamBindings;
use super::supervisor::Supervisor;
use crate::metrics::ServiceCounters;
use crate::stream::core::{CommandFailure, Pull, StreamKind};
use crate::stream::pump::{MuxShared, pump};
pub use crate::stream::serve::PULL_BATCH;
use crate::stream::serve::{ServeNotice, StreamServer};
use crate::stream::watermark::WatermarkEvent;
use crate::transport::conn::{ConnEvent, ConnShared};

/// An instance of a stream plugin.
type StreamInstance = PluginInstance<StreamState, StreamBindings>;

/// What the application is told when a swap ends its stream.
const SWAP_END_REASON: &str = "service plugin swapped";

/// Instantiates a stream plugin in a fresh store with the limits of `ctx`.
fn instantiate(component: &StreamComponent, ctx: &Arc<PluginContext>) -> Result<StreamInstance, String> {
    StreamInstance::new(component, ctx, |indices, store, instance| indices.load(store, instance))
}

/// The actor of one stream plugin (opaque: driven by the node, or by a
/// [`super::stream_harness::StreamHarness`]).
pub struct StreamActor {
    /// The generation serving: its context (limits) is `spec.ctx`.
    spec: ActorSpec,
    component: StreamComponent,
    previous: Option<PreviousGeneration<StreamComponent>>,
    rx: mpsc::Receiver<ConnEvent>,
    status: Arc<PluginStatus>,
    supervisor: Supervisor,
    instance: Option<StreamInstance>,
    /// The node's runtime, where the pump tasks run; `None` in the
    /// harness, which takes the queued messages out itself.
    runtime: Option<tokio::runtime::Handle>,
    /// Most streams per `send-get` call.
    pub(super) pull_batch: usize,
}

fn wit_event(event: WatermarkEvent) -> types::WatermarkEvent {
    match event {
        WatermarkEvent::Warn => types::WatermarkEvent::Warn,
        WatermarkEvent::High => types::WatermarkEvent::High,
        WatermarkEvent::Low => types::WatermarkEvent::Low,
    }
}

impl StreamActor {
    pub(super) fn new(
        spec: ActorSpec,
        component: StreamComponent,
        rx: mpsc::Receiver<ConnEvent>,
        status: Arc<PluginStatus>,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Self {
        let supervisor = Supervisor::new(spec.crash_policy);
        Self {
            spec,
            component,
            previous: None,
            rx,
            status,
            supervisor,
            instance: None,
            runtime,
            pull_batch: PULL_BATCH,
        }
    }

    pub(super) fn instantiate_now(&mut self) -> Result<(), String> {
        self.instance = Some(self.instantiate()?);
        Ok(())
    }

    fn instantiate(&self) -> Result<StreamInstance, String> {
        instantiate(&self.component, &self.spec.ctx)
    }

    /// Replaces the plugin with a new generation: instantiated first (a
    /// failure leaves the old one serving), given the old one's state when
    /// both export the handoff interface (a `restore` error rejects the
    /// swap); then the streams move over with the state, or end without
    /// it (see the module documentation), the connections move to the new
    /// generation, and the old instance is dropped. Returns the new
    /// generation's number and what became of the state.
    fn swap(
        &mut self,
        prepared: super::engine::PreparedPlugin,
        limits: PluginLimits,
    ) -> Result<(u64, StateHandoff), PluginError> {
        let PreparedWorld::Stream(component) = prepared.world.clone() else {
            return Err(PluginError::Link("a stream plugin can only be swapped for another stream plugin".into()));
        };
        let ctx = Arc::new(self.spec.ctx.with_limits(limits));
        let mut fresh = instantiate(&component, &ctx).map_err(PluginError::Instantiate)?;
        let state = hand_state_over(&self.spec, &self.status, self.instance.as_mut(), &mut fresh)?;
        if !matches!(state, StateHandoff::Handed { .. }) {
            // The streams end; the plugin hears of it unless it trapped.
            self.end_streams_for_swap(!matches!(state, StateHandoff::Lost { .. }));
        }
        if let Some(mut old) = self.instance.take() {
            // Connections (with their pumps) carry on under the new
            // generation, and with a handoff everything else too.
            let old_core = &mut old.store.data_mut().core;
            let fresh_core = &mut fresh.store.data_mut().core;
            if matches!(state, StateHandoff::Handed { .. }) {
                std::mem::swap(old_core, fresh_core);
            } else {
                fresh_core.conns = std::mem::take(&mut old_core.conns);
            }
        }
        self.instance = Some(fresh);
        let incoming = (component, prepared, ctx);
        let (spec, status, supervisor) = (&mut self.spec, &self.status, &mut self.supervisor);
        let generation = take_over(spec, status, supervisor, &mut self.component, &mut self.previous, incoming);
        tracing::info!(service = self.service(), generation, %state, "stream plugin swapped");
        Ok((generation, state))
    }

    /// Ends every stream of the generation serving, in handle order: the
    /// application is told (after the data already queued), the plugin
    /// gets `send-stop` or its talk-back end (with `call_plugin`). A plugin
    /// failing meanwhile is not called again; its remaining streams end all
    /// the same.
    fn end_streams_for_swap(&mut self, call_plugin: bool) {
        let mut handles: Vec<u64> = self.core().map(|core| core.streams.keys().copied().collect()).unwrap_or_default();
        handles.sort_unstable();
        let mut plugin_ok = call_plugin;
        for handle in handles {
            let result = match self.detach_for_swap(handle) {
                Some(true) if plugin_ok => self.call(|b, s| b.send_stop(s, handle)),
                Some(false) if plugin_ok => self.call(|b, s| b.recv_data(s, handle, &[])),
                _ => Ok(()),
            };
            if let Err(message) = result {
                tracing::warn!(
                    service = self.service(),
                    "stream plugin failed while its streams ended for a swap: {message}"
                );
                plugin_ok = false;
            }
        }
    }

    /// Takes a stream out of the tables for a swap and tells the
    /// application it ended. `Some(true)` for a send stream, `Some(false)`
    /// for a talk-back stream.
    fn detach_for_swap(&mut self, handle: u64) -> Option<bool> {
        let core = self.core()?;
        let entry = core.streams.remove(&handle)?;
        let send = matches!(entry.kind, StreamKind::Send { .. });
        if send {
            core.schedule.remove(handle);
        }
        let c = core.conns.get_mut(&entry.conn)?;
        c.streams.remove(&entry.wire);
        if send {
            c.queues.lock().finish(entry.wire, SWAP_END_REASON);
            c.queues.queued.notify_one();
        } else {
            c.send_now(&StreamMessage::End { stream: entry.wire, reason: SWAP_END_REASON.into() });
        }
        Some(send)
    }

    pub(super) fn run(self, ready: oneshot::Sender<Result<(), PluginError>>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = ready.send(Err(PluginError::Actor(format!("cannot start the stream actor's timers: {e}"))));
                return;
            }
        };
        self.run_loop(&runtime, ready);
    }

    /// The actor's loop. Only the waiting for the next event or timer runs
    /// inside the small runtime; plugin calls are made outside it, because
    /// WASI's blocking host calls (a plugin writing to standard error, e.g.
    /// a panic message) enter a runtime of their own, which tokio forbids
    /// inside another runtime's `block_on`.
    fn run_loop(mut self, runtime: &tokio::runtime::Runtime, ready: oneshot::Sender<Result<(), PluginError>>) {
        self.instance = first_instance(self.instantiate(), &mut self.supervisor, ready);
        if self.instance.is_none() {
            return;
        }
        let mut restart_at: Option<Instant> = None;
        loop {
            if self.instance.is_none()
                && let Some(at) = restart_at
                && Instant::now() >= at
            {
                match self.instantiate() {
                    Ok(instance) => {
                        self.instance = Some(instance);
                        report_restart(&self.spec, &self.status, &mut self.supervisor);
                        restart_at = None;
                    }
                    Err(message) => {
                        restart_at = self.crashed(message);
                        continue;
                    }
                }
            }
            let wake = match (&self.instance, restart_at) {
                (Some(_), _) => self.next_wake(),
                (None, at) => at,
            };
            let rx = &mut self.rx;
            let event = runtime.block_on(async move {
                match wake {
                    Some(at) => tokio::select! {
                        event = rx.recv() => Some(event),
                        _ = tokio::time::sleep_until(at.into()) => None,
                    },
                    None => Some(rx.recv().await),
                }
            });
            match event {
                Some(None) => break,
                Some(Some(ConnEvent::Shutdown)) => {
                    self.shutdown(ActorStop::NodeShutdown);
                    break;
                }
                Some(Some(ConnEvent::Unload)) => {
                    self.shutdown(ActorStop::Unloaded);
                    break;
                }
                Some(Some(ConnEvent::Swap(request))) => {
                    let counters = self.spec.ctx.counters.clone();
                    if serve_swap(*request, &counters, |prepared, limits| self.swap(prepared, limits)) {
                        restart_at = None;
                    }
                }
                Some(Some(event)) => {
                    if let Err(message) = self.handle(event) {
                        restart_at = self.crashed(message);
                    }
                }
                None => {}
            }
            if self.instance.is_some()
                && let Err(message) = self.on_timers(Instant::now())
            {
                restart_at = self.crashed(message);
            }
            if let Some(instance) = self.instance.as_mut() {
                instance.settle_tally(self.rx.is_empty());
            }
            let conns = self.instance.as_ref().map_or(0, |i| i.store.data().core.conns.len());
            self.status.connections.store(conns as u64, Ordering::Relaxed);
        }
        self.status.set_state(PluginRunState::Stopped);
        self.status.connections.store(0, Ordering::Relaxed);
    }

    /// Calls the plugin under its deadline.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&StreamBindings, &mut Store<StreamState>) -> wasmtime::Result<R>,
    ) -> Result<R, String> {
        let Some(instance) = self.instance.as_mut() else {
            return Err("the plugin instance is gone".into());
        };
        instance.call(f)
    }

    /// Handles one connection event. `Err` carries the failure of a plugin
    /// call.
    pub(super) fn handle(&mut self, event: ConnEvent) -> Result<(), String> {
        if self.instance.is_none() {
            refuse_while_down(&self.status, event);
            return Ok(());
        }
        if let ConnEvent::Swap(request) = event {
            let _ = request.done.send(Err(PluginError::Actor("swap reached the event handler".into())));
            return Ok(());
        }
        self.serve_event(event)
    }

    /// Handles a failed call or instantiation: drops the store (its streams
    /// go with it), fails the plugin's connections, and decides when to
    /// restart.
    fn crashed(&mut self, message: String) -> Option<Instant> {
        let service = self.service();
        let crashes = self.status.crashes.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(service, crashes, "stream plugin failed: {message}");
        // Not serving from here on, before anyone sees a connection fail:
        // whoever saw the failure and then finds the service running sees
        // the restarted (or rolled back) plugin, never the gap.
        self.status.set_state(PluginRunState::Restarting);
        if let Some(mut instance) = self.instance.take() {
            for (_, c) in instance.store.data_mut().core.conns.drain() {
                c.stop.cancel();
                c.shared.fail(format!("plugin of service {service} failed: {message}"));
            }
        }
        if self.previous.is_some()
            && self.supervisor.next_crash_disables(Instant::now())
            && let Some(previous) = self.previous.take()
        {
            match instantiate(&previous.component, &previous.ctx) {
                Ok(instance) => {
                    self.instance = Some(instance);
                    self.component = previous.component;
                    self.spec.ctx = previous.ctx;
                    self.spec.prepared = previous.prepared;
                    report_rollback(
                        &self.spec,
                        &self.status,
                        &mut self.supervisor,
                        previous.identity,
                        &message,
                        crashes,
                    );
                    return None;
                }
                Err(e) => tracing::error!(service, "cannot roll back to the previous generation: {e}"),
            }
        }
        decide_after_crash(&self.spec, &self.status, &mut self.supervisor, message, crashes)
    }

    /// Node shutdown or unload: every stream is stopped (`send-stop`,
    /// talk-back end), waiting commands get `closed`, connections are
    /// closed locally.
    fn shutdown(&mut self, cause: ActorStop) {
        self.end_all(cause.remote_message());
    }
}

impl StreamServer for StreamActor {
    fn core(&mut self) -> Option<&mut StreamCore> {
        self.instance.as_mut().map(|i| &mut i.store.data_mut().core)
    }

    fn service(&self) -> u8 {
        self.spec.ctx.service
    }

    fn counters(&self) -> Option<&Arc<ServiceCounters>> {
        Some(&self.spec.ctx.counters)
    }

    fn spawn_pump(&self, shared: Arc<ConnShared>, queues: Arc<MuxShared>, stop: CancellationToken) {
        if let Some(runtime) = &self.runtime {
            runtime.spawn(pump(shared, queues, stop));
        }
    }

    fn pull_batch(&self) -> usize {
        self.pull_batch
    }

    fn send_init(&mut self, conn: u64, params: &str) -> Result<Result<u64, String>, String> {
        self.call(|b, s| b.send_init(s, conn, params))
    }

    fn send_get(&mut self, handles: &[u64], pulls: &mut Vec<Pull>) -> Result<(), String> {
        let pulled = self.call(|b, s| b.send_get(s, handles))?;
        pulls.extend(pulled.into_iter().map(|pull| match pull {
            types::Pull::Data(data) => Pull::Data(data.into()),
            types::Pull::End => Pull::End,
        }));
        Ok(())
    }

    fn send_stop(&mut self, handle: u64) -> Result<(), String> {
        self.call(|b, s| b.send_stop(s, handle))
    }

    fn on_watermark(&mut self, handle: u64, event: WatermarkEvent) -> Result<(), String> {
        let event = wit_event(event);
        self.call(|b, s| b.on_event(s, handle, event))
    }

    fn recv_init(&mut self, conn: u64, params: &str) -> Result<Result<u64, String>, String> {
        self.call(|b, s| b.recv_init(s, conn, params))
    }

    fn recv_data(&mut self, handle: u64, data: &[u8]) -> Result<(), String> {
        self.call(|b, s| b.recv_data(s, handle, data))
    }

    fn on_command(&mut self, conn: u64, message: &[u8]) -> Result<Result<Vec<u8>, String>, String> {
        self.call(|b, s| b.on_command(s, conn, message))
    }

    fn on_command_reply(&mut self, id: u64, reply: Result<&[u8], &CommandFailure>) -> Result<(), String> {
        let error;
        let reply = match reply {
            Ok(data) => Ok(data),
            Err(failure) => {
                error = wit_command_error(failure);
                Err(&error)
            }
        };
        self.call(|b, s| b.on_command_reply(s, id, reply))
    }

    fn on_notice(&mut self, notice: ServeNotice<'_>) -> Result<(), String> {
        let takes = self.instance.as_ref().is_some_and(|i| i.bindings.takes_events());
        match notice {
            ServeNotice::Network(conn, event) if takes => self.call(|b, s| b.on_network_event(s, conn, event)),
            ServeNotice::Node(event)
                if takes && self.instance.as_ref().is_some_and(|i| i.store.data().subscriptions.wants(event)) =>
            {
                self.call(|b, s| b.on_node_event(s, event))
            }
            _ => Ok(()),
        }
    }
}

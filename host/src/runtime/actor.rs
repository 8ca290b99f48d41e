//! The actor that owns a plugin's `Store`: one OS thread per loaded plugin,
//! so a slow or spinning plugin never blocks the network tasks or other
//! plugins. It takes connection events from a bounded channel, calls the
//! plugin's callbacks one at a time under a deadline, and supervises crashes:
//! a failing call drops the `Store` (its failure domain), ends every
//! connection of the plugin with an error, and re-instantiates it after a
//! backoff until the crash budget is spent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, oneshot};
use wasmtime::{Store, Trap};

use super::PluginError;
use super::engine::{EPOCH_TICK, PreparedPlugin, PreparedWorld, ServiceComponent};
use super::generation::{
    PluginInstance, PreviousGeneration, StoreData, first_instance, hand_state_over, refuse_while_down, report_rollback,
    serve_swap, take_over,
};
use super::service_world::ServiceBindings;
use super::state::{ConnEntry, PluginContext, PluginLimits, PluginState};
use super::stream_actor::StreamActor;
use super::supervisor::{CrashDecision, CrashPolicy, Supervisor};
use crate::transport::conn::{CloseKind, CloseReason, ConnEvent, ConnectionId};

/// Lifecycle state of a loaded plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PluginRunState {
    /// Instantiated and serving.
    Running = 0,
    /// Crashed; waiting for its backoff before re-instantiation.
    Restarting = 1,
    /// Crash budget spent: refuses new connections.
    Disabled = 2,
    /// The node shut it down.
    Stopped = 3,
}

/// Events about plugins, broadcast to node subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginEvent {
    /// A call failed; the plugin's connections were closed with an error.
    Crashed {
        /// Service number.
        service: u8,
        /// What failed.
        message: String,
        /// Crashes since the plugin was loaded.
        crashes: u64,
    },
    /// The plugin was re-instantiated after a crash.
    Restarted {
        /// Service number.
        service: u8,
    },
    /// The crash budget of a swapped-in generation is spent: the previous
    /// generation serves again.
    RolledBack {
        /// Service number.
        service: u8,
        /// The last failure of the generation given up.
        message: String,
    },
    /// The crash budget is spent; the plugin stays down.
    Disabled {
        /// Service number.
        service: u8,
        /// The last failure.
        message: String,
    },
}

/// Which build serves a service, and with which limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginIdentity {
    /// The plugin's name.
    pub name: String,
    /// Hex SHA-256 of its wasm.
    pub hash: String,
    /// Its version, when its manifest gives one.
    pub version: Option<String>,
    /// Its limits.
    pub limits: PluginLimits,
}

/// Live counters of a plugin, readable from any thread.
#[derive(Debug)]
pub struct PluginStatus {
    state: AtomicU8,
    /// Failed callbacks and instantiations.
    pub crashes: AtomicU64,
    /// Successful re-instantiations.
    pub restarts: AtomicU64,
    /// Connections currently open.
    pub connections: AtomicU64,
    /// The plugin generation serving: 1 when loaded, one more per swap or
    /// rollback.
    pub generation: AtomicU64,
    /// Name, wasm hash and limits of the plugin serving.
    identity: std::sync::Mutex<PluginIdentity>,
    pub(super) shutdown: AtomicBool,
}

impl PluginStatus {
    pub(super) fn new() -> Self {
        Self {
            state: AtomicU8::new(PluginRunState::Running as u8),
            crashes: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            generation: AtomicU64::new(1),
            identity: std::sync::Mutex::new(PluginIdentity::default()),
            shutdown: AtomicBool::new(false),
        }
    }

    /// The current lifecycle state.
    pub fn state(&self) -> PluginRunState {
        match self.state.load(Ordering::Acquire) {
            0 => PluginRunState::Running,
            1 => PluginRunState::Restarting,
            2 => PluginRunState::Disabled,
            _ => PluginRunState::Stopped,
        }
    }

    /// Name, wasm hash and limits of the plugin serving.
    pub fn identity(&self) -> PluginIdentity {
        self.identity.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the name, hash and limits of the plugin serving.
    pub fn set_identity(&self, identity: PluginIdentity) {
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = identity;
    }

    pub(super) fn set_state(&self, state: PluginRunState) {
        self.state.store(state as u8, Ordering::Release);
    }
}

/// A request to replace a running plugin with a new generation.
#[derive(Debug)]
pub struct SwapRequest {
    /// The new plugin, compiled and pre-linked.
    pub prepared: PreparedPlugin,
    /// The new generation's limits (memory cap, call deadline, whether it
    /// may connect).
    pub limits: PluginLimits,
    /// Where the outcome goes: the new generation and the pause, or why
    /// the old generation keeps serving.
    pub done: oneshot::Sender<Result<SwapOutcome, PluginError>>,
}

/// What a swap did, as the actor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapOutcome {
    /// The new generation's number.
    pub generation: u64,
    /// How long the service's events waited: from taking the swap request
    /// to the new generation serving (instantiation, state handoff and the
    /// `on-connect` announcements; compilation happened before).
    pub pause: std::time::Duration,
    /// What became of the state of the generation that served.
    pub state: StateHandoff,
}

/// What became of a service plugin's state in a live swap (see
/// `wit/handoff`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateHandoff {
    /// Both generations export `fogconnect:handoff/state`: the snapshot of
    /// the generation that served, this many bytes, was restored into the
    /// new one.
    Handed {
        /// Size of the snapshot.
        bytes: usize,
    },
    /// No handoff: the generation serving has no `snapshot`, the new one no
    /// `restore`, or none was serving (restarting or disabled after
    /// crashes). The new generation starts from its initial state.
    Fresh,
    /// The generation serving trapped in `snapshot` (counted as its crash):
    /// the new generation starts from its initial state, the connections
    /// were handed over all the same.
    Lost {
        /// Why the snapshot failed.
        reason: String,
    },
}

impl std::fmt::Display for StateHandoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateHandoff::Handed { bytes } => write!(f, "state handed over ({bytes} bytes)"),
            StateHandoff::Fresh => f.write_str("no state handoff"),
            StateHandoff::Lost { reason } => write!(f, "state lost: {reason}"),
        }
    }
}

impl std::fmt::Debug for PreparedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedPlugin").field("hash", &self.hash).finish_non_exhaustive()
    }
}

/// Everything an actor needs to run a plugin.
pub struct ActorSpec {
    /// The plugin's place in the node (service, limits, host services).
    pub ctx: Arc<PluginContext>,
    /// The compiled, pre-linked plugin.
    pub prepared: PreparedPlugin,
    /// Crash handling.
    pub crash_policy: CrashPolicy,
    /// Where plugin events are broadcast.
    pub events: broadcast::Sender<PluginEvent>,
}

/// Handle of a running plugin actor.
#[derive(Debug)]
pub struct ActorHandle {
    /// The plugin's event channel.
    pub tx: mpsc::Sender<ConnEvent>,
    /// Live counters.
    pub status: Arc<PluginStatus>,
    thread: std::thread::Thread,
    join: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ActorHandle {
    /// Starts the actor thread and waits until the first instantiation
    /// succeeded.
    ///
    /// # Errors
    /// [`PluginError::Instantiate`] when the first instantiation fails,
    /// [`PluginError::Actor`] when the thread cannot start.
    pub async fn start(spec: ActorSpec, rx: mpsc::Receiver<ConnEvent>) -> Result<Self, PluginError> {
        let tx = spec.ctx.owner.clone();
        let status = Arc::new(PluginStatus::new());
        let (ready_tx, ready_rx) = oneshot::channel();
        let actor_status = status.clone();
        let service = spec.ctx.service;
        let runtime = tokio::runtime::Handle::current();
        let join = std::thread::Builder::new()
            .name(format!("fogconnect-plugin-{service}"))
            .spawn(move || match spec.prepared.world.clone() {
                PreparedWorld::Service(pre) => Actor::new(spec, pre, rx, actor_status).run(ready_tx),
                PreparedWorld::Stream(pre) => {
                    StreamActor::new(spec, pre, rx, actor_status, Some(runtime)).run(ready_tx);
                }
            })
            .map_err(|e| PluginError::Actor(e.to_string()))?;
        let thread = join.thread().clone();
        match ready_rx.await {
            Ok(Ok(())) => Ok(Self { tx, status, thread, join: std::sync::Mutex::new(Some(join)) }),
            Ok(Err(e)) => {
                let _ = join.join();
                Err(e)
            }
            Err(_) => Err(PluginError::Actor("plugin thread ended during start".into())),
        }
    }

    /// Asks the actor to close the plugin's connections (each gets
    /// `on-close` with kind `local`) and stop. Returns at once; use
    /// [`ActorHandle::join`] to wait.
    pub async fn stop(&self) {
        self.status.shutdown.store(true, Ordering::Release);
        self.thread.unpark();
        let _ = self.tx.send(ConnEvent::Shutdown).await;
    }

    /// Asks the actor to close the plugin's connections with reason
    /// "service unloaded" (the plugin gets `on-close` with kind `local`,
    /// the remote side end of file with that message) and stop. Returns at
    /// once; use [`ActorHandle::join`] to wait.
    pub async fn unload(&self) {
        self.status.shutdown.store(true, Ordering::Release);
        self.thread.unpark();
        let _ = self.tx.send(ConnEvent::Unload).await;
    }

    /// Waits for the actor thread to end.
    pub fn join(&self) {
        let handle = self.join.lock().ok().and_then(|mut guard| guard.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// An instance of a service plugin.
pub(super) type Instance = PluginInstance<PluginState, ServiceBindings>;

/// Why an actor closes every connection and stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ActorStop {
    /// The node shuts down.
    NodeShutdown,
    /// The service was unloaded.
    Unloaded,
}

impl ActorStop {
    /// What the remote side is told (end of file with this message).
    pub(super) fn remote_message(self) -> &'static str {
        match self {
            ActorStop::NodeShutdown => "peer node shutting down",
            ActorStop::Unloaded => "service unloaded",
        }
    }

    /// What the plugin's `on-close` (kind `local`) says.
    pub(super) fn local_message(self) -> &'static str {
        match self {
            ActorStop::NodeShutdown => "node shutting down",
            ActorStop::Unloaded => "service unloaded",
        }
    }
}

/// Epoch ticks of a call deadline (rounded up, plus one for the tick in
/// progress).
pub(super) fn deadline_ticks(deadline: std::time::Duration) -> u64 {
    (deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

/// A human-readable account of a failed call.
fn describe(err: &wasmtime::Error, store: &Store<PluginState>) -> String {
    store.data().describe(err)
}

/// Instantiates a service plugin in a fresh store (its failure domain) with
/// the limits of `ctx`.
fn instantiate(component: &ServiceComponent, ctx: &Arc<PluginContext>) -> Result<Instance, String> {
    Instance::new(component, ctx, |indices, store, instance| indices.load(store, instance))
}

/// A human-readable account of a failed call of any plugin: deadline,
/// memory cap, or trap with the plugin's last standard error line.
pub(super) fn describe_failure(
    err: &wasmtime::Error,
    ctx: &PluginContext,
    memory_refused: bool,
    stderr: &super::stderr_tail::StderrTail,
) -> String {
    let limits = ctx.limits;
    if let Some(Trap::Interrupt) = err.downcast_ref::<Trap>() {
        return format!("call exceeded its deadline of {} ms", limits.call_deadline.as_millis());
    }
    if memory_refused {
        return format!("memory cap of {} bytes exceeded: {err}", limits.memory_bytes);
    }
    let base = match err.downcast_ref::<Trap>() {
        Some(trap) => format!("trap: {trap}"),
        None => format!("{err}"),
    };
    match stderr.summary() {
        Some(line) => format!("{base} (plugin stderr: {line})"),
        None => base,
    }
}

/// Records and reports a successful re-instantiation after a crash.
pub(super) fn report_restart(spec: &ActorSpec, status: &PluginStatus, supervisor: &mut Supervisor) {
    supervisor.started(Instant::now());
    status.restarts.fetch_add(1, Ordering::Relaxed);
    status.set_state(PluginRunState::Running);
    tracing::info!(service = spec.ctx.service, "plugin restarted");
    let _ = spec.events.send(PluginEvent::Restarted { service: spec.ctx.service });
}

/// Reports a crash (the `crashes`-th) and decides, by the crash budget, when
/// the plugin restarts; `None` when it is disabled.
pub(super) fn decide_after_crash(
    spec: &ActorSpec,
    status: &PluginStatus,
    supervisor: &mut Supervisor,
    message: String,
    crashes: u64,
) -> Option<Instant> {
    let service = spec.ctx.service;
    let _ = spec.events.send(PluginEvent::Crashed { service, message: message.clone(), crashes });
    match supervisor.crashed(Instant::now()) {
        CrashDecision::RestartAfter(delay) => {
            status.set_state(PluginRunState::Restarting);
            Some(Instant::now() + delay)
        }
        CrashDecision::Disable => {
            status.set_state(PluginRunState::Disabled);
            tracing::error!(service, "plugin disabled: crash budget spent");
            let _ = spec.events.send(PluginEvent::Disabled { service, message });
            None
        }
    }
}

pub(super) struct Actor {
    /// The generation serving: its context (limits) is `spec.ctx`.
    spec: ActorSpec,
    component: ServiceComponent,
    previous: Option<PreviousGeneration<ServiceComponent>>,
    rx: mpsc::Receiver<ConnEvent>,
    status: Arc<PluginStatus>,
    supervisor: Supervisor,
    pub(super) instance: Option<Instance>,
}

impl Actor {
    pub(super) fn new(
        spec: ActorSpec,
        component: ServiceComponent,
        rx: mpsc::Receiver<ConnEvent>,
        status: Arc<PluginStatus>,
    ) -> Self {
        let supervisor = Supervisor::new(spec.crash_policy);
        Self { spec, component, previous: None, rx, status, supervisor, instance: None }
    }

    fn service(&self) -> u8 {
        self.spec.ctx.service
    }

    pub(super) fn instantiate(&self) -> Result<Instance, String> {
        instantiate(&self.component, &self.spec.ctx)
    }

    /// Replaces the plugin with a new generation: instantiated first (a
    /// failure leaves the old one serving), then given the old one's state
    /// when both export `fogconnect:handoff/state` (a `restore` error
    /// rejects the swap, the old one keeps serving), then the open
    /// connections and pending connects move over, each open connection is
    /// announced to the new generation with `on-connect` (the same info as
    /// before), and the old instance is dropped. Events after the swap
    /// request go to the new generation, in order. A plugin restarting or
    /// disabled after crashes is replaced and serves again. Returns the new
    /// generation's number and what became of the state.
    fn swap(&mut self, prepared: PreparedPlugin, limits: PluginLimits) -> Result<(u64, StateHandoff), PluginError> {
        let PreparedWorld::Service(component) = prepared.world.clone() else {
            return Err(PluginError::Link("a service plugin can only be swapped for another service plugin".into()));
        };
        let ctx = Arc::new(self.spec.ctx.with_limits(limits));
        let mut fresh = instantiate(&component, &ctx).map_err(PluginError::Instantiate)?;
        let state = hand_state_over(&self.spec, &self.status, self.instance.as_mut(), &mut fresh)?;
        let conns = self.instance.as_mut().map(|old| old.store.data_mut().take_conns()).unwrap_or_default();
        let mut open: Vec<(u64, Arc<crate::transport::conn::ConnShared>)> = conns
            .iter()
            .filter_map(|(&id, entry)| match entry {
                ConnEntry::Open { shared, .. } => Some((id, shared.clone())),
                ConnEntry::Pending { .. } => None,
            })
            .collect();
        open.sort_by_key(|(id, _)| *id);
        fresh.store.data_mut().put_conns(conns);
        for (id, shared) in open {
            fresh.store.set_epoch_deadline(fresh.deadline_ticks);
            let result = fresh.bindings.on_connect(&mut fresh.store, id, &shared);
            if let Err(e) = result {
                let message = describe(&e, &fresh.store);
                // Back to the old generation, which keeps serving.
                let conns = fresh.store.data_mut().take_conns();
                if let Some(old) = self.instance.as_mut() {
                    old.store.data_mut().put_conns(conns);
                }
                return Err(PluginError::Instantiate(format!("the new generation failed in on-connect: {message}")));
            }
        }
        self.instance = Some(fresh);
        let incoming = (component, prepared, ctx);
        let (spec, status, supervisor) = (&mut self.spec, &self.status, &mut self.supervisor);
        let generation = take_over(spec, status, supervisor, &mut self.component, &mut self.previous, incoming);
        tracing::info!(service = self.service(), generation, %state, "plugin swapped");
        Ok((generation, state))
    }

    /// Parks until `until` or shutdown; true when shutting down.
    fn wait_until(&self, until: Instant) -> bool {
        loop {
            if self.status.shutdown.load(Ordering::Acquire) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            std::thread::park_timeout(until - now);
        }
    }

    fn run(mut self, ready: oneshot::Sender<Result<(), PluginError>>) {
        self.instance = first_instance(self.instantiate(), &mut self.supervisor, ready);
        if self.instance.is_none() {
            return;
        }
        let mut restart_at: Option<Instant> = None;
        loop {
            if self.instance.is_none()
                && let Some(at) = restart_at
            {
                if self.wait_until(at) {
                    break;
                }
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
            let Some(event) = self.rx.blocking_recv() else { break };
            let event = match event {
                ConnEvent::Shutdown => {
                    self.shutdown(ActorStop::NodeShutdown);
                    break;
                }
                ConnEvent::Unload => {
                    self.shutdown(ActorStop::Unloaded);
                    break;
                }
                ConnEvent::Swap(request) => {
                    let counters = self.spec.ctx.counters.clone();
                    if serve_swap(*request, &counters, |prepared, limits| self.swap(prepared, limits)) {
                        restart_at = None;
                    }
                    if let Some(instance) = self.instance.as_mut() {
                        instance.settle_tally(true);
                    }
                    self.status.connections.store(self.open_connections(), Ordering::Relaxed);
                    continue;
                }
                event => event,
            };
            if let Err(message) = self.handle(event) {
                restart_at = self.crashed(message);
            }
            if let Some(instance) = self.instance.as_mut() {
                instance.settle_tally(self.rx.is_empty());
            }
            self.status.connections.store(self.open_connections(), Ordering::Relaxed);
        }
        self.status.set_state(PluginRunState::Stopped);
        self.status.connections.store(0, Ordering::Relaxed);
    }

    fn open_connections(&self) -> u64 {
        self.instance.as_ref().map_or(0, |i| i.store.data().open_connections() as u64)
    }

    /// Handles one event. `Err` carries the failure of a plugin call.
    pub(super) fn handle(&mut self, event: ConnEvent) -> Result<(), String> {
        let Some(instance) = self.instance.as_mut() else {
            refuse_while_down(&self.status, event);
            return Ok(());
        };
        match event {
            ConnEvent::Opened(shared) => {
                let id = shared.meta().id.0;
                let state = instance.store.data_mut();
                let pending = state.conn(id).map(|e| matches!(e, ConnEntry::Pending { cancelled: true }));
                if !shared.meta().passive && pending.is_none() {
                    // A connect of a previous instance (it crashed since).
                    shared.fail("the plugin that asked for this connection was restarted");
                    return Ok(());
                }
                if pending == Some(true) {
                    state.remove_conn(id);
                    if shared.close_local("closed by this plugin") {
                        let reason = CloseReason::new(CloseKind::Local, "closed by this plugin before it connected");
                        self.call_on_close(id, &reason)?;
                    }
                    return self.flush_deferred_closes();
                }
                state.insert_open(id, shared.clone());
                self.call(|b, s| b.on_connect(s, id, &shared))?;
            }
            ConnEvent::OpenFailed(ConnectionId(id), reason) => {
                if instance.store.data_mut().remove_conn(id).is_some() {
                    self.call_on_close(id, &reason)?;
                }
            }
            ConnEvent::Message(ConnectionId(id), data) => {
                if matches!(instance.store.data().conn(id), Some(ConnEntry::Open { .. })) {
                    instance.store.data_mut().tally.received(data.len());
                    self.call(|b, s| b.on_recv(s, id, &data))?;
                }
            }
            ConnEvent::Closed(ConnectionId(id), reason) => {
                if instance.store.data_mut().remove_conn(id).is_some() {
                    self.call_on_close(id, &reason)?;
                }
            }
            ConnEvent::Network(ConnectionId(id), event) => {
                if instance.bindings.takes_events()
                    && matches!(instance.store.data().conn(id), Some(ConnEntry::Open { .. }))
                {
                    self.call(|b, s| b.on_network_event(s, id, &event))?;
                }
            }
            ConnEvent::Node(event) => {
                if instance.bindings.takes_events() && instance.store.data().subscriptions.wants(&event) {
                    self.call(|b, s| b.on_node_event(s, &event))?;
                }
            }
            ConnEvent::Shutdown | ConnEvent::Unload => {}
            ConnEvent::Swap(request) => {
                let _ = request.done.send(Err(PluginError::Actor("swap reached the event handler".into())));
            }
        }
        self.flush_deferred_closes()
    }

    fn call_on_close(&mut self, id: u64, reason: &CloseReason) -> Result<(), String> {
        self.call(|b, s| b.on_close(s, id, reason))
    }

    /// Reports the local closes the plugin made during its last calls.
    fn flush_deferred_closes(&mut self) -> Result<(), String> {
        loop {
            let Some(instance) = self.instance.as_mut() else { return Ok(()) };
            let deferred = std::mem::take(&mut instance.store.data_mut().deferred_closes);
            if deferred.is_empty() {
                return Ok(());
            }
            for (id, reason) in deferred {
                if let Some(instance) = self.instance.as_mut() {
                    instance.store.data_mut().remove_conn(id);
                }
                self.call_on_close(id, &reason)?;
            }
        }
    }

    /// Calls the plugin under its deadline.
    fn call(
        &mut self,
        f: impl FnOnce(&ServiceBindings, &mut Store<PluginState>) -> wasmtime::Result<()>,
    ) -> Result<(), String> {
        let Some(instance) = self.instance.as_mut() else { return Ok(()) };
        instance.call(f)
    }

    /// Handles a failed call or instantiation: drops the store, ends the
    /// plugin's connections, and decides when to restart. Returns the
    /// restart time, or `None` when the plugin is disabled.
    fn crashed(&mut self, message: String) -> Option<Instant> {
        let service = self.service();
        let crashes = self.status.crashes.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(service, crashes, "plugin failed: {message}");
        // Not serving from here on, before anyone sees a connection fail:
        // whoever saw the failure and then finds the service running sees
        // the restarted (or rolled back) plugin, never the gap.
        self.status.set_state(PluginRunState::Restarting);
        if let Some(mut instance) = self.instance.take() {
            let conns = instance.store.data_mut().take_conns();
            for entry in conns.into_values() {
                if let ConnEntry::Open { shared, .. } = entry {
                    shared.fail(format!("plugin of service {service} failed: {message}"));
                }
            }
            // Pending connects complete later into a table that no longer
            // knows them; `handle` then ends them.
        }
        if self.previous.is_some()
            && self.supervisor.next_crash_disables(Instant::now())
            && let Some(restart) = self.roll_back(&message, crashes)
        {
            return restart;
        }
        decide_after_crash(&self.spec, &self.status, &mut self.supervisor, message, crashes)
    }

    /// Gives up a swapped-in generation whose crash budget is spent: the
    /// previous generation is instantiated and serves again (its
    /// connections were closed with the crash). `None` when the previous
    /// generation cannot be instantiated either (then the crash is handled
    /// as usual).
    fn roll_back(&mut self, message: &str, crashes: u64) -> Option<Option<Instant>> {
        let previous = self.previous.take()?;
        let service = self.service();
        match instantiate(&previous.component, &previous.ctx) {
            Ok(instance) => {
                self.instance = Some(instance);
                self.component = previous.component;
                self.spec.ctx = previous.ctx;
                self.spec.prepared = previous.prepared;
                report_rollback(&self.spec, &self.status, &mut self.supervisor, previous.identity, message, crashes);
                Some(None)
            }
            Err(e) => {
                tracing::error!(service, "cannot roll back to the previous generation: {e}");
                None
            }
        }
    }

    /// Node shutdown or unload: every open connection is closed locally and
    /// reported to the plugin; a plugin failing meanwhile is not called
    /// again, but the remaining connections are closed all the same.
    fn shutdown(&mut self, cause: ActorStop) {
        let Some(instance) = self.instance.as_mut() else { return };
        let mut ids = instance.store.data().conn_ids();
        ids.sort_unstable();
        let mut plugin_ok = true;
        for id in ids {
            let entry = self.instance.as_mut().and_then(|i| i.store.data_mut().remove_conn(id));
            if let Some(ConnEntry::Open { shared, .. }) = entry
                && shared.close_local(cause.remote_message())
                && plugin_ok
            {
                let reason = CloseReason::new(CloseKind::Local, cause.local_message());
                plugin_ok = self.call_on_close(id, &reason).is_ok();
            }
        }
        // Pending connects are abandoned; their tasks see the endpoint close.
    }
}

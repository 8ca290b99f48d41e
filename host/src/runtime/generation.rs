//! What the service and stream actors share about plugin generations: an
//! instance with its optional state handoff exports, the handoff of a live
//! swap, the generation a swap replaced (kept for a rollback), and the
//! bookkeeping when a new generation serves.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime::component::Instance;

use super::PluginError;
use super::actor::{
    ActorSpec, PluginEvent, PluginIdentity, PluginRunState, PluginStatus, StateHandoff, SwapOutcome, SwapRequest,
    deadline_ticks,
};
use super::engine::{PluginComponent, PreparedPlugin};
use super::handoff_bindings::Handoff;
use super::state::{PluginContext, PluginLimiter, PluginLimits, PluginState};
use super::stream_state::StreamState;
use super::supervisor::Supervisor;
use crate::metrics::{CallClock, ServiceCounters, ServiceTally};
use crate::transport::conn::ConnEvent;

/// The data of a plugin store of either world, as the generation code
/// needs it.
pub(super) trait StoreData: Send + 'static {
    /// A fresh store's data for a plugin with `ctx`.
    fn new(ctx: Arc<PluginContext>) -> Self;
    /// The store's memory limiter.
    fn limiter(&mut self) -> &mut PluginLimiter;
    /// A human-readable account of a failed call of this store.
    fn describe(&self, err: &wasmtime::Error) -> String;
    /// What the store's calls counted and has not flushed yet.
    fn tally(&mut self) -> &mut ServiceTally;
}

impl StoreData for PluginState {
    fn new(ctx: Arc<PluginContext>) -> Self {
        PluginState::new(ctx)
    }

    fn limiter(&mut self) -> &mut PluginLimiter {
        &mut self.limiter
    }

    fn describe(&self, err: &wasmtime::Error) -> String {
        super::actor::describe_failure(err, &self.ctx, self.limiter.memory_refused, &self.stderr)
    }

    fn tally(&mut self) -> &mut ServiceTally {
        &mut self.tally
    }
}

impl StoreData for StreamState {
    fn new(ctx: Arc<PluginContext>) -> Self {
        StreamState::new(ctx)
    }

    fn limiter(&mut self) -> &mut PluginLimiter {
        &mut self.limiter
    }

    fn describe(&self, err: &wasmtime::Error) -> String {
        super::actor::describe_failure(err, &self.ctx, self.limiter.memory_refused, &self.stderr)
    }

    fn tally(&mut self) -> &mut ServiceTally {
        &mut self.tally
    }
}

/// One instance of a plugin (one generation, or a restart of it): its
/// store (the failure domain), its world's bindings `B`, its state handoff
/// exports when it has them, and its call deadline.
pub(super) struct PluginInstance<T: 'static, B> {
    pub(super) store: Store<T>,
    pub(super) bindings: B,
    pub(super) handoff: Option<Handoff>,
    pub(super) deadline_ticks: u64,
    pub(super) clock: CallClock,
}

impl<T: StoreData, B> PluginInstance<T, B> {
    /// Instantiates `component` in a fresh store with the limits of `ctx`;
    /// `load` finds the world's exports in the instance.
    pub(super) fn new<I>(
        component: &PluginComponent<T, I>,
        ctx: &Arc<PluginContext>,
        load: impl FnOnce(&I, &mut Store<T>, &Instance) -> wasmtime::Result<B>,
    ) -> Result<Self, String> {
        let deadline_ticks = deadline_ticks(ctx.limits.call_deadline);
        let mut store = Store::new(component.pre.engine(), T::new(ctx.clone()));
        store.limiter(|state| state.limiter());
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks);
        let instance = component.pre.instantiate(&mut store).map_err(|e| store.data().describe(&e))?;
        let bindings = load(&component.world, &mut store, &instance).map_err(|e| store.data().describe(&e))?;
        let handoff = match &component.handoff {
            Some(indices) => Some(indices.load(&mut store, &instance).map_err(|e| store.data().describe(&e))?),
            None => None,
        };
        Ok(Self { store, bindings, handoff, deadline_ticks, clock: CallClock::get() })
    }

    /// Calls into the plugin under its call deadline, counting the call
    /// and its duration in the store's tally; `f` gets the world's bindings
    /// and the store. `Err` carries an account of the failure.
    pub(super) fn call<R>(&mut self, f: impl FnOnce(&B, &mut Store<T>) -> wasmtime::Result<R>) -> Result<R, String> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let started = self.clock.read();
        let result = f(&self.bindings, &mut self.store);
        let nanos = self.clock.nanos_between(started, self.clock.read());
        self.store.data_mut().tally().call(nanos);
        result.map_err(|e| self.store.data().describe(&e))
    }

    /// Adds what this instance counted to the service's counters when the
    /// actor's queue is `idle`, or every so many counts under load.
    pub(super) fn settle_tally(&mut self, idle: bool) {
        self.store.data_mut().tally().settle(idle);
    }
}

/// Moves the state of `old` (the generation serving) into `fresh` when
/// both export `fogconnect:handoff/state`: `snapshot` on the one, `restore`
/// on the other, each under its own deadline. A trap in `snapshot` is the
/// old generation's crash (counted and reported here; the swap goes on
/// without state); an error or trap in `restore` rejects the swap.
pub(super) fn hand_state_over<T: StoreData, B>(
    spec: &ActorSpec,
    status: &PluginStatus,
    old: Option<&mut PluginInstance<T, B>>,
    fresh: &mut PluginInstance<T, B>,
) -> Result<StateHandoff, PluginError> {
    let (Some(old), Some(restore)) = (old, fresh.handoff.as_ref()) else { return Ok(StateHandoff::Fresh) };
    let Some(snapshot) = old.handoff.as_ref() else { return Ok(StateHandoff::Fresh) };
    // Cheap copies of the export handles, so the calls can borrow the
    // instances.
    let (snapshot, restore) = (snapshot.fogconnect_handoff_state().clone(), restore.fogconnect_handoff_state().clone());
    let taken = old.call(|_, store| snapshot.call_snapshot(store));
    let state = match taken {
        Ok(state) => state,
        Err(reason) => {
            let service = spec.ctx.service;
            let crashes = status.crashes.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(service, crashes, "plugin failed in snapshot, swapping without state: {reason}");
            let message = format!("snapshot failed: {reason}");
            let _ = spec.events.send(PluginEvent::Crashed { service, message, crashes });
            return Ok(StateHandoff::Lost { reason });
        }
    };
    let restored = fresh.call(|_, store| restore.call_restore(store, &state));
    match restored {
        Ok(Ok(())) => Ok(StateHandoff::Handed { bytes: state.len() }),
        Ok(Err(reason)) => Err(PluginError::Handoff(reason)),
        Err(failure) => Err(PluginError::Handoff(format!("restore failed: {failure}"))),
    }
}

/// The generation a swap replaced, kept for a rollback: its build (`C`,
/// the pre-linked component of its world), context and identity.
pub(super) struct PreviousGeneration<C> {
    pub(super) prepared: PreparedPlugin,
    pub(super) component: C,
    pub(super) ctx: Arc<PluginContext>,
    pub(super) identity: PluginIdentity,
}

/// Serves a swap request with `swap` (the actor's): times the pause,
/// counts it in `counters`, and sends the outcome to the caller. True when
/// the new generation serves.
pub(super) fn serve_swap(
    request: SwapRequest,
    counters: &ServiceCounters,
    swap: impl FnOnce(PreparedPlugin, PluginLimits) -> Result<(u64, StateHandoff), PluginError>,
) -> bool {
    let SwapRequest { prepared, limits, done } = request;
    let started = Instant::now();
    let outcome = swap(prepared, limits);
    let pause = started.elapsed();
    counters.swap_pause_seconds.observe(pause);
    let swapped = outcome.is_ok();
    if swapped {
        counters.swaps.fetch_add(1, Ordering::Relaxed);
    }
    let _ = done.send(outcome.map(|(generation, state)| SwapOutcome { generation, pause, state }));
    swapped
}

/// Answers an event for a plugin without an instance (restarting, or
/// disabled after crashes): its connections ended with the crash, so only
/// a new connection needs an answer, a refusal with the reason.
pub(super) fn refuse_while_down(status: &PluginStatus, event: ConnEvent) {
    if let ConnEvent::Opened(shared) = event {
        let why = match status.state() {
            PluginRunState::Disabled => "service disabled after repeated plugin crashes",
            _ => "service plugin is restarting",
        };
        shared.fail(why);
    }
}

/// Reports the first instantiation of an actor's plugin to whoever started
/// the actor. Returns the instance to serve with, or `None` after a failure
/// (the actor then ends).
pub(super) fn first_instance<I>(
    first: Result<I, String>,
    supervisor: &mut Supervisor,
    ready: oneshot::Sender<Result<(), PluginError>>,
) -> Option<I> {
    match first {
        Ok(instance) => {
            supervisor.started(Instant::now());
            let _ = ready.send(Ok(()));
            Some(instance)
        }
        Err(message) => {
            let _ = ready.send(Err(PluginError::Instantiate(message)));
            None
        }
    }
}

/// Makes a swapped-in build (its component, prepared plugin and context)
/// the actor's current one, keeps the one it replaced in `previous` for a
/// rollback, and records that the new generation serves. Returns its
/// number.
pub(super) fn take_over<C>(
    spec: &mut ActorSpec,
    status: &PluginStatus,
    supervisor: &mut Supervisor,
    current: &mut C,
    previous: &mut Option<PreviousGeneration<C>>,
    (component, prepared, ctx): (C, PreparedPlugin, Arc<PluginContext>),
) -> u64 {
    *previous = Some(PreviousGeneration {
        component: std::mem::replace(current, component),
        prepared: std::mem::replace(&mut spec.prepared, prepared),
        ctx: std::mem::replace(&mut spec.ctx, ctx),
        identity: status.identity(),
    });
    new_generation_serves(spec, status, supervisor)
}

/// Records that a new generation serves (after a swap or a rollback): a
/// fresh crash budget, running, one generation more (returned).
fn new_generation_serves(spec: &ActorSpec, status: &PluginStatus, supervisor: &mut Supervisor) -> u64 {
    *supervisor = Supervisor::new(spec.crash_policy);
    supervisor.started(Instant::now());
    status.set_state(PluginRunState::Running);
    status.generation.fetch_add(1, Ordering::AcqRel) + 1
}

/// Records and reports a rollback to the generation with `identity` after
/// the `crashes`-th crash.
pub(super) fn report_rollback(
    spec: &ActorSpec,
    status: &PluginStatus,
    supervisor: &mut Supervisor,
    identity: PluginIdentity,
    message: &str,
    crashes: u64,
) {
    let service = spec.ctx.service;
    status.set_identity(identity);
    let generation = new_generation_serves(spec, status, supervisor);
    tracing::warn!(service, generation, "plugin rolled back to the previous generation: {message}");
    let _ = spec.events.send(PluginEvent::Crashed { service, message: message.to_string(), crashes });
    let _ = spec.events.send(PluginEvent::RolledBack { service, message: message.to_string() });
}

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
use std::time::{Duration, Instant};

use bytes::Bytes;
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
use super::stream_state::{HARD_BUFFER_LIMIT, StreamConn, StreamEntry, StreamKind, StreamState, wit_command_error};
use super::stream_world::StreamBindings;
use super::supervisor::Supervisor;
use crate::stream::command::MAX_COMMAND_BYTES;
use crate::stream::mux::WireStream;
use crate::stream::pump::{MuxShared, pump};
use crate::stream::status::SendMeter;
use crate::stream::watermark::{WatermarkEvent, Watermarks};
use crate::transport::conn::{ConnEvent, ConnShared, LINK_SEND_WINDOW};

/// How often the send meters (rate, loss) are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Most streams pulled in one `send-get` call: a tick with more streams
/// makes several calls, so one call's work stays well inside the call
/// deadline however many streams a plugin has.
pub const PULL_BATCH: usize = 1024;

/// Most streams (send and talk-back) open at once on one connection; more
/// are refused, so one application cannot exhaust a device.
pub const MAX_STREAMS_PER_CONNECTION: usize = 256;

/// An instance of a stream plugin.
type StreamInstance = PluginInstance<StreamState, StreamBindings>;

/// What the application is told when a swap ends its stream.
const SWAP_END_REASON: &str = "service plugin swapped";

/// Instantiates a stream plugin in a fresh store with the limits of `ctx`.
fn instantiate(component: &StreamComponent, ctx: &Arc<PluginContext>) -> Result<StreamInstance, String> {
    StreamInstance::new(component, ctx, |indices, store, instance| indices.load(store, instance))
}

/// How a send stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    /// The application asked (its `End`): queued data is discarded.
    Application,
    /// The plugin returned `pull.end`: queued data is sent first.
    Finished,
    /// The connection ended or is being closed: nothing more is sent.
    Gone,
}

pub(super) struct StreamActor {
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
    last_sample: Instant,
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
            last_sample: Instant::now(),
            pull_batch: PULL_BATCH,
        }
    }

    fn service(&self) -> u8 {
        self.spec.ctx.service
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
            let conns = self.instance.as_ref().map_or(0, |i| i.store.data().core.conns.len());
            self.status.connections.store(conns as u64, Ordering::Relaxed);
        }
        self.status.set_state(PluginRunState::Stopped);
        self.status.connections.store(0, Ordering::Relaxed);
    }

    /// The next pull tick or command timeout.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let core = &self.instance.as_ref()?.store.data().core;
        match (core.schedule.poll_timeout(), core.commands.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn core(&mut self) -> Option<&mut super::stream_state::StreamCore> {
        self.instance.as_mut().map(|i| &mut i.store.data_mut().core)
    }

    /// Calls the plugin under its deadline.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&StreamBindings, &mut Store<StreamState>) -> wasmtime::Result<R>,
    ) -> Result<R, String> {
        let Some(instance) = self.instance.as_mut() else {
            return Err("the plugin instance is gone".into());
        };
        instance.call(&self.status, &self.spec.ctx.counters, f)
    }

    /// Handles one connection event. `Err` carries the failure of a plugin
    /// call.
    pub(super) fn handle(&mut self, event: ConnEvent) -> Result<(), String> {
        if self.instance.is_none() {
            refuse_while_down(&self.status, event);
            return Ok(());
        }
        match event {
            ConnEvent::Opened(shared) => self.register(shared),
            ConnEvent::Message(id, data) => {
                self.spec.ctx.counters.received(data.len());
                self.on_message(id.0, &data)?;
            }
            ConnEvent::Closed(id, _) => {
                self.end_connection(id.0)?;
            }
            ConnEvent::Network(id, event) => {
                let takes = self
                    .instance
                    .as_ref()
                    .is_some_and(|i| i.bindings.takes_events() && i.store.data().core.conns.contains_key(&id.0));
                if takes {
                    self.call(|b, s| b.on_network_event(s, id.0, &event))?;
                }
            }
            ConnEvent::Node(event) => {
                let takes = self
                    .instance
                    .as_ref()
                    .is_some_and(|i| i.bindings.takes_events() && i.store.data().subscriptions.wants(&event));
                if takes {
                    self.call(|b, s| b.on_node_event(s, &event))?;
                }
            }
            // Stream plugins open no connections.
            ConnEvent::OpenFailed(..) | ConnEvent::Shutdown | ConnEvent::Unload => {}
            ConnEvent::Swap(request) => {
                let _ = request.done.send(Err(PluginError::Actor("swap reached the event handler".into())));
            }
        }
        self.flush_events()
    }

    fn register(&mut self, shared: Arc<ConnShared>) {
        let queues = MuxShared::new(shared.max_message_size());
        let stop = CancellationToken::new();
        if let Some(runtime) = &self.runtime {
            runtime.spawn(pump(shared.clone(), queues.clone(), stop.clone()));
        }
        let id = shared.meta().id.0;
        if let Some(core) = self.core() {
            core.conns.insert(id, StreamConn { shared, queues, stop, streams: Default::default() });
        }
    }

    fn send_now(&mut self, conn: u64, message: &StreamMessage) {
        if let Some(c) = self.core().and_then(|core| core.conns.get(&conn)) {
            c.send_now(message);
        }
    }

    fn on_message(&mut self, conn: u64, data: &Bytes) -> Result<(), String> {
        let message = match StreamMessage::decode(data) {
            Ok(message) => message,
            Err(e) => {
                if let Some(c) = self.core().and_then(|core| core.conns.get(&conn)) {
                    c.shared.fail(format!("protocol: {e}"));
                }
                return self.end_connection(conn).map(drop);
            }
        };
        match message {
            StreamMessage::Open { stream, params } => self.open_stream(conn, stream, &params, true),
            StreamMessage::Talk { stream, params } => self.open_stream(conn, stream, &params, false),
            StreamMessage::Data { stream, data } => {
                let Some(handle) = self.handle_of(conn, stream) else { return Ok(()) };
                let is_recv = self
                    .core()
                    .and_then(|c| c.streams.get(&handle))
                    .is_some_and(|e| matches!(e.kind, StreamKind::Recv));
                // An empty chunk would read as the end: the end is `End`.
                if is_recv && !data.is_empty() {
                    self.call(|b, s| b.recv_data(s, handle, &data))?;
                }
                Ok(())
            }
            StreamMessage::End { stream, .. } => {
                let Some(handle) = self.handle_of(conn, stream) else { return Ok(()) };
                let is_send = self
                    .core()
                    .and_then(|c| c.streams.get(&handle))
                    .is_some_and(|e| matches!(e.kind, StreamKind::Send { .. }));
                if is_send { self.stop_send(handle, StopCause::Application) } else { self.end_recv(handle) }
            }
            StreamMessage::Command { id, data } => {
                let reply = self.call(|b, s| b.on_command(s, conn, &data))?;
                let message = match reply {
                    Ok(reply) if reply.len() <= MAX_COMMAND_BYTES => StreamMessage::Reply { id, data: reply.into() },
                    Ok(reply) => StreamMessage::ReplyError {
                        id,
                        reason: format!("the plugin's reply of {} bytes exceeds {MAX_COMMAND_BYTES}", reply.len()),
                    },
                    Err(reason) => StreamMessage::ReplyError { id, reason },
                };
                self.send_now(conn, &message);
                Ok(())
            }
            StreamMessage::Reply { id, data } => self.command_reply(conn, id, Ok(data.to_vec())),
            StreamMessage::ReplyError { id, reason } => {
                self.command_reply(conn, id, Err(types::CommandError::Refused(reason)))
            }
            StreamMessage::Accepted { stream } | StreamMessage::Refused { stream, .. } => {
                tracing::debug!(
                    service = self.service(),
                    conn,
                    stream,
                    "ignoring a device message from an application"
                );
                Ok(())
            }
        }
    }

    fn handle_of(&mut self, conn: u64, stream: WireStream) -> Option<u64> {
        self.core()?.conns.get(&conn)?.streams.get(&stream).copied()
    }

    fn command_reply(&mut self, conn: u64, id: u32, reply: Result<Vec<u8>, types::CommandError>) -> Result<(), String> {
        let Some(core) = self.core() else { return Ok(()) };
        // Only the connection a command went to may answer it.
        if core.commands.caller(u64::from(id)) != Some(&conn) {
            return Ok(());
        }
        core.commands.reply(u64::from(id));
        self.give_reply(u64::from(id), &reply)
    }

    /// `on-command-reply` for command `id`.
    fn give_reply(&mut self, id: u64, reply: &Result<Vec<u8>, types::CommandError>) -> Result<(), String> {
        let reply = reply.as_ref().map(Vec::as_slice);
        self.call(|b, s| b.on_command_reply(s, id, reply))
    }

    /// An application opens a send stream (`send`) or a talk-back stream.
    fn open_stream(&mut self, conn: u64, wire: WireStream, params: &str, send: bool) -> Result<(), String> {
        let Some(core) = self.core() else { return Ok(()) };
        let Some(c) = core.conns.get(&conn) else { return Ok(()) };
        let refusal = if c.streams.contains_key(&wire) {
            Some(format!("stream id {wire} is in use on this connection"))
        } else if c.streams.len() >= MAX_STREAMS_PER_CONNECTION {
            Some(format!("too many streams on this connection (at most {MAX_STREAMS_PER_CONNECTION})"))
        } else {
            None
        };
        if let Some(reason) = refusal {
            c.send_now(&StreamMessage::Refused { stream: wire, reason });
            return Ok(());
        }
        let result = if send {
            core.initializing = true;
            let result = self.call(|b, s| b.send_init(s, conn, params));
            if let Some(core) = self.core() {
                core.initializing = false;
            }
            result?
        } else {
            self.call(|b, s| b.recv_init(s, conn, params))?
        };
        let Some(core) = self.core() else { return Ok(()) };
        let handle = match result {
            Ok(handle) if core.streams.contains_key(&handle) => {
                core.early_marks.clear();
                tracing::warn!(service = self.service(), handle, "plugin returned a stream handle already in use");
                self.send_now(
                    conn,
                    &StreamMessage::Refused {
                        stream: wire,
                        reason: format!("plugin error: stream handle {handle} is already in use"),
                    },
                );
                return Ok(());
            }
            Ok(handle) => handle,
            Err(reason) => {
                core.early_marks.clear();
                self.send_now(conn, &StreamMessage::Refused { stream: wire, reason });
                return Ok(());
            }
        };
        let marks = core.early_marks.remove(&handle).unwrap_or(Watermarks::OFF);
        core.early_marks.clear();
        let Some(c) = core.conns.get_mut(&conn) else { return Ok(()) };
        c.streams.insert(wire, handle);
        let kind = if send {
            c.queues.lock().open(wire);
            core.schedule.add(handle, marks);
            StreamKind::Send { meter: SendMeter::new(super::stream_state::STATUS_WINDOW) }
        } else {
            StreamKind::Recv
        };
        core.streams.insert(handle, StreamEntry { conn, wire, kind });
        self.send_now(conn, &StreamMessage::Accepted { stream: wire });
        Ok(())
    }

    /// Ends a send stream and calls `send-stop` (once: the entry is gone
    /// before the call).
    fn stop_send(&mut self, handle: u64, cause: StopCause) -> Result<(), String> {
        let Some(core) = self.core() else { return Ok(()) };
        let Some(entry) = core.streams.remove(&handle) else { return Ok(()) };
        core.schedule.remove(handle);
        if let Some(c) = core.conns.get_mut(&entry.conn) {
            c.streams.remove(&entry.wire);
            let mut mux = c.queues.lock();
            match cause {
                StopCause::Finished => mux.finish(entry.wire, "the stream finished"),
                StopCause::Application => mux.stop(entry.wire, "stopped by the application"),
                StopCause::Gone => mux.remove(entry.wire).is_some(),
            };
            drop(mux);
            c.queues.queued.notify_one();
        }
        self.call(|b, s| b.send_stop(s, handle))
    }

    /// Ends a talk-back stream: `recv-data` with an empty chunk (once).
    fn end_recv(&mut self, handle: u64) -> Result<(), String> {
        let Some(core) = self.core() else { return Ok(()) };
        let Some(entry) = core.streams.remove(&handle) else { return Ok(()) };
        if let Some(c) = core.conns.get_mut(&entry.conn) {
            c.streams.remove(&entry.wire);
        }
        self.call(|b, s| b.recv_data(s, handle, &[]))
    }

    /// A connection ended (or this side ends it): its streams end, then its
    /// waiting commands get `closed`. The connection stays in the table
    /// while its streams stop, so a plugin may still send a last command on
    /// it from `send-stop` (delivered when the node is the one closing).
    /// Returns the connection.
    fn end_connection(&mut self, conn: u64) -> Result<Option<Arc<ConnShared>>, String> {
        let Some(c) = self.core().and_then(|core| core.conns.get(&conn)) else { return Ok(None) };
        c.stop.cancel();
        let mut handles: Vec<(WireStream, u64)> = c.streams.iter().map(|(&w, &h)| (w, h)).collect();
        handles.sort_unstable();
        for (_, handle) in handles {
            let is_send = self
                .core()
                .and_then(|core| core.streams.get(&handle))
                .map(|e| matches!(e.kind, StreamKind::Send { .. }));
            match is_send {
                Some(true) => self.stop_send(handle, StopCause::Gone)?,
                Some(false) => self.end_recv(handle)?,
                None => {}
            }
        }
        let Some(core) = self.core() else { return Ok(None) };
        let Some(c) = core.conns.remove(&conn) else { return Ok(None) };
        // The link goes back to the node's send window when no other stream
        // connection of this plugin uses it.
        let link = c.shared.link_id();
        if link.is_some() && !core.conns.values().any(|other| other.shared.link_id() == link) {
            c.shared.set_send_window(LINK_SEND_WINDOW);
        }
        let waiting = core.commands.drain_matching(|caller| *caller == conn);
        for (id, _) in waiting {
            self.give_reply(id, &Err(types::CommandError::Closed))?;
        }
        Ok(Some(c.shared))
    }

    /// Delivers the watermark events `set-watermarks` caused.
    fn flush_events(&mut self) -> Result<(), String> {
        loop {
            let Some(core) = self.core() else { return Ok(()) };
            let events = std::mem::take(&mut core.pending_events);
            if events.is_empty() {
                return Ok(());
            }
            self.deliver(events)?;
        }
    }

    fn deliver(&mut self, events: Vec<(u64, WatermarkEvent)>) -> Result<(), String> {
        for (handle, event) in events {
            let live = self.core().is_some_and(|core| core.streams.contains_key(&handle));
            if live {
                let event = wit_event(event);
                self.call(|b, s| b.on_event(s, handle, event))?;
            }
        }
        Ok(())
    }

    /// Watermark events of every send stream at its current buffer level.
    fn check_marks(&mut self, handles: &[u64]) -> Vec<(u64, WatermarkEvent)> {
        let Some(core) = self.core() else { return Vec::new() };
        let mut events = Vec::new();
        for &handle in handles {
            let Some(buffered) = core.buffered(handle) else { continue };
            if let Ok(crossed) = core.schedule.buffered(handle, buffered) {
                events.extend(crossed.into_iter().map(|e| (handle, e)));
            }
        }
        events
    }

    /// Command timeouts and the pull tick due at `now`.
    pub(super) fn on_timers(&mut self, now: Instant) -> Result<(), String> {
        let expired = self.core().map(|core| core.commands.handle_timeout(now)).unwrap_or_default();
        for (id, _, err) in expired {
            self.give_reply(id, &Err(wit_command_error(&err)))?;
        }
        let sample = now.duration_since(self.last_sample) >= SAMPLE_EVERY;
        let Some(core) = self.core() else { return Ok(()) };
        if core.schedule.poll_timeout().is_none_or(|at| at > now) {
            return Ok(());
        }
        if sample {
            core.sample_meters(now);
        }
        let mut sending: Vec<u64> =
            core.streams.iter().filter(|(_, e)| matches!(e.kind, StreamKind::Send { .. })).map(|(&h, _)| h).collect();
        sending.sort_unstable();
        if sample {
            self.last_sample = now;
        }
        let events = self.check_marks(&sending);
        self.deliver(events)?;
        self.flush_events()?;
        let Some(core) = self.core() else { return Ok(()) };
        let due: Vec<u64> = core
            .schedule
            .handle_timeout(now)
            .into_iter()
            .filter(|&h| core.buffered(h).is_some_and(|b| b < HARD_BUFFER_LIMIT))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let mut pulls = Vec::with_capacity(due.len());
        for batch in due.chunks(self.pull_batch.max(1)) {
            let mut pulled = self.call(|b, s| b.send_get(s, batch))?;
            // Missing entries count as empty, extra ones are ignored.
            pulled.resize_with(batch.len(), || types::Pull::Data(Vec::new()));
            pulls.extend(pulled);
        }
        let mut finished = Vec::new();
        let counters = self.spec.ctx.counters.clone();
        if let Some(core) = self.core() {
            for (&handle, pull) in due.iter().zip(pulls) {
                match pull {
                    types::Pull::Data(data) if data.is_empty() => {}
                    types::Pull::Data(data) => {
                        let Some(entry) = core.streams.get(&handle) else { continue };
                        if let Some(c) = core.conns.get(&entry.conn) {
                            c.queues.lock().push(entry.wire, &data);
                            c.queues.queued.notify_one();
                            counters.sent(data.len());
                        }
                    }
                    types::Pull::End => finished.push(handle),
                }
            }
        }
        for handle in finished {
            self.stop_send(handle, StopCause::Finished)?;
        }
        let events = self.check_marks(&due);
        self.deliver(events)?;
        self.flush_events()
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
        let conns: Vec<u64> = self.core().map(|core| core.conns.keys().copied().collect()).unwrap_or_default();
        for conn in conns {
            match self.end_connection(conn) {
                Ok(Some(shared)) => {
                    shared.close_local(cause.remote_message());
                }
                Ok(None) => {}
                Err(message) => {
                    tracing::warn!(service = self.service(), "stream plugin failed while shutting down: {message}");
                    if let Some(mut instance) = self.instance.take() {
                        for (_, c) in instance.store.data_mut().core.conns.drain() {
                            c.stop.cancel();
                            c.shared.close_local(cause.remote_message());
                        }
                    }
                    return;
                }
            }
        }
    }
}

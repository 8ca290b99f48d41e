//! Serving stream services, whoever implements the callbacks: the one
//! piece of logic between application connections and a stream server (a
//! Wasm stream plugin's actor, or a native stream service in Rust or C).
//!
//! Per pull tick it checks every send stream's buffer against its
//! watermarks (events once per crossing), pulls every stream that is not
//! paused, and queues the chunks for the connection's pump task. Every
//! handle `send-init` returned gets exactly one `send-stop`, whichever way
//! the stream ends (application stop, server end, connection loss,
//! shutdown); talk-back streams end with exactly one empty `recv-data`;
//! every command the server sent gets exactly one reply or failure.
//!
//! A server implements the required methods of [`StreamServer`] (where its
//! [`StreamCore`] lives, and its callbacks); the provided methods are the
//! serving logic. A required callback returning `Err` means the server
//! failed (a trap): the caller decides what happens to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fogconnect_proto::stream::StreamMessage;
use tokio_util::sync::CancellationToken;

use super::command::MAX_COMMAND_BYTES;
use super::core::{
    CommandFailure, HARD_BUFFER_LIMIT, Pull, STATUS_WINDOW, StreamConn, StreamCore, StreamEntry, StreamKind,
};
use super::mux::WireStream;
use super::pump::MuxShared;
use super::status::SendMeter;
use super::watermark::{WatermarkEvent, Watermarks};
use crate::events::{NetworkEvent, NodeEvent};
use crate::metrics::ServiceCounters;
use crate::transport::conn::{ConnEvent, ConnShared, LINK_SEND_WINDOW};

/// How often the send meters (rate, loss) are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Most streams pulled in one `send-get` call: a tick with more streams
/// makes several calls, so one call's work stays well inside a plugin's
/// call deadline however many streams it has.
pub const PULL_BATCH: usize = 1024;

/// Most streams (send and talk-back) open at once on one connection; more
/// are refused, so one application cannot exhaust a device.
pub const MAX_STREAMS_PER_CONNECTION: usize = 256;

/// How a send stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    /// The application asked (its `End`): queued data is discarded.
    Application,
    /// The server returned [`Pull::End`] or [`Pull::Failed`] (with the
    /// reason the application sees): queued data is sent first.
    Finished(Option<String>),
    /// The connection ended or is being closed: nothing more is sent.
    Gone,
}

/// What a server hears about its connections besides the stream callbacks.
#[derive(Debug, Clone, Copy)]
pub enum ServeNotice<'a> {
    /// An application's connection is up (connection handle).
    Ready(u64),
    /// The network under a connection changed.
    Network(u64, &'a NetworkEvent),
    /// A node event (servers that subscribed pick theirs).
    Node(&'a NodeEvent),
    /// The application stopped a send stream (stream handle); its
    /// `send-stop` follows.
    StoppedByApplication(u64),
    /// A connection ended, after its streams did (connection handle).
    Gone(u64),
}

/// A stream server: where its bookkeeping is and its callbacks. The
/// provided methods serve the connections.
pub trait StreamServer {
    /// The bookkeeping; `None` while the server is down (nothing is
    /// served then).
    fn core(&mut self) -> Option<&mut StreamCore>;

    /// The service number served (for logs).
    fn service(&self) -> u8;

    /// The service's counters, if it has them.
    fn counters(&self) -> Option<&Arc<ServiceCounters>> {
        None
    }

    /// Starts the task that moves a connection's queued messages into it
    /// (nothing in in-process harnesses, which take them out themselves).
    fn spawn_pump(&self, shared: Arc<ConnShared>, queues: Arc<MuxShared>, stop: CancellationToken);

    /// Most streams per `send_get` call.
    fn pull_batch(&self) -> usize {
        PULL_BATCH
    }

    /// An application asks for a send stream: its handle, or a refusal.
    fn send_init(&mut self, conn: u64, params: &str) -> Result<Result<u64, String>, String>;

    /// One pull of `handles`: one [`Pull`] each into `pulls`, in order
    /// (missing ones count as empty, extra ones are ignored).
    fn send_get(&mut self, handles: &[u64], pulls: &mut Vec<Pull>) -> Result<(), String>;

    /// A send stream ended (once per handle).
    fn send_stop(&mut self, handle: u64) -> Result<(), String>;

    /// A watermark of a send stream was crossed.
    fn on_watermark(&mut self, handle: u64, event: WatermarkEvent) -> Result<(), String>;

    /// An application opens a talk-back stream: its handle, or a refusal.
    fn recv_init(&mut self, conn: u64, params: &str) -> Result<Result<u64, String>, String>;

    /// Talk-back data; empty marks the end (once per handle).
    fn recv_data(&mut self, handle: u64, data: &[u8]) -> Result<(), String>;

    /// A command from an application: the reply, or a refusal text.
    fn on_command(&mut self, conn: u64, message: &[u8]) -> Result<Result<Vec<u8>, String>, String>;

    /// The outcome of a command the server sent (once per id).
    fn on_command_reply(&mut self, id: u64, reply: Result<&[u8], &CommandFailure>) -> Result<(), String>;

    /// Connections coming and going, paths moving, applications stopping
    /// streams, node events.
    fn on_notice(&mut self, notice: ServeNotice<'_>) -> Result<(), String>;

    /// Serves one connection event (`Opened`, `Message`, `Closed`,
    /// `Network`, `Node`; the rest is the actor's business and ignored
    /// here).
    fn serve_event(&mut self, event: ConnEvent) -> Result<(), String> {
        match event {
            ConnEvent::Opened(shared) => {
                let id = shared.meta().id.0;
                self.register(shared);
                self.on_notice(ServeNotice::Ready(id))?;
            }
            ConnEvent::Message(id, data) => {
                if let Some(counters) = self.counters() {
                    counters.received(data.len());
                }
                self.on_message(id.0, &data)?;
            }
            ConnEvent::Closed(id, _) => {
                self.end_connection(id.0)?;
            }
            ConnEvent::Network(id, event) => {
                if self.core().is_some_and(|core| core.conns.contains_key(&id.0)) {
                    self.on_notice(ServeNotice::Network(id.0, &event))?;
                }
            }
            ConnEvent::Node(event) => self.on_notice(ServeNotice::Node(&event))?,
            ConnEvent::OpenFailed(..) | ConnEvent::Shutdown | ConnEvent::Unload | ConnEvent::Swap(_) => {}
        }
        self.flush_events()
    }

    /// Takes a new connection in: its send queues and their pump.
    fn register(&mut self, shared: Arc<ConnShared>) {
        let queues = MuxShared::new(shared.max_message_size());
        let stop = CancellationToken::new();
        self.spawn_pump(shared.clone(), queues.clone(), stop.clone());
        let id = shared.meta().id.0;
        if let Some(core) = self.core() {
            core.conns.insert(id, StreamConn { shared, queues, stop, streams: Default::default() });
        }
    }

    /// Sends a control message on `conn` at once.
    fn send_now(&mut self, conn: u64, message: &StreamMessage) {
        if let Some(c) = self.core().and_then(|core| core.conns.get(&conn)) {
            c.send_now(message);
        }
    }

    /// One message from an application.
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
                    self.recv_data(handle, &data)?;
                }
                Ok(())
            }
            StreamMessage::End { stream, .. } => {
                let Some(handle) = self.handle_of(conn, stream) else { return Ok(()) };
                let is_send = self
                    .core()
                    .and_then(|c| c.streams.get(&handle))
                    .is_some_and(|e| matches!(e.kind, StreamKind::Send { .. }));
                if is_send {
                    self.on_notice(ServeNotice::StoppedByApplication(handle))?;
                    self.stop_send(handle, StopCause::Application)
                } else {
                    self.end_recv(handle)
                }
            }
            StreamMessage::Command { id, data } => {
                let reply = self.on_command(conn, &data)?;
                let message = match reply {
                    Ok(reply) if reply.len() <= MAX_COMMAND_BYTES => StreamMessage::Reply { id, data: reply.into() },
                    Ok(reply) => StreamMessage::ReplyError {
                        id,
                        reason: format!("the device's reply of {} bytes exceeds {MAX_COMMAND_BYTES}", reply.len()),
                    },
                    Err(reason) => StreamMessage::ReplyError { id, reason },
                };
                self.send_now(conn, &message);
                Ok(())
            }
            StreamMessage::Reply { id, data } => self.command_reply(conn, id, Ok(data)),
            StreamMessage::ReplyError { id, reason } => {
                self.command_reply(conn, id, Err(CommandFailure::Refused(reason)))
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

    /// The server handle of stream `stream` on `conn`.
    fn handle_of(&mut self, conn: u64, stream: WireStream) -> Option<u64> {
        self.core()?.conns.get(&conn)?.streams.get(&stream).copied()
    }

    /// A reply from `conn` to command `id`.
    fn command_reply(&mut self, conn: u64, id: u32, reply: Result<Bytes, CommandFailure>) -> Result<(), String> {
        let Some(core) = self.core() else { return Ok(()) };
        // Only the connection a command went to may answer it.
        if core.commands.caller(u64::from(id)) != Some(&conn) {
            return Ok(());
        }
        core.commands.reply(u64::from(id));
        self.on_command_reply(u64::from(id), reply.as_ref().map(|data| &data[..]))
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
            let result = self.send_init(conn, params);
            if let Some(core) = self.core() {
                core.initializing = false;
            }
            result?
        } else {
            self.recv_init(conn, params)?
        };
        let service = self.service();
        let Some(core) = self.core() else { return Ok(()) };
        let handle = match result {
            Ok(handle) if core.streams.contains_key(&handle) => {
                core.early_marks.clear();
                tracing::warn!(service, handle, "stream server returned a stream handle already in use");
                self.send_now(
                    conn,
                    &StreamMessage::Refused {
                        stream: wire,
                        reason: format!("device error: stream handle {handle} is already in use"),
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
        // The connection may have gone while the server was asked.
        let Some(c) = core.conns.get_mut(&conn) else {
            return if send { self.send_stop(handle) } else { self.recv_data(handle, &[]) };
        };
        c.streams.insert(wire, handle);
        let kind = if send {
            c.queues.lock().open(wire);
            core.schedule.add(handle, marks);
            StreamKind::Send { meter: SendMeter::new(STATUS_WINDOW) }
        } else {
            StreamKind::Recv
        };
        core.streams.insert(handle, StreamEntry { conn, wire, kind });
        self.send_now(conn, &StreamMessage::Accepted { stream: wire });
        Ok(())
    }

    /// Ends a send stream and calls `send_stop` (once: the entry is gone
    /// before the call).
    fn stop_send(&mut self, handle: u64, cause: StopCause) -> Result<(), String> {
        let Some(core) = self.core() else { return Ok(()) };
        let Some(entry) = core.streams.remove(&handle) else { return Ok(()) };
        core.schedule.remove(handle);
        if let Some(c) = core.conns.get_mut(&entry.conn) {
            c.streams.remove(&entry.wire);
            let mut mux = c.queues.lock();
            match cause {
                StopCause::Finished(None) => mux.finish(entry.wire, "the stream finished"),
                StopCause::Finished(Some(reason)) => mux.finish(entry.wire, &reason),
                StopCause::Application => mux.stop(entry.wire, "stopped by the application"),
                StopCause::Gone => mux.remove(entry.wire).is_some(),
            };
            drop(mux);
            c.queues.queued.notify_one();
        }
        self.send_stop(handle)
    }

    /// Ends a talk-back stream: `recv_data` with an empty chunk (once).
    fn end_recv(&mut self, handle: u64) -> Result<(), String> {
        let Some(core) = self.core() else { return Ok(()) };
        let Some(entry) = core.streams.remove(&handle) else { return Ok(()) };
        if let Some(c) = core.conns.get_mut(&entry.conn) {
            c.streams.remove(&entry.wire);
        }
        self.recv_data(handle, &[])
    }

    /// A connection ended (or this side ends it): its streams end, then
    /// its waiting commands fail with `Closed`, then the server hears it is
    /// gone. The connection stays in the table while its streams stop, so
    /// a server may still send a last command on it from `send_stop`
    /// (delivered when the node is the one closing). Returns the
    /// connection.
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
        // connection of this server uses it.
        let link = c.shared.link_id();
        if link.is_some() && !core.conns.values().any(|other| other.shared.link_id() == link) {
            c.shared.set_send_window(LINK_SEND_WINDOW);
        }
        let waiting = core.commands.drain_matching(|caller| *caller == conn);
        for (id, _) in waiting {
            self.on_command_reply(id, Err(&CommandFailure::Closed))?;
        }
        self.on_notice(ServeNotice::Gone(conn))?;
        Ok(Some(c.shared))
    }

    /// Ends every connection (node shutdown, unload, the service stopping):
    /// each is closed locally with `message` after its streams and
    /// commands ended. A server failing meanwhile is not called again;
    /// the remaining connections are closed all the same.
    fn end_all(&mut self, message: &str) {
        let mut conns: Vec<u64> = self.core().map(|core| core.conns.keys().copied().collect()).unwrap_or_default();
        conns.sort_unstable();
        for conn in conns {
            match self.end_connection(conn) {
                Ok(Some(shared)) => {
                    shared.close_local(message);
                }
                Ok(None) => {}
                Err(failure) => {
                    tracing::warn!(service = self.service(), "stream server failed while ending: {failure}");
                    if let Some(core) = self.core() {
                        for (_, c) in core.conns.drain() {
                            c.stop.cancel();
                            c.shared.close_local(message);
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Delivers the watermark events `set_watermarks` caused.
    fn flush_events(&mut self) -> Result<(), String> {
        loop {
            let Some(core) = self.core() else { return Ok(()) };
            let events = std::mem::take(&mut core.pending_events);
            if events.is_empty() {
                return Ok(());
            }
            self.deliver_marks(events)?;
        }
    }

    /// Delivers watermark events of streams still live.
    fn deliver_marks(&mut self, events: Vec<(u64, WatermarkEvent)>) -> Result<(), String> {
        for (handle, event) in events {
            if self.core().is_some_and(|core| core.streams.contains_key(&handle)) {
                self.on_watermark(handle, event)?;
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

    /// The next pull tick or command timeout.
    fn next_wake(&mut self) -> Option<Instant> {
        let core = self.core()?;
        match (core.schedule.poll_timeout(), core.commands.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Command timeouts and the pull tick due at `now`.
    fn on_timers(&mut self, now: Instant) -> Result<(), String> {
        let expired = self.core().map(|core| core.commands.handle_timeout(now)).unwrap_or_default();
        for (id, _, err) in expired {
            self.on_command_reply(id, Err(&CommandFailure::from(&err)))?;
        }
        let Some(core) = self.core() else { return Ok(()) };
        if core.schedule.poll_timeout().is_none_or(|at| at > now) {
            return Ok(());
        }
        if now.duration_since(core.last_sample) >= SAMPLE_EVERY {
            core.sample_meters(now);
        }
        let mut sending: Vec<u64> =
            core.streams.iter().filter(|(_, e)| matches!(e.kind, StreamKind::Send { .. })).map(|(&h, _)| h).collect();
        sending.sort_unstable();
        let events = self.check_marks(&sending);
        self.deliver_marks(events)?;
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
        for batch in due.chunks(self.pull_batch().max(1)) {
            let start = pulls.len();
            self.send_get(batch, &mut pulls)?;
            // Missing entries count as empty, extra ones are ignored.
            pulls.resize(start + batch.len(), Pull::NOTHING);
        }
        let mut finished = Vec::new();
        let counters = self.counters().cloned();
        if let Some(core) = self.core() {
            for (&handle, pull) in due.iter().zip(pulls) {
                match pull {
                    Pull::Data(data) if data.is_empty() => {}
                    Pull::Data(data) => {
                        let Some(entry) = core.streams.get(&handle) else { continue };
                        if let Some(c) = core.conns.get(&entry.conn) {
                            c.queues.lock().push(entry.wire, &data);
                            c.queues.queued.notify_one();
                            if let Some(counters) = &counters {
                                counters.sent(data.len());
                            }
                        }
                    }
                    Pull::End => finished.push((handle, None)),
                    Pull::Failed(reason) => finished.push((handle, Some(reason))),
                }
            }
        }
        for (handle, reason) in finished {
            self.stop_send(handle, StopCause::Finished(reason))?;
        }
        let events = self.check_marks(&due);
        self.deliver_marks(events)?;
        self.flush_events()
    }
}

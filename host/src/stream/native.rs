//! Native stream services: the device SDK's push model served by the
//! embedding application's own code (a camera's encoder in Rust, or in C
//! through `iv_avt_p2p_*`), with the semantics stream plugins have. The
//! serving logic is [`super::serve`], the one stream plugins use; this
//! module runs it on a thread of its own for an implementation of
//! [`StreamService`].
//!
//! The callbacks run on that thread, one at a time, never concurrently:
//! a callback may take its time (an encoder's work), at the cost of the
//! streams' next pull. Each callback gets a [`StreamHost`] for the calls
//! back into the node (buffer level, send status, watermarks, commands).
//! Other threads and tasks reach the same calls through the
//! [`StreamServiceHandle`] the node returned, which runs them on the
//! service's thread between callbacks.
//!
//! ```no_run
//! # async fn demo(node: &fogconnect::Node) -> anyhow::Result<()> {
//! use bytes::Bytes;
//! use fogconnect::stream::{Pull, StreamHost, StreamService};
//!
//! /// One numbered frame per tick.
//! struct Counter(u64);
//!
//! impl StreamService for Counter {
//!     fn send_init(&mut self, _: &mut StreamHost<'_>, _conn: u64, _params: &str) -> Result<u64, String> {
//!         self.0 += 1;
//!         Ok(self.0)
//!     }
//!     fn send_get(&mut self, _: &mut StreamHost<'_>, handle: u64) -> Pull {
//!         Pull::Data(Bytes::from(handle.to_be_bytes().to_vec()))
//!     }
//!     fn send_stop(&mut self, _: &mut StreamHost<'_>, _handle: u64) {}
//! }
//!
//! let serving = node.serve_streams(5, Counter(0))?;
//! // ... later:
//! serving.stop().await;
//! # Ok(()) }
//! ```

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::core::{CommandFailure, Pull, SendStatistics, StreamCore, StreamHostError};
use super::harness::ServeHarness;
use super::pump::{MuxShared, pump};
use super::serve::{ServeNotice, StreamServer};
use super::watermark::WatermarkEvent;
use crate::dispatch::Dispatcher;
use crate::events::{NetworkEvent, PathInfo};
use crate::transport::conn::EVENT_CHANNEL_CAPACITY;
use crate::transport::conn::{ConnEvent, ConnShared};

/// Calls from other threads waiting for the service's thread; more wait
/// for room.
const CONTROL_QUEUE: usize = 256;

/// What the connection is told when the service stops.
const STOPPED_MESSAGE: &str = "service stopped";

/// What the connections are told when the node shuts down.
const SHUTDOWN_MESSAGE: &str = "peer node shutting down";

static NEXT_SERVICE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The service whose thread this is (0: none).
    static SERVICE_THREAD: Cell<u64> = const { Cell::new(0) };
}

/// A stream service served by the application's own code. The node calls
/// these on the service's own thread, one at a time; see the module
/// documentation. Connection handles (`conn`) are the node's connection
/// ids; stream handles are the service's own choice, unique among its live
/// streams of both kinds.
pub trait StreamService: Send + 'static {
    /// An application asks for a stream with `params` (e.g.
    /// `action=live`): the new stream's handle, or a reason to refuse it
    /// (the application sees the text). [`StreamHost::set_watermarks`]
    /// may set the marks of the handle about to be returned.
    fn send_init(&mut self, host: &mut StreamHost<'_>, conn: u64, params: &str) -> Result<u64, String>;

    /// The stream's data for this pull tick (every 10 ms while its buffer
    /// is under its high mark): a chunk, nothing ([`Pull::NOTHING`]), its
    /// end, or a failure.
    fn send_get(&mut self, host: &mut StreamHost<'_>, handle: u64) -> Pull;

    /// The stream ended: the application stopped it or went away, the
    /// service ended it, or the service or node stops. Exactly once per
    /// handle `send_init` returned.
    fn send_stop(&mut self, host: &mut StreamHost<'_>, handle: u64);

    /// A watermark of the stream's send buffer was crossed.
    fn on_watermark(&mut self, host: &mut StreamHost<'_>, handle: u64, event: WatermarkEvent) {
        let _ = (host, handle, event);
    }

    /// An application opens a talk-back stream: its handle, or a reason
    /// to refuse (the default refuses).
    fn recv_init(&mut self, host: &mut StreamHost<'_>, conn: u64, params: &str) -> Result<u64, String> {
        let _ = (host, conn, params);
        Err("this device takes no talk-back".into())
    }

    /// Talk-back data, whole chunks in order; empty marks the end (the
    /// last call for the handle, exactly once).
    fn recv_data(&mut self, host: &mut StreamHost<'_>, handle: u64, data: &[u8]) {
        let _ = (host, handle, data);
    }

    /// A command from an application: its reply (at most 16 KiB), or an
    /// error text the application sees as a refusal (the default refuses).
    fn on_command(&mut self, host: &mut StreamHost<'_>, conn: u64, message: &[u8]) -> Result<Vec<u8>, String> {
        let _ = (host, conn, message);
        Err("this device takes no commands".into())
    }

    /// The outcome of a command sent with [`StreamHost::send_command`]:
    /// exactly once per id.
    fn on_command_reply(&mut self, host: &mut StreamHost<'_>, id: u64, reply: Result<&[u8], &CommandFailure>) {
        let _ = (host, id, reply);
    }

    /// Connections coming and going, their paths moving, applications
    /// stopping streams.
    fn on_event(&mut self, host: &mut StreamHost<'_>, event: StreamServiceEvent<'_>) {
        let _ = (host, event);
    }
}

/// What a native stream service hears besides its stream callbacks.
#[derive(Debug, Clone, Copy)]
pub enum StreamServiceEvent<'a> {
    /// An application's connection is up.
    Connected(u64),
    /// The network under a connection changed (a path moved, the link went
    /// silent or recovered).
    Network(u64, &'a NetworkEvent),
    /// The application stopped a send stream; its `send_stop` follows.
    StreamStopped(u64),
    /// A connection ended, after its streams did.
    Disconnected(u64),
}

/// The calls back into the node a native stream service makes: in a
/// callback, or through [`StreamServiceHandle::call`].
pub struct StreamHost<'a> {
    core: &'a mut StreamCore,
    waiters: &'a mut HashMap<u64, oneshot::Sender<Result<Bytes, CommandFailure>>>,
}

impl StreamHost<'_> {
    /// Bytes of a send stream waiting in its send buffer (produced, not yet
    /// handed to the transport).
    ///
    /// # Errors
    /// [`StreamHostError::UnknownStream`].
    pub fn buffered(&self, handle: u64) -> Result<u64, StreamHostError> {
        self.core.buffered_of(handle)
    }

    /// How a send stream's data is leaving the node.
    ///
    /// # Errors
    /// [`StreamHostError::UnknownStream`].
    pub fn send_status(&self, handle: u64) -> Result<SendStatistics, StreamHostError> {
        self.core.send_status(handle)
    }

    /// Sets a send stream's watermarks, in bytes of its send buffer, as a
    /// plugin's `set-watermarks` does: events once per crossing, pulling
    /// paused above `high` until below `low`; all zero turns them off.
    /// The events the current level causes follow this call.
    ///
    /// # Errors
    /// [`StreamHostError`]: marks out of order, or an unknown stream.
    pub fn set_watermarks(&mut self, handle: u64, low: u64, warn: u64, high: u64) -> Result<(), StreamHostError> {
        self.core.set_watermarks(handle, low, warn, high)
    }

    /// Sends a command to the application at the other end of `conn`;
    /// exactly one [`StreamService::on_command_reply`] with the returned id
    /// follows. A zero `timeout` means the default of 7.5 s.
    ///
    /// # Errors
    /// Why it was not sent.
    pub fn send_command(&mut self, conn: u64, message: Bytes, timeout: Duration) -> Result<u64, CommandFailure> {
        self.core.send_command(conn, message, timeout)
    }

    /// Like [`StreamHost::send_command`], but the reply goes to the
    /// returned receiver instead of the service's callback.
    ///
    /// # Errors
    /// Why it was not sent.
    pub fn send_command_awaiting(
        &mut self,
        conn: u64,
        message: Bytes,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<Result<Bytes, CommandFailure>>, CommandFailure> {
        let id = self.core.send_command(conn, message, timeout)?;
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(id, tx);
        Ok(rx)
    }

    /// The id of the application node at the other end of `conn`.
    pub fn peer_id(&self, conn: u64) -> Option<&str> {
        self.core.peer_id(conn)
    }

    /// The path of `conn`.
    pub fn path(&self, conn: u64) -> Option<PathInfo> {
        self.core.conns.get(&conn).map(|c| c.shared.path())
    }

    /// The connections of the service, oldest first.
    pub fn connections(&self) -> Vec<u64> {
        let mut conns: Vec<u64> = self.core.conns.keys().copied().collect();
        conns.sort_unstable();
        conns
    }

    /// The newest connection from the application node `peer`.
    pub fn latest_connection_of(&self, peer: &str) -> Option<u64> {
        self.core.conns.iter().filter(|(_, c)| c.shared.meta().peer_id == peer).map(|(&id, _)| id).max()
    }

    /// Closes `conn` with `message` (the application sees it); its streams
    /// end first, as when the application goes.
    pub fn close(&mut self, conn: u64, message: &str) -> bool {
        self.core.conns.get(&conn).is_some_and(|c| c.shared.close_local(message))
    }
}

/// Errors of [`StreamServiceHandle`] calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamServiceError {
    /// The service stopped (or the node shut down).
    #[error("the stream service has stopped")]
    Stopped,
    /// A blocking call made on the service's own thread (from inside one
    /// of its callbacks) would wait for itself: use the callback's
    /// [`StreamHost`] instead.
    #[error("called from inside a stream callback, which would wait for itself: use the callback's StreamHost")]
    InCallback,
}

/// A call to run on the service's thread.
type Control = Box<dyn FnOnce(&mut StreamHost<'_>) + Send>;

/// The application's side of a native stream service: calls into the
/// service's thread from anywhere, and its end. Clones share the service;
/// dropping the last one stops it, as [`StreamServiceHandle::stop`] does
/// (without waiting).
#[derive(Clone)]
pub struct StreamServiceHandle {
    shared: Arc<HandleShared>,
}

struct HandleShared {
    service: u8,
    token: u64,
    control: mpsc::Sender<Control>,
    stop: CancellationToken,
    finished: watch::Receiver<bool>,
    finished_blocking: Arc<Finished>,
}

/// Set once the service's thread is done, for threads that block.
type Finished = (std::sync::Mutex<bool>, std::sync::Condvar);

impl Drop for HandleShared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for StreamServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServiceHandle").field("service", &self.shared.service).finish()
    }
}

impl StreamServiceHandle {
    /// The service number served.
    pub fn service(&self) -> u8 {
        self.shared.service
    }

    /// Whether the caller is on this service's thread (inside one of its
    /// callbacks).
    pub fn in_callback(&self) -> bool {
        SERVICE_THREAD.with(|t| t.get()) == self.shared.token
    }

    /// Runs `f` with the service's [`StreamHost`] on its thread, between
    /// callbacks, and returns what it returns.
    ///
    /// # Errors
    /// [`StreamServiceError::Stopped`].
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut StreamHost<'_>) -> R + Send + 'static,
    ) -> Result<R, StreamServiceError> {
        let (tx, rx) = oneshot::channel();
        let job: Control = Box::new(move |host| {
            let _ = tx.send(f(host));
        });
        self.shared.control.send(job).await.map_err(|_| StreamServiceError::Stopped)?;
        rx.await.map_err(|_| StreamServiceError::Stopped)
    }

    /// [`StreamServiceHandle::call`] for threads outside any async runtime
    /// (a C encoder thread).
    ///
    /// # Errors
    /// [`StreamServiceError::InCallback`] on the service's own thread;
    /// [`StreamServiceError::Stopped`].
    pub fn call_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut StreamHost<'_>) -> R + Send + 'static,
    ) -> Result<R, StreamServiceError> {
        if self.in_callback() {
            return Err(StreamServiceError::InCallback);
        }
        let (tx, rx) = oneshot::channel();
        let job: Control = Box::new(move |host| {
            let _ = tx.send(f(host));
        });
        self.shared.control.blocking_send(job).map_err(|_| StreamServiceError::Stopped)?;
        rx.blocking_recv().map_err(|_| StreamServiceError::Stopped)
    }

    /// Queues `f` for the service's thread without waiting for it (when
    /// the queue is full: on a task of the current runtime, or, outside
    /// any, this thread waits for room).
    ///
    /// # Errors
    /// [`StreamServiceError::Stopped`]; [`StreamServiceError::InCallback`]
    /// when the queue is full and the caller is the service's own thread,
    /// which would wait for itself.
    pub fn post(&self, f: impl FnOnce(&mut StreamHost<'_>) + Send + 'static) -> Result<(), StreamServiceError> {
        match self.shared.control.try_send(Box::new(f)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StreamServiceError::Stopped),
            Err(mpsc::error::TrySendError::Full(_)) if self.in_callback() => Err(StreamServiceError::InCallback),
            Err(mpsc::error::TrySendError::Full(job)) => {
                let control = self.shared.control.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move { control.send(job).await });
                        Ok(())
                    }
                    Err(_) => control.blocking_send(job).map_err(|_| StreamServiceError::Stopped),
                }
            }
        }
    }

    /// Sends a command to the application at the other end of `conn` and
    /// waits for its reply (a zero `timeout`: 7.5 s).
    ///
    /// # Errors
    /// Why there is no reply ([`CommandFailure::Closed`] when the service
    /// stopped).
    pub async fn send_command(&self, conn: u64, message: Bytes, timeout: Duration) -> Result<Bytes, CommandFailure> {
        let waiting = self
            .call(move |host| host.send_command_awaiting(conn, message, timeout))
            .await
            .map_err(|_| CommandFailure::Closed)??;
        waiting.await.unwrap_or(Err(CommandFailure::Closed))
    }

    /// Stops the service: every stream ends (`send_stop`, talk-back end),
    /// commands waiting fail with `closed`, every connection closes with
    /// "service stopped", and the number is free again. Returns once all
    /// of that happened.
    pub async fn stop(&self) {
        self.shared.stop.cancel();
        let mut finished = self.shared.finished.clone();
        let _ = finished.wait_for(|done| *done).await;
    }

    /// [`StreamServiceHandle::stop`] for threads outside any async runtime.
    ///
    /// # Errors
    /// [`StreamServiceError::InCallback`] on the service's own thread
    /// (the service then stops after the callback returns).
    pub fn stop_blocking(&self) -> Result<(), StreamServiceError> {
        self.shared.stop.cancel();
        if self.in_callback() {
            return Err(StreamServiceError::InCallback);
        }
        let (done, changed) = &*self.shared.finished_blocking;
        let mut done = done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = changed.wait(done).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    /// Whether the service has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.shared.finished.borrow()
    }
}

/// The dispatcher's side of a native stream service.
pub(crate) struct NativeStreams {
    /// Where its connections' events go.
    pub(crate) owner: mpsc::Sender<ConnEvent>,
    /// Tells this registration from a later one of the same number.
    pub(crate) token: u64,
}

/// Starts serving `service` with `implementation` on a thread of its own,
/// registered in `dispatcher`; `Err(service)` when the number is taken.
pub(crate) fn start<S: StreamService>(
    service: u8,
    implementation: S,
    dispatcher: &Arc<Dispatcher>,
    runtime: tokio::runtime::Handle,
) -> Result<StreamServiceHandle, u8> {
    let token = NEXT_SERVICE.fetch_add(1, Ordering::Relaxed);
    let (owner, events) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    if !dispatcher.add_native_streams(service, NativeStreams { owner, token }) {
        return Err(service);
    }
    let (control_tx, control) = mpsc::channel(CONTROL_QUEUE);
    let (finished_tx, finished) = watch::channel(false);
    let finished_blocking: Arc<Finished> = Arc::default();
    let done = finished_blocking.clone();
    let stop = CancellationToken::new();
    let actor = NativeStreamActor::new(service, token, implementation, Some(runtime));
    let dispatcher_weak = Arc::downgrade(dispatcher);
    let stopping = stop.clone();
    let spawned = std::thread::Builder::new().name(format!("fogconnect-streams-{service}")).spawn(move || {
        actor.run(events, control, stopping, dispatcher_weak);
        *done.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        done.1.notify_all();
        let _ = finished_tx.send(true);
    });
    if let Err(e) = spawned {
        tracing::error!(service, "cannot start the stream service's thread: {e}");
        dispatcher.remove_native_streams(service, token);
        return Err(service);
    }
    Ok(StreamServiceHandle {
        shared: Arc::new(HandleShared { service, token, control: control_tx, stop, finished, finished_blocking }),
    })
}

/// One native stream service as the serving logic sees it (opaque: run on
/// its thread by the node, or driven by a [`NativeStreamHarness`]).
pub struct NativeStreamActor<S> {
    service: u8,
    token: u64,
    implementation: S,
    core: StreamCore,
    waiters: HashMap<u64, oneshot::Sender<Result<Bytes, CommandFailure>>>,
    /// Where the pump tasks run; `None` in the harness, which takes the
    /// queued messages out itself.
    runtime: Option<tokio::runtime::Handle>,
}

/// A native stream service driven in-process, without threads, timers or
/// network (see [`ServeHarness`]): for tests and benchmarks of a
/// [`StreamService`].
pub type NativeStreamHarness<S> = ServeHarness<NativeStreamActor<S>>;

impl<S: StreamService> ServeHarness<NativeStreamActor<S>> {
    /// A harness serving `service` with `implementation`.
    pub fn native(service: u8, implementation: S) -> Self {
        let (owner, events) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let token = NEXT_SERVICE.fetch_add(1, Ordering::Relaxed);
        Self::with_server(NativeStreamActor::new(service, token, implementation, None), service, owner, events)
    }
}

/// What woke the service's thread.
enum Wake {
    Event(Option<ConnEvent>),
    Control(Option<Control>),
    Stop,
    Timer,
}

impl<S: StreamService> NativeStreamActor<S> {
    fn new(service: u8, token: u64, implementation: S, runtime: Option<tokio::runtime::Handle>) -> Self {
        Self { service, token, implementation, core: StreamCore::new(Instant::now()), waiters: HashMap::new(), runtime }
    }

    fn run(
        mut self,
        mut events: mpsc::Receiver<ConnEvent>,
        mut control: mpsc::Receiver<Control>,
        stop: CancellationToken,
        dispatcher: Weak<Dispatcher>,
    ) {
        SERVICE_THREAD.with(|t| t.set(self.token));
        let timers = tokio::runtime::Builder::new_current_thread().enable_time().build();
        match timers {
            Ok(timers) => self.serve(&timers, &mut events, &mut control, &stop),
            Err(e) => tracing::error!(service = self.service, "cannot start the stream service's timers: {e}"),
        }
        // The number is free before anyone learns the service stopped.
        if let Some(dispatcher) = dispatcher.upgrade() {
            dispatcher.remove_native_streams(self.service, self.token);
        }
        events.close();
        while let Ok(event) = events.try_recv() {
            if let ConnEvent::Opened(shared) = event {
                shared.close_local(STOPPED_MESSAGE);
            }
        }
        control.close();
    }

    fn serve(
        &mut self,
        timers: &tokio::runtime::Runtime,
        events: &mut mpsc::Receiver<ConnEvent>,
        control: &mut mpsc::Receiver<Control>,
        stop: &CancellationToken,
    ) {
        loop {
            let wake_at = self.next_wake();
            let wake = timers.block_on(async {
                let sleep = async {
                    match wake_at {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = stop.cancelled() => Wake::Stop,
                    event = events.recv() => Wake::Event(event),
                    job = control.recv() => Wake::Control(job),
                    () = sleep => Wake::Timer,
                }
            });
            let result = match wake {
                Wake::Stop | Wake::Control(None) => {
                    self.end_all(STOPPED_MESSAGE);
                    return;
                }
                Wake::Event(None) | Wake::Event(Some(ConnEvent::Shutdown)) => {
                    self.end_all(SHUTDOWN_MESSAGE);
                    return;
                }
                Wake::Event(Some(event)) => self.serve_event(event),
                Wake::Control(Some(job)) => {
                    let mut host = StreamHost { core: &mut self.core, waiters: &mut self.waiters };
                    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut host)));
                    let result = ran
                        .map_err(|panic| format!("a call on the service's thread panicked: {}", panic_text(&*panic)));
                    result.and_then(|()| self.flush_events())
                }
                Wake::Timer => Ok(()),
            };
            if let Err(message) = result {
                self.failed(&message);
            }
            if let Err(message) = self.on_timers(Instant::now()) {
                self.failed(&message);
            }
        }
    }

    /// A callback panicked: every connection ends with the error (their
    /// streams get no further calls); the service serves new ones.
    fn failed(&mut self, message: &str) {
        tracing::error!(service = self.service, "native stream service failed: {message}");
        let lost = std::mem::replace(&mut self.core, StreamCore::new(Instant::now()));
        for (_, c) in lost.conns {
            c.stop.cancel();
            c.shared.fail(format!("the stream service {} failed: {message}", self.service));
        }
        // Callers waiting for a reply learn `Closed` as their channel drops.
        self.waiters.clear();
    }

    /// Runs one callback of the implementation with its host; a panic is
    /// the service failing.
    fn callback<R>(&mut self, f: impl FnOnce(&mut S, &mut StreamHost<'_>) -> R) -> Result<R, String> {
        let mut host = StreamHost { core: &mut self.core, waiters: &mut self.waiters };
        let implementation = &mut self.implementation;
        std::panic::catch_unwind(AssertUnwindSafe(|| f(implementation, &mut host)))
            .map_err(|panic| format!("a callback panicked: {}", panic_text(&*panic)))
    }
}

/// The text of a panic's payload.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

impl<S: StreamService> StreamServer for NativeStreamActor<S> {
    fn core(&mut self) -> Option<&mut StreamCore> {
        Some(&mut self.core)
    }

    fn service(&self) -> u8 {
        self.service
    }

    fn spawn_pump(&self, shared: Arc<ConnShared>, queues: Arc<MuxShared>, stop: CancellationToken) {
        if let Some(runtime) = &self.runtime {
            runtime.spawn(pump(shared, queues, stop));
        }
    }

    fn send_init(&mut self, conn: u64, params: &str) -> Result<Result<u64, String>, String> {
        self.callback(|s, host| s.send_init(host, conn, params))
    }

    fn send_get(&mut self, handles: &[u64], pulls: &mut Vec<Pull>) -> Result<(), String> {
        self.callback(|s, host| pulls.extend(handles.iter().map(|&handle| s.send_get(host, handle))))
    }

    fn send_stop(&mut self, handle: u64) -> Result<(), String> {
        self.callback(|s, host| s.send_stop(host, handle))
    }

    fn on_watermark(&mut self, handle: u64, event: WatermarkEvent) -> Result<(), String> {
        self.callback(|s, host| s.on_watermark(host, handle, event))
    }

    fn recv_init(&mut self, conn: u64, params: &str) -> Result<Result<u64, String>, String> {
        self.callback(|s, host| s.recv_init(host, conn, params))
    }

    fn recv_data(&mut self, handle: u64, data: &[u8]) -> Result<(), String> {
        self.callback(|s, host| s.recv_data(host, handle, data))
    }

    fn on_command(&mut self, conn: u64, message: &[u8]) -> Result<Result<Vec<u8>, String>, String> {
        self.callback(|s, host| s.on_command(host, conn, message))
    }

    fn on_command_reply(&mut self, id: u64, reply: Result<&[u8], &CommandFailure>) -> Result<(), String> {
        if let Some(waiter) = self.waiters.remove(&id) {
            let _ = waiter.send(reply.map(Bytes::copy_from_slice).map_err(Clone::clone));
            return Ok(());
        }
        self.callback(|s, host| s.on_command_reply(host, id, reply))
    }

    fn on_notice(&mut self, notice: ServeNotice<'_>) -> Result<(), String> {
        let event = match notice {
            ServeNotice::Ready(conn) => StreamServiceEvent::Connected(conn),
            ServeNotice::Network(conn, event) => StreamServiceEvent::Network(conn, event),
            ServeNotice::StoppedByApplication(handle) => StreamServiceEvent::StreamStopped(handle),
            ServeNotice::Gone(conn) => StreamServiceEvent::Disconnected(conn),
            ServeNotice::Node(_) => return Ok(()),
        };
        self.callback(|s, host| s.on_event(host, event))
    }
}

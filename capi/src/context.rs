//! A context: one fogconnect node, its tokio runtime, its callback thread
//! and the connections C holds handles to.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use fogconnect::stream::StreamServiceHandle;
use fogconnect::{Incoming, Node, NodeError, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::avt::PendingStreams;
use crate::callbacks::{self, Dispatch};
use crate::connection::{self, ConnEntry, ConnState, ConnectCallback, EVENT_EOF};
use crate::events::EventCallback;
use crate::handles::{CONNECTIONS, CONTEXTS, next_handle};

/// How long `pr_init_signal` waits for the registration.
pub(crate) const REGISTRATION_WAIT: Duration = Duration::from_secs(10);

/// Events waiting for the callback thread before senders wait.
const DISPATCH_QUEUE: usize = 1024;

/// The default signaling port (`pr_signal_server.port` 0).
pub(crate) const DEFAULT_SIGNAL_PORT: u16 = 7600;

/// The id contexts register with (`set_id`), copied.
static NODE_ID: Mutex<Option<String>> = Mutex::new(None);

/// Sets the id of contexts that start afterwards.
pub(crate) fn set_node_id(id: Option<String>) {
    *NODE_ID.lock().unwrap_or_else(|p| p.into_inner()) = id;
}

fn node_id() -> Option<String> {
    NODE_ID.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// What can be set before the node starts.
struct Settings {
    token: Option<String>,
    listen: SocketAddr,
    stun: Option<String>,
    identity: Option<PathBuf>,
    relays: Vec<(String, String, String)>,
    #[cfg(feature = "plugins")]
    plugins: Vec<(u8, PathBuf)>,
    /// The stream service `iv_avt_p2p_init` asked for before the start.
    streams: Option<PendingStreams>,
}

/// The passive side: the callback and the accept loop serving it.
#[derive(Default)]
struct Passive {
    callback: Option<ConnectCallback>,
    accepting: Option<AcceptLoop>,
}

/// A running accept loop of passive connections.
struct AcceptLoop {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Where `pr_init_signal` connects.
pub(crate) struct SignalTarget {
    /// The WebSocket URL, or several separated by commas.
    pub(crate) url: String,
    /// A PEM file of a CA to trust.
    pub(crate) ca: Option<PathBuf>,
}

/// One context.
pub(crate) struct Context {
    pub(crate) handle: usize,
    runtime: tokio::runtime::Handle,
    settings: Mutex<Settings>,
    node: OnceLock<Node>,
    /// Serialises starts.
    starting: Mutex<()>,
    passive: Mutex<Passive>,
    events: Mutex<Option<mpsc::Sender<Dispatch>>>,
    /// `pr_fogconnect_set_event_callback`'s callback and argument.
    event_callback: Mutex<Option<(EventCallback, usize)>>,
    released: CancellationToken,
    connections: Mutex<HashSet<usize>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: OnceLock<ThreadId>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Context {
    /// Creates a context, its runtime and its callback thread, and
    /// registers its handle.
    pub(crate) fn create() -> Result<usize, String> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("fogconnect-io")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let listen = match std::env::var("FOGCONNECT_LISTEN") {
            Ok(text) if !text.is_empty() => {
                text.parse().map_err(|_| format!("FOGCONNECT_LISTEN={text:?} is not an ip:port address"))?
            }
            _ => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let (tx, rx) = mpsc::channel(DISPATCH_QUEUE);
        let handle = next_handle();
        let context = Arc::new(Context {
            handle,
            runtime: runtime.handle().clone(),
            settings: Mutex::new(Settings {
                token: std::env::var("FOGCONNECT_TOKEN").ok().filter(|t| !t.is_empty()),
                listen,
                stun: std::env::var("FOGCONNECT_STUN").ok().filter(|s| !s.is_empty()),
                identity: std::env::var_os("FOGCONNECT_IDENTITY").filter(|s| !s.is_empty()).map(PathBuf::from),
                relays: Vec::new(),
                #[cfg(feature = "plugins")]
                plugins: Vec::new(),
                streams: None,
            }),
            node: OnceLock::new(),
            starting: Mutex::new(()),
            passive: Mutex::new(Passive::default()),
            events: Mutex::new(Some(tx)),
            event_callback: Mutex::new(None),
            released: CancellationToken::new(),
            connections: Mutex::new(HashSet::new()),
            thread: Mutex::new(None),
            thread_id: OnceLock::new(),
        });
        let for_thread = context.clone();
        let thread = std::thread::Builder::new()
            .name("fogconnect-callbacks".into())
            .spawn(move || callbacks::run(rx, runtime, for_thread))
            .map_err(|e| format!("cannot start the callback thread: {e}"))?;
        let _ = context.thread_id.set(thread.thread().id());
        *lock(&context.thread) = Some(thread);
        CONTEXTS.insert(handle, context);
        Ok(handle)
    }

    /// The node, once started.
    pub(crate) fn node(&self) -> Option<Node> {
        self.node.get().cloned()
    }

    /// The network event callback and its argument.
    pub(crate) fn event_callback(&self) -> Option<(EventCallback, usize)> {
        *lock(&self.event_callback)
    }

    /// `pr_fogconnect_set_event_callback`.
    pub(crate) fn set_event_callback(&self, callback: Option<(EventCallback, usize)>) {
        *lock(&self.event_callback) = callback;
    }

    /// Passes the node's own network events to the callback thread until
    /// the context is released (subscribed before the node starts, so the
    /// first registration is reported too).
    fn forward_node_events(&self, mut events: tokio::sync::broadcast::Receiver<fogconnect::NodeEvent>) {
        let Ok(dispatch) = self.sender() else { return };
        let released = self.released.clone();
        self.runtime.spawn(async move {
            loop {
                let event = tokio::select! {
                    () = released.cancelled() => return,
                    event = events.recv() => event,
                };
                match event {
                    Ok(event) => {
                        let Some((code, detail)) = crate::events::code_of_node(&event) else { continue };
                        if dispatch.send(Dispatch::Network { entry: None, code, detail }).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// The passive callback.
    pub(crate) fn passive_callback(&self) -> Option<ConnectCallback> {
        lock(&self.passive).callback
    }

    fn sender(&self) -> Result<mpsc::Sender<Dispatch>, String> {
        lock(&self.events).clone().ok_or_else(|| "the context is being released".to_string())
    }

    /// Changes a setting that only applies before the node starts.
    fn before_start(&self, change: impl FnOnce(&mut Settings)) -> Result<(), String> {
        let _starting = lock(&self.starting);
        if self.node.get().is_some() {
            return Err("the context has started (pr_init_signal): set this before".into());
        }
        change(&mut lock(&self.settings));
        Ok(())
    }

    /// `pr_fogconnect_set_token`.
    pub(crate) fn set_token(&self, token: String) -> Result<(), String> {
        self.before_start(|s| s.token = Some(token))
    }

    /// `pr_fogconnect_set_listen`.
    pub(crate) fn set_listen(&self, listen: SocketAddr) -> Result<(), String> {
        self.before_start(|s| s.listen = listen)
    }

    /// `pr_fogconnect_set_stun`.
    pub(crate) fn set_stun(&self, server: String) -> Result<(), String> {
        self.before_start(|s| s.stun = Some(server))
    }

    /// `pr_fogconnect_set_identity_file`.
    pub(crate) fn set_identity_file(&self, path: PathBuf) -> Result<(), String> {
        self.before_start(|s| s.identity = Some(path))
    }

    /// `pr_fogconnect_add_relay`.
    pub(crate) fn add_relay(&self, url: String, username: String, password: String) -> Result<(), String> {
        // Checked now, so the error comes from this call.
        url.parse::<fogconnect::relay::url::TurnUrl>().map_err(|e| format!("relay {url:?}: {e}"))?;
        self.before_start(|s| s.relays.push((url, username, password)))
    }

    /// `pr_fogconnect_load_plugin`: now, or when the node starts.
    #[cfg(feature = "plugins")]
    pub(crate) fn load_plugin(&self, service: u8, path: PathBuf) -> Result<(), String> {
        let _starting = lock(&self.starting);
        match self.node.get() {
            Some(node) => {
                self.runtime.block_on(node.load_plugin(service, &path)).map_err(|e| format!("{}: {e}", path.display()))
            }
            None => {
                let mut settings = lock(&self.settings);
                if settings.plugins.iter().any(|(s, _)| *s == service) {
                    return Err(format!("service {service} already has a plugin to load"));
                }
                settings.plugins.push((service, path));
                Ok(())
            }
        }
    }

    /// `pr_init_signal`: starts the node (once) and waits for the
    /// registration. `Ok(None)` registered, `Ok(Some(why))` not (refused,
    /// or not within [`REGISTRATION_WAIT`]); `Err` when the node cannot
    /// start.
    pub(crate) fn start(&self, target: SignalTarget) -> Result<Option<String>, String> {
        let node = {
            let _starting = lock(&self.starting);
            match self.node.get() {
                Some(node) => node.clone(),
                None => self.start_node(target)?,
            }
        };
        match self.runtime.block_on(node.registered(REGISTRATION_WAIT)) {
            Ok(()) => Ok(None),
            Err(e) => {
                tracing::warn!("not registered with signaling: {e} (still trying in the background)");
                Ok(Some(format!("not registered with signaling: {e}")))
            }
        }
    }

    /// `iv_avt_p2p_init`: serves the device's streams now (`Some`), or
    /// from the start (`None`), when its keep-alive and address apply too.
    /// `Err((taken, why))`.
    pub(crate) fn serve_streams(&self, pending: PendingStreams) -> Result<Option<StreamServiceHandle>, (bool, String)> {
        let _starting = lock(&self.starting);
        match self.node.get() {
            Some(node) => {
                let service = pending.service;
                node.serve_streams(service, pending.implementation).map(Some).map_err(|e| {
                    (matches!(e, NodeError::ServiceTaken(_)), format!("cannot serve streams on service {service}: {e}"))
                })
            }
            None => {
                let mut settings = lock(&self.settings);
                if let Some(listen) = pending.listen {
                    settings.listen = listen;
                }
                settings.streams = Some(pending);
                Ok(None)
            }
        }
    }

    /// `iv_avt_p2p_exit` before the start.
    pub(crate) fn drop_pending_streams(&self) {
        let _starting = lock(&self.starting);
        lock(&self.settings).streams = None;
    }

    fn start_node(&self, target: SignalTarget) -> Result<Node, String> {
        let mut settings = lock(&self.settings);
        let streams = settings.streams.take();
        let token = settings.token.clone().ok_or(
            "no signaling token: set FOGCONNECT_TOKEN or call pr_fogconnect_set_token (tokens come from `fogconnect signal token --id ID`)",
        )?;
        let mut builder = Node::builder().configure(|c| c.listen = settings.listen).signal(target.url, token);
        if let Some(id) = node_id() {
            builder = builder.node_id(id);
        }
        if let Some(ca) = target.ca {
            builder = builder.signal_ca(ca);
        }
        if let Some(identity) = &settings.identity {
            builder = builder.identity_file(identity.clone());
        }
        if let Some(stun) = &settings.stun {
            builder = builder.stun(stun.clone());
        }
        for (url, username, password) in &settings.relays {
            builder = builder.relay(url, username.clone(), password.clone()).map_err(|e| e.to_string())?;
        }
        #[cfg(feature = "plugins")]
        for (service, path) in &settings.plugins {
            builder = builder.plugin(*service, path.clone());
        }
        drop(settings);
        let serving = match streams {
            Some(streams) => {
                if let Some((interval, attempts)) = streams.keep_alive {
                    builder = builder.configure(|c| {
                        c.keep_alive_interval = interval;
                        c.keep_alive_attempts = attempts;
                    });
                }
                let _runtime = self.runtime.enter();
                let service = streams.service;
                let serving = builder
                    .serve_streams(service, streams.implementation)
                    .map_err(|e| format!("cannot serve streams on service {service}: {e}"))?;
                Some(serving)
            }
            None => None,
        };
        let mut passive = lock(&self.passive);
        let incoming = match passive.callback {
            Some(_) => Some(builder.incoming_default().map_err(|e| e.to_string())?),
            None => None,
        };
        let events = builder.events();
        let node = self.runtime.block_on(builder.start()).map_err(|e| format!("cannot start: {e}"))?;
        self.forward_node_events(events);
        let _ = self.node.set(node.clone());
        if let Some(serving) = serving {
            crate::avt::started(self.handle, serving);
        }
        if let Some(incoming) = incoming {
            passive.accepting = Some(self.accept(incoming));
        }
        Ok(node)
    }

    /// `pr_fogconnect_set_callback`.
    pub(crate) fn set_passive_callback(self: &Arc<Self>, callback: Option<ConnectCallback>) -> Result<(), String> {
        let _starting = lock(&self.starting);
        let mut passive = lock(&self.passive);
        passive.callback = callback;
        match (callback, self.node.get()) {
            (None, _) => {
                if let Some(accepting) = passive.accepting.take() {
                    // Waited for: the loop's end frees the service numbers
                    // (a callback set again right after must find them free).
                    accepting.stop.cancel();
                    let _ = self.runtime.block_on(accepting.task);
                }
            }
            (Some(_), Some(node)) if passive.accepting.is_none() => {
                let incoming = node.incoming_default().map_err(|e| e.to_string())?;
                passive.accepting = Some(self.accept(incoming));
            }
            // Not started: the node starts accepting when it starts.
            (Some(_), _) => {}
        }
        Ok(())
    }

    /// Starts the accept loop of passive connections.
    fn accept(&self, mut incoming: Incoming) -> AcceptLoop {
        let stop = self.released.child_token();
        let events = self.sender();
        let context = self.handle;
        let released = self.released.clone();
        let stopped = stop.clone();
        let task = self.runtime.spawn(async move {
            let Ok(events) = events else { return };
            loop {
                let conn = tokio::select! {
                    conn = incoming.accept() => conn,
                    () = stopped.cancelled() => None,
                };
                let Some(conn) = conn else { return };
                let Some(entry) = adopt(context, &released, true, ConnState::default()) else { return };
                tokio::spawn(connection::run_passive(entry, conn, events.clone()));
            }
        });
        AcceptLoop { stop, task }
    }

    /// `pr_connect_peer`: starts a connect; the handle it will be known by.
    pub(crate) fn connect(
        &self,
        peer: String,
        transport: Transport,
        service: u8,
        callback: ConnectCallback,
        cbarg: usize,
    ) -> Result<usize, String> {
        let node = self.node().ok_or("the context has not joined signaling: call pr_init_signal first")?;
        let events = self.sender()?;
        let state = ConnState {
            convention: fogconnect::Convention::new(transport, service).raw(),
            cbarg,
            on_connect: Some(callback),
            ..ConnState::default()
        };
        let entry = adopt(self.handle, &self.released, false, state).ok_or("the context is being released")?;
        let handle = entry.handle;
        self.runtime.spawn(connection::run_active(entry, node, peer, transport, service, events));
        Ok(handle)
    }

    /// Asks the callback thread to deliver `entry`'s held messages.
    pub(crate) fn flush(&self, entry: Arc<ConnEntry>) {
        let Ok(events) = self.sender() else { return };
        if let Err(mpsc::error::TrySendError::Full(event)) = events.try_send(Dispatch::Flush(entry)) {
            self.runtime.spawn(async move { events.send(event).await });
        }
    }

    /// Forgets a connection whose final notification was given.
    pub(crate) fn forget_connection(&self, handle: usize) {
        lock(&self.connections).remove(&handle);
    }

    /// Every connection handle still known (at the very end).
    pub(crate) fn take_connections(&self) -> Vec<usize> {
        lock(&self.connections).drain().collect()
    }

    /// `pr_fogconnect_release`: ends every connection (each notified on
    /// the callback thread), then the thread stops the node and ends. Waits
    /// for all of it unless called on the callback thread itself.
    pub(crate) fn release(&self) {
        CONTEXTS.remove(self.handle);
        let handles: Vec<usize> = lock(&self.connections).iter().copied().collect();
        for handle in handles {
            if let Some(entry) = CONNECTIONS.get(crate::handles::to_ptr(handle)) {
                entry.end_here(EVENT_EOF, "context released");
            }
        }
        self.released.cancel();
        drop(lock(&self.events).take());
        if self.thread_id.get() == Some(&std::thread::current().id()) {
            return;
        }
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

/// A new connection handle of context `context`, or `None` when the context
/// is being released.
fn adopt(context: usize, released: &CancellationToken, passive: bool, state: ConnState) -> Option<Arc<ConnEntry>> {
    let owner = CONTEXTS.get(crate::handles::to_ptr(context))?;
    let handle = next_handle();
    let entry = Arc::new(ConnEntry::new(handle, context, passive, released.child_token(), state));
    lock(&owner.connections).insert(handle);
    CONNECTIONS.insert(handle, entry.clone());
    if released.is_cancelled() {
        // Released between the lookup and now: end it at once (its task
        // reports it).
        entry.end_here(EVENT_EOF, "context released");
    }
    Some(entry)
}

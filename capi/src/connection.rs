//! One connection as C sees it: its handle's state, and the task that
//! carries its events from the Rust [`Connection`] to the callback thread.

use std::collections::VecDeque;
use std::ffi::{c_int, c_short, c_void};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use fogconnect::{CloseKind, Connection, ConnectionActivity, ConnectionSender, Node, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::callbacks::Dispatch;

/// `pr_callback_t`.
pub(crate) type ConnectCallback = unsafe extern "C" fn(*mut c_void, c_short, *mut c_void);
/// `pr_recv_peer_t`.
pub(crate) type RecvCallback = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void, c_int);
/// `pr_close_peer_t`.
pub(crate) type CloseCallback = unsafe extern "C" fn(*mut c_void, *mut c_void);

/// `PR_EVENT_EOF`.
pub(crate) const EVENT_EOF: c_short = 0x10;
/// `PR_EVENT_ERROR`.
pub(crate) const EVENT_ERROR: c_short = 0x20;
/// `PR_EVENT_TIMEOUT`.
pub(crate) const EVENT_TIMEOUT: c_short = 0x40;
/// `PR_EVENT_CONNECTED`.
pub(crate) const EVENT_CONNECTED: c_short = 0x80;

/// Bytes of messages held for a connection without a receive callback;
/// beyond, the connection is closed with an error rather than growing
/// without bound.
pub(crate) const MAX_HELD_BYTES: usize = 8 << 20;

/// The event that tells a connect callback how a connection ended.
pub(crate) fn event_of(kind: CloseKind) -> c_short {
    match kind {
        CloseKind::Eof | CloseKind::Local => EVENT_EOF,
        CloseKind::Timeout => EVENT_TIMEOUT,
        CloseKind::Error | CloseKind::Refused => EVENT_ERROR,
    }
}

/// A connection handle's state.
pub(crate) struct ConnEntry {
    /// The handle C holds.
    pub(crate) handle: usize,
    /// The context's handle.
    pub(crate) context: usize,
    /// True when the peer dialled.
    pub(crate) passive: bool,
    /// Cancelled to end the connection here (by the application, by the
    /// context's release, or for too many held messages).
    pub(crate) close: CancellationToken,
    state: Mutex<ConnState>,
}

/// What changes over a connection's life.
#[derive(Default)]
pub(crate) struct ConnState {
    pub(crate) convention: u32,
    pub(crate) cbarg: usize,
    pub(crate) on_connect: Option<ConnectCallback>,
    pub(crate) on_recv: Option<RecvCallback>,
    pub(crate) on_close: Option<CloseCallback>,
    /// Set once established.
    pub(crate) sender: Option<ConnectionSender>,
    /// The peer's id and whether signaling vouched for it, once
    /// established.
    pub(crate) peer: Option<(String, bool)>,
    /// The last error, for `pr_errno_mgs`.
    pub(crate) error: String,
    /// Why this side is ending the connection, when it is: the event for
    /// the connect callback and the reason.
    pub(crate) ending: Option<(c_short, String)>,
    /// Messages that arrived while no receive callback was set.
    pub(crate) held: VecDeque<Bytes>,
    pub(crate) held_bytes: usize,
    /// The final notification has been dispatched.
    pub(crate) ended: bool,
}

impl ConnEntry {
    /// A connection of context `context`; `close` ends it (a child of the
    /// context's release token).
    pub(crate) fn new(
        handle: usize,
        context: usize,
        passive: bool,
        close: CancellationToken,
        state: ConnState,
    ) -> Self {
        Self { handle, context, passive, close, state: Mutex::new(state) }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the last error.
    pub(crate) fn fail(&self, message: impl Into<String>) {
        self.state().error = message.into();
    }

    /// Ends the connection from this side with `event` and `reason` (the
    /// first reason given wins).
    pub(crate) fn end_here(&self, event: c_short, reason: impl Into<String>) {
        self.state().ending.get_or_insert_with(|| (event, reason.into()));
        self.close.cancel();
    }

    fn established(&self, conn: &Connection) {
        let mut state = self.state();
        state.convention = conn.convention().raw();
        state.sender = Some(conn.sender());
        state.peer = Some((conn.peer_id().to_string(), conn.peer_verified()));
    }

    /// Why this side ended it, or the default.
    fn ending(&self, default: &str) -> (c_short, String) {
        self.state().ending.clone().unwrap_or((EVENT_EOF, default.to_string()))
    }
}

/// Dials `peer` for `entry` and, once connected, carries the connection.
pub(crate) async fn run_active(
    entry: Arc<ConnEntry>,
    node: Node,
    peer: String,
    transport: Transport,
    service: u8,
    events: mpsc::Sender<Dispatch>,
) {
    let result = tokio::select! {
        result = node.connect_peer(&peer, transport, service) => result,
        () = entry.close.cancelled() => {
            let (_, reason) = entry.ending("connect cancelled by the application");
            let _ = events.send(Dispatch::Ended { entry, event: EVENT_ERROR, reason, connected: false }).await;
            return;
        }
    };
    match result {
        Ok(conn) => {
            entry.established(&conn);
            if events.send(Dispatch::Connected(entry.clone())).await.is_ok() {
                run_open(entry, conn, events).await;
            }
        }
        Err(e) => {
            let event = event_of(e.close_reason().kind);
            let event = if event == EVENT_EOF { EVENT_ERROR } else { event };
            let _ = events.send(Dispatch::Ended { entry, event, reason: e.to_string(), connected: false }).await;
        }
    }
}

/// Announces a passive connection and carries it.
pub(crate) async fn run_passive(entry: Arc<ConnEntry>, conn: Connection, events: mpsc::Sender<Dispatch>) {
    entry.established(&conn);
    if events.send(Dispatch::Connected(entry.clone())).await.is_ok() {
        run_open(entry, conn, events).await;
    }
}

/// Carries an established connection's messages and its ending to the
/// callback thread.
async fn run_open(entry: Arc<ConnEntry>, mut conn: Connection, events: mpsc::Sender<Dispatch>) {
    loop {
        tokio::select! {
            biased;
            () = entry.close.cancelled() => {
                conn.close();
                let (event, reason) = entry.ending("closed by the application");
                let _ = events.send(Dispatch::Ended { entry, event, reason, connected: true }).await;
                return;
            }
            event = conn.next_activity() => match event {
                ConnectionActivity::Message(data) => {
                    if events.send(Dispatch::Message(entry.clone(), data)).await.is_err() {
                        return;
                    }
                }
                ConnectionActivity::Network(event) => {
                    let (code, detail) = crate::events::code_of_network(&event);
                    if events.send(Dispatch::Network { entry: Some(entry.clone()), code, detail }).await.is_err() {
                        return;
                    }
                }
                ConnectionActivity::Closed(reason) => {
                    let event = event_of(reason.kind);
                    let _ = events
                        .send(Dispatch::Ended { entry, event, reason: reason.to_string(), connected: true })
                        .await;
                    return;
                }
            }
        }
    }
}

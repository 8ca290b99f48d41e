//! The callback thread of a context: every C callback of the context runs
//! here, one at a time, in the order the events happened. No lock of ours
//! is held while C runs, so a callback may call any function.

use std::ffi::c_int;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::connection::{ConnEntry, EVENT_CONNECTED, EVENT_ERROR, MAX_HELD_BYTES};
use crate::context::Context;
use crate::guard::guard;
use crate::handles::{CONNECTIONS, to_ptr};

/// What the callback thread is asked to do.
pub(crate) enum Dispatch {
    /// A connection is established: the connect callback with CONNECTED.
    Connected(Arc<ConnEntry>),
    /// A message arrived.
    Message(Arc<ConnEntry>, Bytes),
    /// A receive callback was set: deliver held messages.
    Flush(Arc<ConnEntry>),
    /// A network event: of a connection (`entry`), or of the node.
    Network {
        /// The connection it concerns, `None` for the node's own.
        entry: Option<Arc<ConnEntry>>,
        /// The `PR_NET_EVENT_*` code.
        code: c_int,
        /// What happened, in words.
        detail: String,
    },
    /// The connection ended (or its connect failed, `connected` false):
    /// its one final notification.
    Ended {
        /// The connection.
        entry: Arc<ConnEntry>,
        /// The event for the connect callback.
        event: std::ffi::c_short,
        /// Why, for `pr_errno_mgs`.
        reason: String,
        /// Whether it was established (a close callback applies).
        connected: bool,
    },
}

/// Runs the context's callbacks until every sender is gone (the context
/// was released and every connection notified), then stops the node and
/// the runtime.
pub(crate) fn run(mut events: mpsc::Receiver<Dispatch>, runtime: tokio::runtime::Runtime, context: Arc<Context>) {
    let mut buffer = Vec::new();
    while let Some(event) = events.blocking_recv() {
        guard((), || dispatch(event, &context, &mut buffer));
    }
    if let Some(node) = context.node() {
        runtime.block_on(node.shutdown());
    }
    // Connections whose tasks ended without a notification (none should)
    // are forgotten with the context.
    for handle in context.take_connections() {
        CONNECTIONS.remove(handle);
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
}

fn dispatch(event: Dispatch, context: &Context, buffer: &mut Vec<u8>) {
    match event {
        Dispatch::Connected(entry) => {
            let (callback, cbarg) = {
                let mut state = entry.state();
                if entry.passive {
                    state.on_connect = context.passive_callback();
                }
                (state.on_connect, state.cbarg)
            };
            match callback {
                // SAFETY: a C function pointer the application gave for
                // exactly this signature.
                Some(callback) => unsafe { callback(to_ptr(entry.handle), EVENT_CONNECTED, to_ptr(cbarg)) },
                // The passive callback was removed meanwhile: nobody takes
                // the connection.
                None => entry.end_here(EVENT_ERROR, "the application stopped accepting connections"),
            }
        }
        Dispatch::Message(entry, data) => {
            if !flush(&entry, buffer) {
                hold(&entry, data);
                return;
            }
            deliver(&entry, &data, buffer);
        }
        Dispatch::Flush(entry) => {
            flush(&entry, buffer);
        }
        Dispatch::Network { entry, code, detail } => {
            if entry.as_ref().is_some_and(|entry| entry.state().ended) {
                return;
            }
            let Some((callback, cbarg)) = context.event_callback() else { return };
            // Network text holds no NUL; a stray one would only cut it short.
            let detail = std::ffi::CString::new(detail.replace('\0', " ")).unwrap_or_default();
            let conn = entry.map_or(std::ptr::null_mut(), |entry| to_ptr(entry.handle));
            // SAFETY: a C function pointer the application gave for this
            // signature; the text lives until it returns.
            unsafe { callback(to_ptr(context.handle), conn, code, detail.as_ptr(), to_ptr(cbarg)) };
        }
        Dispatch::Ended { entry, event, reason, connected } => {
            flush(&entry, buffer);
            let (on_connect, on_close, cbarg) = {
                let mut state = entry.state();
                state.ended = true;
                state.error = reason;
                state.held.clear();
                (state.on_connect, state.on_close, state.cbarg)
            };
            match (connected, on_close, on_connect) {
                // SAFETY (both): C function pointers the application gave
                // for these signatures.
                (true, Some(on_close), _) => unsafe { on_close(to_ptr(entry.handle), to_ptr(cbarg)) },
                (_, _, Some(on_connect)) => unsafe { on_connect(to_ptr(entry.handle), event, to_ptr(cbarg)) },
                _ => {}
            }
            CONNECTIONS.remove(entry.handle);
            context.forget_connection(entry.handle);
        }
    }
}

/// Delivers held messages if a receive callback is set; false when none
/// is (so a new message must be held too, to keep the order).
fn flush(entry: &ConnEntry, buffer: &mut Vec<u8>) -> bool {
    loop {
        let next = {
            let mut state = entry.state();
            if state.on_recv.is_none() || state.ended {
                return false;
            }
            match state.held.pop_front() {
                Some(data) => {
                    state.held_bytes -= data.len();
                    data
                }
                None => return true,
            }
        };
        deliver(entry, &next, buffer);
    }
}

fn hold(entry: &ConnEntry, data: Bytes) {
    let overflow = {
        let mut state = entry.state();
        if state.ended {
            return;
        }
        state.held_bytes += data.len();
        state.held.push_back(data);
        state.held_bytes > MAX_HELD_BYTES
    };
    if overflow {
        entry.end_here(
            EVENT_ERROR,
            format!("no receive callback set: more than {MAX_HELD_BYTES} bytes of messages held"),
        );
    }
}

/// Calls the receive callback with `data` followed by a NUL byte.
fn deliver(entry: &ConnEntry, data: &[u8], buffer: &mut Vec<u8>) {
    let (on_recv, cbarg) = {
        let state = entry.state();
        (state.on_recv, state.cbarg)
    };
    let Some(on_recv) = on_recv else { return };
    buffer.clear();
    buffer.extend_from_slice(data);
    buffer.push(0);
    let size = c_int::try_from(data.len()).unwrap_or(c_int::MAX);
    // SAFETY: a C function pointer the application gave for this
    // signature; the buffer outlives the call.
    unsafe { on_recv(to_ptr(entry.handle), to_ptr(cbarg), buffer.as_mut_ptr().cast(), size) };
    // A large message's buffer is not kept for the next small ones.
    if buffer.capacity() > 1 << 20 {
        *buffer = Vec::new();
    }
}

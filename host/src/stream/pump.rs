//! Moves a stream connection's queued messages into the connection: a
//! tokio task per connection that keeps the connection's own send buffer
//! short (under [`PUMP_WATER`] bytes), so the data waits in the per-stream
//! queues of the [`SendMux`] where it is counted per stream, and the
//! streams take turns.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::mux::SendMux;
use crate::transport::conn::ConnShared;

/// Bytes the pump lets wait in the connection's send buffer (beyond what
/// QUIC's own send window holds).
pub const PUMP_WATER: usize = 64 * 1024;

/// The send queues of one connection and the signal that they have data.
#[derive(Debug)]
pub struct MuxShared {
    /// The queues.
    pub mux: Mutex<SendMux>,
    /// Signalled after data or an end was queued.
    pub queued: tokio::sync::Notify,
}

impl MuxShared {
    /// Empty queues for messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Arc<Self> {
        Arc::new(Self { mux: Mutex::new(SendMux::new(max_message)), queued: tokio::sync::Notify::new() })
    }

    /// Locks the queues (a poisoned lock is taken over: the queues stay
    /// consistent between method calls).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SendMux> {
        self.mux.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs until `stop` is cancelled or the connection ends.
pub async fn pump(conn: Arc<ConnShared>, queues: Arc<MuxShared>, stop: CancellationToken) {
    loop {
        // Room in the connection first, then take the message: what waits
        // stays counted in its stream's queue.
        let open = tokio::select! {
            open = conn.wait_buffered_below(PUMP_WATER) => open,
            _ = stop.cancelled() => return,
        };
        if !open {
            return;
        }
        let next = loop {
            let queued = queues.queued.notified();
            if let Some(out) = queues.lock().pop() {
                break out;
            }
            tokio::select! {
                _ = queued => {}
                _ = stop.cancelled() => return,
            }
        };
        if conn.send(next.message).is_err() {
            return;
        }
    }
}

//! A connection of the KCP transport: made and watched over its link like
//! every connection (a QUIC stream carries the handshake; the link's
//! keep-alive notices a peer that vanished), while its messages and its
//! close travel in a KCP session on the node's UDP socket, sealed with
//! keys exported from the link's TLS session.
//!
//! One task drives the session: the owner's messages in (as far as KCP's
//! window allows, so the connection's send buffer pushes back), the
//! socket's datagrams in, KCP's timer while data is unacknowledged, and
//! the stream's end (the link or the peer gone).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};

use super::conn::{CloseKind, CloseReason, ConnShared, LiveGuard, Outbound, next_link_event, reason_of_read_error};
use super::socket::{FogSocket, KcpRegistration};
use crate::events::NetworkEvent;
use crate::kcp::envelope::KEYING_MATERIAL_LEN;
use crate::kcp::session::{KcpSession, WINDOW};
use crate::kcp::{KcpDrops, KcpStats};
use crate::transport::wire::{CloseCode, Frame};

/// The TLS exporter label of a connection's KCP keys.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-fogconnect-kcp";
/// Datagrams waiting for a session's task before the socket drops more.
const INBOX_CAPACITY: usize = 1024;
/// Packets queued in KCP (in flight or waiting for the window) beyond
/// which the owner's messages wait in the connection's send buffer.
const MAX_QUEUED_PACKETS: usize = 2 * WINDOW as usize;

/// What a KCP connection needs besides its stream: the session and its
/// place on the node's socket.
#[derive(Debug)]
pub(crate) struct KcpSetup {
    session: KcpSession,
    registration: KcpRegistration,
    counters: Arc<KcpCounters>,
}

impl KcpSetup {
    /// Derives the session of the connection on `stream_id` of `quic`
    /// (both sides derive the same conversation id and keys; `dialler`
    /// tells which half of the keys this side seals with) and registers
    /// it on `socket`.
    ///
    /// # Errors
    /// Why the link cannot carry a KCP session.
    pub(crate) fn new(
        quic: &quinn::Connection,
        socket: &FogSocket,
        stream_id: u64,
        dialler: bool,
        max_message_size: usize,
    ) -> Result<Self, String> {
        let mut material = [0u8; 4 + KEYING_MATERIAL_LEN];
        quic.export_keying_material(&mut material, EXPORTER_LABEL, &stream_id.to_be_bytes())
            .map_err(|_| "the link cannot export keys for KCP".to_string())?;
        let (id, keys) = material.split_at(4);
        let conversation = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
        let registration = socket
            .register_kcp(conversation, INBOX_CAPACITY)
            .ok_or_else(|| format!("KCP conversation {conversation:#010x} is in use on this node; connect again"))?;
        let session = KcpSession::new(conversation, keys, dialler, max_message_size, Instant::now())
            .map_err(|e| e.to_string())?;
        Ok(Self { session, registration, counters: Arc::new(KcpCounters::new(conversation)) })
    }

    /// The session's counters, which the connection's `stats` reads.
    pub(crate) fn counters(&self) -> Arc<KcpCounters> {
        self.counters.clone()
    }
}

/// A KCP connection's counters, read by `stats`.
#[derive(Debug)]
pub(crate) struct KcpCounters {
    conversation: u32,
    forged: AtomicU64,
    replayed: AtomicU64,
    malformed: AtomicU64,
}

impl KcpCounters {
    fn new(conversation: u32) -> Self {
        Self { conversation, forged: AtomicU64::new(0), replayed: AtomicU64::new(0), malformed: AtomicU64::new(0) }
    }

    fn store(&self, drops: KcpDrops) {
        self.forged.store(drops.forged, Ordering::Relaxed);
        self.replayed.store(drops.replayed, Ordering::Relaxed);
        self.malformed.store(drops.malformed, Ordering::Relaxed);
    }

    /// The counters now.
    pub(crate) fn stats(&self) -> KcpStats {
        KcpStats {
            conversation: self.conversation,
            drops: KcpDrops {
                forged: self.forged.load(Ordering::Relaxed),
                replayed: self.replayed.load(Ordering::Relaxed),
                malformed: self.malformed.load(Ordering::Relaxed),
            },
        }
    }
}

/// Everything the task drives.
pub(crate) struct KcpTask {
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) setup: KcpSetup,
    pub(crate) quic: quinn::Connection,
    pub(crate) socket: Arc<FogSocket>,
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    pub(crate) outbound: mpsc::UnboundedReceiver<Outbound>,
    pub(crate) link_events: Option<broadcast::Receiver<NetworkEvent>>,
    pub(crate) close_grace: Duration,
    pub(crate) live: LiveGuard,
}

/// How one step of the task ended the connection, if it did.
enum Step {
    Go,
    /// Ended: report `reason` to the owner (`None`: nothing to report).
    End(Option<CloseReason>),
}

impl KcpTask {
    /// Drives the connection until it ends.
    pub(crate) async fn run(mut self) {
        // A close this side started waits (bounded) for KCP to deliver
        // everything before it, the close included.
        let mut closing: Option<tokio::time::Instant> = None;
        let reason = loop {
            self.transmit();
            if let Some(deadline) = closing
                && (self.setup.session.unacknowledged() == 0 || tokio::time::Instant::now() >= deadline)
            {
                break None;
            }
            let timer = self.setup.session.poll_timeout(Instant::now()).map(tokio::time::Instant::from_std);
            let wake = [timer, closing].into_iter().flatten().min();
            let room = self.setup.session.unacknowledged() < MAX_QUEUED_PACKETS;
            let step = tokio::select! {
                biased;
                _ = self.shared.cancelled() => Step::End(None),
                datagram = self.setup.registration.inbox.recv() => match datagram {
                    Some(datagram) => self.received(datagram.to_vec()).await,
                    None => Step::End(None),
                },
                command = self.outbound.recv(), if closing.is_none() && room => match command {
                    Some(Outbound::Data(payload)) => {
                        let sent = self.setup.session.send(&payload, Instant::now());
                        self.shared.dequeued(payload.len(), 1, sent.is_ok());
                        match sent {
                            Ok(()) => Step::Go,
                            Err(e) => Step::End(Some(CloseReason::new(CloseKind::Error, e.to_string()))),
                        }
                    }
                    Some(Outbound::Close(code, message)) => {
                        let close = Frame::Close { code, message };
                        match self.setup.session.send_control(&close, Instant::now()) {
                            Ok(()) => {
                                closing = Some(tokio::time::Instant::now() + self.close_grace);
                                Step::Go
                            }
                            Err(_) => Step::End(None),
                        }
                    }
                    Some(Outbound::Finish) | None => Step::End(None),
                },
                () = sleep_until(wake) => match self.setup.session.handle_timeout(Instant::now()) {
                    Ok(()) => Step::Go,
                    Err(e) => Step::End(Some(CloseReason::new(CloseKind::Error, e.to_string()))),
                },
                event = next_link_event(&mut self.link_events) => {
                    self.shared.network_event(event).await;
                    Step::Go
                }
                // After the handshake the stream carries nothing: its end
                // means the peer's node or the link is gone.
                read = self.recv.read_chunk(1024, true) => match read {
                    Ok(Some(_)) => Step::Go,
                    Ok(None) => Step::End(Some(CloseReason::new(CloseKind::Error, "peer ended the connection's stream"))),
                    Err(e) => Step::End(Some(reason_of_read_error(&e))),
                },
            };
            if let Step::End(reason) = step {
                break reason;
            }
        };
        self.transmit();
        if let Some(reason) = reason {
            self.shared.report_end(reason).await;
        }
        let _ = self.send.finish();
        self.shared.cancel();
        drop(self.live);
    }

    /// Takes one datagram from the socket and delivers what it completed.
    async fn received(&mut self, mut datagram: Vec<u8>) -> Step {
        let handled = self.setup.session.handle_datagram(&mut datagram, Instant::now());
        self.setup.counters.store(self.setup.session.drops());
        if let Err(e) = handled {
            let reason = e.to_string();
            self.shared.fail(reason.clone());
            return Step::End(Some(CloseReason::new(CloseKind::Error, reason)));
        }
        while let Some(frame) = self.setup.session.poll_frame() {
            match frame {
                Frame::Data(payload) => {
                    if !self.shared.deliver(payload).await {
                        return Step::End(None);
                    }
                }
                Frame::Close { code, message } => {
                    // Acknowledge it before going.
                    self.transmit();
                    return Step::End(Some(match code {
                        CloseCode::Normal => CloseReason::new(CloseKind::Eof, message),
                        CloseCode::Error => CloseReason::new(CloseKind::Error, format!("peer: {message}")),
                    }));
                }
                other => {
                    let reason = format!("protocol: unexpected {other:?} frame in KCP");
                    self.shared.fail(reason.clone());
                    return Step::End(Some(CloseReason::new(CloseKind::Error, reason)));
                }
            }
        }
        Step::Go
    }

    /// Sends every sealed datagram the session has, on the link's path.
    fn transmit(&mut self) {
        let remote = self.quic.remote_address();
        while let Some(datagram) = self.setup.session.poll_transmit() {
            if let Err(e) = self.socket.send_on_path(&datagram, remote) {
                tracing::debug!(%remote, "KCP send failed: {e}");
            }
        }
    }
}

/// Sleeps until `at`; pends forever for `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

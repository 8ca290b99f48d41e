//! What happens under each link, as events: its path (kind and remote
//! address) and whether it still hears from its peer. Every connection on
//! the link gets the events in order with its messages; the node's event
//! stream gets them with the peer's id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};

use crate::events::{NetworkEvent, NodeEvent, PathInfo};
use crate::transport::conn::LiveConnections;
use crate::transport::datagram::DatagramRoutes;
use crate::transport::liveness::{Liveness, answer_eliciting, min_silence};
use crate::transport::socket::FogSocket;

/// Events of one link not yet taken by a slow connection before the
/// oldest are dropped (a connection that lags misses events, never
/// messages). Links change rarely; every slot costs each link memory.
const LINK_EVENT_CAPACITY: usize = 4;

/// The events of one link and what its monitor knows.
pub(super) struct LinkWatch {
    events: broadcast::Sender<NetworkEvent>,
    /// The peer's id as its connections show it (set by the first one).
    peer: OnceLock<String>,
    /// Pokes the monitor to look at the path now (a route changed).
    look_now: Notify,
    /// Whether a supervisor looks after the link's path (one at most).
    supervised: AtomicBool,
    /// Asks the supervisor to look for a path now (the network changed).
    repair: Notify,
    silent: AtomicBool,
    /// The connections this node opened on the link and still holds.
    pub(super) opened: Arc<LiveConnections>,
    /// Which connection each of the link's datagrams is for (UDP
    /// transport).
    pub(super) datagrams: Arc<DatagramRoutes>,
}

impl LinkWatch {
    /// A receiver of the link's events from now on.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<NetworkEvent> {
        self.events.subscribe()
    }

    /// Names the peer for the node's events (the first name sticks).
    pub(super) fn name_peer(&self, peer: &str) {
        let _ = self.peer.set(peer.to_string());
    }

    /// Asks the monitor to look at the path at once.
    pub(super) fn look_now(&self) {
        self.look_now.notify_one();
    }

    /// Claims the supervision of the link; true for the first caller.
    pub(super) fn claim_supervision(&self) -> bool {
        !self.supervised.swap(true, Ordering::AcqRel)
    }

    /// Resolves when the link should look for a path now.
    pub(super) async fn repair_wanted(&self) {
        self.repair.notified().await;
    }

    /// Whether the link is silent now.
    pub(super) fn is_silent(&self) -> bool {
        self.silent.load(Ordering::Acquire)
    }
}

/// The watches of the node's live links, by link id.
#[derive(Default)]
pub(super) struct LinkWatches(Mutex<HashMap<usize, Arc<LinkWatch>>>);

impl LinkWatches {
    /// The watch of `quic`, made on first use.
    pub(super) fn of(&self, quic: &quinn::Connection) -> Arc<LinkWatch> {
        let mut watches = self.0.lock().unwrap_or_else(|p| p.into_inner());
        watches
            .entry(quic.stable_id())
            .or_insert_with(|| {
                Arc::new(LinkWatch {
                    events: broadcast::channel(LINK_EVENT_CAPACITY).0,
                    peer: OnceLock::new(),
                    look_now: Notify::new(),
                    supervised: AtomicBool::new(false),
                    repair: Notify::new(),
                    silent: AtomicBool::new(false),
                    opened: Arc::default(),
                    datagrams: Arc::default(),
                })
            })
            .clone()
    }

    /// The watch of the live link `quic`, if it has one.
    pub(super) fn get(&self, quic: &quinn::Connection) -> Option<Arc<LinkWatch>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&quic.stable_id()).cloned()
    }

    /// Has every supervised link look for a path now.
    pub(super) fn repair_all(&self) {
        for watch in self.0.lock().unwrap_or_else(|p| p.into_inner()).values() {
            // Stored if the supervisor is busy, so it is not missed.
            watch.repair.notify_one();
        }
    }

    fn remove(&self, quic: &quinn::Connection) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&quic.stable_id());
    }
}

/// How often a link's counters and path are sampled: a tenth of the
/// keep-alive interval, within 100 ms..1 s.
pub(super) fn sample_interval(keep_alive: Duration) -> Duration {
    (keep_alive / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// The monitor of one link, driven by the link's task.
pub(super) struct LinkMonitor {
    watch: Arc<LinkWatch>,
    socket: Arc<FogSocket>,
    node_events: broadcast::Sender<NodeEvent>,
    liveness: Liveness,
    path: PathInfo,
}

impl LinkMonitor {
    /// Watches `quic`, whose peer is given up after `idle_timeout` of
    /// silence.
    pub(super) fn new(
        quic: &quinn::Connection,
        watch: Arc<LinkWatch>,
        socket: Arc<FogSocket>,
        node_events: broadcast::Sender<NodeEvent>,
        idle_timeout: Duration,
    ) -> Self {
        let stats = quic.stats();
        let floor = min_silence(idle_timeout);
        let liveness = Liveness::new(Instant::now(), stats.udp_rx.datagrams, answer_eliciting(&stats.frame_tx), floor);
        let path = socket.path_info(quic.remote_address());
        Self { watch, socket, node_events, liveness, path }
    }

    /// Resolves when the path should be looked at before the next sample.
    pub(super) async fn poked(&self) {
        self.watch.look_now.notified().await;
    }

    /// Samples the link now and publishes what changed.
    pub(super) fn sample(&mut self, quic: &quinn::Connection) {
        let path = self.socket.path_info(quic.remote_address());
        if path != self.path {
            let from = std::mem::replace(&mut self.path, path);
            self.publish(quic, NetworkEvent::PathChanged { from, to: path });
        }
        let stats = quic.stats();
        let change = self.liveness.observe(
            Instant::now(),
            stats.udp_rx.datagrams,
            answer_eliciting(&stats.frame_tx),
            quic.rtt(),
        );
        if let Some(event) = change {
            self.watch.silent.store(self.liveness.is_silent(), Ordering::Release);
            self.publish(quic, event);
        }
    }

    fn publish(&self, quic: &quinn::Connection, event: NetworkEvent) {
        // A link no connection named yet is shown by its certificate.
        let peer = self.watch.peer.get().cloned().unwrap_or_else(|| {
            crate::transport::identity::peer_fingerprint(quic)
                .map_or_else(|| "unknown".to_string(), |f| format!("{}{f}", crate::transport::wire::KEY_ID_PREFIX))
        });
        tracing::info!(%peer, "{event}");
        let _ = self.node_events.send(NodeEvent::Link { peer, event: event.clone() });
        let _ = self.watch.events.send(event);
    }

    /// The link ended: its watch goes.
    pub(super) fn finish(self, watches: &LinkWatches, quic: &quinn::Connection) {
        watches.remove(quic);
    }
}

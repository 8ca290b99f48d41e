//! The tokio side of browser connections: one task drives every
//! [`RtcAgent`] of the node, on the node's own UDP socket.
//!
//! The socket facade hands STUN and DTLS datagrams to the node's side
//! channel; [`RtcHost::claim`] takes those of browser connections (STUN for
//! an agent's ICE user fragment, anything from an address an agent sends
//! to). Once an agent's DataChannel opens, the connection is an ordinary
//! [`ConnShared`] over [`Carrier::Rtc`]: a writer task passes what the
//! owner sends to this task, a reader task passes what the browser sends to
//! the owner, in order, with its ending.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::agent::{AgentOutput, AgentPath, AgentPoll, RemoteCandidate, RtcAgent};
use crate::events::PathInfo;
use crate::transport::conn::{
    Carrier, CloseKind, CloseReason, ConnEvent, ConnLimits, ConnMeta, ConnShared, LiveGuard, Outbound, Owner, PathKind,
    path_of,
};
use crate::transport::socket::{FogSocket, PacketKind, SideDatagram};
use crate::transport::wire::CloseCode;

/// What a browser connection's carrier knows about its path, kept up to
/// date by the host task.
#[derive(Debug, Default)]
pub struct RtcLink {
    path: Mutex<AgentPath>,
    /// The node's relayed candidate, if it offered one.
    relayed_local: Option<SocketAddr>,
    /// The browser's relayed candidates (on its TURN server).
    remote_relays: Mutex<Vec<SocketAddr>>,
}

impl RtcLink {
    /// Which way the packets travel now and to where, once a pair is
    /// selected: relayed when either end of the pair is a relayed
    /// candidate.
    pub fn path(&self) -> Option<PathInfo> {
        let path = *self.path.lock().unwrap_or_else(|p| p.into_inner());
        let remote = path.remote?;
        let relayed = (path.local.is_some() && path.local == self.relayed_local)
            || self.remote_relays.lock().unwrap_or_else(|p| p.into_inner()).contains(&remote);
        Some(PathInfo { kind: if relayed { PathKind::Relayed } else { path_of(remote) }, remote })
    }

    /// The round-trip time, once measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.path.lock().unwrap_or_else(|p| p.into_inner()).rtt
    }

    fn update(&self, path: AgentPath) {
        *self.path.lock().unwrap_or_else(|p| p.into_inner()) = path;
    }
}

/// A browser connection waiting for its DataChannel: everything needed
/// to hand it to its service once it opens.
pub(crate) struct PendingBrowser {
    /// The browser's registered id and the request it made.
    pub from: String,
    /// The signaling request id (trickled candidates name it).
    pub request_id: u64,
    /// Facts of the connection (`remote` is filled in when it opens).
    pub meta: ConnMeta,
    /// Limits of the connection.
    pub limits: ConnLimits,
    /// Where its events go.
    pub owner: Owner,
    /// Whether the owner is told with [`ConnEvent::Opened`].
    pub announce: bool,
    /// Called with the established connection (a native handler takes it
    /// there; the node registers it).
    pub deliver: Box<dyn FnOnce(Arc<ConnShared>) + Send>,
    /// Counts the connection as live while its writer runs.
    pub live: LiveGuard,
    /// Dropped when the channel is not open by then.
    pub open_by: Instant,
    /// The node's relayed candidate, if it offered one: datagrams from it
    /// leave through the node's TURN allocation.
    pub relayed: Option<SocketAddr>,
}

/// Commands to the host task.
enum Command {
    Add(Box<RtcAgent>, Box<PendingBrowser>),
    Candidate { from: String, request_id: u64, line: String },
    Datagram { key: u64, from: SocketAddr, to: SocketAddr, data: Bytes, at: Instant },
    Outbound { key: u64, item: Outbound },
}

/// Where datagrams of browser connections go: by the agent's ICE user
/// fragment (STUN requests) and by the addresses an agent sends to.
#[derive(Default)]
struct Routes {
    table: Mutex<RouteTable>,
    /// Agents known; read without the lock on every side datagram.
    agents: AtomicUsize,
}

#[derive(Default)]
struct RouteTable {
    by_ufrag: HashMap<String, u64>,
    by_addr: HashMap<SocketAddr, u64>,
    /// Connections being set up (channel not open yet), by browser id.
    setting_up: HashMap<String, usize>,
}

impl RouteTable {
    fn set_up_done(&mut self, from: &str) {
        if let Some(count) = self.setting_up.get_mut(from) {
            *count -= 1;
            if *count == 0 {
                self.setting_up.remove(from);
            }
        }
    }
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Capacity of the host task's command queue.
const COMMAND_QUEUE: usize = 4096;

/// Most bytes received from a browser and not yet taken by the service;
/// a browser that sends faster than its service reads is cut off (SCTP
/// has no way to make it wait once str0m took the data).
pub const MAX_INBOUND_QUEUE: usize = 8 * 1024 * 1024;

/// The key of an agent the task has not taken yet (keys start at 1).
const UNKNOWN_KEY: u64 = 0;

/// Trickled candidates taken per connection; more are ignored.
const MAX_REMOTE_CANDIDATES: usize = 32;

/// The handle of the node's browser-connection task.
#[derive(Clone)]
pub struct RtcHost {
    commands: mpsc::Sender<Command>,
    routes: Arc<Routes>,
}

impl std::fmt::Debug for RtcHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtcHost").field("agents", &self.routes.agents.load(Ordering::Relaxed)).finish()
    }
}

impl RtcHost {
    /// Starts the task on `socket`; it ends with `shutdown`.
    pub fn start(socket: Arc<FogSocket>, shutdown: CancellationToken) -> Self {
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let routes = Arc::new(Routes::default());
        let host = Self { commands: commands.clone(), routes: routes.clone() };
        let task =
            HostTask { socket, routes, commands, peers: HashMap::new(), by_request: HashMap::new(), next_key: 1 };
        tokio::spawn(task.run(rx, shutdown));
        host
    }

    /// Browser connections being set up or open.
    pub fn agents(&self) -> usize {
        self.routes.agents.load(Ordering::Relaxed)
    }

    /// Connections of the browser `from` being set up (answered, channel
    /// not open yet).
    pub fn setting_up(&self, from: &str) -> usize {
        self.routes.lock().setting_up.get(from).copied().unwrap_or(0)
    }

    /// Takes a side datagram that belongs to a browser connection: one
    /// from an address an agent sends to, or a STUN request addressed to
    /// an agent's user fragment (`request_ufrag`, the first part of its
    /// USERNAME). False leaves it to the node's own STUN users.
    pub fn claim(&self, datagram: &SideDatagram, request_ufrag: Option<&str>) -> bool {
        if self.routes.agents.load(Ordering::Relaxed) == 0
            || datagram.via.is_some()
            || datagram.kind == PacketKind::Quic
        {
            return false;
        }
        let key = {
            let table = self.routes.lock();
            table.by_addr.get(&datagram.from).or_else(|| request_ufrag.and_then(|u| table.by_ufrag.get(u))).copied()
        };
        let Some(key) = key else { return false };
        let Some(to) = datagram.to else {
            // Without the address it arrived at, ICE cannot tell the
            // candidate; the socket always reports it on Linux.
            return true;
        };
        let command =
            Command::Datagram { key, from: datagram.from, to, data: datagram.data.clone(), at: Instant::now() };
        // A full queue drops the datagram like a loss.
        let _ = self.commands.try_send(command);
        true
    }

    /// Hands an answered browser connection to the task.
    pub(crate) async fn add(&self, agent: RtcAgent, pending: PendingBrowser) {
        {
            let mut table = self.routes.lock();
            *table.setting_up.entry(pending.from.clone()).or_default() += 1;
            // Claimed from now on; datagrams that come before the task
            // knows the agent's key find no agent and are lost (ICE sends
            // its checks again).
            table.by_ufrag.insert(agent.local_ufrag().to_string(), UNKNOWN_KEY);
        }
        self.routes.agents.fetch_add(1, Ordering::Relaxed);
        let _ = self.commands.send(Command::Add(Box::new(agent), Box::new(pending))).await;
    }

    /// A candidate the browser trickled for its request `request_id`.
    pub(crate) async fn candidate(&self, from: String, request_id: u64, line: String) {
        let _ = self.commands.send(Command::Candidate { from, request_id, line }).await;
    }
}

/// One browser connection in the task.
struct Peer {
    agent: RtcAgent,
    link: Arc<RtcLink>,
    from: String,
    request_id: u64,
    ufrag: String,
    remote_candidates: usize,
    wake: Instant,
    state: PeerState,
    /// Messages of the owner waiting for room in the channel.
    outbox: VecDeque<Bytes>,
    /// The owner closed: the close goes after the outbox, at the latest
    /// at the deadline.
    close_after: Option<(bool, String, Instant)>,
}

enum PeerState {
    Pending(Box<PendingBrowser>),
    Open {
        conn: Arc<ConnShared>,
        inbound: mpsc::UnboundedSender<Inbound>,
        queued: Arc<AtomicUsize>,
    },
    /// Opened and ended on the node's side, or never opened: only
    /// draining the agent's close.
    Closing,
}

/// What the reader task of a browser connection passes to the owner.
enum Inbound {
    Message(Bytes),
    End(CloseReason),
}

struct HostTask {
    socket: Arc<FogSocket>,
    routes: Arc<Routes>,
    commands: mpsc::Sender<Command>,
    peers: HashMap<u64, Peer>,
    by_request: HashMap<(String, u64), u64>,
    next_key: u64,
}

impl HostTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        loop {
            let wake = self.peers.values().map(|p| p.wake).min();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                command = rx.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                _ = sleep => {
                    let now = Instant::now();
                    let due: Vec<u64> = self.peers.iter().filter(|(_, p)| p.wake <= now).map(|(&k, _)| k).collect();
                    for key in due {
                        self.drive(key, now);
                    }
                }
            }
        }
        // Browsers hear why (the close message goes out now; nobody waits
        // for their acknowledgement), services that the node shut down.
        let now = Instant::now();
        let keys: Vec<u64> = self.peers.keys().copied().collect();
        for key in keys {
            if let Some(peer) = self.peers.get_mut(&key) {
                end_open(peer, CloseReason::new(CloseKind::Local, "node shut down"));
                peer.agent.close(false, "node shut down");
            }
            self.drive(key, now);
        }
        self.peers.clear();
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Add(agent, pending) => {
                let key = self.next_key;
                self.next_key += 1;
                let ufrag = agent.local_ufrag().to_string();
                self.routes.lock().by_ufrag.insert(ufrag.clone(), key);
                self.by_request.insert((pending.from.clone(), pending.request_id), key);
                let (from, request_id) = (pending.from.clone(), pending.request_id);
                let peer = Peer {
                    agent: *agent,
                    link: Arc::new(RtcLink { relayed_local: pending.relayed, ..RtcLink::default() }),
                    from,
                    request_id,
                    ufrag,
                    remote_candidates: 0,
                    wake: now,
                    state: PeerState::Pending(pending),
                    outbox: VecDeque::new(),
                    close_after: None,
                };
                self.peers.insert(key, peer);
                self.drive(key, now);
            }
            Command::Candidate { from, request_id, line } => {
                let Some(&key) = self.by_request.get(&(from, request_id)) else { return };
                let Some(peer) = self.peers.get_mut(&key) else { return };
                if peer.remote_candidates >= MAX_REMOTE_CANDIDATES {
                    return;
                }
                peer.remote_candidates += 1;
                match peer.agent.add_remote_candidate(&line) {
                    Ok(Some(RemoteCandidate { addr, relayed: true })) => {
                        peer.link.remote_relays.lock().unwrap_or_else(|p| p.into_inner()).push(addr);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(peer = %peer.from, "browser candidate ignored: {e}"),
                }
                self.drive(key, now);
            }
            Command::Datagram { key, from, to, data, at } => {
                let Some(peer) = self.peers.get_mut(&key) else { return };
                peer.agent.receive(at, from, to, &data);
                self.drive(key, now);
            }
            Command::Outbound { key, item } => {
                let Some(peer) = self.peers.get_mut(&key) else { return };
                match item {
                    Outbound::Data(data) => peer.outbox.push_back(data),
                    Outbound::Close(code, message) => {
                        let grace = match &peer.state {
                            PeerState::Open { conn, .. } => conn.close_grace(),
                            _ => Duration::ZERO,
                        };
                        peer.close_after = Some((code == CloseCode::Error, message, now + grace));
                    }
                    Outbound::Finish => {
                        if peer.close_after.is_none() {
                            peer.close_after = Some((false, String::new(), now));
                        }
                    }
                }
                self.drive(key, now);
            }
        }
    }

    /// Runs one agent until it waits: sends its datagrams, acts on its
    /// events, writes the owner's messages while the channel has room.
    fn drive(&mut self, key: u64, now: Instant) {
        let Some(mut peer) = self.peers.remove(&key) else { return };
        if let PeerState::Pending(pending) = &peer.state
            && now >= pending.open_by
            && !peer.agent.is_open()
        {
            tracing::debug!(peer = %peer.from, "browser connection not open in time: dropped");
            self.forget(key, &peer);
            return;
        }
        // Time moves first: str0m starts its checks (and notices what a
        // new candidate or a write makes due) only on a timeout input.
        peer.agent.handle_timeout(now);
        loop {
            self.flush(&mut peer, now);
            match peer.agent.poll() {
                AgentPoll::Ended => {
                    self.forget(key, &peer);
                    return;
                }
                AgentPoll::WakeAt(at) => {
                    peer.wake = match &peer.state {
                        PeerState::Pending(pending) => at.min(pending.open_by),
                        _ => at,
                    }
                    .max(now);
                    peer.link.update(peer.agent.path());
                    self.peers.insert(key, peer);
                    return;
                }
                AgentPoll::Output(output) => self.output(key, &mut peer, output),
            }
        }
    }

    fn output(&mut self, key: u64, peer: &mut Peer, output: AgentOutput) {
        match output {
            AgentOutput::Transmit { source, destination, data } => {
                self.routes.lock().by_addr.insert(destination, key);
                if Some(source) == peer.link.relayed_local {
                    self.socket.send_through_relay(destination, data.into());
                } else if let Err(e) = self.socket.try_send_from(Some(source.ip()), &data, destination) {
                    tracing::trace!(%destination, "browser datagram not sent: {e}");
                }
            }
            AgentOutput::Open => {
                let state = std::mem::replace(&mut peer.state, PeerState::Closing);
                if let PeerState::Pending(pending) = state {
                    peer.link.update(peer.agent.path());
                    peer.state = self.open(key, peer, *pending);
                }
            }
            AgentOutput::Message(data) => self.inbound_message(peer, data),
            AgentOutput::CloseRequested { error, message } => {
                let reason = if error {
                    CloseReason::new(CloseKind::Error, format!("peer: {message}"))
                } else {
                    CloseReason::new(CloseKind::Eof, message)
                };
                end_open(peer, reason);
                peer.agent.close(false, "");
            }
            AgentOutput::Writable => {}
            AgentOutput::Closed(reason) => {
                let kind = if reason.contains("stopped answering") { CloseKind::Timeout } else { CloseKind::Error };
                end_open(peer, CloseReason::new(kind, reason));
            }
        }
    }

    fn inbound_message(&mut self, peer: &mut Peer, data: Vec<u8>) {
        let PeerState::Open { conn, inbound, queued } = &peer.state else { return };
        let max = conn.max_message_size();
        // Why the browser is cut off: what it hears, what the service hears.
        let (message, reason) = if data.len() > max {
            let message = format!("message of {} bytes exceeds the maximum message size of {max} bytes", data.len());
            (message.clone(), format!("protocol: {message}"))
        } else if queued.fetch_add(data.len(), Ordering::AcqRel) + data.len() > MAX_INBOUND_QUEUE {
            let message = "the browser sends faster than the service reads".to_string();
            (message.clone(), message)
        } else {
            let _ = inbound.send(Inbound::Message(Bytes::from(data)));
            return;
        };
        conn.end(CloseCode::Error, message.clone());
        let _ = inbound.send(Inbound::End(CloseReason::new(CloseKind::Error, reason)));
        peer.state = PeerState::Closing;
        peer.agent.close(true, &message);
    }

    /// Writes the owner's queued messages while the channel takes them;
    /// then the owner's close, once they are out or its grace is over.
    fn flush(&mut self, peer: &mut Peer, now: Instant) {
        if let PeerState::Open { conn, .. } = &peer.state {
            let window = peer.agent.send_window();
            while let Some(front) = peer.outbox.front() {
                // Keep what is in flight within the window (an empty
                // channel takes any message).
                let buffered = peer.agent.buffered();
                if buffered > 0 && buffered + front.len() > window {
                    break;
                }
                match peer.agent.write(front, true) {
                    Ok(true) => {
                        let len = front.len();
                        peer.outbox.pop_front();
                        conn.dequeued(len, 1, true);
                    }
                    Ok(false) => break,
                    Err(_) => {
                        drop_outbox(conn, &mut peer.outbox);
                        break;
                    }
                }
            }
        }
        if let Some((error, message, deadline)) = &peer.close_after
            && (peer.outbox.is_empty() || now >= *deadline)
        {
            if let PeerState::Open { conn, .. } = &peer.state {
                drop_outbox(conn, &mut peer.outbox);
                conn.cancel();
            }
            peer.agent.close(*error, message);
            peer.close_after = None;
            peer.state = PeerState::Closing;
        }
    }

    /// The channel opened: the connection starts and goes to its service.
    fn open(&mut self, key: u64, peer: &Peer, pending: PendingBrowser) -> PeerState {
        let PendingBrowser { mut meta, limits, owner, announce, deliver, live, .. } = pending;
        if let Some(remote) = peer.agent.path().remote {
            meta.remote = remote;
        }
        self.routes.lock().set_up_done(&peer.from);
        let (conn, outbound) = ConnShared::new(meta, Carrier::Rtc(peer.link.clone()), limits, owner);
        let (inbound, inbound_rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tracing::debug!(id = conn.meta().id.0, peer = %peer.from, "browser connection open");
        tokio::spawn(write_loop(conn.clone(), key, outbound, self.commands.clone(), live));
        tokio::spawn(read_loop(conn.clone(), inbound_rx, queued.clone(), announce, deliver));
        PeerState::Open { conn, inbound, queued }
    }

    fn forget(&mut self, key: u64, peer: &Peer) {
        let mut table = self.routes.lock();
        table.by_ufrag.remove(&peer.ufrag);
        table.by_addr.retain(|_, k| *k != key);
        if matches!(peer.state, PeerState::Pending(_)) {
            table.set_up_done(&peer.from);
        }
        drop(table);
        self.routes.agents.fetch_sub(1, Ordering::Relaxed);
        self.by_request.remove(&(peer.from.clone(), peer.request_id));
        if let PeerState::Open { conn, inbound, .. } = &peer.state {
            let _ = inbound.send(Inbound::End(CloseReason::new(CloseKind::Error, "the connection closed")));
            conn.cancel();
        }
    }
}

/// Reports the end of an open connection to its owner (through the
/// reader, after the messages before it).
fn end_open(peer: &mut Peer, reason: CloseReason) {
    if let PeerState::Open { conn, inbound, .. } = &peer.state {
        let _ = inbound.send(Inbound::End(reason));
        drop_outbox(conn, &mut peer.outbox);
        conn.cancel();
    }
    peer.state = PeerState::Closing;
}

/// Forgets the owner's messages that never reached the channel, taking
/// them out of the connection's send-buffer accounting.
fn drop_outbox(conn: &ConnShared, outbox: &mut VecDeque<Bytes>) {
    for dropped in outbox.drain(..) {
        conn.dequeued(dropped.len(), 1, false);
    }
}

/// Passes what the owner sends to the host task, in order; counts the
/// connection as live until it ends.
async fn write_loop(
    conn: Arc<ConnShared>,
    key: u64,
    mut outbound: mpsc::UnboundedReceiver<Outbound>,
    commands: mpsc::Sender<Command>,
    _live: LiveGuard,
) {
    loop {
        let item = tokio::select! {
            biased;
            item = outbound.recv() => item,
            _ = conn.cancelled() => None,
        };
        let Some(item) = item else { return };
        let last = matches!(item, Outbound::Close(..) | Outbound::Finish);
        if commands.send(Command::Outbound { key, item }).await.is_err() || last {
            return;
        }
    }
}

/// Announces the connection to its owner, then passes what the browser
/// sends to it, in order, and finally its ending.
async fn read_loop(
    conn: Arc<ConnShared>,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    queued: Arc<AtomicUsize>,
    announce: bool,
    deliver: Box<dyn FnOnce(Arc<ConnShared>) + Send>,
) {
    if announce && conn.owner().send(ConnEvent::Opened(conn.clone())).await.is_err() {
        conn.fail("service stopped");
    }
    deliver(conn.clone());
    while let Some(item) = inbound.recv().await {
        match item {
            Inbound::Message(data) => {
                queued.fetch_sub(data.len(), Ordering::AcqRel);
                if !conn.deliver(data).await {
                    return;
                }
            }
            Inbound::End(reason) => {
                conn.report_end(reason).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_reports_its_path_once_a_pair_is_known() {
        let link = RtcLink::default();
        assert_eq!(link.path(), None);
        let remote: SocketAddr = "203.0.113.5:50000".parse().expect("addr");
        link.update(AgentPath { local: None, remote: Some(remote), rtt: Some(Duration::from_millis(12)) });
        assert_eq!(link.path(), Some(PathInfo { kind: PathKind::Direct, remote }));
        assert_eq!(link.rtt(), Some(Duration::from_millis(12)));

        // Either end relayed makes the path relayed.
        let relayed: SocketAddr = "203.0.113.10:50123".parse().expect("addr");
        let link = RtcLink { relayed_local: Some(relayed), ..RtcLink::default() };
        link.update(AgentPath { local: Some(relayed), remote: Some(remote), rtt: None });
        assert_eq!(link.path(), Some(PathInfo { kind: PathKind::Relayed, remote }));
        let link = RtcLink::default();
        let browser_relay: SocketAddr = "203.0.113.10:50999".parse().expect("addr");
        link.remote_relays.lock().expect("lock").push(browser_relay);
        link.update(AgentPath { local: None, remote: Some(browser_relay), rtt: None });
        assert_eq!(link.path().map(|p| p.kind), Some(PathKind::Relayed));
    }
}

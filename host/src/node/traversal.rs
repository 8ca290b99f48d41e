//! NAT traversal on the node's socket: the STUN datagrams the socket facade
//! sets aside, the node's public address and NAT classification, and the
//! connectivity checks of each connect by id.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::nat::checks::{CheckAgent, CheckConfig, CheckStats, Outcome, Selected, SocketRef};
use crate::nat::classify::NatReport;
use crate::nat::consent::Consent;
use crate::nat::message::{self, Binding, BindingRequest, TxId};
use crate::nat::strategy::{self, Plan};
use crate::nat::transaction::{RetransmitPolicy, Step, Transaction};
use crate::nat::{NatError, discovery};
use crate::signal::protocol::{Candidate, CandidateKind, CheckCredentials, NatInfo, Offer};
#[cfg(feature = "browsers")]
use crate::transport::rtc::RtcHost;
use crate::transport::socket::{AuxId, FogSocket, PacketKind, SideDatagram};

/// The addresses and subnets of this host's interfaces.
struct LocalSubnets(Option<Vec<if_addrs::Interface>>);

impl LocalSubnets {
    fn read() -> Self {
        Self(if_addrs::get_if_addrs().ok())
    }

    /// Whether `ip` is on one of the subnets (true when the interfaces
    /// could not be read: the checks then find out).
    fn contains(&self, ip: std::net::IpAddr) -> bool {
        use if_addrs::IfAddr;
        use std::net::IpAddr;
        let Some(interfaces) = &self.0 else { return true };
        interfaces.iter().any(|interface| match (&interface.addr, ip) {
            (IfAddr::V4(own), IpAddr::V4(ip)) => {
                let mask = u32::from(own.netmask);
                u32::from(own.ip) & mask == u32::from(ip) & mask
            }
            (IfAddr::V6(own), IpAddr::V6(ip)) => {
                let mask = u128::from(own.netmask);
                u128::from(own.ip) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }

    /// Whether the host has a routable address of the IPv4 (`v4`) or the
    /// IPv6 family: not loopback, not IPv6 link-local (true when the
    /// interfaces could not be read).
    fn has_family(&self, v4: bool) -> bool {
        let Some(interfaces) = &self.0 else { return true };
        interfaces.iter().map(if_addrs::Interface::ip).any(|own| {
            own.is_ipv4() == v4 && !own.is_loopback() && !matches!(own, IpAddr::V6(v6) if v6.is_unicast_link_local())
        })
    }

    /// Whether `ip` is an address of this host.
    fn is_own_address(&self, ip: std::net::IpAddr) -> bool {
        self.0.as_ref().is_some_and(|interfaces| interfaces.iter().any(|interface| interface.ip() == ip))
    }
}

/// Capacity of one check session's inbox, in datagrams.
const SESSION_INBOX: usize = 1024;

/// Most check sessions at once; connect requests beyond are refused, so a
/// peer cannot make the node run unbounded checks.
pub(super) const MAX_SESSIONS: usize = 64;

/// Most connect requests of one caller in progress at once, so one caller
/// cannot take every session.
pub(super) const MAX_SESSIONS_PER_PEER: usize = 8;

/// Why a connect request gets no check session now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionRefusal {
    /// [`MAX_SESSIONS`] are running.
    Full,
    /// The caller has [`MAX_SESSIONS_PER_PEER`] running.
    PeerFull,
}

impl std::fmt::Display for SessionRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionRefusal::Full => write!(f, "too many connects in progress ({MAX_SESSIONS}); try again"),
            SessionRefusal::PeerFull => {
                write!(f, "too many of your connects in progress ({MAX_SESSIONS_PER_PEER}); try again")
            }
        }
    }
}

/// Most extra sockets open at once over all sessions (birthday listening
/// asks for 256 per connect).
const MAX_AUX_SOCKETS: usize = 1024;

/// The classification as it stands: `None` until discovery finished (or
/// forever without a STUN server).
pub(super) type NatState = Option<Arc<NatReport>>;

/// What the checks of one connect found.
#[derive(Debug, Clone)]
pub struct TraversalReport {
    /// The pair the checks settled on.
    pub selected: Selected,
    /// What this side did.
    pub plan: Plan,
    /// Checks and probes sent.
    pub stats: CheckStats,
    /// How long the checks took.
    pub elapsed: Duration,
}

/// The STUN servers a node uses, by what for.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct StunServers {
    /// Classifies the NAT and gives the public address: the first server
    /// the node's socket reaches, IPv4 preferred (NATs are an IPv4 thing).
    pub(super) primary: Option<SocketAddr>,
    /// Gives the public address of the other family (IPv6 beside IPv4)
    /// on a dual-stack socket.
    pub(super) other_family: Option<SocketAddr>,
}

impl StunServers {
    /// Picks the servers for `socket` from every address of the
    /// configured ones.
    pub(super) fn choose(socket: &FogSocket, servers: &[SocketAddr]) -> Self {
        let reachable: Vec<SocketAddr> = servers.iter().copied().filter(|s| socket.reaches(*s)).collect();
        let primary = reachable.iter().find(|s| s.is_ipv4()).or(reachable.first()).copied();
        let other_family = primary.and_then(|p| reachable.iter().find(|s| s.is_ipv4() != p.is_ipv4()).copied());
        Self { primary, other_family }
    }
}

pub(super) struct Traversal {
    socket: Arc<FogSocket>,
    stun: StunServers,
    policy: RetransmitPolicy,
    config: CheckConfig,
    nat: watch::Sender<NatState>,
    /// Classifications running now (again after a network change).
    classifying: watch::Sender<usize>,
    pending: Mutex<HashMap<TxId, oneshot::Sender<(Binding, SocketAddr)>>>,
    sessions: Mutex<Sessions>,
}

/// The check sessions running: their inboxes by ufrag, and how many each
/// peer has.
#[derive(Default)]
struct Sessions {
    inboxes: HashMap<String, mpsc::Sender<SideDatagram>>,
    per_peer: HashMap<String, usize>,
    /// Sessions (by ufrag) holding extra sockets, and their peer.
    aux_holders: HashMap<String, String>,
}

/// Removes a check session's inbox when the session ends.
pub(super) struct Session {
    traversal: Arc<Traversal>,
    pub(super) credentials: CheckCredentials,
    peer: String,
    inbox: mpsc::Receiver<SideDatagram>,
    /// Extra sockets opened ahead of the checks (birthday listening).
    aux: Vec<AuxId>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut sessions = self.traversal.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.inboxes.remove(&self.credentials.ufrag);
        sessions.aux_holders.remove(&self.credentials.ufrag);
        if let Some(count) = sessions.per_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                sessions.per_peer.remove(&self.peer);
            }
        }
        drop(sessions);
        // Extra sockets the checks never took over.
        if !self.aux.is_empty() {
            self.traversal.socket.release_aux(&self.aux, &HashSet::new());
        }
    }
}

/// The user fragment a STUN binding request is addressed to (the first
/// part of its USERNAME), if it is one.
fn request_ufrag(binding: &Binding) -> Option<&str> {
    match binding {
        Binding::Request { username: Some(username), .. } => username.split(':').next(),
        _ => None,
    }
}

fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

impl Traversal {
    pub(super) fn new(
        socket: Arc<FogSocket>,
        stun: StunServers,
        policy: RetransmitPolicy,
        config: CheckConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            socket,
            stun,
            policy,
            config,
            nat: watch::channel(None).0,
            classifying: watch::channel(0).0,
            pending: Mutex::default(),
            sessions: Mutex::default(),
        })
    }

    /// Routes the STUN datagrams of the socket facade: those of browser
    /// connections (STUN and DTLS) to `rtc`, requests to the check session
    /// their USERNAME names, responses to the transaction waiting for
    /// them, else to every session (checks match their own transaction
    /// ids).
    pub(super) async fn run_mux(
        self: Arc<Self>,
        mut side: mpsc::Receiver<SideDatagram>,
        #[cfg(feature = "browsers")] rtc: Option<RtcHost>,
    ) {
        while let Some(datagram) = side.recv().await {
            // Decoded once, for the browsers' agents and the checks alike.
            let binding = match datagram.kind {
                PacketKind::Stun => message::decode(&datagram.data).ok(),
                _ => None,
            };
            #[cfg(feature = "browsers")]
            if let Some(rtc) = &rtc
                && rtc.claim(&datagram, binding.as_ref().and_then(request_ufrag))
            {
                continue;
            }
            let Some(binding) = binding else {
                tracing::trace!(from = %datagram.from, kind = ?datagram.kind, "non-STUN side datagram ignored");
                continue;
            };
            match &binding {
                Binding::Request { username: Some(_), .. } => {
                    let ufrag = request_ufrag(&binding).unwrap_or_default();
                    let inbox = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).inboxes.get(ufrag).cloned();
                    if let Some(inbox) = inbox {
                        let _ = inbox.try_send(datagram);
                    }
                }
                Binding::Success { txid, .. } | Binding::Error { txid, .. } => {
                    let waiter = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(txid);
                    match waiter {
                        Some(waiter) => {
                            let _ = waiter.send((binding, datagram.from));
                        }
                        None => {
                            let inboxes: Vec<_> = self
                                .sessions
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .inboxes
                                .values()
                                .cloned()
                                .collect();
                            for inbox in inboxes {
                                let _ = inbox.try_send(datagram.clone());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Classifies the NAT with the STUN server (if configured) and
    /// publishes the report.
    /// Connects wait for it (see [`Traversal::classified`]) from this call
    /// on.
    pub(super) fn classify(self: &Arc<Self>) {
        let Some(server) = self.stun.primary else { return };
        self.classifying.send_modify(|n| *n += 1);
        let this = self.clone();
        tokio::spawn(async move {
            let result = discovery::discover(server, this.policy).await;
            this.publish_classification(server, result);
            this.classifying.send_modify(|n| *n -= 1);
        });
    }

    fn publish_classification(&self, server: SocketAddr, result: Result<NatReport, NatError>) {
        match result {
            Ok(report) => {
                tracing::info!(
                    kind = report.kind_name(),
                    public = ?report.public,
                    mapping = crate::nat::classify::behaviour_name(report.mapping),
                    filtering = crate::nat::classify::behaviour_name(report.filtering),
                    allocation = %crate::nat::classify::allocation_name(report.allocation),
                    "nat classified"
                );
                self.nat.send_replace(Some(Arc::new(report)));
            }
            Err(e) => tracing::warn!("nat classification with {server} failed: {e}"),
        }
    }

    /// Waits, at most `limit`, until no classification is running: a plan
    /// made while the node classifies again after a network change would
    /// rest on the old network's NAT.
    pub(super) async fn classified(&self, limit: Duration) {
        let mut running = self.classifying.subscribe();
        let _ = tokio::time::timeout(limit, running.wait_for(|n| *n == 0)).await;
    }

    /// Whether the classification found UDP blocked.
    pub(super) fn udp_blocked(&self) -> bool {
        self.nat.borrow().as_ref().is_some_and(|report| report.udp_blocked)
    }

    /// Watches the classification.
    pub(super) fn nat(&self) -> watch::Receiver<NatState> {
        self.nat.subscribe()
    }

    /// The public address of the node's socket, asked from the STUN server
    /// through that socket.
    pub(super) async fn public_addr(&self) -> Option<SocketAddr> {
        self.mapped_by(self.stun.primary?).await
    }

    /// The node socket's address as `server` sees it.
    async fn mapped_by(&self, server: SocketAddr) -> Option<SocketAddr> {
        let txid = message::random_txid();
        let request = message::binding_request(txid, &BindingRequest::default()).ok()?;
        let (tx, mut rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(txid, tx);
        let mut transaction = Transaction::new(txid, server, request, self.policy, Instant::now());
        let result = loop {
            let wake = match transaction.poll(Instant::now()) {
                Step::Send(bytes, to) => {
                    let _ = self.socket.send_raw(bytes, to).await;
                    continue;
                }
                Step::WaitUntil(at) => at,
                Step::TimedOut | Step::Done => break None,
            };
            tokio::select! {
                reply = &mut rx => break reply.ok(),
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        };
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&txid);
        match result {
            Some((Binding::Success { mapped, .. }, _)) => mapped,
            _ => None,
        }
    }

    /// Check sessions running now.
    pub(super) fn sessions(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).inboxes.len()
    }

    /// Opens a check session toward `peer` for a connect of this node's
    /// own: fresh credentials and an inbox for the requests that name them.
    pub(super) fn session(self: &Arc<Self>, peer: &str) -> Session {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        self.open_session(&mut sessions, peer)
    }

    /// Opens a check session for `peer`'s connect request, unless the node
    /// runs [`MAX_SESSIONS`] or `peer` [`MAX_SESSIONS_PER_PEER`] already.
    pub(super) fn session_for_request(self: &Arc<Self>, peer: &str) -> Result<Session, SessionRefusal> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.inboxes.len() >= MAX_SESSIONS {
            return Err(SessionRefusal::Full);
        }
        if sessions.per_peer.get(peer).copied().unwrap_or(0) >= MAX_SESSIONS_PER_PEER {
            return Err(SessionRefusal::PeerFull);
        }
        Ok(self.open_session(&mut sessions, peer))
    }

    fn open_session(self: &Arc<Self>, sessions: &mut Sessions, peer: &str) -> Session {
        let credentials = CheckCredentials { ufrag: random_token(8), pwd: random_token(24) };
        let (tx, inbox) = mpsc::channel(SESSION_INBOX);
        sessions.inboxes.insert(credentials.ufrag.clone(), tx);
        *sessions.per_peer.entry(peer.to_string()).or_insert(0) += 1;
        Session { traversal: self.clone(), credentials, peer: peer.to_string(), inbox, aux: Vec::new() }
    }

    /// The plan toward a peer behind `remote`.
    pub(super) fn plan(&self, remote: Option<&NatInfo>) -> Plan {
        let local = self.nat.borrow().as_ref().map(|report| report.info());
        strategy::plan(local.as_ref(), remote, self.config.birthday_sockets)
    }

    /// Opens the extra sockets of birthday listening before the answer
    /// goes out, when the plan toward `remote` needs them: the peer starts
    /// probing as soon as it has the answer.
    pub(super) fn prepare(&self, session: &mut Session, remote: &Offer, vouched: Option<std::net::IpAddr>) {
        if let Plan::Listen { sockets } = self.plan(remote.nat.as_ref())
            && session.aux.is_empty()
        {
            session.aux = self.open_aux_for(session, remote, vouched, sockets);
        }
    }

    /// Up to `count` extra sockets for birthday listening toward the peer
    /// of `session`, only when its public address is on the IP signaling
    /// vouched for (their checks could go nowhere else) and no other
    /// session of the same peer holds some: a caller claiming a symmetric
    /// NAT cannot make the node hold more than one session's worth.
    fn open_aux_for(
        &self,
        session: &Session,
        remote: &Offer,
        vouched: Option<std::net::IpAddr>,
        count: u16,
    ) -> Vec<AuxId> {
        let public = remote.address_of(CandidateKind::ServerReflexive).map(|a| a.ip());
        if vouched.is_none() || public != vouched {
            tracing::debug!(peer = %session.peer, "no birthday listening: the peer's public IP is not vouched for");
            return Vec::new();
        }
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let ufrag = &session.credentials.ufrag;
            let other_listens =
                sessions.aux_holders.iter().any(|(holder, peer)| holder != ufrag && *peer == session.peer);
            if other_listens {
                tracing::debug!(peer = %session.peer, "no birthday listening: another connect of this peer listens");
                return Vec::new();
            }
            sessions.aux_holders.insert(ufrag.clone(), session.peer.clone());
        }
        self.open_aux(count)
    }

    /// This node's offer: fingerprint, host and server-reflexive
    /// candidates, NAT classification and the session's credentials.
    pub(super) async fn offer(&self, fingerprint: String, host: Vec<Candidate>, session: &Session) -> Offer {
        let mut candidates = host;
        for public in self.public_addresses().await {
            if !candidates.iter().any(|c| c.addr == public) {
                candidates.push(Candidate { kind: CandidateKind::ServerReflexive, addr: public });
            }
        }
        candidates.truncate(crate::signal::protocol::MAX_CANDIDATES);
        let nat = self.nat.borrow().as_ref().map(|report| report.info());
        Offer { fingerprint, candidates, nat, checks: Some(session.credentials.clone()) }
    }

    /// The public addresses of the node's socket, as the STUN servers see
    /// it now (server-reflexive candidates): one per family with a
    /// server. Asked through the socket itself, since a NAT maps each
    /// socket on its own.
    pub(super) async fn public_addresses(&self) -> Vec<SocketAddr> {
        // Behind a UDP block the server cannot answer: do not wait for it.
        let public = if self.udp_blocked() { None } else { self.public_addr().await };
        // The other family's public address (IPv6 behind a firewall is
        // mostly the host's own, then not offered twice).
        let other = match self.stun.other_family {
            Some(server) => self.mapped_by(server).await,
            None => None,
        };
        [public, other].into_iter().flatten().collect()
    }

    /// Runs the checks of `session` against the peer's `offer` until a pair
    /// is selected or the budget is spent. `vouched` is the IP signaling
    /// saw the peer's connection come from: ports of it may be probed; any
    /// other address gets only what [`Consent`] allows until the peer
    /// proves it.
    pub(super) async fn run_checks(
        &self,
        mut session: Session,
        remote: &Offer,
        vouched: Option<std::net::IpAddr>,
        remote_credentials: CheckCredentials,
        controlling: bool,
    ) -> Result<TraversalReport, String> {
        let started = Instant::now();
        let local_nat = self.nat.borrow().as_ref().map(|report| report.info());
        let plan = self.plan(remote.nat.as_ref());
        tracing::debug!(
            %plan,
            local = strategy::describe(local_nat.as_ref()),
            remote = strategy::describe(remote.nat.as_ref()),
            controlling,
            "connectivity checks"
        );
        let aux = match plan {
            Plan::Listen { sockets } if session.aux.is_empty() => self.open_aux_for(&session, remote, vouched, sockets),
            _ => std::mem::take(&mut session.aux),
        };
        let index_of: HashMap<AuxId, u16> = aux.iter().enumerate().map(|(i, &id)| (id, i as u16)).collect();
        // Relayed candidates are reached through the relay, never checked.
        // Only the families this node's socket and host can send to (an
        // IPv6-only host's dual-stack socket accepts IPv4 addresses it has
        // no route to). Loopback only when the peer runs on this host: it
        // offers one of this host's addresses, or only loopback ones (a
        // node bound to loopback is reachable from its own host alone).
        let subnets = LocalSubnets::read();
        let (has_v4, has_v6) = (subnets.has_family(true), subnets.has_family(false));
        let hosts = || remote.candidates.iter().filter(|c| c.kind == CandidateKind::Host);
        let same_host = hosts().any(|c| !c.addr.ip().is_loopback() && subnets.is_own_address(c.addr.ip()))
            || hosts().all(|c| c.addr.ip().is_loopback());
        let mut candidates: Vec<Candidate> = remote
            .candidates
            .iter()
            .filter(|c| {
                let routable = if c.addr.ip().is_loopback() {
                    same_host
                } else if c.addr.is_ipv4() {
                    has_v4
                } else {
                    has_v6
                };
                c.kind != CandidateKind::Relayed && self.socket.reaches(c.addr) && routable
            })
            .cloned()
            .collect();
        let direct_offered = remote.candidates.iter().any(|c| c.kind != CandidateKind::Relayed);
        if candidates.is_empty() && direct_offered {
            // Neither side has an address of the other's family (an
            // IPv6-only and an IPv4-only host): only a relay joins them.
            return Err("no candidate of an address family this node has".into());
        }
        // Without a WAN path only a LAN one can help: the peer's addresses
        // on this host's own subnets (loopback only when the peer runs on
        // this host). Without any, the relay takes over at once.
        if matches!(plan, Plan::RelayRequired(_)) {
            // IPv6 has no NAT between the two: its addresses stay, and
            // firewalls open to checks sent from both sides.
            candidates.retain(|c| {
                c.addr.is_ipv6() && !c.addr.ip().is_loopback()
                    || c.kind == CandidateKind::Host
                        && if c.addr.ip().is_loopback() { same_host } else { subnets.contains(c.addr.ip()) }
            });
        }
        let mut agent = CheckAgent::new(
            self.config,
            controlling,
            session.credentials.clone(),
            remote_credentials,
            &candidates,
            plan.clone(),
            aux.len() as u16,
            rand::random(),
            Consent::new(offer_size(remote), vouched),
            started,
        );
        loop {
            agent.handle_timeout(Instant::now());
            while let Some(transmit) = agent.poll_transmit() {
                let via = match transmit.socket {
                    SocketRef::Main => None,
                    SocketRef::Aux(i) => aux.get(usize::from(i)).copied(),
                };
                if let Err(e) = self.socket.send_raw_via(via, &transmit.bytes, transmit.to).await {
                    tracing::trace!(to = %transmit.to, "check send failed: {e}");
                }
            }
            if agent.outcome().is_some() {
                break;
            }
            let wake = agent.poll_timeout().unwrap_or_else(Instant::now);
            tokio::select! {
                datagram = session.inbox.recv() => {
                    let Some(datagram) = datagram else { break };
                    let socket = match datagram.via {
                        None => SocketRef::Main,
                        Some(id) => match index_of.get(&id) {
                            Some(&i) => SocketRef::Aux(i),
                            None => continue,
                        },
                    };
                    agent.handle_datagram(socket, datagram.from, &datagram.data, Instant::now());
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        let outcome = agent.outcome().cloned();
        let keep: HashSet<AuxId> = match &outcome {
            Some(Outcome::Selected(Selected { socket: SocketRef::Aux(i), remote, .. })) => {
                let id = aux[usize::from(*i)];
                self.socket.route(*remote, id);
                HashSet::from([id])
            }
            _ => HashSet::new(),
        };
        if !aux.is_empty() {
            // Late QUIC on another extra socket routes it and keeps it.
            let socket = self.socket.clone();
            let grace = self.config.nomination_wait * 4;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                socket.release_aux(&aux, &keep);
            });
        }
        let stats = agent.stats();
        match outcome {
            Some(Outcome::Selected(selected)) => {
                Ok(TraversalReport { selected, plan, stats, elapsed: started.elapsed() })
            }
            Some(Outcome::Failed(reason)) => Err(reason),
            None => Err("checks ended without an outcome".into()),
        }
    }

    /// Opens up to `count` extra sockets on the node's IP.
    fn open_aux(&self, count: u16) -> Vec<AuxId> {
        let count = count.min(MAX_AUX_SOCKETS.saturating_sub(self.socket.aux_count()) as u16);
        let ip = match self.socket_local_ip() {
            Ok(ip) => ip,
            Err(e) => {
                tracing::warn!("cannot open extra sockets: {e}");
                return Vec::new();
            }
        };
        let mut ids = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let opened = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))
                .map_err(|e| e.to_string())
                .and_then(|s| self.socket.add_aux(s).map_err(|e| e.to_string()));
            match opened {
                Ok(id) => ids.push(id),
                Err(e) => {
                    tracing::warn!(opened = ids.len(), "cannot open more extra sockets: {e}");
                    break;
                }
            }
        }
        ids
    }

    fn socket_local_ip(&self) -> Result<std::net::IpAddr, NatError> {
        use quinn::AsyncUdpSocket;
        let local = self.socket.local_addr().map_err(|e| NatError::Io(e.to_string()))?;
        Ok(local.ip())
    }
}

/// The size of `offer` as it travelled through signaling (its JSON), the
/// bytes the peer spent on it.
fn offer_size(offer: &Offer) -> usize {
    serde_json::to_vec(offer).map_or(0, |json| json.len())
}

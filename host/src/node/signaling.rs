//! The node's side of signaling: answering connect requests with its offer,
//! and connecting by peer id.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::link_repair::{SupervisedLink, supervise};
use super::relay::RelayAgent;
use super::traversal::{Session, TraversalReport};
use super::{ConnectError, NodeInner, links};
use crate::convention::{Convention, Transport};
use crate::nat::strategy::Plan;
use crate::signal::SignalError;
use crate::signal::client::{IncomingRequest, PeerOffer, SignalClient, SignalRequest};
use crate::signal::protocol::{Candidate, CandidateKind, MAX_CANDIDATES, Offer};
use crate::transport::conn::{ConnShared, ConnectionId, Owner};
use crate::transport::identity::Fingerprint;
use crate::transport::socket::Route;
use crate::transport::wire::RefuseCode;

/// The addresses of this node's socket: the bound address, or every
/// interface address of its family when bound to the wildcard, of both
/// families when that is IPv6's (`[::]`, dual stack); IPv6 first (a v6
/// pair is preferred), loopback last, since it only helps peers on the
/// same host.
pub(super) fn host_candidates(local: SocketAddr) -> Vec<Candidate> {
    let candidate = |ip: IpAddr| Candidate { kind: CandidateKind::Host, addr: SocketAddr::new(ip, local.port()) };
    if !local.ip().is_unspecified() {
        return vec![candidate(local.ip())];
    }
    let mut ips: Vec<IpAddr> =
        if_addrs::get_if_addrs().map(|ifaces| ifaces.into_iter().map(|i| i.ip()).collect()).unwrap_or_default();
    let dual = local.is_ipv6();
    ips.retain(|ip| {
        (dual || ip.is_ipv4() == local.is_ipv4()) && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
    });
    ips.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv4()));
    ips.dedup();
    if ips.is_empty() {
        ips.push(if local.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
        });
    }
    ips.into_iter().take(MAX_CANDIDATES).map(candidate).collect()
}

/// This node's offer for one connect, with the check session's credentials
/// and the relayed candidate when the node holds an allocation.
pub(super) async fn offer(inner: &NodeInner, session: &Session) -> Offer {
    let local = inner.endpoint.local_addr().unwrap_or(inner.config.listen);
    let mut offer =
        inner.traversal.offer(inner.identity.fingerprint().to_string(), host_candidates(local), session).await;
    if let Some(relayed) = inner.relay.as_ref().and_then(RelayAgent::relayed) {
        offer.candidates.truncate(MAX_CANDIDATES - 1);
        offer.candidates.push(Candidate { kind: CandidateKind::Relayed, addr: relayed });
    }
    offer
}

/// Most a connect (or its answer) waits for a classification that runs
/// again after a network change.
pub(super) const CLASSIFY_WAIT: Duration = Duration::from_secs(4);

/// Most a connect answer waits for the relay to install the caller's
/// permissions.
const PERMIT_WAIT: Duration = Duration::from_millis(500);

/// Most a relay-required connect answer waits for the relay to confirm the
/// allocation, or for a lost one to be made again.
const VERIFY_WAIT: Duration = Duration::from_secs(3);

/// The public IPs the peer behind `offer` may send from (its public host
/// addresses, server- and peer-reflexive ones, its own relay's); internal
/// addresses are left out: relays refuse them.
fn public_ips(offer: &Offer) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> =
        offer.candidates.iter().map(|c| c.addr.ip()).filter(|&ip| !crate::relay::server::is_internal(ip)).collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Lets the peer behind `offer` reach this node through its relay.
fn permit_through_relay(inner: &NodeInner, offer: &Offer) {
    if let Some(relay) = &inner.relay {
        relay.permit(public_ips(offer));
    }
}

fn remember(inner: &NodeInner, peer: &str, fingerprint: Fingerprint) {
    inner.peer_fingerprints.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.to_string(), fingerprint);
}

/// The fingerprint signaling announced for `peer`, if any.
pub(super) fn known_fingerprint(inner: &NodeInner, peer: &str) -> Option<Fingerprint> {
    inner.peer_fingerprints.lock().unwrap_or_else(|p| p.into_inner()).get(peer).copied()
}

/// Refusals one caller is sent at once, and per second after that.
const REFUSAL_BURST: u32 = 10;
const REFUSAL_RATE: u32 = 5;
/// Callers whose refusals are counted at once (the least recently seen
/// forgotten first).
const REFUSALS_TRACKED: usize = 4096;

/// The per-caller refusal budget of a node.
pub(super) fn refusal_budget() -> crate::limits::RateTable<String> {
    crate::limits::RateTable::new(REFUSAL_RATE, REFUSAL_BURST, REFUSALS_TRACKED)
}

/// Refuses `request` with `code` and `message`, unless its caller was sent
/// [`REFUSAL_BURST`] refusals lately (then [`REFUSAL_RATE`] a second):
/// past that the request is dropped unanswered, so a caller repeating
/// requests this node refuses cannot spend the node's own signaling rate,
/// which carries its answers to everyone else. The dropped caller's
/// connect times out.
pub(super) async fn refuse(
    inner: &NodeInner,
    signal: &SignalClient,
    (request_id, from): (u64, &str),
    code: RefuseCode,
    message: String,
) {
    let allowed =
        inner.refusals.lock().unwrap_or_else(|p| p.into_inner()).allow(&from.to_string(), 1, std::time::Instant::now());
    if allowed {
        signal.reject(request_id, from, code as u16, message).await;
    } else {
        tracing::debug!(peer = %from, "connect request dropped unanswered (refused too often): {message}");
    }
}

/// Answers connect requests from other nodes and browsers until
/// signaling stops. A browser's request and its trickled candidates are
/// handled in the order they came, so its candidates reach its agent.
pub(super) async fn answer_requests(inner: Arc<NodeInner>, mut requests: mpsc::Receiver<SignalRequest>) {
    while let Some(request) = requests.recv().await {
        match request {
            SignalRequest::Node(request) => {
                tokio::spawn(answer_request(inner.clone(), request));
            }
            #[cfg(feature = "browsers")]
            SignalRequest::Browser(request) => super::browsers::answer(&inner, request).await,
            #[cfg(feature = "browsers")]
            SignalRequest::BrowserCandidate { from, request_id, candidate } => {
                super::browsers::candidate(&inner, from, request_id, candidate).await;
            }
            #[cfg(not(feature = "browsers"))]
            SignalRequest::Browser(request) => refuse_browser(&inner, request).await,
            #[cfg(not(feature = "browsers"))]
            SignalRequest::BrowserCandidate { .. } => {}
        }
    }
}

/// Refuses a browser's request: this build has no WebRTC (feature
/// `browsers` off), so browsers cannot reach its services.
#[cfg(not(feature = "browsers"))]
async fn refuse_browser(inner: &NodeInner, request: crate::signal::client::BrowserRequest) {
    if let Some(signal) = &inner.signal {
        let message = "unsupported transport: this node is built without browser connections (WebRTC)".to_string();
        refuse(inner, signal, (request.request_id, &request.from), RefuseCode::UnsupportedTransport, message).await;
    }
}

/// Answers one connect request and runs the checks for it (controlled
/// side); the caller then dials QUIC on the pair it nominated.
async fn answer_request(inner: Arc<NodeInner>, request: IncomingRequest) {
    let Some(signal) = inner.signal.clone() else { return };
    let Some(fingerprint) = Fingerprint::parse(&request.offer.fingerprint) else {
        refuse(
            &inner,
            &signal,
            (request.request_id, &request.from),
            RefuseCode::BadRequest,
            "offer without a valid fingerprint".into(),
        )
        .await;
        return;
    };
    // Refuse early what the QUIC handshake would refuse anyway.
    let route = Convention::from_raw(request.convention)
        .map_err(|e| (RefuseCode::ReservedBits, e.to_string()))
        .and_then(|c| inner.dispatcher.check(c, Transport::Quic));
    if let Err((code, message)) = route {
        refuse(&inner, &signal, (request.request_id, &request.from), code, message).await;
        return;
    }
    let mut session = match inner.traversal.session_for_request(&request.from) {
        Ok(session) => session,
        Err(refusal) => {
            refuse(
                &inner,
                &signal,
                (request.request_id, &request.from),
                RefuseCode::ServiceUnavailable,
                refusal.to_string(),
            )
            .await;
            return;
        }
    };
    remember(&inner, &request.from, fingerprint);
    inner.traversal.classified(CLASSIFY_WAIT).await;
    inner.traversal.prepare(&mut session, &request.offer, request.observed);
    let plan = inner.traversal.plan(request.offer.nat.as_ref());
    if let (Some(relay), Plan::RelayRequired(_)) = (&inner.relay, &plan)
        && relay.relayed().is_some()
    {
        relay.verified(VERIFY_WAIT).await;
    }
    let answer = offer(&inner, &session).await;
    match (&inner.relay, plan) {
        // The caller goes to the relay as soon as it has the answer: the
        // allocation must still exist (a caller whose relayed link went
        // silent asks again after a relay restart) and the permission be
        // there before its first packet.
        (Some(relay), Plan::RelayRequired(_)) => relay.permit_now(public_ips(&request.offer), PERMIT_WAIT).await,
        _ => permit_through_relay(&inner, &request.offer),
    }
    signal.answer(&request, answer).await;
    let Some(remote_credentials) = request.offer.checks.clone() else { return };
    match inner.traversal.run_checks(session, &request.offer, request.observed, remote_credentials, false).await {
        Ok(report) => {
            if let Some(rtt) = report.selected.rtt {
                // The caller dials QUIC on this pair next.
                inner.remember_rtt(report.selected.remote, rtt);
            }
            tracing::debug!(
                peer = %request.from,
                remote = %report.selected.remote,
                plan = %report.plan,
                probes = report.stats.probes_sent,
                "checks selected a pair"
            )
        }
        Err(reason) => tracing::info!(peer = %request.from, "no direct path: {reason}"),
    }
}

fn signal_error(peer: &str, e: SignalError) -> ConnectError {
    match e {
        SignalError::Rejected { code, message } => ConnectError::Refused { code: RefuseCode::from_u16(code), message },
        SignalError::Timeout(why) => ConnectError::SignalTimeout(format!("no answer from {peer}: {why}")),
        SignalError::Server { message, .. } => ConnectError::Signal(message),
        other => ConnectError::Signal(other.to_string()),
    }
}

/// Connects to `peer` by id: asks through signaling, pins the answered
/// fingerprint, runs the connectivity checks (controlling side) and opens
/// the connection on the selected pair. A peer whose answer carries no
/// check credentials gets its candidates dialled directly.
pub(super) async fn open_by_id(
    inner: &Arc<NodeInner>,
    peer: &str,
    convention: u32,
    id: ConnectionId,
    owner: Owner,
    announce: bool,
) -> Result<(Arc<ConnShared>, Option<TraversalReport>), ConnectError> {
    let signal = inner.signal.clone().ok_or_else(|| ConnectError::Signal("no signaling server configured".into()))?;
    links::check_carried(convention)?;
    // Connects to one peer made together wait for the one that makes the
    // link, then ride it (a peer answers only a few connect requests from
    // one caller at a time); the wait is bounded by the connect timeout.
    let gate = inner.dial_gate(peer);
    let turn = tokio::time::timeout(inner.config.connect_timeout, gate.lock()).await.ok();
    // A live link to the peer carries the new connection: no signaling, no
    // punching (the fingerprint check still applies).
    if let Some(fingerprint) = known_fingerprint(inner, peer)
        && let Some(addr) = inner.links.live_addr_of(fingerprint)
    {
        drop(turn);
        let shared = links::open(inner, addr, convention, Some(fingerprint), id, owner, announce).await?;
        return Ok((shared, None));
    }
    let udp_blocked = inner.traversal.udp_blocked();
    if udp_blocked && let Some(relay) = &inner.relay {
        // Only the relay can carry this connect: offer its address.
        relay.settled(inner.config.connect_timeout).await;
    }
    inner.traversal.classified(CLASSIFY_WAIT).await;
    let session = inner.traversal.session(peer);
    let request = offer(inner, &session).await;
    let PeerOffer { offer: answer, observed } =
        signal.connect(peer, convention, request).await.map_err(|e| signal_error(peer, e))?;
    let fingerprint = Fingerprint::parse(&answer.fingerprint)
        .ok_or_else(|| ConnectError::Protocol(format!("{peer} answered without a valid fingerprint")))?;
    remember(inner, peer, fingerprint);
    permit_through_relay(inner, &answer);
    let (addr, report, relayed) = match answer.checks.clone() {
        Some(remote_credentials) => {
            let checks = tokio::select! {
                _ = inner.shutdown.cancelled() => return Err(ConnectError::ShuttingDown),
                checks = inner.traversal.run_checks(session, &answer, observed, remote_credentials, true) => checks,
            };
            match checks {
                Ok(report) => {
                    if let Some(rtt) = report.selected.rtt {
                        inner.remember_rtt(report.selected.remote, rtt);
                    }
                    (report.selected.remote, Some(report), false)
                }
                Err(reason) => (relay_path(inner, peer, &answer, &reason).await?, None, true),
            }
        }
        None => (race_candidates(inner, &answer.candidates, observed, fingerprint).await?, None, false),
    };
    let opened = links::open(inner, addr, convention, Some(fingerprint), id, owner, announce).await;
    if relayed && opened.is_err() && inner.links.live_addr_of(fingerprint) != Some(addr) {
        // No link came up through the relay: forget the route to it.
        inner.socket.unroute(addr);
    }
    drop(turn);
    let shared = opened?;
    if relayed {
        tracing::info!(%peer, relayed = %addr, "no direct path yet: connected through the relay");
    }
    if (relayed || report.is_some())
        && let Some(watch) = inner.links.watch_at(addr)
        && watch.claim_supervision()
    {
        // Both classifications may rule a direct path out; checking again
        // cannot change that until one of them changes.
        let recheck = !matches!(inner.traversal.plan(answer.nat.as_ref()), Plan::RelayRequired(_));
        let link = SupervisedLink { peer: peer.to_string(), convention, named: addr, fingerprint, recheck, watch };
        tokio::spawn(supervise(inner.clone(), link));
    }
    Ok((shared, report))
}

/// The way to `peer` through a relay when the checks found no direct path
/// (`reason`): its relayed address, reached from this node's socket, or
/// through this node's own allocation when this node cannot send UDP
/// itself (UDP blocked, or no address of the relay's family).
async fn relay_path(
    inner: &Arc<NodeInner>,
    peer: &str,
    answer: &Offer,
    reason: &str,
) -> Result<SocketAddr, ConnectError> {
    let Some(target) = answer.address_of(CandidateKind::Relayed) else {
        return Err(ConnectError::NoPath(format!(
            "{reason}; {peer} offers no relayed candidate (it has no TURN relay allocation)"
        )));
    };
    route_through_relay(inner, target, target)
        .await
        .map_err(|why| ConnectError::NoPath(format!("{reason}; {why} to reach {peer}'s relay")))?;
    Ok(target)
}

/// Sends the QUIC quinn addresses to `named` to the peer's relayed address
/// `target`: from this node's socket, or through this node's own
/// allocation when it cannot send UDP itself.
pub(super) async fn route_through_relay(
    inner: &Arc<NodeInner>,
    target: SocketAddr,
    named: SocketAddr,
) -> Result<(), String> {
    let udp_blocked = inner.traversal.udp_blocked();
    let own = inner.relay.as_ref().filter(|relay| relay.relayed().is_some());
    // An IPv6-only node reaches an IPv4 peer's relay through its own
    // allocation, whose relayed address is IPv4 (RFC 6156).
    let other_family = !inner.socket.reaches(target) || !crate::transport::socket::host_has_family_of(target.ip());
    if other_family {
        let own =
            own.ok_or_else(|| format!("this node has no address of {target}'s family and no relay allocation"))?;
        own.dial(target, named).await;
    } else if udp_blocked {
        // Only a node that cannot send UDP goes through its own
        // allocation. One that can sends from its socket even when its
        // allocation is over TCP or TLS (a TCP-only relay that was
        // nearer): the peer's relay lets through the public addresses the
        // offer named, not an allocation made after the offer left (and
        // that way is one hop fewer).
        let own = own.ok_or("UDP is blocked here and this node has no relay allocation")?;
        own.dial(target, named).await;
    } else if target == named {
        inner.socket.set_route(named, Route::PeerRelay);
    } else {
        inner.socket.set_route(named, Route::Moved { to: target, aux: None, relayed: true });
    }
    Ok(())
}

/// Candidates off the vouched IP a peer without check credentials gets
/// dialled on: each dial is a QUIC handshake (1,200-byte Initials, resent),
/// so an answer naming a third party many times cannot aim a flood at it.
const MAX_UNVOUCHED_DIALS: usize = 3;

/// Dials the candidates at once (every one on the IP signaling vouched
/// for, at most [`MAX_UNVOUCHED_DIALS`] others); the first link up wins
/// (nearest first).
async fn race_candidates(
    inner: &Arc<NodeInner>,
    candidates: &[Candidate],
    vouched: Option<IpAddr>,
    fingerprint: Fingerprint,
) -> Result<SocketAddr, ConnectError> {
    let mut attempts = JoinSet::new();
    let mut unvouched = 0;
    let dialled = candidates.iter().take(MAX_CANDIDATES).filter(|c| {
        if Some(c.addr.ip()) == vouched {
            return true;
        }
        unvouched += 1;
        unvouched <= MAX_UNVOUCHED_DIALS
    });
    for candidate in dialled {
        let inner = inner.clone();
        let addr = candidate.addr;
        attempts.spawn(async move { links::link(&inner, addr, Some(fingerprint)).await.map(|_| addr) });
    }
    let timeout = inner.config.connect_timeout;
    let first = tokio::time::timeout(timeout, async {
        let mut last = ConnectError::Unreachable("the peer offered no candidates".into());
        while let Some(result) = attempts.join_next().await {
            match result {
                Ok(Ok(addr)) => return Ok(addr),
                Ok(Err(e)) => last = e,
                Err(e) => last = ConnectError::Unreachable(e.to_string()),
            }
        }
        Err(last)
    })
    .await;
    attempts.abort_all();
    first.map_err(|_| ConnectError::Timeout(timeout))?
}

//! The node's side of signaling: answering connect requests with its offer,
//! and connecting by peer id.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::traversal::{Session, TraversalReport};
use super::{ConnectError, NodeInner, links};
use crate::convention::Convention;
use crate::signal::SignalError;
use crate::signal::client::IncomingRequest;
use crate::signal::protocol::{Candidate, CandidateKind, MAX_CANDIDATES, Offer};
use crate::transport::conn::{ConnShared, ConnectionId, Owner};
use crate::transport::identity::Fingerprint;
use crate::transport::wire::RefuseCode;

/// The addresses of this node's socket: the bound address, or every
/// interface address of its family when bound to the wildcard (loopback
/// last, since it only helps peers on the same host).
pub(super) fn host_candidates(local: SocketAddr) -> Vec<Candidate> {
    let candidate = |ip: IpAddr| Candidate { kind: CandidateKind::Host, addr: SocketAddr::new(ip, local.port()) };
    if !local.ip().is_unspecified() {
        return vec![candidate(local.ip())];
    }
    let mut ips: Vec<IpAddr> =
        if_addrs::get_if_addrs().map(|ifaces| ifaces.into_iter().map(|i| i.ip()).collect()).unwrap_or_default();
    ips.retain(|ip| ip.is_ipv4() == local.is_ipv4() && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()));
    ips.sort_by_key(|ip| ip.is_loopback());
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

/// This node's offer for one connect, with the check session's credentials.
async fn offer(inner: &NodeInner, session: &Session) -> Offer {
    let local = inner.endpoint.local_addr().unwrap_or(inner.config.listen);
    inner.traversal.offer(inner.identity.fingerprint().to_string(), host_candidates(local), session).await
}

fn remember(inner: &NodeInner, peer: &str, fingerprint: Fingerprint) {
    inner.peer_fingerprints.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.to_string(), fingerprint);
}

/// The fingerprint signaling announced for `peer`, if any.
pub(super) fn known_fingerprint(inner: &NodeInner, peer: &str) -> Option<Fingerprint> {
    inner.peer_fingerprints.lock().unwrap_or_else(|p| p.into_inner()).get(peer).copied()
}

/// Answers connect requests from other nodes until signaling stops.
pub(super) async fn answer_requests(inner: Arc<NodeInner>, mut requests: mpsc::Receiver<IncomingRequest>) {
    while let Some(request) = requests.recv().await {
        tokio::spawn(answer_request(inner.clone(), request));
    }
}

/// Answers one connect request and runs the checks for it (controlled
/// side); the caller then dials QUIC on the pair it nominated.
async fn answer_request(inner: Arc<NodeInner>, request: IncomingRequest) {
    let Some(signal) = inner.signal.clone() else { return };
    let Some(fingerprint) = Fingerprint::parse(&request.offer.fingerprint) else {
        signal.reject(&request, RefuseCode::BadRequest as u16, "offer without a valid fingerprint".into()).await;
        return;
    };
    // Refuse early what the QUIC handshake would refuse anyway.
    let route = Convention::from_raw(request.convention)
        .map_err(|e| (RefuseCode::ReservedBits, e.to_string()))
        .and_then(|c| inner.route(c).map(|_| ()));
    if let Err((code, message)) = route {
        signal.reject(&request, code as u16, message).await;
        return;
    }
    if inner.traversal.sessions() >= super::traversal::MAX_SESSIONS {
        let message = "too many connects in progress; try again".to_string();
        signal.reject(&request, RefuseCode::ServiceUnavailable as u16, message).await;
        return;
    }
    remember(&inner, &request.from, fingerprint);
    let mut session = inner.traversal.session();
    inner.traversal.prepare(&mut session, request.offer.nat.as_ref());
    let answer = offer(&inner, &session).await;
    signal.answer(&request, answer).await;
    let Some(remote_credentials) = request.offer.checks.clone() else { return };
    match inner.traversal.run_checks(session, &request.offer, remote_credentials, false).await {
        Ok(report) => tracing::debug!(
            peer = %request.from,
            remote = %report.selected.remote,
            plan = %report.plan,
            probes = report.stats.probes_sent,
            "checks selected a pair"
        ),
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
    // A live link to the peer carries the new connection: no signaling, no
    // punching (the fingerprint check still applies).
    if let Some(fingerprint) = known_fingerprint(inner, peer)
        && let Some(addr) = inner.links.live_addr_of(fingerprint)
    {
        let shared = links::open(inner, addr, convention, Some(fingerprint), id, owner, announce).await?;
        return Ok((shared, None));
    }
    let session = inner.traversal.session();
    let request = offer(inner, &session).await;
    let answer = signal.connect(peer, convention, request).await.map_err(|e| signal_error(peer, e))?;
    let fingerprint = Fingerprint::parse(&answer.fingerprint)
        .ok_or_else(|| ConnectError::Protocol(format!("{peer} answered without a valid fingerprint")))?;
    remember(inner, peer, fingerprint);
    let (addr, report) = match answer.checks.clone() {
        Some(remote_credentials) => {
            let report = tokio::select! {
                _ = inner.shutdown.cancelled() => return Err(ConnectError::ShuttingDown),
                report = inner.traversal.run_checks(session, &answer, remote_credentials, true) => {
                    report.map_err(ConnectError::NoPath)?
                }
            };
            (report.selected.remote, Some(report))
        }
        None => (race_candidates(inner, &answer.candidates, fingerprint).await?, None),
    };
    let shared = links::open(inner, addr, convention, Some(fingerprint), id, owner, announce).await?;
    Ok((shared, report))
}

/// Dials every candidate at once; the first link up wins (nearest first).
async fn race_candidates(
    inner: &Arc<NodeInner>,
    candidates: &[Candidate],
    fingerprint: Fingerprint,
) -> Result<SocketAddr, ConnectError> {
    let mut attempts = JoinSet::new();
    for candidate in candidates.iter().take(MAX_CANDIDATES) {
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

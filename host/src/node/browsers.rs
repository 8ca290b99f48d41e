//! The node's side of browser connections: answering a browser's
//! DataChannel offer that signaling carried, and passing on the
//! candidates it trickles. The connections themselves run in the
//! transport's [`RtcHost`](crate::transport::rtc::RtcHost).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use super::NodeInner;
use super::signaling::{host_candidates, refuse};
use crate::convention::{Convention, Transport};
use crate::signal::client::BrowserRequest;
use crate::transport::conn::{ConnLimits, ConnMeta};
use crate::transport::rtc::agent::{LocalCandidate, MAX_RTC_MESSAGE, RtcAgent, RtcIdentity};
use crate::transport::rtc::host::PendingBrowser;
use crate::transport::wire::RefuseCode;

/// Most browser connections being set up or open on one node; requests
/// beyond are refused with "service unavailable".
pub const MAX_BROWSER_CONNECTIONS: usize = 1024;

/// Most connections one browser id sets up at once (as for the connect
/// requests of one node); more are refused with "service unavailable".
pub const MAX_SETTING_UP_PER_BROWSER: usize = 8;

/// The node's DTLS identity, made on first use (once per node).
async fn identity(inner: &NodeInner) -> Result<RtcIdentity, String> {
    inner
        .rtc_identity
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(RtcIdentity::generate)
                .await
                .map_err(|e| format!("making the DTLS certificate: {e}"))?
                .map_err(|e| e.to_string())
        })
        .await
        .cloned()
}

/// The candidates a browser may reach this node at: its host addresses,
/// its public addresses (asked from the STUN servers through its socket),
/// and its relayed address while it holds a TURN allocation.
async fn local_candidates(inner: &NodeInner) -> Vec<LocalCandidate> {
    let local = inner.endpoint.local_addr().unwrap_or(inner.config.listen);
    let hosts: Vec<SocketAddr> = host_candidates(local)
        .into_iter()
        .map(|c| crate::transport::socket::canonical(c.addr))
        .filter(|addr| !addr.ip().is_unspecified())
        .collect();
    let mut candidates: Vec<LocalCandidate> = hosts.iter().copied().map(LocalCandidate::Host).collect();
    for public in inner.traversal.public_addresses().await {
        if !hosts.contains(&public)
            && let Some(&base) = hosts.iter().find(|h| h.is_ipv4() == public.is_ipv4() && !h.ip().is_loopback())
        {
            candidates.push(LocalCandidate::ServerReflexive { addr: public, base });
        }
    }
    if let Some(relayed) = relayed(inner)
        && let Some(&local) = hosts.iter().find(|h| !h.ip().is_loopback()).or(hosts.first())
    {
        candidates.push(LocalCandidate::Relayed { addr: relayed, local });
    }
    candidates
}

/// The node's relayed address, while it holds an allocation.
fn relayed(inner: &NodeInner) -> Option<SocketAddr> {
    inner.relay.as_ref().and_then(super::relay::RelayAgent::relayed)
}

/// Answers a browser's request: checks the service, answers its offer
/// with an agent on the node's socket, and hands the agent to the host,
/// which hands the connection to the service once its channel opens.
pub(super) async fn answer(inner: &Arc<NodeInner>, request: BrowserRequest) {
    let (Some(signal), Some(host)) = (inner.signal.clone(), inner.rtc.clone()) else { return };
    let asked = (request.request_id, request.from.as_str());
    let route = Convention::from_raw(request.convention)
        .map_err(|e| (RefuseCode::ReservedBits, e.to_string()))
        .and_then(|c| inner.dispatcher.route(c, Transport::Rtc).map(|route| (c, route)));
    let (convention, route) = match route {
        Ok(found) => found,
        Err((code, message)) => return refuse(inner, &signal, asked, code, message).await,
    };
    if host.agents() >= MAX_BROWSER_CONNECTIONS {
        let message = format!("this node serves at most {MAX_BROWSER_CONNECTIONS} browser connections");
        return refuse(inner, &signal, asked, RefuseCode::ServiceUnavailable, message).await;
    }
    if host.setting_up(&request.from) >= MAX_SETTING_UP_PER_BROWSER {
        let message = format!("{} sets up {MAX_SETTING_UP_PER_BROWSER} connections already", request.from);
        return refuse(inner, &signal, asked, RefuseCode::ServiceUnavailable, message).await;
    }
    let identity = match identity(inner).await {
        Ok(identity) => identity,
        Err(e) => return refuse(inner, &signal, asked, RefuseCode::ServiceUnavailable, e).await,
    };
    let now = Instant::now();
    let candidates = local_candidates(inner).await;
    let relayed = candidates.iter().find_map(|c| match c {
        LocalCandidate::Relayed { addr, .. } => Some(*addr),
        _ => None,
    });
    let (agent, answer) = match RtcAgent::answer(&identity, &request.sdp, &candidates, now) {
        Ok(answered) => answered,
        Err(e) => return refuse(inner, &signal, asked, RefuseCode::BadRequest, e.to_string()).await,
    };
    let meta = ConnMeta {
        id: inner.next_connection_id(),
        // Signaling vouches for the id: the browser registered it with
        // its token, and its DTLS fingerprint came in the offer over that
        // session (str0m checks the handshake against it).
        peer_id: request.from.clone(),
        peer_verified: true,
        passive: true,
        convention,
        remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    };
    let limits =
        ConnLimits { max_message_size: inner.conn_limits.max_message_size.min(MAX_RTC_MESSAGE), ..inner.conn_limits };
    let (owner, announce) = (route.owner(), route.announces());
    let weak = Arc::downgrade(inner);
    let deliver = Box::new(move |shared| {
        if let Some(inner) = weak.upgrade() {
            inner.links.register(&shared);
        }
        route.deliver(shared);
    });
    tracing::debug!(peer = %request.from, %convention, "browser connection answered");
    let pending = PendingBrowser {
        from: request.from.clone(),
        request_id: request.request_id,
        meta,
        limits,
        owner,
        announce,
        deliver,
        live: inner.links.live.enter(),
        open_by: now + inner.config.connect_timeout,
        relayed,
    };
    host.add(agent, pending).await;
    signal.answer_browser(&request, answer).await;
}

/// Passes a trickled candidate to the browser's agent.
pub(super) async fn candidate(inner: &NodeInner, from: String, request_id: u64, candidate: String) {
    if candidate.is_empty() {
        return; // the browser's end of candidates
    }
    if let Some(host) = &inner.rtc {
        host.candidate(from, request_id, candidate).await;
    }
}

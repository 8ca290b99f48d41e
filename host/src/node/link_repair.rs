//! Keeps a link this node made to a peer by id on a path that works.
//!
//! QUIC moves a connection when the *client's* address changes (the server
//! sees packets from a new address and validates it), but a client cannot
//! follow a server whose address changed, and behind filtering NATs
//! neither side's new packets pass until the other has sent toward the new
//! address. So the node that dialled asks the peer through signaling, as a
//! connect does, and both run the connectivity checks again: they open the
//! NATs' filters toward each other's new mappings, and the link's packets
//! move to the pair the checks select (the facade presents the new address
//! to quinn under the old one). This runs when the link goes silent:
//! - on a direct path (a NAT rebound, a host moved): checks again; with no
//!   direct pair left, the peer's relay;
//! - on a relayed path (the relay restarted and lost the peer's
//!   allocation): the peer's current relayed address.
//!
//! While the path is relayed it also runs the checks every
//! [`super::NodeConfig::direct_recheck_interval`] (unless both
//! classifications rule a direct path out) and moves the link to a direct
//! pair they find.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::NodeInner;
use super::link_watch::LinkWatch;
use super::signaling::{offer, route_through_relay};
use super::traversal::{Session, TraversalReport};
use crate::signal::SignalError;
use crate::signal::client::{PeerOffer, SignalClient};
use crate::signal::protocol::{CandidateKind, Offer};
use crate::transport::conn::PathKind;
use crate::transport::identity::Fingerprint;
use crate::transport::socket::Route;

/// How soon a repair that did not bring the link back is tried again.
const REPAIR_RETRY: Duration = Duration::from_secs(2);

/// A link this node made to a peer by id.
pub(super) struct SupervisedLink {
    pub(super) peer: String,
    /// The convention of the connect that made the link (asked again with).
    pub(super) convention: u32,
    /// The address quinn knows the link by.
    pub(super) named: SocketAddr,
    pub(super) fingerprint: Fingerprint,
    /// Whether to look for a direct path while relayed.
    pub(super) recheck: bool,
    pub(super) watch: Arc<LinkWatch>,
}

/// Looks after `link` until it ends or the node shuts down.
pub(super) async fn supervise(inner: Arc<NodeInner>, link: SupervisedLink) {
    let Some(signal) = inner.signal.clone() else { return };
    let mut events = link.watch.subscribe();
    let recheck_every = inner.config.direct_recheck_interval;
    let mut next_recheck = Instant::now() + recheck_every;
    let mut next_repair = Instant::now();
    loop {
        // Wake at least every keep-alive interval to notice the link's end.
        let mut wake = Instant::now() + inner.config.keep_alive_interval;
        if link.watch.is_silent() {
            wake = wake.min(next_repair);
        } else if link.recheck {
            wake = wake.min(next_recheck);
        }
        let mut now_wanted = false;
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            // Any event of the link is a reason to look again.
            _ = events.recv() => {}
            () = link.watch.repair_wanted() => now_wanted = true,
            _ = tokio::time::sleep_until(wake) => {}
        }
        if inner.links.connection_at(link.named).is_none() {
            return;
        }
        let relayed = inner.socket.path_kind(link.named) == PathKind::Relayed;
        let now = Instant::now();
        let silent = link.watch.is_silent();
        if now_wanted || (silent && now >= next_repair) {
            repair(&inner, &signal, &link, relayed, now_wanted).await;
            next_repair = Instant::now() + REPAIR_RETRY;
        } else if !silent && relayed && link.recheck && now >= next_recheck {
            next_recheck = now + recheck_every;
            try_direct_path(&inner, &signal, &link).await;
        }
    }
}

/// Looks for a path for a silent link, or for any link after the network
/// changed (`network_changed`: the path may be gone before the link
/// notices): a direct link checks again (falling back to the peer's
/// relay), a relayed one follows the peer's relay, and after a network
/// change also tries a direct path at once.
async fn repair(
    inner: &Arc<NodeInner>,
    signal: &SignalClient,
    link: &SupervisedLink,
    relayed: bool,
    network_changed: bool,
) {
    if network_changed {
        tracing::info!(peer = %link.peer, "the network changed: looking for a path");
    }
    if !relayed {
        return find_a_new_path(inner, signal, link).await;
    }
    if !network_changed && let Some(own) = &inner.relay {
        // A silent relayed link: this node's own allocation may be gone
        // too (after a network change the node checks it already).
        own.verify();
    }
    follow_the_peer_relay(inner, signal, link).await;
    if network_changed && link.recheck {
        try_direct_path(inner, signal, link).await;
    }
}

/// Asks the peer for its offer (as a connect does) on the link's behalf.
/// How long a repair waits for the peer's answer before asking once more:
/// the peer's classification wait after a network change, and a second.
const REPAIR_ANSWER_WAIT: Duration = Duration::from_secs(5);

async fn ask_again(
    inner: &Arc<NodeInner>,
    signal: &SignalClient,
    link: &SupervisedLink,
) -> Option<(Session, PeerOffer)> {
    if inner.traversal.sessions() >= super::traversal::MAX_SESSIONS {
        return None;
    }
    inner.traversal.classified(super::signaling::CLASSIFY_WAIT).await;
    let session = inner.traversal.session(&link.peer);
    let request = offer(inner, &session).await;
    // A peer that moved answers within its classification wait; a request
    // that reached its closing session (it registers again right now) is
    // lost, and is asked again rather than waited for the whole request
    // timeout.
    let mut answer =
        tokio::time::timeout(REPAIR_ANSWER_WAIT, signal.connect(&link.peer, link.convention, request.clone()))
            .await
            .unwrap_or_else(|_| Err(SignalError::Timeout(format!("no answer within {REPAIR_ANSWER_WAIT:?}"))));
    if matches!(answer, Err(SignalError::Unavailable(_) | SignalError::Timeout(_))) {
        // The session is being made again (after a network change, say):
        // ask once more when it is up.
        if signal.registered(inner.config.connect_timeout).await.is_ok() {
            answer = signal.connect(&link.peer, link.convention, request).await;
        }
    }
    match answer {
        Ok(answer) if answer.offer.fingerprint == link.fingerprint.to_string() => Some((session, answer)),
        Ok(_) => {
            tracing::warn!(peer = %link.peer, "the peer answered with another certificate");
            None
        }
        Err(e) => {
            tracing::info!(peer = %link.peer, "no answer for the link: {e}");
            None
        }
    }
}

/// Moves a silent relayed link to the peer's current relayed address.
async fn follow_the_peer_relay(inner: &Arc<NodeInner>, signal: &SignalClient, link: &SupervisedLink) {
    let Some((_session, PeerOffer { offer: answer, .. })) = ask_again(inner, signal, link).await else { return };
    let Some(target) = answer.address_of(CandidateKind::Relayed) else {
        tracing::info!(peer = %link.peer, "the peer has no relay allocation now; the link may end");
        return;
    };
    let current = inner.socket.peer_address(link.named);
    if target == current && inner.socket.route_of(link.named).is_some() {
        return;
    }
    match route_through_relay(inner, target, link.named).await {
        Ok(()) => {
            tracing::info!(peer = %link.peer, from = %current, to = %target, "relayed link follows the peer's new relay allocation");
            link.watch.look_now();
        }
        Err(why) => tracing::info!(peer = %link.peer, "cannot follow the peer's relay: {why}"),
    }
}

/// Asks the peer again and runs the checks with it: their outcome and the
/// peer's offer; `None` when the peer did not answer (or offers no checks)
/// or the node shuts down.
async fn check_again(
    inner: &Arc<NodeInner>,
    signal: &SignalClient,
    link: &SupervisedLink,
) -> Option<(Result<TraversalReport, String>, Offer)> {
    let (session, PeerOffer { offer: answer, observed }) = ask_again(inner, signal, link).await?;
    let remote_credentials = answer.checks.clone()?;
    let checks = tokio::select! {
        _ = inner.shutdown.cancelled() => return None,
        checks = inner.traversal.run_checks(session, &answer, observed, remote_credentials, true) => checks,
    };
    Some((checks, answer))
}

/// Runs the checks again for a silent direct link and moves it to the pair
/// they select; with none, to the peer's relay.
async fn find_a_new_path(inner: &Arc<NodeInner>, signal: &SignalClient, link: &SupervisedLink) {
    let Some((checks, answer)) = check_again(inner, signal, link).await else { return };
    let reason = match checks {
        Ok(report) => {
            move_link(inner, link, report.selected.remote);
            tracing::info!(peer = %link.peer, path = %report.selected.remote, plan = %report.plan, "silent link: checks found a path");
            return;
        }
        Err(reason) => reason,
    };
    let Some(target) = answer.address_of(CandidateKind::Relayed) else {
        tracing::info!(peer = %link.peer, "silent link: no direct path ({reason}) and no relay offered");
        return;
    };
    match route_through_relay(inner, target, link.named).await {
        Ok(()) => {
            tracing::info!(peer = %link.peer, %target, "silent link: no direct path ({reason}); moved to the peer's relay");
            link.watch.look_now();
        }
        Err(why) => tracing::info!(peer = %link.peer, "silent link: no direct path ({reason}), and {why}"),
    }
}

/// Runs the checks again for a relayed link; moves it to the direct pair
/// they find.
async fn try_direct_path(inner: &Arc<NodeInner>, signal: &SignalClient, link: &SupervisedLink) {
    match check_again(inner, signal, link).await {
        Some((Ok(report), _)) => {
            let direct = report.selected.remote;
            move_link(inner, link, direct);
            tracing::info!(peer = %link.peer, named = %link.named, %direct, plan = %report.plan, "link moved from the relay to a direct path");
        }
        Some((Err(reason), _)) => tracing::debug!(peer = %link.peer, "still no direct path: {reason}"),
        None => {}
    }
}

/// Sends the link's packets to `to` from now on (from the extra socket the
/// checks selected it on, if any), and has the link's monitor look.
fn move_link(inner: &NodeInner, link: &SupervisedLink, to: SocketAddr) {
    let socket = &inner.socket;
    match socket.route_of(to) {
        // The checks selected the pair on an extra socket and routed `to`
        // through it: when `to` is the link's own name that is all.
        Some(Route::Aux(_)) if to == link.named => {}
        Some(Route::Aux(aux)) => {
            socket.set_route(link.named, Route::Moved { to, aux: Some(aux), relayed: false });
            // The moved route keeps the extra socket open.
            socket.unroute(to);
        }
        _ if to == link.named => {
            // Back to the address quinn knows: no route needed.
            if socket.route_of(link.named).is_some() {
                socket.unroute(link.named);
            }
        }
        _ => socket.set_route(link.named, Route::Moved { to, aux: None, relayed: false }),
    }
    link.watch.look_now();
}

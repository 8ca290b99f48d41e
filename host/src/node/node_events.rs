//! The node's own events: signaling session, NAT classification, relay
//! allocation and presence, gathered from the parts that track them into
//! the node's event stream (the links publish theirs themselves).

use std::sync::Arc;

use tokio::sync::broadcast;

use super::NodeInner;
use crate::events::NodeEvent;
#[cfg(feature = "plugins")]
use crate::events::recv_skipping_lag;
#[cfg(feature = "plugins")]
use crate::node::RelayStatus;
#[cfg(feature = "plugins")]
use crate::runtime::subscriptions::{NodeEventFilter, NodeEventKinds};
#[cfg(feature = "plugins")]
use crate::signal::client::SignalClient;
use crate::signal::client::SignalStatus;
#[cfg(feature = "plugins")]
use crate::transport::conn::{ConnEvent, Owner};

/// Events of the node not yet taken by a slow subscriber before the oldest
/// are dropped (the channel's slots are allocated up front; events are
/// rare).
pub(super) const NODE_EVENT_CAPACITY: usize = 256;

/// Publishes the changes of the signaling status, the classification, the
/// relay allocation and presence until the node shuts down.
pub(super) async fn gather(inner: Arc<NodeInner>) {
    let events = inner.events.clone();
    let mut nat = inner.traversal.nat();
    let mut previous_nat = nat.borrow_and_update().clone();
    let mut relay = inner.relay.as_ref().map(super::relay::RelayAgent::status);
    let mut signal = inner.signal.as_ref().map(|s| s.status_watch());
    let mut registered = signal.as_mut().is_some_and(|s| *s.borrow_and_update() == SignalStatus::Registered);
    if registered {
        let _ = events.send(NodeEvent::SignalUp);
    }
    let mut presence = inner.signal.as_ref().map(|s| s.presence_receiver());
    if let Some(report) = &previous_nat {
        let _ = events.send(NodeEvent::NatClassified { previous: None, report: report.clone() });
    }
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            changed = nat.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = nat.borrow_and_update().clone();
                if let Some(report) = &now {
                    let _ = events.send(NodeEvent::NatClassified { previous: previous_nat.clone(), report: report.clone() });
                }
                previous_nat = now;
            }
            changed = changed_or_pending(relay.as_mut()) => match changed {
                Some(status) => {
                    let _ = events.send(NodeEvent::Relay(status));
                }
                None => relay = None,
            },
            changed = changed_or_pending(signal.as_mut()) => match changed {
                Some(status) => {
                    let up = status == SignalStatus::Registered;
                    if up && !registered {
                        let _ = events.send(NodeEvent::SignalUp);
                    } else if !up && registered {
                        let reason = match &status {
                            SignalStatus::Connecting => "connection to the server lost; reconnecting".to_string(),
                            SignalStatus::Refused(why) => format!("the server refused the registration: {why}"),
                            SignalStatus::Stopped => "stopped".to_string(),
                            SignalStatus::Registered => String::new(),
                        };
                        let _ = events.send(NodeEvent::SignalLost { reason });
                    }
                    registered = up;
                }
                None => signal = None,
            },
            event = next_presence(presence.as_mut()) => match event {
                Some(event) => {
                    let _ = events.send(NodeEvent::Presence { peer: event.id, online: event.online });
                }
                None => presence = None,
            },
        }
    }
}

/// The next value of a watch, `None` when its sender is gone; pends
/// forever without a watch.
async fn changed_or_pending<T: Clone>(watch: Option<&mut tokio::sync::watch::Receiver<T>>) -> Option<T> {
    let Some(watch) = watch else { return std::future::pending().await };
    watch.changed().await.ok()?;
    Some(watch.borrow_and_update().clone())
}

/// The next presence event (skipping what a lag lost), `None` when the
/// client is gone; pends forever without a client.
async fn next_presence(
    presence: Option<&mut broadcast::Receiver<crate::signal::client::PresenceEvent>>,
) -> Option<crate::signal::client::PresenceEvent> {
    let Some(presence) = presence else { return std::future::pending().await };
    crate::events::recv_skipping_lag(presence).await
}

#[cfg(feature = "plugins")]
/// What the node's state is now, as the events of `kinds` that made it:
/// registered with signaling, the NAT classification, the relay
/// allocation (none for a kind whose state has no event, e.g. not
/// registered yet).
pub(super) fn current_state(inner: &NodeInner, kinds: NodeEventKinds) -> Vec<NodeEvent> {
    let mut state = Vec::new();
    if kinds.contains(NodeEventKinds::SIGNALING)
        && inner.signal.as_ref().is_some_and(|s| s.status() == SignalStatus::Registered)
    {
        state.push(NodeEvent::SignalUp);
    }
    if kinds.contains(NodeEventKinds::NAT)
        && let Some(report) = inner.traversal.nat().borrow().clone()
    {
        state.push(NodeEvent::NatClassified { previous: None, report });
    }
    if kinds.contains(NodeEventKinds::RELAY)
        && let Some(relay) = &inner.relay
    {
        let status = relay.status().borrow().clone();
        if matches!(status, RelayStatus::Allocated { .. }) {
            state.push(NodeEvent::Relay(status));
        }
    }
    state
}

#[cfg(feature = "plugins")]
/// Tells a plugin's channel the node's `state` now, then, unless another
/// task does already, forwards the node's events that `filter` may want
/// (from `events`, subscribed before the state was read) until the channel
/// closes or the node shuts down. A plugin that falls behind by more than
/// the node's event capacity misses the oldest.
pub(super) async fn forward_to_plugin(
    state: Vec<NodeEvent>,
    mut events: broadcast::Receiver<NodeEvent>,
    shutdown: tokio_util::sync::CancellationToken,
    filter: Arc<NodeEventFilter>,
    owner: Owner,
) {
    for event in state {
        if owner.send(ConnEvent::Node(event)).await.is_err() {
            return;
        }
    }
    if !filter.start_forwarding() {
        return;
    }
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = owner.closed() => return,
            event = recv_skipping_lag(&mut events) => event,
        };
        let Some(event) = event else { return };
        if filter.may_want(&event) && owner.send(ConnEvent::Node(event)).await.is_err() {
            return;
        }
    }
}

#[cfg(feature = "plugins")]
/// How long a new watcher waits for the node to be registered before it
/// is told a peer's presence.
const PRESENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(feature = "plugins")]
/// Subscribes the node to presence (once), then tells `owner` whether
/// `peer` is online now. Without registration within [`PRESENCE_WAIT`]
/// the first event waits for the peer's next change.
pub(super) async fn tell_presence(signal: SignalClient, peer: String, owner: Owner) {
    drop(signal.presence().await);
    if signal.registered(PRESENCE_WAIT).await.is_err() {
        return;
    }
    match signal.peers().await {
        Ok(peers) => {
            let online = peers.contains(&peer);
            let _ = owner.send(ConnEvent::Node(NodeEvent::Presence { peer, online })).await;
        }
        Err(e) => tracing::debug!(%peer, "cannot tell a watched peer's presence: {e}"),
    }
}

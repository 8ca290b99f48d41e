//! The node's own events: signaling session, NAT classification, relay
//! allocation and presence, gathered from the parts that track them into
//! the node's event stream (the links publish theirs themselves).

use std::sync::Arc;

use tokio::sync::broadcast;

use super::NodeInner;
use crate::events::NodeEvent;
use crate::signal::client::SignalStatus;

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

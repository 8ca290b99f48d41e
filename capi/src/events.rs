//! Network events as the C API reports them: the codes of the original
//! `iv_avt_event_e` where it defines one (PEER_ADDR_CHANGED 3,
//! LOCAL_NET_READY 7, LINK_DISCONNECT 8), extension codes from 0x100 for
//! the rest (see `fogconnect.h`).

use std::ffi::{c_char, c_int, c_void};

use fogconnect::{NetworkEvent, NodeEvent, RelayStatus};

/// `pr_net_event_cb_t`.
pub(crate) type EventCallback = unsafe extern "C" fn(*mut c_void, *mut c_void, c_int, *const c_char, *mut c_void);

/// A connection's path changed (the original's PEER_ADDR_CHANGED).
pub(crate) const PEER_ADDR_CHANGED: c_int = 3;
/// The host's network changed and the node adapted (LOCAL_NET_READY).
pub(crate) const LOCAL_NET_READY: c_int = 7;
/// A connection's link went silent (LINK_DISCONNECT).
pub(crate) const LINK_DISCONNECT: c_int = 8;
/// A silent link hears from its peer again.
pub(crate) const LINK_RECOVERED: c_int = 0x100;
/// Registered with signaling.
pub(crate) const SIGNAL_UP: c_int = 0x101;
/// The signaling session was lost (the node reconnects).
pub(crate) const SIGNAL_LOST: c_int = 0x102;
/// The NAT was classified.
pub(crate) const NAT_CLASSIFIED: c_int = 0x103;
/// A relay allocation was made.
pub(crate) const RELAY_ALLOCATED: c_int = 0x104;
/// The relay allocation failed or was lost (the node retries).
pub(crate) const RELAY_LOST: c_int = 0x105;

/// The code and text of a connection's network event.
pub(crate) fn code_of_network(event: &NetworkEvent) -> (c_int, String) {
    let code = match event {
        NetworkEvent::PathChanged { .. } => PEER_ADDR_CHANGED,
        NetworkEvent::LinkSilent { .. } => LINK_DISCONNECT,
        NetworkEvent::LinkRecovered { .. } => LINK_RECOVERED,
    };
    (code, event.to_string())
}

/// The code and text of a node event the C API reports (link events come
/// per connection instead; presence and relay retries are not reported).
pub(crate) fn code_of_node(event: &NodeEvent) -> Option<(c_int, String)> {
    let code = match event {
        NodeEvent::SignalUp => SIGNAL_UP,
        NodeEvent::SignalLost { .. } => SIGNAL_LOST,
        NodeEvent::NetworkChanged { .. } => LOCAL_NET_READY,
        NodeEvent::NatClassified { .. } => NAT_CLASSIFIED,
        NodeEvent::Relay(RelayStatus::Allocated { .. }) => RELAY_ALLOCATED,
        NodeEvent::Relay(RelayStatus::Failed(_)) => RELAY_LOST,
        NodeEvent::Relay(_) | NodeEvent::Presence { .. } | NodeEvent::Link { .. } => return None,
    };
    Some((code, event.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_codes_are_kept() {
        let silent = NetworkEvent::LinkSilent { after: std::time::Duration::from_secs(1) };
        assert_eq!(code_of_network(&silent).0, 8);
        assert_eq!(code_of_node(&NodeEvent::SignalUp).map(|(c, _)| c), Some(0x101));
        let changed = NodeEvent::NetworkChanged { added: vec![], removed: vec![], addresses: vec![] };
        assert_eq!(code_of_node(&changed).map(|(c, _)| c), Some(7));
    }
}

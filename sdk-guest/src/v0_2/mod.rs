//! Service plugins on the `fogconnect:plugin@0.2.0` contract: the API of
//! the crate root plus network and node events.
//!
//! Implement [`Service`] (every callback has a default but `on_recv`) and
//! export it with [`export_service_0_2!`](crate::export_service_0_2):
//!
//! ```ignore
//! use fogconnect_guest::v0_2::{self, Connection, NetworkEvent, NodeEvent, NodeEventKinds, Service};
//!
//! #[derive(Default)]
//! struct Watcher;
//!
//! impl Service for Watcher {
//!     fn init(&mut self) {
//!         v0_2::subscribe(NodeEventKinds::SIGNALING | NodeEventKinds::NAT);
//!         let _ = v0_2::watch_peer("camera-7");
//!     }
//!     fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
//!         let _ = conn.send(&data);
//!     }
//!     fn on_network_event(&mut self, conn: Connection, event: NetworkEvent) {
//!         v0_2::log(v0_2::LogLevel::Info, &format!("{conn:?}: {event:?}"));
//!     }
//!     fn on_node_event(&mut self, event: NodeEvent) {
//!         v0_2::log(v0_2::LogLevel::Info, &format!("{event:?}"));
//!     }
//! }
//!
//! fogconnect_guest::export_service_0_2!(Watcher);
//! ```
//!
//! Differences from 0.1.0 besides the events: [`Transport`] and the
//! convention number use the original header's codes (QUIC 5), and
//! [`ConnectInfo`] carries the connection's [`PathInfo`].

/// Generated bindings of the `fogconnect:plugin/evented-service@0.2.0` world.
/// Plugins do not need them directly; they are public for the
/// [`export_service_0_2!`](crate::export_service_0_2) macro.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "evented-service",
        path: "../wit/plugin-0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_service_world_0_2",
        default_bindings_module: "fogconnect_guest::v0_2::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub mod stream;

use bindings::fogconnect::plugin::{host, types};

pub use types::{
    AddressChange, CloseKind, CloseReason, ConnError, ConnectError, ConnectInfo, ConnectionStats, LogLevel,
    NatClassification, NetworkEvent, NodeEvent, NodeEventKinds, PathChange, PathInfo, PathKind, PeerPresence,
    RelayAllocation, Transport, WatchError,
};

connection_api!(
    "The convention number: transport code in bits 0..3 (the original
    header's: QUIC 5), service number in bits 4..11."
);

impl Connection {
    /// The connection's current path.
    ///
    /// # Errors
    /// [`ConnError::UnknownConnection`] when the connection has ended.
    pub fn path(self) -> Result<PathInfo, ConnError> {
        host::path(self.0)
    }
}

/// Chooses the node events this instance receives with
/// [`Service::on_node_event`], replacing the previous choice.
pub fn subscribe(kinds: NodeEventKinds) {
    host::subscribe(kinds)
}

/// Watches a peer's presence: [`NodeEvent::Presence`] now and whenever it
/// changes.
///
/// # Errors
/// [`WatchError`]: no signaling, a bad id, too many watched peers.
pub fn watch_peer(peer: &str) -> Result<(), WatchError> {
    host::watch_peer(peer)
}

/// Stops watching a peer.
pub fn unwatch_peer(peer: &str) {
    host::unwatch_peer(peer)
}

/// The callbacks of a 0.2.0 service plugin.
///
/// The node calls them one at a time, in event order. Only `on_recv` must
/// be written; the others default to doing nothing.
pub trait Service: Default + 'static {
    /// Called once per instance before any other callback (at load, after
    /// a restart, for a swap's new generation before its state is
    /// restored): subscribe and watch peers here.
    fn init(&mut self) {}

    /// A connection was established (see [`ConnectInfo::passive`]).
    fn on_connect(&mut self, conn: Connection, info: ConnectInfo) {
        let _ = (conn, info);
    }

    /// One whole message arrived.
    fn on_recv(&mut self, conn: Connection, data: Vec<u8>);

    /// Something changed under a connection: its path, or its link went
    /// silent or recovered.
    fn on_network_event(&mut self, conn: Connection, event: NetworkEvent) {
        let _ = (conn, event);
    }

    /// A node event this instance subscribed to, or a watched peer's
    /// presence.
    fn on_node_event(&mut self, event: NodeEvent) {
        let _ = event;
    }

    /// The connection ended; the last call for `conn`.
    fn on_close(&mut self, conn: Connection, reason: CloseReason) {
        let _ = (conn, reason);
    }
}

/// Exports a [`v0_2::Service`](crate::v0_2::Service) implementation as the
/// plugin's callbacks (contract `fogconnect:plugin@0.2.0`).
///
/// `export_service_0_2!(Type, handoff)` also exports the type's
/// [`Handoff`](crate::handoff::Handoff) implementation.
#[macro_export]
macro_rules! export_service_0_2 {
    ($service:ty, handoff) => {
        $crate::export_service_0_2!($service);

        $crate::__export_handoff!(__FogconnectExport, __FOGCONNECT_SERVICE);
    };
    ($service:ty) => {
        #[doc(hidden)]
        pub struct __FogconnectExport;

        ::std::thread_local! {
            static __FOGCONNECT_SERVICE: ::std::cell::RefCell<$service> =
                ::std::cell::RefCell::new(<$service as ::core::default::Default>::default());
        }

        impl $crate::v0_2::bindings::exports::fogconnect::plugin::handler::Guest for __FogconnectExport {
            fn init() {
                __FOGCONNECT_SERVICE.with(|s| $crate::v0_2::Service::init(&mut *s.borrow_mut()))
            }
            fn on_connect(conn: u64, info: $crate::v0_2::ConnectInfo) {
                __FOGCONNECT_SERVICE.with(|s| {
                    $crate::v0_2::Service::on_connect(
                        &mut *s.borrow_mut(),
                        $crate::v0_2::Connection::from_raw(conn),
                        info,
                    )
                })
            }
            fn on_recv(conn: u64, data: ::std::vec::Vec<u8>) {
                __FOGCONNECT_SERVICE.with(|s| {
                    $crate::v0_2::Service::on_recv(&mut *s.borrow_mut(), $crate::v0_2::Connection::from_raw(conn), data)
                })
            }
            fn on_network_event(conn: u64, event: $crate::v0_2::NetworkEvent) {
                __FOGCONNECT_SERVICE.with(|s| {
                    $crate::v0_2::Service::on_network_event(
                        &mut *s.borrow_mut(),
                        $crate::v0_2::Connection::from_raw(conn),
                        event,
                    )
                })
            }
            fn on_node_event(event: $crate::v0_2::NodeEvent) {
                __FOGCONNECT_SERVICE.with(|s| $crate::v0_2::Service::on_node_event(&mut *s.borrow_mut(), event))
            }
            fn on_close(conn: u64, reason: $crate::v0_2::CloseReason) {
                __FOGCONNECT_SERVICE.with(|s| {
                    $crate::v0_2::Service::on_close(
                        &mut *s.borrow_mut(),
                        $crate::v0_2::Connection::from_raw(conn),
                        reason,
                    )
                })
            }
        }

        $crate::v0_2::bindings::__export_service_world_0_2!(__FogconnectExport with_types_in $crate::v0_2::bindings);
    };
}

//! Guest SDK for fogconnect service plugins.
//!
//! A service plugin is a WebAssembly component (built with
//! `cargo build --target wasm32-wasip2`) that a fogconnect node loads for one
//! service number. This crate hides the generated WIT bindings behind a small
//! API: implement [`Service`] for a type with [`Default`], then export it with
//! [`export_service!`].
//!
//! ```ignore
//! use fogconnect_guest::{export_service, Connection, ConnectInfo, Service};
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! impl Service for Echo {
//!     fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
//!         let _ = conn.send(&data);
//!     }
//! }
//!
//! export_service!(Echo);
//! ```
//!
//! Stream plugins (the device SDK's push model with watermark congestion
//! control) implement [`stream::StreamPlugin`] instead and export it with
//! [`export_stream!`].
//!
//! A service whose state should survive a live swap of its plugin also
//! implements [`handoff::Handoff`] and is exported with
//! `export_service!(Type, handoff)`.

pub mod handoff;
pub mod stream;

/// Generated bindings of the `fogconnect:plugin/service` world. Plugins do not
/// need them directly; they are public for the [`export_service!`] macro.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "service",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_service_world",
        default_bindings_module: "fogconnect_guest::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

use bindings::fogconnect::plugin::{host, types};

pub use types::{
    CloseKind, CloseReason, ConnError, ConnectError, ConnectInfo, ConnectionStats, LogLevel, PathKind, Transport,
};

/// One connection of this plugin's service.
///
/// A cheap copyable handle; it stays valid until [`Service::on_close`] was
/// called for it, after which every method returns
/// [`ConnError::UnknownConnection`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Connection(u64);

impl Connection {
    /// Wraps a raw handle given by the node.
    pub fn from_raw(handle: u64) -> Self {
        Self(handle)
    }

    /// The raw handle, e.g. as a map key.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// Queues one message; it arrives as exactly one `on_recv` on the remote
    /// side.
    ///
    /// # Errors
    /// [`ConnError::TooLarge`] above the node's maximum message size,
    /// [`ConnError::BufferFull`] when the send buffer is full,
    /// [`ConnError::Closed`] / [`ConnError::UnknownConnection`] when the
    /// connection has ended.
    pub fn send(self, data: &[u8]) -> Result<(), ConnError> {
        host::send(self.0, data)
    }

    /// Closes the connection in an orderly way; `on_close` with
    /// [`CloseKind::Local`] follows.
    ///
    /// # Errors
    /// [`ConnError::UnknownConnection`] when the connection has ended.
    pub fn close(self) -> Result<(), ConnError> {
        host::close(self.0)
    }

    /// The convention number (transport in bits 0..3, service in bits 4..11)
    /// as the `fogconnect:plugin@0.1.0` contract numbers it: QUIC is 1
    /// there (nodes, the Rust and the C API use the original header's code
    /// 5 for QUIC).
    ///
    /// # Errors
    /// [`ConnError::UnknownConnection`] when the connection has ended.
    pub fn convention(self) -> Result<u32, ConnError> {
        host::convention(self.0)
    }

    /// True when the remote node dialled this connection.
    ///
    /// # Errors
    /// [`ConnError::UnknownConnection`] when the connection has ended.
    pub fn is_passive(self) -> Result<bool, ConnError> {
        host::is_passive(self.0)
    }

    /// Identifier of the remote node.
    ///
    /// # Errors
    /// [`ConnError::UnknownConnection`] when the connection has ended.
    pub fn peer_id(self) -> Result<String, ConnError> {
        host::peer_id(self.0)
    }

    /// The connection's user-data slot (0 until set).
    ///
    /// # Errors
    /// [`ConnError::UnknownConnection`] when the connection has ended.
    pub fn user_data(self) -> Result<u64, ConnError> {
        host::user_data(self.0)
    }

    /// Stores a value in the connection's user-data slot.
    ///
    /// # Errors
    /// [`ConnError::UnknownConnection`] when the connection has ended.
    pub fn set_user_data(self, value: u64) -> Result<(), ConnError> {
        host::set_user_data(self.0, value)
    }

    /// Counters and measurements of the connection.
    ///
    /// # Errors
    /// [`ConnError::UnknownConnection`] when the connection has ended.
    pub fn stats(self) -> Result<ConnectionStats, ConnError> {
        host::stats(self.0)
    }
}

/// Starts a connection to `peer` (a `host:port` address or a peer id) for
/// `service`. The result arrives later as `on_connect` or `on_close`.
///
/// # Errors
/// [`ConnectError`] when the request cannot even be started.
pub fn connect_peer(peer: &str, transport: Transport, service: u8) -> Result<Connection, ConnectError> {
    host::connect_peer(peer, transport, service).map(Connection)
}

/// Writes a line to the node's log.
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message)
}

/// Monotonic time in nanoseconds.
pub fn monotonic_now() -> u64 {
    host::monotonic_now()
}

/// The callbacks of a service plugin.
///
/// The node calls them one at a time, in event order. Only `on_recv` must be
/// written; the others default to doing nothing.
pub trait Service: Default + 'static {
    /// A connection was established (see [`ConnectInfo::passive`]).
    fn on_connect(&mut self, conn: Connection, info: ConnectInfo) {
        let _ = (conn, info);
    }

    /// One whole message arrived.
    fn on_recv(&mut self, conn: Connection, data: Vec<u8>);

    /// The connection ended; the last call for `conn`.
    fn on_close(&mut self, conn: Connection, reason: CloseReason) {
        let _ = (conn, reason);
    }
}

/// Exports a [`Service`] implementation as the plugin's callbacks.
///
/// One instance of the type is created with [`Default`] when the plugin is
/// instantiated and lives as long as that instance.
///
/// `export_service!(Type, handoff)` also exports the type's
/// [`handoff::Handoff`] implementation, so that its state moves to the next
/// generation when the plugin is swapped live.
#[macro_export]
macro_rules! export_service {
    ($service:ty, handoff) => {
        $crate::export_service!($service);

        impl $crate::handoff::bindings::exports::fogconnect::handoff::state::Guest for __FogconnectExport {
            fn snapshot() -> ::std::vec::Vec<u8> {
                __FOGCONNECT_SERVICE.with(|s| $crate::handoff::Handoff::snapshot(&mut *s.borrow_mut()))
            }
            fn restore(state: ::std::vec::Vec<u8>) -> ::core::result::Result<(), ::std::string::String> {
                __FOGCONNECT_SERVICE.with(|s| $crate::handoff::Handoff::restore(&mut *s.borrow_mut(), state))
            }
        }

        $crate::handoff::bindings::__export_handoff_world!(__FogconnectExport with_types_in $crate::handoff::bindings);
    };
    ($service:ty) => {
        #[doc(hidden)]
        pub struct __FogconnectExport;

        ::std::thread_local! {
            static __FOGCONNECT_SERVICE: ::std::cell::RefCell<$service> =
                ::std::cell::RefCell::new(<$service as ::core::default::Default>::default());
        }

        impl $crate::bindings::exports::fogconnect::plugin::handler::Guest for __FogconnectExport {
            fn on_connect(conn: u64, info: $crate::ConnectInfo) {
                __FOGCONNECT_SERVICE.with(|s| {
                    $crate::Service::on_connect(&mut *s.borrow_mut(), $crate::Connection::from_raw(conn), info)
                })
            }
            fn on_recv(conn: u64, data: ::std::vec::Vec<u8>) {
                __FOGCONNECT_SERVICE.with(|s| {
                    $crate::Service::on_recv(&mut *s.borrow_mut(), $crate::Connection::from_raw(conn), data)
                })
            }
            fn on_close(conn: u64, reason: $crate::CloseReason) {
                __FOGCONNECT_SERVICE.with(|s| {
                    $crate::Service::on_close(&mut *s.borrow_mut(), $crate::Connection::from_raw(conn), reason)
                })
            }
        }

        $crate::bindings::__export_service_world!(__FogconnectExport with_types_in $crate::bindings);
    };
}

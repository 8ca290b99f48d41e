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
//!
//! The API at the top of this crate is the `fogconnect:plugin@0.1.0`
//! contract. A plugin that wants network and node events (a connection's
//! path changed, its link went silent or recovered; signaling, NAT, relay,
//! addresses, presence of watched peers) uses [`v0_2`] instead: the same
//! API plus those events, exported with
//! [`export_service_0_2!`](crate::export_service_0_2); a stream plugin
//! uses [`v0_2::stream`] and [`export_stream_0_2!`](crate::export_stream_0_2).

#[macro_use]
mod connection_api;
#[macro_use]
mod stream_api;
pub mod handoff;
pub mod stream;
pub mod transport;
pub mod v0_2;

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

connection_api!(
    "The convention number (transport in bits 0..3, service in bits 4..11)
    as the `fogconnect:plugin@0.1.0` contract numbers it: QUIC is 1 there
    (nodes, the Rust and the C API, and contract 0.2.0 use the original
    header's code 5 for QUIC)."
);

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

        $crate::__export_handoff!(__FogconnectExport, __FOGCONNECT_SERVICE);
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

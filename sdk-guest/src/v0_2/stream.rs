//! Stream plugins on the `fogconnect:streaming@0.2.0` contract: the API of
//! [`crate::stream`] plus network and node events.
//!
//! Implement [`StreamPlugin`] and export it with
//! [`export_stream_0_2!`](crate::export_stream_0_2). The stream types
//! ([`Pull`], [`WatermarkEvent`], ...) are those of 0.1.0; the event types
//! those of [`crate::v0_2`].
//!
//! ```ignore
//! use fogconnect_guest::v0_2::stream::{Pull, Stream, StreamConnection, StreamPlugin};
//! use fogconnect_guest::v0_2::{NetworkEvent, PathKind};
//!
//! #[derive(Default)]
//! struct Camera { relayed: bool }
//!
//! impl StreamPlugin for Camera {
//!     fn send_init(&mut self, _conn: StreamConnection, _params: String) -> Result<Stream, String> {
//!         Ok(Stream::from_raw(1))
//!     }
//!     fn send_get(&mut self, _stream: Stream) -> Pull {
//!         Pull::Data(vec![0; if self.relayed { 500 } else { 2_000 }])
//!     }
//!     fn on_network_event(&mut self, _conn: StreamConnection, event: NetworkEvent) {
//!         if let NetworkEvent::PathChanged(change) = event {
//!             self.relayed = change.to.kind == PathKind::Relayed;
//!         }
//!     }
//! }
//!
//! fogconnect_guest::export_stream_0_2!(Camera);
//! ```

/// Generated bindings of the `fogconnect:streaming/evented-stream-plugin@0.2.0`
/// world. Plugins do not need them directly; they are public for the
/// [`export_stream_0_2!`](crate::export_stream_0_2) macro.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "evented-stream-plugin",
        path: "../wit/stream-0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_stream_world_0_2",
        default_bindings_module: "fogconnect_guest::v0_2::stream::bindings",
        with: {
            "fogconnect:streaming/types@0.1.0": crate::stream::bindings::fogconnect::streaming::types,
            "fogconnect:plugin/types@0.2.0": crate::v0_2::bindings::fogconnect::plugin::types,
        },
    });
}

use bindings::fogconnect::streaming0_2_0::host;

pub use crate::stream::{CommandError, LogLevel, Pull, SendStatistics, StreamError, WatermarkEvent};
use crate::v0_2::{NetworkEvent, NodeEvent, NodeEventKinds, PathInfo, WatchError};

stream_api!();

impl StreamConnection {
    /// The connection's current path; `None` once it ended.
    pub fn path(self) -> Option<PathInfo> {
        host::path(self.0)
    }
}

/// Chooses the node events this instance receives with
/// [`StreamPlugin::on_node_event`], replacing the previous choice.
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

/// The callbacks of a 0.2.0 stream plugin: those of
/// [`crate::stream::StreamPlugin`] (same meaning and defaults) and the
/// events. `send_init` and `send_get` must be written.
pub trait StreamPlugin: Default + 'static {
    /// Called once per instance before any other callback: subscribe and
    /// watch peers here.
    fn init(&mut self) {}

    /// An application asks for a stream: return its handle, or a reason
    /// to refuse.
    fn send_init(&mut self, conn: StreamConnection, params: String) -> Result<Stream, String>;

    /// One pull of a stream: data, empty data for nothing now, or the end.
    fn send_get(&mut self, stream: Stream) -> Pull;

    /// The stream ended (exactly once per handle `send_init` returned).
    fn send_stop(&mut self, stream: Stream) {
        let _ = stream;
    }

    /// A watermark of a stream was crossed.
    fn on_event(&mut self, stream: Stream, event: WatermarkEvent) {
        let _ = (stream, event);
    }

    /// An application opens a talk-back stream; refused by default.
    fn recv_init(&mut self, conn: StreamConnection, params: String) -> Result<Stream, String> {
        let _ = (conn, params);
        Err("this plugin takes no talk-back".into())
    }

    /// Talk-back data; empty marks the end.
    fn recv_data(&mut self, stream: Stream, data: Vec<u8>) {
        let _ = (stream, data);
    }

    /// A command from the application; refused by default.
    fn on_command(&mut self, conn: StreamConnection, message: Vec<u8>) -> Result<Vec<u8>, String> {
        let _ = (conn, message);
        Err("this plugin takes no commands".into())
    }

    /// The outcome of a command this plugin sent.
    fn on_command_reply(&mut self, id: u64, reply: Result<Vec<u8>, CommandError>) {
        let _ = (id, reply);
    }

    /// Something changed under a connection of the plugin's streams.
    fn on_network_event(&mut self, conn: StreamConnection, event: NetworkEvent) {
        let _ = (conn, event);
    }

    /// A node event this instance subscribed to, or a watched peer's
    /// presence.
    fn on_node_event(&mut self, event: NodeEvent) {
        let _ = event;
    }
}

/// Exports a [`v0_2::stream::StreamPlugin`](crate::v0_2::stream::StreamPlugin)
/// implementation as the plugin's callbacks (contract
/// `fogconnect:streaming@0.2.0`). `export_stream_0_2!(Type, handoff)` also
/// exports its [`Handoff`](crate::handoff::Handoff) implementation.
#[macro_export]
macro_rules! export_stream_0_2 {
    ($plugin:ty, handoff) => {
        $crate::export_stream_0_2!($plugin);

        $crate::__export_handoff!(__FogconnectStreamExport, __FOGCONNECT_STREAM);
    };
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __FogconnectStreamExport;

        ::std::thread_local! {
            static __FOGCONNECT_STREAM: ::std::cell::RefCell<$plugin> =
                ::std::cell::RefCell::new(<$plugin as ::core::default::Default>::default());
        }

        impl $crate::v0_2::stream::bindings::exports::fogconnect::streaming0_2_0::handler::Guest
            for __FogconnectStreamExport
        {
            fn init() {
                __FOGCONNECT_STREAM.with(|p| $crate::v0_2::stream::StreamPlugin::init(&mut *p.borrow_mut()))
            }
            fn send_init(conn: u64, params: ::std::string::String) -> ::core::result::Result<u64, ::std::string::String> {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::v0_2::stream::StreamPlugin::send_init(
                        &mut *p.borrow_mut(),
                        $crate::v0_2::stream::StreamConnection::from_raw(conn),
                        params,
                    )
                    .map($crate::v0_2::stream::Stream::raw)
                })
            }
            fn send_get(streams: ::std::vec::Vec<u64>) -> ::std::vec::Vec<$crate::stream::Pull> {
                __FOGCONNECT_STREAM.with(|p| {
                    let mut plugin = p.borrow_mut();
                    streams
                        .into_iter()
                        .map(|s| {
                            $crate::v0_2::stream::StreamPlugin::send_get(
                                &mut *plugin,
                                $crate::v0_2::stream::Stream::from_raw(s),
                            )
                        })
                        .collect()
                })
            }
            fn send_stop(stream: u64) {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::v0_2::stream::StreamPlugin::send_stop(
                        &mut *p.borrow_mut(),
                        $crate::v0_2::stream::Stream::from_raw(stream),
                    )
                })
            }
            fn on_event(stream: u64, event: $crate::stream::WatermarkEvent) {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::v0_2::stream::StreamPlugin::on_event(
                        &mut *p.borrow_mut(),
                        $crate::v0_2::stream::Stream::from_raw(stream),
                        event,
                    )
                })
            }
            fn recv_init(conn: u64, params: ::std::string::String) -> ::core::result::Result<u64, ::std::string::String> {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::v0_2::stream::StreamPlugin::recv_init(
                        &mut *p.borrow_mut(),
                        $crate::v0_2::stream::StreamConnection::from_raw(conn),
                        params,
                    )
                    .map($crate::v0_2::stream::Stream::raw)
                })
            }
            fn recv_data(stream: u64, data: ::std::vec::Vec<u8>) {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::v0_2::stream::StreamPlugin::recv_data(
                        &mut *p.borrow_mut(),
                        $crate::v0_2::stream::Stream::from_raw(stream),
                        data,
                    )
                })
            }
            fn on_command(
                conn: u64,
                message: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::v0_2::stream::StreamPlugin::on_command(
                        &mut *p.borrow_mut(),
                        $crate::v0_2::stream::StreamConnection::from_raw(conn),
                        message,
                    )
                })
            }
            fn on_command_reply(
                id: u64,
                reply: ::core::result::Result<::std::vec::Vec<u8>, $crate::stream::CommandError>,
            ) {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::v0_2::stream::StreamPlugin::on_command_reply(&mut *p.borrow_mut(), id, reply)
                })
            }
            fn on_network_event(conn: u64, event: $crate::v0_2::NetworkEvent) {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::v0_2::stream::StreamPlugin::on_network_event(
                        &mut *p.borrow_mut(),
                        $crate::v0_2::stream::StreamConnection::from_raw(conn),
                        event,
                    )
                })
            }
            fn on_node_event(event: $crate::v0_2::NodeEvent) {
                __FOGCONNECT_STREAM
                    .with(|p| $crate::v0_2::stream::StreamPlugin::on_node_event(&mut *p.borrow_mut(), event))
            }
        }

        $crate::v0_2::stream::bindings::__export_stream_world_0_2!(
            __FogconnectStreamExport with_types_in $crate::v0_2::stream::bindings
        );
    };
}

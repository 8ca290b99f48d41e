//! Stream plugins: the device SDK's push model (see `wit/stream`).
//!
//! Implement [`StreamPlugin`] for a type with [`Default`] and export it with
//! [`export_stream!`](crate::export_stream). The node calls
//! [`StreamPlugin::send_init`] when an application asks for a stream, pulls
//! its data with [`StreamPlugin::send_get`] every 10 ms while the stream's
//! send buffer is under its high mark, and calls
//! [`StreamPlugin::send_stop`] exactly once when it ends.
//!
//! ```ignore
//! use fogconnect_guest::export_stream;
//! use fogconnect_guest::stream::{Pull, Stream, StreamConnection, StreamPlugin};
//!
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl StreamPlugin for Counter {
//!     fn send_init(&mut self, _conn: StreamConnection, _params: String) -> Result<Stream, String> {
//!         self.0 += 1;
//!         Ok(Stream::from_raw(self.0))
//!     }
//!     fn send_get(&mut self, _stream: Stream) -> Pull {
//!         Pull::Data(b"tick".to_vec())
//!     }
//! }
//!
//! export_stream!(Counter);
//! ```

/// Generated bindings of the `fogconnect:streaming/stream-plugin` world. Plugins do
/// not need them directly; they are public for the
/// [`export_stream!`](crate::export_stream) macro.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "stream-plugin",
        path: "../wit/stream",
        pub_export_macro: true,
        export_macro_name: "__export_stream_world",
        default_bindings_module: "fogconnect_guest::stream::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

use bindings::fogconnect::streaming::host;

pub use bindings::fogconnect::streaming::types::{
    CommandError, LogLevel, Pull, SendStatistics, StreamError, WatermarkEvent,
};

stream_api!();

/// The callbacks of a stream plugin. The node calls them one at a time.
/// `send_init` and `send_get` must be written; the others default to
/// refusing (talk-back, commands) or doing nothing.
pub trait StreamPlugin: Default + 'static {
    /// An application asks for a stream: return its handle, or a reason
    /// to refuse.
    fn send_init(&mut self, conn: StreamConnection, params: String) -> Result<Stream, String>;

    /// The next data of a stream (called every 10 ms while its buffer is
    /// under its high mark; one node call covers all streams due).
    fn send_get(&mut self, stream: Stream) -> Pull;

    /// The stream ended; exactly once per handle `send_init` returned.
    fn send_stop(&mut self, stream: Stream) {
        let _ = stream;
    }

    /// A watermark of a stream was crossed.
    fn on_event(&mut self, stream: Stream, event: WatermarkEvent) {
        let _ = (stream, event);
    }

    /// An application opens a talk-back stream.
    fn recv_init(&mut self, conn: StreamConnection, params: String) -> Result<Stream, String> {
        let _ = (conn, params);
        Err("this plugin takes no talk-back".into())
    }

    /// Talk-back data; empty marks the end (the last call for the handle).
    fn recv_data(&mut self, stream: Stream, data: Vec<u8>) {
        let _ = (stream, data);
    }

    /// A command from the application: the reply, or a refusal.
    fn on_command(&mut self, conn: StreamConnection, message: Vec<u8>) -> Result<Vec<u8>, String> {
        let _ = (conn, message);
        Err("this plugin takes no commands".into())
    }

    /// The outcome of a command this plugin sent.
    fn on_command_reply(&mut self, id: u64, reply: Result<Vec<u8>, CommandError>) {
        let _ = (id, reply);
    }
}

/// Exports a [`StreamPlugin`] implementation as the plugin's callbacks.
///
/// `export_stream!(Type, handoff)` also exports the type's
/// [`Handoff`](crate::handoff::Handoff) implementation: on a live swap its
/// streams then carry on in the next generation instead of ending.
#[macro_export]
macro_rules! export_stream {
    ($plugin:ty, handoff) => {
        $crate::export_stream!($plugin);

        $crate::__export_handoff!(__FogconnectStreamExport, __FOGCONNECT_STREAM);
    };
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __FogconnectStreamExport;

        ::std::thread_local! {
            static __FOGCONNECT_STREAM: ::std::cell::RefCell<$plugin> =
                ::std::cell::RefCell::new(<$plugin as ::core::default::Default>::default());
        }

        impl $crate::stream::bindings::exports::fogconnect::streaming::handler::Guest for __FogconnectStreamExport {
            fn send_init(conn: u64, params: ::std::string::String) -> ::core::result::Result<u64, ::std::string::String> {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::stream::StreamPlugin::send_init(&mut *p.borrow_mut(), $crate::stream::StreamConnection::from_raw(conn), params)
                        .map($crate::stream::Stream::raw)
                })
            }
            fn send_get(streams: ::std::vec::Vec<u64>) -> ::std::vec::Vec<$crate::stream::Pull> {
                __FOGCONNECT_STREAM.with(|p| {
                    let mut plugin = p.borrow_mut();
                    streams
                        .into_iter()
                        .map(|s| $crate::stream::StreamPlugin::send_get(&mut *plugin, $crate::stream::Stream::from_raw(s)))
                        .collect()
                })
            }
            fn send_stop(stream: u64) {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::stream::StreamPlugin::send_stop(&mut *p.borrow_mut(), $crate::stream::Stream::from_raw(stream))
                })
            }
            fn on_event(stream: u64, event: $crate::stream::WatermarkEvent) {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::stream::StreamPlugin::on_event(&mut *p.borrow_mut(), $crate::stream::Stream::from_raw(stream), event)
                })
            }
            fn recv_init(conn: u64, params: ::std::string::String) -> ::core::result::Result<u64, ::std::string::String> {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::stream::StreamPlugin::recv_init(&mut *p.borrow_mut(), $crate::stream::StreamConnection::from_raw(conn), params)
                        .map($crate::stream::Stream::raw)
                })
            }
            fn recv_data(stream: u64, data: ::std::vec::Vec<u8>) {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::stream::StreamPlugin::recv_data(&mut *p.borrow_mut(), $crate::stream::Stream::from_raw(stream), data)
                })
            }
            fn on_command(conn: u64, message: ::std::vec::Vec<u8>) -> ::core::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::stream::StreamPlugin::on_command(&mut *p.borrow_mut(), $crate::stream::StreamConnection::from_raw(conn), message)
                })
            }
            fn on_command_reply(id: u64, reply: ::core::result::Result<::std::vec::Vec<u8>, $crate::stream::CommandError>) {
                __FOGCONNECT_STREAM.with(|p| {
                    $crate::stream::StreamPlugin::on_command_reply(&mut *p.borrow_mut(), id, reply)
                })
            }
        }

        $crate::stream::bindings::__export_stream_world!(__FogconnectStreamExport with_types_in $crate::stream::bindings);
    };
}
